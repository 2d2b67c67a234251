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
