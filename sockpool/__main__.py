"""The ``sockpool`` command: ``sockpool worker`` starts a worker by hand.

The worker reads its configuration (the master's address, the cluster's token
and its CURVE keys) as one line on stdin, as a ``ManualLauncher`` prints it,
so that nothing secret is on a command line.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sockpool`` command (and ``python -m sockpool``)."""
    parser = argparse.ArgumentParser(  # (no docstrings under -OO)
        prog="sockpool", description="The sockpool command: sockpool worker starts a worker "
        "by hand.")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser(
        "worker", help="run one worker; paste the line its master printed into its stdin")
    worker.add_argument("--config-file", help="read that line from this file (then removed)")
    args = parser.parse_args(argv)
    from .worker.main import main as worker_main

    return worker_main(["--config-file", args.config_file] if args.config_file else [])


if __name__ == "__main__":
    sys.exit(main())
