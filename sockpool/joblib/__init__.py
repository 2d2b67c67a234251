"""The joblib backend ``"sockpool"``: joblib's work (scikit-learn's ``n_jobs``) on a cluster.

Importing this module registers the backend::

    import joblib
    import sockpool.joblib

    with joblib.parallel_config(backend="sockpool", n_jobs=-1):
        search.fit(X, y)                       # on the plan's cluster
    with joblib.parallel_config(backend="sockpool", cluster=cl):
        scores = cross_val_score(model, X, y, n_jobs=-1)   # a cluster you hold

``n_jobs=-1`` means every worker of the cluster (``-2`` all but one, as in
joblib), counted from the workers it was made with, also while one is being
replaced; ``n_jobs=1`` runs in this process, as joblib's own process backends
do, and so does every call under a sequential plan (``plan("sequential")``,
and inside a task).  Any other value runs on the cluster, even one that counts
back to a single worker; at most ``n_jobs`` of a call's batches run at once.
``Parallel(cluster=cl)`` gives a cluster to that call alone.  Each batch joblib
makes is one ``submit`` on the cluster: exceptions keep their type (the
worker's traceback as their ``__cause__``), the first failure cancels the
batches still queued and interrupts those running (with ``n_jobs`` at least
the cluster's workers, each worker holds a batch queued behind the one it
runs, which it may start before the cancellation reaches it: that one is
interrupted, as loky's workers are), what workers print is relayed,
``return_as="generator"`` streams, and a ``Parallel`` nested inside a task
runs in its worker, one call after another.  joblib's ``initializer=`` and
``initargs=`` (to ``parallel_config`` or ``Parallel``) run on each worker
before its first batch of a call, unless they were the last a worker ran
(compared by their pickles), as loky reuses its workers for such calls:
what the initializer sets stays on the worker for later calls.

The backend itself is :mod:`.backend`; what runs on a worker, :mod:`.batches`.

May import: ``api``, ``dispatch``, ``errors``.
"""

from __future__ import annotations

import re

try:
    import joblib
except ImportError as exc:  # (not a dependency of sockpool's own)
    raise ImportError("sockpool.joblib needs joblib 1.5 or later: pip install "
                      "'sockpool[joblib]'") from exc
if tuple(map(int, re.findall(r"\d+", joblib.__version__)[:2])) < (1, 5):
    raise ImportError(f"sockpool.joblib needs joblib 1.5 or later (its backend API), not "
                      f"{joblib.__version__}: pip install -U 'sockpool[joblib]'")

from joblib.parallel import register_parallel_backend

from .backend import SockpoolBackend

__all__ = ["SockpoolBackend"]

register_parallel_backend("sockpool", SockpoolBackend)
