"""Globals that code on a worker sets are seen by the tasks there, as in multiprocessing:
an initializer's ``global model`` is the classic case (``Pool(initializer=...)``)."""

from __future__ import annotations

import textwrap
import types
from pathlib import Path

import cloudpickle
import pytest
from helpers import run_script

from sockpool.worker.functions import FunctionCache

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("placeholder", ["_model = None", ""])
def test_an_initializers_global_is_seen_by_the_tasks_as_with_multiprocessing(
        tmp_path: Path, placeholder: str) -> None:
    result = run_script(f"""
        import multiprocessing
        import sockpool

        {placeholder}

        def init(path):
            global _model
            _model = "model from " + path

        def score(x):
            return (_model, x)

        if __name__ == "__main__":
            for Pool in (multiprocessing.Pool, sockpool.Pool):
                with Pool(2, initializer=init, initargs=("m.pkl",)) as pool:
                    print(pool.map(score, range(3)), pool.apply(score, (9,)))
    """, tmp_path)
    expected = ("[('model from m.pkl', 0), ('model from m.pkl', 1), ('model from m.pkl', 2)] "
                "('model from m.pkl', 9)")
    assert result.stdout.splitlines() == [expected, expected]


@pytest.mark.parametrize("placeholder", ["OFFSET = None", ""])
def test_a_function_among_the_arguments_sees_what_the_initializer_set(
        tmp_path: Path, placeholder: str) -> None:
    # It came with globals of its own: NameError (or the master's None) for what the
    # initializer set, where a multiprocessing worker's function sees it.
    result = run_script(f"""
        import multiprocessing
        import sockpool

        {placeholder}
        STATE = {{}}
        SETTINGS = {{"k": 1}}

        def init(offset):
            global OFFSET
            OFFSET = offset
            STATE["model"] = "loaded"

        def shifted(x):
            return x + OFFSET, STATE.get("model"), SETTINGS["k"]

        def call(fn, x):
            return fn(x)

        if __name__ == "__main__":
            spawn = multiprocessing.get_context("spawn")
            for Pool in (spawn.Pool, sockpool.Pool):
                with Pool(2, initializer=init, initargs=(10,)) as pool:
                    print(pool.starmap(call, [(shifted, 1), (shifted, 2)]),
                          pool.apply(call, (shifted, 3)))
            with sockpool.Pool(1, initializer=init, initargs=(10,)) as pool:
                SETTINGS["k"] = 2  # the master's change reaches the worker
                print(pool.apply(call, (shifted, 0)))
    """, tmp_path)
    expected = "[(11, 'loaded', 1), (12, 'loaded', 1)] (13, 'loaded', 1)"
    assert result.stdout.splitlines() == [expected, expected, "(10, 'loaded', 2)"]


