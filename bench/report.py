"""Results files: JSON (everything), Markdown (ratios and targets) for one run.

Ratios are Cargohold / Distribution of the same cell in the same run, so "higher is
better" for throughput and "lower is better" for latency. Targets (bench/README.md):
push R=1 >= 1.5x, push R=3 >= 1.0x, pull (R=1, R=3) >= 1.0x (geometric mean of the
blob cells' ratios); manifest GET by digest at 32 connections >= 3x; GET and HEAD by tag at
32 connections >= 1.5x; pull storm p99 <= Distribution's; server CPU-seconds per GB
pulled <= Distribution's. The efficiency table shows every system's server CPU per GB
pushed and pulled and each process's peak RSS (bench/procstats.py).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE = "distribution"
CARGOHOLD = ("cargohold-r1", "cargohold-r3")


@dataclass(frozen=True)
class Target:
    label: str
    system: str
    value: float | None
    threshold: float
    higher_is_better: bool

    @property
    def status(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        ok = self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold
        return "met" if ok else "MISSED"


def _results(run: dict[str, Any], system: str) -> dict[str, Any]:
    return run.get("systems", {}).get(system, {}).get("results", {}) or {}


def _metric(
    run: dict[str, Any], system: str, group: str, cell: str | None, field: str
) -> float | None:
    data = _results(run, system).get(group)
    if data is None:
        return None
    if cell is not None:
        data = data.get(cell)
    if not isinstance(data, dict):
        return None
    value = data.get(field)
    return float(value) if isinstance(value, (int, float)) else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _geomean_ratio(
    run: dict[str, Any], system: str, group: str, field: str = "MB_per_s"
) -> float | None:
    """The geometric mean over `group`'s cells of `field` against the baseline's."""
    base = _results(run, BASELINE).get(group) or {}
    ratios = [
        ratio(
            _metric(run, system, group, cell, field),
            _metric(run, BASELINE, group, cell, field),
        )
        for cell in base
    ]
    good = [r for r in ratios if r is not None and r > 0]
    if not good or len(good) != len(ratios):
        return None
    return math.exp(sum(math.log(r) for r in good) / len(good))


def _worst_large_cell(run: dict[str, Any], system: str, group: str) -> float | None:
    """The lowest MB/s ratio among `group`'s cells of 64 MiB blobs or larger."""
    base = _results(run, BASELINE).get(group) or {}
    large = [c for c in base if c.split("_")[0] in _LARGE_CELLS]
    ratios = [
        ratio(
            _metric(run, system, group, cell, "MB_per_s"),
            _metric(run, BASELINE, group, cell, "MB_per_s"),
        )
        for cell in large
    ]
    if not ratios or any(r is None for r in ratios):
        return None
    return min(r for r in ratios if r is not None)


# Cell name prefixes (bench/workloads/blobs.py) of the sizes issue 13 holds to >= 1.0x.
_LARGE_CELLS = ("64MiB", "1GiB")


def cpu_per_gb(run: dict[str, Any], system: str, group: str) -> float | None:
    """Server CPU-seconds per GB over every cell of `group` (blob_push or blob_pull):
    the CPU all cells used over the bytes all of them moved."""
    cells = [c for c in (_results(run, system).get(group) or {}).values() if isinstance(c, dict)]
    measured = [c for c in cells if "server_cpu_s" in c and c.get("server_bytes_moved")]
    if not measured:
        return None
    cpu = sum(float(c["server_cpu_s"]) for c in measured)
    moved = sum(int(c["server_bytes_moved"]) for c in measured)
    return cpu / (moved / 1e9)


