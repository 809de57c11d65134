"""Push rate on a cluster whose metadata already holds N images (issue 20's "push rate at
1 M >= 90 % of the rate at 10 k"), without pushing N images through HTTP first.

Pushing a million images through the gateway takes hours on a 2-core VM, so the state is
built offline instead (`metadata_scale.apply_group`: the commands a push of the same
corpus commits, applied to a `MetadataState`) and snapshotted through a `RaftMember`
bound to the Raft address node 1 of the cluster will have (the snapshot's member set
names it). Per run:

1. a `LocalCluster` layout of one node on a fixed base port (so node 1's Raft address is
   the template's), node 1's `raft/` directory copied from the template;
2. node 1 and a gateway started: node 1 loads the snapshot as a one-member group and
   joins the member list;
3. nodes 2 and 3 added the way an operator adds members (`LocalCluster.add_node`, then
   `AddMember` on the leader): each installs the leader's snapshot (pysyncobj's transfer)
   before it serves; the gateway restarted so it writes to all three (R=3, W=2);
4. after `settle` seconds, `push` more images of the same corpus (new group numbers: new
   configs, manifests, tags, indexes; the layers exist already, as in a registry that
   holds them) pushed through the gateway with `metadata_scale.push_groups`: images/s,
   PUT p50/p99, each node's CPU seconds during the push, and the snapshots any node took
   while it ran (a snapshot is a node's own decision: log size and age).

The preloaded images have metadata but no chunks: the push of new images never reads an
old chunk (a manifest PUT checks its blobs in the metadata; the shared layer's blob is
committed there), so that is enough; but those manifests carry no search info, so the
gateway's search backfill (which would read them all) is turned off in every run. Runs
alternate between the sizes (`rounds`) so the machine's shared load falls on each alike;
the load average is recorded per run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.metadata_scale import (
    GROUP,
    Corpus,
    PushStats,
    _member_config,
    _recipe,
    _snapshot_once,
    apply_group,
    catch_up,
    leader,
    node_serves,
    push_groups,
    read_latencies,
    restart_cluster,
    restart_node,
    rss_anon,
    sha,
    snapshot_role,
    snapshot_under_load,
    wait_node_serving,
)
from bench.procstats import cpu_seconds


def schedule(sizes: list[int], rounds: int) -> list[int]:
    """The order of the runs: every size once per round, smallest first in even rounds and
    largest first in odd ones, so neither size always follows the other."""
    ordered = sorted(sizes)
    out: list[int] = []
    for r in range(rounds):
        out += ordered if r % 2 == 0 else ordered[::-1]
    return out


def snapshots_between(
    recent: list[dict[str, Any]], start_wall: float, end_wall: float
) -> list[dict[str, Any]]:
    """The snapshots of a node's `recent` list whose writing overlapped [start, end] (wall
    time; one still being written has no `seconds` yet and counts from its start)."""
    out = []
    for snap in recent:
        began = float(snap.get("started_at", 0.0))
        ended = began + float(snap.get("seconds", 0.0))
        if began <= end_wall and ended >= start_wall:
            out.append(snap)
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per preloaded size: its runs' images/s (each, and the median), and the ratio of
    each larger size's median to the smallest size's."""
    by_size: dict[int, list[float]] = {}
    for run in runs:
        rate = run["push"]["images_per_s"]
        if rate:
            by_size.setdefault(run["preloaded_images"], []).append(rate)
    medians = {size: statistics.median(rates) for size, rates in by_size.items()}
    out: dict[str, Any] = {"rates": by_size, "median_images_per_s": medians}
    if medians:
        base = min(medians)
        out["ratio_to_smallest"] = {
            size: round(rate / medians[base], 3) for size, rate in medians.items()
        }
    return out


def _cpu_seconds(pid: int) -> float:
    """A node's CPU seconds so far, as every bench figure counts them (bench/procstats.py:
    its reaped children, the snapshot writers, included); 0 when it is gone."""
    return cpu_seconds(pid) or 0.0


def quiet(cpu_deltas: list[float], window: float, threshold: float) -> bool:
    """Every process used under `threshold` of a core over the last `window` seconds."""
    return all(delta / window < threshold for delta in cpu_deltas)


