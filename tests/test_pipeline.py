"""Unit tests of the sans-IO forwarding pipeline: bytes and times in, actions out."""
from __future__ import annotations

import pytest

from forwarder.dataplane import wire
from forwarder.dataplane.names import Name
from forwarder.dataplane.pipeline import Delivered, Forwarder, Offload, Registered, Send
from forwarder.dataplane.rib import Route
from forwarder.dataplane.strategy import Rule
from forwarder.dataplane.wire import NackBody, NackReason, Packet, PacketType

N = Name.parse


def req(dst, src="/node/c/_app/1", **kw) -> bytes:
    return Packet(kw.pop("type", PacketType.REQUEST), N(dst), N(src), kw.pop("payload", b"x"),
                  **kw).encode()


def no_offload(actions):
    """The actions but the kernel offers (Offload), which test_offload_* check."""
    return [a for a in actions if not isinstance(a, Offload)]


def nack_of(actions):
    (send,) = [a for a in actions if isinstance(a, Send)]
    p = wire.decode(send.data)
    assert p.type == PacketType.NACK
    return send.face_id, NackBody.decode(p.payload)


@pytest.fixture
def fwd():
    """Node /node/r with faces up (to c, the client side), e1 and e2 (two ways to /svc)."""
    f = Forwarder("/node/r", seed=1)
    up = f.add_face("ether", "up")
    e1 = f.add_face("ether", "e1")
    e2 = f.add_face("ether", "e2")
    f.add_route(Route(N("/node/c"), up.face_id), 0)
    f.add_route(Route(N("/svc"), e1.face_id, cost=1), 0)
    f.add_route(Route(N("/svc"), e2.face_id, cost=5), 0)
    f.up, f.e1, f.e2 = up.face_id, e1.face_id, e2.face_id
    return f


def test_longest_prefix_on_whole_components(fwd):
    fwd.add_route(Route(N("/shop/cart"), fwd.e2), 0)
    fwd.add_route(Route(N("/shop"), fwd.e1), 0)
    assert fwd.fib.lookup(N("/shop/cart/v2")).prefix == N("/shop/cart")
    assert fwd.fib.lookup(N("/shop/cartoon")).prefix == N("/shop")
    assert fwd.fib.lookup(N("/other")) is None
    (a,) = no_offload(fwd.receive(fwd.up, req("/shop/cart/v2"), 1.0))
    assert a.face_id == fwd.e2
    (a,) = no_offload(fwd.receive(fwd.up, req("/shop/cartoon"), 1.0))
    assert a.face_id == fwd.e1


def test_fib_with_ten_thousand_prefixes(fwd):
    for i in range(10_000):
        fwd.add_route(Route(N(f"/t/s{i % 100}/p{i}"), fwd.e1 if i % 2 else fwd.e2), 0)
    assert len(fwd.fib) >= 10_000
    for i in (0, 1, 4_999, 9_999):
        e = fwd.fib.lookup(N(f"/t/s{i % 100}/p{i}/deeper/name"))
        assert e.prefix == N(f"/t/s{i % 100}/p{i}")
    assert fwd.fib.lookup(N("/t/s1/p2")) is None  # p2 lives under s2


def test_default_route(fwd):
    fwd.add_route(Route(N("/"), fwd.e2), 0)
    (a,) = no_offload(fwd.receive(fwd.up, req("/anything/at/all"), 1.0))
    assert a.face_id == fwd.e2


def test_flow_is_sticky_until_its_face_goes_down_then_fails_over(fwd):
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc"), 1.0))
    assert a.face_id == fwd.e1  # lower cost
    fwd.add_route(Route(N("/other"), fwd.e2), 1.1)           # unrelated change...
    fwd.add_route(Route(N("/svc"), fwd.e2, cost=1), 1.1)     # ...and an equal-cost path
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc"), 1.2))
    assert a.face_id == fwd.e1                               # the flow keeps its hop
    fwd.add_route(Route(N("/svc"), fwd.e2, cost=0), 1.25)    # a strictly better route:
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc"), 1.26))
    assert a.face_id == fwd.e2                               # flows move (no stale detours)
    fwd.set_face_state(fwd.e1, False, 1.3)                   # carrier lost: local failover
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc"), 1.4))
    assert a.face_id == fwd.e2


def test_flows_expire_when_idle(fwd):
    fwd.receive(fwd.up, req("/svc"), 1.0)
    assert len(fwd.flows) == 1
    fwd.tick(1.0 + fwd.flows.idle_timeout - 1)
    assert len(fwd.flows) == 1
    fwd.tick(1.0 + fwd.flows.idle_timeout + 1)
    assert len(fwd.flows) == 0


