"""Service Prefix Authentication (docs/protocol.md, sections 6.4 and 11).

An SPA *authority* signs *authorizations*: "the holder of Ed25519 key K may use
the names under prefix P from not_before to not_after". Two places check them:

* a Service Gateway, when an application REGISTERs a prefix: the authorization
  must cover the prefix and the application must prove, by signing the
  gateway's fresh challenge, that it holds K (:meth:`Validator.check_registration`);
* every Service Router, before it installs a route from a link-state
  advertisement (:meth:`Validator.check_authorization`).

An Ed25519 verification costs 50-300 microseconds, so results are cached by
(authorization bytes, prefix): a repeated check is a dict lookup and a
comparison with the validity window. A new revocation list clears the cache.

This module is pure logic: no sockets, no threads. A :class:`Validator` is owned
by one thread (the forwarder's event loop).

Rejections raise :class:`SpaError`; its ``reason`` is one of :data:`REASONS`.
The checks run in the order of this table and the first failing one gives the
reason (so an authorization both revoked and expired is "revoked"):

==============  ==============================================================
reason          when
==============  ==============================================================
unauthorized    bytes malformed (length, version, prefix syntax); or the
                authority key id is not a trusted authority
tampered        trusted authority key id, well-formed, but the authority's
                signature does not verify
revoked         the serial is on the authority's current revocation list
out_of_subtree  the prefix is not the authorized prefix or below it (whole
                components: /shop/cart covers /shop/cart/v2, not /shop/cartoon)
expired         now is outside [not_before, not_after) -- also "not yet valid"
bad_proof       (registration) the SPA_SIGNATURE value is malformed, names
                another key, or its signature over the challenge is wrong
replayed        (registration) a correctly signed proof whose signing time is
                older than ``proof_max_age_s`` or more than ``proof_max_skew_s``
                in the future, or whose (nonce, prefix) was already accepted
==============  ==============================================================

Revocation lists are rejected as ``unauthorized`` (malformed, unknown
authority), ``tampered`` (bad signature) or ``replayed`` (sequence number not
newer than the one loaded).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .names import InvalidName, Name

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
_PROOF_HEAD = struct.Struct("!8sQ")
PROOF_LEN = _PROOF_HEAD.size + SIG_LEN  # 80
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
CACHE_MAX = 65536


class SpaError(Exception):
    """An SPA rejection; `reason` is one of REASONS (the counter name)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def key_id(pubkey: bytes) -> bytes:
    """First 8 bytes of SHA-256 of a raw 32-byte public key: short, stable handle."""
    return hashlib.sha256(bytes(pubkey)).digest()[:KEY_ID_LEN]


def _u64(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} {value!r} is not an unsigned 64-bit integer")
    return value


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def _verify(pub: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        pub.verify(signature, message)
        return True
    except InvalidSignature:
        return False


def _public_key_object(raw: bytes) -> Ed25519PublicKey:
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
        _u64(self.serial, "serial")
        _u64(self.not_before, "not_before")
        _u64(self.not_after, "not_after")
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
    kid, t = _PROOF_HEAD.unpack_from(proof)
    return kid, t, bytes(proof[_PROOF_HEAD.size:])


def proof_message(nonce: bytes, prefix: Name, signing_time: int) -> bytes:
    """What a service signs to register `prefix` against the challenge `nonce`."""
    return REGISTER_CONTEXT + bytes(nonce) + prefix.wire + struct.pack("!Q", signing_time)


# --------------------------------------------------------------------------
# Key files


def _write_private(path: Path, data: bytes) -> None:
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


def _write_public(path: Path, data: bytes) -> None:
    _write_private(path, data)
    os.chmod(path, 0o644)


def _pem_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_private(path: Union[str, Path]) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def public_key_pem(raw: bytes) -> bytes:
    return _public_key_object(raw).public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Union[str, Path]) -> bytes:
    """Raw 32-byte public key from a PEM public or private key, 32 raw bytes or 64 hex digits.

    What gateways and routers use to read the authority key they trust.
    """
    data = Path(path).read_bytes()
    text = data.strip()
    if b"PRIVATE KEY" in text:
        return _raw_public(_load_private(path))
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
# Authority


