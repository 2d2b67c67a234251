"""The examples run as a new user would run them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.timeout(120)


def test_quickstart_fits_one_model_per_level() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                            capture_output=True, text=True, timeout=100, cwd="/")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for level in ("setosa", "versicolor", "virginica"):
        assert any(line.strip().startswith(level) and "accuracy" in line for line in lines)
    assert "same results as sequential" in lines[-1]
    assert lines[0].startswith("worker carries")  # inspect_capture: what travels
    assert any("worker -> fit_one_target_model" in line for line in lines)
    fitted = [line.split("] ", 1)[1] for line in lines if line.startswith("[pid ")]
    assert [line.split(" vs ")[0] for line in fitted] == [  # relayed, in input order
        "fitted setosa", "fitted versicolor", "fitted virginica"]


def test_bind_to_env_example_binds_exactly_what_the_worker_needs() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "bind_to_env.py")],
                            capture_output=True, text=True, timeout=100, cwd="/")
    assert result.returncode == 0, result.stderr
    report, _, fits = result.stdout.partition("\n\n")
    assert "worker -> D " in report and "worker -> fit_logistic " in report
    assert "UNRELATED_TABLE" not in report  # bound explicitly: only what was named travels
    lines = fits.strip().splitlines()
    assert len(lines) == 6
    assert any(line.split()[:2] == ["centroid", "setosa:"] for line in lines)


def test_chunking_example_saves_its_plots_and_tables(tmp_path: object) -> None:
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "chunking.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=110, cwd="/")
    assert result.returncode == 0, result.stderr
    from pathlib import Path

    out = Path(str(tmp_path))
    assert (out / "chunking.png").stat().st_size > 1000
    assert (out / "scaling.png").stat().st_size > 1000
    table = (out / "chunking.md").read_text()
    assert "| 256 |" in table and "speedup vs 1 worker" in table


def test_one_switch_gives_the_same_analysis_under_two_plans() -> None:
    pytest.importorskip("numpy")
    runs = {}
    for plan in ("sequential", "local:2"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "one_switch.py"), plan],
            capture_output=True, text=True, timeout=100, cwd="/")
        assert result.returncode == 0, result.stderr
        runs[plan] = result.stdout.splitlines()
    assert runs["sequential"][:-1] == runs["local:2"][:-1]  # all but the timing line
    assert any(line.startswith("chosen penalty: ") for line in runs["local:2"])
    assert sum("95% bootstrap interval" in line for line in runs["local:2"]) == 4
    assert runs["local:2"][-1].startswith("plan 'local:2': 8 cross-validations and 400 ")
