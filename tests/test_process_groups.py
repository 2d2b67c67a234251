"""What a local worker's tasks leave in its process group: found by /proc, ended by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_gone

from sockpool.common import groups

pytestmark = pytest.mark.timeout(60)


def _session(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True)


def _ignoring_sigterm(then: str, *args: str) -> subprocess.Popen[bytes]:
    """A session whose process ignores SIGTERM, returned once its handler is in place
    (a fixed sleep for it was too short on a loaded machine)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import os, signal, sys, time;"
         " signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)\n"
         + then, *args], start_new_session=True, stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


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
    stubborn = _ignoring_sigterm("time.sleep(60)")
    try:
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
        stubborn.stdout.close()  # type: ignore[union-attr]
    assert wait_gone([stubborn.pid], 1) == []


def test_a_process_forked_after_its_leader_ended_goes_with_the_group(tmp_path: Path) -> None:
    # Started after the leader ended, it could be a stranger that took the group's
    # id; but while a member older than that lives, the id was never free.
    later = tmp_path / "later.pid"
    stubborn = _ignoring_sigterm("time.sleep(0.3); pid = os.fork()\n"
                                 "if pid: open(sys.argv[1], 'w').write(str(pid))\n"
                                 "time.sleep(60)", str(later))
    try:
        group = {stubborn.pid: groups.terminate_group(stubborn.pid)}  # "the leader ended"
        while not later.exists() or not later.read_text():
            time.sleep(0.05)
        groups.end_lingering(group, grace=0.2)
        assert wait_gone([stubborn.pid, int(later.read_text())], 5) == []
    finally:
        for pid in [stubborn.pid, *([int(later.read_text())] if later.exists() else [])]:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(pid, signal.SIGKILL)
        stubborn.wait()
        stubborn.stdout.close()  # type: ignore[union-attr]
