"""Configuration: every tunable of a node, a gateway and the cluster, as dataclasses.

Configuration is data, loaded once at process start by `load_config` and passed down.
Sources, later ones winning:

1. the defaults below;
2. a TOML file (`--config FILE`) with the sections `[cluster]`, `[node]`, `[gateway]`,
   `[lifecycle]`, `[auth]`, `[audit]`, `[policy]`, `[webhooks]`;
3. environment variables `CARGOHOLD_<SECTION>_<FIELD>` (for example
   `CARGOHOLD_NODE_ID=n1`, `CARGOHOLD_GATEWAY_NODES=node1:7001,node2:7001`); lists are
   comma-separated, booleans `1/0/true/false`;
4. explicit overrides from the command line (a dict of dotted keys).

Every limit the system enforces (sizes, timeouts, rates) is named here with its default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.errors import ConfigError, RegistryError
from cargohold.lifecycle_rules import parse_rule
from cargohold.replication import parse_rules
from cargohold.retention import parse_policies
from cargohold.webhooks import parse_config_endpoints

MiB = 1024 * 1024
GiB = 1024 * MiB
# pysyncobj 0.3.17's `connectionTimeout` (we keep its default): it asserts
# `connectionTimeout >= raftMaxTimeout` when the member starts, so a larger
# `node.raft_max_timeout` is refused here instead (tests/cargohold/test_config.py pins it).
PYSYNCOBJ_CONNECTION_TIMEOUT = 3.5


@dataclass
class ClusterConfig:
    """Settings every node and gateway of one cluster must agree on."""

    # Shared secret (no default: nodes and gateways refuse to start without it; only
    # `cargohold dev` generates one): the Raft port's password and the root of the per-role
    # gRPC call keys (cargohold/cluster_auth.py). `secret_file` reads it from a file instead
    # (systemd credentials, Docker secrets); setting both is an error.
    secret: str = ""
    secret_file: str = ""
    # A process that must not hold the secret (a gateway, an operator's admin CLI) can hold
    # only its role's key instead: "<role>:<hex>" from `cargohold admin keys <role>`.
    credential: str = ""
    credential_file: str = ""
    # Per-call tokens: accepted this many seconds off the node's clock either way; the
    # replay cache remembers each nonce for twice that, at most this many (about 80 bytes
    # each; a full cache refuses calls rather than forget one: 2 M is 33 k calls/s).
    auth_max_skew: float = 30.0
    auth_nonce_cache_max: int = 2_000_000
    # How the Raft port seals its messages (node/metadata/raft_cipher.py): "aes-gcm", or
    # "fernet" (pysyncobj's own) while a rolling upgrade from a release that reads only
    # Fernet is under way. Every node opens both; set it back once all run this release.
    raft_cipher: str = "aes-gcm"
    # How many copies of each chunk are kept (R) and how many fsynced copies
    # acknowledge a write (W).
    replicas: int = 3
    write_quorum: int = 2
    # Fixed-size chunking of blob bodies.
    chunk_size: int = 4 * MiB
    # TLS for gRPC to and between nodes: PEM paths; empty means plaintext. With `tls_ca` set
    # on a node, clients must present a certificate of that CA naming their role
    # (`cargohold admin certs`); then the certificate, not the per-call token, decides.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


@dataclass
class NodeConfig:
    """One storage node: chunk store, Raft member, gRPC server."""

    id: str = "n1"
    data_dir: str = "./data/n1"
    grpc_listen: str = "127.0.0.1:7001"
    # Address gateways and other nodes use to reach this node's gRPC port.
    grpc_advertise: str = ""
    # Raft (pysyncobj) port: bound to the cluster network only, password-protected.
    raft_listen: str = "127.0.0.1:7101"
    raft_advertise: str = ""
    # Raft addresses (advertised form) of the other initial members.
    peers: list[str] = field(default_factory=list)
    # A registry user created as cluster admin by the Raft leader while the cluster has no
    # user at all (node/initial_admin.py): its generated password is logged once
    # (`auth.initial_admin`) and written 0600 to `<data_dir>/admin-password` of that node.
    # The deploy configs set "admin"; empty = none.
    initial_admin: str = ""
    # LMDB map size: the most chunk bytes this node can hold.
    lmdb_map_size: int = 64 * GiB
    # Free space chunk writes may not use, kept for Raft (journal, term/vote, snapshots)
    # and small files: min(fraction * filesystem size, max bytes) of the filesystem holding
    # `data_dir`. A node with less than that plus one chunk free is `full`: it refuses
    # chunk writes (StorageFull) and serves reads (node/disk.py). Free space is looked at
    # (statvfs) at most every `disk_check_interval` seconds.
    disk_reserve_fraction: float = 0.05
    disk_reserve_max_bytes: int = 2 * GiB
    disk_check_interval: float = 1.0
    # Group commit: at most this many puts or bytes per LMDB transaction.
    commit_batch_max_items: int = 64
    commit_batch_max_bytes: int = 64 * MiB
    # After each group commit that stored chunks, drop the written values' cached pages
    # (fsynced, clean): pushes recycle page-cache memory instead of growing it, reads of
    # those chunks go to the disk. "unread" (default): only while nobody reads the store
    # (no gateway on this host reading it directly, no chunk served lately); "always";
    # "never". true/false read as always/never. On the bench VM, where a fresh page costs
    # a host fault, dropping cut push CPU per GB 15-40 % (bench/README.md).
    drop_written_pages: str = "unread"
    # With "unread": a node that served a chunk read within this many seconds keeps what
    # it writes cached, as one a gateway on its host reads does.
    drop_written_pages_read_seconds: float = 300.0
    # Raft timings (docs/raft.md says why these values).
    raft_min_timeout: float = 0.3
    raft_max_timeout: float = 0.9
    raft_connection_retry: float = 0.5
    raft_leader_fallback_timeout: float = 2.0
    # Access leases (node/metadata/access_leases.py, docs/security.md "Revocation at
    # once"): the leader lets a gateway trust its access revision for this long after the
    # gateway sent a ping the leader answered with a confirmed leadership. The leader adds
    # `access_lease_guard_seconds` (clock-rate drift, scheduling) to every bound it keeps
    # on a gateway's lease: an access change waits at most lease + guard for a gateway
    # that does not acknowledge it, and a new leader acknowledges access changes only
    # lease + guard after it took office. A lease shorter than a heartbeat period plus a
    # round trip is confirmed too late to be of use (the gateways then read per window).
    access_lease_seconds: float = 0.25
    access_lease_guard_seconds: float = 0.05
    # Snapshots (log compaction) are driven by the log's size, so a restart replays a
    # bounded tail: one starts once the log holds `raft_compaction_log_bytes` bytes or
    # `raft_compaction_min_entries` entries, or `raft_compaction_min_time` seconds after the
    # last one (members stagger these by up to a third so they rarely snapshot together).
    raft_compaction_log_bytes: int = 64 * MiB
    raft_compaction_min_entries: int = 50_000
    raft_compaction_min_time: float = 600.0
    # true: a snapshot is written by a forked child over a copy-on-write view of the state
    # (the only pause is the fork itself); false: the state's containers are copied on the
    # Raft thread and a background thread writes them (docs/raft.md, "Snapshots").
    raft_snapshot_fork: bool = True
    # true: snapshots in the compact format (version 5: half the bytes, loads several times
    # faster); false: the row format (version 4) that nodes before the compact format read.
    # Set it false while a rolling upgrade from such a version is under way: a node that
    # cannot read a snapshot sent by the leader refuses it and exits (docs/raft.md).
    raft_snapshot_compact: bool = True
    # The compact version written: 6 (no per-record temporary left by a load: ~80 B less
    # RssAnon per manifest after a restart) or 5, which nodes before version 6 read. Set 5
    # while a rolling upgrade from such a version is under way (docs/metadata.md).
    raft_snapshot_compact_version: int = 6
    # Raft messages (pickled) shorter than this are sealed without zlib: compressing a
    # few hundred bytes cost more CPU than sealing them (docs/raft.md). Only with
    # cluster.raft_cipher "aes-gcm" (every node of such a release reads both forms).
    raft_compress_min_bytes: int = 16 * 1024
    # A forked snapshot child still running after this many seconds is killed and the
    # snapshot counted as failed (retried later): a child of a process with gRPC threads
    # can hang on a lock one of them held at the fork. 1 M manifests take ~20-30 s here.
    raft_snapshot_child_timeout: float = 600.0
    # The forked snapshot child's niceness above the node's (0-19): it writes at a lower
    # CPU priority, so the node's serving threads and its peers go first and the PUTs that
    # overlap a snapshot keep their latency (a snapshot then takes longer on a busy host).
    raft_snapshot_nice: int = 10
    # The share of time the snapshot writer may work (0-1]: after each piece it encodes and
    # writes, it sleeps so long that it is busy this fraction of the time. At 0.5 a
    # snapshot takes twice as long and the PUTs beside it keep most of their latency (a
    # writer running flat out slowed them whatever its priority: docs/raft.md).
    raft_snapshot_duty_cycle: float = 0.5
    # Attempts (one a second) to bind the Raft port before the node gives up and exits.
    raft_bind_retries: int = 10
    # How long a metadata command or barrier may wait for Raft before failing.
    raft_command_timeout: float = 10.0
    # Group commit: while `raft_batches_in_flight` log entries of metadata commands await
    # their commit, newer commands wait and then share one entry (at most
    # `raft_batch_max_commands` each; every 64 chunk references in a command count as one
    # more command, which keeps an entry near a megabyte).
    raft_batch_max_commands: int = 256
    raft_batches_in_flight: int = 2
    # Durability of the Raft log (node/metadata/journal.py): true = an entry counts toward a
    # commit only once fdatasync'ed on the leader and on each acknowledging follower (one
    # sync per group of entries). false = written to the page cache only; README
    # "Guarantees" says what a power cut then loses.
    raft_fsync: bool = True
    # The log file grows by posix_fallocate in extents of this size, claimed ahead of use;
    # when no further extent can be claimed and less than `raft_journal_floor` is left,
    # metadata commands are refused (507) and reads confirm leadership without the log.
    raft_journal_extent: int = 16 * MiB
    raft_journal_floor: int = 1 * MiB
    # Leader housekeeping: every `housekeeping_interval` seconds, upload sessions (open,
    # closed or cancelled) untouched for `upload_expire_after` seconds are forgotten.
    housekeeping_interval: float = 300.0
    upload_expire_after: float = 24 * 3600.0
    # SIGTERM: seconds in-flight gRPC calls get to finish before the node exits.
    shutdown_grace: float = 5.0
    # The search index (node/metadata/search_build.py) is built in the background at start
    # and after a snapshot load, `search_build_slice` tags at a time under the state's
    # lock with `search_build_pause` seconds off it between slices; a search arriving
    # before it is ready waits up to `search_ready_wait` seconds, then is answered
    # UNAVAILABLE (the gateway asks the next node).
    search_build_slice: int = 256
    search_build_pause: float = 0.002
    search_ready_wait: float = 2.0
    # Background roles.
    repair_interval: float = 30.0
    repair_rate_bytes: int = 200 * MiB
    scrub_interval: float = 3600.0
    scrub_rate_bytes: int = 50 * MiB
    # Repair (node/repair.py): chunks per batched Chunks.Has page, chunk copies in flight,
    # and the deadline of the health probe (Admin.Status) that decides which peers are live.
    repair_page_size: int = 256
    repair_copies_in_flight: int = 4
    peer_probe_timeout: float = 2.0
    # A long repair pass re-reads the member list and re-probes peers this often (seconds).
    repair_view_refresh: float = 15.0
    # Deadline of one node->node chunk RPC (repair copies, scrub re-fetches).
    peer_rpc_timeout: float = 30.0
    # gRPC message limit (a chunk plus headroom); also the largest bulk put frame.
    grpc_max_message: int = 64 * MiB
    # Bulk put port (cargohold/bulk_wire.py: chunk Puts framed on plain TCP, about a third
    # of a gRPC Put's CPU per byte at both ends), advertised to gateways by
    # `Chunks.BulkAddress`. "auto": the `grpc_listen` host on a free port; "host:port":
    # fixed (open it where the gRPC port is open); "" = off. Never with TLS configured
    # (`cluster.tls_cert`): chunk bytes then keep to the encrypted gRPC channel.
    bulk_listen: str = "auto"
    # Open bulk connections at most (more are closed on accept); each holds at most one
    # chunk frame in memory.
    bulk_max_connections: int = 256
    # A bulk connection that reads nothing for this long is closed (mid-frame included).
    bulk_idle_seconds: float = 120.0
    # Chunks.List: ids per streamed page when the caller asks for 0, and the largest page.
    chunk_list_page_size: int = 1000
    chunk_list_page_max: int = 10_000
    # Chunks.Put with a checksum: False = verify the xxh3 checksum the sender computed from
    # the bytes (catches transport corruption at memory speed); the sha256 id is trusted
    # because gateways are trusted cluster members (cluster network/mTLS) that computed it
    # from the bytes. True = also re-hash sha256 against the id (a third sha256 pass per
    # pushed byte). A Put without a checksum, and every copy a node fetches from a peer
    # (scrub re-fetch), is always checked against its sha256 id.
    verify_put_sha256: bool = False
    # HTTP/2 frame size on node<->gateway channels (grpc.http2.max_frame_size): large
    # frames move MiB-sized chunk messages with fewer syscalls and frame headers.
    grpc_max_frame_size: int = 16 * MiB - 1
    # Freed memory this process keeps for reuse, so chunk-sized buffers are recycled
    # instead of freshly mapped and zero-filled (cargohold/memtune.py); 0 = glibc defaults.
    malloc_retain_bytes: int = 256 * MiB
    # glibc malloc arenas (M_ARENA_MAX) this process's threads share: 1 = all of them
    # recycle the memory kept above; 0 = glibc's default (an arena per thread, up to 8 per
    # core), under which bursts of concurrent pushes faulted in more fresh pages.
    malloc_arenas: int = 1
    # HTTP endpoint of this node's Prometheus metrics (`/metrics`), liveness (`/healthz`)
    # and readiness (`/readyz`: a Raft leader with a majority is known), served by a
    # thread of its own (node/metrics_http.py). "host:port" on the node's own host address
    # (the cluster network, like `grpc_listen`); empty = no endpoint. It exposes counters
    # and gauges only: no repository names, digests or chunk data (docs/operations.md).
    metrics_address: str = ""

    def __post_init__(self) -> None:
        if not self.grpc_advertise:
            self.grpc_advertise = self.grpc_listen
        if not self.raft_advertise:
            self.raft_advertise = self.raft_listen

    @property
    def raft_heartbeat_period(self) -> float:
        """pysyncobj's `appendEntriesPeriod`: heartbeats well inside the election timeout
        (pysyncobj asserts `raftMinTimeout > 3 * appendEntriesPeriod`)."""
        return min(0.1, self.raft_min_timeout / 4)


@dataclass
class GatewayConfig:
    """One stateless HTTP gateway."""

    listen: str = "127.0.0.1:5000"
    # gRPC addresses of some nodes; the full member list is learned from the cluster.
    nodes: list[str] = field(default_factory=lambda: ["127.0.0.1:7001"])
    max_manifest_size: int = 4 * MiB
    # Deepest nesting of arrays/objects a pushed manifest may use (real ones use about 5).
    max_manifest_depth: int = 32
    # Most tags one manifest PUT may create with `?tag=` (distribution-spec v1.1).
    max_tags_per_push: int = 16
    # Upload sessions not touched for this long are forgotten.
    upload_expiry_seconds: int = 24 * 3600
    # Chunk reads in flight ahead of the client on a blob GET.
    read_ahead_chunks: int = 4
    # Concurrent reads of one chunk (a pull storm) share one node read (gateway/cluster/reads.py).
    share_chunk_reads: bool = True
    # A replica slower than this gets a hedged request to the next one.
    hedge_after_seconds: float = 0.5
    # Per-RPC deadline towards nodes.
    rpc_timeout_seconds: float = 30.0
    # Tag/catalog page size when the client sends no `n`, and the largest `n` allowed.
    default_page_size: int = 1000
    max_page_size: int = 10_000
    # Deletes of manifests and blobs (405 UNSUPPORTED when off).
    delete_enabled: bool = True
    # TLS for the HTTP listener: PEM paths; empty means plain HTTP.
    tls_cert: str = ""
    tls_key: str = ""
    # One `access` line per request (gateway/access_log.py); successful blob/manifest
    # GET/HEADs are logged with this probability (1 = every one). Sampled by default: a
    # line costs about as much gateway CPU as serving a cached manifest (docs/operations.md).
    access_log: bool = True
    access_log_pull_sample: float = 0.01
    # Connections (gateway/connection.py): a request's headers must arrive within
    # `header_timeout_seconds` of its first byte (408, closed); an idle keep-alive
    # connection closes after `keepalive_timeout_seconds`; at most
    # `max_connections_per_client` connections per client address (0 = no limit); at most
    # `bad_request_log_per_second` `http.bad_request` log lines a second.
    header_timeout_seconds: float = 20.0
    keepalive_timeout_seconds: float = 75.0
    max_connections_per_client: int = 0
    bad_request_log_per_second: float = 5.0
    # Request bodies (gateway/body.py): request bytes read from clients and not yet
    # stored, summed over the gateway (sockets stop being read while over it), and how
    # long a body may send nothing before the request is ended (408; an upload keeps what
    # was stored, resumable).
    max_buffered_bytes: int = 256 * MiB
    # Once the budget drains, freed memory goes back to the kernel (malloc_trim) if the
    # burst made a body wait for the budget or buffered at least this much (0 = after
    # every burst); smaller bursts keep it for the next one (gateway/body.py).
    body_trim_after_bytes: int = 256 * MiB
    # Unread body bytes a connection buffers before its socket is no longer read (about
    # twice this, plus one socket read); a body being read under the budget uses
    # `body_read_bytes` instead.
    read_buffer_bytes: int = 16 * 1024
    body_read_bytes: int = 256 * 1024
    body_idle_timeout_seconds: float = 30.0
    # Data path (gateway/cluster/, gateway/uploads.py):
    # how often the member list and the Raft leader are re-learned from the cluster.
    members_refresh_seconds: float = 5.0
    # For this long after the gateway starts, while a node named in `nodes` is not yet in
    # the member list (it is still joining), the list is re-learned every
    # `members_settle_refresh_seconds` instead, and a chunk write that would reach fewer
    # than `cluster.replicas` nodes re-learns it first: chunks written meanwhile would
    # otherwise go to fewer nodes than the cluster has (0 = off).
    members_settle_seconds: float = 60.0
    members_settle_refresh_seconds: float = 0.5
    # A node that answered a chunk write with StorageFull (or says disk_full when a
    # refresh asks every active member) gets no chunk writes for this long, unless too few
    # others have space (gateway/cluster/fullness.py); each refresh asks again.
    full_node_recheck_seconds: float = 10.0
    # Metadata command/query attempts across nodes on UNAVAILABLE, and the first backoff
    # (doubled per attempt, capped at 1 s). Retries go on past `metadata_attempts` until
    # `metadata_retry_seconds` have passed (within `rpc_timeout_seconds`), so a request
    # that arrives during a Raft election waits for the new leader instead of failing.
    metadata_attempts: int = 6
    metadata_retry_seconds: float = 5.0
    retry_backoff_seconds: float = 0.05
    # Chunk writes in flight per upload while more of the body is read (memory bound:
    # about (this + 1) * cluster.chunk_size per upload).
    upload_writes_in_flight: int = 4
    # ... and across all uploads of this gateway (bounds its write-buffer memory to about
    # this many chunks, plus one being cut per upload).
    chunk_writes_in_flight_total: int = 64
    # Replica copies still running after W acks, per node: past this many on one node (a
    # hung or slow node) new ones are given up (repair restores them) and that node is
    # written around for a while. Each holds its chunk's encoded request in memory.
    background_copies_per_node: int = 64
    # Chunks at least this large are offered with Chunks.Has first, so a node that
    # already holds one is not sent the bytes again. The default offers full-size chunks
    # only: a short chunk (a blob's tail, a small blob) costs a round trip per replica to
    # save sending at most a few MiB that are rarely held already (bench/README.md).
    # Within one upload body, offers stop at the first "absent" (gateway/cluster/writes.py).
    has_check_min_bytes: int = 4 * MiB
    # Packed calls (gateway/cluster/packing.py, protos/README.md "Packed calls"): while
    # `packs_in_flight_per_node` calls of one kind (chunk Puts; Metadata commands) are in
    # flight to a node, further small requests to it queue, and each call that returns
    # sends everything queued in one call (`Chunks.PutMany` / `Metadata.Commands`), at
    # most `pack_max_items` requests and `pack_max_bytes` of them; a lone request goes as
    # today's single call. Only chunks up to `pack_chunk_max_bytes` are packed (packing
    # copies a chunk once more). `pack_calls = false`: one call per request.
    pack_calls: bool = True
    packs_in_flight_per_node: int = 2
    pack_max_items: int = 64
    pack_max_bytes: int = 1 * MiB
    pack_chunk_max_bytes: int = 64 * 1024
    # Bulk puts (cargohold/bulk_wire.py): chunks larger than `pack_chunk_max_bytes` go to a
    # node's bulk port when it advertises one (`node.bulk_listen`), else as gRPC Puts.
    # A node whose bulk port cannot be reached (not within `bulk_connect_seconds`) is
    # sent gRPC Puts and asked for its bulk address again after `bulk_retry_seconds`,
    # doubled for each failed connection in a row (up to 10 minutes). At most
    # `bulk_idle_connections` idle connections are kept per node. `bulk_puts = false`:
    # gRPC only.
    bulk_puts: bool = True
    bulk_retry_seconds: float = 10.0
    bulk_connect_seconds: float = 2.0
    bulk_idle_connections: int = 16
    # A node that answers UNIMPLEMENTED to a pack (it predates packs: a rolling upgrade)
    # gets single calls this long before packs are tried again.
    pack_unimplemented_retry_seconds: float = 300.0
    # Running upload hashes kept per gateway (an LRU; a miss rebuilds from stored bytes).
    upload_hash_cache_entries: int = 1024
    # How a gateway verifies chunk bytes read from a node: "xxh3" (the checksum the node
    # verified its stored copy against, re-checked on the received bytes; far cheaper) or
    # "sha256" (re-hash against the chunk id, end to end; its cost is in bench/README.md).
    verify_reads: str = "xxh3"
    # Short-circuit local reads (gateway/cluster/local_reads.py): the data directory of
    # the node on this host; chunks it holds are read from its LMDB (read-only, verified
    # as `verify_reads` says) instead of over gRPC. Empty = off. `local_node_id` names
    # that node, so a local copy that fails its check is reported to it first (its own
    # read quarantines the copy and re-fetches a good one); empty = unknown.
    local_node_data_dir: str = ""
    local_node_id: str = ""
    # With local reads on: a local chunk of a blob GET on a plain-HTTP connection leaves
    # by sendfile(2) straight from the node's data.mdb (no copy in user space), verified
    # first; off: copied out of the map and written by the event loop.
    local_sendfile: bool = True
    # ... and for clients on this host's loopback (127.0.0.0/8, ::1), where which path
    # costs less depends on the kernel and CPU: "on" (sendfile), "off" (written from the
    # LMDB map by the same send threads), or "auto": measured once at start, in a worker
    # thread (gateway/send_probe.py).
    local_sendfile_loopback: str = "auto"
    # Longest a sendfile may hold its LMDB read transaction (pinning the node's free
    # pages) for one chunk; a client too slow for that gets the rest of the chunk copied.
    sendfile_hold_seconds: float = 1.0
    # Threads doing those sends (each waits on its client's socket while it is full); a
    # send starting while none runs always takes the same one (cargohold/warm_pool.py).
    sendfile_threads: int = 16
    # Largest blob an upload may commit (bytes); 0 means no limit.
    max_blob_size: int = 0
    # Manifest bodies are immutable by digest: an LRU of this many bytes in each gateway.
    manifest_cache_bytes: int = 64 * MiB
    # A manifest PUT of a body in that cache (this gateway stored or served it) writes no
    # chunks: its `manifest_put` says so and the state accepts only if the digest's recipe
    # is recorded (else the gateway writes them and commits again; gateway/manifests.py).
    reuse_stored_manifests: bool = True
    # Concurrent identical manifest/tag reads share one linearizable query (see
    # gateway/coalesce.py); off: one query per request.
    coalesce_manifest_reads: bool = True
    # GET/HEAD of a manifest by digest answer from this gateway's cache of (repo, digest)
    # -> record+body: under the lease as long as nothing was removed (lease_record_caches
    # below), else for this many seconds after the cluster last confirmed it (a delete
    # through this gateway drops it at once); 0 = without a fresh lease, always confirm.
    # See gateway/manifests.py for the staleness bound across gateways.
    manifest_digest_ttl_seconds: float = 1.0
    # ... and at most this many (repo, digest) records are kept (an LRU).
    manifest_digest_cache_entries: int = 10_000
    # GET/HEAD of a blob: the same for the (repo, digest) -> recipe link check, which
    # otherwise costs a linearizable query per pull (gateway/blobs.py); 0 = without a
    # fresh lease, always confirm.
    blob_digest_ttl_seconds: float = 1.0
    # ... at most this many (repo, digest) recipes (an LRU), and only recipes of at most
    # this many chunks (a large blob's transfer dwarfs its query; its recipe is big).
    blob_digest_cache_entries: int = 10_000
    blob_digest_cache_max_chunks: int = 16
    # Both caches above trust an entry, past its TTL, while this gateway holds the lease on
    # the Raft leader's unlink revision and it has not moved since the entry was confirmed
    # (gateway/manifest_cache.py; the lease is the access lease, gateway/auth/lease.py,
    # renewed every `auth.revocation_lease_renew_seconds`). A removal through any gateway
    # is then seen by every gateway at once. Off: the TTLs alone (and no lease is held
    # unless auth uses one).
    lease_record_caches: bool = True
    # `Retry-After` seconds sent with 503 and 429 when the error names none.
    retry_after_seconds: int = 1
    # Seconds a SIGTERM'd gateway lets in-flight requests finish before closing them.
    shutdown_grace_seconds: float = 10.0
    # Gateway processes serving `listen` together (SO_REUSEPORT; gateway/workers.py). 1 =
    # this process serves. N > 1 = this process only supervises N worker processes, each a
    # whole gateway; the kernel spreads connections over them. Each keeps its own metrics,
    # so N > 1 needs `metrics_address` "host:P": worker k (1..N) serves /metrics on port
    # P + k - 1. A worker that exits is logged and restarted after
    # `worker_restart_delay_seconds`, doubled for each further exit of a worker that ran
    # less than `worker_restart_max_delay_seconds`, up to that; one that fails before the
    # first start completes stops the gateway with its exit status.
    workers: int = 1
    worker_restart_delay_seconds: float = 1.0
    worker_restart_max_delay_seconds: float = 60.0
    # Freed memory this process keeps for reuse (cargohold/memtune.py); 0 = glibc defaults.
    malloc_retain_bytes: int = 256 * MiB
    # glibc malloc arenas shared by this process's threads (as node.malloc_arenas).
    malloc_arenas: int = 1
    # Prometheus metrics (`/metrics`): empty = served on `listen` next to `/v2/`, with
    # `/healthz` and `/readyz`; "host:port" = served only on that separate listener (plain
    # HTTP; keep it on an internal network), with `/healthz` and `/readyz` on both.
    metrics_address: str = ""
    # `/readyz` asks the cluster (a linearizable read, so a Raft majority answers, and an
    # Admin.Status probe of every active node, W of which must take writes) at most once
    # per `readiness_cache_seconds`, each probe bounded by `readiness_timeout_seconds`.
    readiness_timeout_seconds: float = 2.0
    readiness_cache_seconds: float = 1.0
    # Proxies (CIDRs, e.g. ["10.0.0.0/8"]) whose `X-Forwarded-For` is believed: the client
    # address of the access log, the failed-login limits and the activity log is the TCP
    # peer, or, when the peer is one of these, the right-most X-Forwarded-For entry that is
    # not (gateway/client_address.py). Empty: X-Forwarded-For is ignored.
    trusted_proxies: list[str] = field(default_factory=list)
    # Search (docs/search.md): a pushed image's config blob up to this size is read at
    # manifest PUT for its platform and labels (larger ones are indexed without them).
    search_config_max_bytes: int = 256 * 1024
    # ... and what it found is kept by config digest (immutable: gateway/config_infos.py)
    # for this many configs (an LRU), so a config pushed again is not read again.
    config_info_cache_entries: int = 4096
    # Manifests stored before search recorded platforms and labels get them from a pass
    # each gateway runs once, this long after it started (gateway/search_backfill.py),
    # `search_backfill_batch` manifests per read and per command; one gateway of the
    # cluster at a time, holding the backfill's lease (`search_backfill_lease_seconds`,
    # renewed every third of it; the others wait for it).
    search_backfill: bool = True
    search_backfill_delay_seconds: float = 30.0
    search_backfill_batch: int = 100
    search_backfill_lease_seconds: float = 30.0
    # The web UI at /ui/ (gateway/ui/); off: /ui/ is 404.
    ui_enabled: bool = True
    # Rows per page of the UI's lists.
    ui_page_size: int = 50


@dataclass
class LifecycleConfig:
    """Garbage collection (node/gc.py; docs/operations.md "Garbage collection")."""

    # Seconds between GC passes on every node; 0 = only on `cargohold admin gc`. On by
    # default: a pass is online (no read-only window, pushes go on) and paced, and without
    # it deleted images never give their space back.
    gc_interval_seconds: float = 3600.0
    # An unreferenced chunk younger than this (written, or found present by Has) is spared,
    # and an unlinked recipe is forgotten only once it stayed unlinked this long. Must exceed
    # the longest PATCH/PUT of an upload (a chunk is referenced only once its request ends).
    gc_grace_seconds: float = 3600.0
    # Chunks deleted per write transaction of a sweep, and the sweep's pace (chunk ids
    # examined per second; 0 = unpaced).
    gc_delete_batch: int = 256
    gc_rate_chunks: float = 20_000.0
    # Digests per `gc_prune` command (one Raft command per batch, not per blob).
    gc_prune_batch: int = 1000
    # Immutable tag rules `REPO_GLOB:TAG_PATTERN` (e.g. `prod/*:v*`): such a tag is never
    # moved to another manifest nor deleted. Read by gateways; keep it identical on all.
    immutable_tags: list[str] = field(default_factory=list)
    # Repository-name prefixes (namespaces) where every delete is refused (gateways).
    delete_protected: list[str] = field(default_factory=list)
    # Pull times (gateway/pull_events.py): each gateway sends its manifest GETs as one
    # `pull_record` command every `pull_flush_seconds` (0 = record no pulls) or once
    # `pull_batch_max` wait; at most `pull_queue_max` wait, more are dropped and counted.
    pull_flush_seconds: float = 5.0
    pull_batch_max: int = 500
    pull_queue_max: int = 10_000
    # Retention policies (cargohold/retention.py), `REPO_GLOB: RULE ...`, e.g.
    # `team/*: keep_tags=v*|latest most_recently_pushed=5 untagged_after=1d`; applied by the
    # Raft leader every `retention_interval_seconds` (0 = only on `cargohold admin
    # retention`). Read by nodes: keep identical on all (with immutable_tags).
    retention: list[str] = field(default_factory=list)
    retention_interval_seconds: float = 3600.0
    # Gateways refuse an upload body that cannot fit in its namespace's quota (set with
    # `cargohold admin namespaces quota`) before reading it, using the quota usage they
    # re-read at most this often; the metadata state checks exactly at each commit.
    quota_refresh_seconds: float = 2.0
    # Seconds a deleted manifest or tag stays in the trash, restorable with `cargohold
    # admin trash restore` (its blobs are kept meanwhile); the first GC pass after that
    # purges it. 0 = no trash: deletes are final (and a GC pass empties the trash). Read by
    # gateways (whether a delete is trashed) and by the GC leader (when to purge).
    trash_retention_seconds: float = 86400.0


@dataclass
class AuthConfig:
    """Who may use the registry (gateway/auth/, docs/security.md "Registry users")."""

    # "none" (anyone may do anything), "htpasswd" (HTTP Basic against `htpasswd`) or
    # "token" (Docker registry token auth: Bearer JWTs from `realm`).
    mode: str = "none"
    # A bcrypt-only htpasswd file (`htpasswd -B`): the users of "htpasswd" mode, and of the
    # built-in token service if set (its users may then do everything). Re-read when its
    # modification time or size changes, looked at at most every `htpasswd_check_seconds`.
    # Token mode without it: users, groups, namespaces and roles of the cluster metadata
    # (`cargohold admin users|groups|namespaces`). Robot accounts (`cargohold admin
    # robots`) work in both modes. The cluster's part is re-read every
    # `directory_refresh_seconds`, and at once when `revocation_check` finds it moved:
    # each authenticated request then reads the cluster's access revision first (one small
    # read of the Raft leader, shared by concurrent requests; gateway/auth/revision.py),
    # so a disabled user, a revoked grant or a revoked robot is refused by every gateway
    # from the next request on. Off: such changes take up to `directory_refresh_seconds`
    # on the gateways that did not make them.
    htpasswd: str = ""
    htpasswd_check_seconds: float = 1.0
    directory_refresh_seconds: float = 2.0
    revocation_check: bool = True
    # The revision reads are paced: at most one per this many seconds per gateway (a
    # request waits for the next one; gateway/auth/revision.py). Bounds their cost under
    # load; 0 = back to back (one read per round trip). Measured (bench/README.md "Token
    # auth"): 0.005 is the best of 0, 0.002, 0.005 and 0.02 here; longer adds latency.
    revocation_check_interval: float = 0.005
    # With `revocation_check`: keep a lease on the Raft leader's access revision (a
    # `Metadata.WatchAccess` stream, gateway/auth/lease.py) and trust it without any round
    # trip while the lease is fresh; the leader pushes every access change to the gateway
    # before the change is acknowledged. The lease is renewed every
    # `revocation_lease_renew_seconds`; while it is not fresh (stream down, leader change,
    # slow answers) each request falls back to the paced leader read above.
    revocation_lease: bool = True
    revocation_lease_renew_seconds: float = 0.05
    # Token mode. `realm`: the token service URL put in challenges; empty = this gateway's
    # own `/auth/token` (built from the request's Host). `service` and `issuer` are the
    # JWT `aud` and `iss` every token must carry.
    realm: str = ""
    service: str = "cargohold"
    issuer: str = "cargohold"
    # The built-in token service signs with this PEM EC P-256 private key (ES256), the same
    # file on every gateway; empty = no built-in service (an external issuer signs).
    signing_key: str = ""
    # Keys tokens are verified with: PEM public (or private) keys and/or JWKS JSON files;
    # a PEM key's `kid` is its RFC 7638 thumbprint. The signing key is always one of them;
    # list the old key here while rotating.
    verify_keys: list[str] = field(default_factory=list)
    # Lifetime of access tokens, and of the refresh tokens `docker login` stores.
    token_ttl_seconds: int = 300
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # Accepted clock difference for a token's exp/nbf/iat.
    token_leeway_seconds: float = 30.0
    # Verified access tokens remembered until they expire (one ECDSA check per token, not
    # per request); 0 = verify every request.
    token_cache_entries: int = 10_000
    # Successful password checks (bcrypt is slow on purpose) are remembered this long.
    login_cache_seconds: float = 60.0
    login_cache_entries: int = 10_000
    # Failed logins (gateway/auth/limits.py): after `login_failures_free` failures in a row
    # a user or a client address waits `login_backoff_seconds`, doubled for each further
    # failure up to `login_backoff_max_seconds` (429 with Retry-After meanwhile); a
    # success clears the user's count; counts are forgotten after `login_failure_window`.
    login_failures_free: int = 5
    login_backoff_seconds: float = 1.0
    login_backoff_max_seconds: float = 300.0
    login_failure_window: float = 900.0
    login_limit_entries: int = 100_000


@dataclass
class AuditConfig:
    """The activity log (gateway/activity.py, docs/security.md "Activity log")."""

    # Record events at all. Pushes, deletes and admin changes travel with their own command
    # (no extra Raft round trip); logins and denied requests are batched per gateway. Pulls
    # are recorded from the `pull_record` batches (`lifecycle.pull_*` settings) regardless.
    enabled: bool = True
    # Record blob (layer, config) pushes, pulls and deletes too, for webhooks' blob events
    # (docs/webhooks.md): a push or delete in its own command, a GET from the first byte in
    # the `pull_record` batches. false: manifests only.
    blob_events: bool = True
    # A gateway sends its batched events as one `audit_append` command every
    # `flush_seconds`, or sooner once `max_batch` are waiting. At most `max_pending` wait
    # (while the cluster cannot take them); further events are dropped and counted
    # (`cargohold_audit_dropped_total`, an `audit.dropped` warning).
    flush_seconds: float = 1.0
    max_batch: int = 1000
    max_pending: int = 100_000
    # Every `seal_interval_seconds` a gateway seals the oldest `segment_records` records
    # of the in-memory log into a segment (a content-addressed blob in the chunk store)
    # once at least that many are waiting; 0 = never seal (memory then grows).
    segment_records: int = 10_000
    seal_interval_seconds: float = 30.0
    # Sealed segments whose newest record is older than this many days are forgotten (and
    # their chunks collected); 0 = keep every segment.
    retention_days: float = 0.0


@dataclass
class PolicyConfig:
    """Pull policy: signature verification (gateway/signatures/, docs/security.md
    "Signed images"); the keys and `require_signature` live in the cluster metadata."""

    # How often a gateway re-reads the namespaces' keys and pull policies: how long a
    # changed policy or key may take to apply on a gateway that did not make the change.
    refresh_seconds: float = 5.0
    # A manifest found signed stays allowed this long (and until its namespace's keys
    # change); one refused is asked again after `refused_cache_seconds`, so a signature
    # pushed through another gateway counts soon (through this one: at once).
    verified_cache_seconds: float = 300.0
    refused_cache_seconds: float = 2.0
    # Verdicts kept per gateway (least recently used first out).
    cache_entries: int = 100_000
    # Every refused pull goes into the activity log; an allowed pull in a protected
    # namespace too when this is on, but only when decided afresh (at most once per image
    # per `verified_cache_seconds` and gateway), never from the verdict cache.
    audit_allowed: bool = True
    # Vulnerability matching (gateway/vulns/, docs/supply-chain.md): how often a gateway
    # asks whether a new database was imported; every how many seconds it walks the
    # repositories to (re-)match each SBOM'd image whose report is missing or older than
    # the database (0: only on demand, when an image is pulled or shown); the largest SBOM
    # it reads; reports kept parsed in memory.
    vulndb_refresh_seconds: float = 5.0
    rematch_interval_seconds: float = 60.0
    max_sbom_bytes: int = 64 * 1024 * 1024
    report_cache_entries: int = 10_000


@dataclass
class WebhooksConfig:
    """Webhook notifications (gateway/webhooks.py, docs/webhooks.md). Endpoints come from
    `[[webhooks.endpoints]]` here (give every gateway the same list) and from the replicated
    metadata (`cargohold admin webhooks add`); one gateway at a time delivers them all
    (a lease in the metadata)."""

    # Run the deliverer on this gateway (it still only delivers while it holds the lease).
    enabled: bool = True
    # Tables of {name, url, namespace, actions, repositories, headers, timeout} (see
    # cargohold/webhooks.py Endpoint); a name also used by a replicated endpoint loses.
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    # The registry's public base URL for events' `target.url` and `request.host`;
    # "" = http://<gateway.listen>.
    public_url: str = ""
    # How often an idle endpoint looks for new records in the activity log.
    poll_seconds: float = 1.0
    # Records read per page, and events sent per request (one envelope) at most.
    read_batch: int = 1000
    batch_events: int = 50
    # The delivery lease: held this long, renewed every third of it; a gateway that dies
    # holding it is replaced once it expires.
    lease_seconds: float = 15.0
    # Retries: exponential back-off from `backoff_seconds`, doubling up to
    # `backoff_max_seconds` (+-20 % jitter). Events whose batch failed `max_attempts`
    # times in a row (0 = no limit), or whose record is older than `max_age_seconds`
    # (0 = no limit) while still failing, go to the endpoint's dead letters.
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    max_attempts: int = 50
    max_age_seconds: float = 86400.0
    # Dead letters kept per endpoint in the metadata (oldest dropped first).
    dead_letters_max: int = 10_000


@dataclass
class ProxyConfig:
    """One proxy namespace: pulls of `<namespace>/<repo>` are served from `url`'s `<repo>`."""

    namespace: str
    url: str
    # Credentials for the upstream (HTTP Basic, or the Docker token protocol's login);
    # empty = anonymous. `password_file` reads the password from a file instead.
    username: str = ""
    password: str = ""
    password_file: str = ""
    # Registry host names this upstream answers for in containerd's `?ns=` mirror
    # requests (e.g. ["docker.io"]), see `MirrorConfig.root`.
    hosts: list[str] = field(default_factory=list)


