"""progress=True draws a progress bar on stderr (tqdm, an optional dependency)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_script

pytestmark = pytest.mark.timeout(60)


def test_par_map_and_imap_draw_a_bar_that_reaches_the_total(tmp_path: Path) -> None:
    result = run_script("""
        from sockpool import Cluster
        with Cluster(n=2) as cl:
            out = cl.par_map(abs, range(-50, 0), chunksize=5, progress=True)
            assert out == list(range(50, 0, -1))
            assert list(cl.imap(abs, range(-30, 0), progress=True)) == list(range(30, 0, -1))
    """, tmp_path)
    assert "50/50" in result.stderr and "100%" in result.stderr
    assert "30it" in result.stderr or "30/" in result.stderr
    assert result.stdout == ""


def test_missing_tqdm_is_a_clear_error_before_any_work(tmp_path: Path) -> None:
    result = run_script("""
        import sys
        sys.modules["tqdm"] = None  # as if tqdm were not installed
        from sockpool import Cluster
        with Cluster(n=1) as cl:
            try:
                cl.par_map(abs, [1], progress=True)
            except ImportError as exc:
                print(exc)
    """, tmp_path)
    assert "pip install 'sockpool[progress]'" in result.stdout
