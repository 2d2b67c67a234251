"""The worker process, which runs on every host: ``python -m sockpool.worker``.

:mod:`.main` is its entry point; :mod:`.loop` serves the data connection and
:mod:`.runner` runs the chunks it brings (:mod:`.functions` and their large
buffers, :mod:`.held_buffers`; :mod:`.namespaces` of modules shipped by value;
:mod:`.results`, :mod:`.relay`); :mod:`.watchdog` owns the control connection
and :mod:`.children` ends what tasks left running; :mod:`.state` is what the
two threads share; :mod:`.link` dials the master and says HELLO;
:mod:`.progress` keeps how far a chunk got and what it finished where the
master (or a remote host's agent) can read it after a crash; :mod:`.usage`
reads the process's memory and CPU time.  :mod:`.agent` starts the workers of
a remote host, :mod:`.supervisor` a batch job's worker.

A worker must never load the master's code (``capture``, ``launchers``,
``dispatch``, ``api``).  This ``__init__`` imports nothing, so that importing
the package stays cheap.

May import: ``common``, ``errors``, ``_version``.
"""
