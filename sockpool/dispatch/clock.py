"""How far each worker's clock is from the master's.

The master's heartbeat probe carries its clock (``time.time_ns()``), and the
worker answers at once with its own.  Of the last few round trips the shortest
gives the offset (the worker's reading against the middle of the round trip),
and half of it bounds the error: a worker that answers quickly, over a fast
network, is placed within tens of microseconds.  A worker on the master's own
machine reads the same clock: it is not probed, and its offset is exactly zero.
"""

from __future__ import annotations

from collections import deque

from ..common.protocol import ClockReply

#: Round trips a worker's clock offset is chosen from (the shortest wins).
CLOCK_SAMPLES = 8


class ClockSync:
    """The offset of one worker's clock from the master's (``time.time()``, seconds)."""

    def __init__(self, same_host: bool = False) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=CLOCK_SAMPLES)
        self.offset = 0.0  # worker clock minus master clock
        # A bound on the offset's error (half the best round trip): none on this
        # machine, where both read the same clock.
        self.error = 0.0 if same_host else float("inf")
        self._exact = same_host

    def sample(self, reply: ClockReply, received_ns: int) -> None:
        """Take one probe's round trip: sent at ``reply.probe_ns``, back at ``received_ns``."""
        round_trip = (received_ns - reply.probe_ns) / 1e9
        if self._exact or round_trip < 0:  # the same clock; or ours stepped back meanwhile
            return
        offset_ns = reply.worker_ns - (reply.probe_ns + received_ns) // 2  # exact, in ints
        self._samples.append((round_trip, offset_ns / 1e9))
        best, self.offset = min(self._samples)
        self.error = best / 2
