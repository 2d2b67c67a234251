"""The capture gallery: every way users define functions, run as real user scripts.

Each case is a script written to a temporary directory and run as ``__main__``
in a fresh interpreter, exactly as a user runs it, so that what lives in
``__main__`` (and next to the script) must really travel to the workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import run_script

pytestmark = pytest.mark.timeout(120)


def run_json(source: str, tmp_path: Path) -> object:
    """Run a user script that prints one JSON line last; return it parsed."""
    out = run_script(source, tmp_path).stdout.strip().splitlines()
    return json.loads(out[-1])


def test_script_functions_closures_lambdas_recursion_and_decorators(tmp_path: Path) -> None:
    result = run_json("""
        import functools, json
        from sockpool import Cluster

        FACTOR = 3

        def helper(x):                       # a helper the worker calls
            return x * FACTOR

        def fib(n):                          # recursive
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        def even(n):                         # mutually recursive
            return n == 0 or odd(n - 1)

        def odd(n):
            return n != 0 and even(n - 1)

        def logged(fn):                      # a decorator defined here too
            @functools.wraps(fn)
            def wrapper(*args):
                return ("logged", fn(*args))
            return wrapper

        @logged
        def decorated(x):
            return helper(x) + 1

        def make_adder(k):                   # nested closures
            def outer(x):
                def inner(y):
                    return y + k
                return inner(x) * 2
            return outer

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                print(json.dumps({
                    "helper": cl.par_map(lambda x: helper(x) + 1, [1, 2]),
                    "fib": cl.par_map(fib, [10, 15]),
                    "parity": cl.par_map(even, [4, 7]),
                    "decorated": cl.par_map(decorated, [1]),
                    "closure": cl.par_map(make_adder(10), [1, 2]),
                    "partial": cl.par_map(functools.partial(pow, 2), [5]),
                    "partial_of_main": cl.par_map(functools.partial(helper), [7]),
                }))
    """, tmp_path)
    assert result == {
        "helper": [4, 7], "fib": [55, 610], "parity": [True, False],
        "decorated": [["logged", 4]], "closure": [22, 24], "partial": [32],
        "partial_of_main": [21],
    }


def test_lru_cached_functions_of_the_script_travel(tmp_path: Path) -> None:
    # They pickle by name, and a worker's __main__ has no such name: AttributeError there.
    result = run_script("""
        import functools
        from sockpool import Cluster

        @functools.lru_cache(maxsize=None)
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        @functools.cache
        def square(x):
            return x * x

        def uses_both(x):
            return fib(x) + square(x)

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                print(cl.submit(fib, 60).result(), cl.par_map(uses_both, [5, 10]),
                      cl.par_map(square, [3]))
    """, tmp_path)
    assert result.stdout.strip() == "1548008755920 [30, 155] [9]"  # fib(60): cached there


def test_singledispatch_functions_cached_properties_and_weak_containers_of_the_script(
        tmp_path: Path) -> None:
    # A singledispatch function's dispatch cache (a WeakKeyDictionary), any weak
    # dictionary and, before Python 3.12, a cached_property's lock could not travel:
    # CaptureError.
    result = run_script("""
        import functools, weakref
        from sockpool import Cluster

        @functools.singledispatch
        def describe(x):
            return f"thing {x!r}"

        @describe.register
        def _(x: int):
            return f"int {x}"

        @describe.register(list)
        def _(x):
            return "list of " + ", ".join(describe(item) for item in x)

        class Model:
            def __init__(self, scale):
                self.scale = scale

            @functools.cached_property
            def table(self):
                return [self.scale * i for i in range(3)]

            def predict(self, x):
                return self.table[x]

        ITEMS = [Model(1), Model(2)]
        SEEN = weakref.WeakSet(ITEMS[:1])
        KEPT = weakref.WeakValueDictionary({"first": ITEMS[0], "other": Model(3)})
        SIZES = weakref.WeakKeyDictionary({ITEMS[1]: 2, Model(4): 4})

        def count_seen(x):
            return len(ITEMS), len(SEEN), sorted(KEPT), list(SIZES.values())

        if __name__ == "__main__":
            model = Model(10)
            with Cluster(n=1) as cl:
                print(cl.par_map(describe, [1, "a", [2, "b"]]))
                back = cl.submit(lambda: model).result()
                print(cl.par_map(model.predict, [0, 2]), type(back.table))
                print(cl.par_map(count_seen, [0]))
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "['int 1', \"thing 'a'\", \"list of int 2, thing 'b'\"]",
        "[0, 20] <class 'list'>",
        # Weak containers keep on the worker what travels with them (ITEMS), as in
        # the session; what nothing else holds there goes.
        "[(2, 1, ['first'], [2])]",
    ]