@dataclass
class MirrorConfig:
    """Pull-through cache of upstream registries (gateway/mirror/, docs/mirroring.md)."""

    # Proxy namespaces, as `[[mirror.proxy]]` tables (namespace, url, username, password,
    # password_file, hosts) or as "NAMESPACE=URL" strings (env: comma-separated); a URL may
    # carry `user:password@` credentials.
    proxies: list[ProxyConfig] = field(default_factory=list)
    # A tag is asked upstream (one HEAD) at most once per `tag_ttl_seconds` per gateway;
    # meanwhile it answers with the digest last resolved. When the upstream cannot be
    # reached (or refuses), the last known digest is served however old it is.
    tag_ttl_seconds: float = 300.0
    # Upstream HTTP: connecting, the wait for a response's headers, the longest pause
    # within a body, and a whole manifest request.
    connect_timeout_seconds: float = 10.0
    response_timeout_seconds: float = 30.0
    read_idle_timeout_seconds: float = 60.0
    manifest_timeout_seconds: float = 30.0
    # Upstream blob downloads running at once in this gateway (more wait their turn), and
    # upstream connections this gateway keeps open.
    max_concurrent_fetches: int = 16
    max_connections: int = 64
    # Redirects followed for one upstream request (blob storage behind a CDN).
    max_redirects: int = 5
    # Pages of an upstream's referrers API answer followed (its `Link: rel="next"`); the
    # referrers on later pages are not seen (logged as `mirror.referrers_truncated`).
    referrers_max_pages: int = 10
    # Where a download is spooled while clients stream it (empty: the system temp dir).
    spool_dir: str = ""
    # A finished download stays joinable this long, for pulls that looked for the blob in
    # the cluster just before it was stored: they do not fetch it again (they read the
    # cluster once its bytes are released, with its last reader).
    fetch_linger_seconds: float = 5.0
    # The last bytes of each download kept in memory as well as in the spool: clients
    # (and the cluster write) near the download's front are sent them from there, with no
    # re-read of the spool.
    stream_memory_bytes: int = 8 * MiB
    # A download whose size the upstream announced, at most `memory_blob_bytes`, is kept
    # whole in memory instead of being spooled, while all such downloads of this gateway
    # (until their last reader is done) fit in `memory_pool_bytes`; the others are spooled
    # (gateway/mirror/pool.py). 0 turns it off. Filling a spool file's fresh page-cache
    # pages costs more CPU than the download's sha256.
    memory_pool_bytes: int = 256 * MiB
    memory_blob_bytes: int = 64 * MiB
    # A download's cluster write comes after its clients: it starts once the download is
    # verified (every byte can reach the clients by then) and this gateway has no other
    # download running and no client with proxied bytes waiting to be sent, and pauses
    # while it has; at most this long in all after the download ends (then it goes on
    # regardless). On a busy gateway clients come first; the commit comes later.
    store_yield_seconds: float = 30.0
    # A download's cluster write starts (or resumes) only once this gateway has been idle
    # (no download running, no client with proxied bytes waiting) this long: a client
    # pulling an image leaves short gaps between its blob requests.
    store_quiet_seconds: float = 0.2
    # Verified downloads whose cluster write waits to start hold at most this many bytes
    # in all (in the memory pool or spooled); a download that would go beyond starts its
    # write at once.
    store_defer_bytes: int = 512 * MiB
    # Cluster writes of downloads running at once in this gateway (more wait their turn).
    max_concurrent_stores: int = 8
    # Upstream manifests fetched and not yet stored (waiting for their blobs) kept in
    # memory per gateway, as bytes.
    pending_manifest_bytes: int = 64 * MiB
    # Tags whose upstream answer a gateway remembers (an LRU).
    tag_entries: int = 100_000
    # Root mirror mode: pulls of a name outside every proxy namespace that are not found
    # locally (and containerd's requests whose `?ns=` is one of that proxy's `hosts`) are
    # served by this proxy namespace, so `/v2/library/busybox` works as Docker Hub's.
    root: str = ""