def _wait_quiet(pids: list[int], limit: float, threshold: float = 0.15) -> float:
    """Seconds until the nodes are idle (after a load a node builds its search index: at
    1 M that runs well past `settle`), at most `limit`."""
    start = time.monotonic()
    before = [_cpu_seconds(pid) for pid in pids]
    while time.monotonic() - start < limit:
        time.sleep(1.0)
        now = [_cpu_seconds(pid) for pid in pids]
        if quiet([b - a for a, b in zip(before, now, strict=True)], 1.0, threshold):
            break
        before = now
    return round(time.monotonic() - start, 1)


def build_template(
    state: Any, corpus: Corpus, groups: int, done: int, raft: str, path: Path
) -> int:
    """Apply groups [done, groups) to `state`, snapshot it as a one-member group at `raft`
    into `path` (a node data directory whose raft/ is copied later). Returns `groups`."""
    for group in range(done, groups):
        apply_group(state, corpus, group)
    from node.metadata.raft import RaftMember

    member = RaftMember(_member_config(path, raft), state=state)
    asyncio.run(_snapshot_once(member))
    del member
    return groups


def new_state(corpus: Corpus, repos: int) -> Any:
    """An empty state with every repository's shared layer committed (push_layers' work)."""
    from node.metadata.state import MetadataState

    state = MetadataState()
    for k in range(repos):
        layer = corpus.layer(corpus.repo(k))
        state.apply(
            "blob_commit",
            {"repo": corpus.repo(k), "digest": sha(layer), "recipe": _recipe(layer), "now": 1.0},
        )
    return state


def _last_error(log: Path) -> str:
    """The last critical/error line of a process log (shortened), or ""."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    bad = [line for line in lines if "level=critical" in line or "level=error" in line]
    return bad[-1][:400] if bad else (lines[-1][:400] if lines else "")


def _wait_serving_or_exit(cluster: Any, i: int, repo: str, tag: str, limit: float) -> float | None:
    """Seconds from node i's start until it serves `tag`; None when its process ended."""
    start = cluster.spawned_at[cluster.node_id(i)]
    while time.monotonic() - start < limit:
        if node_serves(cluster, i, repo, tag):
            return time.monotonic() - start
        proc = cluster.node_procs[i]
        if proc is None or proc.poll() is not None:
            return None
        time.sleep(0.05)
    raise TimeoutError(f"node {i} did not serve {repo}:{tag} within {limit}s")


def _add_member(cluster: Any, repo: str, tag: str) -> dict[str, Any]:
    """One more node, added on the leader as an operator does; seconds until it serves a
    linearizable read of `tag` (it installs the leader's snapshot first)."""
    from cargohold_cli import admin

    i = cluster.add_node()
    cluster.wait_answering(i, timeout=120)
    admin.member_change(
        cluster.node_grpc_addresses,
        "AddMember",
        cluster.node_id(i),
        cluster.node_grpc(i),
        cluster.node_raft(i),
        timeout=120,
        attempts=30,
        cfg=cluster.client_config("admin"),
    )
    failures: list[str] = []
    while True:
        seconds = _wait_serving_or_exit(cluster, i, repo, tag, limit=600)
        if seconds is not None:
            break
        if len(failures) >= 2:
            raise RuntimeError(f"{cluster.node_id(i)} failed to install a snapshot: {failures}")
        # The node stopped: a snapshot it installed did not load (seen at 1 M: a
        # transfer 128 KiB short). Recorded, then the operator's way out: its Raft
        # directory emptied and the node started again, to install it anew.
        failures.append(_last_error(cluster.base_dir / "logs" / f"{cluster.node_id(i)}.log"))
        shutil.rmtree(cluster.node_data_dir(i) / "raft", ignore_errors=True)
        cluster.start_node(i)
    received = cluster.node_data_dir(i) / "raft" / "state.dump"
    return {
        "node": cluster.node_id(i),
        "serving_seconds": round(seconds, 2),  # from its last start
        "failed_installs": failures,
        "by_snapshot": received.exists(),
        "load_seconds": snapshot_role(cluster, i, trigger=False).get("load_seconds"),
    }


