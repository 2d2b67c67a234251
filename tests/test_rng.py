"""Reproducible random streams: one per task, whatever the workers, chunks or order."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import run_script

from sockpool import Cluster, task_rng

pytestmark = pytest.mark.timeout(120)


def draws(i: int) -> tuple[int, float, float, float]:
    """What a task draws from each of its three seeded sources."""
    return (i, task_rng().random(), random.random(), float(np.random.random()))


def test_results_are_identical_for_any_workers_chunks_and_order() -> None:
    seen = []
    for n, chunksize, ordered in [(1, None, True), (2, 1, True), (2, 7, False), (2, None, False)]:
        with Cluster(n=n, seed=2024) as cl:
            results = cl.par_map(draws, range(50), chunksize=chunksize, ordered=ordered)
            seen.append(sorted(results))
    assert all(result == seen[0] for result in seen[1:])
    with Cluster(n=2, seed=2024) as cl:
        assert sorted(cl.imap(draws, range(50), ordered=False)) == seen[0]


def test_a_retried_task_draws_the_same_numbers(tmp_path: Path) -> None:
    marker = str(tmp_path / "died")

    def dies_once(i: int) -> tuple[int, float, float, float]:
        if i == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return draws(i)

    with Cluster(n=2, seed=9) as cl:
        retried = cl.par_map(dies_once, range(6), chunksize=1, retries=1)
    with Cluster(n=1, seed=9) as cl:
        plain = cl.par_map(draws, range(6))
    assert retried == plain


def test_the_documented_rule_exactly() -> None:
    with Cluster(n=2, seed=11) as cl:
        first_call = cl.par_map(lambda i: task_rng().random(), range(5))
        second_call = cl.par_map(lambda i: task_rng().random(), range(5))
        explicit = cl.par_map(lambda i: task_rng().random(), range(5), seed=77)
        cl.set_seed(11)
        again = cl.par_map(lambda i: task_rng().random(), range(5))
        submitted = cl.submit(lambda: task_rng().random()).result(timeout=20)

    def expected(entropy: int, *key: int) -> float:
        return float(np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key))
                     .random())

    assert first_call == [expected(11, 0, i) for i in range(5)]    # k = 0
    assert second_call == [expected(11, 1, i) for i in range(5)]   # k = 1: not a repeat
    assert explicit == [expected(77, i) for i in range(5)]         # seed= on the call
    assert again == first_call                                     # set_seed starts over
    assert submitted == expected(11, 1, 0)                         # a submit is a call too


def test_streams_are_distinct_across_tasks(shared_cluster: Cluster) -> None:
    first = shared_cluster.par_map(lambda i: (task_rng().integers(2**62), random.random()),
                                   range(10_000), seed=5)
    assert len({a for a, _ in first}) == 10_000
    assert len({b for _, b in first}) == 10_000
    other = shared_cluster.par_map(lambda i: task_rng().integers(2**62), range(100), seed=6)
    assert set(other).isdisjoint(a for a, _ in first[:100])


def test_unseeded_workers_start_from_distinct_entropy(shared_cluster: Cluster) -> None:
    firsts = shared_cluster.run_on_all(lambda: (random.random(), float(np.random.random())))
    assert len(set(firsts)) == len(firsts) == 2
    rng = task_rng()  # outside a task: a fresh Generator
    assert isinstance(rng, np.random.Generator)


def _global_draws(i: int) -> tuple[float, float]:
    return random.random(), float(np.random.random())


def test_unseeded_tasks_after_a_seeded_map_are_not_seeded() -> None:
    # The seeded task's streams stayed in the worker's random and np.random: every
    # unseeded map after `seed=3` drew the same numbers, run after run.
    with Cluster(n=1) as cl:
        after = []
        for _ in range(2):
            seeded = cl.par_map(_global_draws, [0], seed=3)
            after.append(cl.par_map(_global_draws, range(2)))
            assert cl.par_map(_global_draws, [0], seed=3) == seeded
        assert after[0] != after[1]
        assert len({draw for draws in after for pair in draws for draw in pair}) == 8


def test_bad_seeds_are_refused(shared_cluster: Cluster) -> None:
    for bad in (-1, 1.5, "7", True, 2**128):
        with pytest.raises(ValueError, match="seed"):
            shared_cluster.par_map(abs, [1], seed=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        Cluster(n=1, seed=-5)
    # A generator is not a seed; the task's own one is task_rng().
    with pytest.raises(ValueError, match=r"not Generator\(PCG64\).*sockpool.task_rng\(\)"):
        shared_cluster.par_map(abs, [1], seed=np.random.default_rng(0))  # type: ignore[arg-type]


def test_static_schedule_assigns_contiguous_chunks_round_robin_up_front() -> None:
    with Cluster(n=2) as cl:
        order = [w.pid for w in sorted(cl.workers, key=lambda w: w.id)]
        for _ in range(3):  # the same assignment every time
            pids = cl.par_map(lambda i: os.getpid(), range(8), schedule="static")
            assert pids == [order[0]] * 4 + [order[1]] * 4
        pids = cl.par_map(lambda i: os.getpid(), range(6), schedule="static", chunksize=1)
        assert pids == order * 3
        assert cl.par_starmap(pow, [(2, i) for i in range(5)], schedule="static") == [
            1, 2, 4, 8, 16]
        with pytest.raises(ValueError, match="schedule"):
            cl.par_map(abs, [1], schedule="guided")


def test_a_static_chunk_whose_worker_is_lost_is_retried_elsewhere(tmp_path: Path) -> None:
    marker = str(tmp_path / "died")

    def dies_once(i: int) -> int:
        if i == 5 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return i * i

    with Cluster(n=2) as cl:
        assert cl.par_map(dies_once, range(8), schedule="static", retries=1) == [
            i * i for i in range(8)]


def test_a_nested_call_in_a_seeded_task_gives_the_same_numbers_under_every_plan(
        tmp_path: Path) -> None:
    # Inside a task the plan is sequential and unseeded: the nested tasks draw from the
    # enclosing task's stream, and the plan's count of seeded calls does not move.
    source = """
        import random, sys, sockpool

        def draw(x):
            return round(random.random(), 6)

        def nested(x):
            return sockpool.par_map(draw, range(2)), sockpool.submit(draw, 0).result(), draw(0)

        if __name__ == "__main__":
            with sockpool.plan(sys.argv[1], seed=11):
                print(sockpool.par_map(nested, range(2)))
                print(sockpool.par_map(draw, range(2)))
    """
    outputs = [run_script(source, tmp_path, backend).stdout for backend in ("sequential",
                                                                          "local:2")]
    assert outputs[0] == outputs[1]
    assert len(set(outputs[0].splitlines()[0].split(", "))) > 4  # numbers, and different