@dataclass
class ReplicationConfig:
    """Replication rules (gateway/replication/, docs/mirroring.md "Replication"): copies
    to and from other registries, on push, on a schedule or when asked. One gateway at a
    time runs a given rule (a lease per rule in the metadata)."""

    # Run rules on this gateway (it still only runs a rule while it holds the rule's lease).
    enabled: bool = True
    # `[[replication.rules]]` tables of {name, direction, url, username, password,
    # password_file, repositories, tags, target_prefix, triggers, interval_seconds,
    # enabled, replicate_deletes} (cargohold/replication.py `Rule`); give every gateway
    # the same list.
    rules: list[dict[str, Any]] = field(default_factory=list)
    # A rule's lease: held this long, renewed every third of it.
    lease_seconds: float = 15.0
    # How often an on_push rule looks for new push records in the activity log, and how
    # many records it reads at once.
    poll_seconds: float = 1.0
    read_batch: int = 500
    # Retries of a failed copy (push events and runs alike): exponential back-off from
    # `backoff_seconds` up to `backoff_max_seconds` (+-20 % jitter). A run is retried for
    # ever; a push event whose copy failed `event_max_attempts` times (0 = no limit;
    # failures that say nothing about the event, the remote unreachable or unavailable,
    # the cluster unavailable, are not counted) becomes one of the rule's dead letters
    # and the rule goes on with the next (`admin replication status|retry`).
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    event_max_attempts: int = 10
    # Dead letters kept per rule in the metadata (the oldest dropped first).
    dead_letters_max: int = 1000
    # Bounds of one full run: repositories and tags per repository listed at the source.
    max_repositories: int = 10_000
    max_tags: int = 10_000
    # Referrers followed per manifest (signatures, SBOMs), and how deep (referrers of
    # referrers, e.g. a signature of an SBOM).
    max_referrers: int = 256
    referrer_depth: int = 2
    # Blobs at most this big are uploaded in one PUT; bigger ones in PATCH chunks of this
    # size (each held in memory while it is sent).
    upload_chunk_bytes: int = 16 * MiB
    # One whole rule run's (or one push event's copy's) bound; 0 = none. The remote's
    # HTTP waits are the [mirror] client's (connect, response, read idle timeouts).
    run_timeout_seconds: float = 0.0


