"""Scripts whose namespace is not ``sys.modules["__main__"]``: their classes come back as theirs.

``python -m cProfile script.py``, ``runpy.run_module(..., run_name="__main__")``,
``exec`` in a dict of its own, doctest: the script's classes say ``__main__``, yet
``sys.modules["__main__"]`` is another module (see ``sockpool/capture/scripts.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sockpool import Cluster

pytestmark = pytest.mark.timeout(120)

SCRIPT = """
    import dataclasses, json, sockpool, sockpool.joblib
    from joblib import Parallel, delayed
    from sockpool import Cluster

    @dataclasses.dataclass
    class Profile:  # cProfile's module has a Profile too; so has the driver below
        name: str

    class Bad(Exception):
        pass

    class Outer:
        class Inner:
            pass

    def load(i):
        return Profile(f"user{i}")

    def fail(i):
        raise Bad(i)

    def parts(i):
        return Outer.Inner(), load

    def apply_to(fn, i):  # a function among the arguments, with globals of its own
        return fn(i)

    if __name__ == "__main__":
        joblibs = Parallel(n_jobs=2, backend="sockpool")(delayed(load)(i) for i in [4])
        with Cluster(n=2) as cl:
            profiles = cl.par_map(load, [1, 2])
            inner, function = cl.submit(parts, 0).result()
            try:
                cl.submit(fail, 3).result()
                caught = "nothing"
            except Bad as exc:
                caught = f"Bad{exc.args}"
        with sockpool.Pool(2) as pool:
            pooled = pool.map(load, [3]) + pool.starmap(apply_to, [(load, 5)])
        print(json.dumps({
            "profiles": [type(p) is Profile and p.name for p in profiles + pooled + joblibs],
            "inner": type(inner) is Outer.Inner, "function": type(function(5)) is Profile,
            "caught": caught}))
"""

DRIVER = """
    import runpy

    class Profile:  # the driver's own class of that name: not the one results are of
        pass

    runpy.run_module("user_script", run_name="__main__")
"""

EXPECTED = {"profiles": ["user1", "user2", "user3", "user5", "user4"], "inner": True,
            "function": True, "caught": "Bad(3,)"}


@pytest.mark.parametrize("how", ["python -m cProfile", "runpy.run_module from a driver"])
def test_results_and_exceptions_of_a_script_run_by_another_module_are_its_own_classes(
        tmp_path: Path, how: str) -> None:
    (tmp_path / "user_script.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    command = (["-m", "cProfile", "-o", os.devnull, "user_script.py"]
               if how.startswith("python") else ["driver.py"])
    done = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == EXPECTED


def test_code_executed_in_a_namespace_of_its_own_gets_its_own_classes_back(
        cluster: Cluster) -> None:
    source = textwrap.dedent("""
        class Point:
            def __init__(self, x):
                self.x = x

        def make(x):
            return Point(x)
    """)
    first: dict[str, object] = {"__name__": "__main__"}
    second: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, "<first>", "exec"), first)
    exec(compile(source, "<second>", "exec"), second)
    made = cluster.par_map(first["make"], [1, 2])  # type: ignore[arg-type]
    assert [type(p) for p in made] == [first["Point"]] * 2
    assert [p.x for p in made] == [1, 2]
    assert type(cluster.submit(second["make"], 3).result()) is second["Point"]  # type: ignore[arg-type]
    assert type(cluster.submit(first["make"], 4).result()) is first["Point"]  # type: ignore[arg-type]
    # A function of the real __main__ after them (pytest's, here): its own Point, not theirs.
    main = sys.modules["__main__"]
    exec(compile(source, "<main>", "exec"), vars(main))
    try:
        assert type(cluster.submit(main.make, 5).result()) is main.Point
    finally:
        del main.Point, main.make
