"""What token auth costs a gateway per request: manifest GET by digest at 32 connections
on two clusters side by side, one with auth off and one in token mode (the built-in token
service, the activity log on as by default), the client sending a Bearer token like
docker (fetched once for the repository's pull scope, bench/auth.py).

Both clusters run at once and the rounds alternate between them, so load from other
processes hits both alike. Each round reports requests/s and the gateway process's CPU
time per request (from /proc: less sensitive to a loaded machine than req/s); the figures
are the medians of the rounds.

    .venv/bin/python -m bench.auth_requests [--rounds 7] [--seconds 2] [--nodes 1]
        [--auth-setting revocation_lease=false ...]

`--auth-setting KEY=VALUE` sets an `[auth]` field of the token-mode cluster (JSON values:
`revocation_lease=false` measures the per-window leader reads without the lease).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.blobdata import BlobSpec
from bench.images import Image, push_image
from bench.profiles import QUICK
from bench.systems import Cargohold
from bench.workloads.common import Context, sessions
from bench.workloads.manifests import REPO, _read_cell

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _revision_checks(base: str) -> dict[str, float]:
    """The gateway's `cargohold_gateway_auth_revisions_total` by source (lease, read)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cargohold_gateway_auth_revisions_total{"):
            source = line.split('source="', 1)[1].split('"', 1)[0]
            counts[source] = float(line.rsplit(" ", 1)[1])
    return counts


async def measure(
    rounds: int,
    seconds: float,
    nodes: int,
    conns: int,
    auth_settings: dict[str, object] | None = None,
) -> dict[str, Any]:
    profile = replace(QUICK, manifest_seconds=seconds, manifest_max_requests=10**9)
    root = Path(tempfile.mkdtemp(prefix="auth-requests-"))
    systems = {
        "auth_off": Cargohold(root / "off", nodes=nodes, replicas_=nodes, write_quorum=nodes),
        "auth_on": Cargohold(
            root / "on",
            nodes=nodes,
            replicas_=nodes,
            write_quorum=nodes,
            auth=True,
            auth_settings=dict(auth_settings or {}),
        ),
    }
    for system in systems.values():
        system.workdir.mkdir(parents=True)
    samples: dict[str, dict[str, list[float]]] = {n: {"req_s": [], "cpu_us": []} for n in systems}
    try:
        for system in systems.values():
            await system.start()
        image = await asyncio.to_thread(Image.build, "authbench", [BlobSpec.unique(11, 4096)])
        contexts = {}
        for name, system in systems.items():
            ctx = Context(system, profile)  # type: ignore[arg-type]
            async with sessions(ctx, 4) as clients:
                await push_image(clients[0], REPO, "v1", image)
            contexts[name] = ctx
        for k in range(rounds):
            order = list(systems) if k % 2 == 0 else list(reversed(systems))
            for name in order:
                system = systems[name]
                assert system.cluster is not None
                proc = system.cluster.gateway_procs[0]
                assert proc is not None
                before = _cpu_seconds(proc.pid)
                cell = await _read_cell(contexts[name], "get_digest", image.digest, conns)
                used = _cpu_seconds(proc.pid) - before
                if cell["errors"]:
                    raise RuntimeError(f"{name}: {cell['errors']} failed requests")
                samples[name]["req_s"].append(cell["ops_per_s"])
                samples[name]["cpu_us"].append(used / max(cell["ops"], 1) * 1e6)
        revision_checks = await asyncio.to_thread(_revision_checks, systems["auth_on"].urls[0])
    finally:
        for system in systems.values():
            await system.stop()
        shutil.rmtree(root, ignore_errors=True)  # both clusters' data: ~100-200 MB a run
    out: dict[str, Any] = {
        name: {k: round(statistics.median(v), 1) for k, v in s.items()}
        for name, s in samples.items()
    }
    out["rounds"] = samples
    out["ratio_req_s"] = round(out["auth_on"]["req_s"] / out["auth_off"]["req_s"], 3)
    out["ratio_cpu"] = round(out["auth_off"]["cpu_us"] / out["auth_on"]["cpu_us"], 3)
    out["auth_settings"] = auth_settings or {}
    # How the token-mode gateway checked the access revision over the whole run.
    out["revision_checks"] = revision_checks
    out["load_average"] = os.getloadavg()
    out["when_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--auth-setting", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings: dict[str, object] = {}
    for item in args.auth_setting:
        key, _, value = item.partition("=")
        settings[key] = json.loads(value)
    result = asyncio.run(measure(args.rounds, args.seconds, args.nodes, args.conns, settings))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