def test_a_function_among_the_arguments_sees_the_masters_changes_since_a_task_ran(
        tmp_path: Path) -> None:
    # A value too large (or not plain data) to compare by its pickle was taken for
    # unchanged, and a name bound anew to an equal value as well: the worker's stale
    # values went into the argument's function.
    result = run_script("""
        import numpy as np
        import sockpool

        DATA = np.zeros(3)
        BIG = [0] * 100_000
        CACHE = {}

        def helper():
            return "old helper"

        def uses(_):
            CACHE["worker"] = 1
            return float(DATA.sum()), len(BIG), helper(), sorted(CACHE)

        def reads(_):
            return float(DATA.sum()), len(BIG), helper(), sorted(CACHE)

        def call(fn, x):
            return fn(x)

        if __name__ == "__main__":
            with sockpool.Pool(1) as pool:
                print(pool.map(uses, [0]))
                DATA = np.ones(3)
                BIG.append(1)
                CACHE = {}
                def helper():
                    return "new helper"
                print(pool.starmap(call, [(reads, 0)]), pool.map(reads, [0]))
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "[(0.0, 100000, 'old helper', ['worker'])]",
        "[(3.0, 100001, 'new helper', [])] [(3.0, 100001, 'new helper', [])]"]


def test_a_function_among_the_arguments_works_after_its_chunk_where_a_task_kept_it(
        tmp_path: Path) -> None:
    result = run_script("""
        import threading, time
        import sockpool

        FACTOR = 3

        def helper(x):
            return x * FACTOR

        class Model:
            def predict(self, x):
                return helper(x) + 1

        def triple(x):
            return helper(x)

        def keep(fn, model):
            global KEPT, MODEL, LATER
            KEPT, MODEL, LATER = fn, model, []
            threading.Thread(target=lambda: (time.sleep(0.3), LATER.append(fn(5)))).start()

        def use(x):
            time.sleep(0.5 * (x == 0))
            return KEPT(x), MODEL.predict(x), list(LATER)

        if __name__ == "__main__":
            with sockpool.Cluster(n=1) as cl:
                cl.run_on_all(keep, triple, Model())
                print(cl.par_map(use, [0, 2]))
    """, tmp_path)
    assert result.stdout.splitlines() == ["[(0, 1, [15]), (6, 7, [15])]"]


def test_loading_a_function_among_the_arguments_leaves_the_shared_namespace_as_it_was(
        ) -> None:
    import gc
    import weakref

    cache = FunctionCache()
    main = cache.main_module.__dict__
    script = _main_functions("""
        class Big(list): pass
        BIG = Big([0] * 100_000)
        def uses(): return len(BIG) + MINE
    """)
    main["MINE"] = 1  # as an initializer sets it
    before = dict(main)
    (fn,) = cache.shared.loads_arguments(cloudpickle.dumps((script.uses,)), [])
    assert fn() == 100_001
    assert main == before and fn.__globals__ is not main
    kept = weakref.ref(fn.__globals__["BIG"])
    del fn
    gc.collect()
    assert kept() is None  # what it carried went with it


def test_an_initializer_filling_a_global_in_place_is_seen_and_so_are_the_masters_changes(
        tmp_path: Path) -> None:
    result = run_script("""
        import multiprocessing
        import sockpool

        import collections

        STATE = {}
        SETTINGS = {"k": 1}
        SEEN = collections.defaultdict(list)  # not a dict: a class to name in its pickle

        def init(path):
            STATE["model"] = "model from " + path
            SEEN["paths"].append(path)

        def score(x):
            return (STATE.get("model"), SETTINGS["k"], x, len(SEEN["paths"]))

        if __name__ == "__main__":
            for Pool in (multiprocessing.Pool, sockpool.Pool):
                with Pool(2, initializer=init, initargs=("m.pkl",)) as pool:
                    print(pool.map(score, range(2)))
            with sockpool.Cluster(n=1) as cl:
                print(cl.par_map(score, [0]))
                SETTINGS["k"] = 2  # changed in place by the master: the next map sees it
                STATE["model"] = "the master"
                print(cl.par_map(score, [0]))
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "[('model from m.pkl', 1, 0, 1), ('model from m.pkl', 1, 1, 1)]",
        "[('model from m.pkl', 1, 0, 1), ('model from m.pkl', 1, 1, 1)]",
        "[(None, 1, 0, 0)]", "[('the master', 2, 0, 0)]"]


