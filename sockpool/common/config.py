"""A worker's launch configuration: what the master tells a worker before it dials in.

Every launcher writes one :class:`WorkerConfig` to its worker's launch channel
(stdin, an ssh session, a file only the worker reads) as one JSON line, and the
worker reads it back with :meth:`WorkerConfig.from_json`.  Nothing secret (the
token, the CURVE keys) is ever on a command line.

Every default is resolved before the config is written: the worker reads
values, never fallbacks.  In particular ``master_timeout``, the silence after
which a worker gives up on its master, is the cluster's ``heartbeat_timeout``
when one was given, else the launcher's ``default_master_timeout`` (long for
local workers, which also watch their stdin; shorter for remote ones, which a
cut network must end).
"""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

#: The largest frame a peer may send; a peer that sends more is disconnected.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024**3

#: How workers reach the master (see :mod:`sockpool.dispatch.transport`).
TRANSPORTS = ("ipc", "tcp")
Transport = Literal["ipc", "tcp"]
#: What pickles task functions, arguments and results (``codec.SERIALIZERS``).
Serializer = Literal["cloudpickle", "dill", "pickle"]


def check_transport(transport: str) -> None:
    """Raise ``ValueError`` naming the choices unless ``transport`` is one of them."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, "
                         f"not {transport!r}")


# NamedTuples, not dataclasses: a worker would import dataclasses and inspect
# for these alone (3-6 ms of every worker's start).
class CurveKeys(NamedTuple):
    """The CURVE keys one worker was issued (Z85 text): the master's public key and its own."""

    server_key: str
    public_key: str
    secret_key: str


class WorkerConfig(NamedTuple):
    """Everything a worker needs to join its cluster, every default resolved."""

    address: str  #: the master's address to dial (ipc:// or tcp://)
    token: str  #: the cluster's secret, proved in HELLO before anything is read
    worker_id: int
    heartbeat_interval: float  #: seconds between heartbeats, both ways
    master_timeout: float  #: silence after which the worker gives up on its master
    serializer: str  #: "cloudpickle", "dill" or "pickle": how results are written
    max_frame_bytes: int  #: the largest frame the master accepts (a larger result fails its task)
    relay: str = "task"  #: "task", "live" or "off" (see Cluster's ``relay``)
    relay_prefix: bool = False  #: start relayed lines with "[worker N] "
    log_level: int = 30  #: the lowest level of log records relayed
    curve: CurveKeys | None = None  #: None on an ipc:// transport
    shm_probe: str | None = None  #: the master's probe segment, where it has shared memory
    max_memory: int | None = None  #: flag a RESULT sent with more resident memory than this
    # Set by the launcher that starts the process:
    watch_stdin: bool = False  #: end of stdin means the master is gone (local workers)
    parent_pid: int | None = None  #: die with this process (Linux's parent-death signal)
    #: the master's process, on this machine (local workers): silent while it uses CPU,
    #: it is busy (a long C call holding its GIL), not frozen
    master_pid: int | None = None
    sys_path: tuple[str, ...] = ()  #: put first on the worker's import path
    #: the master's ``sys.argv``, which tasks see, as a spawned child's do
    argv: tuple[str, ...] = ()
    #: where the worker writes its main thread's stack at STACKS_SIGNAL (local workers)
    stacks_path: str | None = None
    #: the progress memfd its host's agent made and reads once it ends (remote workers)
    progress_fd: int | None = None
    #: where the master's end of multiprocessing's resource tracker opens (local workers),
    #: and the inode of that pipe (a path of another pid namespace opens something else)
    resource_tracker: str | None = None
    resource_tracker_inode: int | None = None

    def replace(self, **changes: Any) -> WorkerConfig:
        """A copy with some fields changed (a launcher adding what it knows)."""
        return self._replace(**changes)

    def to_json(self) -> str:
        """One line of JSON (no newline in it), as the launch channel carries it."""
        fields = self._asdict()
        fields["curve"] = self.curve._asdict() if self.curve is not None else None
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerConfig:
        """Read what :meth:`to_json` wrote.

        Raises:
            ValueError: the text is not a worker configuration (names what is wrong).
        """
        try:
            fields = json.loads(text)
            if not isinstance(fields, dict):
                raise TypeError(f"a JSON object was expected, not {type(fields).__name__}")
            curve = fields.pop("curve", None)
            fields["sys_path"] = tuple(fields.get("sys_path", ()))
            fields["argv"] = tuple(fields.get("argv", ()))
            return cls(curve=CurveKeys(**curve) if curve is not None else None, **fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a sockpool worker configuration: {exc}") from exc
