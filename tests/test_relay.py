"""What workers print, warn and log reaches the user, as if the code ran here."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, run_script

from sockpool import Cluster, WorkerLostError

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def master_lines(script: Path, wait: float = 30) -> Iterator[Callable[[], str]]:
    """Run ``script`` as a user's master; yield a function that reads its next stdout
    line as it comes (and wait up to ``wait`` seconds for it to end)."""
    master = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              text=True, cwd=script.parent)
    assert master.stdout is not None
    try:
        yield master.stdout.readline
    finally:
        master.wait(wait)


def test_prints_come_home_in_per_task_blocks_in_input_order(tmp_path: Path) -> None:
    result = run_script("""
        import sys, time
        from sockpool import Cluster

        def chatty(x):
            time.sleep(0.05 * (5 - x))          # later tasks finish first
            for line in range(2):
                print(f"task {x} line {line}")
            sys.stdout.buffer.write(f"task {x} line 2\\n".encode())  # bytes, as many libraries do
            print(f"task {x} complains", file=sys.stderr)
            return x

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                print("result", cl.par_map(chatty, range(6), chunksize=1))
    """, tmp_path)
    expected = [f"task {x} line {line}" for x in range(6) for line in range(3)]
    assert result.stdout.splitlines() == [*expected, "result [0, 1, 2, 3, 4, 5]"]
    assert result.stderr.splitlines() == [f"task {x} complains" for x in range(6)]


def test_prints_warnings_and_log_records_keep_their_order_as_under_sequential(
        tmp_path: Path) -> None:
    source = """
        import io, logging, sys, time, warnings
        import sockpool

        def work(x):
            print(f"task {x} starts")
            logging.getLogger("work").warning("task %d logs", x)
            print(f"task {x} complains", file=sys.stderr)
            warnings.warn(f"task {x} warns")
            if x == 1:
                time.sleep(0.02)                # past the relay's flush interval
            print(f"task {x}", end=" ")
            print("ends")
            return x

        if __name__ == "__main__":
            both = io.StringIO()                # one stream: the order shows
            handler = logging.StreamHandler(both)
            handler.setFormatter(logging.Formatter("LOG %(name)s %(message)s"))
            logging.getLogger().addHandler(handler)
            real_stdout = sys.stdout
            sys.stdout = sys.stderr = both
            with sockpool.plan(sys.argv[1]):
                results = sockpool.par_map(work, range(3), chunksize=1)
            sys.stdout = real_stdout
            print(both.getvalue(), results)
    """
    sequential = run_script(source, tmp_path, "sequential").stdout
    assert sequential.splitlines()[:5] == [
        "task 0 starts", "LOG work task 0 logs", "task 0 complains",
        f"{tmp_path / 'user_script.py'}:9: UserWarning: task 0 warns",
        '  warnings.warn(f"task {x} warns")']
    assert run_script(source, tmp_path, "local:2").stdout == sequential


def _threads_writing_at_once(write_line: str, options: str = "") -> str:
    """A script whose tasks each run 3 threads that write 1 500 lines each with
    ``write_line`` (of ``x``, ``thread``, ``line``), switching as often as they can."""
    return f"""
        import sys, threading
        from sockpool import Cluster

        def chatter(x):
            sys.setswitchinterval(1e-6)  # switch threads as often as possible
            def write(thread):
                for line in range(1500):
                    {write_line}
            threads = [threading.Thread(target=write, args=(t,)) for t in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return x

        if __name__ == "__main__":
            with Cluster(n=2{options}) as cl:
                cl.par_map(chatter, range(2), chunksize=1)
    """


def test_output_a_tasks_threads_write_at_once_comes_home_whole(tmp_path: Path) -> None:
    # Each event list was built in unlocked steps: lines came home twice or not at all.
    result = run_script(_threads_writing_at_once(  # one write per line (a print makes two)
        'sys.stdout.write(f"{x} {thread} {line}\\n"); '
        'sys.stderr.write(f"{x} {thread} {line}\\n")'), tmp_path, timeout=120)
    expected = sorted(f"{x} {t} {line}" for x in range(2) for t in range(3) for line in range(1500))
    assert sorted(result.stdout.splitlines()) == expected
    assert sorted(result.stderr.splitlines()) == expected


@pytest.mark.parametrize("options", ["relay_prefix=True", "relay='live'"])
def test_what_a_tasks_threads_print_in_pieces_comes_home_once(
        tmp_path: Path, options: str) -> None:
    # Kept to whole lines, a stream's unfinished line was read and replaced unlocked:
    # two threads printing at once lost each other's text or wrote it twice.
    result = run_script(_threads_writing_at_once(  # two writes: the text, then "\n"
        'print(f"<{x} {thread} {line}>")', f", {options}"), tmp_path, timeout=120)
    # Threads' prints may interleave, as in any process (a text, another's, two
    # newlines); what each printed comes exactly once.
    printed = re.findall(r"<\d \d \d+>", result.stdout)
    assert sorted(printed) == sorted(f"<{x} {t} {line}>" for x in range(2)
                                     for t in range(3) for line in range(1500))
    assert result.stdout.count("\n") == 2 * 3 * 1500


def test_output_of_setup_run_on_all_and_submit_comes_home(tmp_path: Path) -> None:
    result = run_script("""
        from sockpool import Cluster

        def setup():
            print("setting up")

        if __name__ == "__main__":
            with Cluster(n=2, setup=setup) as cl:
                cl.run_on_all(print, "hello from every worker")
                cl.submit(print, "hello from one").result()
    """, tmp_path)
    lines = result.stdout.splitlines()
    assert lines.count("setting up") == 2
    assert lines.count("hello from every worker") == 2
    assert lines.count("hello from one") == 1


def test_warnings_obey_the_masters_filters(tmp_path: Path) -> None:
    source = """
        import warnings
        from sockpool import Cluster

        def careful(x):
            warnings.warn("this value is odd", UserWarning)
            return x

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                try:
                    print(cl.par_map(careful, range(4), chunksize=1))
                except UserWarning as exc:
                    print("raised:", exc)
    """
    shown = run_script(source, tmp_path)
    # The "default" filter shows a warning once per location, as sequential code would.
    assert shown.stderr.count("UserWarning: this value is odd") == 1
    assert "user_script.py" in shown.stderr  # the task's own file and line
    assert shown.stdout.strip() == "[0, 1, 2, 3]"
    always = run_script(source, tmp_path, env={"PYTHONWARNINGS": "always"})
    assert always.stderr.count("UserWarning: this value is odd") == 4
    error = run_script(source, tmp_path, env={"PYTHONWARNINGS": "error::UserWarning"})
    assert error.stdout.strip() == "raised: this value is odd"
    ignored = run_script(source, tmp_path, env={"PYTHONWARNINGS": "ignore"})
    assert "UserWarning" not in ignored.stderr


def test_filters_on_the_module_apply_as_to_the_scripts_own_warnings(tmp_path: Path) -> None:
    # Python's default filter shows a DeprecationWarning raised in __main__ (matched
    # on module=): the relayed one was re-issued under a module named after its file.
    result = run_script("""
        import warnings
        from sockpool import Cluster

        def old_api(x):
            warnings.warn("old_api is deprecated", DeprecationWarning)
            return x

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                cl.par_map(old_api, [0])
                warnings.filterwarnings("error", module="__main__")
                try:
                    cl.par_map(old_api, [1])
                except DeprecationWarning as exc:
                    print("raised:", exc)
    """, tmp_path)
    assert result.stderr.count("DeprecationWarning: old_api is deprecated") == 1
    assert result.stdout.strip() == "raised: old_api is deprecated"


def test_log_records_go_to_the_masters_logger_of_the_same_name(tmp_path: Path) -> None:
    result = run_script("""
        import logging
        from sockpool import Cluster

        def fit(level):
            log = logging.getLogger("lab.models")
            log.debug("debug %s", level)
            log.info("fitted %s with %d rows", level, 150, extra={"lab": object.__name__})
            logging.getLogger("noisy").warning("noisy %s", level)
            return level

        if __name__ == "__main__":
            logging.basicConfig(level=logging.INFO, format="%(name)s|%(levelname)s|%(message)s"
                                "|%(funcName)s|%(lab)s")
            logging.getLogger("noisy").setLevel(logging.ERROR)
            with Cluster(n=2) as cl:
                cl.par_map(fit, ["a", "b"], chunksize=1)
    """, tmp_path)
    assert result.stderr.splitlines() == [  # extra= fields too
        "lab.models|INFO|fitted a with 150 rows|fit|object",
        "lab.models|INFO|fitted b with 150 rows|fit|object",
    ]


def test_capsys_and_redirects_in_the_master_catch_relayed_output(
        shared_cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    shared_cluster.par_map(print, ["seen by capsys"])
    captured = capsys.readouterr()
    assert captured.out == "seen by capsys\n"


def printing_until_4_fails(i: int) -> int:
    print(f"start {i}")
    if i == 4:
        raise ValueError("four")
    time.sleep({0: 0.05, 3: 1.0}.get(i, 30))  # 1 and 2 still sleep when 4 fails
    print(f"end {i}")
    return i


def test_a_failed_map_still_writes_what_its_other_tasks_printed(
        shared_cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    # Task 4's error cancels the other worker's chunk while task 1 sleeps: what
    # tasks 0 and 1 printed came with that chunk's result, and was dropped.
    shared_cluster.par_map(abs, [1, 2])
    capsys.readouterr()
    started = time.monotonic()
    with pytest.raises(ValueError, match="four"):
        shared_cluster.par_map(printing_until_4_fails, range(6), chunksize=3)
    assert time.monotonic() - started < 5
    assert capsys.readouterr().out.splitlines() == [
        "start 0", "end 0", "start 1", "start 3", "end 3", "start 4"]


def printing_past_the_cancellation(i: int) -> int:
    if i == 1:
        time.sleep(0.05)
        raise ValueError("one")
    os.system("sleep 0.15")  # SIGINT is ignored meanwhile: the cancellation cannot stop it
    print(f"task {i}")
    return i


def test_a_failed_map_writes_what_a_chunk_finishing_after_the_failure_printed(
        shared_cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    # Task 0's chunk finishes after task 1's error stopped the map: its RESULT
    # came back whole, not cancelled, and its output was dropped with its values.
    shared_cluster.par_map(abs, [1, 2])
    capsys.readouterr()
    with pytest.raises(ValueError, match="one"):
        shared_cluster.par_map(printing_past_the_cancellation, range(2), chunksize=1)
    assert capsys.readouterr().out == "task 0\n"


@pytest.mark.parametrize("relay", ["True", "'live'"])
def test_what_tasks_write_below_python_comes_home_after_their_prints(
        tmp_path: Path, relay: str) -> None:
    # A child process's output, C's printf, os.write(1, ...), sys.__stdout__: it went to
    # the worker's log, deleted at close, where a multiprocessing pool shows it.
    result = run_script(f"""
        import ctypes, os, subprocess, sys
        from sockpool import Cluster

        def task(i):
            print("print", i)
            os.write(1, f"os.write {{i}}\\n".encode())
            os.write(2, f"os.write to stderr {{i}}\\n".encode())
            subprocess.run(["echo", f"child {{i}}"], check=True)
            libc = ctypes.CDLL(None)
            libc.printf(b"printf %d\\n", i)
            libc.fflush(None)
            print("sys.__stdout__", i, file=sys.__stdout__)  # (buffered: it is a file)
            return i

        with Cluster(n=2, relay={relay}) as cl:
            print(cl.par_map(task, range(4), chunksize=1))
    """, tmp_path)
    lines = result.stdout.splitlines()
    assert lines[-1] == "[0, 1, 2, 3]"
    by_task = sorted(lines[:-1], key=lambda line: line.rsplit(maxsplit=1)[-1])
    assert by_task == [f"{kind} {i}" for i in range(4) for kind in (
        "print", "os.write", "child", "printf", "sys.__stdout__")]
    for i in range(4):  # each task's, in the order it wrote them
        mine = [line for line in lines if line.endswith(f" {i}")]
        assert mine == by_task[5 * i:5 * i + 5]
    assert sorted(result.stderr.splitlines()) == [f"os.write to stderr {i}" for i in range(4)]


def _print_until_its_own_alarm(task: int, limit: float) -> tuple[str, int]:
    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError("the task's own time limit")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    started, printed = time.monotonic(), 0
    try:
        while time.monotonic() - started < 1.0:
            print(f"<{task} {printed}>", "x" * 200)
            printed += 1
        return "ran past its own limit", printed
    except TimeoutError:
        return "stopped", printed
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@pytest.mark.parametrize("relay", [True, "live"])
def test_a_tasks_own_alarm_stops_it_while_it_prints(
        relay: bool | str, capsys: pytest.CaptureFixture[str]) -> None:
    # The handler's TimeoutError, raised wherever the task's print was in the relay,
    # was swallowed there (an OSError caught around a write, the pickler's fallback,
    # pyzmq's release of a frame): the task ran on past its limit, 4 times in 20.
    # Let through, it must not send a line twice, nor out of order.
    with Cluster(n=1, relay=relay) as cl:
        outcomes = [cl.submit(_print_until_its_own_alarm, task, 0.05 + 0.007 * task).result()
                    for task in range(20)]
    tokens = re.findall(r"<(\d+) (\d+)>", capsys.readouterr().out)
    assert [outcome for outcome, _ in outcomes] == ["stopped"] * 20
    for task, (_, printed) in enumerate(outcomes):
        mine = [int(number) for who, number in tokens if who == str(task)]
        assert mine == sorted(set(mine)) and len(mine) <= printed + 1  # (the cut one)
        assert len(mine) > printed / 2  # (the alarm came as its flush ran: see failures.md)


@pytest.mark.parametrize("relay", ["True", '"live"'])
def test_what_a_forked_child_of_a_task_writes_comes_home(tmp_path: Path, relay: str) -> None:
    # A forked child kept the relay as its sys.stdout, whose sends on the parent's
    # socket libzmq drops in a child: every line it printed, warned or logged was lost.
    result = run_script(f"""
        import logging, multiprocessing, os, warnings
        from sockpool import Cluster

        def in_child(x):
            print("pool child prints", x)
            for _ in range(3):  # once: the default filters, not the worker's "always"
                warnings.warn(f"pool child warns {{x}}")
            warnings.warn("ignored, as the task said", DeprecationWarning)
            logging.getLogger("kid").warning("pool child logs %s", x)
            return x * 10

        def task(i):
            warnings.simplefilter("ignore", DeprecationWarning)  # the task's, for its children
            with multiprocessing.get_context("fork").Pool(1) as pool:
                tens = pool.map(in_child, [i])
            pid = os.fork()
            if pid == 0:
                print("forked child prints", i)      # no flush: as on a terminal
                os._exit(0)
            os.waitpid(pid, 0)
            return tens

        with Cluster(n=2, relay={relay}) as cl:
            print(cl.par_map(task, range(2), chunksize=1))
    """, tmp_path)
    lines = result.stdout.splitlines()
    assert lines[-1] == "[[0], [10]]"
    assert sorted(lines[:-1]) == [f"{who} child prints {i}" for who in ("forked", "pool")
                                  for i in range(2)]
    errors = result.stderr
    assert "ignored, as the task said" not in errors
    for i in range(2):
        assert errors.count(f"UserWarning: pool child warns {i}") == 1
        assert f"WARNING:kid:pool child logs {i}" in errors


class _FailsToLoadOnTheWorker:
    def __reduce__(self) -> tuple[object, ...]:
        return int, ("not a number",)  # ValueError as the worker unpickles it


def test_chunks_that_never_ran_read_nothing_back_and_a_flood_is_cut(
        capfd: pytest.CaptureFixture[str]) -> None:
    # A chunk whose arguments failed to load read back the last chunk's region again
    # and wrote it to the worker's stdout file: it doubled at each such chunk (24 MB
    # after 20).  And a 400 MB flood went home whole, in one message.
    with Cluster(n=1) as cl:
        assert cl.submit(os.system, "echo once").result() == 0
        for _ in range(5):
            with pytest.raises(ValueError, match="not a number"):
                cl.submit(abs, _FailsToLoadOnTheWorker()).result()
        assert cl.submit(lambda: os.fstat(1).st_size).result() == len("once\n")
        flood = 3 * 1024 * 1024
        cl.submit(lambda: os.write(1, b"x" * (flood - 5) + b"end\n\n")).result()
    out = capfd.readouterr().out
    assert out.count("once") == 1
    skipped = flood - 1024 * 1024
    assert (f"[sockpool: the first {skipped} bytes the chunk wrote below Python are left "
            "out]\n") in out
    assert out.endswith("x" * 100 + "end\n\n")
    assert len(out) < 1024 * 1024 + 200


def test_a_stream_whose_encoding_takes_no_bytes_gets_escapes() -> None:
    from sockpool.dispatch.output import _write_encoded

    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-16")
    _write_encoded(stream, "raw \udcff byte, lone \ud800\n")  # raised UnicodeEncodeError
    stream.flush()
    assert stream.buffer.getvalue().decode("utf-16") == "raw \\udcff byte, lone \\ud800\n"


def test_relay_off_keeps_output_in_the_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with Cluster(n=1, relay=False) as cl:
        cl.par_map(print, ["not relayed"])
    assert "not relayed" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="relay"):
        Cluster(n=1, relay="sometimes")


def test_live_relay_streams_whole_lines_with_a_prefix_while_the_task_runs(
        tmp_path: Path) -> None:
    script = tmp_path / "live.py"
    script.write_text(
        "import sys, time\n"
        "from sockpool import Cluster\n"
        "def slow(x):\n"
        "    print('starting', x, end='')\n"
        "    print(' now', flush=True)\n"
        "    time.sleep(2)\n"
        "    return x\n"
        "with Cluster(n=1, relay='live', relay_prefix=True) as cl:\n"
        "    print('result', cl.par_map(slow, [7]), flush=True)\n")
    with master_lines(script, wait=20) as readline:
        assert readline() == "[worker 0] starting 7 now\n"
        line_at = time.monotonic()
        assert readline() == "result [7]\n"
        # Long before the task ended (it sleeps 2 s), not with its result.  (Timed
        # from the first line: the program's own start takes its time on a busy machine.)
        assert time.monotonic() - line_at > 1.0


def test_live_relay_writes_log_records_and_warnings_as_they_come_in_order(
        tmp_path: Path) -> None:
    # Live, only text came as it was written: log records waited for the task's
    # end, after every line it printed later.  Warnings wait for it still (the
    # caller's filters and catch_warnings decide), in their order.
    script = tmp_path / "live_log.py"
    script.write_text(
        "import logging, sys, time, warnings\n"
        "from sockpool import Cluster\n"
        "logging.basicConfig(level=logging.INFO, format='LOG %(message)s', stream=sys.stdout)\n"
        "warnings.showwarning = lambda message, *rest: print('WARN', message, flush=True)\n"
        "def slow(x):\n"
        "    logging.getLogger('task').info('first, logged')\n"
        "    print('second, printed', flush=True)\n"
        "    warnings.warn('third, warned')\n"
        "    logging.getLogger('task').info('fourth, logged')\n"
        "    time.sleep(2)\n"
        "    return x\n"
        "with Cluster(n=1, relay='live') as cl:\n"
        "    print('result', cl.par_map(slow, [7]), flush=True)\n")
    with master_lines(script, wait=20) as readline:
        assert readline() == "LOG first, logged\n"
        assert readline() == "second, printed\n"
        assert readline() == "LOG fourth, logged\n"
        line_at = time.monotonic()
        assert readline() == "WARN third, warned\n"
        assert time.monotonic() - line_at > 1.0  # the lines came before the task's nap ended
        assert readline() == "result [7]\n"


def test_a_worker_that_crashes_still_gets_its_last_output_home(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    def crash() -> None:
        print("about to crash")
        os.write(2, b"C-level last words\n")
        time.sleep(0.05)  # a crash comes during work: libzmq sends the output meanwhile
        os._exit(3)

    with pytest.raises(WorkerLostError) as info:
        cluster.submit(crash).result(timeout=20)
    assert "about to crash" in str(info.value)
    assert "C-level last words" in str(info.value)
    assert "about to crash" in capsys.readouterr().out


def test_a_crashed_tasks_output_comes_in_order_its_line_cut_short_ended(
        tmp_path: Path) -> None:
    # print() writes its text and its newline apart: a worker that dies between the
    # two left "task 1 says hello" to be continued by the next task's first line.
    # And the master wrote it as it learnt of the death, before task 0's output.
    # (relay="live" keeps a line in the worker until its newline: it dies there.)
    result = run_script("""
        import os, sys
        from sockpool import Cluster

        def task(x):
            print(f"task {x} starts")
            if x == 1:
                sys.stdout.write("task 1 cut short")
                sys.stderr.write("task 1 error cut short")
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            return x

        with Cluster(n=1) as cl:
            print(cl.par_map(task, range(3), chunksize=1, errors="return")[::2])
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "task 0 starts", "task 1 starts", "task 1 cut short", "task 2 starts", "[0, 2]"]
    assert "task 1 error cut short\n" in result.stderr


