"""`python -m bench [--full | --quick] [--systems ...] [--workloads ...]`: run, then write
bench/results/<YYYY-MM-DD>-<host>[-quick].json/.md/.png. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import sys
import time
from pathlib import Path

from bench import charts, report, runner
from bench.profiles import PROFILES
from bench.workloads import ALL

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--full",
        action="store_const",
        dest="profile",
        const="full",
        help="the full run (default): 1 MiB..1 GiB blobs, 1..64 connections",
    )
    size.add_argument(
        "--quick",
        action="store_const",
        dest="profile",
        const="quick",
        help="a run under 3 minutes with smaller sizes and counts",
    )
    size.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        dest="profile",
        help="a named profile (smoke: seconds, for the harness's tests)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(runner.SYSTEM_NAMES),
        help="comma list from: "
        + ", ".join(runner.SYSTEM_NAMES + runner.VARIANT_NAMES)
        + " (variants only when named)",
    )
    parser.add_argument(
        "--workloads", default=",".join(ALL), help="comma list from: " + ", ".join(ALL)
    )
    parser.add_argument(
        "--gateways",
        type=int,
        default=0,
        help="gateways per Cargohold cluster (default: the profile's)",
    )
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=0,
        help="worker processes per Cargohold gateway (gateway.workers; default 1)",
    )
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip the client-ceiling run against the trivial server",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="directory for the results files"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=HERE / "results" / "tmp",
        help="scratch space for the systems' data (removed after each)",
    )
    parser.add_argument(
        "--stem", default="", help="results file name stem (default <date>-<host>[-quick])"
    )
    parser.set_defaults(profile="full")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    if args.gateways > 0:
        profile = dataclasses.replace(profile, gateways=args.gateways)
    if args.gateway_workers > 0:
        profile = dataclasses.replace(profile, gateway_workers=args.gateway_workers)
    systems = [s for s in args.systems.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in ALL]
    unknown += [s for s in systems if s not in runner.SYSTEM_NAMES + runner.VARIANT_NAMES]
    if unknown:
        print(f"unknown systems/workloads: {unknown}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        loop_runner = asyncio.run
    else:
        loop_runner = uvloop.run
    result = loop_runner(
        runner.run(profile, systems, workloads, args.workdir, skip_calibration=args.no_calibration)
    )
    stem = args.stem or (
        time.strftime("%Y-%m-%d", time.gmtime())
        + "-"
        + socket.gethostname()
        + ("" if profile.name == "full" else f"-{profile.name}")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    pngs = charts.write(result, args.out, stem)
    paths = report.write(result, args.out, stem, pngs)
    for path in [*paths, *(args.out / p for p in pngs)]:
        print(path)
    failed = any(rec.get("errors") for rec in result["systems"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