def test_a_local_modules_functions_share_its_globals_on_the_worker(tmp_path: Path) -> None:
    (tmp_path / "models.py").write_text(textwrap.dedent("""
        _model = None

        def load(path):
            global _model
            _model = "model from " + path

        def score(x):
            return (_model, x)
    """))
    result = run_script("""
        import sockpool
        import models

        if __name__ == "__main__":
            with sockpool.Pool(2, initializer=models.load, initargs=("m.pkl",)) as pool:
                print(pool.map(models.score, range(2)))
            with sockpool.Cluster(n=1, setup=lambda: models.load("setup.pkl")) as cl:
                print(cl.submit(models.score, 5).result())
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "[('model from m.pkl', 0), ('model from m.pkl', 1)]", "('model from setup.pkl', 5)"]


def test_a_local_module_read_from_the_script_is_the_one_its_functions_share(
        tmp_path: Path) -> None:
    # The script's task read `mycache._MODEL` from a fresh copy of the module the
    # pickle made for it: None, where the module's own functions saw "loaded".
    (tmp_path / "mycache.py").write_text(textwrap.dedent("""
        _MODEL = None
        CACHE = {}

        def init():
            global _MODEL
            _MODEL = "loaded"
            CACHE["m"] = "filled"

        def predict(x):
            return x, _MODEL, CACHE.get("m")
    """))
    result = run_script("""
        import mycache
        from sockpool import Cluster

        def task(_):
            return mycache._MODEL, mycache.CACHE.get("m"), mycache.predict(0)

        def fill(value):
            mycache.CACHE["x"] = value

        def read_x(_):
            return mycache.CACHE.get("x")

        if __name__ == "__main__":
            with Cluster(n=1, setup=mycache.init) as cl:
                print(cl.par_map(task, [0])[0])
                cl.run_on_all(fill, 7)
                print(cl.par_map(read_x, [0]))
    """, tmp_path)
    assert result.stdout.splitlines() == ["('loaded', 'filled', (0, 'loaded', 'filled'))", "[7]"]


def test_the_masters_new_values_reach_the_worker_unless_the_worker_bound_the_name(
        tmp_path: Path) -> None:
    result = run_script("""
        from sockpool import Cluster

        LIMIT = 1
        LABEL = "from the master"

        def get(x):
            return (LIMIT, LABEL)

        def relabel():
            global LABEL
            LABEL = "from the worker"

        def count(x):
            global COUNT
            COUNT = globals().get("COUNT", 0) + 1
            return COUNT

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                print(cl.par_map(get, [0]))
                LIMIT = 2                      # changed by the master: the next map sees it
                print(cl.par_map(get, [0]))
                cl.run_on_all(relabel)         # bound on the worker: it stays there
                LIMIT = 3
                print(cl.par_map(get, [0]))
                print(cl.par_map(count, range(3)), cl.submit(count, 0).result())
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "[(1, 'from the master')]", "[(2, 'from the master')]", "[(3, 'from the worker')]",
        "[1, 2, 3] 4"]


