"""SPA's bytes and keys: authorizations, revocation lists, registration proofs,
key files (docs/protocol.md 6.4 and 11).

Shared by the three roles of SPA, which live in their own modules: the
authority that issues (`authority`), the service that proves (`identity`) and
the gateways and routers that check (`validator`). Pure logic: no sockets.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..dataplane.admission import Refused
from ..dataplane.names import InvalidName, Name


REASONS = ("unauthorized", "expired", "revoked", "out_of_subtree", "tampered",
           "bad_proof", "replayed")

VERSION = 1
KEY_ID_LEN = 8
PUBKEY_LEN = 32
SIG_LEN = 64
NONCE_LEN = 16
U64_MAX = (1 << 64) - 1

# version, serial, not_before, not_after, prefix length (6.4)
_AUTH_HEAD = struct.Struct("!BQQQB")
_AUTH_TAIL_LEN = PUBKEY_LEN + KEY_ID_LEN + SIG_LEN
AUTH_MIN_LEN = _AUTH_HEAD.size + _AUTH_TAIL_LEN  # 130: empty prefix
# key id, signing time (SPA_SIGNATURE TLV value, section 6)
PROOF_HEAD = struct.Struct("!8sQ")
PROOF_LEN = PROOF_HEAD.size + SIG_LEN  # 80
# version, authority key id, sequence, issued at, next update, count (section 11)
_CRL_HEAD = struct.Struct("!B8sQQQI")

# Domain-separation strings: a signature made for one purpose never verifies
# for another. (The authorization itself is signed bare, as 6.4 specifies; its
# first byte is the version 0x01, which no context string starts with.)
REGISTER_CONTEXT = b"DMSC-SPA-REGISTER\0"
CRL_CONTEXT = b"DMSC-SPA-CRL\0"

# Default not_before is backdated so that a router whose clock lags the
# authority's by up to a minute does not see a fresh authorization as not-yet-valid.
ISSUE_BACKDATE_S = 60
DEFAULT_VALIDITY_S = 30 * 86400
DEFAULT_CRL_VALIDITY_S = 7 * 86400
PROOF_MAX_AGE_S = 60.0
PROOF_MAX_SKEW_S = 10.0
CACHE_MAX = 65536  # validator results kept (authorization, prefix)


class SpaError(Refused):
    """An SPA rejection; `reason` is one of REASONS (the counter name)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(reason, detail)


def key_id(pubkey: bytes) -> bytes:
    """First 8 bytes of SHA-256 of a raw 32-byte public key: short, stable handle."""
    return hashlib.sha256(bytes(pubkey)).digest()[:KEY_ID_LEN]


