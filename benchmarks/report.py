"""The suite's report: a markdown table of medians (min-max) and a plot, saved together."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple


class Metric(NamedTuple):
    label: str
    unit: str
    higher_is_better: bool
    log_scale: bool = False


METRICS: dict[str, Metric] = {
    "startup": Metric("create -> first result", "s", False, log_scale=True),
    "bulk": Metric("{bulk} trivial tasks, per task", "µs", False, log_scale=True),
    "ms_tasks": Metric("1 ms tasks: time / ideal", "x", False),
    "round_trip": Metric("submit -> result round trip", "µs", False, log_scale=True),
    "data_in": Metric("{data_mb} MB array as argument", "GB/s", True, log_scale=True),
    "data_out": Metric("{data_mb} MB array as result", "GB/s", True, log_scale=True),
    "peak_memory": Metric("master's peak memory, {data_mb} MB round trip", "x array", False),
    "capture": Metric("{capture_mb} MB captured global: map(g) / map(h)", "x", False,
                      log_scale=True),
    "cpu_speedup": Metric("CPU-bound tasks: speedup", "x", True),
    "cpu_efficiency": Metric("CPU-bound tasks: parallel efficiency", "%", True),
}


@dataclass
class Result:
    """Every sample of one run: metric -> peer -> values, and what failed."""

    samples: dict[str, dict[str, list[float]]]
    errors: dict[str, str]
    peers: list[str]
    setup: dict[str, Any]


def _number(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.2g}" if abs(value) < 0.01 else f"{value:.3f}".rstrip("0")


def _cell(values: list[float] | None) -> str:
    if not values:
        return "—"
    median = _number(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({_number(min(values))}-{_number(max(values))})"


def best_peer(result: Result, metric: str) -> tuple[str, float] | None:
    """The best median among the peers (sockpool excluded) for ``metric``."""
    higher = METRICS[metric].higher_is_better
    medians = {peer: statistics.median(values)
               for peer, values in result.samples.get(metric, {}).items()
               if peer != "sockpool" and values}
    if not medians:
        return None
    peer = (max if higher else min)(medians, key=medians.__getitem__)
    return peer, medians[peer]


def markdown(result: Result) -> str:
    """The table: one row per workload, one column per peer, then best peer and ratio."""
    sizes = result.setup["sizes"]
    header = ["workload", "unit", "better", *result.peers, "best peer", "sockpool / best"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, info in METRICS.items():
        by_peer = result.samples.get(metric, {})
        row = [info.label.format(**sizes), info.unit,
               "higher" if info.higher_is_better else "lower"]
        row += [_cell(by_peer.get(peer)) for peer in result.peers]
        best = best_peer(result, metric)
        ours = by_peer.get("sockpool")
        if best is None:
            row += ["—", "—"]
        else:
            row.append(best[0])
            row.append(f"**{_number(statistics.median(ours) / best[1])}**"
                       if ours and best[1] else "—")
        lines.append("| " + " | ".join(row) + " |")
    setup = result.setup
    notes = [f"{setup['workers']} workers, {setup['cores']} cores, Python {setup['python']}, "
             f"{setup['repeat']} repetitions (each peer in a fresh process, peers "
             f"interleaved), medians (min-max), {setup['date']}."]
    if setup["quick"]:
        notes.append("A --quick smoke run: small sizes, one repetition; the numbers mean nothing.")
    notes += [f"- {where}: {why}" for where, why in sorted(result.errors.items())]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def plot(result: Result, path: Path) -> None:
    """One panel per workload, a bar per peer with its min-max, sockpool highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if result.samples.get(m)]
    columns = 5
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows),
                                squeeze=False)
    sizes = result.setup["sizes"]
    for ax, metric in zip(axes.flat, metrics, strict=False):
        info = METRICS[metric]
        peers = [p for p in result.peers if result.samples[metric].get(p)]
        values = [result.samples[metric][p] for p in peers]
        medians = [statistics.median(v) for v in values]
        spread = [[m - min(v) for m, v in zip(medians, values, strict=True)],
                  [max(v) - m for m, v in zip(medians, values, strict=True)]]
        colours = ["tab:orange" if p == "sockpool" else "tab:blue" for p in peers]
        ax.barh(peers, medians, xerr=spread, color=colours, capsize=2)
        ax.invert_yaxis()
        if info.log_scale:
            ax.set_xscale("log")
        better = "higher" if info.higher_is_better else "lower"
        ax.set_title(f"{info.label.format(**sizes)}\n({info.unit}, {better} is better)",
                     fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(result: Result, out: Path, goals: str = "") -> str:
    """Save results.md (then the ``goals`` table), results.json and results.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    if goals:
        table += "\n### Goals (issue 22)\n\n" + goals
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    plot(result, out / "results.png")
    return table + f"\nsaved to {out}/results.md, results.json, results.png\n"