@pytest.mark.parametrize("plan", ["sequential", "local:1"])
def test_a_global_the_master_binds_anew_reaches_the_worker_even_with_the_same_pickle(
        tmp_path: Path, plan: str) -> None:
    # The worker compared pickles to tell "unchanged": a class defined again (a
    # notebook cell run again), an instance of it, a function defined again held in
    # a list, a cache reset to a fresh {}: each pickles as before (a class by name),
    # so the worker kept the old one ("v1", isinstance False, the stale cache).
    # And a global a task had rebound kept the worker's value after the master's
    # `counter = 100`.  Each now gives what it gives without a cluster.
    result = run_script(f"""
        import sockpool

        class Cfg:
            def version(self):
                return "v1"

        CFG = Cfg()

        def prep(x):
            return f"v1:{{x}}"

        STEPS = [prep]
        FACTOR, CACHE = 1, {{}}
        counter = 0

        def use(x):
            return Cfg.__name__, CFG.version(), isinstance(CFG, Cfg), STEPS[0](x)

        def cached(x):
            if x not in CACHE:
                CACHE[x] = x * FACTOR
            return CACHE[x]

        def count(x):
            global counter
            counter += 1
            return counter

        sockpool.plan("{plan}")
        print(sockpool.par_map(use, [1]), sockpool.par_map(cached, [1, 2]),
              sockpool.par_map(count, [0, 0], chunksize=2))

        class Cfg:
            def version(self):
                return "v2"

        CFG = Cfg()

        def prep(x):
            return f"v2:{{x}}"

        STEPS = [prep]
        FACTOR, CACHE = 100, {{}}
        counter = 100
        print(sockpool.par_map(use, [1]), sockpool.par_map(cached, [1, 2]),
              sockpool.par_map(count, [0, 0], chunksize=2))
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "[('Cfg', 'v1', True, 'v1:1')] [1, 2] [1, 2]",
        "[('Cfg', 'v2', True, 'v2:1')] [100, 200] [101, 102]"]


def test_a_payload_sent_again_brings_its_values_as_the_master_sent_them(tmp_path: Path) -> None:
    # A worker kept the objects a payload carried, which its tasks then changed in
    # place: the same payload again (the master's value put back as it was, or a
    # fresh `CACHE = {}` whose id() an earlier one had had) put the changed object
    # back: 0, 5, 100, 105, 200; and 50 of 60 maps found the reset cache filled.
    result = run_script("""
        from sockpool import Cluster

        SMALL = [0]
        CACHE = {}

        def bump(x):
            seen = SMALL[0]
            SMALL[0] += 100  # (a task may change its worker's copy)
            return seen

        def fill(x):
            hit = x in CACHE
            CACHE[x] = True
            return hit

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                seen = []
                for value in (0, 5, 0, 5, 0):
                    SMALL[0] = value
                    seen += cl.par_map(bump, [1])
                print(seen)
                stale = 0
                for _ in range(60):
                    CACHE = {}  # reset before every map
                    stale += cl.par_map(fill, [1, 2, 3]) != [False] * 3
                print(stale)
    """, tmp_path)
    assert result.stdout.splitlines() == ["[0, 5, 0, 5, 0]", "0"]


def test_a_payload_sent_again_makes_two_names_of_one_object_again_as_one(
        tmp_path: Path) -> None:
    # Each name's value made again on its own: BY_NAME["items"] was no longer ITEMS.
    result = run_script("""
        from sockpool import Cluster

        ITEMS = []
        BY_NAME = {"items": ITEMS}

        def add(x):
            ITEMS.append(x)
            return len(ITEMS), len(BY_NAME["items"]), ITEMS is BY_NAME["items"]

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                seen = cl.par_map(add, [1])
                ITEMS.append(5)  # changed in place: another payload
                seen += cl.par_map(add, [1])
                ITEMS.clear()  # as it was: the first payload again
                seen += cl.par_map(add, [1])
                print(seen)
    """, tmp_path)
    assert result.stdout.splitlines() == ["[(1, 1, True), (2, 2, True), (1, 1, True)]"]


def test_a_worker_rebinding_a_global_that_holds_a_function_keeps_its_own(
        tmp_path: Path) -> None:
    # A function made anew by each payload counted as a change of the master's value
    # once small pickles named __main__'s functions by identity: the initializer's
    # `transform = fast` was undone by the first task.
    result = run_script("""
        import sockpool

        def slow(x):
            return "slow"

        transform = slow
        HANDLERS = {"a": slow}

        def init():
            global transform, HANDLERS
            def fast(x):
                return "fast"
            transform, HANDLERS = fast, {"a": fast}

        def task(x):
            return transform(x), HANDLERS["a"](x)

        if __name__ == "__main__":
            with sockpool.Pool(1, initializer=init) as pool:
                print(pool.map(task, [0]), pool.apply(task, (0,)))
    """, tmp_path)
    assert result.stdout.splitlines() == ["[('fast', 'fast')] ('fast', 'fast')"]


def test_an_initializer_changing_an_instance_of_a_main_class_in_place_is_seen(
        tmp_path: Path) -> None:
    # Small values pickled __main__'s classes by name, which failed where the class
    # cloudpickle made was not bound in the worker's __main__: such a value counted as
    # "not small", and the master's CONFIG was put back before every task.
    result = run_script("""
        import dataclasses
        import sockpool

        @dataclasses.dataclass
        class Config:
            path: str = "unset"

        CONFIG = Config()

        def init():
            CONFIG.path = "/data/worker-local"

        def task(x):
            return CONFIG.path, isinstance(CONFIG, Config)

        if __name__ == "__main__":
            with sockpool.Pool(1, initializer=init) as pool:
                print(pool.map(task, [1, 2, 3]))
    """, tmp_path)
    assert result.stdout.splitlines() == [str([("/data/worker-local", True)] * 3)]


def test_a_payload_sent_again_after_its_class_was_defined_again_keeps_the_old_class(
        tmp_path: Path) -> None:
    # A list of instances, changed in the master and back (its first payload again),
    # then the class cell run again: the worker made the list again by the class's
    # name, giving instances of the new class where the master's are of the old.
    result = run_script("""
        from sockpool import Cluster

        class C:
            tag = "old"

        def make(x):
            return C.tag

        ITEMS = [C()]

        def tags(x):
            return [type(item).tag for item in ITEMS]

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                seen = [cl.submit(make, 0).result(), cl.submit(tags, 0).result()]
                ITEMS.append(C())
                seen.append(cl.submit(tags, 0).result())
                ITEMS.pop()
                exec("class C:\\n    tag = 'new'\\n", globals())
                exec("def make(x):\\n    return C.tag\\n", globals())
                seen += [cl.submit(make, 0).result(), cl.submit(tags, 0).result()]
                print(seen, tags(0))
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "['old', ['old'], ['old', 'old'], 'new', ['old']] ['old']"]


