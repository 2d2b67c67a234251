"""The master's I/O thread: the one owner of the master's zmq socket, on the master only.

:mod:`.dispatcher` runs the loop: it reads messages, sends chunks and takes
the steps of closing; other threads reach it through its public methods, which
post commands to its :mod:`.mailbox`.  :mod:`.pool` starts, watches, replaces
and stops the worker processes (:mod:`.records` is what it knows of each,
:mod:`.admission` lets them in, :mod:`.readiness` waits for them on the caller's
thread, :mod:`.clock` aligns their clocks, :mod:`.exits`
watches their processes end, :mod:`.task_progress` reads how far a dead
worker's chunk got, and its results, and :mod:`.settling` settles what it held;
:mod:`.function_mirror` is what each caches of the task functions);
:mod:`.scheduler` decides which worker gets which chunk of which
:mod:`.jobs` (:mod:`.reclaims`: taking a queued one back for an idle worker),
and :mod:`.sending` sends them; :mod:`.transport` is the ROUTER
socket (ipc, or TCP with CURVE);
:mod:`.sharing` moves large buffers through shared memory; :mod:`.output`
writes what workers printed, warned and logged; :mod:`.lifecycle` is the
cluster's one state; :mod:`.profiling` records chunks for ``profile()``.

May import: ``common``, ``capture``, ``launchers``, ``errors``, ``_version``.
"""

#: The name of a cluster's I/O thread (a done-callback that finds itself on it moves off).
IO_THREAD_NAME = "sockpool-io"
