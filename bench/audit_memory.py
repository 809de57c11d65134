"""What the activity log costs a node's memory and apply time: N records through the state.

Applies `audit_append` batches of realistic pull events (1000 per command, as a gateway
flushes them) to one `MetadataState`, sealing the oldest `--segment` records whenever that
many wait (what the gateways' sealer does; the segment blob itself lives in the chunk
store, not in this process). Reports the Python heap the state holds afterwards
(tracemalloc: what those records add to a node's state) and the peak while sealing, and
the same without sealing (the in-memory tail alone), per million records.

    .venv/bin/python -m bench.audit_memory [--records 1000000] [--segment 10000]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc

from cargohold import audit
from node.metadata.state import MetadataState


def _events(start: int, n: int) -> list[list[object]]:
    return [
        audit.event(
            "pull",
            time=1_765_000_000.0 + (start + i) / 1000,
            actor=f"ci-robot-{(start + i) % 50}",
            actor_kind="robot",
            client=f"10.1.{(start + i) % 200}.{(start + i) % 250}",
            user_agent="containerd/v1.7.24-0ubuntu1~24.04.2",
            repository=f"team-{(start + i) % 20}/service-{(start + i) % 300}",
            reference=f"v1.{(start + i) % 97}.0",
            digest="sha256:" + f"{(start + i) % 5000:064x}",
        )
        for i in range(n)
    ]


def run(records: int, segment: int, batch: int = 1000) -> dict[str, float]:
    st = MetadataState()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    applied = 0
    while applied < records:
        n = min(batch, records - applied)
        st.apply("audit_append", {"events": _events(applied, n)})
        applied += n
        log = st.audit
        while segment and len(log.tail) >= segment:
            lines = log.tail[:segment]
            data = audit.segment_bytes(lines)
            first = log.tail_first
            st.apply(
                "audit_seal",
                {
                    "first": first,
                    "last": first + segment - 1,
                    "digest": audit.segment_digest(data),
                    "recipe": {"size": len(data), "chunks": [["ab" * 32, len(data)]]},
                    "now": 1_766_000_000.0,
                },
            )
    elapsed = time.perf_counter() - started
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    scale = 1_000_000 / records
    return {
        "records": records,
        "segment_records": segment,
        "segments": len(st.audit.segments),
        "tail_records": len(st.audit.tail),
        "retained_mb_per_million": round((current - base) * scale / 2**20, 2),
        "peak_mb": round((peak - base) / 2**20, 2),
        "apply_us_per_record": round(elapsed / records * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--segment", type=int, default=10_000)
    parser.add_argument("--unsealed", type=int, default=200_000, help="records, no sealing")
    args = parser.parse_args()
    print(json.dumps({"sealed": run(args.records, args.segment)}))
    print(json.dumps({"unsealed": run(args.unsealed, 0)}))


if __name__ == "__main__":
    main()