def test_a_list_refilled_with_instances_of_a_class_defined_again_reaches_the_worker(
        tmp_path: Path) -> None:
    # The worker told "unchanged" by pickles that name __main__'s classes by name: the
    # same list refilled with instances of the new class pickled as before, so the
    # worker kept the old instances once the new class had reached it: [3], not [300].
    result = run_script("""
        from sockpool import Cluster

        class Point:
            def __init__(self, v):
                self.v = v

            def value(self):
                return self.v

        POINTS = [Point(1), Point(2)]

        def make(x):
            return Point(x).value()

        def total(x):
            return sum(p.value() for p in POINTS)

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                print(cl.par_map(make, [1]), cl.par_map(total, [0]), total(0))

                class Point:
                    def __init__(self, v):
                        self.v = v

                    def value(self):
                        return self.v * 100

                POINTS[:] = [Point(1), Point(2)]
                print(cl.par_map(make, [1]), cl.par_map(total, [0]), total(0))
    """, tmp_path)
    assert result.stdout.splitlines() == ["[1] [3] 3", "[100] [300] 300"]


def test_a_global_the_master_deleted_is_gone_for_the_next_function_as_in_the_master(
        tmp_path: Path) -> None:
    # The worker kept the master's `max = 10` after `del max`: max(xs) on the
    # worker raised "'int' object is not callable" (a notebook redefining cells).
    result = run_script("""
        from sockpool import Cluster

        max = 10
        data = [1, 2, 3]

        def uses_both(i):
            return i + max + len(data)

        def largest(xs):
            return max(xs)

        def data_or_not(_):
            try:
                return data
            except NameError:
                return "no data"

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                print(cl.par_map(uses_both, range(2)))
                del max, data
                print(cl.par_map(largest, [[1, 5], [2, 3]]), cl.par_map(data_or_not, [0]))
                print(largest([1, 5]), data_or_not(0))
    """, tmp_path)
    assert result.stdout.splitlines() == ["[13, 14]", "[5, 3] ['no data']", "5 no data"]


def _main_functions(source: str, module: str = "__main__") -> types.SimpleNamespace:
    """Functions defined as in a script's ``__main__``, or a module the worker cannot
    import (so cloudpickle ships them by value)."""
    namespace: dict[str, object] = {"__name__": module}
    exec(textwrap.dedent(source), namespace)
    return types.SimpleNamespace(**namespace)


def test_a_forgotten_function_takes_what_only_it_carried_along() -> None:
    cache = FunctionCache()
    main = cache.main_module.__dict__
    script = _main_functions("""
        BIG = list(range(1000))
        SMALL = 1
        def uses_big(): return len(BIG) + SMALL
        def uses_small(): return SMALL
        def binds():
            global MINE
            MINE = "worker's"
    """)
    first = cache.load(b"d1", cloudpickle.dumps(script.uses_big), [])
    second = cache.load(b"d2", cloudpickle.dumps(script.uses_small), [])
    assert first() == 1001 and second() == 1
    assert first.__globals__ is second.__globals__ is main
    cache.load(b"d3", cloudpickle.dumps(script.binds), [])()
    cache.forget(b"d1")
    assert "BIG" not in main  # only the forgotten function carried it
    assert main["SMALL"] == 1 and main["MINE"] == "worker's"
    cache.forget(b"d2")
    cache.forget(b"d3")
    assert "SMALL" not in main and main["MINE"] == "worker's"  # set here: it stays