def test_fast_path_decrements_hop_limit_and_counts(fwd):
    data = req("/svc", hop_limit=9)
    fwd.receive(fwd.up, data, 1.0)
    hit = fwd.fast_forward(fwd.up, data, 1.1)
    assert hit == (fwd.e1, 8, len(data))
    (a,) = no_offload(fwd.receive(fwd.up, data, 1.2))
    assert wire.decode(a.data).hop_limit == 8
    assert fwd.counters.prefixes["/svc"].packets == 3
    assert fwd.counters.faces[fwd.up].rx_packets == 3


def test_hop_limit_exceeded_nacks_the_source(fwd):
    face, body = nack_of(fwd.receive(fwd.up, req("/svc", hop_limit=1), 1.0))
    assert face == fwd.up and body.reason == NackReason.HOP_LIMIT_EXCEEDED
    assert body.refused_dst == N("/svc")
    # a NACK that cannot go further is dropped, never NACKed
    nack = Packet(PacketType.NACK, N("/svc/z"), N("/node/x"), NackBody(1, 1, N("/a")).encode(),
                  hop_limit=1)
    assert fwd.receive(fwd.up, nack.encode(), 1.0) == []
    assert fwd.counters.nacks_sent["hop_limit_exceeded"] == 1


def test_no_route_and_instance_unreachable(fwd):
    face, body = nack_of(fwd.receive(fwd.up, req("/unknown"), 1.0))
    assert body.reason == NackReason.NO_ROUTE
    fwd.set_face_state(fwd.e1, False, 1.0)
    fwd.set_face_state(fwd.e2, False, 1.0)
    face, body = nack_of(fwd.receive(fwd.up, req("/svc"), 1.0))
    assert body.reason == NackReason.INSTANCE_UNREACHABLE
    assert fwd.counters.drops["instance_unreachable"] == 1


def test_never_back_out_of_the_ingress_face(fwd):
    fwd.add_route(Route(N("/back"), fwd.up), 0)
    face, body = nack_of(fwd.receive(fwd.up, req("/back"), 1.0))
    assert face == fwd.up and body.reason == NackReason.INSTANCE_UNREACHABLE
    assert fwd.counters.drops["loop"] == 1


def test_deny_rate_limit_and_priority_rules(fwd):
    fwd.set_rule(Rule(N("/svc/secret"), deny=True))
    _, body = nack_of(fwd.receive(fwd.up, req("/svc/secret/x"), 1.0))
    assert body.reason == NackReason.DENIED
    fwd.set_rule(Rule(N("/svc/slow"), rate=10, burst=3))
    sent = [fwd.receive(fwd.up, req("/svc/slow"), 2.0) for _ in range(5)]
    assert [wire.decode(s[0].data).type for s in sent] == [1, 1, 1, 5, 5]
    _, body = nack_of(sent[-1])
    assert body.reason == NackReason.RATE_LIMITED
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc/slow"), 2.2))  # 0.2 s later: 2 tokens back
    assert wire.decode(a.data).type == PacketType.REQUEST
    fwd.set_rule(Rule(N("/svc/gold"), priority=7))
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc/gold"), 3.0))
    assert a.priority == 7
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc/tlv", tlvs=[(wire.TlvType.PRIORITY, b"\x05")]), 3.0))
    assert a.priority == 5


def test_weighted_choice_between_instances(fwd):
    fwd.add_route(Route(N("/any"), fwd.e1, instance="/node/i1"), 0)
    fwd.add_route(Route(N("/any"), fwd.e2, cost=9, instance="/node/i2"), 0)
    fwd.set_rule(Rule(N("/any"), weights={"/node/i1": 1, "/node/i2": 3}))
    via = {fwd.e1: 0, fwd.e2: 0}
    for k in range(4000):
        (a,) = no_offload(fwd.receive(fwd.up, req("/any", src=f"/node/c/_app/1/f{k}"), 1.0))
        via[a.face_id] += 1
    assert abs(via[fwd.e2] / 4000 - 0.75) < 0.0375


