"""Shared fixtures: a leak check after every test, clusters, and running user scripts.

Every test ends with no child process and no sockpool I/O thread left behind:
the ``no_leaks`` fixture checks it with psutil (and kills what it finds, by
pid, so one failure does not cascade).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from testbed import SlurmTestbed, Testbed, machine_lock, netns_missing, slurm_missing, ssh_missing

from sockpool import Cluster

#: How long a test's processes get to disappear after it ends.
LEAK_GRACE = 10.0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """A failed test that used the ssh testbed reports what its sshd servers logged
    (a connection that timed out under load, say: the servers' view of it)."""
    report = yield
    bed = getattr(item, "funcargs", {}).get("testbed") or getattr(
        item, "funcargs", {}).get("namespace_hosts")
    if report.failed and isinstance(bed, Testbed):
        for name, tail in bed.log_tails().items():
            report.sections.append((f"testbed {name}", tail))
    return report


def _children() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def _running(process: psutil.Process) -> bool:
    """Whether a child still runs: not a zombie, and not gone while we looked."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _command(process: psutil.Process) -> list[str] | str:
    try:
        return process.cmdline()
    except psutil.Error as exc:
        return f"({type(exc).__name__})"


def _io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sockpool-io" and t.is_alive()]


@pytest.fixture(scope="session", autouse=True)
def _resource_tracker() -> None:
    """multiprocessing's resource tracker, which local clusters (and spawn pools)
    start once for the rest of the session: started before any test, so that the
    leak check does not count it as one test's."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a child process or a cluster I/O thread behind."""
    before = set(_children())
    threads_before = set(_io_threads())
    yield
    deadline = time.monotonic() + LEAK_GRACE
    while True:
        leaked = {pid: p for pid, p in _children().items()
                  if pid not in before and _running(p)}
        threads = [t for t in _io_threads() if t not in threads_before]
        if (not leaked and not threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for process in leaked.values():
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert not leaked, f"processes left behind: {[(p.pid, _command(p)) for p in leaked.values()]}"
    assert not threads, f"cluster I/O threads left running: {threads}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh two-worker cluster for one test."""
    with Cluster(n=2) as cl:
        yield cl


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[Cluster]:
    """One two-worker cluster for a whole module of tests that do not break workers."""
    with Cluster(n=2) as cl:
        yield cl


#: Namespace test hosts the ssh tests get (sp-n1..sp-n3).
NAMESPACE_HOSTS = 3


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """A private sshd on 127.0.0.1-3 and, where possible, namespace hosts (TESTBED.md).

    Skips (with the reason) where there is no root or no OpenSSH server.
    """
    reason = ssh_missing()
    if reason:
        pytest.skip(reason)
    with machine_lock("ssh testbed") as held_elsewhere:
        if held_elsewhere:
            pytest.skip(held_elsewhere)
        bed = Testbed(tmp_path_factory.mktemp("testbed"))
        namespaces = NAMESPACE_HOSTS if netns_missing() is None else 0
        try:
            bed.make_keys()
            bed.start_sshd()
            if namespaces:
                bed.start_namespaces(namespaces)
            bed.write_ssh_config(namespaces)
            yield bed
        finally:
            bed.stop(NAMESPACE_HOSTS)


@pytest.fixture
def namespace_hosts(testbed: Testbed) -> Testbed:
    """The testbed, for a test that needs its network-namespace hosts."""
    if not testbed.namespaces:
        pytest.skip(f"no namespace hosts here: {netns_missing()}")
    return testbed


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmTestbed]:
    """A real single-node Slurm (munge, slurmctld, slurmd) for the session; skips without one."""
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    with machine_lock("Slurm testbed") as held_elsewhere:
        if held_elsewhere:
            pytest.skip(held_elsewhere)
        bed = SlurmTestbed(tmp_path_factory.mktemp("slurm"))
        try:
            bed.start()
            yield bed
        finally:
            bed.stop()