@dataclass
class ScannerConfig:
    """The SBOM scanner (gateway/scanner/, docs/supply-chain.md): a background role of the
    gateways that scans every image manifest pushed through them."""

    # Queue image manifests pushed through this gateway and run scans here. Off: nothing is
    # queued (pushes cost exactly what they did) and this gateway claims no scans.
    enabled: bool = False
    # Scans running at once in this gateway (each one layer at a time, in a worker thread);
    # 0 = queue what is pushed here but leave the scanning to other gateways.
    concurrency: int = 1
    # A layer larger than this (compressed, as pushed) fails the scan before it is read.
    max_layer_bytes: int = 4 * GiB
    # A layer that unpacks to more than this fails the scan (a decompression bomb).
    max_unpacked_bytes: int = 16 * GiB
    # One package database file (a dpkg status, a METADATA) larger than this fails the scan;
    # all of them in one layer together may hold at most `max_kept_bytes` in memory.
    max_file_bytes: int = 64 * MiB
    max_kept_bytes: int = 256 * MiB
    # Layer bytes read per second per scan (0 = as fast as the cluster serves them).
    read_rate_bytes: int = 0
    # A scan running longer is abandoned and queued again after `retry_seconds`.
    scan_timeout_seconds: float = 600.0
    # How long a claim holds a scan: a scanner that died (SIGKILL) is replaced after this.
    # Must exceed `scan_timeout_seconds`, so a live scan is never taken over.
    lease_seconds: float = 660.0
    # Claims of one manifest before it fails for good (a scanner that keeps dying on it).
    max_attempts: int = 3
    # A scan that ended in a transient error (the cluster unavailable) is retried after this.
    retry_seconds: float = 30.0
    # How often an idle scanner looks for work (a local read: no Raft entry while idle).
    poll_seconds: float = 2.0
    # Scans yield to pushes: none starts (and a running one pauses before its next layer)
    # until this gateway stored no image for `yield_seconds`; queued work waits at most
    # `max_defer_seconds` however busy the gateway is. 0 = never yield.
    yield_seconds: float = 1.0
    max_defer_seconds: float = 60.0
    # What earlier scans found in each layer, by layer digest (a shared base layer is read
    # once per gateway, not once per image), bounded by the bytes kept; 0 = no cache.
    layer_cache_bytes: int = 64 * MiB