def test_seed_key_makes_weighted_choices_repeatable(tmp_path):
    """`seed` in a node's configuration reaches its strategy table: two forwarders
    configured alike choose alike, flow by flow (tests assert on the split)."""
    from forwarder.config import ConfigError, parse
    cfg = parse({"node": "/node/r", "faces": [], "seed": 42}, tmp_path)
    assert cfg.seed == 42 and parse({"node": "/node/r", "faces": []}, tmp_path).seed is None
    with pytest.raises(ConfigError, match="seed"):
        parse({"node": "/node/r", "faces": [], "seed": "x"}, tmp_path)

    def choices():
        f = Forwarder("/node/r", seed=cfg.seed)
        up, e1, e2 = (f.add_face("ether", n).face_id for n in ("up", "e1", "e2"))
        f.add_route(Route(N("/svc"), e1), 0)
        f.add_route(Route(N("/svc"), e2), 0)
        f.set_rule(Rule(N("/svc"), weights={"e1": 3, "e2": 1}))
        return [f.receive(up, req("/svc", src=f"/node/c/_app/1/f{k}"), 1.0)[0].face_id
                for k in range(200)]
    first = choices()
    assert choices() == first and len(set(first)) == 2


def test_telemetry_appends_hop_records(fwd):
    data = req("/svc", flags=wire.Flag.TELEMETRY)
    (a,) = no_offload(fwd.receive(fwd.up, data, 5.0))
    p = wire.decode(a.data)
    (rec,) = [wire.HopRecord.decode(v) for t, v in p.tlvs if t == wire.TlvType.HOP_RECORD]
    assert rec.node_hash == N("/node/r").hash32
    assert (rec.in_face, rec.out_face, rec.time_ns) == (fwd.up, fwd.e1, 5_000_000_000)


def test_echo_to_the_node_and_trace_material(fwd):
    body = wire.EchoBody(123, 7).encode()
    (a,) = no_offload(fwd.receive(fwd.up, req("/node/r", type=PacketType.ECHO_REQUEST, payload=body), 1.0))
    p = wire.decode(a.data)
    assert (a.face_id, p.type, p.src, p.dst, p.payload) == (
        fwd.up, PacketType.ECHO_REPLY, N("/node/r"), N("/node/c/_app/1"), body)
    # the node's own ping of itself is delivered back to it
    own = Packet(PacketType.ECHO_REQUEST, N("/node/r"), N("/node/r"), body, flow_id=9, seq=1)
    (d,) = fwd.originate(own, 1.0)
    assert isinstance(d, Delivered) and d.packet.type == PacketType.ECHO_REPLY


def test_malformed_packets_are_counted_by_reason(fwd):
    good = req("/svc")
    assert fwd.receive(fwd.up, good[:30], 1.0) == []
    assert fwd.receive(fwd.up, b"\x02" + good[1:], 1.0) == []
    assert fwd.counters.faces[fwd.up].drops == {"truncated": 1, "bad_version": 1}
    reg = Packet(PacketType.REGISTER, N("/x"), N("/node/c")).encode()
    assert fwd.receive(fwd.up, reg, 1.0) == []
    assert fwd.counters.faces[fwd.up].drops["local_only"] == 1


def _local(fwd):
    app = fwd.add_face("local", "app")
    (att,) = fwd.receive(app.face_id, Packet(PacketType.ATTACH, wire.LOCAL_NAME, wire.LOCAL_NAME).encode(), 1.0)
    name = wire.decode(att.data).dst
    return app.face_id, name


def test_local_registration_and_withdrawal(fwd):
    app, name = _local(fwd)
    assert name == N("/node/r/_app/1")
    reg = lambda prefix, seq: Packet(PacketType.REGISTER, N(prefix), name, wire.RegisterBody().encode(),
                                     seq=seq).encode()
    acts = fwd.receive(app, reg("/shop/cart", 1), 1.0)
    res = wire.RegisterResult.decode(wire.decode(acts[0].data).payload)
    assert res.status == res.ACCEPTED and Registered(N("/shop/cart"), True) in acts
    for bad in ("/_dmsc/x", "/node/r/_app/7"):
        acts = fwd.receive(app, reg(bad, 2), 1.0)
        assert wire.RegisterResult.decode(wire.decode(acts[0].data).payload).status == 3
    (a,) = no_offload(fwd.receive(fwd.up, req("/shop/cart/item"), 1.0))
    assert a.face_id == app
    # a spoofed source from the app is dropped
    assert fwd.receive(app, req("/svc", src="/node/other"), 1.0) == []
    assert fwd.counters.faces[app].drops["spoofed_source"] == 1
    # the app leaves: its prefixes are withdrawn
    acts = fwd.remove_face(app, 2.0)
    assert Registered(N("/shop/cart"), False) in acts
    assert fwd.fib.get(N("/shop/cart")) is None


