"""Workers started by hand from the printed instructions, as on another machine."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading

import psutil
import pytest
from helpers import wait_gone

from sockpool import Cluster, ManualLauncher

pytestmark = pytest.mark.timeout(120)


def test_manual_workers_follow_the_printed_instructions() -> None:
    printed: queue.Queue[str] = queue.Queue()
    started: list[subprocess.Popen[bytes]] = []

    def operator() -> None:  # a person at the worker machines, doing what the text says
        for _ in range(2):
            text = printed.get(timeout=60)
            command, line = text.splitlines()[1].strip(), text.splitlines()[-1]
            assert command == "sockpool worker"  # the script pip installs beside python
            script = os.path.join(os.path.dirname(sys.executable), "sockpool")
            worker = subprocess.Popen([script, "worker"], stdin=subprocess.PIPE)
            assert worker.stdin is not None
            worker.stdin.write(line.encode() + b"\n")  # pasted: never on a command line
            worker.stdin.flush()
            started.append(worker)

    helper = threading.Thread(target=operator)
    helper.start()
    try:
        launcher = ManualLauncher(output=printed.put)
        with Cluster(n=2, launcher=launcher, heartbeat_interval=0.2) as cl:
            helper.join(30)
            assert cl._dispatcher.master.address.startswith("tcp://127.0.0.1:")
            assert sorted(w.pid for w in cl.workers) == sorted(p.pid for p in started)
            assert cl.par_map(lambda x: x * 3, range(6)) == [0, 3, 6, 9, 12, 15]
            assert repr(cl).startswith("<Cluster manual, listening on 127.0.0.1")
            secret = cl._dispatcher.pool.workers[0].keys.secret_key
            assert all(secret not in " ".join(psutil.Process(p.pid).cmdline()) for p in started)
        assert wait_gone([p.pid for p in started], 10) == []  # SHUTDOWN reached them
    finally:
        for worker in started:
            if worker.poll() is None:
                worker.kill()
            worker.wait()


def test_an_output_that_is_not_a_function_is_refused_before_anything_starts() -> None:
    # A file object passed as output= failed only as the cluster started:
    # "the cluster failed while starting: '...' object is not callable".
    import io

    with pytest.raises(TypeError, match=r"output=\.\.\.\) takes a function .* not StringIO"):
        ManualLauncher(output=io.StringIO())  # type: ignore[arg-type]
