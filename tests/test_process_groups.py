"""What a local worker's tasks leave in its process group: found by /proc, ended by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import wait_gone

from sockpool.launchers import groups

pytestmark = pytest.mark.timeout(60)


def _session(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_a_member_that_ended_counts_as_gone_at_once() -> None:
    # An ended member stays a zombie where nothing reaps it (a container's init):
    # counted as running, it held every close for the whole grace.
    ended = _session("pass")
    try:
        while not groups.ended_unreaped(ended.pid):
            time.sleep(0.01)
        assert ended.pid not in groups._processes()
        began = time.monotonic()
        groups.end_lingering({ended.pid: groups.terminate_group(ended.pid)}, grace=30)
        assert time.monotonic() - began < 10
    finally:
        ended.wait()


def test_what_ignores_sigterm_gets_sigkill_and_what_started_later_is_spared() -> None:
    stubborn = _session("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                        " time.sleep(60)")
    try:
        time.sleep(0.3)  # (its handler in place)
        group = {stubborn.pid: groups.terminate_group(stubborn.pid)}
        assert stubborn.poll() is None  # SIGTERM alone did nothing
        later = {stubborn.pid: group[stubborn.pid] - 10_000}  # as if the group were reused
        groups.end_lingering(later, grace=0.1)
        assert stubborn.poll() is None
        groups.end_lingering(group, grace=0.2)
        assert stubborn.wait(5) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stubborn.pid, signal.SIGKILL)
        stubborn.wait()
    assert wait_gone([stubborn.pid], 1) == []