@pytest.mark.parametrize("relay", ["True", "'live'"])
def test_output_flushed_just_before_a_sigkill_reaches_the_user(
        tmp_path: Path, relay: str) -> None:
    # The OUTPUT messages died in libzmq's queue with the process: in 6 runs of
    # 5 lines, 3 lost all or all but one.  The progress page's output log keeps them.
    result = run_script(f"""
        import os, signal, sys
        from sockpool import Cluster, WorkerLostError

        def last_words(x):
            for line in range(40):
                print(f"task {{x}} line {{line}} " + "." * 2000)
            print("task", x, "ends")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        with Cluster(n=2, relay={relay}) as cl:
            for x in range(3):
                try:
                    cl.submit(last_words, x).result(timeout=20)
                except WorkerLostError as error:
                    print("lost:", str(error).splitlines()[0][:40], file=sys.stderr)
    """, tmp_path)
    assert result.stderr.count("lost: worker") == 3, result.stderr
    lines = result.stdout.splitlines()
    for x in range(3):
        assert [line for line in lines if line.startswith(f"task {x} ")] == [
            f"task {x} line {line} " + "." * 2000 for line in range(40)] + [f"task {x} ends"]


@pytest.mark.parametrize("relay", ["True", "'live'"])
def test_output_of_a_finished_chunk_whose_result_died_unsent_reaches_the_user(
        tmp_path: Path, relay: str) -> None:
    # The worker started task 1's chunk before the master had task 0's RESULT,
    # then died: the RESULT came from the progress page, but its OUTPUT messages,
    # dead in libzmq's queue too, were lost (2 of 8 maps; 5 of 8 live).
    result = run_script(f"""
        import os, signal, sys
        from sockpool import Cluster

        def task(x):
            if x == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            for line in range(40):
                print(f"task {{x}} line {{line}} " + "." * 2000)
            sys.stdout.flush()
            return x

        with Cluster(n=1, relay={relay}) as cl:
            for attempt in range(6):
                print("map", attempt, "gave", cl.par_map(task, [0, 1], chunksize=1,
                                                           errors="return")[0])
    """, tmp_path)
    lines = result.stdout.splitlines()
    expected = [f"task 0 line {line} " + "." * 2000 for line in range(40)]
    assert [line for line in lines if line.startswith("map ")] == [
        f"map {attempt} gave 0" for attempt in range(6)]
    assert [line for line in lines if line.startswith("task 0 ")] == expected * 6