def targets(run: dict[str, Any]) -> list[Target]:
    out = [
        Target(
            "blob push, R=1 (geomean of cells)",
            "cargohold-r1",
            _geomean_ratio(run, "cargohold-r1", "blob_push"),
            1.5,
            True,
        ),
        Target(
            "blob push, R=3 W=2 (geomean of cells)",
            "cargohold-r3",
            _geomean_ratio(run, "cargohold-r3", "blob_push"),
            1.0,
            True,
        ),
    ]
    for system in CARGOHOLD:
        r = system[-2:].upper()
        out.append(
            Target(
                f"blob pull, {r} (geomean of cells)",
                system,
                _geomean_ratio(run, system, "blob_pull"),
                1.2,
                True,
            )
        )
        out.append(
            Target(
                f"blob pull, {r}, worst 64 MiB or larger cell",
                system,
                _worst_large_cell(run, system, "blob_pull"),
                1.0,
                True,
            )
        )
    out.append(
        Target(
            "push storm, R3 (images/s)",
            "cargohold-r3",
            _cell_ratio(run, "cargohold-r3", "push_storm", None, "images_per_s"),
            1.0,
            True,
        )
    )
    out.append(
        Target(
            "tag writes, R3 (geomean of cells)",
            "cargohold-r3",
            _geomean_ratio(run, "cargohold-r3", "tag_puts", "ops_per_s"),
            1.0,
            True,
        )
    )
    for system in CARGOHOLD:
        out.append(
            Target(
                f"server CPU per GB pulled (ratio, lower is better), {system[-2:].upper()}",
                system,
                ratio(cpu_per_gb(run, system, "blob_pull"), cpu_per_gb(run, BASELINE, "blob_pull")),
                1.0,
                False,
            )
        )
    for system in CARGOHOLD:
        r = system[-2:].upper()
        out.append(
            Target(
                f"manifest GET by digest, 32 conns, {r}",
                system,
                _cell_ratio(run, system, "manifest_reads", "get_digest_c32", "ops_per_s"),
                3.0,
                True,
            )
        )
        for op in ("get_tag", "head_tag"):
            verb = op.split("_")[0].upper()
            out.append(
                Target(
                    f"manifest {verb} by tag, 32 conns, {r}",
                    system,
                    _cell_ratio(run, system, "manifest_reads", f"{op}_c32", "ops_per_s"),
                    1.5,
                    True,
                )
            )
        out.append(
            Target(
                f"pull storm p99 (ratio, lower is better), {r}",
                system,
                _cell_ratio(run, system, "pull_storm", None, "p99_ms"),
                1.0,
                False,
            )
        )
    return [t for t in out if t.system in run.get("systems", {})]


def _cell_ratio(
    run: dict[str, Any], system: str, group: str, cell: str | None, field: str
) -> float | None:
    return ratio(
        _metric(run, system, group, cell, field), _metric(run, BASELINE, group, cell, field)
    )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.{digits}f}"
    return str(value)


def _flag(cell: dict[str, Any] | None) -> str:
    if not isinstance(cell, dict):
        return ""
    marks = []
    if cell.get("skipped"):
        marks.append(f"skipped: {cell['skipped']}")
    if cell.get("errors"):
        marks.append(f"{cell['errors']} err")
    if cell.get("timed_out"):
        marks.append("timed out")
    if cell.get("verified_pull") is False:
        marks.append("BAD BYTES")
    return f" ({', '.join(marks)})" if marks else ""


# (group, title, fields shown per system, the field the ratio is taken on)
TABLES: list[tuple[str, str, tuple[str, ...], str]] = [
    (
        "blob_push",
        "Blob push (MB/s; server CPU-s per GB)",
        ("MB_per_s", "server_cpu_s_per_GB"),
        "MB_per_s",
    ),
    (
        "blob_pull",
        "Blob pull (MB/s; server CPU-s per GB)",
        ("MB_per_s", "server_cpu_s_per_GB"),
        "MB_per_s",
    ),
    (
        "manifest_reads",
        "Manifest reads (req/s; p50/p99 ms)",
        ("ops_per_s", "p50_ms", "p99_ms"),
        "ops_per_s",
    ),
    (
        "tag_puts",
        "Tag writes: manifest PUT by new tag (req/s; p50/p99 ms)",
        ("ops_per_s", "p50_ms", "p99_ms"),
        "ops_per_s",
    ),
    (
        "push_storm",
        "Push storm: many small images (images/s; p50/p99 ms per image)",
        ("images_per_s", "p50_ms", "p99_ms"),
        "images_per_s",
    ),
    (
        "pull_storm",
        "Pull storm: clients pulling one image at once (ms per client)",
        ("p50_ms", "p99_ms", "MB_per_s"),
        "p99_ms",
    ),
    (
        "raft_commands",
        "Raft barrier commands over gRPC (commands/s; p50/p99 ms)",
        ("ops_per_s", "p50_ms", "p99_ms"),
        "ops_per_s",
    ),
]