@dataclass
class Config:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    log_level: str = "warning"
    # Not a setting: the role this process calls nodes as ("gateway", "node", "admin"),
    # set by its entry point (cargohold/cluster_auth.py).
    role: str = "gateway"


_SECTIONS = (
    "cluster",
    "node",
    "gateway",
    "lifecycle",
    "auth",
    "audit",
    "policy",
    "webhooks",
    "mirror",
    "replication",
    "scanner",
)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a TOML/env/CLI value into the field's declared type."""
    origin = typing.get_origin(annotation)
    try:
        if origin is list and typing.get_args(annotation)[:1] == (dict[str, Any],):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ValueError(value)
            return [dict(v) for v in value]
        if origin is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if annotation is bool or annotation == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int or annotation == "int":
            return int(value)
        if annotation is float or annotation == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value for {key}: {value!r}") from exc


def _proxy(value: Any) -> ProxyConfig:
    """A `[[mirror.proxy]]` table or a "NAMESPACE=URL" string."""
    if isinstance(value, ProxyConfig):
        return value
    if isinstance(value, str):
        namespace, sep, url = value.partition("=")
        if not sep:
            raise ConfigError(f"mirror.proxies: want NAMESPACE=URL, got {value!r}")
        return ProxyConfig(namespace.strip(), url.strip())
    if not isinstance(value, dict):
        raise ConfigError(f"mirror.proxies: bad entry {value!r}")
    proxy = ProxyConfig(str(value.get("namespace", "")), str(value.get("url", "")))
    _apply(proxy, "mirror.proxy", {k: v for k, v in value.items() if k not in ("namespace", "url")})
    return proxy