@dataclass
class IssuedRecord:
    """What the authority remembers about an authorization it issued."""

    serial: int
    prefix: str
    service_key: str  # hex
    not_before: int
    not_after: int
    authorization: str  # hex of the encoded authorization


class Authority:
    """An SPA authority: an Ed25519 key plus its bookkeeping (serials, revocations).

    Files: the private key as PEM PKCS8 (mode 0600) at `path`, and beside it
    `path` with suffix .json holding the state. Serials are never reused, so a
    revoked serial always means the same authorization.
    """

    def __init__(self, private_key: Ed25519PrivateKey, next_serial: int = 1,
                 crl_sequence: int = 0, issued: Optional[List[IssuedRecord]] = None,
                 revoked: Iterable[int] = ()) -> None:
        self._key = private_key
        self.public_key: bytes = _raw_public(private_key)
        self.key_id: bytes = key_id(self.public_key)
        self.next_serial = next_serial
        self.crl_sequence = crl_sequence
        self.issued: Dict[int, IssuedRecord] = {r.serial: r for r in (issued or [])}
        self.revoked: set = set(revoked)

    @classmethod
    def generate(cls) -> "Authority":
        return cls(Ed25519PrivateKey.generate())

    @staticmethod
    def state_path(path: Union[str, Path]) -> Path:
        return Path(path).with_suffix(".json")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Authority":
        """Load key and state. A missing state file is an error: restarting the
        serials at 1 would make old revocations hit new authorizations."""
        key = _load_private(path)
        state = json.loads(cls.state_path(path).read_text())
        auth = cls(key, next_serial=int(state["next_serial"]),
                   crl_sequence=int(state.get("crl_sequence", 0)),
                   issued=[IssuedRecord(**r) for r in state.get("issued", [])],
                   revoked=state.get("revoked", []))
        if state.get("key_id") not in (None, auth.key_id.hex()):
            raise ValueError(f"{cls.state_path(path)} belongs to authority "
                             f"{state['key_id']}, not to the key in {path}")
        return auth

    def save(self, path: Union[str, Path]) -> None:
        path = Path(path)
        _write_private(path, _pem_private(self._key))
        state = {
            "version": 1,
            "key_id": self.key_id.hex(),
            "public_key": self.public_key.hex(),
            "next_serial": self.next_serial,
            "crl_sequence": self.crl_sequence,
            "issued": [vars(r) for r in sorted(self.issued.values(), key=lambda r: r.serial)],
            "revoked": sorted(self.revoked),
        }
        _write_public(self.state_path(path), (json.dumps(state, indent=1) + "\n").encode())

    def issue(self, service_key: bytes, prefix: Union[Name, str],
              valid_for_s: float = DEFAULT_VALIDITY_S, not_before: Optional[float] = None,
              now: Optional[float] = None) -> Authorization:
        """Sign an authorization for `service_key` over the subtree `prefix`.

        not_before defaults to now minus ISSUE_BACKDATE_S (clock skew); not_after
        is now (or the given not_before) plus valid_for_s. Refuses the reserved
        /_dmsc subtree and the empty prefix (that would authorize every name).
        """
        prefix = Name.parse(prefix)
        if len(prefix) == 0:
            raise ValueError("refusing to authorize / (every name)")
        if prefix.components[0] == b"_dmsc":
            raise ValueError(f"{prefix} is reserved for control traffic")
        service_key = bytes(service_key)
        _public_key_object(service_key)
        if not valid_for_s > 0:
            raise ValueError("valid_for_s must be positive")
        now = time.time() if now is None else now
        start = int(now) if not_before is None else int(not_before)
        nb = max(0, start - ISSUE_BACKDATE_S) if not_before is None else start
        unsigned = Authorization(self.next_serial, nb,
                                 _u64(start + int(valid_for_s), "not_after"),
                                 prefix, service_key, self.key_id)
        auth = dataclasses.replace(unsigned, signature=self._key.sign(unsigned.signed_part()))
        self.issued[auth.serial] = IssuedRecord(auth.serial, prefix.text, service_key.hex(),
                                                auth.not_before, auth.not_after,
                                                auth.encode().hex())
        self.next_serial += 1
        return auth

    def revoke(self, serial: int) -> bool:
        """Revoke an issued serial; False if it was already revoked."""
        if serial not in self.issued:
            raise KeyError(f"serial {serial} was not issued by this authority")
        if serial in self.revoked:
            return False
        self.revoked.add(serial)
        return True

    def revocation_list(self, now: Optional[float] = None,
                        valid_for_s: float = DEFAULT_CRL_VALIDITY_S) -> bytes:
        """Publish a signed revocation list; every publication gets a new sequence number."""
        now = int(time.time() if now is None else now)
        self.crl_sequence += 1
        crl = RevocationList(self.key_id, self.crl_sequence, now, now + int(valid_for_s),
                             tuple(sorted(self.revoked)))
        signed = crl.signed_part()
        return signed + self._key.sign(CRL_CONTEXT + signed)


