"""The ssh bootstrap: checks that a host can run this master's workers, then becomes its agent.

Not imported by the master: :mod:`sockpool.launchers.ssh` sends this file's
source as the first line of the ssh session's stdin, where the remote command
(``ssh.LOADER``) runs it as ``__main__`` under the host's Python, whatever its
version.  The second line is its data, what the master wants (JSON)::

    {"python": [3, 11], "sockpool": "1.2.0", "agent": {...the agent's options}}

It answers with one ``{"hello": report}`` line on stdout: the host's Python,
the versions it found, and the problems that keep it from running workers
(another Python minor version, sockpool missing or at another version, a
dependency that does not import).  With none it becomes the host's agent
(:mod:`sockpool.worker.agent`), which reads the worker lines behind these two.

So that any Python can say which version it is, the syntax stays plain
(type comments, no f-strings: Python 2.7 reads it too) and nothing
from sockpool is imported before the checks pass.
"""

import importlib
import json
import os
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any  # noqa: F401 (for the type comments)

#: What the workers import on the host; each must be importable there.
REQUIRED = ("sockpool", "zmq", "cloudpickle", "dill", "psutil", "xxhash")
#: The agent this process becomes once the checks pass.  Named, not imported:
#: the launchers never import the worker side, and this runs only on the host.
AGENT = "sockpool.worker.agent"


def read_line():
    # type: () -> bytes
    """One line of stdin, read byte by byte so the lines behind it stay for the agent.

    Empty when stdin ends first: the master is gone.
    """
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            return b""
        data += byte
    return data


def check(want):
    # type: (dict[str, Any]) -> dict[str, Any]
    """This host as the master sees it, with ``problems``: why it cannot run workers, if so."""
    report = {"python": ".".join(map(str, sys.version_info[:3])),
              "executable": sys.executable, "pid": os.getpid(),
              "host": socket.gethostname()}  # type: dict[str, Any]
    problems = []  # type: list[str]
    if list(sys.version_info[:2]) != want["python"]:
        problems.append("Python " + report["python"] + " there but "
                        + ".".join(map(str, want["python"])) + " here: pickled functions "
                        "do not travel between Python versions")
    else:
        for name in REQUIRED:
            try:
                report[name] = getattr(__import__(name), "__version__", "?")
            except Exception as exc:
                problems.append("cannot import " + name + " (" + type(exc).__name__ + ": "
                                + str(exc) + ")")
        if report.get("sockpool", want["sockpool"]) != want["sockpool"]:
            problems.append("sockpool " + str(report["sockpool"]) + " there but "
                            + str(want["sockpool"]) + " here")
    report["problems"] = problems
    return report


def main():
    # type: () -> None
    """Read what the master wants, report this host, and run its agent if it can."""
    line = read_line()
    if not line:
        sys.exit(0)  # the master went away before it said what it wants
    want = json.loads(line.decode("utf-8"))
    report = check(want)
    sys.stdout.write(json.dumps({"hello": report}) + "\n")
    sys.stdout.flush()
    if report["problems"]:
        sys.exit(3)
    importlib.import_module(AGENT).main(want["agent"])


if __name__ == "__main__":
    main()
