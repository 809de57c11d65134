"""The Raft port's message cipher: what pysyncobj calls its "encryptor".

pysyncobj seals every message of its TCP transport (`zlib(pickle(message))`) with an
object built from `SyncObjConf.password` and opens what it receives with the same object
before unpickling anything; its own is Fernet (AES-128-CBC + HMAC-SHA256, base64, a key
from PBKDF2 of the password). `TransportCipher` keeps that interface
(`encrypt_at_time`, `extract_timestamp`, `decrypt`) and seals with AES-256-GCM instead,
about 1 µs a message where Fernet took 10-30 µs to seal and as much to open (bench/README.md,
"Tag writes and the push storm at R=3"). node/metadata/pysyncobj_seam.py installs it.

A sealed message (`aes-gcm`):

    0x01 | sender (16 random bytes) | timestamp (i64, big-endian) | nonce (12) | ciphertext+tag

- The key: a master key from the cluster secret (PBKDF2-HMAC-SHA256, 100 000 rounds, a salt
  of our own), and under it one key per sender: HKDF-Expand(master, "... aes-gcm" +
  sender). Every `TransportCipher` (one per Raft member or utility client, per process
  start) draws a fresh random sender id, so its nonces, a 96-bit counter, never repeat under
  a key, however many messages a cluster sends over its life (random 96-bit nonces under
  one long-lived key would not allow that).
- The leading byte, the sender and the timestamp are authenticated (associated data): a
  message is accepted whole or not at all, and a wrong secret, a changed byte or a
  truncated message fails the tag check; pysyncobj then drops the connection, as it did
  for a bad Fernet token.
- The timestamp is pysyncobj's own (whole seconds of its monotonic clock), which it checks
  does not go backwards within a connection; with each side's random per-connection key
  inside every message (pysyncobj's handshake) a recorded connection cannot be replayed
  into a new one. `extract_timestamp` opens the message (so the timestamp it returns is
  authenticated, as Fernet's is) and keeps the plaintext for the `decrypt` of the same
  token that pysyncobj calls next.

Messages sealed by pysyncobj's Fernet (they start with "gAAAAA", never 0x01) are still
opened, with the key pysyncobj derives: a node sends them when `cluster.raft_cipher` is
`fernet`, which a rolling upgrade from a release before this cipher needs (docs/operations.md,
"Upgrades"). Every member of a cluster must therefore run a release that reads both before
any of them sends `aes-gcm`.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pysyncobj.encryptor import getEncryptor as _pysyncobj_fernet

AES_GCM = "aes-gcm"
FERNET = "fernet"
CIPHERS = (AES_GCM, FERNET)

_VERSION = b"\x01"
_SALT = b"cargohold raft transport v1"
_INFO = b"cargohold raft transport aes-gcm "
_HEADER = struct.Struct(">c16sq12s")  # version, sender, timestamp, nonce
_AAD_LEN = 1 + 16 + 8
_SENDERS_KEPT = 256  # keys of peers' senders cached (a restart makes a new sender)


class SealError(ValueError):
    """A message that is not one of ours, or whose tag does not check."""


@dataclass(frozen=True)
class RaftPassword:
    """What `SyncObjConf.password` holds: the cluster secret, the cipher to send with and
    the size from which a message is compressed (`node.raft_compress_min_bytes`)."""

    secret: str
    cipher: str = AES_GCM
    compress_min: int = 16 * 1024


def _master_key(secret: bytes) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=_SALT, iterations=100_000)
    return kdf.derive(secret)


def _sender_key(master: bytes, sender: bytes) -> AESGCM:
    return AESGCM(HKDFExpand(hashes.SHA256(), 32, _INFO + sender).derive(master))


class TransportCipher:
    """pysyncobj's encryptor interface over AES-256-GCM (module docstring); thread-safe."""

    def __init__(
        self, secret: str | bytes, cipher: str = AES_GCM, compress_min: int = 16 * 1024
    ) -> None:
        if cipher not in CIPHERS:
            raise ValueError(f"unknown Raft cipher {cipher!r}")
        self._secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._master = _master_key(self._secret)
        self._sender = os.urandom(16)
        self._sealer = _sender_key(self._master, self._sender)
        self._counter = itertools.count(1)
        self._openers: dict[bytes, AESGCM] = {}
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()
        # (token, timestamp, plaintext) of the last message opened by extract_timestamp.
        self._opened: tuple[bytes, int, bytes] | None = None
        if cipher == FERNET:
            self._fernet = _pysyncobj_fernet(self._secret)
        self.cipher = cipher
        # Read by the seam's send (pysyncobj_seam.py): shorter pickles are not compressed.
        self.compress_min = compress_min

    # -- pysyncobj's interface ------------------------------------------------------------
    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        if self.cipher == FERNET:
            return self._legacy().encrypt_at_time(data, current_time)
        nonce = next(self._counter).to_bytes(12, "big")
        header = _HEADER.pack(_VERSION, self._sender, int(current_time), nonce)
        return header + self._sealer.encrypt(nonce, data, header[:_AAD_LEN])

    def extract_timestamp(self, token: bytes) -> int:
        if token[:1] != _VERSION:
            return int(self._legacy().extract_timestamp(token))
        timestamp, plaintext = self._open(token)
        self._opened = (token, timestamp, plaintext)
        return timestamp

    def decrypt(self, token: bytes, ttl: int | None = None) -> bytes:
        if token[:1] != _VERSION:
            return bytes(self._legacy().decrypt(token, ttl))
        opened = self._opened
        if opened is not None and opened[0] is token:
            self._opened = None
            return opened[2]
        return self._open(token)[1]

    # -- ours -----------------------------------------------------------------------------
    def _open(self, token: bytes) -> tuple[int, bytes]:
        if len(token) < _HEADER.size + 16:
            raise SealError("short Raft message")
        _, sender, timestamp, nonce = _HEADER.unpack_from(token)
        opener = self._openers.get(sender)
        known = opener is not None
        if opener is None:
            opener = _sender_key(self._master, sender)
        try:
            plaintext = opener.decrypt(nonce, token[_HEADER.size :], token[:_AAD_LEN])
        except Exception as exc:  # cryptography's InvalidTag
            raise SealError("Raft message failed authentication") from exc
        if not known:
            # Kept only once a message from it checked: forged senders fill no cache.
            with self._lock:
                if len(self._openers) >= _SENDERS_KEPT:
                    self._openers.clear()
                self._openers[sender] = opener
        return int(timestamp), plaintext

    def _legacy(self) -> Any:
        fernet = self._fernet
        if fernet is None:
            with self._lock:
                if self._fernet is None:
                    self._fernet = _pysyncobj_fernet(self._secret)
                fernet = self._fernet
        return fernet


def encryptor_for(password: Any) -> TransportCipher:
    """The encryptor for a `SyncObjConf.password` (or a `TcpUtility` password): a
    `RaftPassword`, or a bare secret (then sending `aes-gcm`)."""
    if isinstance(password, RaftPassword):
        return TransportCipher(password.secret, password.cipher, password.compress_min)
    return TransportCipher(password)