@pytest.mark.parametrize("order", [("first", "second"), ("second", "first")])
def test_a_global_whose_carriers_were_forgotten_is_put_anew(order: tuple[str, str]) -> None:
    # Forgotten the later first, its value stayed (the earlier one still carried the
    # name); forgotten the earlier, the name was counted as bound here, and every
    # later function's value of it was ignored: stale results from then on.
    cache = FunctionCache()
    script = _main_functions("""
        X = [0] * 100_000
        def read(): return X[0]
    """)
    pickles = {}
    for version, name in enumerate(["first", "second", "third"]):
        exec(f"X[0] = {version}", script.read.__globals__)  # changed in place
        pickles[name] = cloudpickle.dumps(script.read)
    assert cache.load(b"first", pickles["first"], [])() == 0
    assert cache.load(b"second", pickles["second"], [])() == 1
    for name in order:
        cache.forget(name.encode())
    assert "X" not in cache.main_module.__dict__
    assert cache.load(b"third", pickles["third"], [])() == 2


def test_a_cached_function_runs_with_the_values_it_was_sent_with() -> None:
    cache = FunctionCache()
    script = _main_functions("""
        K = 1
        def get(): return K
    """)
    with_one = cloudpickle.dumps(script.get)
    exec("K = 2", script.get.__globals__)
    with_two = cloudpickle.dumps(script.get)
    assert cache.load(b"k1", with_one, [])() == 1
    assert cache.load(b"k2", with_two, [])() == 2
    assert cache.load(b"k1", b"", [])() == 1  # cached: sent again by digest alone
    assert cache.load(b"k2", b"", [])() == 2


def test_exports_reach_every_modules_namespace_and_a_capture_then_replaces_them() -> None:
    cache = FunctionCache()
    cache.export({"RATE": 0.5})
    local = _main_functions("""
        RATE = 0.1
        def rate(): return RATE
        def dynamic(): return globals().get("RATE")
    """, module="models_nowhere_to_import")
    # A new module's namespace starts with the exports; a function's own capture replaces them.
    assert cache.load(b"d1", cloudpickle.dumps(local.dynamic), [])() == 0.5
    assert cache.load(b"d2", cloudpickle.dumps(local.rate), [])() == 0.1
    assert cache.main_module.__dict__["RATE"] == 0.5  # __main__'s namespace is another one


def test_a_value_the_worker_rebound_is_freed_when_its_functions_are_forgotten() -> None:
    import gc
    import weakref

    import numpy as np

    cache = FunctionCache()
    script = _main_functions("""
        import numpy as np
        BIG = np.zeros(1000)
        def uses(): return BIG.size
        def drop():
            global BIG
            BIG = None
    """)
    uses = cache.load(b"u", cloudpickle.dumps(script.uses), [])
    assert uses() == 1000
    drop = cache.load(b"d", cloudpickle.dumps(script.drop), [])
    sent = weakref.ref(cache.main_module.__dict__["BIG"])  # as drop brought it
    assert isinstance(sent(), np.ndarray)
    drop()
    del uses, drop
    cache.forget(b"u")
    cache.forget(b"d")
    gc.collect()
    assert sent() is None  # nothing holds the master's array any more
    assert cache.main_module.__dict__["BIG"] is None  # what the worker bound stays


def test_the_masters_id_of_a_name_goes_with_the_masters_value() -> None:
    from sockpool.common.codec import dumps

    def payload(fn: object) -> bytes:
        return bytes(dumps(fn, standard_first=False, global_ids=True)[0])

    cache = FunctionCache()
    main = cache.main_module.__dict__
    script = _main_functions("""
        DATA = [1, 2]
        MINE = [0]
        def uses(): return len(DATA) + len(MINE)
        def binds():
            global MINE
            MINE = ["worker's"]
    """)
    assert cache.load(b"u", payload(script.uses), [])() == 3
    cache.load(b"b", payload(script.binds), [])()
    seen = cache.shared._master_ids[id(main)]
    assert seen.keys() == {"DATA", "MINE"}
    cache.forget(b"u")
    cache.forget(b"b")
    # DATA left with its function, and its id with it: a worker that runs many
    # functions, each with its own globals, keeps no record of names long gone.
    assert "DATA" not in main and "DATA" not in seen
    # The worker's own MINE stays, and so does the master's id: a master that binds
    # MINE anew is still told from one whose MINE is as it was.
    assert main["MINE"] == ["worker's"] and "MINE" in seen
    exec("MINE = [5]", script.uses.__globals__)
    assert cache.load(b"u2", payload(script.uses), [])() == 3
    assert main["MINE"] == [5]