def run_one(
    template: Path,
    images: int,
    corpus: Corpus,
    base_port: int,
    work: Path,
    push: int,
    concurrency: int,
    settle: float,
    nodes: int = 3,
    quiet_limit: float = 0.0,
    scale_steps: bool = False,
) -> dict[str, Any]:
    """One cluster preloaded from `template` (holding `images` images), `push` more pushed:
    3 nodes R=3 W=2 (2 added as members), or 1 node R=1; with `scale_steps` (3 nodes),
    then the rest of issue 20's measures on that cluster (`_scale_steps`)."""
    from cargohold_cli.devcluster import LocalCluster

    groups = images // GROUP
    newest = groups * GROUP - 1
    repo, tag = corpus.image(newest)[0], f"v{newest}"
    base = work / f"cluster-{images}-{int(time.time())}"
    cluster = LocalCluster(
        base,
        nodes=1,
        gateways=1,
        replicas=min(3, nodes),
        write_quorum=min(2, nodes),
        node_base_port=base_port,
        local_reads=True,
        # The offline state's manifests carry no search info (a push records it with its
        # manifest_put): the gateway's backfill pass would read every preloaded manifest's
        # bytes, which are not stored, during the push. A pushed registry has nothing to
        # backfill, so the pass is off in every run, small and large alike.
        extra={"gateway": {"search_backfill": False}},
    )
    row: dict[str, Any] = {
        "preloaded_images": images,
        "nodes": nodes,
        "loadavg_before": os.getloadavg(),
    }
    shutil.copytree(template / "raft", cluster.node_data_dir(0) / "raft")
    try:
        t0 = time.monotonic()
        cluster.start(timeout=600)
        row["node1_serving_seconds"] = round(wait_node_serving(cluster, 0, repo, tag, 600), 2)
        row["added"] = [_add_member(cluster, repo, tag) for _ in range(nodes - 1)]
        cluster.restart_gateway(0)  # its node list: all three
        cluster.wait_ready(120)
        row["setup_seconds"] = round(time.monotonic() - t0, 1)
        time.sleep(settle)
        if quiet_limit > 0:
            pids = [p.pid for p in cluster.node_procs if p is not None]
            row["quiet_wait_seconds"] = _wait_quiet(pids, quiet_limit)
        row["push"] = _push(cluster, corpus, groups, push, concurrency)
        row["leader"] = cluster.node_id(leader(cluster))
        if scale_steps:
            row["scale"] = _scale_steps(cluster, corpus, images, push, concurrency)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return row


def _node_pids(cluster: Any) -> list[int]:
    return [p.pid for p in cluster.node_procs if p is not None]


def node_memory(cluster: Any, manifests: int) -> dict[str, Any]:
    """Each node's RssAnon: bytes, GiB and bytes per manifest held (everything the process
    holds, the interpreter and the serving parts included)."""
    out: dict[str, Any] = {}
    for i, proc in enumerate(cluster.node_procs):
        anon = rss_anon(proc.pid) if proc is not None else 0
        out[cluster.node_id(i)] = {
            "bytes": anon,
            "gib": round(anon / 2**30, 3),
            "per_manifest": round(anon / manifests, 1) if manifests else None,
        }
    return out


