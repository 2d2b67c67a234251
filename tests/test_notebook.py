"""A notebook, executed headless: functions defined in cells simply work on workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.timeout(180)

CELLS = [
    # cell 0: data, a helper and the worker, as a teacher's notebook has them
    """
import json
from sockpool import Cluster, bind_to_env, inspect_capture

LEVELS = ["setosa", "versicolor", "virginica"]
WEIGHTS = {"setosa": 1, "versicolor": 2, "virginica": 3}

def fit_one(level):
    return WEIGHTS[level] * len(level)

def worker(level):
    print(f"fitting {level}")
    return {"level": level, "score": fit_one(level)}
""",
    # cell 1: the cluster, in its own cell
    """
with Cluster(n=2) as cl:
    models = cl.par_map(worker, LEVELS)
    dynamic = cl.par_map(bind_to_env(lambda l: globals()["fit_one"](l), "fit_one", "WEIGHTS"),
                         LEVELS)
print(json.dumps([models, dynamic]))
""",
    # cell 2: what travels, shown as a table
    "inspect_capture(worker)",
]


def test_notebook_cells_run_on_a_cluster(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for o in notebook.cells[1].outputs
                      if o.get("output_type") == "stream")
    lines = printed.strip().splitlines()
    # The workers' prints, relayed into the cell that ran the map, in input order.
    assert lines[:3] == ["fitting setosa", "fitting versicolor", "fitting virginica"]
    models, dynamic = json.loads(lines[-1])
    assert models == [{"level": "setosa", "score": 6}, {"level": "versicolor", "score": 20},
                      {"level": "virginica", "score": 27}]
    assert dynamic == [6, 20, 27]
    (report,) = notebook.cells[2].outputs
    assert "worker -&gt; fit_one -&gt; WEIGHTS" in report["data"]["text/html"]
    assert "worker -> fit_one -> WEIGHTS" in report["data"]["text/plain"]