@pytest.mark.parametrize("relay", ["True", "'live'"])
def test_a_warning_under_error_raises_for_its_call_and_the_cluster_lives_on(
        tmp_path: Path, relay: str) -> None:
    result = run_script(f"""
        import warnings
        from sockpool import Cluster

        def warn(x):
            print("before the warning")
            warnings.warn("boom", UserWarning)
            return x

        if __name__ == "__main__":
            with Cluster(n=1, relay={relay}) as cl:
                for call in (lambda: cl.submit(warn, 1).result(timeout=20),
                             lambda: cl.par_map(warn, [1])):
                    try:
                        call()
                    except UserWarning as exc:
                        print("raised", exc)
                print("still usable", cl.par_map(abs, [-3]))
    """, tmp_path, env={"PYTHONWARNINGS": "error::UserWarning"})
    assert result.stdout.splitlines() == [
        "before the warning", "raised boom", "before the warning", "raised boom",
        "still usable [3]"]


@pytest.mark.parametrize("isolated", [[], ["-I"]], ids=["plain", "isolated"])
def test_the_masters_x_options_and_argv_reach_tasks_as_a_spawn_pools(
        tmp_path: Path, isolated: list[str]) -> None:
    # Workers got neither -X dev (nor -X faulthandler...) nor the script's sys.argv,
    # which a spawned child has: a task reading sys.argv[1] got an IndexError.
    if isolated:  # (-I ignores PYTHONPATH: the sockpool it imports must be this one)
        found = subprocess.run([sys.executable, "-I", "-c", "import sockpool; print("
                                "sockpool.__file__)"], capture_output=True, text=True,
                               cwd=tmp_path).stdout.strip()
        if found != str(ROOT / "sockpool" / "__init__.py"):
            pytest.skip(f"-I imports another sockpool than this tree's: {found or 'none'}")
    script = tmp_path / "options.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, sys
        from sockpool import Cluster

        def options(x):
            return sys.argv[1:], sys.flags.dev_mode, sys._xoptions.get("utf8")

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                print(pool.map(options, [1]))
            with Cluster(n=1) as cl:
                print(cl.par_map(options, [1]))
    """))
    done = subprocess.run([sys.executable, *isolated, "-X", "dev", "-X", "utf8", str(script),
                           "--level", "3"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    spawn, sockpool = done.stdout.splitlines()
    assert spawn == sockpool == str([(["--level", "3"], True, True)])


def test_a_warning_this_process_makes_an_error_lets_the_tasks_output_out_first(
        tmp_path: Path) -> None:
    # simplefilter("error") in the script, which no worker gets: the warning is
    # raised here as it is issued, once the task ran.  The rest of its output was
    # lost, and the error came from inside sockpool without saying why.
    result = run_script("""
        import warnings
        from sockpool import Cluster

        def warn(x):
            print("before the warning")
            warnings.warn("boom", UserWarning)
            print("after the warning")
            return x

        if __name__ == "__main__":
            with Cluster(n=1) as cl:
                warnings.simplefilter("error")
                try:
                    cl.par_map(warn, [1])
                except UserWarning as exc:
                    print("raised", exc)
                    print(*exc.__notes__)
    """, tmp_path)
    lines = result.stdout.splitlines()
    assert lines[:3] == ["before the warning", "after the warning", "raised boom"]
    assert "made an error as it was issued here, after the task ran" in result.stdout


def _chatty(lines: int) -> None:
    for i in range(lines):
        print(f"worker line {i}")
        time.sleep(0.01)


def _ends_with_whole_lines(out: str, after: str) -> list[str]:
    """The worker lines before ``after``: each whole, none run into ``after``."""
    assert out.endswith(f"\n{after}\n"), out[-200:]
    lines = out.splitlines()[:-1]
    assert lines and all(line == f"worker line {i}" for i, line in enumerate(lines)), lines
    return lines


def test_a_task_cut_short_by_close_ends_its_last_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Leaving `with` on an exception closes the cluster: the running task's last
    # line ran into the next print ("worker line 28main: after the with block").
    with pytest.raises(RuntimeError), Cluster(n=1) as cl:
        cl.submit(_chatty, 1000)
        time.sleep(0.5)
        raise RuntimeError("a bug in the loop")
    print("main: after the with block")
    _ends_with_whole_lines(capsys.readouterr().out, "main: after the with block")


def test_a_submit_cancelled_as_it_runs_still_writes_what_it_printed(
        shared_cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    # asyncio's cancel, joblib's abort: the interrupted call's output was dropped whole.
    import asyncio

    async def cancel_after(seconds: float) -> None:
        running = asyncio.ensure_future(shared_cluster.asubmit(_chatty, 1000))
        await asyncio.sleep(seconds)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(cancel_after(0.5))
    deadline = time.monotonic() + 5
    while "worker line" not in (out := capsys.readouterr().out) and time.monotonic() < deadline:
        time.sleep(0.05)  # written by the I/O thread as the cancelled RESULT comes
    time.sleep(0.2)
    out += capsys.readouterr().out
    print("main: after the cancel")
    out += capsys.readouterr().out
    assert len(_ends_with_whole_lines(out, "main: after the cancel")) >= 5


@pytest.mark.parametrize("relay", ["True", "'live'"])
@pytest.mark.parametrize("end", ["os._exit(1)", "time.sleep(30)"])
def test_lines_a_task_wrote_before_it_went_quiet_reach_the_user(
        tmp_path: Path, relay: str, end: str) -> None:
    # Only the task's next write sent what waited: a task that printed three lines,
    # then slept and died (or hung past its timeout) lost all but the first.
    result = run_script(f"""
        import os, time
        from sockpool import Cluster

        def quiet_end(x):
            print("step 1")
            print("step 2")
            print("step 3")
            time.sleep(1)
            {end}

        with Cluster(n=1, relay={relay}) as cl:
            try:
                cl.par_map(quiet_end, [0], timeout=3)
            except Exception as error:
                print(type(error).__name__)
    """, tmp_path)
    error = "WorkerLostError" if "exit" in end else "TaskTimeoutError"
    assert result.stdout.splitlines() == ["step 1", "step 2", "step 3", error]


def _live_task_waiting_for(go: Path, script: Path, before: str, after: str = "") -> Path:
    """A master with a live relay whose one task runs ``before``, waits (20 s at most)
    for the file ``go``, runs ``after``, and returns whether ``go`` came."""
    script.write_text(
        "import os, subprocess, threading, time\n"
        "from sockpool import Cluster\n"
        "def task(x):\n"
        f"    {before}\n"
        "    deadline = time.monotonic() + 20\n"
        f"    while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        f"    {after or 'pass'}\n"
        f"    return os.path.exists({str(go)!r})\n"
        "with Cluster(n=1, relay='live') as cl:\n"
        "    print('result', cl.par_map(task, [0]), flush=True)\n")
    return script


def test_live_relay_sends_what_a_tasks_threads_print_while_it_runs(tmp_path: Path) -> None:
    # Only the main thread sent: a line from a task's thread waited for the task's end.
    go = tmp_path / "go"
    script = _live_task_waiting_for(
        go, tmp_path / "threads.py",
        before="threading.Thread(target=print, args=('from a thread',)).start()")
    with master_lines(script) as readline:
        assert readline() == "from a thread\n"
        go.touch()  # the task ends once the line is here
        assert readline() == "result [True]\n"


def test_live_relay_sends_what_a_child_process_writes_while_the_task_runs(
        tmp_path: Path) -> None:
    # What a task's child process (or C code) wrote came only once the task ended,
    # live or not: a long build or simulation run from a task was silent till then.
    go = tmp_path / "go"
    script = _live_task_waiting_for(
        go, tmp_path / "child.py", before="subprocess.run(['echo', 'from a child'])",
        after="subprocess.run(['echo', 'the child again']); print('then the task')")
    with master_lines(script) as readline:
        assert readline() == "from a child\n"
        go.touch()  # the task ends once the line is here
        assert [readline() for _ in range(3)] == [  # (in the order they were written)
            "the child again\n", "then the task\n", "result [True]\n"]


def _below_and_above_in_turn(lines: int) -> int:
    for i in range(lines):
        os.write(1, f"below {i}\n".encode())
        print(f"python {i}")
    return lines


def test_live_relay_keeps_what_a_task_writes_below_and_above_python_in_order(
        capfd: pytest.CaptureFixture[str]) -> None:
    # A read of what was written below Python at most once a millisecond put 3 969 of
    # these 4 000 lines out of place.
    with Cluster(n=1, relay="live") as cl:
        assert cl.submit(_below_and_above_in_turn, 2000).result() == 2000
    assert capfd.readouterr().out.splitlines() == [
        f"{kind} {i}" for i in range(2000) for kind in ("below", "python")]


def _half_a_line_then_a_child() -> None:
    print("Progress 50%", end="")
    subprocess.run(["echo", "done"], check=True)


def test_what_a_child_wrote_is_not_glued_into_a_line_the_task_left_unfinished(
        capfd: pytest.CaptureFixture[str]) -> None:
    # Live, the child's line went into the task's unfinished one at the chunk's end:
    # "Progress 50%done".  Its lines go before it, as they do while the task runs.
    with Cluster(n=1, relay="live") as cl:
        cl.submit(_half_a_line_then_a_child).result()
        cl.submit(print, "next").result()
    assert capfd.readouterr().out == "done\nProgress 50%next\n"


class _PrintsWhenCollected:
    def __init__(self) -> None:
        self.me = self  # (a cycle: the collector frees it, in whichever thread runs)

    def __del__(self) -> None:
        print("collected")


def _collect_while_writing_below(times: int) -> None:
    gc.set_threshold(1, 1, 1)  # (the collector runs at nearly every allocation)
    child = subprocess.Popen(["sh", "-c", "for i in $(seq 3000); do echo child $i; done"])
    for _ in range(times):
        _PrintsWhenCollected()
        os.write(1, b"\xc3\xa9" * 200 + b"\n")
    child.wait()
    gc.collect()


def test_a_del_that_prints_while_the_relay_works_does_not_hang_the_worker(
        capfd: pytest.CaptureFixture[str]) -> None:
    # The collector ran a __del__ that prints (tqdm's does) in the relay's flusher
    # while it held a lock the print wanted: the worker hung for good (3 runs in 7).
    with Cluster(n=1, relay="live") as cl:
        for _ in range(3):
            cl.submit(_collect_while_writing_below, 2000).result(timeout=60)
            out = capfd.readouterr().out
            lines = out.splitlines()
            # (one the flusher's collection printed after the task ended stays in the
            # worker's file, as any print between chunks does)
            assert 1000 < lines.count("collected") == out.count("collected")  # whole lines
            assert lines.count("é" * 200) == 2000
            assert [line for line in lines if line.startswith("child ")] == [
                f"child {i}" for i in range(1, 3001)]


def _flood_then_print(line: bytes, lines: int) -> None:
    os.write(1, line * lines)
    print("from Python")  # (live, what was written below Python before goes first)
    os.write(1, b"end\n")


def test_a_live_flood_below_python_streams_a_mebibyte_then_its_end(
        capfd: pytest.CaptureFixture[str]) -> None:
    # As at a chunk's end, where a flood is cut to its last mebibyte, so streaming
    # stops after the first: a chatty child does not take the master's memory.
    line, lines = b"y" * 99 + b"\n", 30_000  # 3 MB
    with Cluster(n=1, relay="live") as cl:
        cl.submit(_flood_then_print, line, lines).result()
    out = capfd.readouterr().out
    streamed = 1024 * 1024 // len(line) * len(line)  # (whole lines)
    skipped = len(line) * lines + 4 - streamed - 1024 * 1024
    assert out == (line.decode() * (streamed // len(line)) + "from Python\n"
                   + f"[sockpool: the next {skipped} bytes the chunk wrote below Python are "
                   f"left out]\n" + (line * lines + b"end\n")[-1024 * 1024:].decode())


def test_output_reaches_a_strict_utf8_stdout_and_no_stdout_at_all(tmp_path: Path) -> None:
    # Bytes that are not UTF-8 raised UnicodeEncodeError out of par_map (its result
    # lost) where stdout's errors are "strict"; with sys.stdout None (fd 1 closed,
    # pythonw) a printing task's map raised AttributeError, where print() is silent.
    script = tmp_path / "streams.py"
    script.write_text(textwrap.dedent("""
        import sys
        from sockpool import Cluster

        def junk(x):
            print("before", x)  # (a chunk's first write goes at once, alone)
            sys.stdout.buffer.write(b"\\x89PNG\\r\\n")
            print("after", x)
            if x == 1:  # a lone surrogate beside those bytes spoiled them too (as \\udc89)
                print("lone \\ud800 surrogate")
            return x

        with Cluster(n=1) as cl:
            print(cl.par_map(junk, [1]))
            sys.stdout.flush()
            sys.stdout = None
            sys.stderr.write(f"{cl.par_map(junk, [2, 3])}\\n")
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"before 1\n\x89PNG\r\nafter 1\nlone \\ud800 surrogate\n[1]\n"
    assert result.stderr == b"[2, 3]\n"


