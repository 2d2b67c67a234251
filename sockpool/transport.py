"""The master's listening socket: a zmq ROUTER that every worker dials in to.

Local clusters listen on an ``ipc://`` socket inside a private directory
(mode 0700, made fresh for each cluster), so only processes of the same user
can connect at all; on top of that every worker proves it holds the cluster's
random token in its HELLO before anything it sends is looked at.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import zmq

from . import protocol


class MasterSocket:
    """The ROUTER socket, its zmq context and its private directory.

    Only the I/O thread may use :attr:`socket` once the cluster has started.
    """

    def __init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="sockpool-")
        os.chmod(self.workdir, 0o700)
        self.address = f"ipc://{self.workdir}/master.sock"
        self.context = zmq.Context()
        sock: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # An unknown or disconnected peer is an error on send, not a silent drop.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Flow control is ours (credits per worker), so zmq never blocks the I/O thread.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(self.address)
        self.socket = sock

    def send(self, identity: bytes, frames: list[Any]) -> bool:
        """Send a message to one peer; False if it is not connected."""
        try:
            if len(frames) == 1 and len(frames[0]) < protocol.COPY_LIMIT:
                # The common small message: two plain sends beat send_multipart's loop.
                self.socket.send(identity, zmq.SNDMORE)
                self.socket.send(frames[0])
            else:
                self.socket.send_multipart([identity, *frames], copy=protocol.send_copies(frames))
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise
        return True

    def receive(self, check: bool = True) -> list[Any] | None:
        """One waiting message as ``[identity, first frame, *buffers]``, or None.

        Args:
            check: ask zmq whether a message is waiting first; pass False when a
                poll just said so (asking is cheaper than an empty recv's exception).
        """
        if check and not int(self.socket.get(zmq.EVENTS)) & zmq.POLLIN:
            return None
        try:
            return protocol.recv_message(self.socket, zmq.NOBLOCK, small_frames=2)
        except zmq.Again:
            return None

    def close(self) -> None:
        """Close the socket and context and remove the private directory."""
        self.socket.close(linger=0)
        self.context.term()
        shutil.rmtree(self.workdir, ignore_errors=True)
