"""Clusters over ssh, against real OpenSSH servers: loopback aliases and namespace hosts.

The testbed (tests/testbed.py, from TESTBED.md) gives ``node0``..``node2``, a
private sshd on 127.0.0.1-3, and ``sp-n1``..``sp-n3``, hosts in network
namespaces with their own hostname and address (10.213.0.1x), all reached
through ``~/.ssh/config`` aliases.  Every test ends with nothing left running
on any of them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import (
    check_only_the_task_it_died_in_was_lost,
    dying_mid_chunk,
    master_program,
    run_script,
    wait_gone,
)
from testbed import Testbed

import sockpool
from sockpool import Cluster, LaunchError, SSHHost, SSHLauncher, WorkerLostError

pytestmark = pytest.mark.timeout(120)

PYTHON = sys.executable  # the venv's Python: sockpool is installed there
NS_HOSTS = ["sp-n1", "sp-n2", "sp-n3"]


@pytest.fixture(autouse=True)
def nothing_left_on_the_hosts(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, no process (agent, worker, session) is left on any test host."""
    yield
    if "testbed" not in request.fixturenames and "namespace_hosts" not in request.fixturenames:
        return
    bed: Testbed = request.getfixturevalue("testbed")
    deadline = time.monotonic() + 30
    while (left := bed.remote_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = []
    for process in left:
        with contextlib.suppress(psutil.Error):
            described.append((process.pid, process.cmdline()[:3]))
            process.kill()
    assert not described, f"left running on the test hosts: {described}"


def _namespace_of(pid: int) -> str:
    """The network namespace a process is in ("" once it is gone)."""
    return subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                          text=True, check=False).stdout.strip()


# -- the job a lab runs -------------------------------------------------------------------


def test_par_map_over_three_hosts_with_closures_and_a_local_module(
        namespace_hosts: Testbed, tmp_path: Path) -> None:
    (tmp_path / "labtools.py").write_text("def scale(x, k):\n    return x * k\n")
    result = run_script(f"""
        import json, os, socket, sys
        import labtools                      # next to the script, not installed
        from sockpool import Cluster

        SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
        K = 3

        def make_task(offset):
            def task(x):                     # a closure over offset, a global and a module
                return {{"value": labtools.scale(x, K) + offset, "host": socket.gethostname(),
                        "pid": os.getpid(), "cwd": os.getcwd(),
                        "path_has_script": any(os.path.abspath(p or ".") == SCRIPT_DIR
                                               for p in sys.path)}}
            return task

        os.remove(labtools.__file__)         # the hosts could not import it by name anyway
        with Cluster(hosts={{"sp-n1": 2, "sp-n2": 2, "sp-n3": 2}}, python={PYTHON!r}) as cl:
            workers = [w._asdict() for w in cl.workers]
            out = cl.par_map(make_task(100), range(24), chunksize=1)
        print(json.dumps({{"workers": workers, "out": out}}))
    """, tmp_path)
    report = json.loads(result.stdout.splitlines()[-1])
    out, workers = report["out"], report["workers"]
    assert [row["value"] for row in out] == [3 * x + 100 for x in range(24)]
    assert sorted(w["host"] for w in workers) == sorted(NS_HOSTS * 2)
    assert len({w["pid"] for w in workers}) == 6
    pid_host = {w["pid"]: w["host"] for w in workers}
    for row in out:  # each result came from a worker the cluster listed, on its own host
        assert pid_host[row["pid"]] == row["host"]
        assert row["cwd"] != str(tmp_path) and not row["path_has_script"]


def test_workers_report_their_host_and_pid(namespace_hosts: Testbed) -> None:
    with Cluster(hosts=["sp-n1", "sp-n2", "sp-n2"], python=PYTHON) as cl:
        workers = cl.workers
        assert sorted(w.host for w in workers) == ["sp-n1", "sp-n2", "sp-n2"]
        for worker in workers:  # the pid is a real process, in that host's namespace
            assert _namespace_of(worker.pid) == worker.host
            assert "sockpool.worker" in " ".join(psutil.Process(worker.pid).cmdline())
        seen = cl.par_map(lambda _: (os.uname().nodename, os.getpid()), range(30))
        assert {pid for _, pid in seen} <= {w.pid for w in workers}
        assert {host for host, _ in seen} <= {"sp-n1", "sp-n2"}


