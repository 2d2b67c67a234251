"""What an idle cluster costs its master: heartbeats only.

While the master probes every worker each interval, a worker's answer is its
heartbeat (one message each way per worker and interval, not a heartbeat of
its own on top when a probe comes a few milliseconds late), and a running
local worker is not polled: its pidfd says when it ends.  What a worker's
answers carry (its CPU time and memory) is known from the first one on.
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
from sockpool.launchers.local import LocalWorkerProcess

pytestmark = pytest.mark.timeout(60)


def test_an_idle_cluster_exchanges_one_probe_and_its_answer_and_polls_no_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    heard: Counter[str] = Counter()
    polls = Counter[int]()
    on_message, poll = dispatcher.Dispatcher._on_message, LocalWorkerProcess.poll

    def counting_on_message(self: Any, frames: list[Any]) -> None:
        head, _ = protocol.parse(frames[1])
        if head.kind is protocol.Kind.HEARTBEAT:
            heard["answer" if head.ident else "own heartbeat"] += 1
        on_message(self, frames)

    def counting_poll(self: LocalWorkerProcess) -> int | None:
        polls[self.pid] += 1
        return poll(self)

    monkeypatch.setattr(dispatcher.Dispatcher, "_on_message", counting_on_message)
    monkeypatch.setattr(LocalWorkerProcess, "poll", counting_poll)
    with Cluster(n=2, heartbeat_interval=1.0) as cl:
        cl.par_map(abs, range(2), chunksize=1)
        time.sleep(1.5)
        heard.clear()
        polls.clear()
        time.sleep(5)
        assert heard["own heartbeat"] == 0, heard
        assert 2 * 4 <= heard["answer"] <= 2 * 6, heard  # one a second per worker
        assert sum(polls.values()) == 0, polls
        assert cl.par_map(abs, range(-4, 0)) == [4, 3, 2, 1]


def test_each_workers_cpu_and_memory_are_known_as_soon_as_it_is_ready() -> None:
    # The master probes a worker when its control connection says HELLO; the
    # answer may come back before the data connection's HELLO made the worker
    # ready. It counts all the same, not one heartbeat interval later (30 s here).
    cell = re.compile(r"<td>[\d.]+ s</td><td>[\d.]+ [kMG]?B</td></tr>")
    for _ in range(15):  # the race: about one cluster in seven here
        with Cluster(n=2, heartbeat_interval=30.0) as cl:
            deadline = time.monotonic() + 3
            while len(cell.findall(cl._repr_html_())) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(cell.findall(cl._repr_html_())) == 2, cl._repr_html_()
