"""Ctrl-C during a map: prompt KeyboardInterrupt, running tasks interrupted, cluster usable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import sys, time
from sockpool import Cluster

with Cluster(n=2) as cl:
    print("ready", flush=True)
    try:
        cl.{call}
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    started = time.monotonic()
    print("usable", cl.par_map(abs, [-1, -2]), round(time.monotonic() - started, 1), flush=True)
"""


@pytest.mark.parametrize("call", [
    "par_map(time.sleep, [20] * 6, chunksize=1)",
    "imap(time.sleep, [20] * 6).__next__()",
])
def test_ctrl_c_interrupts_a_running_map(tmp_path: Path, call: str) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT.format(call=call))
    master = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert master.stdout is not None
        assert master.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the tasks are running now
        sent = time.monotonic()
        os.kill(master.pid, signal.SIGINT)
        assert master.stdout.readline().strip() == "interrupted"
        assert time.monotonic() - sent < 1.0
        # The sleeping tasks were interrupted, so the workers answer at once.
        usable = master.stdout.readline().split(maxsplit=1)
        assert usable[0] == "usable" and usable[1].startswith("[1, 2]"), usable
        assert float(usable[1].rsplit(maxsplit=1)[1]) < 2.0
        assert master.wait(10) == 0, master.stderr.read() if master.stderr else ""
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
