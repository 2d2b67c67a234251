"""Timing helpers shared by the benchmarks (run as scripts from this folder)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def round_trips(submit: Callable[..., Any], calls: int) -> float:
    """Median seconds of ``submit(abs, 1).result()`` over ``calls`` calls."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        submit(abs, 1).result()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
