"""The CURVE transport: only keys the master issued get in; captured traffic replays to nothing."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest
import zmq
from helpers import run_script
from test_hostile import hostile_messages

from sockpool import Cluster
from sockpool.common.config import CurveKeys
from sockpool.dispatch.transport import MasterSocket

pytestmark = pytest.mark.timeout(120)


def client(context: zmq.Context[zmq.Socket[bytes]], address: str,
           keys: CurveKeys | None) -> zmq.Socket[bytes]:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # A DEALER whose handshake was refused may hold a send until it reconnects:
    # bounded, so that a refused peer never hangs the test.
    sock.setsockopt(zmq.SNDTIMEO, 2000)
    if keys:
        sock.curve_serverkey = keys.server_key.encode()
        sock.curve_publickey = keys.public_key.encode()
        sock.curve_secretkey = keys.secret_key.encode()
    sock.connect(address)
    return sock


def received(master: MasterSocket, wait: float = 0.5, expected: int = 0) -> list[list[bytes]]:
    """What reaches the master within ``wait`` seconds, waiting (up to 10 s, for a
    loaded machine's CURVE handshake) until ``expected`` messages came."""
    messages = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < wait or (
            len(messages) < expected and elapsed < 10):
        if master.socket.poll(50):
            messages.append(master.socket.recv_multipart())
    return messages


@pytest.fixture
def master() -> MasterSocket:
    sock = MasterSocket("tcp")
    yield sock
    sock.close()


def test_a_cluster_over_curve_runs_and_listens_on_loopback_only() -> None:
    with Cluster(n=2, transport="tcp") as cl:
        assert cl._dispatcher.master.address.startswith("tcp://127.0.0.1:")
        assert cl.par_map(abs, range(-4, 0)) == [4, 3, 2, 1]
        secrets = [cl._dispatcher.pool.workers[w.id].keys.secret_key for w in cl.workers]
        for info in cl.workers:  # keys went over stdin: on no command line, in no environment
            worker = psutil.Process(info.pid)
            text = " ".join(worker.cmdline()) + " ".join(worker.environ().values())
            assert not any(secret in text for secret in secrets)
            assert cl._dispatcher.token not in text


def test_only_issued_keys_get_a_message_through(master: MasterSocket) -> None:
    context = zmq.Context()
    try:
        public, secret = zmq.curve_keypair()
        stranger = CurveKeys(master.server_public_key.decode(), public.decode(), secret.decode())
        peers = []  # kept: a collected socket would drop its message unsent
        for keys in (None, stranger):  # no CURVE at all; a key the master never issued
            peers.append(client(context, master.address, keys))
            with contextlib.suppress(zmq.Again):  # (refused: it may never be sent)
                peers[-1].send(b"let me in")
        assert received(master) == []
        issued = master.issue_keys()
        peers.append(client(context, master.address, issued))
        peers[-1].send(b"hello")
        assert [frames[1] for frames in received(master, expected=1)] == [b"hello"]
        master.revoke(issued)  # the worker is gone: its key no longer connects
        peers.append(client(context, master.address, issued))
        with contextlib.suppress(zmq.Again):
            peers[-1].send(b"me again")
        assert received(master) == []
    finally:
        context.destroy(linger=0)


def test_replayed_traffic_is_not_accepted(master: MasterSocket) -> None:
    """Record a legitimate session's bytes through a proxy, then replay them."""
    port = int(master.address.rsplit(":", 1)[1])
    listener = socket.create_server(("127.0.0.1", 0))
    proxy_address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    recorded = bytearray()

    def proxy() -> None:
        inbound, _ = listener.accept()
        outbound = socket.create_connection(("127.0.0.1", port))
        for sock in (inbound, outbound):
            sock.settimeout(0.05)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for source, target, record in ((inbound, outbound, True), (outbound, inbound, False)):
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if data:
                    target.sendall(data)
                    if record:
                        recorded.extend(data)
        inbound.close()
        outbound.close()

    relay = threading.Thread(target=proxy)
    relay.start()
    context = zmq.Context()
    try:
        legitimate = client(context, proxy_address, master.issue_keys())
        legitimate.send(b"a real message")
        assert [frames[1] for frames in received(master, 1.0, expected=1)] == [b"a real message"]
        relay.join(5)
        assert len(recorded) > 100  # the handshake and the encrypted message
        replay = socket.create_connection(("127.0.0.1", port))
        replay.sendall(bytes(recorded))
        assert received(master, 1.0) == []  # a new session: the old cookies are worthless
        replay.close()
    finally:
        context.destroy(linger=0)
        listener.close()


def test_hostile_peers_get_nothing_unpickled_over_tcp_either(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with Cluster(n=1, transport="tcp") as cl:
        context = zmq.Context()
        try:
            intruder = context.socket(zmq.DEALER)
            intruder.setsockopt(zmq.LINGER, 0)
            # Once the master refuses its handshake, the intruder has no peer and a
            # DEALER's send would wait for one forever: what it sent by then is enough.
            intruder.setsockopt(zmq.SNDTIMEO, 500)
            intruder.connect(cl._dispatcher.master.address)
            for frames in hostile_messages(marker, cl.workers[0].id):
                try:
                    intruder.send_multipart(frames)
                except zmq.Again:
                    break
            time.sleep(0.3)
            assert cl.par_map(abs, [-7]) == [7]
        finally:
            context.destroy(linger=0)
    assert not marker.exists()


def test_a_plain_tcp_client_sending_a_pickle_gets_nothing_through(tmp_path: Path) -> None:
    from test_hostile import evil_pickle

    marker = tmp_path / "pwned"
    with Cluster(n=1, transport="tcp") as cl:
        port = int(cl._dispatcher.master.address.rsplit(":", 1)[1])
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(evil_pickle(marker) * 4)
        time.sleep(0.3)
        raw.close()
        assert cl.par_map(abs, [-9]) == [9]
    assert not marker.exists()


def test_bad_transport_options_are_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        Cluster(n=1, transport="udp")
    with pytest.raises(ValueError, match="max_message_size"):
        Cluster(n=1, max_message_size=0)


def test_a_result_larger_than_max_message_size_fails_its_task_instead_of_hanging() -> None:
    from sockpool import RemoteError

    with Cluster(n=1, max_message_size=100_000) as cl:
        with pytest.raises(RemoteError, match="max_message_size"):
            cl.par_map(bytes, [1_000_000])
        assert cl.par_map(bytes, [10]) == [bytes(10)]


@pytest.mark.parametrize("shared_memory", ["1", "0"])
def test_max_message_size_holds_for_results_in_shared_memory_too(shared_memory: str) -> None:
    # A local worker's large NumPy result goes in shared memory, not in a frame: it
    # passed a limit that the same result, or bytes of its size, did not.
    import numpy as np

    from sockpool import RemoteError

    with Cluster(n=1, max_message_size=2**20, env={"SOCKPOOL_SHARED_MEMORY": shared_memory}
                 ) as cl:
        with pytest.raises(RemoteError, match=r"frame of 2097152 bytes, more than the "
                                              r"cluster's max_message_size \(1048576 bytes\)"):
            cl.par_map(np.ones, [2**18])  # 2 MB of float64
        assert cl.submit(np.ones, 2**16).result().sum() == 2**16  # 512 kB: within it


FLOOD = """
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
held, refused = [], 0
while len(held) < int(sys.argv[2]) and refused < 3:
    try:  # (the master, out of descriptors, accepts no more: its backlog fills)
        held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1))
    except OSError:
        refused += 1
print("holding", flush=True)
time.sleep(60)
"""


def test_a_flood_of_connections_without_keys_does_not_end_the_cluster(tmp_path: Path) -> None:
    # Each connection that never finishes its handshake holds a master descriptor.
    # Out of them, the first zero-copy send (which starts pyzmq's collector, with
    # descriptors of its own) raised on the I/O thread, and the cluster closed.
    result = run_script(f"""
        import errno, os, resource, subprocess, sys
        import numpy as np
        from sockpool import Cluster

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        with Cluster(n=1, transport="tcp") as cl:
            # In use before the flood: what a first map imports is imported (out of
            # descriptors, this process could open no module file).
            assert cl.par_map(abs, [-1]) == [1]
            # (lowered once it started: a cluster raises it to the hard limit)
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
            port = cl._dispatcher.master.address.rsplit(":", 1)[1]
            flood = subprocess.Popen([sys.executable, "-c", {FLOOD!r}, port, "400"],
                                     stdout=subprocess.PIPE, text=True)
            try:
                print(flood.stdout.readline().strip())
                try:
                    os.close(os.open(os.devnull, os.O_RDONLY))
                except OSError as exc:
                    print("out of descriptors:", exc.errno == errno.EMFILE)
                sums = cl.par_map(np.sum, [np.ones(1 << 18)] * 4)  # several frames: zero-copy
                print([float(x) for x in sums])
            finally:
                flood.kill()
                flood.wait()
        """, tmp_path, timeout=60)
    assert result.stdout.splitlines() == [
        "holding", "out of descriptors: True", "[262144.0, 262144.0, 262144.0, 262144.0]"]
