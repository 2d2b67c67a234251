"""A user's code type-checks as they expect (``mypy --strict``): results carry the
function's return type, options take only the values they accept, and a misspelled
name or option is an error rather than ``Any``."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]

USER_CODE = """
    from __future__ import annotations

    import sockpool
    from sockpool import Cluster, Pool, RemoteTraceback, par_map, task_rng


    def label(x: int) -> str:
        return str(x)


    class MyCluster(Cluster):
        def extra(self) -> int:
            return 1


    def main() -> None:
        with MyCluster(n=1) as cl:
            reveal_type(cl.extra())  # enter
            reveal_type(cl.par_map(label, [1, 2]))  # par_map
            reveal_type(cl.imap(label, [1, 2]))  # imap
            reveal_type(cl.submit(label, 1))  # submit
            cl.par_map(label, [1], errors="retrun")  # errors
            Cluster(n=1, relay="lve")  # relay
            Cluster(n=1, serializer="dill2", transport="tcpp")  # serializer
        with Pool(2) as pool:
            reveal_type(pool.apply_async(label, (1,)).get())  # pool
        reveal_type(par_map(label, [1]))  # plan
        reveal_type(task_rng())  # rng
        raise RemoteTraceback("text")


    sockpool.par_mapp(label, [1])  # typo
"""


def test_user_code_type_checks_as_its_author_expects(tmp_path: Path) -> None:
    source = tmp_path / "user_code.py"
    source.write_text(textwrap.dedent(USER_CODE).lstrip())
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(source)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    # What mypy said of each marked line ("# name" at its end), joined.
    marks = {number: line.rsplit("# ", 1)[1] for number, line in
             enumerate(source.read_text().splitlines(), 1) if "  # " in line}
    said: dict[str, str] = {}
    for line in result.stdout.splitlines():
        found = re.match(r".*user_code\.py:(\d+): (?:error|note): (.*)", line)
        if found:
            mark = marks.get(int(found[1]), found[1])
            said[mark] = f"{said.get(mark, '')} {found[2]}"
    assert 'Revealed type is "int"' in said["enter"]  # a subclass stays itself in `with`
    assert '"list[str]"' in said["par_map"]
    assert "Iterator[str]" in said["imap"]
    assert "Future[str]" in said["submit"]
    assert "Literal['raise', 'return']" in said["errors"]
    assert "bool | Literal['live']" in said["relay"]
    assert "Literal['cloudpickle', 'dill', 'pickle']" in said["serializer"]
    assert "Literal['ipc', 'tcp']" in said["serializer"]
    assert '"str"' in said["pool"]
    assert '"list[str]"' in said["plan"]
    assert "Generator" in said["rng"]
    assert 'has no attribute "par_mapp"' in said["typo"]
    assert set(said) == set(marks.values()), result.stdout  # and nothing else
