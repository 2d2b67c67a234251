"""progress=True draws a progress bar on stderr (tqdm, a dependency), never on a relayed line."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
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
            assert sum(cl.imap(abs, (x for x in range(7)), progress=True)) == 21
            import numpy as np
            assert sum(cl.imap(abs, np.arange(9), progress=True)) == 36
        import sockpool
        sockpool.plan("sequential")
        assert sum(sockpool.imap(abs, range(12), progress=True)) == 66
    """, tmp_path)
    assert "50/50" in result.stderr and "100%" in result.stderr
    assert "30/30" in result.stderr  # a sized input gives the bar its total
    assert "7it" in result.stderr  # a generator's is not known: a count
    assert "9/9" in result.stderr  # an array's is
    assert "12/12" in result.stderr  # the sequential plan's bar as well
    assert result.stdout == ""


def terminal_lines(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: a carriage return goes back to the
    start of the line, and what follows overwrites what was there."""
    shown = []
    for line in text.split("\n"):
        screen = ""
        for segment in line.split("\r"):
            screen = segment + screen[len(segment):]
        shown.append(screen.rstrip())
    return [line for line in shown if line]


BAR = re.compile(r"^ *\d+%\|.*\| \d+/\d+ \[")


@pytest.mark.parametrize("relay", ["True", "'live'"])
def test_relayed_lines_and_the_bar_never_share_a_line(tmp_path: Path, relay: str) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from sockpool import Cluster

        def work(i):
            time.sleep(0.15)  # longer than tqdm's refresh interval: the bar is drawn between
            print(f"task {{i}} done")
            return i

        with Cluster(n=2, relay={relay}) as cl:
            assert cl.par_map(work, range(8), chunksize=1, progress=True) == list(range(8))
    """))
    # One pipe for both streams, as a terminal shows them.
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=50)
    assert result.returncode == 0, result.stdout
    lines = terminal_lines(result.stdout)
    relayed = [line for line in lines if not BAR.match(line)]
    assert sorted(relayed) == [f"task {i} done" for i in range(8)], lines
    assert "8/8" in lines[-1] and "100%" in lines[-1], lines  # drawn again below the output
