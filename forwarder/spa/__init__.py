"""Service Prefix Authentication (docs/protocol.md, sections 6.4 and 11).

Modules: `format` (the bytes and key files), `authority` (issues and revokes),
`identity` (a service proves it holds an authorization), `validator` (gateways
and routers check), `tool` (the operator's command line). This package imports
only `forwarder.dataplane.names`; the public names below are its interface.


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
from .authority import Authority, IssuedRecord
from .format import (AUTH_MIN_LEN, CRL_CONTEXT, ISSUE_BACKDATE_S, NONCE_LEN, PROOF_LEN,
                     PROOF_MAX_AGE_S, PROOF_MAX_SKEW_S, REASONS, Authorization, RevocationList,
                     SpaError, decode_proof, key_id, load_public_key, proof_message,
                     public_key_pem)
from .identity import ServiceIdentity
from .validator import Validator, new_nonce

__all__ = ["AUTH_MIN_LEN", "CRL_CONTEXT", "ISSUE_BACKDATE_S", "NONCE_LEN", "PROOF_LEN",
           "PROOF_MAX_AGE_S", "PROOF_MAX_SKEW_S", "REASONS", "Authority", "Authorization",
           "IssuedRecord", "RevocationList", "ServiceIdentity", "SpaError", "Validator",
           "decode_proof", "key_id", "load_public_key", "new_nonce", "proof_message",
           "public_key_pem"]
