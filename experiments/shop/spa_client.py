"""A forwarder.client.Client that proves its SPA authorization when it registers.

The gateway's ATTACH answer carries a 16-byte challenge nonce when it enforces
SPA (docs/protocol.md 11.3); REGISTER then carries SPA_AUTHORIZATION and
SPA_SIGNATURE. forwarder.client.Client does not keep the nonce, so this
subclass re-implements the two small methods involved. When the gateway asks
for no proof (empty nonce) it registers exactly like Client.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Optional

from forwarder import wire
from forwarder.client import CallTimeout, Client, DmscError, NameLike
from forwarder.names import Name
from forwarder.spa import ServiceIdentity
from forwarder.wire import DecodeError, Packet, PacketType, RegisterBody, RegisterResult

RECV = wire.MAX_PACKET + 1024


class SpaClient(Client):
    """Client(socket_path, identity=ServiceIdentity or key file path, ...)."""

    def __init__(self, socket_path: str, *, identity=None, **kw) -> None:
        if isinstance(identity, (str, Path)):
            identity = ServiceIdentity.load(identity)
        self.identity: Optional[ServiceIdentity] = identity
        self.nonce = b""
        self.proofs_sent = 0
        super().__init__(socket_path, **kw)

    def _attach(self, timeout: float) -> Name:
        hello = Packet(PacketType.ATTACH, dst=wire.LOCAL_NAME, src=wire.LOCAL_NAME,
                       seq=self._next_seq())
        deadline = time.monotonic() + timeout
        try:
            self._sock.send(hello.encode())
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout
                self._sock.settimeout(left)
                data = self._sock.recv(RECV)
                if not data:
                    raise DmscError(f"the Service Gateway at {self.socket_path!r} closed "
                                    "the connection during ATTACH")
                try:
                    pkt = wire.decode(data)
                except DecodeError:
                    continue
                if pkt.type == PacketType.ATTACH:
                    self._sock.settimeout(None)
                    self.nonce = bytes(pkt.payload)
                    return pkt.dst
        except socket.timeout:
            self._sock.close()
            raise CallTimeout(f"no ATTACH answer from {self.socket_path!r} within {timeout}s") from None
        except OSError as exc:
            self._sock.close()
            raise DmscError(f"ATTACH to {self.socket_path!r} failed: {exc}") from None

    def register(self, prefix: NameLike, *, cost: int = 0,
                 http_backend: Optional[str] = None) -> None:
        p = Name.parse(prefix)
        if len(p) == 0:
            raise DmscError("cannot register the empty name /")
        flags = RegisterBody.HTTP if http_backend else 0
        options = json.dumps({"http": http_backend}).encode() if http_backend else b""
        tlvs = []
        if self.nonce and self.identity is not None and self.identity.authorization is not None:
            tlvs = self.identity.register_tlvs(self.nonce, p)
            self.proofs_sent += 1
        pkt = Packet(PacketType.REGISTER, dst=p, src=self.name, seq=self._next_seq(),
                     payload=RegisterBody(flags, cost, options).encode(), tlvs=tlvs)
        ans = self._exchange([pkt], self.timeout, f"REGISTER {p.text}")
        if ans.type != PacketType.REGISTER_RESULT:
            raise DmscError(f"REGISTER {p.text}: unexpected answer type {ans.type:#04x}")
        try:
            res = RegisterResult.decode(ans.payload)
        except DecodeError as exc:
            raise DmscError(f"REGISTER {p.text}: malformed result ({exc})") from None
        if res.status != RegisterResult.ACCEPTED:
            raise DmscError(f"the Service Gateway refused to register {p.text} "
                            f"(status {res.status}): {res.message}")
        with self._lock:
            self._registered[p] = (cost, http_backend)