def test_serializer_pickle_refuses_a_function_of_the_script_before_sending_it(
        tmp_path: Path) -> None:
    # It pickles by name, and a worker's __main__ is not the script: every such task
    # failed on the worker ("Can't get attribute 'f' on <module '__main__'>").
    (tmp_path / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    result = run_script("""
        import functools
        from sockpool import CaptureError, Cluster
        import helpers

        def f(x):
            return x + 1

        class Model:
            def predict(self, x):
                return x

            def __call__(self, x):
                return x

        with Cluster(n=1, serializer="pickle") as cl:
            for fn in (f, functools.partial(f), Model().predict, Model()):
                try:
                    cl.par_map(fn, [1])
                except CaptureError as error:
                    print(str(error).split(":")[0])
            print(cl.par_map(helpers.triple, [1, 2]), cl.par_map(functools.partial(pow, 2), [3]))
    """, tmp_path)
    *refused, works = result.stdout.splitlines()
    assert [line.split(" at 0x")[0].split(" with ")[0] for line in refused] == [
        "cannot send the function 'f'", "cannot send the function 'functools.partial(<function f",
        "cannot send the function 'Model.predict'",
        "cannot send the function '<__main__.Model object"]
    assert all(line.endswith(" with serializer='pickle'") for line in refused)
    assert works == "[3, 6] [8]"


def test_main_classes_dataclasses_and_enums_as_arguments_and_results(tmp_path: Path) -> None:
    result = run_json("""
        import dataclasses, enum, json
        from sockpool import Cluster

        class Color(enum.Enum):
            RED = 1
            BLUE = 2

        @dataclasses.dataclass
        class Fit:
            level: str
            color: Color

        class Model:
            def __init__(self, weight):
                self.weight = weight
            def predict(self, x):
                return self.weight * x

        def fit(level):
            return Fit(level, Color.BLUE if level == "b" else Color.RED)

        def use_model(model):
            return model.predict(2)

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                fits = cl.par_map(fit, ["a", "b"])
                predictions = cl.par_map(use_model, [Model(3), Model(5)])
                methods = cl.par_map(Model(10).predict, [1, 2])
            assert all(isinstance(f, Fit) for f in fits)       # the master's own class
            assert fits[1].color is Color.BLUE                 # enum identity kept
            print(json.dumps([[f.level, f.color.name] for f in fits] + [predictions, methods]))
    """, tmp_path)
    assert result == [["a", "RED"], ["b", "BLUE"], [6, 10], [10, 20]]


def test_module_aliases_travel_by_reference(tmp_path: Path) -> None:
    result = run_json("""
        import json
        import numpy as np
        import math as m
        from sockpool import Cluster, inspect_capture

        def norm(v):
            return float(np.linalg.norm(np.array(v))) + m.floor(0.2)

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                values = cl.par_map(norm, [[3, 4], [6, 8]])
            report = inspect_capture(norm)
            print(json.dumps([values, report.modules_by_reference, report.modules_by_value]))
    """, tmp_path)
    assert result[0] == [5.0, 10.0]
    assert "numpy" in result[1] and "math" in result[1] and result[2] == []


def test_a_workers_traceback_names_the_scripts_file_and_line(tmp_path: Path) -> None:
    result = run_json("""
        import json, traceback
        from sockpool import Cluster

        def check(x):
            if x == 2:
                raise ValueError("x is 2")  # line 7
            return x

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                try:
                    cl.par_map(check, range(4))
                except ValueError as exc:
                    remote = str(exc.__cause__)
            print(json.dumps(remote))
    """, tmp_path)
    # The worker ran a copy of check() shipped by value: it keeps its file and line.
    assert f'File "{tmp_path / "user_script.py"}", line 7, in check' in result, result


def test_local_module_and_package_travel_by_value_even_when_workers_cannot_import_them(
        tmp_path: Path) -> None:
    (tmp_path / "mymath.py").write_text("SCALE = 7\n\ndef scale(x):\n    return x * SCALE\n")
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .tools import shout\n")
    (package / "tools.py").write_text("def shout(s):\n    return s.upper() + '!'\n")
    result = run_json("""
        import json, os, shutil, sys
        import mymath, mypkg
        from sockpool import Cluster, inspect_capture

        def work(x):
            return [mymath.scale(x), mypkg.shout("hi")]

        if __name__ == "__main__":
            # Take the files away: a worker that tried to import them would fail,
            # as on another host; they must travel by value.
            os.remove("mymath.py"); shutil.rmtree("mypkg"); shutil.rmtree("__pycache__", True)
            with Cluster(n=2) as cl:
                out = cl.par_map(work, [1, 2])
                seen = cl.run_on_all(lambda: "mymath" in sys.modules)
            report = inspect_capture(work)
            print(json.dumps([out, seen, report.modules_by_value]))
    """, tmp_path)
    assert result[0] == [[7, "HI!"], [14, "HI!"]]
    assert result[1] == [False, False]  # never imported there: it came by value
    assert set(result[2]) >= {"mymath", "mypkg"}


def test_a_local_plugin_registered_under_a_dotted_name_without_its_package_travels(
        tmp_path: Path) -> None:
    # sys.modules["plugins.x"], no "plugins": it was sent by reference, and failed
    # ("import of module 'plugins.x' failed").
    (tmp_path / "plugin_code.py").write_text(
        "SCALE = 10\n\nclass Rec:\n    def __init__(self, v):\n        self.v = v\n\n"
        "def work(x):\n    return Rec(x * SCALE)\n")
    result = run_json("""
        import importlib.util, json, sys
        from sockpool import Cluster

        spec = importlib.util.spec_from_file_location("plugins.x", "plugin_code.py")
        plugin = importlib.util.module_from_spec(spec)
        sys.modules["plugins.x"] = plugin
        spec.loader.exec_module(plugin)

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                out = cl.par_map(plugin.work, [1, 2])
            print(json.dumps([[r.v for r in out], all(type(r) is plugin.Rec for r in out)]))
    """, tmp_path)
    assert result == [[10, 20], True]


def test_a_relative_import_in_a_function_of_a_package_run_with_python_m_works_there(
        tmp_path: Path) -> None:
    # `python -m app.main`: __main__'s __package__ is "app".  A worker's copy of a
    # function of it had __package__ None, so `from .util import ...` in its body
    # failed there: "attempted relative import with no known parent package".
    package = tmp_path / "app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "util.py").write_text("def inc(x):\n    return x + 1\n")
    (package / "main.py").write_text(textwrap.dedent("""
        import json
        from sockpool import Cluster

        def task(x):
            from .util import inc
            return inc(x)

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                print(json.dumps([cl.par_map(task, range(3)),
                                  cl.submit(lambda: __package__).result()]))
    """))
    result = subprocess.run([sys.executable, "-m", "app.main"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [[1, 2, 3], "app"]


def test_instances_of_slotted_classes_of_the_script_and_a_local_module_come_back(
        tmp_path: Path) -> None:
    # cloudpickle rebuilt such a class on the worker without its slots, so its
    # instances had a __dict__ there and failed to load as results in the master:
    # "'Point' object has no attribute '__dict__'".
    (tmp_path / "shapes.py").write_text(
        "class Point:\n    __slots__ = ('x', 'y')\n\n"
        "    def __init__(self, x, y):\n        self.x, self.y = x, y\n")
    result = run_json("""
        import dataclasses, json, typing
        from shapes import Point
        from sockpool import Cluster

        class Tagged:
            __slots__ = "tag"

            def __init__(self, tag):
                self.tag = tag

        @dataclasses.dataclass(slots=True, frozen=True)
        class Pair:
            a: int
            b: int

        class Span(typing.NamedTuple):  # __slots__ = (): its metaclass refuses them
            start: int
            stop: int

        class HasX(typing.Protocol):  # a metaclass of its own
            __slots__ = ()

        class Impl(HasX):
            __slots__ = ("x",)

            def __init__(self, x):
                self.x = x

        def make(i):
            return Point(i, -i), Tagged(str(i)), Pair(i, i + 1), Span(i, i + 2), Impl(i)

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                point, tagged, pair, span, impl = cl.par_map(make, range(3))[2]
            print(json.dumps([type(point) is Point, [point.x, point.y],
                              type(tagged) is Tagged, tagged.tag, pair == Pair(2, 3),
                              hasattr(point, "__dict__") or hasattr(tagged, "__dict__"),
                              type(span) is Span and span == (2, 4),
                              type(impl) is Impl and impl.x]))
    """, tmp_path)
    assert result == [True, [2, -2], True, "2", True, False, True, 2]


def test_what_pip_installed_outside_site_packages_travels_by_reference(
        tmp_path: Path) -> None:
    # As `pip install --target site` leaves a package and a one-file module, "site"
    # then on PYTHONPATH: installed (RECORD lists their files, no top_level.txt), not local.
    site_dir = tmp_path / "site"
    (site_dir / "tinylib").mkdir(parents=True)
    (site_dir / "tinylib" / "__init__.py").write_text("def double(x):\n    return 2 * x\n")
    (site_dir / "tinymod.py").write_text("def negate(x):\n    return -x\n")
    (site_dir / "quoted").mkdir()
    (site_dir / "quoted" / "__init__.py").write_text("def third(x):\n    return x / 3\n")
    _dist_info(site_dir, "tinylib", "tinylib/__init__.py,sha256=x,40\ntinymod.py,sha256=y,30\n"
               "mymath.py,sha256=z,10\n")  # a file since deleted: no longer installed
    # A path with a comma is quoted (csv), and some writers quote every field.
    _dist_info(site_dir, "quoted", '"quoted/__init__.py","sha256=q","30"\n'
               '"quoted/a,b.txt",,\n')
    (tmp_path / "mymath.py").write_text("def scale(x):\n    return 7 * x\n")
    result = run_json("""
        import json, os, sys
        sys.path.insert(0, os.path.abspath("site"))
        os.environ["PYTHONPATH"] = os.path.abspath("site")  # the workers' too
        import mymath, quoted, tinylib, tinymod
        from sockpool import Cluster, inspect_capture

        def work(x):
            return [tinylib.double(x), tinymod.negate(x), quoted.third(x), mymath.scale(x)]

        if __name__ == "__main__":
            names = ("tinylib", "tinymod", "quoted", "mymath")
            with Cluster(n=2) as cl:
                out = cl.par_map(work, [3, 6])
                seen = cl.run_on_all(lambda: [name in sys.modules for name in names])
            print(json.dumps([out, seen, inspect_capture(work).modules_by_value]))
    """, tmp_path)
    assert result[0] == [[6, -3, 1.0, 21], [12, -6, 2.0, 42]]
    # Imported by name on the workers, as installed code is; the local module came by value.
    assert result[1] == [[True, True, True, False], [True, True, True, False]]
    assert result[2] == ["mymath"]


def _dist_info(site_dir: Path, name: str, record: str) -> None:
    """A distribution's metadata as pip writes it (no top_level.txt: its RECORD tells)."""
    info = site_dir / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"{record}{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def test_bind_to_env_as_in_the_tutorial(tmp_path: Path) -> None:
    result = run_json("""
        import json
        from sockpool import Cluster, bind_to_env

        def fit_one(level):
            return f"{level}:{len(DATA)}:{SUFFIX}"

        def worker(level):
            # looked up dynamically: automatic capture cannot see these names
            return globals()["fit_one"](level) + eval("EXTRA")

        def mk_worker():
            DATA = [1, 2, 3]                  # local to mk_worker, found by bind_to_env
            SUFFIX = "ok"
            return bind_to_env(worker, "fit_one", "DATA", "SUFFIX", EXTRA="+")

        if __name__ == "__main__":
            bound = mk_worker()
            assert worker.__globals__ is globals()          # the original is untouched
            assert bound.__globals__ is not globals()
            with Cluster(n=2) as cl:
                out = cl.par_map(bound, ["a", "b"])
            try:
                worker("a")                                  # unbound, it fails as before
            except NameError as exc:
                err = str(exc)
            print(json.dumps([out, err]))
    """, tmp_path)
    assert result == [["a:3:ok+", "b:3:ok+"], "name 'DATA' is not defined"]


def test_bind_to_env_rebinds_helpers_unless_told_not_to(tmp_path: Path) -> None:
    result = run_json("""
        import json
        from sockpool import Cluster, bind_to_env

        LIMIT = 1

        def clip(x):
            return min(x, LIMIT)

        def work(x):
            return [clip(x), keep(x)]

        def keep(x):
            return min(x, LIMIT)

        if __name__ == "__main__":
            bound = bind_to_env(work, "clip", "keep", LIMIT=100, do_not_rebind=["keep"])
            with Cluster(n=1, serializer="dill") as cl:
                via_dill = cl.par_map(bound, [50])
            with Cluster(n=1) as cl:
                out = cl.par_map(bound, [50])
            print(json.dumps([out, via_dill, clip(50)]))
    """, tmp_path)
    # clip was rebound (sees LIMIT=100); keep kept its own globals (LIMIT=1);
    # the original clip is untouched.
    assert result == [[[50, 1]], [[50, 1]], 1]


def test_bind_to_env_errors() -> None:
    from sockpool import bind_to_env

    def fn() -> None:
        pass

    with pytest.raises(NameError, match="'nowhere'"):
        bind_to_env(fn, "nowhere")
    with pytest.raises(TypeError, match="Python function"):
        bind_to_env(len, "x")  # type: ignore[type-var]
    with pytest.raises(NameError, match="do_not_rebind"):
        bind_to_env(fn, do_not_rebind=["missing"])
    # A string was taken for its letters ("do_not_rebind names ['e', 'h', ...]"), and a
    # list for env gave "vars() argument must have __dict__ attribute".
    with pytest.raises(TypeError, match=r"do_not_rebind=\['helper'\]"):
        bind_to_env(fn, helper=fn, do_not_rebind="helper")
    with pytest.raises(TypeError, match="do_not_rebind takes a list of names, not int"):
        bind_to_env(fn, helper=fn, do_not_rebind=5)  # type: ignore[arg-type]

    class OldSequence:  # iterable through __getitem__ alone: set() takes it
        def __getitem__(self, index: int) -> str:
            return ["helper"][index]

    assert bind_to_env(fn, helper=fn, do_not_rebind=OldSequence())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="env must be a mapping or an object with attributes"):
        bind_to_env(fn, "a", env=[1, 2])
    bound = bind_to_env(fn, "a", env={"a": 1, "unused": 0}, b=2)
    assert bound.__globals__["a"] == 1 and bound.__globals__["b"] == 2
    assert "unused" not in bound.__globals__


def test_inspect_capture_reports_names_types_sizes_and_paths(tmp_path: Path) -> None:
    out = run_script("""
        import numpy as np
        from sockpool import inspect_capture

        BIG = np.zeros(250_000)          # 2 MB
        LABELS = ["a", "b"]

        def fit_one(level):
            return BIG.sum() + len(level)

        def worker(level):
            return LABELS, fit_one(level)

        report = inspect_capture(worker)
        print(report)
        # Biggest first, as documented (they came in the order they were found).
        assert [e.name for e in report] == [  # (fit_one carries BIG)
            "worker -> fit_one", "worker -> fit_one -> BIG", "worker -> LABELS"]
        assert report.biggest(1) == list(report)[:1]
        for bad in (-1, 1.5):
            try:
                report.biggest(bad)
            except ValueError as exc:
                assert "count must be a non-negative integer" in str(exc)
            else:
                raise AssertionError(f"biggest({bad}) taken")
        try:  # (was a report saying the function "cannot travel")
            inspect_capture(worker, serializer="bogus")
        except ValueError as exc:
            assert "serializer must be one of" in str(exc)
        else:
            raise AssertionError("serializer='bogus' taken")
        entries = {e.name: (e.type, e.nbytes) for e in report}
        assert entries["worker -> fit_one -> BIG"][0] == "numpy.ndarray"
        assert entries["worker -> fit_one -> BIG"][1] > 2_000_000
        assert entries["worker -> LABELS"][0] == "list"
        assert report.total_bytes > 2_000_000
        assert "<table>" in report._repr_html_()
        print("OK")
    """, tmp_path).stdout
    assert out.strip().endswith("OK")
    assert "worker carries 2.0 MB in all" in out
    assert "worker -> fit_one -> BIG" in out and "numpy" in out


def test_inspect_capture_says_what_cannot_travel_and_looks_inside_lru_cache(
        tmp_path: Path) -> None:
    # A lock was listed at "0 B" under "carries ... in all"; an lru_cache'd
    # function "carried 369 kB" yet listed "(nothing: it travels by name)".
    out = run_script("""
        import functools, threading
        from sockpool import inspect_capture

        LOCK = threading.Lock()
        BIG = list(range(100_000))

        def locked(x):
            with LOCK:
                return x + len(BIG)

        @functools.lru_cache
        def cached(x):
            return x + len(BIG)

        report = inspect_capture(locked)
        print(report)
        entries = {e.name: e for e in report}
        assert report.error.startswith("TypeError: cannot pickle '_thread.lock'")
        assert entries["locked -> LOCK"].error == report.error
        assert entries["locked -> BIG"].error == "" and entries["locked -> BIG"].nbytes > 300_000
        assert "cannot travel" in report._repr_html_()
        assert next(iter(report)).name == "locked -> LOCK"  # what cannot travel comes first
        report = inspect_capture(cached)
        print(report)
        assert report.error == ""
        assert {e.name for e in report} == {"cached -> __wrapped__", "cached -> __wrapped__ -> BIG"}
        print("OK")
    """, tmp_path).stdout
    assert out.strip().endswith("OK")
    assert "locked cannot travel: TypeError: cannot pickle '_thread.lock' object" in out
    assert "cannot travel (TypeError" in out


def test_capture_error_names_the_path_before_anything_is_sent(tmp_path: Path) -> None:
    out = run_script("""
        import sqlite3, threading
        from sockpool import CaptureError, Cluster

        conn = sqlite3.connect(":memory:")
        lock = threading.Lock()

        def fit_one(level):
            return conn.execute("select 1").fetchone()

        def worker(level):
            return fit_one(level)

        def guarded(level):
            with lock:
                return level

        rlock = threading.RLock()

        def reentrant(level):  # dill copies an RLock as held: the task waited forever
            with rlock:
                return level

        import socket
        sock = socket.socket()

        def both(level):  # dill takes the lock but not the socket behind it
            with lock:
                return sock.fileno()

        log = open("results.txt", "w")

        def logged(level):  # dill reopens the file by name: "w" truncates it
            log.write(level)

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                for fn in (worker, guarded, reentrant, both, logged):
                    try:
                        cl.par_map(fn, ["a"])
                    except CaptureError as exc:
                        print(exc)
    """, tmp_path).stdout.splitlines()
    assert "worker -> fit_one -> conn: sqlite3.Connection" in out[0]
    assert "dill" not in out[0]  # dill cannot pickle it either
    assert "guarded -> lock: _thread.lock" in out[1]
    assert 'serializer="dill" would work' in out[1]
    assert "reentrant -> rlock: _thread.RLock" in out[2] and "dill" not in out[2]
    assert "both -> lock: _thread.lock" in out[3] and "dill" not in out[3]
    assert "logged -> log: _io.TextIOWrapper" in out[4] and "dill" not in out[4]


def test_a_capture_larger_than_the_limit_is_refused_with_the_biggest_names(
        tmp_path: Path) -> None:
    out = run_script("""
        from sockpool import CaptureError, Cluster

        HUGE = bytes(3_000_000)
        SMALL = b"x"

        def worker(x):
            return len(HUGE) + len(SMALL) + x

        if __name__ == "__main__":
            with Cluster(n=1, max_capture_size=1_000_000) as cl:
                try:
                    cl.par_map(worker, [1])
                except CaptureError as exc:
                    print(exc)
            with Cluster(n=1, max_capture_size=1000) as cl:  # (was "the limit of 0.0 MB")
                try:
                    cl.par_map(worker, [1])
                except CaptureError as exc:
                    print(exc)
            with Cluster(n=1, max_capture_size=None) as cl:
                print(cl.par_map(worker, [1]))
            with Cluster(n=1, max_capture_size=1_000_000) as cl:
                cl.export("HUGE")  # the advice: sent once, then no global to carry
                del HUGE
                print(cl.par_map(worker, [1]))
    """, tmp_path).stdout.splitlines()
    assert "carries 3.0 MB, more than the limit of 1.0 MB" in out[0]
    assert "worker -> HUGE (bytes, 3.0 MB)" in out[0]
    assert "max_capture_size" in out[0]
    assert "cl.export(BIG=data), or del BIG after exporting it" in out[0]
    assert "more than the limit of 1.0 kB (1000 bytes)" in out[1]
    assert out[2:] == ["[3000002]", "[3000002]"]


#: The start of a script whose ``bomb`` cannot be loaded on a worker: unpickling
#: it raises there (in the master it loads).
UNLOADABLE_ON_THE_WORKER = """
import os
from sockpool import Cluster

MASTER = os.getpid()

def explode(master):
    if os.getpid() != master:
        raise RuntimeError("cannot load on the worker")
    return 1

class Bomb:
    def __reduce__(self):
        return explode, (MASTER,)

bomb = Bomb()
"""


def test_a_function_that_failed_to_load_on_a_worker_fails_the_same_way_again(
        tmp_path: Path) -> None:
    # A function that cannot be loaded on a worker (what it captures raises there):
    # the first call failed with its error, and every later one with a KeyError of
    # a raw digest (the master took the function for cached there).
    out = run_script(UNLOADABLE_ON_THE_WORKER + textwrap.dedent("""
        def read(o):
            return (bomb, o + 1)[1]

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                for call in (lambda: cl.par_map(read, [1]), lambda: cl.par_map(read, [2]),
                             lambda: cl.submit(read, 3).result()):
                    try:
                        call()
                    except Exception as exc:
                        print(type(exc).__name__, exc)
                print(cl.par_map(abs, [-4]))
    """), tmp_path).stdout.splitlines()
    assert out == ["RuntimeError cannot load on the worker"] * 3 + ["[4]"]


def test_chunks_sent_before_a_load_failure_was_heard_of_fail_the_same_way(
        tmp_path: Path) -> None:
    # Only the chunk that carried the function got its load error; those sent ahead
    # with its digest alone failed with KeyError(b'\xcf...').
    out = run_script(UNLOADABLE_ON_THE_WORKER + textwrap.dedent("""
        def task(x):
            return (bomb, x)[1]

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                for result in cl.par_map(task, range(8), chunksize=1, errors="return"):
                    print(type(result).__name__, result)
    """), tmp_path).stdout.splitlines()
    assert out == ["RuntimeError cannot load on the worker"] * 8


def test_a_submitted_function_sees_every_change_a_call_can_see(tmp_path: Path) -> None:
    # A function of the script whose pickle nothing mutable goes into is pickled
    # once and sent again as it was while what it is made of stays the same
    # objects (capture/fingerprint.py): each change here must still reach the next
    # call, as without a cluster.
    result = run_script("""
        import math
        from sockpool import Cluster, bind_to_env

        K, PAIR, ITEMS = 1, (1, 2), [1]

        def outer():
            step = 1

            def inner(x):
                return x + step

            def bump():
                nonlocal step
                step += 10

            return inner, bump

        inner, bump = outer()

        def scaled(x, scale=1):
            return x * K * scale

        def pair(x):
            return PAIR, math.floor(2.5)

        def items(x):
            return sum(ITEMS)

        def late(x):
            return x + LATE if "LATE" in globals() else -1

        def other(x, scale=1):  # the same globals as scaled's: only the code differs
            return -x * K * scale

        def via_eval(x):  # names no global: its bound namespace travels whole
            return eval("ITEMS")[0] + x

        bound = bind_to_env(via_eval, "ITEMS")

        with Cluster(n=1) as cl:
            def call(fn, *args):
                return cl.submit(fn, *args).result()

            for _ in range(2):
                print(call(scaled, 1), call(pair, 0), call(items, 0), call(inner, 1),
                      call(late, 1), call(bound, 0))
            K = 2                      # rebound
            PAIR = (3, 4)              # a new tuple
            ITEMS.append(10)           # changed in place (a list: never kept)
            ITEMS[0] = 5
            print(call(scaled, 1), call(pair, 0), call(items, 0), call(bound, 0))
            scaled.__defaults__ = (100,)
            print(call(scaled, 1))
            K = 2.0                    # equal, yet another object (and pickle)
            print(call(scaled, 1))
            scaled.__code__ = other.__code__
            print(call(scaled, 1))
            bump()                     # a closure cell's contents
            LATE = 5                   # a global the code named, missing before
            print(call(inner, 1), call(late, 1))
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "1 ((1, 2), 2) 1 2 -1 1", "1 ((1, 2), 2) 1 2 -1 1",
        "2 ((3, 4), 2) 15 5",
        "200",
        "200.0",
        "-200.0",
        "12 6"]


def test_a_function_made_of_immutable_parts_is_pickled_once_while_they_stay() -> None:
    from sockpool.capture.payload import Packer

    namespace = {"__name__": "__main__", "K": 3000, "PAIR": (1, 2), "ITEMS": [1]}
    exec("def f(x):\n    return x * K, PAIR\n\ndef g(x):\n    return ITEMS\n", namespace)
    packer = Packer()
    first = packer.function(namespace["f"])
    assert packer.function(namespace["f"]) is first  # no pickling: the same payload
    namespace["K"] = 3000 + int("0")  # an equal int, another object: pickled again,
    again = packer.function(namespace["f"])  # the same (a number carries no id)
    assert again is not first and again.digest == first.digest
    namespace["PAIR"] = (1, 2 + int("0"))  # an equal tuple, bound anew: its id travels
    assert packer.function(namespace["f"]).digest != first.digest
    # A list can change in place: pickled at every call.
    assert packer.function(namespace["g"]) is not packer.function(namespace["g"])


def test_a_global_rebound_while_the_function_is_pickled_is_not_kept_stale(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread rebinding K during the pickling left the payload of K=7 kept
    # under the fingerprint of K=3000: every call while K was 3000 again sent 7.
    import pickle

    from sockpool.capture import pickling
    from sockpool.capture.payload import Packer

    value = 3000 + int("0")
    namespace = {"__name__": "__main__", "K": value}
    exec("def f(x):\n    return x * K\n", namespace)
    dumps_function = pickling.dumps_function

    def rebinding_meanwhile(fn: Any, *args: Any, **kwargs: Any) -> Any:
        namespace["K"] = 7
        return dumps_function(fn, *args, **kwargs)

    monkeypatch.setattr(pickling, "dumps_function", rebinding_meanwhile)
    Packer().function(namespace["f"])
    monkeypatch.setattr(pickling, "dumps_function", dumps_function)
    namespace["K"] = value
    assert pickle.loads(Packer().function(namespace["f"]).inband)(1) == 3000