# --------------------------------------------------------------------------
# Service identity


class ServiceIdentity:
    """A service's Ed25519 key pair and (optionally) its authorization.

    Files: the key as PEM PKCS8 (0600) at `path`; the authorization, if any,
    beside it with suffix .auth (raw bytes, as carried in SPA_AUTHORIZATION).
    """

    def __init__(self, private_key: Ed25519PrivateKey,
                 authorization: Optional[Authorization] = None) -> None:
        self._key = private_key
        self.public_key: bytes = _raw_public(private_key)
        self.key_id: bytes = key_id(self.public_key)
        self.authorization = authorization

    @classmethod
    def generate(cls) -> "ServiceIdentity":
        return cls(Ed25519PrivateKey.generate())

    @staticmethod
    def auth_path(path: Union[str, Path]) -> Path:
        return Path(path).with_suffix(".auth")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ServiceIdentity":
        auth_file = cls.auth_path(path)
        auth = Authorization.decode(auth_file.read_bytes()) if auth_file.exists() else None
        return cls(_load_private(path), auth)

    def save(self, path: Union[str, Path]) -> None:
        _write_private(Path(path), _pem_private(self._key))
        if self.authorization is not None:
            _write_public(self.auth_path(path), self.authorization.encode())

    def prove(self, nonce: bytes, prefix: Union[Name, str], now: Optional[float] = None) -> bytes:
        """The SPA_SIGNATURE TLV value answering the gateway's challenge `nonce`."""
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"a challenge nonce has {NONCE_LEN} bytes, not {len(nonce)}")
        t = int(time.time() if now is None else now)
        sig = self._key.sign(proof_message(nonce, Name.parse(prefix), t))
        return _PROOF_HEAD.pack(self.key_id, t) + sig

    def register_tlvs(self, nonce: bytes, prefix: Union[Name, str],
                      now: Optional[float] = None) -> List[Tuple[int, bytes]]:
        """[(SPA_AUTHORIZATION, ...), (SPA_SIGNATURE, ...)] for a REGISTER packet."""
        if self.authorization is None:
            raise ValueError("this service identity has no authorization")
        return [(0x0010, self.authorization.encode()), (0x0011, self.prove(nonce, prefix, now))]


# --------------------------------------------------------------------------
# Validator


@dataclass
class _CrlState:
    sequence: int
    issued_at: int
    next_update: int
    serials: frozenset
    raw: bytes


