"""Per-call tokens, role keys, credentials and secret files (cargohold/cluster_auth.py,
cargohold/config.py)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from cargohold.cluster_auth import (
    AuthError,
    Credential,
    NonceCache,
    TokenVerifier,
    client_credential,
    format_credential,
    parse_credential,
    require_secret,
    role_key,
    sign,
    upload_id_key,
)
from cargohold.config import Config, load_config
from cargohold.errors import ConfigError
from gateway.auth.keys import load_signing_key

SECRET = "0123456789abcdef0123456789abcdef"
METHOD = "/cargohold.v1.Chunks/Put"


def verifier(skew: float = 30.0, cache: int = 1000) -> TokenVerifier:
    return TokenVerifier(SECRET, skew, cache)


def test_a_signed_call_names_its_role() -> None:
    for role in ("gateway", "node", "admin"):
        token = sign(Credential(role, role_key(SECRET, role)), METHOD)
        assert verifier().verify(token, METHOD) == role


def test_role_keys_are_distinct_and_cannot_claim_another_role() -> None:
    keys = {role_key(SECRET, r) for r in ("gateway", "node", "admin")}
    assert len(keys) == 3
    # A gateway key claiming the admin role: the MAC does not match the admin key.
    forged = sign(Credential("admin", role_key(SECRET, "gateway")), METHOD)
    with pytest.raises(AuthError, match="bad signature"):
        verifier().verify(forged, METHOD)


def test_refused_tokens() -> None:
    v = verifier()
    good = Credential("gateway", role_key(SECRET, "gateway"))
    with pytest.raises(AuthError, match="no credentials"):
        v.verify(None, METHOD)
    with pytest.raises(AuthError, match="malformed"):
        v.verify("gateway.1.2", METHOD)
    with pytest.raises(AuthError, match="malformed"):
        v.verify("root.1.n.m", METHOD)
    # Another cluster's secret.
    other = sign(Credential("gateway", role_key("another secret", "gateway")), METHOD)
    with pytest.raises(AuthError, match="bad signature"):
        v.verify(other, METHOD)
    # A token for one method is not valid for another.
    with pytest.raises(AuthError, match="bad signature"):
        v.verify(sign(good, METHOD), "/cargohold.v1.Chunks/Delete")


def test_replay_and_clock_skew_are_refused() -> None:
    v = verifier(skew=30.0)
    cred = Credential("node", role_key(SECRET, "node"))
    token = sign(cred, METHOD, now=1000.0)
    assert v.verify(token, METHOD, now=1001.0) == "node"
    with pytest.raises(AuthError, match="replayed"):
        v.verify(token, METHOD, now=1002.0)
    with pytest.raises(AuthError, match="clock-skew"):
        v.verify(sign(cred, METHOD, now=1000.0), METHOD, now=1031.0)
    with pytest.raises(AuthError, match="clock-skew"):
        v.verify(sign(cred, METHOD, now=1100.0), METHOD, now=1050.0)
    # The replayed token stays refused for as long as its timestamp is acceptable.
    with pytest.raises(AuthError):
        v.verify(token, METHOD, now=1029.0)


def test_nonce_cache_forgets_by_the_second_and_is_bounded() -> None:
    cache = NonceCache(window=10, max_entries=3)
    cache.add(100, "a", now=100)
    cache.add(100, "b", now=100)
    with pytest.raises(AuthError, match="replayed"):
        cache.add(100, "a", now=101)
    cache.add(101, "c", now=101)
    with pytest.raises(AuthError, match="full"):
        cache.add(101, "d", now=101)
    cache.add(120, "e", now=120)  # the old buckets are gone
    assert len(cache) == 1


def test_credentials_and_their_roles() -> None:
    text = format_credential(SECRET, "gateway")
    assert parse_credential(text) == Credential("gateway", role_key(SECRET, "gateway"))
    for bad in ("gateway", "root:" + "00" * 32, "gateway:zz", "gateway:" + "00" * 8):
        with pytest.raises(ConfigError):
            parse_credential(bad)
    cfg = Config()
    assert client_credential(cfg, "gateway") is None
    cfg.cluster.credential = text
    assert client_credential(cfg, "admin") == parse_credential(text)  # the credential wins
    with pytest.raises(ConfigError, match="not a admin credential"):
        require_secret(cfg, "admin")
    require_secret(cfg, "gateway")
    # Gateways with the secret and with only their credential sign upload ids alike.
    with_secret = Config()
    with_secret.cluster.secret = SECRET
    assert upload_id_key(cfg) == upload_id_key(with_secret) != ""


def test_no_default_secret_and_a_clear_refusal() -> None:
    cfg = load_config(environ={})
    assert cfg.cluster.secret == "" and cfg.cluster.credential == ""
    with pytest.raises(ConfigError, match=r"cluster\.secret"):
        require_secret(cfg, "node")
    with pytest.raises(ConfigError, match=r"cluster\.secret nor cluster\.credential"):
        require_secret(cfg, "gateway")


def test_secrets_from_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    cfg = load_config(environ={"CARGOHOLD_CLUSTER_SECRET_FILE": str(secret_file)})
    assert cfg.cluster.secret == SECRET
    cred_file = tmp_path / "cred"
    cred_file.write_text(format_credential(SECRET, "gateway"))
    cfg = load_config(overrides={"cluster.credential_file": str(cred_file)}, environ={})
    assert cfg.cluster.credential == format_credential(SECRET, "gateway")
    with pytest.raises(ConfigError, match="not both"):
        load_config(
            overrides={"cluster.secret": "x", "cluster.secret_file": str(secret_file)}, environ={}
        )
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_config(overrides={"cluster.secret_file": str(tmp_path / "empty")}, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(overrides={"cluster.secret_file": str(tmp_path / "absent")}, environ={})


REPO = Path(__file__).resolve().parents[2]


def test_nothing_committed_holds_a_usable_secret() -> None:
    committed = (REPO / "deploy" / "compose.env").read_text()
    assert "CARGOHOLD_CLUSTER_SECRET" not in committed.replace("# ", "")
    for name in ("node1.toml", "node2.toml", "node3.toml", "gateway.toml"):
        text = (REPO / "deploy" / name).read_text()
        assert not any(
            line.strip().startswith(("secret =", "credential =")) for line in text.splitlines()
        ), name
    assert "/deploy/secrets/" in (REPO / ".gitignore").read_text()


def test_compose_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    script = REPO / "scripts" / "cluster-secrets.sh"
    # The token key is given to this uid (not the image's user: no Docker needed here).
    env = {**os.environ, "CARGOHOLD_UID": str(os.getuid()), "CARGOHOLD_GID": str(os.getgid())}
    subprocess.run([str(script), str(target)], check=True, capture_output=True, env=env)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    key = target / "auth" / "token-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    key_id, _ = load_signing_key(str(key))  # a P-256 key the gateways accept
    node_env = (target / "node.env").read_text()
    for name in ("node.env", "gateway.env"):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
    secret = node_env.strip().split("=", 1)[1]
    assert len(secret) == 64
    gateway_env = (target / "gateway.env").read_text().strip()
    assert gateway_env == f"CARGOHOLD_CLUSTER_CREDENTIAL={format_credential(secret, 'gateway')}"
    subprocess.run([str(script), str(target)], check=True, capture_output=True, env=env)
    assert (target / "node.env").read_text() == node_env  # kept, not regenerated
    assert load_signing_key(str(key))[0] == key_id
    assert os.access(target / "node.env", os.R_OK)
