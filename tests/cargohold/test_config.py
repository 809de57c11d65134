"""Config loading: defaults, file, environment and overrides, in that order."""

from __future__ import annotations

import pytest

from cargohold.config import load_config, split_hostport
from cargohold.errors import ConfigError


def test_defaults_are_valid_and_advertise_follows_listen() -> None:
    cfg = load_config(environ={})
    assert cfg.cluster.replicas == 3 and cfg.cluster.write_quorum == 2
    assert cfg.node.grpc_advertise == cfg.node.grpc_listen


def test_file_env_and_overrides_layer(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[cluster]\nreplicas = 1\nwrite_quorum = 1\n"
        '[node]\nid = "a"\ngrpc_listen = "0.0.0.0:9"\npeers = ["x:1", "y:2"]\n'
        "[gateway]\ndelete_enabled = false\n"
    )
    cfg = load_config(
        path,
        overrides={"node.id": "c"},
        environ={"CARGOHOLD_NODE_ID": "b", "CARGOHOLD_GATEWAY_NODES": "h:1, h:2"},
    )
    assert cfg.node.id == "c"
    assert cfg.node.peers == ["x:1", "y:2"]
    assert cfg.node.grpc_advertise == "0.0.0.0:9"
    assert cfg.gateway.nodes == ["h:1", "h:2"]
    assert cfg.gateway.delete_enabled is False


