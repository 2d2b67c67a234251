"""Starting a cluster over ssh: 3 hosts x 2 workers, create -> first result.

    sudo python benchmarks/bench_ssh.py [--repeat 7] [--quick] [--hosts sp-n1,sp-n2,sp-n3]

Without ``--hosts`` it stands up its own test hosts (a private sshd and three
network-namespace hosts, as the tests do; root needed) and removes them after.
Interleaved, medians (min-max) of:

* sockpool: ``Cluster(hosts={h: 2 ...})`` until the first ``par_map`` result;
* the floor: one ``ssh host python -c 'import zmq, cloudpickle'`` per host, all
  hosts in parallel (a handshake and an interpreter, nothing else);
* R's PSOCK way: one ssh per worker, one after the other (``makeCluster``
  starts its ssh workers sequentially), here each running that same command.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from timing import timed

from sockpool import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

PROBE = "import zmq, cloudpickle"


def ssh_python(host: str) -> list[str]:
    return ["ssh", "-o", "BatchMode=yes", host, sys.executable, "-c", repr(PROBE)]


def floor(hosts: list[str]) -> None:
    running = [subprocess.Popen(ssh_python(host)) for host in hosts]
    if any(process.wait() != 0 for process in running):
        raise RuntimeError("ssh to a test host failed")


def sequential(hosts: list[str], per_host: int) -> None:
    for host in hosts:
        for _ in range(per_host):
            subprocess.run(ssh_python(host), check=True)


def sockpool_start(hosts: list[str], per_host: int, closing: list[float]) -> None:
    cl = Cluster(hosts=dict.fromkeys(hosts, per_host), python=sys.executable)
    cl.par_map(abs, range(len(hosts) * per_host))
    closing.append(timed(cl.close))  # not part of the start: reported apart


def measure(hosts: list[str], per_host: int, repeat: int) -> None:
    runs: dict[str, Callable[[], None]] = {
        "sockpool": lambda: sockpool_start(hosts, per_host, closing),
        "parallel ssh floor": lambda: floor(hosts),
        "sequential ssh (PSOCK)": lambda: sequential(hosts, per_host),
    }
    closing: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm up (page cache, sshd)
        run()
    for _ in range(repeat):
        for name, run in runs.items():
            times[name].append(timed(run))
    times["sockpool"] = [t - c for t, c in zip(times["sockpool"], closing[1:], strict=True)]
    print(f"{len(hosts)} hosts x {per_host} workers, {repeat} repetitions, "
          "create -> first result, medians (min-max)\n")
    for name, samples in times.items():
        print(f"{name:24} {statistics.median(samples):6.2f} s "
              f"({min(samples):.2f}-{max(samples):.2f})")
    print(f"{'(sockpool close())':24} {statistics.median(closing):6.2f} s")
    best = statistics.median(times["sockpool"])
    print(f"\nratio sockpool / parallel ssh floor: "
          f"{best / statistics.median(times['parallel ssh floor']):.2f}; "
          f"sockpool / sequential ssh (PSOCK): "
          f"{best / statistics.median(times['sequential ssh (PSOCK)']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--workers-per-host", type=int, default=2)
    parser.add_argument("--hosts", help="comma-separated ssh hosts that already exist")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 1
    if args.hosts:
        measure(args.hosts.split(","), args.workers_per_host, args.repeat)
        return
    from testbed import Testbed, netns_missing

    reason = netns_missing()
    if reason:
        sys.exit(f"bench_ssh: cannot stand up test hosts: {reason}; pass --hosts")
    bed = Testbed(Path(tempfile.mkdtemp(prefix="sockpool-bench-ssh-")))
    try:
        bed.make_keys()
        bed.start_sshd()
        bed.start_namespaces(3)
        bed.write_ssh_config(3)
        measure(["sp-n1", "sp-n2", "sp-n3"], args.workers_per_host, args.repeat)
    finally:
        bed.stop(3)


if __name__ == "__main__":
    main()
