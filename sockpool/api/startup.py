"""Starting a cluster's engine: the local workers first, the master's imports meanwhile.

Most of a fresh cluster's start is importing: the master its engine (zmq, the
capture's picklers, the I/O thread: 50-70 ms), each worker its own side.
:func:`start_engine` has the launcher start the local workers' processes
first, then imports the engine while they boot on other cores.  So
:mod:`.cluster` imports, at the top, only what runs before that.
"""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..capture.by_value import warm_up as warm_up_capture
from ..common.protocol import Flag
from ..common.workdir import private_directory, sweep_orphans_in_background
from ..launchers import Launcher
from ..launchers.base import claim, release
from .seeding import CallSeeds

if TYPE_CHECKING:
    from ..capture.payload import Packer
    from ..dispatch.jobs import StreamJob
    from .calls import Calls


def start_engine(launcher: Launcher, n_workers: int, *, setup: Callable[[], Any] | None,
                 serializer: str, max_capture_size: int | None, relay_mode: str,
                 seeds: CallSeeds, owner: object, **dispatcher_options: Any) -> Calls:
    """Start ``n_workers`` (early, where the launcher can) and the I/O thread that
    admits them; return the calls that use them (``owner``: the Cluster).

    Whatever fails on the way, nothing it started is left: the early processes
    are ended by pid, the private directory removed.

    Raises:
        LaunchError: ``launcher`` still serves another open cluster (before
            anything starts).
        CaptureError: ``setup`` cannot travel (before anything starts).
    """
    # Packed first: a setup that cannot travel fails before anything starts.
    packed = _pack_setup(setup, serializer, max_capture_size) if setup is not None else None
    claim(launcher)
    try:
        transport = launcher.transport or dispatcher_options.get("transport", "ipc")
        workdir = private_directory(for_socket=transport == "ipc")
    except BaseException:
        release(launcher)
        raise
    dispatcher = None
    try:
        launcher.start_early(n_workers, workdir, relay=relay_mode != "off")
        from ..capture.payload import Packer
        from ..dispatch.dispatcher import Dispatcher
        from .calls import Calls

        packer, setup_job = packed or (Packer(serializer, max_capture_size), None)
        dispatcher = Dispatcher(
            n_workers=n_workers, launcher=launcher, serializer=serializer,
            setup_jobs=(setup_job, _exports_loaded_job(packer)),
            relay_mode=relay_mode, workdir=workdir, **dispatcher_options)
        dispatcher.start()  # from here on, its I/O thread ends what it started
    except BaseException:
        launcher.stop_early()
        if dispatcher is not None:  # made, never running: its socket, directory, segments
            dispatcher.master.close()
            dispatcher.shared.close()
            dispatcher.mailbox.close()
        shutil.rmtree(workdir, ignore_errors=True)
        release(launcher)
        raise
    try:  # (a Ctrl-C now too: the workers must not wait for the garbage collector)
        sweep_orphans_in_background()  # what masters killed before this one left
        warm_up_capture()  # the first map's capture needs it; workers start meanwhile
        return Calls(dispatcher, packer, seeds, weakref.ref(owner))
    except BaseException:
        dispatcher.close(cancel=True, wait=True)
        raise


def _exports_loaded_job(packer: Packer) -> StreamJob:
    """A call of nothing, which a worker that joins after ``export()`` answers once it
    has loaded the exports (see dispatch/admission.py)."""
    from ..dispatch.jobs import StreamJob

    job = StreamJob(packer.function(int), Flag.CALL)
    job.call_name = "loading the exports"
    return job


def _pack_setup(setup: Callable[[], Any], serializer: str, max_capture_size: int | None
                ) -> tuple[Packer, StreamJob]:
    """The packer, and the job of ``Cluster(setup=...)`` with its buffers copied:
    replacement workers get it for the whole life of the cluster."""
    from ..capture.payload import Packer
    from ..dispatch.jobs import StreamJob

    packer = Packer(serializer, max_capture_size)
    job = StreamJob(packer.function(setup, copy_buffers=True), Flag.CALL)
    job.call_name = "setup"  # (its error's note: "setup failed on worker 0", not "task 0")
    return packer, job
