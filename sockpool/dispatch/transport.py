"""The master's listening socket: a zmq ROUTER that every worker dials in to.

Two transports, equally safe, each checked by ``tests/test_hostile.py`` and
``tests/test_curve.py``:

* ``"ipc"`` (the default for local clusters; faster, see docs/security.md): an
  ``ipc://`` socket inside a private directory (mode 0700, made fresh for each
  cluster), so only processes of the same user can connect at all;
* ``"tcp"``: loopback TCP with ZeroMQ CURVE: a fresh server keypair per
  cluster, a fresh client keypair per worker, and a ZAP handler that accepts
  only the client keys this master issued, dropping a worker's key when the
  worker is gone.  Keys reach a worker over its launch channel (stdin), never
  a command line.  This is what remote workers will use.

On top of either, every worker proves it holds the cluster's random token in
its HELLO before anything it sends is looked at.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

from ..common import protocol, wire
from ..common.config import DEFAULT_MAX_FRAME_BYTES, CurveKeys, check_transport
from ..common.workdir import private_directory, socket_path

_POLLIN = int(zmq.POLLIN)  # a plain int: the flag enum's ``&`` builds a member each time
#: How long a TCP peer may take over its CURVE handshake (a worker's takes
#: milliseconds); until then its connection holds one of the master's descriptors.
HANDSHAKE_MS = 10_000


def _start_zero_copy_collector() -> None:
    """Start pyzmq's collector of zero-copy frames, which the first large send
    would: it opens a context of its own (descriptors and a thread), and out of
    descriptors (a flood of connections to the TCP port) that send failed halfway
    through its message, on the I/O thread, which then ended the cluster."""
    zmq.Frame(bytearray(zmq.COPY_THRESHOLD + 1), copy=False)


class MasterSocket:
    """The ROUTER socket, its zmq context and its private directory.

    Only the I/O thread may use :attr:`socket` once the cluster has started.

    Args:
        transport: ``"ipc"`` or ``"tcp"`` (CURVE), see the module docstring.
        max_frame_bytes: frames larger than this disconnect their sender.
        host: for TCP, the interface to listen on (loopback unless told).
        workdir: the cluster's private directory (see :func:`private_directory`),
            where the ipc socket goes; a fresh one by default.  Either way,
            :meth:`close` removes it.
    """

    def __init__(self, transport: str = "ipc",
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, host: str = "127.0.0.1",
                 workdir: str | None = None) -> None:
        check_transport(transport)
        self.workdir = workdir or private_directory()
        self.context = zmq.Context()
        self._authenticator: ThreadAuthenticator | None = None
        self._allowed: set[bytes] = set()  # client public keys issued and not revoked
        self.server_public_key: bytes | None = None
        try:
            self.socket = self._listen(transport, max_frame_bytes, host)
        except BaseException:  # (a socket path refused, say): nothing is left open
            self._end_context()
            raise

    def _listen(self, transport: str, max_frame_bytes: int, host: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # An unknown or disconnected peer is an error on send, not a silent drop.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Flow control is ours (credits per worker), so zmq never blocks the I/O thread.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        if transport == "tcp":
            # Imported here: it imports asyncio (20 ms), which ipc clusters never need.
            from zmq.auth.thread import ThreadAuthenticator

            self._authenticator = ThreadAuthenticator(self.context)
            self._authenticator.start()
            self._authenticator.configure_curve_callback("*", credentials_provider=self)
            # Connections that never finish a handshake (anyone can open them) held a
            # descriptor each for libzmq's 30 s: a flood ran the master out of them.
            sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
            _start_zero_copy_collector()
            public, secret = zmq.curve_keypair()
            sock.curve_server = True
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            self.server_public_key = public
            self.socket = sock
            self._tcp_addresses: dict[str, str] = {}
            self.address = self.bind_tcp(host)
        else:
            self.address = f"ipc://{socket_path(self.workdir)}"
            sock.bind(self.address)
        return sock

    def bind_tcp(self, host: str) -> str:
        """Listen on one more interface (TCP with CURVE); the address workers dial there."""
        if self.server_public_key is None:
            raise ValueError("workers on other hosts need transport='tcp' (CURVE)")
        if host not in self._tcp_addresses:
            if ":" in host:  # IPv6
                self.socket.setsockopt(zmq.IPV6, 1)
            endpoint = f"tcp://[{host}]" if ":" in host else f"tcp://{host}"
            port = self.socket.bind_to_random_port(endpoint)
            self._tcp_addresses[host] = f"{endpoint}:{port}"
        return self._tcp_addresses[host]

    # -- CURVE keys --------------------------------------------------------------------

    def issue_keys(self) -> CurveKeys | None:
        """A fresh client keypair for one worker, allowed from now on (None without CURVE).

        Returns what the worker needs, to be sent over its launch channel.
        """
        if self.server_public_key is None:
            return None
        public, secret = zmq.curve_keypair()
        self._allowed.add(public)
        return CurveKeys(self.server_public_key.decode(), public.decode(), secret.decode())

    def revoke(self, keys: CurveKeys | None) -> None:
        """A worker is gone: its key connects no more."""
        if keys is not None:
            self._allowed.discard(keys.public_key.encode())

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP: accept a CURVE client only with a key this master issued (ZAP thread)."""
        return client_key in self._allowed

    # -- messages ----------------------------------------------------------------------

    def send(self, identity: bytes, frames: list[Any]) -> bool:
        """Send a message to one peer; False if it is not connected."""
        try:
            if len(frames) == 1 and len(frames[0]) < protocol.COPY_LIMIT:
                # The common small message: two plain sends beat send_multipart's loop.
                self.socket.send(identity, zmq.SNDMORE)
                self.socket.send(frames[0])
            else:
                # Large buffers zero-copy (pyzmq copies its small frames anyway).
                self.socket.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise
        return True

    def receive(self, check: bool = False) -> list[Any] | None:
        """One waiting message as ``[identity, first frame, *buffers]``, or None.

        Args:
            check: ask zmq whether a message is waiting first, where one likely is
                not: asking (1.5 µs) is cheaper than an empty recv's exception (3.4 µs).
        """
        if check and not int(self.socket.get(zmq.EVENTS)) & _POLLIN:
            return None
        try:
            return wire.recv_message(self.socket, zmq.NOBLOCK, small_frames=2)
        except zmq.Again:
            return None

    def close(self) -> None:
        """Close the socket, the authenticator and the context; remove the directory."""
        self.socket.close(linger=0)
        self._end_context()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _end_context(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.destroy(linger=0)  # (and any socket left open)