def u64(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} {value!r} is not an unsigned 64-bit integer")
    return value


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def verify(pub: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        pub.verify(signature, message)
        return True
    except InvalidSignature:
        return False


def public_key_object(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != PUBKEY_LEN:
        raise ValueError(f"an Ed25519 public key has {PUBKEY_LEN} bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(bytes(raw))


# --------------------------------------------------------------------------
# Wire objects


@dataclass(frozen=True)
class Authorization:
    """One decoded SPA authorization (docs/protocol.md 6.4)."""

    serial: int
    not_before: int
    not_after: int
    prefix: Name
    service_key: bytes
    authority_id: bytes
    signature: bytes = b"\0" * SIG_LEN

    def __post_init__(self) -> None:
        u64(self.serial, "serial")
        u64(self.not_before, "not_before")
        u64(self.not_after, "not_after")
        if len(self.service_key) != PUBKEY_LEN:
            raise ValueError("service_key must be 32 bytes")
        if len(self.authority_id) != KEY_ID_LEN:
            raise ValueError("authority_id must be 8 bytes")
        if len(self.signature) != SIG_LEN:
            raise ValueError("signature must be 64 bytes")

    def signed_part(self) -> bytes:
        """Every byte before the signature: what the authority signs."""
        pw = self.prefix.wire
        return (_AUTH_HEAD.pack(VERSION, self.serial, self.not_before, self.not_after, len(pw))
                + pw + self.service_key + self.authority_id)

    def encode(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> "Authorization":
        """Parse; any structural problem is SpaError('unauthorized')."""
        data = bytes(data)
        if len(data) < AUTH_MIN_LEN:
            raise SpaError("unauthorized", f"authorization of {len(data)} bytes")
        version, serial, nb, na, plen = _AUTH_HEAD.unpack_from(data)
        if version != VERSION:
            raise SpaError("unauthorized", f"authorization version {version}")
        if len(data) != AUTH_MIN_LEN + plen:
            raise SpaError("unauthorized",
                           f"authorization of {len(data)} bytes; prefix length says "
                           f"{AUTH_MIN_LEN + plen}")
        i = _AUTH_HEAD.size
        try:
            prefix = Name.from_wire(data[i:i + plen])
        except InvalidName as exc:
            raise SpaError("unauthorized", f"authorized prefix: {exc}") from None
        i += plen
        return cls(serial, nb, na, prefix, data[i:i + PUBKEY_LEN],
                   data[i + PUBKEY_LEN:i + PUBKEY_LEN + KEY_ID_LEN],
                   data[i + PUBKEY_LEN + KEY_ID_LEN:])

    @property
    def service_key_id(self) -> bytes:
        return key_id(self.service_key)

    def valid_at(self, now: float) -> bool:
        """The window is half open: valid from not_before until just before not_after."""
        return self.not_before <= now < self.not_after

    def covers(self, prefix: Name) -> bool:
        return self.prefix.is_prefix_of(prefix)


@dataclass(frozen=True)
class RevocationList:
    """A signed list of revoked serials of one authority (docs/protocol.md 11.2)."""

    authority_id: bytes
    sequence: int
    issued_at: int
    next_update: int
    serials: Tuple[int, ...] = ()
    signature: bytes = b"\0" * SIG_LEN

    def signed_part(self) -> bytes:
        serials = sorted(set(self.serials))
        return (_CRL_HEAD.pack(VERSION, self.authority_id, self.sequence, self.issued_at,
                               self.next_update, len(serials))
                + b"".join(struct.pack("!Q", s) for s in serials))

    def encode(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> "RevocationList":
        """Parse; malformed or non-canonical bytes are SpaError('unauthorized')."""
        data = bytes(data)
        if len(data) < _CRL_HEAD.size + SIG_LEN:
            raise SpaError("unauthorized", f"revocation list of {len(data)} bytes")
        version, aid, seq, issued, nxt, count = _CRL_HEAD.unpack_from(data)
        if version != VERSION:
            raise SpaError("unauthorized", f"revocation list version {version}")
        if len(data) != _CRL_HEAD.size + 8 * count + SIG_LEN:
            raise SpaError("unauthorized", "revocation list length does not match its count")
        serials = struct.unpack_from(f"!{count}Q", data, _CRL_HEAD.size)
        if any(a >= b for a, b in zip(serials, serials[1:])):
            raise SpaError("unauthorized", "revoked serials are not strictly ascending")
        return cls(aid, seq, issued, nxt, tuple(serials), data[-SIG_LEN:])


def decode_proof(proof: bytes) -> Tuple[bytes, int, bytes]:
    """SPA_SIGNATURE value -> (key id, signing time, signature); SpaError('bad_proof')."""
    if len(proof) != PROOF_LEN:
        raise SpaError("bad_proof", f"SPA_SIGNATURE of {len(proof)} bytes, not {PROOF_LEN}")
    kid, t = PROOF_HEAD.unpack_from(proof)
    return kid, t, bytes(proof[PROOF_HEAD.size:])


def proof_message(nonce: bytes, prefix: Name, signing_time: int) -> bytes:
    """What a service signs to register `prefix` against the challenge `nonce`."""
    return REGISTER_CONTEXT + bytes(nonce) + prefix.wire + struct.pack("!Q", signing_time)


# Key files


def write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the start (never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_public(path: Path, data: bytes) -> None:
    write_private(path, data)
    os.chmod(path, 0o644)


def pem_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private(path: Union[str, Path]) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def public_key_pem(raw: bytes) -> bytes:
    return public_key_object(raw).public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Union[str, Path]) -> bytes:
    """Raw 32-byte public key from a PEM public or private key, 32 raw bytes or 64 hex digits.

    What gateways and routers use to read the authority key they trust.
    """
    data = Path(path).read_bytes()
    text = data.strip()
    if b"PRIVATE KEY" in text:
        return raw_public(load_private(path))
    if b"PUBLIC KEY" in text:
        key = serialization.load_pem_public_key(text)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if len(data) == PUBKEY_LEN:
        return data
    try:
        raw = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raw = b""
    if len(raw) == PUBKEY_LEN:
        return raw
    raise ValueError(f"{path}: not an Ed25519 key (PEM, 32 raw bytes or 64 hex digits)")


# --------------------------------------------------------------------------
