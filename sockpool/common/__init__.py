"""What master and worker agree on: both sides import this package.

The wire protocol (:mod:`.protocol`; reading a message off a zmq socket,
:mod:`.wire`), turning objects into frames and back (:mod:`.codec`; manager
proxies with their key, :mod:`.proxies`; NumPy arrays NumPy would copy,
:mod:`.arrays`; memmaps, :mod:`.memmaps`; a task's exception,
:mod:`.task_errors`), shared memory for large buffers (:mod:`.shm`, read by
:mod:`.shm_reader`; arguments sent again, :mod:`.kept_segments`), the digests
of function payloads (:mod:`.digest`), the worker's launch configuration
(:mod:`.config`), checks of arguments (:mod:`.checks`), the seeding rule
(:mod:`.rng`), the namespaces of bound functions (:mod:`.namespace`), process
helpers (:mod:`.proc`), a cluster's private directory (:mod:`.workdir`), the
task wrapper of ``Pool.imap`` (:mod:`.calls`), the layout of a local worker's
progress page and result log (:mod:`.progress_log`), how a task function is
named (:mod:`.naming`) and where a warning points (:mod:`.caller`), whether
this process is a worker (:mod:`.role`) and locks a forked child gets
unlocked (:mod:`.forking`).  Every
worker loads it, so nothing here is master-only.  This
``__init__`` imports nothing, so that importing one of its modules stays cheap.

May import: ``errors``, ``_version``.
"""
