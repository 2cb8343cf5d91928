"""The checking side of SPA, owned by a forwarder's event loop: registrations at a
Service Gateway, advertised prefixes at every Service Router, revocation lists.

An Ed25519 verification costs 50-300 microseconds, so results are cached by
(authorization bytes, prefix): a repeated check is a dict lookup and a
comparison with the validity window. A new revocation list clears the cache.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..dataplane.names import Name
from .format import (CACHE_MAX, CRL_CONTEXT, NONCE_LEN, PROOF_MAX_AGE_S, PROOF_MAX_SKEW_S,
                     REASONS, Authorization, RevocationList, SpaError, public_key_object,
                     verify, decode_proof, key_id, proof_message)


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
            bytes(kid): public_key_object(bytes(pub)) for kid, pub in pairs}
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
        if not verify(pub, crl.signature, CRL_CONTEXT + crl.signed_part()):
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
        if not verify(pub, auth.signature, auth.signed_part()):
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
        service = public_key_object(auth.service_key)
        if not verify(service, sig, proof_message(nonce, prefix, t)):
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
