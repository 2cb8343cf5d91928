"""Names (docs/protocol.md section 2): forms, canonical text, matching, limits, hashes."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from forwarder.dataplane.names import (
    COMPONENT_MAX,
    COMPONENTS_MAX,
    FNV_OFFSET,
    NAME_BYTES_MAX,
    InvalidName,
    Name,
    fnv1a32,
    name,
)

# Components and names that respect every limit of section 2.
components = st.binary(min_size=1, max_size=COMPONENT_MAX)
names = st.lists(components, min_size=0, max_size=COMPONENTS_MAX).filter(
    lambda cs: sum(1 + len(c) for c in cs) <= NAME_BYTES_MAX).map(Name)


# --- binary and text forms ---------------------------------------------------

def test_binary_form_of_spec_example() -> None:
    assert name("/shop/cart").wire == bytes.fromhex("0473686f700463617274")


def test_text_and_binary_forms() -> None:
    n = name("/shop/cart/v2")
    assert n.components == (b"shop", b"cart", b"v2")
    assert n.text == str(n) == "/shop/cart/v2"
    assert len(n) == 3
    assert n.bounds() == [5, 10, 13]
    assert Name.from_wire(n.wire) == n


def test_empty_name() -> None:
    root = name("/")
    assert len(root) == 0 and root.wire == b"" and root.text == "/"
    assert Name.from_wire(b"") == root


@given(names)
def test_wire_round_trip(n: Name) -> None:
    assert Name.from_wire(n.wire) == n
    assert Name.from_wire(n.wire).wire == n.wire


@given(names)
def test_text_round_trip(n: Name) -> None:
    assert Name.parse(n.text) == n
    assert Name.parse(n.text).text == n.text


@given(names)
def test_canonical_text_uses_only_unreserved_and_escapes(n: Name) -> None:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%/")
    assert set(n.text) <= allowed


@given(names)
def test_lower_case_escapes_parse_to_the_same_name(n: Name) -> None:
    lowered = "".join(
        part[:3].lower() + part[3:] if part.startswith("%") else part
        for part in _split_escapes(n.text))
    assert Name.parse(lowered) == n


def _split_escapes(text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        if text[i] == "%":
            out.append(text[i:i + 3])
            i += 3
        else:
            out.append(text[i])
            i += 1
    return out


# --- canonical form and escaping ---------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("/shop/cart/", "/shop/cart"),           # one trailing slash ignored
    ("/a%2fb", "/a%2Fb"),                     # escapes are upper case
    ("/a%2Fb", "/a%2Fb"),
    ("/%7e%41", "/~A"),                       # unreserved bytes are not escaped
    ("/a b", "/a%20b"),                       # reserved bytes are escaped
    ("/caf\u00e9", "/caf%C3%A9"),             # non-ASCII text is its UTF-8
    ("/x%00y", "/x%00y"),
    ("/A-Z.a_z~09", "/A-Z.a_z~09"),
])
def test_canonical_form(text: str, canonical: str) -> None:
    assert name(text).text == canonical
    assert name(canonical) == name(text)


def test_escaped_slash_is_part_of_a_component() -> None:
    n = name("/a%2Fb/c")
    assert n.components == (b"a/b", b"c")
    assert n != name("/a/b/c")


def test_equal_exactly_when_canonical_texts_equal() -> None:
    assert name("/Shop") != name("/shop")
    assert name("/%73hop") == name("/shop")
    assert hash(name("/%73hop")) == hash(name("/shop"))


@pytest.mark.parametrize("bad", [
    "/a%", "/a%4", "/a%g1", "/a%1g", "/a%+1", "/a%-0", "/a% f", "/a%0x", "/%%41",
])
def test_malformed_escapes_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidName):
        name(bad)


# --- prefix match --------------------------------------------------------------

def test_whole_component_prefix_match() -> None:
    cart = name("/shop/cart")
    assert cart.is_prefix_of(name("/shop/cart/v2"))
    assert cart.is_prefix_of(name("/shop/cart"))
    assert not cart.is_prefix_of(name("/shop/cartoon"))
    assert not cart.is_prefix_of(name("/shop"))
    assert not name("/shop/cart/v2").is_prefix_of(cart)
    assert name("/").is_prefix_of(cart)


@given(names, names)
def test_prefix_match_is_componentwise(a: Name, b: Name) -> None:
    expected = a.components == b.components[:len(a.components)]
    assert a.is_prefix_of(b) == expected
    # A byte-string prefix test on the text would be wrong; the components are the truth.
    assert a.is_prefix_of(b) == any(p == a for p in b.prefixes())


def test_prefixes_longest_first() -> None:
    assert [p.text for p in name("/a/b/c").prefixes()] == ["/a/b/c", "/a/b", "/a", "/"]


# --- limits --------------------------------------------------------------------

def test_limits_at_the_edge_are_accepted() -> None:
    assert len(name("/" + "/".join("abcdefgh"))) == COMPONENTS_MAX
    assert name("/" + "x" * COMPONENT_MAX).components[0] == b"x" * COMPONENT_MAX
    # 3 x 64 + 1 + 62 = 255 bytes exactly
    edge = Name([b"a" * 63] * 3 + [b"b" * 62])
    assert len(edge.wire) == NAME_BYTES_MAX


@pytest.mark.parametrize("bad", [
    "/" + "/".join("abcdefghi"),                    # 9 components
    "/" + "x" * 64,                                 # 64-byte component
    "/" + "/".join(["a" * 63] * 3 + ["b" * 63]),    # 256 encoded bytes
    "/a//b",                                        # empty component
    "//a",
    "/a//",
    "shop/cart",                                    # no leading slash
    "",
    "/a%zz",                                        # bad escape
    "/a%2",
    "/\udc80",                                      # not encodable
])
def test_bad_text_names_raise(bad: str) -> None:
    with pytest.raises(InvalidName):
        name(bad)


@pytest.mark.parametrize("components", [
    [b"x"] * 9,
    [b"x" * 64],
    [b""],
    [b"a" * 63] * 3 + [b"b" * 63],
])
def test_bad_component_lists_raise(components: list[bytes]) -> None:
    with pytest.raises(InvalidName):
        Name(components)


@pytest.mark.parametrize("wire", [
    b"\x00",                     # empty component
    b"\x05abc",                  # component overruns
    b"\x40" + b"x" * 64,         # 64-byte component
    b"\x01a" * 9,                # 9 components
    b"\x02ab\x03a",
])
def test_bad_binary_names_raise(wire: bytes) -> None:
    with pytest.raises(InvalidName):
        Name.from_wire(wire)


def test_decoded_names_are_shared_and_bad_ones_are_never_kept() -> None:
    first = Name.from_wire(bytearray(b"\x04shop\x04cart"))
    assert Name.from_wire(b"\x04shop\x04cart") is first == name("/shop/cart")
    assert first.text == "/shop/cart" and first.wire == b"\x04shop\x04cart"
    for _ in range(2):  # an invalid form raises every time
        with pytest.raises(InvalidName):
            Name.from_wire(b"\x05abc")


def test_non_text_input_raises() -> None:
    with pytest.raises(InvalidName):
        Name.parse(b"/shop")  # type: ignore[arg-type]


# --- hashes --------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (b"", 0x811C9DC5),
    (b"a", 0xE40C292C),
    (b"foobar", 0xBF9CF968),
])
def test_fnv1a32_known_vectors(data: bytes, expected: int) -> None:
    assert fnv1a32(data) == expected


def test_fnv1a32_continues_from_a_state() -> None:
    assert fnv1a32(b"bar", fnv1a32(b"foo")) == fnv1a32(b"foobar")
    assert fnv1a32(b"") == FNV_OFFSET


@given(names)
def test_hash32_is_fnv_of_binary_form(n: Name) -> None:
    assert n.hash32 == fnv1a32(n.wire)


@given(names)
def test_prefix_hashes_match_each_prefix(n: Name) -> None:
    hashes = n.prefix_hashes()
    assert len(hashes) == len(n)
    assert hashes == [fnv1a32(n.prefix(k).wire) for k in range(1, len(n) + 1)]
    # ...which is also the FNV state after bounds[k-1] bytes of the binary form.
    assert hashes == [fnv1a32(n.wire[:end]) for end in n.bounds()]


# --- structure -----------------------------------------------------------------

def test_append_slice_and_order() -> None:
    n = name("/node/e1").append("_app", b"3")
    assert n.text == "/node/e1/_app/3"
    assert n[:2] == name("/node/e1")
    assert n[0] == b"node"
    assert name("/a") < name("/a/b") < name("/b")
    assert sorted([name("/b"), name("/a")]) == [name("/a"), name("/b")]
    assert repr(name("/a")) == "Name('/a')"