@pytest.mark.parametrize(
    "text",
    [
        "[cluster]\nreplicas = 0\n",
        "[cluster]\nbogus = 1\n",
        "[nope]\na = 1\n",
        "[cluster]\nwrite_quorum = 9\n",
        '[cluster]\nreplicas = "x"\n',
        "not toml [",
        "[node]\ngrpc_max_frame_size = 16777216\n",
        "[node]\ngrpc_max_frame_size = 1024\n",
        "[gateway]\nmanifest_digest_ttl_seconds = -1.0\n",
        "[gateway]\nchunk_writes_in_flight_total = 0\n",
        "[gateway]\nbackground_copies_per_node = 0\n",
        "[gateway]\nworkers = 0\n",
        "[gateway]\nworkers = 2\n",  # without a metrics_address for the workers
        '[gateway]\nworkers = 3\nmetrics_address = "127.0.0.1:65534"\n',
        "[gateway]\nworker_restart_delay_seconds = -1.0\n",
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_gateway_workers_from_a_file(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[gateway]\nworkers = 4\nmetrics_address = "127.0.0.1:9102"\n')
    cfg = load_config(path, environ={})
    assert cfg.gateway.workers == 4
    assert cfg.gateway.worker_restart_delay_seconds == 1.0


def test_split_hostport() -> None:
    assert split_hostport("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_hostport("[::1]:5000") == ("::1", 5000)
    with pytest.raises(ConfigError):
        split_hostport("nohost")


def test_auth_section(tmp_path) -> None:
    assert load_config(environ={}).auth.mode == "none"
    path = tmp_path / "c.toml"
    path.write_text(
        '[auth]\nmode = "token"\nsigning_key = "/k.pem"\nhtpasswd = "/h"\n'
        'verify_keys = ["/old.pem"]\ntoken_ttl_seconds = 60\n'
    )
    cfg = load_config(path, environ={})
    assert (cfg.auth.mode, cfg.auth.verify_keys, cfg.auth.token_ttl_seconds) == (
        "token",
        ["/old.pem"],
        60,
    )
    assert load_config(environ={"CARGOHOLD_AUTH_MODE": "htpasswd", "CARGOHOLD_AUTH_HTPASSWD": "/h"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth.mode": "ldap"}, "auth.mode must be"),
        ({"auth.mode": "htpasswd"}, "needs auth.htpasswd"),
        ({"auth.mode": "token"}, "needs auth.signing_key or auth.verify_keys"),
        ({"auth.mode": "token", "auth.verify_keys": "/k.pem"}, "external issuer needs auth.realm"),
    ],
)
def test_bad_auth_settings(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=values, environ={})


def test_mirror_proxies_as_tables_strings_and_env(tmp_path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    path = tmp_path / "c.toml"
    path.write_text(
        '[mirror]\ntag_ttl_seconds = 5\nroot = "hub"\n'
        '[[mirror.proxy]]\nnamespace = "hub"\nurl = "https://registry-1.docker.io"\n'
        f'username = "me"\npassword_file = "{secret}"\nhosts = ["docker.io"]\n'
        '[[mirror.proxy]]\nnamespace = "/ghcr/"\nurl = "https://ghcr.io"\n'
    )
    cfg = load_config(path, environ={})
    hub, ghcr = cfg.mirror.proxies
    assert (hub.namespace, hub.username, hub.password, hub.hosts) == (
        "hub",
        "me",
        "s3cret",
        ["docker.io"],
    )
    assert ghcr.namespace == "ghcr" and cfg.mirror.tag_ttl_seconds == 5
    env = load_config(environ={"CARGOHOLD_MIRROR_PROXIES": "a=http://x:1, b=https://y"})
    assert [(p.namespace, p.url) for p in env.mirror.proxies] == [
        ("a", "http://x:1"),
        ("b", "https://y"),
    ]


@pytest.mark.parametrize(
    "proxies",
    [
        "nourl",  # not NAMESPACE=URL
        "a=ftp://x",  # not http(s)
        "a/b=http://x",  # more than one segment
        "a=http://x,a=http://y",  # twice
    ],
)
def test_bad_mirror_proxies_are_refused(proxies: str) -> None:
    with pytest.raises(ConfigError):
        load_config(environ={"CARGOHOLD_MIRROR_PROXIES": proxies})


def test_mirror_root_must_be_a_proxy() -> None:
    with pytest.raises(ConfigError):
        load_config(
            environ={"CARGOHOLD_MIRROR_PROXIES": "a=http://x", "CARGOHOLD_MIRROR_ROOT": "b"}
        )


def test_pysyncobj_connection_timeout_is_the_one_pinned() -> None:
    from pysyncobj import SyncObjConf

    from cargohold.config import PYSYNCOBJ_CONNECTION_TIMEOUT

    assert SyncObjConf().connectionTimeout == PYSYNCOBJ_CONNECTION_TIMEOUT


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"node.raft_max_timeout": "4.0"}, r"raft_max_timeout must be <= 3.5 s"),
        ({"node.raft_min_timeout": "0.9"}, "raft_min_timeout must be > 0 and below"),
        ({"node.raft_min_timeout": "0"}, "raft_min_timeout must be > 0 and below"),
        ({"node.raft_leader_fallback_timeout": "0.05"}, "must exceed the heartbeat period"),
        ({"node.raft_connection_retry": "-1"}, "raft_connection_retry must be >= 0"),
        ({"node.raft_compaction_min_entries": "1"}, "raft_compaction_min_entries must be >= 2"),
        ({"node.raft_snapshot_duty_cycle": "0"}, "raft_snapshot_duty_cycle must be > 0"),
        ({"node.raft_snapshot_duty_cycle": "1.5"}, "raft_snapshot_duty_cycle must be > 0"),
        ({"node.raft_snapshot_nice": "20"}, "raft_snapshot_nice must be 0-19"),
        ({"node.raft_snapshot_nice": "-1"}, "raft_snapshot_nice must be 0-19"),
        ({"node.raft_compaction_min_time": "0"}, "raft_compaction_min_time > 0"),
        ({"node.raft_command_timeout": "0"}, "raft_command_timeout"),
        ({"node.raft_batches_in_flight": "0"}, "raft_batches_in_flight must be >= 1"),
        ({"node.raft_journal_extent": "0"}, "raft_journal_extent >= 1"),
    ],
)
def test_bad_raft_settings_are_refused_at_load(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=values, environ={})


def test_raft_settings_pysyncobj_accepts_at_the_limits(tmp_path) -> None:
    """What validation lets through, pysyncobj's own checks accept (no AssertionError)."""
    from pysyncobj import SyncObjConf

    cfg = load_config(
        overrides={
            "node.raft_max_timeout": "3.5",
            "node.raft_min_timeout": "0.01",
            "node.raft_leader_fallback_timeout": "0.003",
            "node.raft_compaction_min_entries": "2",
        },
        environ={},
    )
    n = cfg.node
    SyncObjConf(
        raftMinTimeout=n.raft_min_timeout,
        raftMaxTimeout=n.raft_max_timeout,
        appendEntriesPeriod=n.raft_heartbeat_period,
        leaderFallbackTimeout=n.raft_leader_fallback_timeout,
        connectionRetryTime=n.raft_connection_retry,
        logCompactionMinEntries=n.raft_compaction_min_entries,
        logCompactionMinTime=n.raft_compaction_min_time,
        fullDumpFile=str(tmp_path / "dump"),
    ).validate()


def test_drop_written_pages_modes_and_the_booleans_it_took_before(tmp_path) -> None:
    assert load_config(environ={}).node.drop_written_pages == "unread"
    path = tmp_path / "c.toml"
    path.write_text("[node]\ndrop_written_pages = true\n")
    assert load_config(path, environ={}).node.drop_written_pages == "always"
    env = {"CARGOHOLD_NODE_DROP_WRITTEN_PAGES": "false"}
    assert load_config(environ=env).node.drop_written_pages == "never"
    assert (
        load_config(
            overrides={"node.drop_written_pages": "Always"}, environ={}
        ).node.drop_written_pages
        == "always"
    )
    with pytest.raises(ConfigError, match="drop_written_pages must be unread"):
        load_config(overrides={"node.drop_written_pages": "sometimes"}, environ={})
