"""Reading one message off a zmq socket, as master and worker both do.

Apart from :mod:`.protocol` so that the message layout imports without zmq:
the master's caller side needs the layout, and imports zmq only once a
cluster starts (see :mod:`sockpool.api.startup`).
"""

from __future__ import annotations

from typing import Any

import zmq

#: Whether a received ``zmq.Frame`` says if more frames follow: pyzmq's Cython
#: backend sets it; its cffi backend (PyPy's) never does, so there the socket is asked.
_FRAMES_KNOW_MORE = "cffi" not in zmq.backend.Frame.__module__


def recv_message(sock: zmq.Socket[bytes], flags: int = 0, small_frames: int = 1) -> list[Any]:
    """Receive one message from a zmq socket.

    The first ``small_frames`` frames (routing id, header and body) come as
    ``bytes``; any after them are large out-of-band buffers and come as
    zero-copy, writable ``zmq.Frame`` objects.
    """
    # Each frame's own ``more`` flag, not sock.get(RCVMORE): that builds an enum
    # member per call, and doubled the cost of receiving a small message.
    frame = sock.recv(flags, copy=False)
    frames: list[Any] = [frame.bytes]
    while frame.more if _FRAMES_KNOW_MORE else sock.get(zmq.RCVMORE):
        frame = sock.recv(copy=False)
        frames.append(frame.bytes if len(frames) < small_frames else frame)
    return frames
