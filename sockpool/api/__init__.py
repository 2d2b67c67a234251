"""The caller's side: what runs on the thread that calls a :class:`~.cluster.Cluster`.

:mod:`.cluster` is the public ``Cluster``; :mod:`.cluster_options` checks its
arguments and picks the launcher; :mod:`.startup` starts its workers and
engine; :mod:`.map_options` holds a map's options as one checked value;
:mod:`.calls` runs each kind of call, :mod:`.feeds` cuts a map's input into
chunks (sized by :mod:`.pace`), :mod:`.mapping` puts results back in order
(:mod:`.carried`: a task's ``StopIteration`` on the way), :mod:`.seeding`
numbers the seeded calls; :mod:`.callbacks` keeps done-callbacks off the I/O
thread; :mod:`.aio` and :mod:`.loops` are the asyncio calls; :mod:`.plan` and
:mod:`.sequential` are ``sockpool.plan()`` and its in-process plan;
:mod:`.lifetime` closes clusters nobody closed (at garbage collection and at
exit); :mod:`.mp_pool`, :mod:`.mp_results`, :mod:`.mp_cluster` and
:mod:`.readers` are ``sockpool.Pool``, the ``multiprocessing.Pool`` drop-in;
:mod:`.profile` and :mod:`.profile_report` are ``Cluster.profile()``,
:mod:`.cluster_view` a cluster's HTML in a notebook.  User code (unpickling
results, re-raising errors, printing relayed output) runs here, never on the
I/O thread.

May import: ``common``, ``capture``, ``dispatch``, ``launchers``, ``cores``, ``errors``,
``_version``.
"""