def test_gateway_measures_request_latency(fwd):
    app, name = _local(fwd)
    src = name.text
    fwd.receive(app, req("/svc", src=src, flow_id=4, seq=8), 10.0)
    data = Packet(PacketType.DATA, N(src), N("/svc"), b"r", flow_id=4, seq=8).encode()
    (a,) = no_offload(fwd.receive(fwd.e1, data, 10.002))
    assert a.face_id == app
    pc = fwd.counters.prefixes["/svc"]
    assert pc.requests == 1 and pc.responses == 1
    assert pc.latency.total == 1 and 1_000 < pc.latency.sum_us < 3_000
    assert "dmsc_request_latency_seconds_count" in fwd.counters.prometheus("/node/r", {})


def test_spa_challenge_and_registration_check():
    """With a validator the ATTACH answer carries a fresh challenge and REGISTER must prove it."""
    from forwarder.spa import Authority, ServiceIdentity, Validator
    auth = Authority.generate()
    fwd = Forwarder("/node/g", spa=Validator([auth.public_key]), nonce_source=lambda: b"N" * 16)
    app = fwd.add_face("local", "app")
    (att,) = fwd.receive(app.face_id, Packet(PacketType.ATTACH, wire.LOCAL_NAME, wire.LOCAL_NAME).encode(), 1.0)
    p = wire.decode(att.data)
    assert p.payload == b"N" * 16
    ident = ServiceIdentity.generate()
    ident.authorization = auth.issue(ident.public_key, "/shop/cart")

    def register(prefix, tlvs):
        acts = fwd.receive(app.face_id, Packet(PacketType.REGISTER, N(prefix), p.dst,
                                               wire.RegisterBody().encode(), tlvs=tlvs).encode(),
                           _t.time())
        return wire.RegisterResult.decode(wire.decode(acts[0].data).payload)
    import time as _t
    res = register("/shop/cart/v1", ident.register_tlvs(b"N" * 16, "/shop/cart/v1", now=_t.time()))
    assert res.status == res.ACCEPTED
    assert fwd.fib.get(N("/shop/cart/v1")).nexthops[0].authorization == ident.authorization.encode()
    res = register("/shop/other", ident.register_tlvs(b"N" * 16, "/shop/other", now=_t.time()))
    assert res.status == res.UNAUTHORIZED and res.message.startswith("spa: out_of_subtree")
    res = register("/shop/cart/v2", [])
    assert res.status == res.UNAUTHORIZED and "spa: unauthorized" in res.message
    assert fwd.counters.faces[app.face_id].drops["spa_out_of_subtree"] == 1


def test_long_work_folders_get_short_socket_paths(tmp_path):
    from forwarder.config import parse
    short = parse({"node": "/node/a", "workdir": str(tmp_path)})
    assert short.local_socket == tmp_path / "app.sock"
    deep = tmp_path / ("x" * 120)
    cfg = parse({"node": "/node/a", "workdir": str(deep)})
    assert len(str(cfg.local_socket)) < 100 and str(cfg.local_socket).startswith("/run/dmsc/")
    assert cfg.mgmt_socket.parent == cfg.local_socket.parent


def test_new_priority_applies_to_existing_flows(fwd):
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc"), 1.0))
    assert a.priority == 0
    fwd.set_rule(Rule(N("/svc"), priority=7))   # e.g. the SCSC marks /svc critical
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc"), 1.1))
    assert a.priority == 7 and a.face_id == fwd.e1


def test_flows_leave_a_detour_once_the_best_route_is_back(fwd):
    """After a failure a flow takes a worse route; when the better one returns the flow
    moves back, so stale detours cannot keep a loop alive."""
    fwd.set_face_state(fwd.e1, False, 1.0)
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc"), 1.1))
    assert a.face_id == fwd.e2                 # detour while e1 is down
    fwd.set_face_state(fwd.e1, True, 1.2)
    (a,) = no_offload(fwd.receive(fwd.up, req("/svc"), 1.3))
    assert a.face_id == fwd.e1                 # back on the best route


def test_hop_limit_expiry_forgets_the_flow(fwd):
    data = req("/svc", hop_limit=5)
    fwd.receive(fwd.up, data, 1.0)
    assert len(fwd.flows) == 1
    fwd.receive(fwd.up, req("/svc", hop_limit=1), 1.1)
    assert [f.dst for f in fwd.flows.entries()] == ["/node/c/_app/1"]  # only the NACK's flow


# ------------------------------------------------------------- kernel offload
def offloads(actions):
    return [a for a in actions if isinstance(a, Offload)]