SINGLE_CELL_GROUPS = {"push_storm", "pull_storm"}


def _table(
    run: dict[str, Any], group: str, title: str, fields: tuple[str, ...], ratio_field: str
) -> list[str]:
    systems = [s for s in run.get("systems", {}) if _results(run, s).get(group)]
    if not systems:
        return []
    cells: list[str | None]
    if group in SINGLE_CELL_GROUPS:
        cells = [None]
    else:
        ordered: dict[str, None] = {}
        for s in systems:
            ordered.update(dict.fromkeys(_results(run, s)[group]))
        cells = list(ordered)
    header = ["cell"] + [f"{s} {f}" for s in systems for f in fields]
    compared = [s for s in systems if s != BASELINE and BASELINE in systems]
    header += [f"{s}/{BASELINE}" for s in compared]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        row = [cell or group]
        for s in systems:
            data = _results(run, s)[group]
            data = data if cell is None else data.get(cell)
            for i, f in enumerate(fields):
                value = data.get(f) if isinstance(data, dict) else None
                row.append(_fmt(value) + (_flag(data) if i == 0 else ""))
        for s in compared:
            r = _cell_ratio(run, s, group, cell, ratio_field)
            row.append(_fmt(r, 2) + ("x" if r is not None else ""))
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def _efficiency(run: dict[str, Any]) -> list[str]:
    """Server CPU-seconds per GB pushed and pulled, and peak RSS per process."""
    rows = []
    for name, rec in run.get("systems", {}).items():
        push, pull = cpu_per_gb(run, name, "blob_push"), cpu_per_gb(run, name, "blob_pull")
        peaks = rec.get("peak_rss_MiB") or {}
        if push is None and pull is None and not peaks:
            continue
        rss = ", ".join(f"{p} {_fmt(float(v), 0)}" for p, v in peaks.items()) or "—"
        total = _fmt(float(sum(peaks.values())), 0) if peaks else "—"
        rows.append(f"| {name} | {_fmt(push, 2)} | {_fmt(pull, 2)} | {rss} | {total} |")
    if not rows:
        return []
    return [
        "",
        "## Efficiency (server side, from /proc)",
        "",
        "CPU-seconds of all of a system's processes (user + system, children included) "
        "over every blob cell, per GB (10^9 bytes) moved; peak RSS is each process's "
        "VmHWM over the whole run, in MiB.",
        "",
        "| system | CPU-s per GB pushed | CPU-s per GB pulled | peak RSS per process (MiB) "
        "| sum of peaks (MiB) |",
        "|---|---|---|---|---|",
        *rows,
    ]


def copies_of(record: dict[str, Any]) -> int:
    """How many copies of a pushed byte the system writes: its recorded `copies`, else
    (runs before it was recorded) the R in its label, else 1."""
    if isinstance(record.get("copies"), int):
        return int(record["copies"])
    found = re.search(r"R=(\d+)", str(record.get("label", "")))
    return int(found.group(1)) if found else 1


def push_floor(run: dict[str, Any], copies: int) -> float | None:
    """The least server CPU-seconds per GB pushed on this machine for `copies` copies:
    one sha256 pass over the bytes and each copy written into fresh page cache (physical
    figures of the same run), nothing else. None without those figures."""
    physical = run.get("physical") or {}
    sha = physical.get("sha256_MB_per_s")
    fresh = physical.get("page_cache_fresh_write_MB_per_s")
    if not sha or not fresh:
        return None
    return 1000.0 / float(sha) + copies * 1000.0 / float(fresh)


def handover_cost(run: dict[str, Any]) -> float | None:
    """CPU-seconds per GB to hand bytes from one process to another over loopback (both
    ends, physical figures of the same run); None in runs from before it was measured."""
    value = (run.get("physical") or {}).get("loopback_handover_cpu_s_per_GB")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def handovers_of(name: str, copies: int) -> int:
    """Hand-overs of each pushed byte between processes: the client's request body to the
    server, then, in Cargohold, the gateway's send of it to each of `copies` nodes."""
    return 1 if name == BASELINE else 1 + copies