def test_live_relay_into_a_closed_pipe_raises_once_as_print_does(tmp_path: Path) -> None:
    # `python script.py | head -1`: the I/O thread logged a traceback for every
    # message it could not write (79 754 lines), and the map took 46 s.
    script = tmp_path / "pipe.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from sockpool import Cluster

        def noisy(x):
            for line in range(20_000):
                print("task", x, "line", line)
            return x

        try:
            with Cluster(n=2, relay="live") as cl:
                cl.par_map(noisy, range(4))
        except BrokenPipeError:
            sys.stderr.write("par_map raised BrokenPipeError\\n")
            os._exit(0)  # (what Python's docs advise; its exit would flush stdout again)
    """))
    master = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert master.stdout is not None and master.stderr is not None
    assert master.stdout.readline().startswith("task ")
    master.stdout.close()
    stderr = master.stderr.read()
    assert master.wait(60) == 0
    assert stderr == "par_map raised BrokenPipeError\n"


def test_prefixed_lines_end_at_each_task_and_at_newlines_alone(
        capsys: pytest.CaptureFixture[str]) -> None:
    # A task's last line without its newline took the next task's prefix on its
    # line ("[worker 0] no-eol 0[worker 0] no-eol 1"), and "\r" began a new line.
    with Cluster(n=1, relay_prefix=True) as prefixed:
        prefixed.par_map(_no_newline, range(2), chunksize=1)
    assert capsys.readouterr().out.split("\n") == [
        "[worker 0] 0%\r100%", "[worker 0] no-eol 0", "[worker 0] 0%\r100%",
        "[worker 0] no-eol 1", ""]


def _no_newline(x: int) -> None:
    print("0%\r100%")
    print("no-eol", x, end="")


def test_a_tasks_stdout_takes_what_scripts_ask_of_sys_stdout(cluster: Cluster) -> None:
    # sys.stdout.reconfigure(...) raised AttributeError in a task, as did .name and
    # .buffer.raw; .errors was None.
    assert cluster.submit(_stream_attributes).result(timeout=20) == (
        None, "<stdout>", "<stderr>", False, "strict", True)


def _stream_attributes() -> tuple[object, ...]:
    return (sys.stdout.reconfigure(encoding="utf-8", line_buffering=True),  # type: ignore[attr-defined]
            sys.stdout.name, sys.stderr.name, sys.stdout.line_buffering,  # type: ignore[attr-defined]
            sys.stdout.errors, sys.stdout.buffer.raw.writable())  # type: ignore[attr-defined]


def test_the_flusher_lives_on_after_a_batch_it_could_not_send(tmp_path: Path) -> None:
    # A warning of a class made in the task, under serializer="pickle", cannot be
    # sent: the flusher thread died of it, and from then on the lines of a task's
    # threads waited for the task's end.
    go = tmp_path / "go"
    (tmp_path / "tasks.py").write_text(textwrap.dedent(f"""
        import os, threading, time, warnings

        def bad_warning(x):
            class Local(UserWarning):
                pass
            thread = threading.Thread(target=warnings.warn, args=("local", Local))
            thread.start()
            thread.join()
            time.sleep(0.2)  # (the flusher's turn)
            return x

        def waits_for_go(x):
            threading.Thread(target=print, args=("from a thread",)).start()
            deadline = time.monotonic() + 20
            while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            return os.path.exists({str(go)!r})
    """))
    script = tmp_path / "flusher.py"
    script.write_text(
        "import tasks\n"
        "from sockpool import Cluster\n"
        "with Cluster(n=1, relay='live', serializer='pickle') as cl:\n"
        "    cl.par_map(tasks.bad_warning, [0])\n"
        "    print('result', cl.par_map(tasks.waits_for_go, [0]), flush=True)\n")
    with master_lines(script) as readline:
        assert readline() == "from a thread\n"
        go.touch()
        assert readline() == "result [True]\n"


def print_lines(count: int) -> int:
    for number in range(count):
        print("line", number)
    return count


def test_live_relay_sends_a_burst_of_lines_in_a_few_messages_in_order(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A message a line: two tasks printing in a loop outran the master, whose
    # memory grew by gigabytes (100 000 lines each took 3.7 s; 0.5 s now).
    from sockpool.dispatch.dispatcher import Dispatcher

    messages = []
    on_output = Dispatcher._on_output

    def counted(self: Dispatcher, *args: object) -> None:
        messages.append(1)
        on_output(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Dispatcher, "_on_output", counted)
    with Cluster(n=1, relay="live") as cl:
        assert cl.par_map(print_lines, [20_000]) == [20_000]
    assert capsys.readouterr().out.splitlines() == [f"line {n}" for n in range(20_000)]
    assert len(messages) < 2_000  # 20 000 before


def test_live_relay_sends_a_line_within_moments_without_a_flush(tmp_path: Path) -> None:
    script = tmp_path / "live.py"
    script.write_text(
        "import time\n"
        "from sockpool import Cluster\n"
        "def slow(x):\n"
        "    print('first', x)\n"
        "    print('second', x)\n"  # (within a millisecond of the first: it waits)
        "    time.sleep(3)\n"
        "    return x\n"
        "with Cluster(n=1, relay='live') as cl:\n"
        "    print('result', cl.par_map(slow, [7]), flush=True)\n")
    with master_lines(script, wait=20) as readline:
        assert readline() == "first 7\n"
        started = time.monotonic()
        assert readline() == "second 7\n"
        assert time.monotonic() - started < 2  # not at the task's end
        assert readline() == "result [7]\n"


def test_live_output_waits_behind_what_could_not_be_written_nor_jumps_ahead(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A line the I/O thread could not write waits for the caller; a later message
    # of the same chunk was written live at once, ahead of it.
    from sockpool.common.protocol import STDOUT, WARNING
    from sockpool.dispatch.output import emit, hold

    warning = (WARNING, ("careful", UserWarning, "task.py", 1, None))
    held: list[Any] = []
    hold(held, [(STDOUT, "first\n"), warning, (STDOUT, "second\n")], live=True)
    assert capsys.readouterr().out == "first\nsecond\n"  # the warning waits for the caller
    closed = io.StringIO()
    closed.close()
    with monkeypatch.context() as patched:
        patched.setattr(sys, "stdout", closed)
        hold(held, [(STDOUT, "third\n")], live=True)
    hold(held, [(STDOUT, "fourth\n")], live=True)
    assert capsys.readouterr().out == ""
    with pytest.warns(UserWarning, match="careful"):
        emit(held)  # the caller, at the chunk's end: in order
    assert capsys.readouterr().out == "third\nfourth\n"
