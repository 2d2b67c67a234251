"""Dialing the master: the worker's two zmq connections and the HELLO each one sends first."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import zmq

from .._version import __version__
from ..common import protocol, shm
from ..common.config import WorkerConfig
from ..common.protocol import Kind


def dial(context: zmq.Context[zmq.Socket[bytes]], config: WorkerConfig,
         identity: bytes) -> zmq.Socket[bytes]:
    """A DEALER connected to the master under ``identity`` (the data or control id)."""
    sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    if config.curve is not None:  # CURVE: the keys this worker was issued, over its stdin
        sock.curve_serverkey = config.curve.server_key.encode()
        sock.curve_publickey = config.curve.public_key.encode()
        sock.curve_secretkey = config.curve.secret_key.encode()
    sock.setsockopt(zmq.LINGER, 1000)
    if config.address.startswith("tcp://["):  # an IPv6 master
        sock.setsockopt(zmq.IPV6, 1)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(config.address)
    return sock


def send(sock: zmq.Socket[bytes], frames: list[Any]) -> None:
    """Send one message's frames; small ones are copied, large buffers are not."""
    if len(frames) == 1 and len(frames[0]) < protocol.COPY_LIMIT:
        sock.send(frames[0])  # the common small RESULT: one send is 1.3 µs less than the loop
    else:
        sock.send_multipart(frames, copy=False)  # (pyzmq copies its small frames anyway)


def frame_sender(sock: zmq.Socket[bytes]) -> Callable[[Any], None]:
    """What sends one frame, copied, with no Python code of its own: an OUTPUT sent
    within a task's print, whose own signal handler (its time limit) can then raise
    only once the frame is out, never between its making and its sending (the relay
    puts back what was made and not sent; a frame sent and put back comes twice)."""
    return functools.partial(zmq.backend.Socket.send, sock)


def hello(config: WorkerConfig, shared: shm.SegmentPool | None,
          progress: str | None = None) -> bytes:
    """The HELLO message: the token that proves this worker, and who and where it is.

    ``progress`` names the page where it notes how far a chunk got (see progress.py).
    """
    info = {
        "token": config.token,
        "worker_id": config.worker_id,
        "pid": os.getpid(),
        "host": os.uname().nodename,  # gethostname(), without importing socket
        "python": ".".join(map(str, sys.version_info[:3])),
        "version": __version__,
        "shared_memory": shared.probe() if shared is not None else None,
        "progress": progress,
    }
    return protocol.header(Kind.HELLO) + json.dumps(info).encode()
