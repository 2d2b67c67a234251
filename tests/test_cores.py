"""detect_cores counts what this process may use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sockpool import detect_cores

pytestmark = pytest.mark.timeout(60)


def test_counts_are_positive_and_consistent() -> None:
    logical = detect_cores()
    physical = detect_cores(logical=False)
    assert 1 <= physical <= logical <= (os.cpu_count() or 1)


def test_affinity_restricts_the_count() -> None:
    code = ("import os, sockpool\n"
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "print(sockpool.detect_cores(), sockpool.detect_cores(logical=False))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out.split() == ["1", "1"]
