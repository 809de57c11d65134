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
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


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