def _scale_steps(
    cluster: Any, corpus: Corpus, preloaded_images: int, pushed: int, concurrency: int
) -> dict[str, Any]:
    """The rest of issue 20's measures on the preloaded cluster once the push is done (its
    preloaded manifests have no stored bytes, so every manifest read and tag PUT here uses
    the pushed images): each node's RssAnon; list-page and manifest-GET latency; a
    snapshot forced on every node under tag PUTs; restart to serving of the leader and of
    the whole cluster (SIGKILL); a follower caught up by snapshot transfer; RssAnon again
    at the end (every node then restarted or caught up, its search index rebuilt)."""
    urls = cluster.gateway_urls
    total = preloaded_images + pushed
    manifests = total // GROUP * (GROUP + 1)
    newest = total - 1
    repo, tag = corpus.image(newest)[0], f"v{newest}"
    out: dict[str, Any] = {"manifests": manifests, "rss_anon": node_memory(cluster, manifests)}
    out["reads"] = asyncio.run(read_latencies(urls[0], corpus, total, 200, preloaded_images))
    out["snapshot"] = snapshot_under_load(
        cluster, urls, corpus, pushed, concurrency, preloaded_images
    )
    out["restart_node"] = restart_node(cluster, repo, tag)
    out["restart_cluster"] = restart_cluster(cluster, urls[0], repo, tag)
    _wait_quiet(_node_pids(cluster), 120.0)
    out["rss_anon_restarted"] = node_memory(cluster, manifests)
    out["catch_up"] = catch_up(cluster, urls, corpus, total // GROUP, PushStats(), preloaded_images)
    newest_manifests = (total // GROUP + 1) * (GROUP + 1)
    _wait_quiet(_node_pids(cluster), 120.0)
    out["rss_anon_end"] = node_memory(cluster, newest_manifests)
    out["loadavg_end"] = os.getloadavg()
    return out


def _push(cluster: Any, corpus: Corpus, first: int, push: int, concurrency: int) -> dict[str, Any]:
    nodes = range(cluster.node_count)
    pids = [p.pid for p in cluster.node_procs if p is not None]
    cpu0 = [_cpu_seconds(pid) for pid in pids]
    taken0 = [snapshot_role(cluster, i, trigger=False).get("taken", 0) for i in nodes]
    stats = PushStats()
    load = os.getloadavg()
    wall0, start = time.time(), time.monotonic()
    asyncio.run(
        push_groups(cluster.gateway_urls, corpus, first, first + push // GROUP, concurrency, stats)
    )
    elapsed = time.monotonic() - start
    wall1 = time.time()
    snaps = []
    for i in nodes:
        role = snapshot_role(cluster, i, trigger=False)
        during = snapshots_between(role.get("recent", []), wall0, wall1)
        snaps += [{"node": cluster.node_id(i), **snap} for snap in during]
        if role.get("taken", 0) > taken0[i] and not during:  # taken, but not in `recent`
            snaps.append({"node": cluster.node_id(i), "taken_since": role["taken"] - taken0[i]})
    return {
        **stats.summary(elapsed),
        "loadavg_at_start": load,
        "loadavg_at_end": os.getloadavg(),
        "node_cpu_seconds": [
            round(_cpu_seconds(p) - c, 1) for p, c in zip(pids, cpu0, strict=True)
        ],
        "snapshots_during": snaps,
    }


def preloaded(
    sizes: list[int],
    repos: int,
    work: Path,
    push: int,
    concurrency: int,
    rounds: int,
    settle: float,
    nodes: int = 3,
    quiet_limit: float = 0.0,
    scale_steps: bool = False,
) -> dict[str, Any]:
    """Templates for every size (built up in one growing state), then the runs."""
    from cargohold.memtune import release_memory
    from cargohold_cli.devcluster import free_port

    corpus = Corpus(repos)
    base_port = free_port()
    raft = f"127.0.0.1:{base_port + 100}"  # node 1's Raft address in every layout
    state = new_state(corpus, repos)
    templates: dict[int, Path] = {}
    builds: dict[int, float] = {}
    done = 0
    for size in sorted(sizes):
        t0 = time.monotonic()
        path = work / f"template-{size}"
        done = build_template(state, corpus, size // GROUP, done, raft, path)
        templates[size] = path
        builds[size] = round(time.monotonic() - t0, 1)
        print(f"template {size}: {builds[size]} s", flush=True)
    del state
    release_memory()
    runs = []
    for size in schedule(sizes, rounds):
        row = run_one(
            templates[size],
            size,
            corpus,
            base_port,
            work,
            push,
            concurrency,
            settle,
            nodes,
            quiet_limit,
            scale_steps and nodes == 3,
        )
        print(row, flush=True)
        runs.append(row)
    return {"build_seconds": builds, "runs": runs, "summary": summarize(runs)}


def markdown_preloaded(report: dict[str, Any]) -> str:
    data = report["preloaded"]
    lines = [
        f"# Push rate on a preloaded cluster ({report['mode']}), {report['started']}",
        "",
        f"Host `{report['host']}`, {report['cpus']} CPUs, shared (load average per run). "
        f"Corpus: {report['repos']} repositories, images in groups of {GROUP} with an index "
        "each. Each run: node 1 started from a snapshot of that many images built offline "
        "(the same commands a push commits); with 3 nodes, nodes 2 and 3 added as members "
        "(each installs the leader's snapshot), R=3 W=2; with 1 node, R=1; one gateway "
        "(its search backfill off: the offline manifests have no search info); then "
        f"{report['concurrency']} connections push new images of the same corpus (configs, "
        "manifests, tags, indexes; the repositories' layers exist). Build s per size: "
        f"{data['build_seconds']}.",
        "",
        "| preloaded images | nodes | load avg (push start / end) | setup s | n2, n3 serving s "
        "(failed installs) | pushed | images/s | PUT p50 / p99 ms | node CPU s during push "
        "| snapshots during push | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in data["runs"]:
        push = run["push"]
        added = (
            ", ".join(
                f"{a['serving_seconds']}{'' if a['by_snapshot'] else ' by log'}"
                f" ({len(a.get('failed_installs', []))})"
                for a in run["added"]
            )
            or "-"
        )
        waited = run.get("quiet_wait_seconds")
        quiet_wait = f" (+{waited} to idle)" if waited is not None else ""
        snaps = (
            "; ".join(f"{s['node']} {s.get('seconds', '?')} s" for s in push["snapshots_during"])
            or "none"
        )
        lines.append(
            f"| {run['preloaded_images']:,} | {run.get('nodes', 3)} "
            f"| {push['loadavg_at_start'][0]:.1f} / "
            f"{push['loadavg_at_end'][0]:.1f} | {run['setup_seconds']}{quiet_wait} | {added} "
            f"| {push['images']:,} | {push['images_per_s']} | {push['put_p50_ms']} / "
            f"{push['put_p99_ms']} | {' / '.join(str(c) for c in push['node_cpu_seconds'])} "
            f"| {snaps} | {push['errors']} |"
        )
    summary = data["summary"]
    lines += [
        "",
        f"Median images/s per size: {summary['median_images_per_s']}; "
        f"ratio to the smallest: {summary.get('ratio_to_smallest')}.",
    ]
    scaled = [run for run in data["runs"] if "scale" in run]
    if scaled:
        lines += ["", *markdown_scale_steps(scaled)]
    return "\n".join(lines) + "\n"


def _memory_cell(memory: dict[str, Any]) -> str:
    return " / ".join(f"{m['gib']} GiB ({m['per_manifest']:,.0f} B)" for m in memory.values())


def markdown_scale_steps(runs: list[dict[str, Any]]) -> list[str]:
    """The table of `_scale_steps`, a row per run."""
    lines = [
        "After the push, on the same cluster (`--scale-steps`): RssAnon per node (GiB, and "
        "bytes per manifest held: the whole process), after the push, after the cluster "
        "restart (idle: search index built) and at the end (after the catch-up: the follower "
        "named, idle); p50 / p99 ms of a `tags/list?n=1000` "
        "page, a `_catalog?n=1000` page and a manifest GET by tag; a snapshot forced on "
        "every node at once under 16 connections of tag PUTs (p99 of the PUTs overlapping "
        "it ÷ p99 of the others); the leader SIGKILLed and restarted, then every node: s "
        "until a linearizable read (node) or the gateway (cluster) serves the newest tag; a "
        "follower stopped, a group pushed, the others snapshotted, the follower started: s "
        "until it serves the newest tag (by snapshot transfer).",
        "",
        "| preloaded images | manifests | RssAnon after push | after cluster restart "
        "| at end | tags page "
        "| catalog page | manifest GET | snapshot s (MiB) | PUT p99 during / outside ms "
        "(ratio) | node restart s | cluster restart s | catch-up s (reads served / failed) "
        "| load avg at end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        sc = run["scale"]
        reads = sc["reads"]
        snap = sc["snapshot"]
        catch = sc["catch_up"]

        def pp(name: str, reads: dict[str, Any] = reads) -> str:
            return f"{reads[name]['p50_ms']} / {reads[name]['p99_ms']}"

        lines.append(
            f"| {run['preloaded_images']:,} | {sc['manifests']:,} "
            f"| {_memory_cell(sc['rss_anon'])} "
            f"| {_memory_cell(sc.get('rss_anon_restarted', {}))} "
            f"| {_memory_cell(sc['rss_anon_end'])} (follower {catch.get('follower', '?')}) "
            f"| {pp('tags_list_page')} | {pp('catalog_page')} | {pp('manifest_get')} "
            f"| {snap['seconds']:.1f} ({snap['bytes'] / 2**20:.0f}) "
            f"| {snap['put_p99_during_ms']} / {snap['put_p99_outside_ms']} ({snap['ratio']}) "
            f"| {sc['restart_node']['seconds']} | {sc['restart_cluster']['seconds']} "
            f"| {catch['seconds']}{'' if catch['by_snapshot'] else ' by log'} "
            f"({catch['reads_served_meanwhile']} / "
            f"{catch['read_errors_meanwhile']}) | {sc['loadavg_end'][0]:.1f} |"
        )
    return lines
