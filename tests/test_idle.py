"""What an idle cluster costs its master: heartbeats only.

While the master probes every worker each interval, a worker's answer is its
heartbeat (one message each way per worker and interval, not a heartbeat of
its own on top when a probe comes a few milliseconds late), and a running
local worker is not polled: its pidfd says when it ends.
"""

from __future__ import annotations

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
