"""The first registry user: created once by the leader of a cluster without users, its
password written 0600 and logged once; never again once a user exists."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from cargohold.config import Config
from cargohold.errors import Unavailable
from node.initial_admin import PASSWORD_FILE, ensure_initial_admin
from node.metadata.state import MetadataState


class FakeLeader:
    """A Raft member over one in-memory state; `lose_next` commands apply but answer
    Unavailable (an outcome the caller cannot know)."""

    def __init__(self, leader_after: int = 0) -> None:
        self.state = MetadataState()
        self.polls = 0
        self.leader_after = leader_after
        self.lose_next = 0
        self.commands: list[str] = []

    def is_leader(self) -> bool:
        self.polls += 1
        return self.polls > self.leader_after

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        self.commands.append(op)
        result = self.state.apply(op, args)
        if self.lose_next:
            self.lose_next -= 1
            raise Unavailable("outcome unknown")
        return result

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        return self.state.query(op, args)


def _cfg(tmp_path: Path, name: str = "admin") -> Config:
    cfg = Config()
    cfg.node.data_dir = str(tmp_path)
    cfg.node.initial_admin = name
    return cfg


def _users(raft: FakeLeader) -> list[dict[str, Any]]:
    return list(raft.state.query("access_list", {})["users"])


async def test_leader_creates_the_admin_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cargohold.node")
    raft = FakeLeader(leader_after=2)  # a follower first: it waits
    await ensure_initial_admin(raft, _cfg(tmp_path), interval=0)
    (user,) = _users(raft)
    assert user["name"] == "admin" and user["admin"] and not user["disabled"]
    path = tmp_path / PASSWORD_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    password = path.read_text().strip()
    assert bcrypt.checkpw(password.encode(), user["password_hash"].encode())
    # The activity log names the system as the creator.
    (line_json,) = raft.state.query("audit_tail", {})["records"]
    record = json.loads(line_json)  # [seq, prev, time, actor, actor_kind, client, ...]
    assert record[3:6] == ["initial-admin", "system", "n1"], record
    (line,) = [r for r in caplog.records if r.msg == "auth.initial_admin"]
    assert line.levelno == logging.WARNING
    assert line.fields["password"] == password  # type: ignore[attr-defined]
    assert line.fields["file"] == str(path)  # type: ignore[attr-defined]

    # A second start (any node) finds a user and does nothing: no new password.
    caplog.clear()
    await ensure_initial_admin(raft, _cfg(tmp_path / "other"), interval=0)
    assert raft.commands == ["user_put"]
    assert not (tmp_path / "other" / PASSWORD_FILE).exists()
    assert not [r for r in caplog.records if r.msg == "auth.initial_admin"]


async def test_unknown_outcome_settled_by_the_stored_hash(tmp_path: Path) -> None:
    raft = FakeLeader()
    raft.lose_next = 1  # committed, but the caller was told "unknown"
    await ensure_initial_admin(raft, _cfg(tmp_path), interval=0)
    assert raft.commands == ["user_put"]  # not sent twice with another password
    (user,) = _users(raft)
    password = (tmp_path / PASSWORD_FILE).read_text().strip()
    assert bcrypt.checkpw(password.encode(), user["password_hash"].encode())


async def test_off_or_invalid_name_or_existing_users_do_nothing(tmp_path: Path) -> None:
    raft = FakeLeader()
    await ensure_initial_admin(raft, _cfg(tmp_path, ""), interval=0)
    await ensure_initial_admin(raft, _cfg(tmp_path, "Not Valid"), interval=0)
    assert raft.commands == [] and _users(raft) == []
    hashed = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()
    raft.state.apply("user_put", {"name": "ops", "password_hash": hashed})
    await ensure_initial_admin(raft, _cfg(tmp_path), interval=0)
    assert [u["name"] for u in _users(raft)] == ["ops"]
    assert not (tmp_path / PASSWORD_FILE).exists()