def _push_floor_table(run: dict[str, Any]) -> list[str]:
    """Each push cell's cost against the machine's floor, the cores it kept busy, and
    (for Cargohold) the most its ratio could be where both systems are CPU-bound."""
    if push_floor(run, 1) is None:
        return []  # a run without the physical figures it needs
    cores = int((run.get("machine") or {}).get("cores") or 0)
    base = _results(run, BASELINE).get("blob_push") or {}
    handover = handover_cost(run)
    rows = []
    for name, record in (run.get("systems") or {}).items():
        copies = copies_of(record)
        floor = push_floor(run, copies)
        assert floor is not None  # the figures are there (checked above)
        moved = floor + handovers_of(name, copies) * handover if handover else None
        for cell, data in (_results(run, name).get("blob_push") or {}).items():
            cost, rate = data.get("server_cpu_s_per_GB"), data.get("MB_per_s")
            if not isinstance(cost, (int, float)) or not isinstance(rate, (int, float)):
                continue
            server = rate * cost / 1000.0
            client = float(data.get("client_cpu_pct") or 0.0) / 100.0
            their = (base.get(cell) or {}).get("server_cpu_s_per_GB")
            bound = moved_bound = "—"
            if name != BASELINE and isinstance(their, (int, float)):
                bound = f"{their / floor:.2f}x"
                if moved:
                    moved_bound = f"{their / moved:.2f}x"
            row = (
                f"| {name} | {cell} | {copies} | {_fmt(rate)} | {cost:.2f} | {floor:.2f} | "
                f"{cost / floor:.2f} | {server:.2f} + {client:.2f} of {cores} | {bound} |"
            )
            rows.append(row + (f" {moved_bound} |" if handover else ""))
    if not rows:
        return []
    moved_head, moved_rule, moved_text = "", "", ""
    if handover:
        moved_head, moved_rule = " best ratio with hand-overs |", "---|"
        moved_text = (
            " With hand-overs: the same against the floor plus each hand-over of the bytes "
            f"between processes at loopback_handover ({handover:.2f} CPU-s per GB): the "
            "request body's receive, and in Cargohold the gateway's send to each copy's "
            "node, which no design that keeps a replica in another process avoids."
        )
    return [
        "",
        "## Push cost against this machine's floor",
        "",
        "The floor is the least a push can cost here: one sha256 pass and each copy written "
        "into fresh page cache (`1000/sha256 + copies * 1000/page_cache_fresh_write` "
        "CPU-s per GB, physical figures above; replicas on one host each write a copy). "
        "Cores busy = MB/s * CPU-s per GB (server) + the client's share: a cell near "
        f"{cores} cores is CPU-bound, and there a system's MB/s is at most (cores - "
        "client) / CPU-s per GB. Best ratio = Distribution's CPU-s per GB in that cell / "
        "this system's floor: the most Cargohold / Distribution could be in a CPU-bound "
        "cell even at the floor (bench/README.md)." + moved_text,
        "",
        "| system | cell | copies | MB/s | CPU-s per GB | floor | cost / floor | cores busy "
        "(server + client) | best ratio if CPU-bound |" + moved_head,
        "|---|---|---|---|---|---|---|---|---|" + moved_rule,
        *rows,
    ]