def test_a_remote_worker_killed_is_described_by_its_hosts_agent(namespace_hosts: Testbed) -> None:
    with Cluster(hosts=["sp-n1"], python=PYTHON) as cl:
        with pytest.raises(WorkerLostError) as lost:
            # (100 MB first: a peak no larger than the host agent's is left out)
            cl.submit(lambda: (b"x" * 100_000_000, os.kill(os.getpid(), signal.SIGKILL))
                      ).result(timeout=30)
        assert lost.value.host == "sp-n1"
        assert "killed by SIGKILL (peak memory 1" in str(lost.value)  # wait4 on the host
        assert " MB)" in str(lost.value)
        # Its replacement, while it starts, has no pid yet: it showed the ssh
        # client's, whose kill would end every worker on the host.
        starting = [w for w in cl.workers if w.state == "starting"]
        assert starting and all(w.pid == 0 for w in starting), starting
        assert cl.submit(abs, -3).result(timeout=30) == 3  # and it was replaced
        assert all(_namespace_of(w.pid) == "sp-n1" for w in cl.workers)


def test_a_remote_worker_dying_mid_chunk_loses_only_that_task(namespace_hosts: Testbed,
                                                               tmp_path: Path) -> None:
    # Chunks of 10 on one worker of sp-n1: tasks 10..14 finished (12 by raising)
    # before 15 killed it.  Its host's agent read their results from the worker's
    # log and reported them with its exit: they are delivered, and nothing reruns.
    # (Kept off shared memory, the worker is as remote as on another machine:
    # the master cannot read its memory itself.)
    log = tmp_path / "ran"
    log.write_text("")
    host = SSHHost("sp-n1", env={"SOCKPOOL_SHARED_MEMORY": "0"})
    with Cluster(hosts=[host], python=PYTHON) as cl:
        results = cl.par_map(dying_mid_chunk(str(log), raises=12, dies=15), range(20),
                             chunksize=10, errors="return")
    check_only_the_task_it_died_in_was_lost(results, log, raises=12, dies=15)
    assert results[15].host == "sp-n1"


def _stuck(seconds: float) -> None:
    while True:
        time.sleep(seconds)


def test_a_remote_task_past_its_time_limit_says_where_it_was(
        namespace_hosts: Testbed) -> None:
    # Only a local worker could be asked for its stack: an ssh worker's timeout said
    # "ran longer than 1 s" and no more.  Its host's agent asks it now, and reports
    # the stack with its exit.
    with Cluster(hosts=["sp-n1"], python=PYTHON) as cl:
        with pytest.raises(sockpool.TaskTimeoutError) as raised:
            cl.submit(_stuck, 0.05, timeout=0.5).result(timeout=30)
        error = raised.value
        assert error.host == "sp-n1" and error.timeout == 0.5
        line = _stuck.__code__.co_firstlineno + 2
        assert error.stack.splitlines()[-1] == f'  File "{__file__}", line {line} in _stuck'
        assert f"where it was when stopped:\n{error.stack}" in str(error)
        assert cl.submit(abs, -3).result(timeout=30) == 3  # replaced


def _start_a_child_then_hang(pid_file: str) -> None:
    child = subprocess.Popen(["sleep", "300"])
    Path(pid_file).write_text(str(child.pid))
    while True:
        time.sleep(0.05)


