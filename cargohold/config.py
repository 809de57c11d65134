"""Configuration: every tunable of a node, a gateway and the cluster, as dataclasses.

Configuration is data, loaded once at process start by `load_config` and passed down.
Sources, later ones winning:

1. the defaults below;
2. a TOML file (`--config FILE`) with the sections `[cluster]`, `[node]`, `[gateway]`,
   `[lifecycle]`, `[auth]`;
3. environment variables `CARGOHOLD_<SECTION>_<FIELD>` (for example
   `CARGOHOLD_NODE_ID=n1`, `CARGOHOLD_GATEWAY_NODES=node1:7001,node2:7001`); lists are
   comma-separated, booleans `1/0/true/false`;
4. explicit overrides from the command line (a dict of dotted keys).

Every limit the system enforces (sizes, timeouts, rates) is named here with its default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.errors import ConfigError
from cargohold.lifecycle_rules import parse_rule

MiB = 1024 * 1024
GiB = 1024 * MiB


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
    # Raft timings (docs/raft.md says why these values).
    raft_min_timeout: float = 0.3
    raft_max_timeout: float = 0.9
    raft_connection_retry: float = 0.5
    raft_leader_fallback_timeout: float = 2.0
    raft_compaction_min_entries: int = 50_000
    raft_compaction_min_time: float = 600.0
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
    # gRPC message limit (a chunk plus headroom).
    grpc_max_message: int = 64 * MiB
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
    # Unread body bytes a connection buffers before its socket is no longer read (about
    # twice this, plus one socket read); a body being read under the budget uses
    # `body_read_bytes` instead.
    read_buffer_bytes: int = 16 * 1024
    body_read_bytes: int = 256 * 1024
    body_idle_timeout_seconds: float = 30.0
    # Data path (gateway/cluster/, gateway/uploads.py):
    # how often the member list and the Raft leader are re-learned from the cluster.
    members_refresh_seconds: float = 5.0
    # A node that answered a chunk write with StorageFull (or says disk_full when a
    # refresh asks every active member) gets no chunk writes for this long, unless too few
    # others have space (gateway/cluster/fullness.py); each refresh asks again.
    full_node_recheck_seconds: float = 10.0
    # Metadata command/query attempts across nodes on UNAVAILABLE, and the first backoff
    # (doubled per attempt, capped at 1 s).
    metadata_attempts: int = 6
    retry_backoff_seconds: float = 0.05
    # Chunk writes in flight per upload while more of the body is read (memory bound:
    # about (this + 1) * cluster.chunk_size per upload).
    upload_writes_in_flight: int = 4
    # ... and across all uploads of this gateway (bounds its write-buffer memory to about
    # this many chunks, plus one being cut per upload).
    chunk_writes_in_flight_total: int = 64
    # Chunks at least this large are offered with Chunks.Has first, so a node that
    # already holds one is not sent the bytes again.
    has_check_min_bytes: int = 1024 * 1024
    # Running upload hashes kept per gateway (an LRU; a miss rebuilds from stored bytes).
    upload_hash_cache_entries: int = 1024
    # How a gateway verifies chunk bytes read from a node: "xxh3" (the checksum the node
    # verified its stored copy against, re-checked on the received bytes; far cheaper) or
    # "sha256" (re-hash against the chunk id, end to end; its cost is in bench/README.md).
    verify_reads: str = "xxh3"
    # Largest blob an upload may commit (bytes); 0 means no limit.
    max_blob_size: int = 0
    # Manifest bodies are immutable by digest: an LRU of this many bytes in each gateway.
    manifest_cache_bytes: int = 64 * MiB
    # Concurrent identical manifest/tag reads share one linearizable query (see
    # gateway/coalesce.py); off: one query per request.
    coalesce_manifest_reads: bool = True
    # GET/HEAD of a manifest by digest answer from this gateway's cache of (repo, digest)
    # -> record+body for this many seconds after the cluster last confirmed it (a delete
    # through this gateway drops it at once); 0 = always confirm (linearizable).
    # See gateway/manifests.py for the staleness bound across gateways.
    manifest_digest_ttl_seconds: float = 1.0
    # ... and at most this many (repo, digest) records are kept (an LRU).
    manifest_digest_cache_entries: int = 10_000
    # `Retry-After` seconds sent with 503 and 429 when the error names none.
    retry_after_seconds: int = 1
    # Seconds a SIGTERM'd gateway lets in-flight requests finish before closing them.
    shutdown_grace_seconds: float = 10.0
    # Freed memory this process keeps for reuse (cargohold/memtune.py); 0 = glibc defaults.
    malloc_retain_bytes: int = 256 * MiB
    # Prometheus metrics (`/metrics`): empty = served on `listen` next to `/v2/`, with
    # `/healthz` and `/readyz`; "host:port" = served only on that separate listener (plain
    # HTTP; keep it on an internal network), with `/healthz` and `/readyz` on both.
    metrics_address: str = ""
    # `/readyz` asks the cluster (a linearizable read, so a Raft majority answers, and an
    # Admin.Status probe of every active node, W of which must take writes) at most once
    # per `readiness_cache_seconds`, each probe bounded by `readiness_timeout_seconds`.
    readiness_timeout_seconds: float = 2.0
    readiness_cache_seconds: float = 1.0


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


@dataclass
class AuthConfig:
    """Who may use the registry (gateway/auth/, docs/security.md "Registry users")."""

    # "none" (anyone may do anything), "htpasswd" (HTTP Basic against `htpasswd`) or
    # "token" (Docker registry token auth: Bearer JWTs from `realm`).
    mode: str = "none"
    # A bcrypt-only htpasswd file (`htpasswd -B`): the users of "htpasswd" mode, and of the
    # built-in token service if set (its users may then do everything). Re-read when its
    # modification time or size changes, looked at at most every `htpasswd_check_seconds`.
    # Token mode without it: users, namespaces and roles of the cluster metadata
    # (`cargohold admin users|namespaces`), re-read every `directory_refresh_seconds` (how
    # long a disabled user or revoked grant may still work on a gateway).
    htpasswd: str = ""
    htpasswd_check_seconds: float = 1.0
    directory_refresh_seconds: float = 2.0
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
class Config:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log_level: str = "warning"
    # Not a setting: the role this process calls nodes as ("gateway", "node", "admin"),
    # set by its entry point (cargohold/cluster_auth.py).
    role: str = "gateway"


_SECTIONS = ("cluster", "node", "gateway", "lifecycle", "auth")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a TOML/env/CLI value into the field's declared type."""
    origin = typing.get_origin(annotation)
    try:
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


