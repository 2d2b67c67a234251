"""What master and worker agree on: both sides import this package.

The wire protocol (:mod:`.protocol`; reading a message off a zmq socket,
:mod:`.wire`), turning objects into frames and back
(:mod:`.codec`; manager proxies with their key, :mod:`.proxies`), shared memory
for large buffers (:mod:`.shm`), the worker's
launch configuration (:mod:`.config`), the seeding rule (:mod:`.rng`), the
namespaces of bound functions (:mod:`.namespace`), process helpers
(:mod:`.proc`), the task wrapper of ``Pool.imap`` (:mod:`.calls`), the layout of
a local worker's progress page and result log (:mod:`.progress_log`), whether
this process is a worker (:mod:`.role`) and locks a forked child gets
unlocked (:mod:`.forking`).  Every
worker loads it, so nothing here is master-only.  This
``__init__`` imports nothing, so that importing one of its modules stays cheap.

May import: ``errors``, ``_version``.
"""