def test_what_a_remote_task_started_ends_with_its_worker(namespace_hosts: Testbed,
                                                         tmp_path: Path) -> None:
    # The worker, stopped for its time limit, left its child running on the host
    # (its parent gone, init's) until the host's agent exited, and past that.
    pid_file = tmp_path / "child"
    with Cluster(hosts=["sp-n1"], python=PYTHON) as cl:
        with pytest.raises(sockpool.TaskTimeoutError):
            cl.submit(_start_a_child_then_hang, str(pid_file), timeout=0.5).result(timeout=30)
        child = int(pid_file.read_text())
        assert wait_gone([child], 10) == []  # (SIGTERM, as its agent reaped the worker)
        assert cl.submit(abs, -3).result(timeout=30) == 3


def _last_words(x: int) -> None:
    for line in range(40):
        print(f"task {x} line {line} " + "." * 2000)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def test_output_a_remote_worker_flushed_before_a_sigkill_reaches_the_user(
        namespace_hosts: Testbed, capsys: pytest.CaptureFixture[str]) -> None:
    # Its OUTPUT messages die in libzmq's queue with it; its host's agent reads them
    # from the worker's output log and reports them with its exit.
    host = SSHHost("sp-n1", env={"SOCKPOOL_SHARED_MEMORY": "0"})
    with Cluster(hosts=[host], python=PYTHON) as cl:
        for x in range(3):
            with pytest.raises(WorkerLostError):
                cl.submit(_last_words, x).result(timeout=30)
    lines = capsys.readouterr().out.splitlines()
    for x in range(3):
        assert [line for line in lines if line.startswith(f"task {x} ")] == [
            f"task {x} line {line} " + "." * 2000 for line in range(40)]


def _below_python(x: int) -> int:
    print("print", x)
    subprocess.run(["echo", f"child {x}"], check=True)
    os.write(2, f"os.write to stderr {x}\n".encode())
    return x


def test_what_a_remote_task_writes_below_python_comes_home(
        testbed: Testbed, capfd: pytest.CaptureFixture[str]) -> None:
    with Cluster(hosts=["node1"], python=PYTHON) as cl:
        assert cl.par_map(_below_python, [1, 2], chunksize=1) == [1, 2]
    out, err = capfd.readouterr()
    assert out.splitlines() == ["print 1", "child 1", "print 2", "child 2"]
    assert err.splitlines() == ["os.write to stderr 1", "os.write to stderr 2"]


def test_loopback_aliases_and_localhost_mix_in_one_cluster(testbed: Testbed) -> None:
    with Cluster(hosts=["node1", "node2", "localhost"], python=PYTHON) as cl:
        assert sorted(w.host for w in cl.workers) == ["localhost", "node1", "node2"]
        local = next(w for w in cl.workers if w.host == "localhost")
        assert psutil.Process(local.pid).ppid() == os.getpid()  # no ssh for it
        assert cl.par_map(lambda x: x + 1, range(50)) == list(range(1, 51))


def test_n_and_hosts_together_add_local_workers(testbed: Testbed) -> None:
    with Cluster(2, hosts={"node1": 1}, python=PYTHON) as cl:
        assert sorted(w.host for w in cl.workers) == ["localhost", "localhost", "node1"]
    # Beside a "localhost" of hosts= too: that waited out connect_timeout for a
    # worker the launcher had no slot for.
    started = time.monotonic()
    with Cluster(1, hosts=["node1", "localhost"], python=PYTHON, connect_timeout=20) as cl:
        assert sorted(w.host for w in cl.workers) == ["localhost", "localhost", "node1"]
    assert time.monotonic() - started < 10


def test_a_host_given_by_name_and_as_an_ssh_host_adds_up() -> None:
    from sockpool.launchers.ssh_hosts import parse_hosts

    (host,) = parse_hosts(["node1", SSHHost("node1", workers=2, python="/opt/py")])
    assert (host.destination, host.workers, host.python) == ("node1", 3, "/opt/py")
    with pytest.raises(ValueError, match="'node1' is given as an SSHHost twice"):
        parse_hosts([SSHHost("node1"), SSHHost("node1", workers=2)])


