"""The Raft port's message cipher (node/metadata/raft_cipher.py): sealed messages open only
with the same secret and unchanged, keep their timestamp, hide their content, never reuse a
nonce, and Fernet messages of pysyncobj's format still open; a group whose members send
different ciphers commits, and a utility client with a wrong secret gets nothing. Small
messages leave uncompressed only with AES-GCM, and pysyncobj's receiving code reads both."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pysyncobj.encryptor import getEncryptor
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.utility import UtilityException

from cargohold.config import Config, validate
from cargohold.errors import ConfigError
from cargohold_cli.devcluster import free_port
from node.metadata.raft import RaftMember, raft_utility
from node.metadata.raft_cipher import (
    FERNET,
    RaftPassword,
    SealError,
    TransportCipher,
    encryptor_for,
)

SECRET = "test-secret"
MESSAGE = b"a pickled append_entries, compressed " * 4


def test_a_sealed_message_opens_with_its_timestamp_and_plaintext() -> None:
    sender, receiver = TransportCipher(SECRET), TransportCipher(SECRET)
    token = sender.encrypt_at_time(MESSAGE, 1234)
    assert receiver.extract_timestamp(token) == 1234
    assert receiver.decrypt(token) == MESSAGE
    # Opened again without the timestamp step (not pysyncobj's order, but valid).
    assert receiver.decrypt(token) == MESSAGE
    assert MESSAGE[:16] not in token


def test_a_wrong_secret_opens_nothing() -> None:
    token = TransportCipher(SECRET).encrypt_at_time(MESSAGE, 5)
    other = TransportCipher("another-secret")
    with pytest.raises(SealError):
        other.extract_timestamp(token)
    with pytest.raises(SealError):
        other.decrypt(token)


def test_every_changed_byte_and_a_truncation_are_refused() -> None:
    sender, receiver = TransportCipher(SECRET), TransportCipher(SECRET)
    token = sender.encrypt_at_time(MESSAGE, 7)
    for i in range(1, len(token)):  # byte 0 picks the format: changed, it is no Fernet either
        changed = token[:i] + bytes([token[i] ^ 0x01]) + token[i + 1 :]
        with pytest.raises(SealError):
            receiver.extract_timestamp(changed)
    with pytest.raises(Exception):  # noqa: B017 - Fernet's InvalidToken
        receiver.decrypt(b"\x02" + token[1:])
    with pytest.raises(SealError):
        receiver.decrypt(token[:-1])
    with pytest.raises(SealError):
        receiver.decrypt(token[:20])


def test_a_forged_sender_leaves_no_key_behind() -> None:
    """Keys of unknown senders are kept only once one of their messages checked, so a peer
    without the secret cannot fill the cache with senders of its own making."""
    receiver, stranger = TransportCipher(SECRET), TransportCipher("another-secret")
    for _ in range(3):
        with pytest.raises(SealError):
            receiver.extract_timestamp(
                TransportCipher("another-secret").encrypt_at_time(MESSAGE, 1)
            )
    with pytest.raises(SealError):
        receiver.extract_timestamp(stranger.encrypt_at_time(MESSAGE, 1))
    assert receiver._openers == {}
    receiver.extract_timestamp(TransportCipher(SECRET).encrypt_at_time(MESSAGE, 1))
    assert len(receiver._openers) == 1


def test_a_forged_timestamp_is_refused() -> None:
    sender, receiver = TransportCipher(SECRET), TransportCipher(SECRET)
    token = sender.encrypt_at_time(MESSAGE, 7)
    forged = token[:17] + struct.pack(">q", 10**9) + token[25:]
    with pytest.raises(SealError):
        receiver.extract_timestamp(forged)


def test_nonces_never_repeat_and_each_cipher_has_its_own_sender() -> None:
    first, second = TransportCipher(SECRET), TransportCipher(SECRET)
    tokens = [first.encrypt_at_time(MESSAGE, 1) for _ in range(100)]
    nonces = {token[25:37] for token in tokens}
    assert len(nonces) == 100
    assert {token[1:17] for token in tokens} == {tokens[0][1:17]}
    assert second.encrypt_at_time(MESSAGE, 1)[1:17] != tokens[0][1:17]
    assert all(second.decrypt(token) == MESSAGE for token in tokens)


def test_fernet_messages_still_open_both_ways() -> None:
    ours = TransportCipher(SECRET)
    pysyncobjs = getEncryptor(SECRET)
    legacy = pysyncobjs.encrypt_at_time(MESSAGE, 42)
    assert ours.extract_timestamp(legacy) == 42
    assert ours.decrypt(legacy) == MESSAGE
    sending_fernet = TransportCipher(SECRET, FERNET)
    token = sending_fernet.encrypt_at_time(MESSAGE, 43)
    assert pysyncobjs.extract_timestamp(token) == 43
    assert pysyncobjs.decrypt(token) == MESSAGE
    with pytest.raises(Exception):  # noqa: B017 - Fernet's InvalidToken
        TransportCipher("another-secret").decrypt(legacy)


def test_the_password_picks_the_cipher_sent() -> None:
    assert encryptor_for(SECRET).cipher == "aes-gcm"
    assert encryptor_for(RaftPassword(SECRET, FERNET)).cipher == FERNET
    with pytest.raises(ValueError):
        TransportCipher(SECRET, "rot13")


def test_an_unknown_cipher_is_a_config_error() -> None:
    cfg = Config()
    cfg.cluster.raft_cipher = "none"
    with pytest.raises(ConfigError):
        validate(cfg)


async def test_a_group_sending_both_ciphers_commits_and_a_wrong_secret_is_refused(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """The rolling upgrade's middle: one member sends Fernet, two AES-GCM."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    group = []
    for i, address in enumerate(addresses):
        cfg = Config()
        cfg.node.data_dir = str(tmp_path / f"m{i}")
        cfg.node.raft_listen = cfg.node.raft_advertise = address
        cfg.node.peers = [a for a in addresses if a != address]
        cfg.cluster.secret = SECRET
        cfg.cluster.raft_cipher = FERNET if i == 0 else "aes-gcm"
        # Slow elections: three members in one loaded process must keep one leader.
        cfg.node.raft_command_timeout = 60.0
        cfg.node.raft_min_timeout, cfg.node.raft_max_timeout = 1.5, 3.0
        cfg.node.raft_leader_fallback_timeout = 30.0
        group.append(members(cfg))
    deadline = time.monotonic() + 20
    while not any(m.is_leader() for m in group):
        assert time.monotonic() < deadline, "no leader elected"
        await asyncio.sleep(0.05)
    leader = next(m for m in group if m.is_leader())
    tag = {
        "repo": "raft/cipher",
        "digest": "sha256:" + "ab" * 32,
        "media_type": "application/json",
        "recipe": {"size": 0, "chunks": []},
        "tag": "t1",
        "now": 1.0,
    }
    await leader.command("manifest_put", tag)
    for member in group:
        record = await member.query(
            "tag_get", {"repo": "raft/cipher", "tag": "t1"}, linearizable=True
        )
        assert record["digest"] == tag["digest"]
    status = await asyncio.to_thread(raft_utility, addresses[0], SECRET, ["status"], 5.0)
    assert status["self"].address == addresses[0]
    status = await asyncio.to_thread(raft_utility, addresses[1], SECRET, ["status"], 5.0, FERNET)
    assert status["self"].address == addresses[1]
    with pytest.raises(UtilityException):
        await asyncio.to_thread(raft_utility, addresses[1], "another-secret", ["status"], 2.0)


