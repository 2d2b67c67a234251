"""A cluster in a notebook: its launcher and, per worker, host, pid, state, tasks, CPU, memory.

The master reads a local worker's CPU time and resident memory itself; a remote
worker reports its own with each heartbeat.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from ..common.proc import format_bytes
from ..dispatch.dispatcher import Dispatcher
from ..dispatch.records import WorkerInfo
from ..errors import ClusterClosedError


def cluster_html(title: str, workers: Sequence[WorkerInfo], dispatcher: Dispatcher) -> str:
    """The HTML that Jupyter shows for a cluster (``title``: its repr)."""
    title = html.escape(title)
    if not workers:
        return f"<div class='sockpool-cluster'><b>{title}</b></div>"
    try:
        usage = dispatcher.usage()
    except ClusterClosedError:  # closed since the workers were listed
        usage = {}
    rows = []
    for worker in workers:
        done, cpu, memory = usage.get(worker.id, (0, None, None))
        rows.append(
            f"<tr><td>{worker.id}</td><td>{html.escape(worker.host)}</td><td>{worker.pid}</td>"
            f"<td>{html.escape(worker.state)}</td><td>{done}</td>"
            f"<td>{'' if cpu is None else f'{cpu:.2f} s'}</td>"
            f"<td>{'' if memory is None else format_bytes(memory)}</td></tr>")
    return (f"<div class='sockpool-cluster'><b>{title}</b><table><tr><th>worker</th>"
            "<th>host</th><th>pid</th><th>state</th><th>tasks done</th><th>CPU</th>"
            f"<th>memory</th></tr>{''.join(rows)}</table></div>")