def test_run_on_all_reaches_every_worker_while_remote_workers_are_recycled(
        testbed: Testbed) -> None:
    # A recycled ssh worker's slot stayed taken until its process ended, so its
    # replacement started late and run_on_all, which leaves out workers told to
    # stop, returned [] right after a map.
    with Cluster(hosts=["node1", "node2"], python=PYTHON, max_tasks_per_worker=1) as cl:
        for _ in range(3):
            cl.par_map(abs, range(2), chunksize=1)  # both workers retire
            pids = cl.run_on_all(os.getpid)
            assert len(pids) == 2 and len(set(pids)) == 2


def test_an_ssh_launcher_serves_one_cluster_after_another(testbed: Testbed) -> None:
    # The second cluster found the first one's closed sessions and started nothing.
    launcher = SSHLauncher(["node1", "node2"], python=PYTHON)
    for round_ in range(2):
        with Cluster(launcher=launcher, connect_timeout=20) as cl:
            assert sorted(w.host for w in cl.workers) == ["node1", "node2"], round_
            assert cl.par_map(abs, [-1, -2]) == [1, 2]


def test_one_ssh_connection_starts_all_of_a_hosts_workers(namespace_hosts: Testbed) -> None:
    launcher = SSHLauncher({"sp-n1": 3}, python=PYTHON)
    with Cluster(launcher=launcher) as cl:
        assert len(launcher.sessions) == 1
        agent = psutil.Process(cl.workers[0].pid).parent()
        assert {psutil.Process(w.pid).ppid() for w in cl.workers} == {agent.pid}
        assert cl.n_workers == 3


def test_keys_never_appear_on_a_command_line(namespace_hosts: Testbed) -> None:
    with Cluster(hosts={"sp-n1": 2}, python=PYTHON) as cl:
        secrets = [r.keys.secret_key for r in cl._dispatcher.pool.workers.values()]
        token = cl._dispatcher.token
        remote = namespace_hosts.remote_processes()
        local = psutil.Process().children(recursive=True)
        for process in remote + local:
            with contextlib.suppress(psutil.Error):
                line = " ".join(process.cmdline())
                assert token not in line and not any(s in line for s in secrets)
        assert all(address.startswith("tcp://10.213.0.1:")
                   for address in cl._dispatcher.master._tcp_addresses.values()
                   if "127.0.0.1" not in address)


# -- connection back ----------------------------------------------------------------------


def test_tunnel_reaches_a_host_that_cannot_reach_the_master(namespace_hosts: Testbed) -> None:
    before = set(glob.glob("/tmp/sockpool-*.sock"))
    # The master listens on loopback only: a namespace host cannot dial it directly.
    with Cluster(hosts={"sp-n2": 2}, python=PYTHON, tunnel=True) as cl:
        assert list(cl._dispatcher.master._tcp_addresses) == ["127.0.0.1"]
        assert cl.par_map(lambda x: (x * x, os.uname().nodename), range(10)) == [
            (x * x, "sp-n2") for x in range(10)]
    deadline = time.monotonic() + 10
    while set(glob.glob("/tmp/sockpool-*.sock")) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(glob.glob("/tmp/sockpool-*.sock")) - before == set()  # the agent removed it


def test_listen_overrides_the_address_workers_dial(namespace_hosts: Testbed) -> None:
    with Cluster(hosts={"sp-n1": 1}, python=PYTHON, listen="10.213.0.1") as cl:
        assert "10.213.0.1" in cl._dispatcher.master._tcp_addresses
        assert cl.par_map(abs, [-1, -2]) == [1, 2]


# -- remote workers never outlive the master ------------------------------------------------


