"""Signature trust in the replicated state: keys and pull policy per namespace."""

from __future__ import annotations

import hashlib
import io
import pickle

import pytest

from cargohold import audit
from cargohold.errors import NotFound, RequestInvalid
from node.metadata.state import MetadataState

PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQ\n-----END PUBLIC KEY-----\n"


def _state() -> MetadataState:
    st = MetadataState()
    st.apply("namespace_put", {"name": "prod", "visibility": "private"})
    return st


def test_keys_and_policy_need_an_existing_namespace_and_a_sane_key() -> None:
    st = _state()
    with pytest.raises(NotFound):
        st.apply("trust_key_put", {"namespace": "other", "name": "k", "pem": PEM})
    with pytest.raises(NotFound):
        st.apply("pull_policy_put", {"namespace": "other", "require_signature": True})
    with pytest.raises(RequestInvalid):  # not a PEM public key
        st.apply("trust_key_put", {"namespace": "prod", "name": "k", "pem": "ssh-ed25519 AAAA"})
    with pytest.raises(RequestInvalid):  # a bad key name
        st.apply("trust_key_put", {"namespace": "prod", "name": "Bad Name", "pem": PEM})
    with pytest.raises(NotFound):  # removing a key it does not hold
        st.apply("trust_key_put", {"namespace": "prod", "name": "k", "pem": None})
    assert st.query("trust_list", {}) == []


def test_keys_and_policy_are_listed_replaced_and_removed() -> None:
    st = _state()
    st.apply("trust_key_put", {"namespace": "prod", "name": "b", "pem": PEM})
    st.apply("trust_key_put", {"namespace": "prod", "name": "a", "pem": PEM})
    st.apply("pull_policy_put", {"namespace": "prod", "require_signature": True})
    assert st.query("trust_list", {}) == [
        {"namespace": "prod", "keys": {"a": PEM, "b": PEM}, "require_signature": True}
    ]
    st.apply("trust_key_put", {"namespace": "prod", "name": "a", "pem": None})
    st.apply("pull_policy_put", {"namespace": "prod", "require_signature": False})
    assert st.query("trust_list", {}) == [
        {"namespace": "prod", "keys": {"b": PEM}, "require_signature": False}
    ]
    st.apply("trust_key_put", {"namespace": "prod", "name": "b", "pem": None})
    assert st.query("trust_list", {}) == [] and st.trust == {}


def test_trust_survives_a_snapshot_and_older_snapshots_load_without_it() -> None:
    st = _state()
    older = st.dump()
    assert pickle.load(io.BytesIO(older))["version"] == 3  # nothing new: the old layout
    st.apply("trust_key_put", {"namespace": "prod", "name": "release", "pem": PEM})
    st.apply("pull_policy_put", {"namespace": "prod", "require_signature": True})
    data = st.dump()
    header = pickle.load(io.BytesIO(data))
    assert header["version"] == 4 and header["sections"][-1] == "trust"
    again = MetadataState()
    again.load(data)
    assert again.query("trust_list", {}) == st.query("trust_list", {})
    assert again.snapshot() == st.snapshot()
    old = MetadataState()
    old.load(older)
    assert old.trust == {} and "prod" in old.namespaces


def test_trust_changes_with_an_actor_are_in_the_activity_log() -> None:
    st = _state()
    actor = {"time": 5.0, "actor": "cli:ops", "actor_kind": "admin", "client": "host1"}
    st.apply("trust_key_put", {"namespace": "prod", "name": "rel", "pem": PEM, "audit": actor})
    st.apply("pull_policy_put", {"namespace": "prod", "require_signature": True, "audit": actor})
    st.apply("trust_key_put", {"namespace": "prod", "name": "rel", "pem": None, "audit": actor})
    st.apply("pull_policy_put", {"namespace": "prod", "require_signature": False})  # no actor
    records = [audit.decode(line) for line in st.audit.tail]
    pem_digest = hashlib.sha256(PEM.encode()).hexdigest()
    assert [
        (r["actor"], r["action"], r["repository"], r["reference"], r["detail"]) for r in records
    ] == [
        ("cli:ops", "admin", "prod", "trust:prod", f"key rel added (pem sha256:{pem_digest})"),
        ("cli:ops", "admin", "prod", "trust:prod", "require_signature on"),
        ("cli:ops", "admin", "prod", "trust:prod", "key rel removed"),
    ]
