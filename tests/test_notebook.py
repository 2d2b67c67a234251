"""A notebook, executed headless: functions defined in cells simply work on workers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.timeout(180)


def run_cells(cells: list[str], directory: Path | None = None, *, allow_errors: bool = False
              ) -> list[list[dict[str, object]]]:
    """Run ``cells`` top to bottom in a real kernel; each cell's outputs."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    resources = {"metadata": {"path": str(directory)}} if directory is not None else {}
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources=resources,
                            allow_errors=allow_errors).execute()
    return [cell.outputs for cell in notebook.cells]


def stream_text(outputs: list[dict[str, object]]) -> str:
    """What a cell printed (its stream outputs, in order)."""
    return "".join(str(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")

CELLS = [
    # cell 0: data, a helper and the worker, as a teacher's notebook has them
    """
import json
import re
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
    outputs = run_cells(CELLS, tmp_path)
    printed = stream_text(outputs[1])
    lines = printed.strip().splitlines()
    # The workers' prints, relayed into the cell that ran the map, in input order.
    assert lines[:3] == ["fitting setosa", "fitting versicolor", "fitting virginica"]
    models, dynamic = json.loads(lines[-1])
    assert models == [{"level": "setosa", "score": 6}, {"level": "versicolor", "score": 20},
                      {"level": "virginica", "score": 27}]
    assert dynamic == [6, 20, 27]
    (report,) = outputs[2]
    assert "worker -&gt; fit_one -&gt; WEIGHTS" in report["data"]["text/html"]
    assert "worker -> fit_one -> WEIGHTS" in report["data"]["text/plain"]


# Issue 18: what a notebook user sees of a progress bar and of a task's traceback.
WHAT_A_USER_SEES = [
    # cell 1: an environment without ipywidgets, where tqdm.auto would warn in red
    """
import sys, time
sys.modules["ipywidgets"] = None
from sockpool import Cluster
cl = Cluster(n=2)
""",
    # cell 2
    """
def work(i):
    time.sleep(0.15)  # longer than tqdm's refresh interval: the bar is drawn between
    print(f"task {i} done")
    return i
""",
    # cell 3
    "print(cl.par_map(work, range(6), chunksize=1, progress=True))",
    # cell 4: the function that fails, in a cell of its own
    """def f(x):
    return 1 / x
""",
    # cell 5
    "cl.par_map(f, [1, 0])",
    # cell 6
    "cl.close()",
]


@pytest.fixture(scope="module")
def seen() -> list[list[dict[str, object]]]:
    """The outputs of each cell of WHAT_A_USER_SEES, run in a real kernel."""
    return run_cells(WHAT_A_USER_SEES, allow_errors=True)


def shown(text: str) -> list[str]:
    """The lines a notebook shows for a stream: a carriage return goes back to the
    start of the line, and what follows overwrites what was there."""
    lines = []
    for line in text.split("\n"):
        screen = ""
        for segment in line.split("\r"):
            screen = segment + screen[len(segment):]
        lines.append(screen.rstrip())
    return [line for line in lines if line]


def test_a_notebook_without_ipywidgets_gets_a_clean_text_bar(
        seen: list[list[dict[str, object]]]) -> None:
    outputs = seen[2]
    assert all(o["output_type"] == "stream" for o in outputs), outputs
    assert not any("Warning" in str(o.get("text", "")) for o in outputs), outputs  # no TqdmWarning
    # All on stdout, with the relayed prints: a bar on stderr would stand in a block of
    # its own between every two chunks' output.
    assert {o["name"] for o in outputs} == {"stdout"}
    lines = shown("".join(str(o["text"]) for o in outputs))
    assert lines[:6] == [f"task {i} done" for i in range(6)], lines
    assert lines[6].startswith("100%|") and "| 6/6 [" in lines[6], lines
    assert lines[7:] == ["[0, 1, 2, 3, 4, 5]"], lines


def test_a_workers_traceback_shows_the_notebook_cell_and_its_line(
        seen: list[list[dict[str, object]]]) -> None:
    (error,) = seen[4]
    assert error["output_type"] == "error" and error["ename"] == "ZeroDivisionError"
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))  # type: ignore[arg-type]
    remote = text[text.index("Remote traceback"):text.index("The above exception")]
    assert "  Cell In[4], line 2, in f\n    return 1 / x\n" in remote, remote
    assert "ipykernel_" not in remote and "sockpool" not in remote.replace(
        "Remote traceback", ""), remote


HTML_CELLS = [
    """
import time
from sockpool import Cluster

def fit(x):
    time.sleep(0.01)
    return x

cl = Cluster(n=2)
print(repr(cl))  # a kernel runs cells in an event loop: the constructor still waits
try:
    Cluster(n=1, setup=lambda: 1 / 0)
except Exception as exc:
    print(type(exc).__name__)
with cl.profile() as prof:
    cl.par_map(fit, range(10))
""",
    "prof",
    "cl",
    "cl.close()",
]


def test_a_cluster_starts_in_its_cell_and_renders_as_html_with_its_profile(tmp_path: Path) -> None:
    outputs = run_cells(HTML_CELLS, tmp_path)
    printed = stream_text(outputs[0])
    assert printed.splitlines()[:2] == ["<Cluster local: 2 of 2 workers, running>",
                                        "LaunchError"]
    (profile,) = outputs[1]
    page = profile["data"]["text/html"]
    assert "<b>sockpool profile</b>: 10 tasks on 2 workers" in page
    assert page.count("<tr>") == 3  # a header and a row per worker
    image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert image is not None and len(image.group(1)) > 1000  # the timeline, inline
    (cluster,) = outputs[2]
    table = cluster["data"]["text/html"]
    assert "&lt;Cluster local: 2 of 2 workers, running&gt;" in table
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td><td>(\d+)</td><td>(\w+)</td>"
                      r"<td>(\d+)</td><td>([\d.]+) s</td><td>([\d.]+ [kMG]?B)</td></tr>", table)
    assert [row[0] for row in rows] == ["0", "1"]
    assert sum(int(row[4]) for row in rows) == 10  # tasks done
    assert all(row[3] == "idle" for row in rows)


NOTEBOOK_WARNINGS = [
    """
import time, warnings
import sockpool
from sockpool import inspect_capture
sockpool.plan(n=2)

def deprecated_step(i):
    warnings.warn(f"step {i} is deprecated", DeprecationWarning)
    time.sleep(0.001)
    return i
""",
    "print(sockpool.par_map(deprecated_step, range(2)))",
    "inspect_capture(deprecated_step)",
    "sockpool.plan('sequential')",
]


def test_a_tasks_deprecation_warning_shows_in_the_cell_as_the_kernels_own_does(
        tmp_path: Path) -> None:
    # IPython shows DeprecationWarnings from __main__ (the cells); a task's was
    # re-issued as coming from a module named after the cell's file, and hidden.
    outputs = run_cells(NOTEBOOK_WARNINGS, tmp_path)
    text = stream_text(outputs[1])
    assert "[0, 1]" in text
    assert "DeprecationWarning: step 0 is deprecated" in text
    assert "DeprecationWarning: step 1 is deprecated" in text
    # The capture report names the module the worker imports, as its text does.
    (report,) = outputs[2]
    assert "modules imported on the worker: time" in report["data"]["text/plain"]
    assert "<td>time</td>" in report["data"]["text/html"]


def test_what_a_task_writes_below_python_shows_in_its_cell(tmp_path: Path) -> None:
    # A child process's output (a shell command, a CLI tool) went to the worker's log.
    (outputs,) = run_cells(["""
import subprocess
from sockpool import Cluster
with Cluster(n=1) as cl:
    print(cl.submit(subprocess.run, ["echo", "from a child process"]).result().returncode)
"""], tmp_path)
    assert stream_text(outputs) == "from a child process\n0\n"
