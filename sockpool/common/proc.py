"""Small process helpers: exit statuses in words (and why a process was killed), log tails."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess

#: How much of a worker's stderr error messages quote.
TAIL_LINES = 20
TAIL_BYTES = 4096


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the process's name (which may hold
    anything, ")" too), its state first; None where there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()
    except OSError:
        return None


def describe_exit(returncode: int | None) -> str:
    """``-9`` -> ``"killed by SIGKILL"``, ``3`` -> ``"exit code 3"``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


#: The signal at which a worker writes its main thread's Python stack to a file of its
#: own (faulthandler's handler: also from C code that holds the GIL), then ends.  A
#: worker gets it for a task past its time limit, whose error then says where the task
#: was.  A real-time signal, which no library uses.
STACKS_SIGNAL = signal.SIGRTMIN + 2 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2
#: The most of a worker's stack dump an error quotes.
STACKS_BYTES = 16 * 1024


def show_stacks(pid: int, stacks_path: str) -> bool:
    """Ask a worker's main thread (its tasks run there) to write its stack to
    ``stacks_path``; False where it cannot be asked yet (no file: it has not put its
    handler in place) or is gone.  Its thread id is its pid: any thread may take a
    signal sent to the process."""
    if not os.path.exists(stacks_path):
        return False
    import ctypes  # (here: the worker imports this module, and never calls this)

    try:
        tgkill = ctypes.CDLL(None, use_errno=True).tgkill  # (glibc 2.30+)
    except (AttributeError, OSError):
        tgkill = None
    if tgkill is None or tgkill(pid, pid, STACKS_SIGNAL) != 0:
        try:
            os.kill(pid, STACKS_SIGNAL)
        except OSError:
            return False
    return True


def read_stacks(stacks_path: str) -> str:
    """The stack a worker wrote at :data:`STACKS_SIGNAL` ("" if none)."""
    try:
        with open(stacks_path, "rb") as stacks:
            return stacks.read(STACKS_BYTES).decode(errors="replace").rstrip("\n")
    except OSError:
        return ""

#: What a local worker's exit status is when it was reaped before sockpool could read it.
REAPED_ELSEWHERE = ("exit status unknown: it was reaped elsewhere, as when the program "
                    "sets SIGCHLD to SIG_IGN")