def markdown(run: dict[str, Any], charts: list[str]) -> str:
    m = run["machine"]
    lines = [
        f"# Cargohold vs Distribution — {run['started_utc']} on {m['host']}",
        "",
        f"Profile **{run['profile']}**, {run.get('elapsed_s', '?')} s. Machine: {m['cores']} "
        f"cores ({m['cpu_model']}), {m['memory_total_MiB']} MiB RAM, kernel {m['kernel']}, "
        f"Python {m['python']}. Load average at start {m['load_average_at_start']}, "
        f"at end {m.get('load_average_at_end')}. The machine may be shared: numbers taken "
        "under load are indicative; ratios (same run, same machine) are the figures to read.",
        "",
        "## Targets (Cargohold / Distribution)",
        "",
        "| target | value | threshold | status |",
        "|---|---|---|---|",
    ]
    for t in targets(run):
        sign = "≥" if t.higher_is_better else "≤"
        lines.append(f"| {t.label} | {_fmt(t.value, 2)} | {sign} {t.threshold} | {t.status} |")
    lines += [
        "",
        "## Physical bounds of this machine (same run)",
        "",
        "| measure | MB/s |",
        "|---|---|",
    ]
    physical = run.get("physical", {})
    for key, value in physical.items():
        if key.endswith("_cpu_s_per_GB"):
            label = key.replace("_cpu_s_per_GB", "") + " (CPU-s per GB, not MB/s)"
            lines.append(f"| {label} | {_fmt(value, 3)} |")
        else:
            lines.append(f"| {key.replace('_MB_per_s', '')} | {_fmt(value)} |")
    if any(key.startswith("page_cache_") for key in physical):
        lines += [
            "",
            "page_cache_*: MB per CPU-second of the writing thread, not per second "
            "(a fresh write pays a host fault per first-touched page on a VM with free "
            "page reporting; see bench/README.md).",
        ]
    lines += _push_floor_table(run)
    ceiling = run.get("client_ceiling")
    if ceiling:
        lines += [
            "",
            "## Client ceiling (the same client against a do-nothing server)",
            "",
            "The do-nothing server is a single Python process, so it is usually the "
            "limit here; the client's own CPU use is the direct evidence.",
            "",
            "| measurement | value | client CPU % | client CPU µs/op |",
            "|---|---|---|---|",
        ]
        for group in ("blob_push", "blob_pull"):
            for cell, data in (ceiling.get(group) or {}).items():
                lines.append(
                    f"| {group} {cell} | {_fmt(data.get('MB_per_s'))} MB/s"
                    f"{_flag(data)} | {_fmt(data.get('client_cpu_pct'))} | "
                    f"{_fmt(data.get('client_cpu_us_per_op'))} |"
                )
        for cell, data in (ceiling.get("manifest_reads") or {}).items():
            lines.append(
                f"| manifest {cell} | {_fmt(data.get('ops_per_s'))} req/s"
                f"{_flag(data)} | {_fmt(data.get('client_cpu_pct'))} | "
                f"{_fmt(data.get('client_cpu_us_per_op'))} |"
            )
    lines += [
        "",
        "## Systems",
        "",
        "| system | what | start-up s | run s | load before → after |",
        "|---|---|---|---|---|",
    ]
    for name, rec in run.get("systems", {}).items():
        lines.append(
            f"| {name} | {rec.get('label')} | {_fmt(rec.get('startup_s'))} | "
            f"{_fmt(rec.get('elapsed_s'))} | {rec.get('load_average_before')} → "
            f"{rec.get('load_average_after')} |"
        )
    lines += _efficiency(run)
    lines += ["", "## Results", ""]
    for group, title, fields, ratio_field in TABLES:
        lines += _table(run, group, title, fields, ratio_field)
    dedup_rows = [(s, _results(run, s).get("dedup")) for s in run.get("systems", {})]
    dedup_rows = [(s, d) for s, d in dedup_rows if d]
    if dedup_rows:
        lines += [
            "### Deduplication (images sharing layers and chunk-aligned prefixes)",
            "",
            "| system | logical bytes pushed | stored (all replicas) | replicas | "
            "stored per replica | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for s, d in dedup_rows:
            lines.append(
                f"| {s} | {d['logical_bytes']:,} | {d['stored_bytes_all_replicas']:,}"
                f" | {d['replicas']} | {d['stored_bytes_per_replica']:,} | "
                f"{_fmt(d['ratio'], 2)} |"
            )
        lines.append("")
    errors = [(s, rec["errors"]) for s, rec in run.get("systems", {}).items() if rec.get("errors")]
    if errors:
        lines += ["## Errors", ""]
        for s, errs in errors:
            for workload, message in errs.items():
                first = message.splitlines()[0] if message else ""
                lines.append(f"- **{s}** `{workload}`: {first[:300]}")
        lines.append("")
    if charts:
        lines += ["## Charts", ""] + [f"![{c}]({c})" for c in charts] + [""]
    return "\n".join(lines)


def write(run: dict[str, Any], out_dir: Path, stem: str, charts: list[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    run = dict(run)
    run["targets"] = [
        {
            "label": t.label,
            "system": t.system,
            "value": t.value,
            "threshold": t.threshold,
            "status": t.status,
        }
        for t in targets(run)
    ]
    json_path.write_text(json.dumps(run, indent=1, sort_keys=False, default=str) + "\n")
    md_path.write_text(markdown(run, charts))
    return [json_path, md_path]
