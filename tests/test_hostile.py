"""Nothing from an unauthenticated peer is ever unpickled; malformed frames never hurt.

Hostile peers connect to a live cluster's socket and send pickles whose
unpickling would create a marker file; the file must never appear and the
cluster must keep answering.  Property-based fuzzing feeds the decoders and
the I/O thread random frames.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
from pathlib import Path

import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockpool import Cluster
from sockpool.common import protocol
from sockpool.common.protocol import Kind, ProtocolError

pytestmark = pytest.mark.timeout(120)


class CreatesMarker:
    """Unpickling this creates a file: proof that a peer's bytes were unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(CreatesMarker(str(marker)), protocol=5)


def hostile_messages(marker: Path, worker_id: int) -> list[list[bytes]]:
    """What an intruder would send: pickles in every slot a worker's message has."""
    payload = evil_pickle(marker)
    hello = protocol.header(Kind.HELLO) + b'{"token": "guessed", "worker_id": %d}' % worker_id
    return [
        [payload],
        [protocol.header(Kind.RESULT, 0, 1, 1) + payload],
        [protocol.header(Kind.OUTPUT, 0, 1, 1) + payload],
        [hello],
        [protocol.header(Kind.RESULT, 0, 1, 1) + payload],
        [protocol.header(Kind.RESULT, 0, 1, 1) + b"x", payload],
    ]


@pytest.mark.parametrize("identity", ["new worker id", "a live worker's id", "none"])
def test_peers_without_the_token_are_never_unpickled(tmp_path: Path, identity: str) -> None:
    marker = tmp_path / "pwned"
    with Cluster(n=1) as cl:
        live = cl.workers[0].id
        worker_id = {"new worker id": 99, "a live worker's id": live, "none": 7}[identity]
        context = zmq.Context()
        try:
            intruder = context.socket(zmq.DEALER)
            intruder.setsockopt(zmq.LINGER, 0)
            if identity != "none":
                intruder.setsockopt(zmq.ROUTING_ID, protocol.data_identity(worker_id))
            intruder.connect(cl._dispatcher.master.address)
            for frames in hostile_messages(marker, worker_id):
                intruder.send_multipart(frames)
            time.sleep(0.3)
            assert cl.par_map(abs, [-1, -2]) == [1, 2]
            assert cl.n_workers == 1
        finally:
            context.destroy(linger=0)
    assert not marker.exists()


def test_a_plain_tcp_or_unix_client_gets_nothing_through(tmp_path: Path) -> None:
    import socket as sockets

    marker = tmp_path / "pwned"
    with Cluster(n=1) as cl:
        path = cl._dispatcher.master.address.removeprefix("ipc://")
        assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o700"
        raw = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        raw.connect(path)
        raw.sendall(b"\xff" * 10 + evil_pickle(marker) * 3)
        raw.close()
        time.sleep(0.2)
        assert cl.par_map(abs, [-3]) == [3]
    assert not marker.exists()


def test_the_token_is_on_no_command_line_and_in_no_environment() -> None:
    with Cluster(n=2) as cl:
        token = cl._dispatcher.token
        for info in cl.workers:
            worker = psutil.Process(info.pid)
            assert token not in " ".join(worker.cmdline())
            assert not any(token in value for value in worker.environ().values())


frames_strategy = st.lists(st.binary(max_size=64), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_the_header_and_task_decoders_only_raise_protocol_errors(data: bytes) -> None:
    for decode in (protocol.parse, protocol.parse_identity, protocol.parse_task):
        with contextlib.suppress(ProtocolError):  # anything else fails the test
            decode(memoryview(data) if decode is protocol.parse_task else data)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=frames_strategy, worker_id=st.integers(0, 3), kind=st.sampled_from(list(Kind)),
       as_header=st.booleans())
def test_random_frames_never_crash_the_io_thread(shared_cluster: Cluster, frames: list[bytes],
                                                  worker_id: int, kind: Kind,
                                                  as_header: bool) -> None:
    if as_header:  # a well-formed header with a random body: deeper into the handlers
        frames = [protocol.header(kind, 0, 1, worker_id) + frames[0], *frames[1:]]
    dispatcher = shared_cluster._dispatcher
    identity = protocol.data_identity(worker_id)
    message = [identity, frames[0], *(zmq.Frame(frame) for frame in frames[1:])]  # as received
    dispatcher.mailbox.ask(lambda: dispatcher._on_message_safely(message))
    assert dispatcher._thread.is_alive()
