"""The registration check a Service Gateway's pipeline calls, as an interface.

The data plane does not import SPA (forwarder.spa imports the data plane, not
the other way round): the pipeline is handed an object with this method, and
catches `Refused`, which SPA's own error (`forwarder.spa.SpaError`) extends.
"""
from __future__ import annotations

from typing import Protocol

from .names import Name


class Refused(Exception):
    """A registration refused by the node's admission check; `reason` names the counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class AdmissionCheck(Protocol):
    def check_registration(self, auth_bytes: bytes, proof: bytes, nonce: bytes, prefix: Name,
                           now: float) -> object:
        """Return on success; raise Refused, or ValueError when no challenge was issued."""