def _wait_nothing_on(bed: Testbed, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := bed.remote_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_master_killed_ends_remote_workers_at_once(namespace_hosts: Testbed,
                                                   tmp_path: Path) -> None:
    source = f"""
        import json, time
        from sockpool import Cluster
        cl = Cluster(hosts={{"sp-n1": 2, "sp-n3": 1}}, python={PYTHON!r})
        print(json.dumps([w.pid for w in cl.workers]), flush=True)
        cl.submit(time.sleep, 60)
        time.sleep(60)
    """
    with master_program(tmp_path / "master.py", source) as (master, pids):
        running = {p.pid for p in namespace_hosts.remote_processes()}
        assert set(pids) <= running and len(pids) == 3
        started = time.monotonic()
        master.send_signal(signal.SIGKILL)
        master.wait()
        assert _wait_nothing_on(namespace_hosts, 10) == []
        # stdin end-of-file travels through ssh: no heartbeat timeout needed
        assert time.monotonic() - started < 5


def _start_then_sleep(started: str) -> None:
    Path(started, str(os.getpid())).touch()
    time.sleep(30)


def test_ssh_link_dropping_ends_remote_workers_and_is_a_lost_worker(
        namespace_hosts: Testbed, tmp_path: Path) -> None:
    with Cluster(hosts={"sp-n1": 1, "sp-n2": 1}, python=PYTHON) as cl:
        launcher = cl._dispatcher.launcher
        assert isinstance(launcher, SSHLauncher)
        victim = next(w for w in cl.workers if w.host == "sp-n1")
        futures = [cl.submit(_start_then_sleep, str(tmp_path)) for _ in range(2)]
        # Both started, one on each host: a future is running once a worker holds
        # it, and a task the lost worker held but had not started goes to the other
        # (behind its 30 s), as it should; the test waited in vain for it to fail.
        deadline = time.monotonic() + 10
        while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(int(pid) for pid in os.listdir(tmp_path)) == sorted(
            w.pid for w in cl.workers)
        os.kill(launcher.sessions["sp-n1"].pid, signal.SIGKILL)  # the ssh client dies
        done, _ = concurrent.futures.wait(futures, timeout=10,
                                          return_when=concurrent.futures.FIRST_EXCEPTION)
        assert len(done) == 1
        with pytest.raises(WorkerLostError, match="ssh session to sp-n1 ended"):
            done.pop().result()
        deadline = time.monotonic() + 10  # the far end saw the session close
        while psutil.pid_exists(victim.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not psutil.pid_exists(victim.pid) or (
            psutil.Process(victim.pid).status() == psutil.STATUS_ZOMBIE)
        assert [w.host for w in cl.workers] == ["sp-n2"]  # a gone host gets no replacement
        cl.close()


@pytest.mark.parametrize("retries", [0, 1])
def test_when_the_last_hosts_go_their_running_tasks_are_lost_workers_not_no_workers_left(
        testbed: Testbed, tmp_path: Path, retries: int) -> None:
    # The tasks running when the last sessions ended failed with NoWorkersLeftError
    # ("replacements failed to start"), which `except WorkerLostError` misses; with
    # retries=1 still, once queued to run again with no worker left to run them.
    def slow(x: int) -> int:
        (tmp_path / f"started-{x}").touch()
        time.sleep(0.5)
        return x

    with Cluster(hosts=["node1", "node2"], python=PYTHON) as cl:
        launcher = cl._dispatcher.launcher
        assert isinstance(launcher, SSHLauncher)

        def cut_when_tasks_4_and_6_run() -> None:
            deadline = time.monotonic() + 20
            while not all((tmp_path / f"started-{x}").exists() for x in (4, 6)):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
            for session in launcher.sessions.values():
                os.kill(session.pid, signal.SIGKILL)

        cutter = threading.Thread(target=cut_when_tasks_4_and_6_run)
        cutter.start()
        results = cl.par_map(slow, range(8), chunksize=2, errors="return", retries=retries)
        cutter.join()
    assert results[:4] == [0, 1, 2, 3]
    for x, result in enumerate(results[4:], 4):
        if (tmp_path / f"started-{x}").exists():  # it ran when its session ended
            assert isinstance(result, WorkerLostError), (x, result)
            assert "ssh session to node" in str(result)
        else:  # never started: no worker was left to run it
            assert isinstance(result, sockpool.NoWorkersLeftError), (x, result)
            assert "ssh to node1, node2 has nowhere left to start one" in str(result)
    assert {x for x in range(4, 8) if isinstance(results[x], WorkerLostError)} >= {4, 6}


def _cut_mid_map(bed: Testbed, cluster: Cluster, retries: int) -> tuple[object, float]:
    """Cut sp-n1's link 1 s into a map of 0.4 s tasks; the outcome and when it came."""
    cut_at: list[float] = []

    def cut() -> None:
        time.sleep(1.0)
        cut_at.append(time.monotonic())
        bed.set_link(1, up=False)

    cutter = threading.Thread(target=cut)
    cutter.start()
    try:
        outcome: object = cluster.par_map(lambda x: (time.sleep(0.4), x)[1], range(24),
                                          chunksize=1, retries=retries)
    except WorkerLostError as exc:
        outcome = exc
    cutter.join()
    return outcome, time.monotonic() - cut_at[0]


def test_cutting_a_hosts_network_mid_map(namespace_hosts: Testbed) -> None:
    bound = 2.5 + 1.0  # heartbeat_timeout (5 heartbeats of 0.5 s), plus a task's 0.4 s
    try:
        with Cluster(hosts={"sp-n1": 2, "sp-n2": 2}, python=PYTHON,
                     heartbeat_interval=0.5) as cl:
            outcome, after = _cut_mid_map(namespace_hosts, cl, retries=0)
            assert isinstance(outcome, WorkerLostError), outcome
            assert outcome.host == "sp-n1" and "heartbeat lost" in str(outcome)
            assert after < bound + 0.5
            closing = time.monotonic()
        # The cut host's ssh client got 5 s to end, waiting on a host that cannot answer.
        assert time.monotonic() - closing < 3.0
        namespace_hosts.set_link(1, up=True)
        assert _wait_nothing_on(namespace_hosts, 30) == []

        with Cluster(hosts={"sp-n1": 2, "sp-n2": 2}, python=PYTHON,
                     heartbeat_interval=0.5) as cl:
            outcome, after = _cut_mid_map(namespace_hosts, cl, retries=1)
            assert outcome == list(range(24))  # sp-n1's tasks finished on sp-n2
            assert {w.host for w in cl.workers} == {"sp-n2"}  # no replacement into the cut
            namespace_hosts.set_link(1, up=True)
            # Once the link is back, what ran on sp-n1 ends (told to, or on its own).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and [
                    p for p in namespace_hosts.remote_processes()
                    if _namespace_of(p.pid) == "sp-n1"]:
                time.sleep(0.1)
            left = [p for p in namespace_hosts.remote_processes()
                    if _namespace_of(p.pid) == "sp-n1"]
            assert left == []
            assert cl.par_map(lambda x: -x, range(3)) == [0, -1, -2]
    finally:
        namespace_hosts.set_link(1, up=True)


# -- clear errors, per host, and nothing left running --------------------------------------


def _launch_error(hosts: object, **options: object) -> LaunchError:
    with pytest.raises(LaunchError) as caught:
        Cluster(hosts=hosts, connect_timeout=30, **options)  # type: ignore[arg-type]
    return caught.value


def test_unreachable_host(testbed: Testbed) -> None:
    error = _launch_error(["nowhere"], python=PYTHON)
    assert "cannot start workers on nowhere: ssh could not connect or log in" in str(error)
    assert "Connection refused" in str(error) and error.returncode == 255
    assert error.command is not None and "ssh" in error.command and "nowhere" in error.command


def test_authentication_refused(testbed: Testbed) -> None:
    error = _launch_error(["stranger"], python=PYTHON)
    assert "stranger" in str(error) and "Permission denied (publickey)" in str(error)


def test_no_such_interpreter(testbed: Testbed) -> None:
    error = _launch_error({"node1": SSHHost("node1", python="/opt/no/python3")})
    assert "the interpreter (python= or SOCKPOOL_REMOTE_PYTHON) was not found there" in str(
        error)
    assert "/opt/no/python3" in str(error) and error.returncode == 127


def test_sockpool_remote_python_names_the_hosts_interpreter(
        testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SOCKPOOL_PLAN=hosts:... had no way to name a venv's Python on the hosts:
    # the script needed python= written into it.
    source = """
        import sockpool
        print(sockpool.par_map(abs, [-1, -2, -3]),
              sorted(w.host for w in sockpool.current_cluster().workers))
    """
    env = {"SOCKPOOL_PLAN": "hosts:node1,node2", "SOCKPOOL_REMOTE_PYTHON": PYTHON}
    assert run_script(source, tmp_path, env=env).stdout == "[1, 2, 3] ['node1', 'node2']\n"
    # python= still wins over it; without either, the error names both.
    monkeypatch.setenv("SOCKPOOL_REMOTE_PYTHON", "/opt/no/python3")
    with Cluster(hosts=["node1"], python=PYTHON) as cl:
        assert cl.par_map(abs, [-4]) == [4]
    error = _launch_error(["node1"])
    assert "(python= or SOCKPOOL_REMOTE_PYTHON) was not found" in str(error)
    assert "/opt/no/python3" in str(error)


def _system_python() -> str:
    python = "/usr/bin/python3"
    if not os.path.exists(python):
        pytest.skip("no system Python at /usr/bin/python3")
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"the system Python is {version}, not this one's minor version")
    if subprocess.run([python, "-c", "import zmq"], capture_output=True).returncode == 0:
        pytest.skip("the system Python has pyzmq: it cannot stand for a bare host")
    return python


def test_sockpool_missing_on_the_host(testbed: Testbed) -> None:
    python = _system_python()
    error = _launch_error({"node2": SSHHost("node2", python=python)})
    assert "cannot start workers on node2: cannot import sockpool" in str(error)
    assert python in str(error)
    assert "python= or SOCKPOOL_REMOTE_PYTHON" in str(error)  # how to choose another


def test_a_dependency_missing_on_the_host(testbed: Testbed, tmp_path: Path) -> None:
    python = _system_python()
    (tmp_path / "sockpool").symlink_to(Path(__file__).resolve().parents[1] / "sockpool")
    error = _launch_error({"node2": SSHHost("node2", python=python,
                                            env={"PYTHONPATH": str(tmp_path)})})
    assert "cannot import zmq" in str(error) and "ModuleNotFoundError" in str(error)


def test_another_sockpool_version_on_the_host(testbed: Testbed, tmp_path: Path) -> None:
    (tmp_path / "sockpool").mkdir()
    (tmp_path / "sockpool" / "__init__.py").write_text("__version__ = '0.0.1'\n")
    error = _launch_error({"node1": SSHHost("node1", python=PYTHON,
                                            env={"PYTHONPATH": str(tmp_path)})})
    assert "sockpool 0.0.1 there but" in str(error)


def _python_of_another_minor_version() -> str | None:
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    candidates += [f"/usr/bin/python3.{minor}" for minor in range(8, 15)]
    for python in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            version = subprocess.run(
                [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=10).stdout.strip()
            if version and version != here:
                return python
    return None


def test_another_python_version_on_the_host(testbed: Testbed) -> None:
    other = _python_of_another_minor_version()
    if other is None:
        pytest.skip("no Python of another minor version on this machine")
    error = _launch_error({"node1": SSHHost("node1", python=other)})
    assert "pickled functions do not travel between Python versions" in str(error)
    assert f"but {sys.version_info[0]}.{sys.version_info[1]} here" in str(error)


def test_a_failed_host_stops_the_others_and_leaves_nothing(namespace_hosts: Testbed) -> None:
    error = _launch_error({"sp-n1": 2, "nowhere": 1}, python=PYTHON)
    assert "nowhere" in str(error)
    assert _wait_nothing_on(namespace_hosts, 10) == []


def test_min_workers_accepts_a_partial_cluster(namespace_hosts: Testbed) -> None:
    with pytest.warns(UserWarning, match=r"started with 2 of 3 workers.*nowhere"), \
            Cluster(hosts={"sp-n1": 2, "nowhere": 1}, python=PYTHON, min_workers=2) as cl:
        assert cl.n_workers == 2
        assert cl.par_map(lambda x: x * 2, range(8)) == [x * 2 for x in range(8)]


def test_bad_host_arguments_fail_before_anything_starts() -> None:
    with pytest.raises(TypeError, match="not a string"):
        Cluster(hosts="node1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an ssh destination"):
        Cluster(hosts=["user@"])
    with pytest.raises(ValueError, match="positive number of workers"):
        Cluster(hosts={"node1": 0})
    with pytest.raises(ValueError, match="min_workers must be an integer from 1 to the 2"):
        Cluster(hosts=["localhost", "localhost"], min_workers=3)
    with pytest.raises(ValueError, match="tunnel= and listen= apply to remote hosts"):
        Cluster(n=1, tunnel=True)
    with pytest.raises(ValueError, match="not both"):
        Cluster(hosts=["node1"], launcher=SSHLauncher(["node1"]))
    # Each of these was accepted, to fail (or not) once ssh ran.
    with pytest.raises(ValueError, match="port of 'node1' must be a port number from 1 to "
                                         "65535, not 'abc'"):
        SSHHost("node1", port="abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"env of 'node1' must map variable names to strings; "
                                        r"env of 'node1'\['A'\] is 1"):
        SSHHost("node1", env={"A": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"env\['A'\] is 1"):
        SSHLauncher(["node1"], env={"A": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="connect_timeout must be a positive number of "
                                         "seconds, not -1"):
        SSHLauncher(["node1"], connect_timeout=-1)
    import numpy as np  # NumPy's integers count, as Cluster(n=) takes them

    assert SSHHost("node1", workers=np.int64(2), port=np.int64(2222)).ssh_target() == [
        "-p", "2222", "node1"]


def test_a_worker_kept_off_shared_memory_still_gets_and_sends_large_arrays(
        testbed: Testbed) -> None:
    """A mixed cluster: the local worker maps the master's memory, the ssh one uses the socket."""
    import numpy as np

    def where_and_what(array: np.ndarray) -> tuple[bool, float, np.ndarray]:
        address = array.__array_interface__["data"][0]
        with open("/proc/self/maps") as maps:
            mapped = any("memfd:sockpool-" in line
                         and int(line.split("-")[0], 16) <= address
                         < int(line.split()[0].split("-")[1], 16) for line in maps)
        return mapped, float(array.sum()), array * 2

    data = np.random.default_rng(3).random(1_000_000)  # 8 MB: shared memory where it can
    hosts = [SSHHost("localhost"), SSHHost("node1", env={"SOCKPOOL_SHARED_MEMORY": "0"})]
    with Cluster(hosts=hosts, python=PYTHON) as cl:
        # run_on_all sends one stored copy of the call to both workers.
        seen = cl.run_on_all(where_and_what, data)
    assert sorted(mapped for mapped, _, _ in seen) == [False, True]
    for _, total, doubled in seen:
        assert total == pytest.approx(float(data.sum()))
        np.testing.assert_array_equal(doubled, data * 2)


def test_a_login_chatter_line_that_reads_as_json_does_not_end_the_hosts_reports(
        tmp_path: Path) -> None:
    # A shell startup file printing "2024" (valid JSON, not an object) raised in the
    # session's reader thread, which ended: the host then counted as silent.
    from sockpool.launchers.ssh_session import HostSession

    agent = "echo 2024; echo '[1]'; echo '{\"hello\": {\"problems\": []}}'; cat > /dev/null"
    session = HostSession(SSHHost("node9"), ["sh", "-c", agent], b"",
                          str(tmp_path / "ssh.log"), heartbeat_interval=1.0)
    try:
        deadline = time.monotonic() + 10
        while session.hello is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.hello == {"problems": []}
        assert session.healthy
    finally:
        session.close(grace=5.0)
    assert session.finished