def test_offload_offered_for_a_plain_ether_hop(fwd):
    data = req("/svc/a", hop_limit=9)
    actions = fwd.receive(fwd.up, data, 1.0)
    (send,) = no_offload(actions)
    (off,) = offloads(actions)
    assert send.face_id == fwd.e1
    assert off.key == data[20:wire.validate(data).header_length] and off.in_face == fwd.up
    assert off.flow is fwd.flows.get(wire.flow_key(data)) and off.flow.face_id == fwd.e1
    # with TLVs the key covers them too: the kernel matches names and TLVs alike
    data = req("/svc/b", tlvs=[(wire.TlvType.PRIORITY, b"\x05")])
    (off,) = offloads(fwd.receive(fwd.up, data, 1.1))
    assert off.key == data[20:wire.validate(data).header_length]


def test_no_offload_where_the_kernel_cannot_repeat_the_decision(fwd):
    # TELEMETRY: a hop record per packet
    assert not offloads(fwd.receive(fwd.up, req("/svc/t", flags=wire.Flag.TELEMETRY), 1.0))
    # per-packet policy: a token bucket or a deny
    fwd.set_rule(Rule(N("/svc/limited"), rate=1000, burst=1000))
    assert not offloads(fwd.receive(fwd.up, req("/svc/limited"), 1.0))
    fwd.set_rule(Rule(N("/svc/denied"), deny=True))
    assert not offloads(fwd.receive(fwd.up, req("/svc/denied"), 1.0))
    # a priority is per flow: repeatable
    fwd.set_rule(Rule(N("/svc/gold"), priority=7))
    (off,) = offloads(fwd.receive(fwd.up, req("/svc/gold"), 1.0))
    assert off.flow.priority == 7
    # a UDP face has no kernel fast path
    u = fwd.add_face("udp", "u0")
    fwd.add_route(Route(N("/over/udp"), u.face_id), 0)
    assert not offloads(fwd.receive(fwd.up, req("/over/udp"), 1.0))
    # the last hop limit: refused, never offered
    assert not offloads(fwd.receive(fwd.up, req("/svc/x", hop_limit=1), 1.0))


def test_no_offload_when_this_node_pins_the_instance(fwd):
    """A node that chooses the instance by weight adds an INSTANCE TLV: the bytes change."""
    fwd.add_route(Route(N("/any"), fwd.e1, instance="/node/i1"), 0)
    fwd.add_route(Route(N("/any"), fwd.e2, instance="/node/i2"), 0)
    fwd.set_rule(Rule(N("/any"), weights={"/node/i1": 1, "/node/i2": 1}))
    assert not offloads(fwd.receive(fwd.up, req("/any"), 1.0))
    # downstream of the choice the pin arrives in the packet: repeatable there
    pinned = req("/any", src="/node/c/_app/2",
                 tlvs=[(wire.TlvType.INSTANCE, N("/node/i2").hash32.to_bytes(4, "big"))])
    (off,) = offloads(fwd.receive(fwd.up, pinned, 1.1))
    assert off.flow.face_id == fwd.e2


def test_a_carried_connection_keeps_its_instance_when_the_weights_change(fwd):
    """New weights steer new flows and the calls of existing ones; a carried TCP
    connection (IPV4) stays on the instance chosen for it while it can be reached,
    and is chosen again only when that instance goes."""
    fwd.add_route(Route(N("/any"), fwd.e1, instance="/node/i1"), 0)
    fwd.add_route(Route(N("/any"), fwd.e2, instance="/node/i2"), 0)
    fwd.set_rule(Rule(N("/any"), weights={"/node/i1": 1, "/node/i2": 0}))
    conn = req("/any/_l4/t80", src="/node/c/_pod/0/t4000", type=PacketType.IPV4)
    calls = req("/any/x", src="/node/c/_app/1")
    assert {no_offload(fwd.receive(fwd.up, p, 1.0))[0].face_id for p in (conn, calls)} == {fwd.e1}
    fwd.set_rule(Rule(N("/any"), weights={"/node/i1": 0, "/node/i2": 1}))
    assert no_offload(fwd.receive(fwd.up, conn, 2.0))[0].face_id == fwd.e1
    assert no_offload(fwd.receive(fwd.up, calls, 2.0))[0].face_id == fwd.e2
    fwd.remove_route(N("/any"), "static", fwd.e1, 2.5, "/node/i1")
    assert no_offload(fwd.receive(fwd.up, conn, 3.0))[0].face_id == fwd.e2
