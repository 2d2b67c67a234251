"""What an idle cluster costs its master: one heartbeat a second to each worker.

A worker on the master's machine gets a plain heartbeat, which wants no answer
(the master reads the worker's CPU time and memory itself, and its pidfd says
when the process ends), and sends none of its own while the master's come: an
idle local cluster's workers say nothing.  A running local worker is not
polled either.  What the cluster table shows of each worker's use is known as
soon as it is ready.  (Workers on other machines answer clock probes:
``tests/test_profile.py``; so do an ssh cluster's workers on this machine,
whose launcher judges every worker by its silence.)
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import pytest

from sockpool import Cluster
from sockpool.common import protocol
from sockpool.dispatch import dispatcher
from sockpool.launchers import SSHLauncher
from sockpool.launchers.local import LocalWorkerProcess

pytestmark = pytest.mark.timeout(60)


def test_an_idle_local_cluster_only_sends_heartbeats_and_polls_no_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    heard: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    polls = Counter[int]()
    on_message, poll = dispatcher.Dispatcher._on_message, LocalWorkerProcess.poll

    def counting_on_message(self: Any, frames: list[Any]) -> None:
        heard[protocol.parse(frames[1])[0].kind.name] += 1
        on_message(self, frames)

    def counting_poll(self: LocalWorkerProcess) -> int | None:
        polls[self.pid] += 1
        return poll(self)

    monkeypatch.setattr(dispatcher.Dispatcher, "_on_message", counting_on_message)
    monkeypatch.setattr(LocalWorkerProcess, "poll", counting_poll)
    # Workers give up on a master silent for 3 s: only its heartbeats keep them.
    with Cluster(n=2, heartbeat_interval=1.0, heartbeat_timeout=3.0) as cl:
        send = cl._dispatcher.master.send

        def counting_send(identity: bytes, frames: list[Any]) -> bool:
            head = protocol.parse(frames[0])[0]
            sent["probe" if head.ident else head.kind.name] += 1
            return send(identity, frames)

        cl._dispatcher.master.send = counting_send  # type: ignore[method-assign]
        cl.par_map(abs, range(2), chunksize=1)
        time.sleep(1.5)
        pids = [worker.pid for worker in cl.workers]
        assert len(pids) == 2
        heard.clear()
        polls.clear()
        sent.clear()
        time.sleep(5)
        assert heard == Counter(), heard
        assert sent["probe"] == 0, sent
        assert 2 * 4 <= sent["HEARTBEAT"] <= 2 * 6, sent  # one a second per worker
        assert sum(polls.values()) == 0, polls
        assert cl.par_map(abs, range(-4, 0)) == [4, 3, 2, 1]
        assert [worker.pid for worker in cl.workers] == pids  # none gave up on the master


def test_each_workers_cpu_and_memory_are_known_as_soon_as_it_is_ready() -> None:
    # Not one heartbeat interval later (30 s here).
    cell = re.compile(r"<td>[\d.]+ s</td><td>[\d.]+ [kMG]?B</td></tr>")
    for _ in range(15):  # when workers answered probes, 1 cluster in 7 raced here
        with Cluster(n=2, heartbeat_interval=30.0) as cl:
            deadline = time.monotonic() + 3
            while len(cell.findall(cl._repr_html_())) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(cell.findall(cl._repr_html_())) == 2, cl._repr_html_()


def test_an_ssh_clusters_local_workers_still_answer_so_silence_never_ends_them() -> None:
    # SSHLauncher starts its "localhost" workers as local processes, but it does
    # not watch processes: a worker silent for heartbeat_timeout (1 s here) is lost.
    with Cluster(launcher=SSHLauncher(["localhost", "localhost"]),
                 heartbeat_interval=0.2) as cl:
        cl.par_map(abs, range(2), chunksize=1)
        pids = sorted(worker.pid for worker in cl.workers)
        assert len(pids) == 2
        time.sleep(2)
        assert cl.submit(time.sleep, 1.5).result(timeout=30) is None
        assert sorted(worker.pid for worker in cl.workers) == pids
