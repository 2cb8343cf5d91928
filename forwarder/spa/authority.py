"""The SPA authority: signs authorizations, revokes them, publishes revocation lists.

Run by the operator (`python -m forwarder.spa.tool`), never by a forwarder:
forwarders only hold the authority's public key (`validator`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..dataplane.names import Name
from .format import (CRL_CONTEXT, DEFAULT_CRL_VALIDITY_S, DEFAULT_VALIDITY_S, ISSUE_BACKDATE_S,
                     Authorization, RevocationList, load_private, pem_private,
                     public_key_object, raw_public, u64, write_private, write_public,
                     key_id)



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
        self.public_key: bytes = raw_public(private_key)
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
        key = load_private(path)
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
        write_private(path, pem_private(self._key))
        state = {
            "version": 1,
            "key_id": self.key_id.hex(),
            "public_key": self.public_key.hex(),
            "next_serial": self.next_serial,
            "crl_sequence": self.crl_sequence,
            "issued": [vars(r) for r in sorted(self.issued.values(), key=lambda r: r.serial)],
            "revoked": sorted(self.revoked),
        }
        write_public(self.state_path(path), (json.dumps(state, indent=1) + "\n").encode())

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
        public_key_object(service_key)
        if not valid_for_s > 0:
            raise ValueError("valid_for_s must be positive")
        now = time.time() if now is None else now
        start = int(now) if not_before is None else int(not_before)
        nb = max(0, start - ISSUE_BACKDATE_S) if not_before is None else start
        unsigned = Authorization(self.next_serial, nb,
                                 u64(start + int(valid_for_s), "not_after"),
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