class Validator:
    """Checks authorizations, registration proofs and revocation lists.

    trusted_authorities: {key id: raw public key} or a list of raw public keys.
    clock: seconds since the epoch; used when a call passes no `now`.
    """

    def __init__(self, trusted_authorities: Union[Mapping[bytes, bytes], Iterable[bytes]],
                 clock: Callable[[], float] = time.time, *,
                 proof_max_age_s: float = PROOF_MAX_AGE_S,
                 proof_max_skew_s: float = PROOF_MAX_SKEW_S,
                 cache_max: int = CACHE_MAX) -> None:
        if isinstance(trusted_authorities, (bytes, bytearray)):
            raise TypeError("pass a list of public keys or a {key id: key} dict, not one key")
        if isinstance(trusted_authorities, Mapping):
            pairs = list(trusted_authorities.items())
            for kid, pub in pairs:
                if key_id(pub) != bytes(kid):
                    raise ValueError(f"key id {bytes(kid).hex()} is not the id of its key")
        else:
            pairs = [(key_id(pub), pub) for pub in trusted_authorities]
        self._authorities: Dict[bytes, Ed25519PublicKey] = {
            bytes(kid): _public_key_object(bytes(pub)) for kid, pub in pairs}
        self.clock = clock
        self.proof_max_age_s = proof_max_age_s
        self.proof_max_skew_s = proof_max_skew_s
        self.cache_max = cache_max
        # (authorization bytes, prefix wire) -> Authorization (signature, revocation
        # and subtree checked; only the window is left) or (reason, detail).
        self._cache: Dict[Tuple[bytes, bytes], Union[Authorization, Tuple[str, str]]] = {}
        self._crls: Dict[bytes, _CrlState] = {}
        # (nonce, prefix wire) -> forget-after time, in insertion (= time) order.
        self._used_nonces: Dict[Tuple[bytes, bytes], float] = {}
        self.revision = 0  # +1 per revocation list applied: routes must be rechecked
        self.stats: Dict[str, int] = dict.fromkeys(REASONS, 0)
        self.stats.update(cache_hits=0, cache_misses=0, crl_loaded=0)

    # -- helpers -------------------------------------------------------------
    def _reject(self, reason: str, detail: str = "") -> SpaError:
        self.stats[reason] += 1
        return SpaError(reason, detail)

    def trusts(self, authority_id: bytes) -> bool:
        return authority_id in self._authorities

    # -- revocation lists ----------------------------------------------------
    def load_revocation_list(self, crl_bytes: bytes) -> bool:
        """Verify and apply a revocation list; True if it replaced the current one.

        Only a strictly newer sequence number is applied (and clears the cache);
        the very same list again is a harmless no-op (flooding delivers copies),
        anything else older or equal is 'replayed'.
        """
        try:
            crl = RevocationList.decode(crl_bytes)
        except SpaError as exc:
            raise self._reject(exc.reason, exc.detail) from None
        pub = self._authorities.get(crl.authority_id)
        if pub is None:
            raise self._reject("unauthorized",
                               f"revocation list of unknown authority {crl.authority_id.hex()}")
        if not _verify(pub, crl.signature, CRL_CONTEXT + crl.signed_part()):
            raise self._reject("tampered", "revocation list signature does not verify")
        current = self._crls.get(crl.authority_id)
        if current is not None and crl.sequence <= current.sequence:
            if crl.sequence == current.sequence and bytes(crl_bytes) == current.raw:
                return False
            raise self._reject("replayed", f"revocation list sequence {crl.sequence} is not "
                                           f"newer than {current.sequence}")
        self._crls[crl.authority_id] = _CrlState(crl.sequence, crl.issued_at, crl.next_update,
                                                 frozenset(crl.serials), bytes(crl_bytes))
        self._cache.clear()
        self.revision += 1
        self.stats["crl_loaded"] += 1
        return True

    def crl_info(self, now: Optional[float] = None) -> Dict[str, dict]:
        """Per authority (hex key id): the loaded list's sequence, times, size, staleness.

        A list past its next_update is reported stale but still applied: failing
        closed would withdraw every route when the authority goes quiet.
        """
        now = self.clock() if now is None else now
        return {aid.hex(): {"sequence": c.sequence, "issued_at": c.issued_at,
                            "next_update": c.next_update, "revoked": len(c.serials),
                            "stale": now >= c.next_update}
                for aid, c in self._crls.items()}

    # -- authorizations ------------------------------------------------------
    def _evaluate(self, auth_bytes: bytes, prefix: Name) -> Union[Authorization, Tuple[str, str]]:
        """Everything but the window: the time-independent (cacheable) part.

        Returns the authorization, or (reason, detail) of the first failing check.
        """
        try:
            auth = Authorization.decode(auth_bytes)
        except SpaError as exc:
            return exc.reason, exc.detail
        pub = self._authorities.get(auth.authority_id)
        if pub is None:
            return "unauthorized", f"unknown authority {auth.authority_id.hex()}"
        if not _verify(pub, auth.signature, auth.signed_part()):
            return "tampered", f"authority signature on serial {auth.serial} does not verify"
        crl = self._crls.get(auth.authority_id)
        if crl is not None and auth.serial in crl.serials:
            return "revoked", f"serial {auth.serial} is revoked"
        if not auth.prefix.is_prefix_of(prefix):
            return "out_of_subtree", f"{prefix} is not under the authorized {auth.prefix}"
        return auth

    def check_authorization(self, auth_bytes: bytes, prefix: Name,
                            now: Optional[float] = None) -> Authorization:
        """The decoded authorization if it lets its key use `prefix` now; else SpaError."""
        key = (auth_bytes if type(auth_bytes) is bytes else bytes(auth_bytes), prefix.wire)
        result = self._cache.get(key)
        if result is None:
            self.stats["cache_misses"] += 1
            result = self._evaluate(key[0], prefix)
            if len(self._cache) >= self.cache_max:
                del self._cache[next(iter(self._cache))]  # oldest first
            self._cache[key] = result
        else:
            self.stats["cache_hits"] += 1
        if type(result) is tuple:
            self.stats[result[0]] += 1
            raise SpaError(*result)
        if now is None:
            now = self.clock()
        if result.not_before <= now < result.not_after:
            return result
        self.stats["expired"] += 1
        raise SpaError("expired", f"authorization {result.serial} valid "
                                  f"[{result.not_before}, {result.not_after}), now {int(now)}")

    def check_registration(self, auth_bytes: bytes, proof: bytes, nonce: bytes, prefix: Name,
                           now: Optional[float] = None) -> Authorization:
        """Check a REGISTER: the authorization covers `prefix` and the proof answers `nonce`.

        On success the (nonce, prefix) pair is remembered for as long as its proof
        could still be fresh, so the same challenge cannot register the same prefix twice.
        """
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"a challenge nonce has {NONCE_LEN} bytes, not {len(nonce)}")
        now = self.clock() if now is None else now
        auth = self.check_authorization(auth_bytes, prefix, now)
        try:
            kid, t, sig = decode_proof(proof)
        except SpaError as exc:
            raise self._reject(exc.reason, exc.detail) from None
        if kid != auth.service_key_id:
            raise self._reject("bad_proof", f"proof by key {kid.hex()}, authorization is for "
                                            f"{auth.service_key_id.hex()}")
        service = _public_key_object(auth.service_key)
        if not _verify(service, sig, proof_message(nonce, prefix, t)):
            raise self._reject("bad_proof", "challenge signature does not verify")
        self._forget_nonces(now)
        if not now - self.proof_max_age_s <= t <= now + self.proof_max_skew_s:
            raise self._reject("replayed", f"proof signed at {t}, now {int(now)}")
        used = (bytes(nonce), prefix.wire)
        if used in self._used_nonces:
            raise self._reject("replayed", f"challenge already used to register {prefix}")
        self._used_nonces[used] = now + self.proof_max_age_s + self.proof_max_skew_s
        return auth

    def _forget_nonces(self, now: float) -> None:
        while self._used_nonces:
            first = next(iter(self._used_nonces))
            if self._used_nonces[first] > now:
                break
            del self._used_nonces[first]


def new_nonce() -> bytes:
    """A fresh 16-byte challenge for an attaching application."""
    return os.urandom(NONCE_LEN)
