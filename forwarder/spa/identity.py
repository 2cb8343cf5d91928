"""A service's side of SPA: its key pair, its authorization, and the proof it
signs to answer a gateway's registration challenge (docs/protocol.md 11.3)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..dataplane.names import Name
from .format import (NONCE_LEN, PROOF_HEAD, Authorization, load_private, pem_private,
                     raw_public, write_private, write_public, key_id, proof_message)

# Service identity


class ServiceIdentity:
    """A service's Ed25519 key pair and (optionally) its authorization.

    Files: the key as PEM PKCS8 (0600) at `path`; the authorization, if any,
    beside it with suffix .auth (raw bytes, as carried in SPA_AUTHORIZATION).
    """

    def __init__(self, private_key: Ed25519PrivateKey,
                 authorization: Optional[Authorization] = None) -> None:
        self._key = private_key
        self.public_key: bytes = raw_public(private_key)
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
        return cls(load_private(path), auth)

    def save(self, path: Union[str, Path]) -> None:
        write_private(Path(path), pem_private(self._key))
        if self.authorization is not None:
            write_public(self.auth_path(path), self.authorization.encode())

    def prove(self, nonce: bytes, prefix: Union[Name, str], now: Optional[float] = None) -> bytes:
        """The SPA_SIGNATURE TLV value answering the gateway's challenge `nonce`."""
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"a challenge nonce has {NONCE_LEN} bytes, not {len(nonce)}")
        t = int(time.time() if now is None else now)
        sig = self._key.sign(proof_message(nonce, Name.parse(prefix), t))
        return PROOF_HEAD.pack(self.key_id, t) + sig

    def register_tlvs(self, nonce: bytes, prefix: Union[Name, str],
                      now: Optional[float] = None) -> List[Tuple[int, bytes]]:
        """[(SPA_AUTHORIZATION, ...), (SPA_SIGNATURE, ...)] for a REGISTER packet."""
        if self.authorization is None:
            raise ValueError("this service identity has no authorization")
        return [(0x0010, self.authorization.encode()), (0x0011, self.prove(nonce, prefix, now))]


# --------------------------------------------------------------------------
# Validator
