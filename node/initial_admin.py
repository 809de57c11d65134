"""The first registry user of a new cluster (`node.initial_admin`, set by the deploy
configs): a cluster admin with a generated password, so a registry that starts in token
mode can be logged into at all.

Only the Raft leader acts, and only while the cluster has no user at all. It generates a
password, stores its bcrypt hash with `user_put` (admin), then writes the password to
`<node.data_dir>/admin-password` (0600) and logs it once (`auth.initial_admin`, at
warning level so the default log level shows it). Once any user exists nothing happens,
on any node, ever again: the password is printed and written on the first start only.

A `user_put` whose outcome is unknown (leadership lost while committing) is settled by
the next look at the users: the stored hash is ours (write the file) or another
leader's (forget ours). A node that dies between the commit and the file write loses
the password; `cargohold admin users passwd <name>` sets a new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Protocol

import bcrypt

from cargohold import metadata_api as api
from cargohold.config import Config
from cargohold.errors import RegistryError
from cargohold.log import log_event

logger = logging.getLogger("cargohold.node")
PASSWORD_FILE = "admin-password"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_BCRYPT_ROUNDS = 12


class Leader(api.Transport, Protocol):
    """What this needs of node/metadata/raft.py's RaftMember."""

    def is_leader(self) -> bool: ...


def write_password(path: Path, password: str) -> None:
    """`password` into `path`, 0600 from the start, replacing any older file whole."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


async def ensure_initial_admin(raft: Leader, cfg: Config, interval: float = 1.0) -> None:
    """Create `node.initial_admin` if this node leads a cluster without users; returns once
    any user exists (module docstring)."""
    name = cfg.node.initial_admin
    if not name:
        return
    if not _NAME.fullmatch(name):
        log_event(logger, "auth.initial_admin_invalid", logging.ERROR, user=name)
        return
    meta = api.Metadata(raft)
    path = Path(cfg.node.data_dir) / PASSWORD_FILE
    pending: tuple[str, str] | None = None  # (password, hash) of a put of unknown outcome
    while True:
        if raft.is_leader():
            try:
                users = (await meta.access_list()).users
            except RegistryError:
                users = None
            if users:
                mine = next((u for u in users if u.name == name), None)
                if pending is not None and mine is not None and mine.password_hash == pending[1]:
                    await _announce(name, pending[0], path)
                return
            if users is not None:
                if pending is None:
                    password = secrets.token_urlsafe(18)
                    hashed = await asyncio.to_thread(_hash, password)
                    pending = (password, hashed)
                # The activity log records the creation as the system's, from this node.
                actor: api.Actor = {
                    "time": time.time(),
                    "actor": "initial-admin",
                    "actor_kind": "system",
                    "client": cfg.node.id,
                    "user_agent": "cargohold node (node.initial_admin)",
                }
                try:
                    await meta.user_put(api.UserPut(name, pending[1], False, True, audit=actor))
                except RegistryError as exc:
                    log_event(logger, "auth.initial_admin_retry", logging.INFO, error=str(exc))
                else:
                    await _announce(name, pending[0], path)
                    return
        await asyncio.sleep(interval)


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(_BCRYPT_ROUNDS)).decode()


async def _announce(name: str, password: str, path: Path) -> None:
    try:
        await asyncio.to_thread(write_password, path, password)
        where = str(path)
    except OSError as exc:
        where = f"(not written: {exc.strerror})"
    log_event(
        logger,
        "auth.initial_admin",
        logging.WARNING,
        user=name,
        password=password,
        file=where,
        note="shown once; change it with cargohold admin users passwd",
    )
