"""Service Prefix Authentication (forwarder/spa.py, forwarder/spa_tool.py).

Real Ed25519 throughout: every rejection below is produced by the actual
signature, window, revocation or subtree check, not by a stub.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder import spa
from forwarder.dataplane.names import name
from forwarder.spa import (
    REASONS,
    Authority,
    Authorization,
    RevocationList,
    ServiceIdentity,
    SpaError,
    Validator,
    key_id,
    new_nonce,
)

REPO = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000  # fixed clock: every test states its times explicitly
DAY = 86400


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


@pytest.fixture(scope="module")
def service() -> ServiceIdentity:
    return ServiceIdentity(Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))))


@pytest.fixture
def cart(authority: Authority, service: ServiceIdentity) -> Authorization:
    """/shop/cart for `service`, valid [NOW - 60, NOW + 30 days)."""
    return authority.issue(service.public_key, "/shop/cart", now=NOW)


@pytest.fixture
def validator(authority: Authority) -> Validator:
    return Validator([authority.public_key], clock=lambda: NOW)


def reason(exc_info: pytest.ExceptionInfo) -> str:
    return exc_info.value.reason


def flip(data: bytes, offset: int, bit: int = 0x01) -> bytes:
    b = bytearray(data)
    b[offset] ^= bit
    return bytes(b)


# -- encoding ----------------------------------------------------------------

def test_issue_decode_round_trip(authority, service, cart, validator):
    raw = cart.encode()
    back = Authorization.decode(raw)
    assert back == cart and back.encode() == raw
    assert cart.prefix == name("/shop/cart")
    assert cart.service_key == service.public_key
    assert cart.authority_id == authority.key_id == key_id(authority.public_key)
    assert cart.not_before == NOW - spa.ISSUE_BACKDATE_S
    assert cart.not_after == NOW + 30 * DAY
    assert validator.check_authorization(raw, name("/shop/cart")) == cart
    assert validator.check_authorization(raw, name("/shop/cart/v2/x")) == cart


def test_serials_increase(authority, service):
    a = authority.issue(service.public_key, "/a", now=NOW)
    b = authority.issue(service.public_key, "/a", now=NOW)
    assert b.serial == a.serial + 1


def test_authorization_byte_layout_matches_spec_6_4(authority, service):
    a = authority.issue(service.public_key, "/shop/cart", valid_for_s=1000,
                        not_before=NOW, now=NOW)
    raw = a.encode()
    prefix_wire = bytes.fromhex("0473686f700463617274")  # the example of section 2
    L = len(prefix_wire)
    assert len(raw) == 1 + 8 + 8 + 8 + 1 + L + 32 + 8 + 64
    assert raw[0] == 1                                            # version
    assert struct.unpack(">Q", raw[1:9])[0] == a.serial           # serial
    assert struct.unpack(">Q", raw[9:17])[0] == NOW               # not before
    assert struct.unpack(">Q", raw[17:25])[0] == NOW + 1000       # not after
    assert raw[25] == L                                           # prefix length
    assert raw[26:26 + L] == prefix_wire                          # prefix, binary form
    assert raw[26 + L:58 + L] == service.public_key               # service key
    assert raw[58 + L:66 + L] == hashlib.sha256(authority.public_key).digest()[:8]
    sig = raw[66 + L:]
    assert len(sig) == 64 and raw[:66 + L] == a.signed_part()
    Ed25519PublicKey.from_public_bytes(authority.public_key).verify(sig, raw[:66 + L])


def test_scapy_layer_reads_the_same_bytes(cart):
    """The dissector side (scapy_layers.py) agrees on the 6.4 layout."""
    layers = pytest.importorskip("forwarder.dataplane.scapy_layers")
    raw = cart.encode()
    tlv = layers.DMSCTLVSpaAuthorization(struct.pack(">HH", 0x0010, len(raw)) + raw)
    assert tlv.serial == cart.serial
    assert tlv.not_before == cart.not_before and tlv.not_after == cart.not_after


def test_proof_layout(service):
    nonce = bytes(range(16))
    proof = service.prove(nonce, name("/shop/cart/v2"), now=NOW + 0.9)
    assert len(proof) == 80  # the fixed SPA_SIGNATURE size of section 6
    assert proof[:8] == hashlib.sha256(service.public_key).digest()[:8]
    assert struct.unpack(">Q", proof[8:16])[0] == NOW
    msg = (b"DMSC-SPA-REGISTER\0" + nonce + name("/shop/cart/v2").wire
           + struct.pack(">Q", NOW))
    Ed25519PublicKey.from_public_bytes(service.public_key).verify(proof[16:], msg)


def test_revocation_list_layout(authority, service):
    auth = Authority.generate()
    s1 = auth.issue(service.public_key, "/a", now=NOW).serial
    s2 = auth.issue(service.public_key, "/b", now=NOW).serial
    auth.revoke(s2)
    auth.revoke(s1)
    raw = auth.revocation_list(now=NOW, valid_for_s=3600)
    assert raw[0] == 1
    assert raw[1:9] == auth.key_id
    assert struct.unpack(">Q", raw[9:17])[0] == 1                 # sequence
    assert struct.unpack(">Q", raw[17:25])[0] == NOW              # issued at
    assert struct.unpack(">Q", raw[25:33])[0] == NOW + 3600       # next update
    assert struct.unpack(">I", raw[33:37])[0] == 2                # count
    assert struct.unpack(">QQ", raw[37:53]) == (s1, s2)           # ascending
    assert len(raw) == 53 + 64
    Ed25519PublicKey.from_public_bytes(auth.public_key).verify(
        raw[53:], b"DMSC-SPA-CRL\0" + raw[:53])
    assert RevocationList.decode(raw).serials == (s1, s2)
    assert struct.unpack(">Q", auth.revocation_list(now=NOW)[9:17])[0] == 2


# -- rejection reasons -------------------------------------------------------

def test_forged_authority_is_unauthorized(service, validator):
    forger = Authority.generate()
    forged = forger.issue(service.public_key, "/shop/cart", now=NOW).encode()
    with pytest.raises(SpaError) as e:
        validator.check_authorization(forged, name("/shop/cart"))
    assert reason(e) == "unauthorized"
    # Claiming the real authority's key id does not help: now it is tampered.
    spoofed = forged[:-72] + validator_key_id(validator) + forged[-64:]
    with pytest.raises(SpaError) as e:
        validator.check_authorization(spoofed, name("/shop/cart"))
    assert reason(e) == "tampered"


def validator_key_id(v: Validator) -> bytes:
    (kid,) = v._authorities.keys()
    return kid


@pytest.mark.parametrize("mangle", [
    lambda r: r[:-1],                         # truncated
    lambda r: r + b"\0",                      # trailing byte
    lambda r: b"",                            # empty
    lambda r: flip(r, 0, 0x02),               # version 3
    lambda r: r[:25] + bytes([r[25] + 1]) + r[26:],   # prefix length disagrees
    lambda r: flip(r, 26, 0x40),              # component length byte 0x44 > 63
    lambda r: flip(r, -70),                   # authority key id: unknown authority
])
def test_malformed_or_unknown_is_unauthorized(cart, validator, mangle):
    with pytest.raises(SpaError) as e:
        validator.check_authorization(mangle(cart.encode()), name("/shop/cart"))
    assert reason(e) == "unauthorized"


@pytest.mark.parametrize("offset,what", [
    (27, "a prefix character (/shop -> /rhop)"),
    (36 + 2, "the service key"),
    (8, "the serial"),
    (24, "not after"),
    (-1, "the signature"),
])
def test_flipped_bit_is_tampered(cart, validator, offset, what):
    raw = flip(cart.encode(), offset)
    with pytest.raises(SpaError) as e:
        validator.check_authorization(raw, Authorization.decode(raw).prefix)
    assert reason(e) == "tampered", what


def test_prefix_subtree_is_whole_components(cart, service, validator):
    raw = cart.encode()
    nonce = new_nonce()
    for bad in ("/shop/cartoon", "/shop", "/shop/car", "/other/shop/cart"):
        with pytest.raises(SpaError) as e:
            validator.check_registration(raw, service.prove(nonce, name(bad), NOW), nonce,
                                         name(bad))
        assert reason(e) == "out_of_subtree", bad
    for good in ("/shop/cart", "/shop/cart/v2"):
        assert validator.check_registration(raw, service.prove(nonce, name(good), NOW),
                                            nonce, name(good)) == cart


def test_window_is_half_open(authority, service, validator):
    a = authority.issue(service.public_key, "/w", valid_for_s=100, not_before=NOW + 10,
                        now=NOW).encode()
    p = name("/w")
    for t in (NOW + 9, NOW + 9.999, NOW + 110, NOW + 10**6):
        with pytest.raises(SpaError) as e:
            validator.check_authorization(a, p, now=t)
        assert reason(e) == "expired", t
    assert validator.check_authorization(a, p, now=NOW + 10).serial
    assert validator.check_authorization(a, p, now=NOW + 109.999).serial


def test_cached_valid_entry_expires_at_not_after(authority, service, validator):
    a = authority.issue(service.public_key, "/x", valid_for_s=50, not_before=NOW,
                        now=NOW).encode()
    validator.check_authorization(a, name("/x"), now=NOW + 49)
    assert validator.stats["cache_misses"] == 1
    with pytest.raises(SpaError) as e:
        validator.check_authorization(a, name("/x"), now=NOW + 50)
    assert reason(e) == "expired"
    assert validator.stats["cache_hits"] == 1 and validator.stats["expired"] == 1
    # The clock source is used when no time is passed.
    v = Validator([authority.public_key], clock=lambda: NOW + 51)
    with pytest.raises(SpaError):
        v.check_authorization(a, name("/x"))


def test_revocation_invalidates_cache(authority, service, validator):
    a = authority.issue(service.public_key, "/r", now=NOW)
    keep = authority.issue(service.public_key, "/r", now=NOW)
    raw, p = a.encode(), name("/r")
    validator.check_authorization(raw, p)
    validator.check_authorization(raw, p)
    validator.check_authorization(keep.encode(), p)
    assert validator.stats["cache_hits"] == 1
    authority.revoke(a.serial)
    assert validator.load_revocation_list(authority.revocation_list(now=NOW)) is True
    assert validator.revision == 1
    with pytest.raises(SpaError) as e:
        validator.check_authorization(raw, p)
    assert reason(e) == "revoked"
    assert validator.stats["cache_misses"] == 3  # the list emptied the cache
    assert validator.check_authorization(keep.encode(), p) == keep
    with pytest.raises(SpaError):  # the negative result is cached too
        validator.check_authorization(raw, p)
    assert validator.stats["revoked"] == 2 and validator.stats["cache_hits"] == 2


def test_bad_proof(cart, service, validator):
    raw, p, nonce = cart.encode(), name("/shop/cart"), new_nonce()
    other = ServiceIdentity.generate()
    cases = {
        "other key": other.prove(nonce, p, NOW),
        "other key, claiming our key id": service.key_id + other.prove(nonce, p, NOW)[8:],
        "other nonce": service.prove(new_nonce(), p, NOW),
        "other prefix": service.prove(nonce, name("/shop/cart/v2"), NOW),
        "flipped signature": flip(service.prove(nonce, p, NOW), 79),
        "flipped signing time": flip(service.prove(nonce, p, NOW), 15),
        "truncated": service.prove(nonce, p, NOW)[:-1],
        "empty": b"",
    }
    for what, proof in cases.items():
        with pytest.raises(SpaError) as e:
            validator.check_registration(raw, proof, nonce, p)
        assert reason(e) == "bad_proof", what
    assert validator.stats["bad_proof"] == len(cases)
    assert validator.check_registration(raw, service.prove(nonce, p, NOW), nonce, p) == cart


def test_replayed_proof(cart, service, validator):
    raw, p, nonce = cart.encode(), name("/shop/cart"), new_nonce()
    for t in (NOW - spa.PROOF_MAX_AGE_S - 1, NOW + spa.PROOF_MAX_SKEW_S + 1, 0):
        with pytest.raises(SpaError) as e:
            validator.check_registration(raw, service.prove(nonce, p, t), nonce, p)
        assert reason(e) == "replayed", t
    proof = service.prove(nonce, p, NOW - 5)
    validator.check_registration(raw, proof, nonce, p)
    # The same proof again, or a new proof on the same challenge for the same prefix.
    for again in (proof, service.prove(nonce, p, NOW)):
        with pytest.raises(SpaError) as e:
            validator.check_registration(raw, again, nonce, p)
        assert reason(e) == "replayed"
    # One challenge may register several prefixes of the same attachment.
    v2 = name("/shop/cart/v2")
    validator.check_registration(raw, service.prove(nonce, v2, NOW), nonce, v2)
    # Long after, the old proof is stale anyway; the remembered nonce is pruned.
    later = NOW + spa.PROOF_MAX_AGE_S + spa.PROOF_MAX_SKEW_S + 1
    with pytest.raises(SpaError) as e:
        validator.check_registration(raw, proof, nonce, p, now=later)
    assert reason(e) == "replayed"
    assert not validator._used_nonces
    assert validator.stats["replayed"] == 6


def test_registration_checks_authorization_first(authority, service, validator):
    a = authority.issue(service.public_key, "/e", valid_for_s=10, not_before=NOW - 100,
                        now=NOW).encode()
    nonce = new_nonce()
    with pytest.raises(SpaError) as e:
        validator.check_registration(a, service.prove(nonce, name("/e"), NOW), nonce,
                                     name("/e"))
    assert reason(e) == "expired"
    with pytest.raises(ValueError):
        validator.check_registration(a, b"", b"short", name("/e"))


def test_every_rejection_is_counted(validator):
    assert set(REASONS) <= set(validator.stats)
    for i in range(3):
        with pytest.raises(SpaError):
            validator.check_authorization(b"junk%d" % i, name("/a"))
    assert validator.stats["unauthorized"] == 3
    assert validator.stats["cache_misses"] == 3 and validator.stats["cache_hits"] == 0


def test_cache_is_bounded(authority, service):
    v = Validator([authority.public_key], clock=lambda: NOW, cache_max=4)
    auths = [authority.issue(service.public_key, "/c", now=NOW).encode() for _ in range(6)]
    for a in auths:
        v.check_authorization(a, name("/c"))
    assert len(v._cache) == 4
    v.check_authorization(auths[-1], name("/c"))
    v.check_authorization(auths[0], name("/c"))  # evicted: verified again
    assert v.stats["cache_hits"] == 1 and v.stats["cache_misses"] == 7


# -- revocation lists -----------------------------------------------------------

def test_crl_signature_and_sequence(authority, service, validator):
    auth = authority
    first = auth.revocation_list(now=NOW)
    second = auth.revocation_list(now=NOW + 1)
    assert validator.load_revocation_list(second) is True
    assert validator.load_revocation_list(second) is False  # a flooded copy: no-op
    with pytest.raises(SpaError) as e:
        validator.load_revocation_list(first)                # older sequence
    assert reason(e) == "replayed"
    with pytest.raises(SpaError) as e:                      # a bit of the body
        validator.load_revocation_list(flip(auth.revocation_list(now=NOW), 20))
    assert reason(e) == "tampered"
    with pytest.raises(SpaError) as e:
        validator.load_revocation_list(Authority.generate().revocation_list(now=NOW))
    assert reason(e) == "unauthorized"
    for junk in (b"", second[:-1], second[:33] + b"\0\0\0\5" + second[37:]):
        with pytest.raises(SpaError) as e:
            validator.load_revocation_list(junk)
        assert reason(e) == "unauthorized"
    assert validator.stats["crl_loaded"] == 1 and validator.revision == 1
    info = validator.crl_info(now=NOW)[auth.key_id.hex()]
    assert info["sequence"] == RevocationList.decode(second).sequence
    assert info["stale"] is False
    assert validator.crl_info(now=NOW + 8 * DAY)[auth.key_id.hex()]["stale"] is True


def test_crl_rejects_unsorted_serials(authority):
    body = RevocationList(authority.key_id, 99, NOW, NOW + 1, (1, 2)).signed_part()
    swapped = body[:37] + body[45:53] + body[37:45]
    signed = swapped + authority._key.sign(spa.CRL_CONTEXT + swapped)
    with pytest.raises(SpaError) as e:
        RevocationList.decode(signed)
    assert reason(e) == "unauthorized"


def test_crl_signature_needs_its_context_string(authority, validator):
    """A signature over the bare list body (as authorizations are signed) is not accepted:
    CRL signatures cover b"DMSC-SPA-CRL\\0" + body, so neither kind can pass for the other."""
    body = RevocationList(authority.key_id, 10**6, NOW, NOW + 1, (1,)).signed_part()
    with pytest.raises(SpaError) as e:
        validator.load_revocation_list(body + authority._key.sign(body))
    assert reason(e) == "tampered"
    validator.load_revocation_list(body + authority._key.sign(spa.CRL_CONTEXT + body))


# -- construction rules ---------------------------------------------------------

def test_issue_refuses_bad_requests(authority, service):
    for bad in ("/", "/_dmsc/x"):
        with pytest.raises(ValueError):
            authority.issue(service.public_key, bad, now=NOW)
    with pytest.raises(ValueError):
        authority.issue(b"short", "/a", now=NOW)
    with pytest.raises(ValueError):
        authority.issue(service.public_key, "/a", valid_for_s=0, now=NOW)
    with pytest.raises(KeyError):
        authority.revoke(10**9)


def test_validator_trust_forms(authority):
    Validator({authority.key_id: authority.public_key})
    with pytest.raises(ValueError):
        Validator({b"\0" * 8: authority.public_key})


def test_files_round_trip(tmp_path, service):
    auth = Authority.generate()
    a = auth.issue(service.public_key, "/f", now=NOW)
    auth.revoke(a.serial)
    key = tmp_path / "authority.key"
    auth.save(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    back = Authority.load(key)
    assert back.public_key == auth.public_key and back.revoked == {a.serial}
    assert back.issue(service.public_key, "/f", now=NOW).serial == a.serial + 1
    assert json.loads(key.with_suffix(".json").read_text())["next_serial"] == a.serial + 1
    key.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError):
        Authority.load(key)

    ident = ServiceIdentity.generate()
    ident.authorization = auth.issue(ident.public_key, "/svc", now=NOW)
    ident.save(tmp_path / "svc.key")
    assert stat.S_IMODE((tmp_path / "svc.key").stat().st_mode) == 0o600
    loaded = ServiceIdentity.load(tmp_path / "svc.key")
    assert loaded.public_key == ident.public_key
    assert loaded.authorization == ident.authorization
    (t1, v1), (t2, v2) = loaded.register_tlvs(bytes(16), "/svc", now=NOW)
    assert (t1, t2) == (0x0010, 0x0011) and v1 == ident.authorization.encode()
    assert len(v2) == 80
    assert spa.load_public_key(tmp_path / "svc.key") == ident.public_key
    (tmp_path / "pub.hex").write_text(ident.public_key.hex() + "\n")
    assert spa.load_public_key(tmp_path / "pub.hex") == ident.public_key


# -- robustness ----------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_spa_error(data):
    v = Validator([Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().public_bytes_raw()])
    with pytest.raises(SpaError) as e:
        v.check_authorization(data, name("/a"))
    assert reason(e) in ("unauthorized", "tampered")
    with pytest.raises(SpaError):
        v.load_revocation_list(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 139), st.integers(0, 7))
def test_every_single_bit_flip_is_rejected(offset, bit):
    auth = Authority(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    svc = bytes(range(32, 64))
    svc = Ed25519PrivateKey.from_private_bytes(svc).public_key().public_bytes_raw()
    raw = auth.issue(svc, "/shop/cart", now=NOW).encode()
    v = Validator([auth.public_key], clock=lambda: NOW)
    with pytest.raises(SpaError) as e:
        v.check_authorization(flip(raw, offset, 1 << bit), name("/shop/cart"))
    assert reason(e) in ("unauthorized", "tampered")


# -- CLI --------------------------------------------------------------------------------

def tool(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("DMSC_SPA_DIR", None)
    r = subprocess.run([sys.executable, "-m", "forwarder.spa_tool", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode == 0) == ok, (args, r.stdout, r.stderr)
    if not ok:
        assert r.stderr.strip().count("\n") <= 1 and "Traceback" not in r.stderr, r.stderr
    return r


def test_cli_end_to_end(tmp_path):
    d = str(tmp_path / "spa")
    assert "no such directory" in tool("--dir", d, "list", ok=False).stderr
    assert "created" in tool("--dir", d, "init").stdout
    assert "no SPA authority" in tool("--dir", str(tmp_path), "list", ok=False).stderr
    assert "--force" in tool("--dir", d, "init", ok=False).stderr
    out = tool("--dir", d, "issue", "/shop/cart", "--new-service", "cart", "--days", "2").stdout
    assert "serial 1" in out and "/shop/cart" in out
    assert "serial 2" in tool("--dir", d, "issue", "/shop/pay", "--service-key",
                              str(tmp_path / "spa" / "services" / "cart.key")).stdout
    assert "bad prefix" in tool("--dir", d, "issue", "shop", "--new-service", "x",
                                ok=False).stderr
    assert "exists" in tool("--dir", d, "issue", "/a", "--new-service", "cart", ok=False).stderr
    assert "unknown serial" in tool("--dir", d, "revoke", "7", ok=False).stderr

    rows = json.loads(tool("--dir", d, "list", "--json").stdout)
    assert [(r["serial"], r["prefix"], r["status"]) for r in rows] == [
        (1, "/shop/cart", "valid"), (2, "/shop/pay", "valid")]
    tool("--dir", d, "revoke", "1")
    table = tool("--dir", d, "list").stdout.splitlines()
    assert table[0].split()[:2] == ["serial", "prefix"]
    assert table[1].split()[-1] == "revoked" and table[2].split()[-1] == "valid"

    shown = json.loads(tool("--dir", d, "show", f"{d}/authorizations/2.auth", "--json").stdout)
    assert shown["serial"] == 2 and shown["prefix"] == "/shop/pay" and shown["check"] == "valid"
    shown = json.loads(tool("--dir", d, "show", f"{d}/authorizations/1.auth", "--json").stdout)
    assert shown["check"] == "revoked"
    assert "/shop/cart" in tool("show", f"{d}/authorizations/1.auth").stdout
    assert "neither" in tool("show", f"{d}/authority.json", ok=False).stderr
    assert "revoked serials: 1" in tool("--dir", d, "crl").stdout

    # The files work with the library, as a gateway would use them.
    trusted = spa.load_public_key(Path(d) / "authority.pub")
    v = Validator([trusted])
    v.load_revocation_list((Path(d) / "crl.bin").read_bytes())
    ident = ServiceIdentity.load(Path(d) / "services" / "cart.key")
    nonce = new_nonce()
    with pytest.raises(SpaError) as e:
        v.check_registration(ident.authorization.encode(), ident.prove(nonce, "/shop/cart"),
                             nonce, name("/shop/cart"))
    assert reason(e) == "revoked"
    pay = (Path(d) / "authorizations" / "2.auth").read_bytes()
    assert v.check_registration(pay, ident.prove(nonce, "/shop/pay/x"), nonce,
                                name("/shop/pay/x")).serial == 2
    assert stat.S_IMODE((Path(d) / "authority.key").stat().st_mode) == 0o600


def test_cli_help_for_every_command():
    for cmd in ("init", "issue", "list", "revoke", "crl", "show"):
        out = tool(cmd, "--help").stdout
        assert "usage:" in out and len(out.splitlines()) > 3, cmd