def _apply(section_obj: Any, section: str, values: dict[str, Any]) -> None:
    hints = typing.get_type_hints(type(section_obj))
    names = {f.name for f in dataclasses.fields(section_obj)}
    for key, value in values.items():
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


def validate(cfg: Config) -> None:
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
    if not 16 * 1024 <= cfg.node.grpc_max_frame_size <= 16 * MiB - 1:
        raise ConfigError("node.grpc_max_frame_size must be between 16 KiB and 16 MiB - 1")
    if cfg.gateway.manifest_digest_ttl_seconds < 0:
        raise ConfigError("gateway.manifest_digest_ttl_seconds must be >= 0")
    if cfg.gateway.verify_reads not in ("sha256", "xxh3"):
        raise ConfigError("gateway.verify_reads must be sha256 or xxh3")
    if not 0.0 <= cfg.node.disk_reserve_fraction < 1.0 or cfg.node.disk_reserve_max_bytes < 0:
        raise ConfigError(
            "node.disk_reserve_fraction must be in [0, 1) and disk_reserve_max_bytes >= 0"
        )
    if c.auth_max_skew <= 0 or c.auth_nonce_cache_max < 1:
        raise ConfigError("cluster.auth_max_skew and auth_nonce_cache_max must be > 0")
    life = cfg.lifecycle
    if life.gc_interval_seconds < 0 or life.gc_grace_seconds < 0 or life.gc_rate_chunks < 0:
        raise ConfigError("lifecycle.gc_interval_seconds, gc_grace_seconds, gc_rate_chunks >= 0")
    if life.gc_delete_batch < 1 or life.gc_prune_batch < 1:
        raise ConfigError("lifecycle.gc_delete_batch and gc_prune_batch must be >= 1")
    for rule in life.immutable_tags:
        parse_rule(rule)
    if cfg.gateway.upload_writes_in_flight < 1 or cfg.gateway.metadata_attempts < 1:
        raise ConfigError("gateway.upload_writes_in_flight and metadata_attempts must be >= 1")
    _validate_auth(cfg.auth)


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
    if a.login_failures_free < 0 or a.login_backoff_seconds <= 0:
        raise ConfigError("auth.login_failures_free >= 0 and login_backoff_seconds > 0")


def split_hostport(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); IPv6 in brackets is accepted."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"bad address {address!r}: want host:port")
    return host.strip("[]"), int(port)