def _sealed(cipher: TransportCipher | None, message: object) -> bytes:
    """What pysyncobj's TcpConnection (with the seam's send) queues for `message`."""
    conn = TcpConnection(poller=None)  # never connected: the bytes stay in its buffer
    conn.encryptor = cipher
    conn.send(message)
    return bytes(conn._TcpConnection__writeBuffer)  # type: ignore[attr-defined]


def _received(cipher: TransportCipher, wire: bytes) -> object:
    conn = TcpConnection(poller=None)
    conn.encryptor = cipher
    conn._TcpConnection__readBuffer = wire  # type: ignore[attr-defined]
    return conn._TcpConnection__processParseMessage()  # type: ignore[attr-defined]


def test_small_messages_are_sealed_uncompressed_and_large_ones_compressed() -> None:
    sender = TransportCipher(SECRET, compress_min=1024)
    receiver = TransportCipher(SECRET)
    small = {"type": "next_node_idx", "next_node_idx": 12, "success": True}
    large = {"type": "append_entries", "entries": [(b"x" * 4096, 13, 2)]}
    for message, compressed in ((small, False), (large, True)):
        wire = _sealed(sender, message)
        assert struct.unpack("i", wire[:4])[0] == len(wire) - 4
        plaintext = receiver.decrypt(wire[4:])
        assert (plaintext[:1] != b"\x80") is compressed
        assert _received(receiver, wire) == message
    assert len(_sealed(sender, large)) < 1024  # 4 KiB of one byte compress well


def test_fernet_senders_compress_everything_as_pysyncobj_did() -> None:
    sender = TransportCipher(SECRET, FERNET, compress_min=1024)
    small = {"type": "next_node_idx", "next_node_idx": 12, "success": True}
    wire = _sealed(sender, small)
    pysyncobjs = getEncryptor(SECRET)
    assert zlib.decompress(pysyncobjs.decrypt(wire[4:]))[:1] == b"\x80"
    assert _received(TransportCipher(SECRET), wire) == small


def test_a_connection_without_a_cipher_is_pysyncobjs() -> None:
    message = {"type": "request_vote", "term": 3}
    wire = _sealed(None, message)
    assert zlib.decompress(wire[4:])[:1] == b"\x80"