def read_tail(path: str | os.PathLike[str], max_lines: int = TAIL_LINES) -> str:
    """The last lines of a file ("" when it is missing or empty)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - TAIL_BYTES))
            data = stream.read()
    except OSError:
        return ""
    lines = data.decode(errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])


def worker_output_paths(workdir: str, worker_id: int) -> tuple[str, str]:
    """Where a worker started by a launcher or an agent writes below Python: its log
    (stderr, ``worker-N.log``) and the file of its stdout beside it (``worker-N.out``)."""
    log_path = os.path.join(workdir, f"worker-{worker_id}.log")
    return log_path, _stdout_beside(log_path)


def _stdout_beside(log_path: str) -> str:
    return log_path.removesuffix(".log") + ".out"


def stacks_beside(log_path: str) -> str:
    """Where the worker whose output goes to ``log_path`` writes its main thread's
    stack when asked (a file of its own, ``worker-N.stacks``: not read back as what
    the task wrote, nor lost among a child's output)."""
    return log_path.removesuffix(".log") + ".stacks"


def worker_output_tail(log_path: str) -> str:
    """The last lines a worker wrote below Python: to its stdout, a file beside its log
    (where there is one), then to its stderr, the log itself."""
    parts = (read_tail(_stdout_beside(log_path)), read_tail(log_path))
    return "\n".join(part for part in parts if part)


# -- why a process was killed ------------------------------------------------------------

#: The kernel's log, where its out-of-memory killer names each process it kills.
KERNEL_LOG = "/dev/kmsg"
#: Seconds a kernel-log record may seem to precede the process it names (clocks differ).
KMSG_CLOCK_SLACK = 5.0
_OOM_KILLED = re.compile(rb"(?:Out of memory|Memory cgroup out of memory): Killed process (\d+) ")
_KILLED_RESIDENT = re.compile(rb"(?:anon|file)-rss:(\d+)kB")  # (shmem: the master's segments)


def note_inherited_peak(process: subprocess.Popen[bytes]) -> None:
    """Note, as ``process`` starts, the peak it inherits: a child's ``ru_maxrss``
    starts at the peak of the memory it forked with (this process's, ``VmHWM``),
    kept across ``exec``, so a figure up to that is not the child's (see :func:`reap`).
    Not this process's own ``ru_maxrss``, which holds its parent's peak the same way."""
    process.inherited_peak_kb = _own_peak_kb()  # type: ignore[attr-defined]


def _own_peak_kb() -> int:
    """The peak resident memory of this process's own memory (kB): ``VmHWM``."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reap(process: subprocess.Popen[bytes]) -> int | None:
    """``process.poll()``, reaping with ``wait4`` for its peak memory: the exit status,
    or None while it runs.  The peak (bytes) is then ``process.peak_bytes``, unless it
    is no more than the peak it inherited (:func:`note_inherited_peak`); a process
    reaped elsewhere (``SIGCHLD`` ignored) has ``process.reaped_elsewhere`` set, and
    ``poll()``'s 0 for a status nobody can read now."""
    if process.returncode is None:
        try:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        except ChildProcessError:
            process.reaped_elsewhere = True  # type: ignore[attr-defined]
            return process.poll()
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            if usage.ru_maxrss > getattr(process, "inherited_peak_kb", 0):
                process.peak_bytes = usage.ru_maxrss * 1024  # type: ignore[attr-defined]
    return process.returncode


def memory_cgroup(pid: int) -> str | None:
    """The directory of a live process's memory cgroup (v1 ``memory`` or v2), if any."""
    try:
        with open(f"/proc/{pid}/cgroup") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            return f"/sys/fs/cgroup/memory{path}"
        if controllers == "" and os.path.exists(f"/sys/fs/cgroup{path}/memory.events"):
            return f"/sys/fs/cgroup{path}"
    return None


def oom_kills(cgroup: str | None) -> int | None:
    """How many processes the out-of-memory killer has killed in a memory cgroup."""
    if cgroup is None:
        return None
    for name in ("memory.events", "memory.oom_control"):  # cgroup v2, v1
        try:
            with open(os.path.join(cgroup, name)) as stream:
                for line in stream:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def killed_by_oom(pid: int, started: float | None = None) -> bytes | bool | None:
    """The kernel's log record of its out-of-memory killer killing ``pid``, or False
    (None: unreadable); only a record made since ``started`` (``time.monotonic()``,
    the process's start) counts, as a pid is reused: an older record is another's."""
    try:
        descriptor = os.open(KERNEL_LOG, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        while True:
            try:
                record = os.read(descriptor, 8192)  # one record per read
            except BlockingIOError:  # the end of the log
                return False
            except OSError:  # EPIPE: records were overwritten while reading; go on
                continue
            if not record:
                return False
            found = _OOM_KILLED.search(record)
            if found and int(found.group(1)) == pid and _logged_since(record, started):
                return record
    finally:
        os.close(descriptor)


def _logged_since(record: bytes, started: float | None) -> bool:
    """Whether a ``/dev/kmsg`` record ("prio,seq,microseconds,flags;text", its
    clock printk's, since boot) was made after ``started`` (``time.monotonic()``),
    within :data:`KMSG_CLOCK_SLACK`: the two clocks differ (by 67 ms on this VM; a
    VM's printk clock may lag more), and a real kill must not pass for another's."""
    if started is None:
        return True
    try:
        microseconds = int(record.split(b";", 1)[0].split(b",")[2])
    except (IndexError, ValueError):
        return True  # a record of another shape: the pid alone decides, as before
    return microseconds / 1e6 >= started - KMSG_CLOCK_SLACK


def explain_kill(pid: int, returncode: int | None, peak_bytes: int | None,
                 cgroup: str | None = None, oom_kills_before: int | None = None,
                 started: float | None = None) -> str:
    """How a process ended, with what is known of why: ``describe_exit`` and, for a
    SIGKILL, whether the out-of-memory killer did it, and its peak memory.

    Args:
        peak_bytes: the process's peak resident memory, when known.
        cgroup, oom_kills_before: its memory cgroup and that group's OOM-kill count
            when it was last seen alive: a larger count now is the evidence used
            where the kernel's log cannot be read.
        started: when the process started (``time.monotonic()``): the log's
            records of a pid's kills from before then are of another process.
    """
    text = describe_exit(returncode)
    if returncode is None or returncode >= 0:
        return text
    notes = []
    if returncode == -signal.SIGKILL:
        by_oom = killed_by_oom(pid, started)
        if by_oom is None and oom_kills_before is not None:
            after = oom_kills(cgroup)
            by_oom = after is not None and after > oom_kills_before
        if by_oom:
            notes.append("by the kernel's out-of-memory killer")
        if isinstance(by_oom, bytes):  # its resident memory as it was killed: its peak
            killed = sum(int(kb) for kb in _KILLED_RESIDENT.findall(by_oom)) * 1024
            peak_bytes = max(peak_bytes or 0, killed) or None
    if peak_bytes:
        notes.append(f"peak memory {format_bytes(peak_bytes)}")
    return f"{text} ({', '.join(notes)})" if notes else text


def format_bytes(count: int) -> str:
    """``1536`` -> ``"1.5 kB"``: decimal units, one decimal."""
    size = float(count)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, parents first, read from ``/proc`` (Linux; else none).

    All are found before any is signalled: a child that ends first would leave
    its own children to init, out of reach.
    """
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _children(pid: int) -> list[int]:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children", "rb") as listing:
                children.extend(int(number) for number in listing.read().split())
        except (OSError, ValueError):
            continue
    return children