def _apply(section_obj: Any, section: str, values: dict[str, Any]) -> None:
    hints = typing.get_type_hints(type(section_obj))
    names = {f.name for f in dataclasses.fields(section_obj)}
    for key, value in values.items():
        if section == "mirror" and key in ("proxies", "proxy"):
            items = value.split(",") if isinstance(value, str) else list(value)
            section_obj.proxies = [_proxy(v) for v in items if not isinstance(v, str) or v.strip()]
            continue
        if key not in names:
            raise ConfigError(f"unknown setting {section}.{key}")
        setattr(section_obj, key, _coerce(value, hints[key], f"{section}.{key}"))


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the one Config of this process from defaults, file, environment, overrides."""
    cfg = Config()
    # Advertise addresses default to the listen addresses: resolved after all sources.
    cfg.node.grpc_advertise = cfg.node.raft_advertise = ""
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        for section, values in data.items():
            if section == "log_level":
                cfg.log_level = str(values)
                continue
            if section not in _SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"unknown config section {section!r}")
            _apply(getattr(cfg, section), section, values)
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if not name.startswith("CARGOHOLD_"):
            continue
        rest = name[len("CARGOHOLD_") :].lower()
        if rest == "log_level":
            cfg.log_level = value
            continue
        section, _, key = rest.partition("_")
        if section in _SECTIONS and key:
            _apply(getattr(cfg, section), section, {key: value})
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in _SECTIONS:
            raise ConfigError(f"unknown override {dotted}")
        _apply(getattr(cfg, section), section, {key: value})
    cfg.node.__post_init__()
    _read_secret_files(cfg.cluster)
    validate(cfg)
    return cfg


def _read_secret_files(c: ClusterConfig) -> None:
    """`secret_file` / `credential_file` -> `secret` / `credential` (trailing newline cut)."""
    for name in ("secret", "credential"):
        path = getattr(c, f"{name}_file")
        if not path:
            continue
        if getattr(c, name):
            raise ConfigError(f"set cluster.{name} or cluster.{name}_file, not both")
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read cluster.{name}_file {path}: {exc}") from exc
        if not value:
            raise ConfigError(f"cluster.{name}_file {path} is empty")
        setattr(c, name, value)


_DROP_MODES = {"never": "never", "always": "always", "unread": "unread"}
_DROP_MODES |= dict.fromkeys(("false", "0", "no", "off"), "never")
_DROP_MODES |= dict.fromkeys(("true", "1", "yes", "on"), "always")


def _drop_mode(value: str) -> str:
    """`node.drop_written_pages` normalised (the booleans it took before read as modes)."""
    mode = _DROP_MODES.get(str(value).strip().lower())
    if mode is None:
        raise ConfigError("node.drop_written_pages must be unread, always or never")
    return mode


def validate(cfg: Config) -> None:
    cfg.node.drop_written_pages = _drop_mode(cfg.node.drop_written_pages)
    if cfg.node.drop_written_pages_read_seconds < 0:
        raise ConfigError("node.drop_written_pages_read_seconds must be >= 0")
    c = cfg.cluster
    if c.replicas < 1:
        raise ConfigError("cluster.replicas must be >= 1")
    if not 1 <= c.write_quorum <= c.replicas:
        raise ConfigError("cluster.write_quorum must be between 1 and cluster.replicas")
    if c.chunk_size < 64 * 1024 or c.chunk_size > 32 * MiB:
        raise ConfigError("cluster.chunk_size must be between 64 KiB and 32 MiB")
    if cfg.node.grpc_max_message < c.chunk_size + MiB:
        raise ConfigError("node.grpc_max_message must exceed cluster.chunk_size by 1 MiB")
    if cfg.gateway.max_manifest_size < 1024:
        raise ConfigError("gateway.max_manifest_size is too small")
    bulk = cfg.node.bulk_listen
    if bulk not in ("", "auto") and not bulk.rpartition(":")[2].isdigit():
        raise ConfigError('node.bulk_listen must be "auto", "" or host:port')
    if cfg.node.bulk_max_connections < 1 or cfg.node.bulk_idle_seconds <= 0:
        raise ConfigError("node.bulk_max_connections and node.bulk_idle_seconds must be > 0")
    if not 16 * 1024 <= cfg.node.grpc_max_frame_size <= 16 * MiB - 1:
        raise ConfigError("node.grpc_max_frame_size must be between 16 KiB and 16 MiB - 1")
    if cfg.gateway.manifest_digest_ttl_seconds < 0:
        raise ConfigError("gateway.manifest_digest_ttl_seconds must be >= 0")
    if cfg.gateway.blob_digest_ttl_seconds < 0:
        raise ConfigError("gateway.blob_digest_ttl_seconds must be >= 0")
    if cfg.gateway.local_sendfile_loopback not in ("auto", "on", "off"):
        raise ConfigError("gateway.local_sendfile_loopback must be auto, on or off")
    if not 0 < cfg.gateway.sendfile_hold_seconds <= 60:
        raise ConfigError("gateway.sendfile_hold_seconds must be in (0, 60]")
    if not 1 <= cfg.gateway.sendfile_threads <= 1024:
        raise ConfigError("gateway.sendfile_threads must be in 1..1024")
    if cfg.gateway.verify_reads not in ("sha256", "xxh3"):
        raise ConfigError("gateway.verify_reads must be sha256 or xxh3")
    if not 1 <= cfg.gateway.search_backfill_batch <= 1000:
        raise ConfigError("gateway.search_backfill_batch must be in 1..1000")
    if not 0 < cfg.gateway.search_backfill_lease_seconds <= 3600:
        raise ConfigError("gateway.search_backfill_lease_seconds must be in (0, 3600]")
    if cfg.node.search_build_slice < 1 or cfg.node.search_build_pause < 0:
        raise ConfigError("node.search_build_slice must be >= 1, search_build_pause >= 0")
    if cfg.node.search_ready_wait < 0:
        raise ConfigError("node.search_ready_wait must be >= 0")
    if cfg.node.raft_snapshot_compact_version not in (5, 6):
        raise ConfigError("node.raft_snapshot_compact_version must be 5 or 6")
    if cfg.node.raft_compress_min_bytes < 0:
        raise ConfigError("node.raft_compress_min_bytes must be >= 0")
    if cfg.cluster.raft_cipher not in ("aes-gcm", "fernet"):
        raise ConfigError("cluster.raft_cipher must be aes-gcm or fernet")
    if not 0.0 <= cfg.node.disk_reserve_fraction < 1.0 or cfg.node.disk_reserve_max_bytes < 0:
        raise ConfigError(
            "node.disk_reserve_fraction must be in [0, 1) and disk_reserve_max_bytes >= 0"
        )
    if c.auth_max_skew <= 0 or c.auth_nonce_cache_max < 1:
        raise ConfigError("cluster.auth_max_skew and auth_nonce_cache_max must be > 0")
    life = cfg.lifecycle
    if life.gc_interval_seconds < 0 or life.gc_grace_seconds < 0 or life.gc_rate_chunks < 0:
        raise ConfigError("lifecycle.gc_interval_seconds, gc_grace_seconds, gc_rate_chunks >= 0")
    if life.pull_flush_seconds < 0 or life.pull_batch_max < 1 or life.pull_queue_max < 1:
        raise ConfigError("lifecycle.pull_flush_seconds >= 0, pull_batch_max and queue_max >= 1")
    if life.trash_retention_seconds < 0:
        raise ConfigError("lifecycle.trash_retention_seconds must be >= 0")
    if life.gc_delete_batch < 1 or life.gc_prune_batch < 1:
        raise ConfigError("lifecycle.gc_delete_batch and gc_prune_batch must be >= 1")
    for rule in life.immutable_tags:
        parse_rule(rule)
    parse_policies(life.retention)
    if life.retention_interval_seconds < 0:
        raise ConfigError("lifecycle.retention_interval_seconds must be >= 0")
    if cfg.gateway.upload_writes_in_flight < 1 or cfg.gateway.metadata_attempts < 1:
        raise ConfigError("gateway.upload_writes_in_flight and metadata_attempts must be >= 1")
    if cfg.gateway.chunk_writes_in_flight_total < 1 or cfg.gateway.background_copies_per_node < 1:
        raise ConfigError(
            "gateway.chunk_writes_in_flight_total and background_copies_per_node must be >= 1"
        )
    gw = cfg.gateway
    if gw.pack_unimplemented_retry_seconds < 0:
        raise ConfigError("gateway.pack_unimplemented_retry_seconds must be >= 0")
    if gw.packs_in_flight_per_node < 1 or gw.pack_max_items < 1 or gw.pack_max_bytes < 1:
        raise ConfigError(
            "gateway.packs_in_flight_per_node, pack_max_items and pack_max_bytes must be >= 1"
        )
    if gw.pack_chunk_max_bytes < 0:
        raise ConfigError("gateway.pack_chunk_max_bytes must be >= 0")
    if cfg.gateway.metadata_retry_seconds < 0:
        raise ConfigError("gateway.metadata_retry_seconds must be >= 0")
    if cfg.gateway.body_trim_after_bytes < 0:
        raise ConfigError("gateway.body_trim_after_bytes must be >= 0")
    if cfg.gateway.malloc_arenas < 0 or cfg.node.malloc_arenas < 0:
        raise ConfigError("gateway.malloc_arenas and node.malloc_arenas must be >= 0")
    _validate_gateway_workers(cfg.gateway)
    for cidr in cfg.gateway.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"gateway.trusted_proxies: bad CIDR {cidr!r}") from None
    pol = cfg.policy
    if min(pol.refresh_seconds, pol.verified_cache_seconds, pol.refused_cache_seconds) < 0:
        raise ConfigError("policy.refresh_seconds and the cache seconds must be >= 0")
    if pol.cache_entries < 1:
        raise ConfigError("policy.cache_entries must be >= 1")
    if min(pol.vulndb_refresh_seconds, pol.rematch_interval_seconds) < 0:
        raise ConfigError("policy.vulndb_refresh_seconds and rematch_interval_seconds must be >= 0")
    if pol.max_sbom_bytes < 1 or pol.report_cache_entries < 1:
        raise ConfigError("policy.max_sbom_bytes and report_cache_entries must be >= 1")
    _validate_raft(cfg.node)
    _validate_auth(cfg.auth)
    _validate_webhooks(cfg.webhooks)
    _validate_mirror(cfg.mirror)
    _validate_replication(cfg.replication)
    _validate_scanner(cfg.scanner)


def _validate_gateway_workers(g: GatewayConfig) -> None:
    """`workers` >= 1; more than one needs a metrics port per worker (`metrics_address`)."""
    if g.workers < 1:
        raise ConfigError("gateway.workers must be >= 1")
    if g.worker_restart_delay_seconds < 0:
        raise ConfigError("gateway.worker_restart_delay_seconds must be >= 0")
    if g.worker_restart_max_delay_seconds < g.worker_restart_delay_seconds:
        raise ConfigError(
            "gateway.worker_restart_max_delay_seconds must be >= worker_restart_delay_seconds"
        )
    if g.workers == 1:
        return
    if not g.metrics_address:
        raise ConfigError(
            "gateway.workers > 1 needs gateway.metrics_address (each worker serves its own "
            "/metrics on that port + its index)"
        )
    _host, port = split_hostport(g.metrics_address)
    if port == 0 or port + g.workers - 1 > 65535:
        raise ConfigError(
            "gateway.metrics_address: its port + gateway.workers - 1 must be a port (1..65535)"
        )


def _validate_raft(n: NodeConfig) -> None:
    """The Raft settings pysyncobj asserts on when the member starts (a node would die at
    start with a bare AssertionError), and the limits the member needs, refused here."""
    if not 0 < n.raft_min_timeout < n.raft_max_timeout:
        raise ConfigError(
            "node.raft_min_timeout must be > 0 and below node.raft_max_timeout "
            f"(got {n.raft_min_timeout} and {n.raft_max_timeout})"
        )
    if n.raft_max_timeout > PYSYNCOBJ_CONNECTION_TIMEOUT:
        raise ConfigError(
            f"node.raft_max_timeout must be <= {PYSYNCOBJ_CONNECTION_TIMEOUT} s, pysyncobj's "
            f"connection timeout (got {n.raft_max_timeout})"
        )
    if n.access_lease_seconds <= 0 or n.access_lease_guard_seconds < 0:
        raise ConfigError(
            "node.access_lease_seconds must be > 0 and node.access_lease_guard_seconds >= 0 "
            f"(got {n.access_lease_seconds} and {n.access_lease_guard_seconds})"
        )
    if n.raft_leader_fallback_timeout <= n.raft_heartbeat_period:
        raise ConfigError(
            "node.raft_leader_fallback_timeout must exceed the heartbeat period "
            f"min(0.1, raft_min_timeout / 4) = {n.raft_heartbeat_period} s"
        )
    if n.raft_connection_retry < 0:
        raise ConfigError("node.raft_connection_retry must be >= 0")
    if n.raft_compaction_min_entries < 2 or n.raft_compaction_min_time <= 0:
        raise ConfigError(
            "node.raft_compaction_min_entries must be >= 2 and raft_compaction_min_time > 0"
        )
    if n.raft_compaction_log_bytes < 1:
        raise ConfigError("node.raft_compaction_log_bytes must be >= 1")
    if not 0 < n.raft_snapshot_duty_cycle <= 1:
        raise ConfigError("node.raft_snapshot_duty_cycle must be > 0 and <= 1")
    if not 0 <= n.raft_snapshot_nice <= 19:
        raise ConfigError("node.raft_snapshot_nice must be 0-19")
    if n.raft_command_timeout <= 0 or n.raft_snapshot_child_timeout <= 0:
        raise ConfigError("node.raft_command_timeout and raft_snapshot_child_timeout must be > 0")
    if n.raft_batch_max_commands < 1 or n.raft_batches_in_flight < 1:
        raise ConfigError("node.raft_batch_max_commands and raft_batches_in_flight must be >= 1")
    if n.raft_bind_retries < 0 or n.raft_journal_extent < 1 or n.raft_journal_floor < 0:
        raise ConfigError(
            "node.raft_bind_retries >= 0, raft_journal_extent >= 1, raft_journal_floor >= 0"
        )


def _validate_webhooks(w: WebhooksConfig) -> None:
    if min(w.poll_seconds, w.lease_seconds, w.backoff_seconds, w.backoff_max_seconds) <= 0:
        raise ConfigError("webhooks: poll, lease and backoff seconds must be > 0")
    if w.read_batch < 1 or w.batch_events < 1 or w.dead_letters_max < 1:
        raise ConfigError("webhooks.read_batch, batch_events and dead_letters_max must be >= 1")
    if w.max_attempts < 0 or w.max_age_seconds < 0:
        raise ConfigError("webhooks.max_attempts and max_age_seconds must be >= 0")
    try:
        parse_config_endpoints(w.endpoints)
    except RegistryError as exc:
        raise ConfigError(f"webhooks.endpoints: {exc.message}") from None


def _validate_replication(r: ReplicationConfig) -> None:
    if min(r.lease_seconds, r.poll_seconds, r.backoff_seconds) <= 0:
        raise ConfigError("replication.lease_seconds, poll_seconds, backoff_seconds must be > 0")
    if r.backoff_max_seconds < r.backoff_seconds:
        raise ConfigError("replication.backoff_max_seconds must be >= backoff_seconds")
    if min(r.read_batch, r.max_repositories, r.max_tags, r.max_referrers) < 1:
        raise ConfigError("replication.read_batch, max_repositories, max_tags, max_referrers >= 1")
    if r.referrer_depth < 0 or r.upload_chunk_bytes < 1024:
        raise ConfigError("replication.referrer_depth >= 0, upload_chunk_bytes >= 1024")
    if r.run_timeout_seconds < 0 or r.event_max_attempts < 0:
        raise ConfigError("replication.run_timeout_seconds and event_max_attempts must be >= 0")
    if r.dead_letters_max < 1:
        raise ConfigError("replication.dead_letters_max must be >= 1")
    try:
        parse_rules(r.rules)
    except RegistryError as exc:
        raise ConfigError(f"replication.rules: {exc.message}") from None


def _validate_mirror(m: MirrorConfig) -> None:
    seen: set[str] = set()
    for proxy in m.proxies:
        proxy.namespace = proxy.namespace.strip("/")
        if not proxy.namespace or "/" in proxy.namespace or proxy.namespace in seen:
            raise ConfigError(
                f"mirror: proxy namespace {proxy.namespace!r} must be one unique path segment"
            )
        seen.add(proxy.namespace)
        if not proxy.url.startswith(("http://", "https://")):
            raise ConfigError(f"mirror: proxy {proxy.namespace} url must be http(s)://")
        if proxy.password and proxy.password_file:
            raise ConfigError(f"mirror: proxy {proxy.namespace}: password or password_file")
        if proxy.password_file:
            try:
                proxy.password = Path(proxy.password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"mirror: cannot read {proxy.password_file}: {exc}") from exc
    if m.root and m.root not in seen:
        raise ConfigError(f"mirror.root {m.root!r} is not a proxy namespace")
    if min(m.tag_ttl_seconds, m.connect_timeout_seconds, m.response_timeout_seconds) < 0:
        raise ConfigError("mirror timeouts and tag_ttl_seconds must be >= 0")
    if min(m.max_concurrent_fetches, m.max_connections, m.tag_entries) < 1:
        raise ConfigError("mirror.max_concurrent_fetches, max_connections, tag_entries >= 1")
    if m.referrers_max_pages < 1:
        raise ConfigError("mirror.referrers_max_pages must be >= 1")
    if m.stream_memory_bytes < 0 or m.store_yield_seconds < 0:
        raise ConfigError("mirror.stream_memory_bytes and store_yield_seconds must be >= 0")
    if m.memory_pool_bytes < 0 or m.memory_blob_bytes < 0:
        raise ConfigError("mirror.memory_pool_bytes and memory_blob_bytes must be >= 0")
    if m.store_defer_bytes < 0 or m.store_quiet_seconds < 0 or m.max_concurrent_stores < 1:
        raise ConfigError(
            "mirror.store_defer_bytes and store_quiet_seconds must be >= 0, "
            "max_concurrent_stores >= 1"
        )


def _validate_scanner(sc: ScannerConfig) -> None:
    if sc.concurrency < 0 or sc.max_attempts < 1:
        raise ConfigError("scanner.concurrency must be >= 0 and scanner.max_attempts >= 1")
    if min(sc.max_layer_bytes, sc.max_unpacked_bytes, sc.max_file_bytes, sc.max_kept_bytes) < 1:
        raise ConfigError("scanner.max_*_bytes must be >= 1")
    if sc.scan_timeout_seconds <= 0 or sc.lease_seconds <= sc.scan_timeout_seconds:
        raise ConfigError("scanner.lease_seconds must exceed scanner.scan_timeout_seconds > 0")
    if sc.layer_cache_bytes < 0:
        raise ConfigError("scanner.layer_cache_bytes must be >= 0")
    if sc.yield_seconds < 0 or sc.max_defer_seconds < 0:
        raise ConfigError("scanner.yield_seconds and max_defer_seconds must be >= 0")
    if sc.read_rate_bytes < 0 or sc.retry_seconds < 0 or sc.poll_seconds <= 0:
        raise ConfigError("scanner.read_rate_bytes, retry_seconds >= 0; poll_seconds > 0")


def _validate_auth(a: AuthConfig) -> None:
    if a.mode not in ("none", "htpasswd", "token"):
        raise ConfigError("auth.mode must be none, htpasswd or token")
    if a.mode == "htpasswd" and not a.htpasswd:
        raise ConfigError("auth.mode = htpasswd needs auth.htpasswd (a bcrypt htpasswd file)")
    if a.mode == "token":
        if not a.signing_key and not a.verify_keys:
            raise ConfigError("auth.mode = token needs auth.signing_key or auth.verify_keys")
        if not a.signing_key and not a.realm:
            raise ConfigError("auth.mode = token with an external issuer needs auth.realm")
    if a.token_ttl_seconds < 1 or a.refresh_token_ttl_seconds < 1:
        raise ConfigError("auth.token_ttl_seconds and refresh_token_ttl_seconds must be >= 1")
    if a.revocation_check_interval < 0:
        raise ConfigError("auth.revocation_check_interval must be >= 0")
    if a.revocation_lease_renew_seconds <= 0:
        raise ConfigError("auth.revocation_lease_renew_seconds must be > 0")
    if a.login_failures_free < 0 or a.login_backoff_seconds <= 0:
        raise ConfigError("auth.login_failures_free >= 0 and login_backoff_seconds > 0")


def split_hostport(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); IPv6 in brackets is accepted."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"bad address {address!r}: want host:port")
    return host.strip("[]"), int(port)
