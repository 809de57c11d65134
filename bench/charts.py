"""PNG charts of one run (matplotlib, Agg backend): throughput bars, manifest req/s by
connection count, latency bars, and the target ratios. Skipped, with a note, when
matplotlib is not installed (`pip install matplotlib`, the `bench` extra)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.report import BASELINE, targets


def _results(run: dict[str, Any], system: str, group: str) -> dict[str, Any]:
    return (run["systems"].get(system, {}).get("results") or {}).get(group) or {}


def _grouped_bars(
    ax: Any, run: dict[str, Any], group: str, field: str, title: str, ylabel: str
) -> bool:
    systems = [s for s in run["systems"] if _results(run, s, group)]
    if not systems:
        return False
    cells: list[str] = []
    for s in systems:
        cells += [c for c in _results(run, s, group) if c not in cells]
    width = 0.8 / len(systems)
    for k, s in enumerate(systems):
        data = _results(run, s, group)
        values = [float((data.get(c) or {}).get(field) or 0) for c in cells]
        ax.bar([i + k * width for i in range(len(cells))], values, width, label=s)
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(cells))])
    ax.set_xticklabels(cells, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return True


def write(run: dict[str, Any], out_dir: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no charts (pip install matplotlib)", file=sys.stderr)
        return []
    written: list[str] = []

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ok = _grouped_bars(axes[0], run, "blob_push", "MB_per_s", "Blob push", "MB/s")
    ok = _grouped_bars(axes[1], run, "blob_pull", "MB_per_s", "Blob pull", "MB/s") or ok
    if ok:
        fig.tight_layout()
        name = f"{stem}-blobs.png"
        fig.savefig(out_dir / name, dpi=90)
        written.append(name)
    plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharey=True)
    any_plot = False
    for ax, op in zip(axes, ("head_tag", "get_tag", "head_digest", "get_digest"), strict=True):
        for s in run["systems"]:
            data = _results(run, s, "manifest_reads")
            points = sorted(
                (int(k.rsplit("_c", 1)[1]), v.get("ops_per_s", 0))
                for k, v in data.items()
                if k.startswith(op + "_c")
            )
            if points:
                any_plot = True
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=s)
        ax.set_xscale("log", base=2)
        ax.set_title(f"manifest {op}")
        ax.set_xlabel("connections")
    axes[0].set_ylabel("req/s")
    axes[0].legend(fontsize=8)
    if any_plot:
        fig.tight_layout()
        name = f"{stem}-manifests.png"
        fig.savefig(out_dir / name, dpi=90)
        written.append(name)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ok = False
    for ax, group, title in (
        (axes[0], "pull_storm", "Pull storm: time per client"),
        (axes[1], "push_storm", "Push storm: time per image"),
    ):
        systems = [s for s in run["systems"] if _results(run, s, group)]
        for k, s in enumerate(systems):
            d = _results(run, s, group)
            ax.bar(
                [k - 0.2, k + 0.2],
                [d.get("p50_ms") or 0, d.get("p99_ms") or 0],
                0.4,
                color=["tab:blue", "tab:orange"],
            )
            ok = True
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(systems, fontsize=8)
        ax.set_title(title + " (p50 blue, p99 orange)")
        ax.set_ylabel("ms")
    if ok:
        fig.tight_layout()
        name = f"{stem}-storms.png"
        fig.savefig(out_dir / name, dpi=90)
        written.append(name)
    plt.close(fig)

    ts = [t for t in targets(run) if t.value is not None]
    if ts and BASELINE in run["systems"]:
        fig, ax = plt.subplots(figsize=(11, 0.45 * len(ts) + 1.2))
        colors = ["tab:green" if t.status == "met" else "tab:red" for t in ts]
        ax.barh(range(len(ts)), [t.value for t in ts], color=colors)
        for i, t in enumerate(ts):
            ax.plot([t.threshold, t.threshold], [i - 0.4, i + 0.4], color="black")
        ax.set_yticks(range(len(ts)))
        ax.set_yticklabels([t.label for t in ts], fontsize=8)
        ax.axvline(1.0, color="grey", linestyle=":")
        ax.set_xlabel("Cargohold / Distribution (black tick: target)")
        ax.invert_yaxis()
        fig.tight_layout()
        name = f"{stem}-targets.png"
        fig.savefig(out_dir / name, dpi=90)
        written.append(name)
        plt.close(fig)
    return written
