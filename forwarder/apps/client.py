"""Application library for the local face (docs/protocol.md, sections 7 and 8).

An application talks to its Service Gateway over an AF_UNIX SOCK_SEQPACKET
socket, one DMSC packet per message. :class:`Client` attaches, then lets any
number of threads ``call`` services while one receiver thread dispatches the
answers by ``(flow_id, seq)``; the same connection can ``serve`` prefixes,
handing reassembled REQUESTs to a thread pool.

Choices worth knowing:

* Every message gets a fresh ``seq`` from one per-client counter, so
  ``(flow_id, seq)`` is unique even across flows; ``flow_id`` is the CRC-32 of
  the source name, so it is stable for a flow (forwarders use it only to break
  ECMP ties on the first packet; the flow table then sticks by names).
* ``flow=None`` uses the client's own name as source, so all its calls to a
  service stick to one instance; ``flow="x"`` uses ``<name>/x``, which the
  gateway accepts as the client's and routes back to it.
* Fragments are sized so that each packet fits ``mtu - 14`` bytes (the Ethernet
  header subtracted, conservatively) -- forwarders never fragment and answer
  TOO_BIG instead.
* Retries (on timeout, and on NACK NO_ROUTE / INSTANCE_UNREACHABLE, which are
  transient while routing converges) draw on a :class:`RetryBudget`, so a sick
  network is not hit with a retry storm. ``timeout`` is per attempt.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

from ..dataplane import wire
from ..dataplane.names import InvalidName, Name
from ..dataplane.wire import (ETH_HEADER_LEN, HEADER_LEN, MAX_PACKET, DecodeError, EchoBody, NackBody,
                   NackReason, Packet, PacketType, RegisterBody, RegisterResult, TlvType)

log = logging.getLogger("dmsc.client")

RECV_SIZE = MAX_PACKET + 1024
RETRYABLE_NACKS = frozenset((int(NackReason.NO_ROUTE), int(NackReason.INSTANCE_UNREACHABLE)))
Handler = Callable[[bytes, Packet], bytes]
NameLike = Union[str, Name]


class DmscError(Exception):
    """Any failure of the DMSC client library."""


class NackError(DmscError):
    """The network refused the request: a NACK came back instead of DATA."""

    def __init__(self, reason: int, node: Name, dst: Optional[Name] = None) -> None:
        self.reason = reason
        try:
            self.reason_name = NackReason(reason).name
        except ValueError:
            self.reason_name = f"REASON_{reason}"
        self.node = node
        self.dst = dst
        where = f" for {dst.text}" if dst is not None else ""
        super().__init__(f"NACK {self.reason_name}{where} from {node.text}")


class CallTimeout(DmscError):
    """No answer within the timeout."""


# ---------------------------------------------------------------------------
# Retry budget
# ---------------------------------------------------------------------------

class RetryBudget:
    """Bounds retries to a fraction of recent traffic (as Finagle's RetryBudget).

    Over a sliding window of ``ttl`` seconds the budget holds
    ``min_retries_per_s * ttl + ratio * requests`` retries, minus the retries
    already made. The floor lets a quiet client still retry; the ratio keeps a
    busy client's retries to e.g. 20 % extra load when everything fails.
    Thread-safe; counts are kept per second, so memory is O(ttl).
    """

    def __init__(self, ratio: float = 0.2, min_retries_per_s: float = 10.0, ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ratio < 0 or min_retries_per_s < 0 or ttl <= 0:
            raise ValueError("ratio and min_retries_per_s must be >= 0, ttl > 0")
        self.ratio = ratio
        self.min_retries_per_s = min_retries_per_s
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: "OrderedDict[int, List[int]]" = OrderedDict()  # second -> [deposits, withdrawals]

    def _slot(self) -> List[int]:
        now = int(self._clock())
        limit = now - int(self.ttl)
        while self._slots:
            first = next(iter(self._slots))
            if first > limit:
                break
            del self._slots[first]
        slot = self._slots.get(now)
        if slot is None:
            slot = self._slots[now] = [0, 0]
        return slot

    def _balance(self) -> float:
        deposits = sum(s[0] for s in self._slots.values())
        withdrawals = sum(s[1] for s in self._slots.values())
        return self.min_retries_per_s * self.ttl + self.ratio * deposits - withdrawals

    def deposit(self) -> None:
        """Record one request (not a retry)."""
        with self._lock:
            self._slot()[0] += 1

    def withdraw(self) -> bool:
        """Take one retry if the budget allows it; False means do not retry."""
        with self._lock:
            slot = self._slot()
            if self._balance() < 1:
                return False
            slot[1] += 1
            return True

    def balance(self) -> int:
        """Retries available now."""
        with self._lock:
            self._slot()
            return max(0, int(self._balance()))


# ---------------------------------------------------------------------------
# Fragmentation (section 8) -- pure functions
# ---------------------------------------------------------------------------

def header_length(pkt: Packet) -> int:
    return HEADER_LEN + len(pkt.dst.wire) + len(pkt.src.wire) + len(wire.encode_tlvs(pkt.tlvs))


def payload_budget(mtu: int, hdr_len: int) -> int:
    """Payload bytes per packet so that the packet plus an Ethernet header fits `mtu`."""
    return min(mtu - ETH_HEADER_LEN, MAX_PACKET) - hdr_len


def split_payload(payload: bytes, budget: int) -> List[bytes]:
    """Cut a payload into chunks of at most `budget` bytes (one empty chunk if empty)."""
    if budget <= 0:
        raise ValueError(f"no room for payload (budget {budget} bytes)")
    if not payload:
        return [b""]
    chunks = [payload[i:i + budget] for i in range(0, len(payload), budget)]
    if len(chunks) > 0xFFFF:
        raise ValueError(f"{len(payload)} bytes need {len(chunks)} fragments; at most 65535")
    return chunks


def fragment(pkt: Packet, mtu: int) -> List[Packet]:
    """The packets that carry `pkt`'s payload, each fitting `mtu` (all share flow_id, seq)."""
    budget = payload_budget(mtu, header_length(pkt))
    if budget <= 0:
        raise ValueError(f"headers of {header_length(pkt)} bytes leave no payload room "
                         f"in MTU {mtu}")
    chunks = split_payload(pkt.payload, budget)
    if len(chunks) == 1:
        return [replace(pkt, frag_index=0, frag_count=1)]
    return [replace(pkt, payload=c, frag_index=i, frag_count=len(chunks))
            for i, c in enumerate(chunks)]


class Reassembler:
    """Collects fragments by (source name, flow_id, seq) into whole messages.

    Incomplete messages are dropped after `timeout` seconds; when buffered
    bytes would exceed `max_bytes` the oldest messages are dropped first, so a
    peer that sends first fragments only cannot exhaust memory. Not
    thread-safe: one receiver thread owns it.
    """

    def __init__(self, timeout: float = 5.0, max_bytes: int = 32 << 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._clock = clock
        # key -> [started, frag_count, {index: packet}, bytes]
        self._partial: "OrderedDict[Tuple[bytes, int, int], list]" = OrderedDict()
        self.buffered = 0
        self.expired = 0
        self.dropped = 0

    def _discard(self, key) -> None:
        entry = self._partial.pop(key)
        self.buffered -= entry[3]

    def expire(self) -> None:
        limit = self._clock() - self.timeout
        while self._partial:
            key, entry = next(iter(self._partial.items()))
            if entry[0] > limit:
                break
            self._discard(key)
            self.expired += 1

    def add(self, pkt: Packet) -> Optional[Packet]:
        """Feed one packet; returns the whole message (frag 0's header) when complete."""
        if pkt.frag_count <= 1:
            return pkt
        self.expire()
        size = len(pkt.payload)
        if size > self.max_bytes:
            self.dropped += 1
            return None
        key = (pkt.src.wire, pkt.flow_id, pkt.seq)
        entry = self._partial.get(key)
        if entry is not None and entry[1] != pkt.frag_count:
            self._discard(key)  # inconsistent sender: start over with this one
            self.dropped += 1
            entry = None
        if entry is None:
            entry = self._partial[key] = [self._clock(), pkt.frag_count, {}, 0]
        parts: Dict[int, Packet] = entry[2]
        if pkt.frag_index in parts:
            return None  # duplicate
        while self.buffered + size > self.max_bytes and self._partial:
            oldest = next(iter(self._partial))
            if oldest == key and len(self._partial) == 1:
                break
            if oldest == key:
                self._partial.move_to_end(key)
                continue
            self._discard(oldest)
            self.dropped += 1
        if self.buffered + size > self.max_bytes:
            self._discard(key)
            self.dropped += 1
            return None
        parts[pkt.frag_index] = pkt
        entry[3] += size
        self.buffered += size
        if len(parts) < entry[1]:
            return None
        self._discard(key)
        payload = b"".join(parts[i].payload for i in range(entry[1]))
        return replace(parts[0], payload=payload, frag_index=0, frag_count=1)

    def __len__(self) -> int:
        return len(self._partial)


# ---------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------

class _Waiter:
    __slots__ = ("event", "packet", "arrived_ns")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.packet: Optional[Packet] = None
        self.arrived_ns: Optional[int] = None

    def set(self, pkt: Optional[Packet]) -> None:
        if pkt is not None:
            self.arrived_ns = time.time_ns()  # on the receiver thread, as it arrives
        self.packet = pkt
        self.event.set()


class EchoResult(NamedTuple):
    """One echo of `Client.echoes`: what was sent, what came back (ECHO_REPLY or
    NACK; None on timeout) and when it arrived (ns since the epoch)."""
    request: Packet
    reply: Optional[Packet]
    arrived_ns: Optional[int]


class Reply:
    """A whole answer to a call: payload plus who answered (the DATA's source)."""

    __slots__ = ("payload", "src", "packet")

    def __init__(self, packet: Packet) -> None:
        self.packet = packet
        self.payload = packet.payload
        self.src = packet.src


def flow_id_for(src: Name) -> int:
    """A stable flow_id for a source name: CRC-32 of its binary form, never 0.

    Not the FNV-1a name hash: forwarders break ECMP ties on
    ``dst_hash ^ src_hash ^ flow_id``, which would cancel the source out and
    send every flow of a service the same way. 0 is left for REGISTER.
    """
    return zlib.crc32(src.wire) or 1


def _trace_tlv(trace: bytes) -> Tuple[int, bytes]:
    if len(trace) != wire.TLV_SIZES[TlvType.TRACE_CONTEXT]:
        raise ValueError(f"trace context must be 25 bytes, not {len(trace)}")
    return (int(TlvType.TRACE_CONTEXT), bytes(trace))


class Client:
    """One attachment to a Service Gateway; usable by many threads at once."""

    def __init__(self, socket_path: str, *, mtu: int = 1500, timeout: float = 1.0,
                 retries: int = 0, budget: Optional[RetryBudget] = None,
                 reassembly_timeout: float = 5.0, max_buffered: int = 32 << 20,
                 identity=None) -> None:
        self.socket_path = socket_path
        self.identity = identity  # spa.ServiceIdentity proving the right to register
        self.nonce = b""          # the gateway's SPA challenge (empty: it asks for none)
        self.mtu = mtu
        self.timeout = timeout
        self.retries = retries
        self.budget = budget if budget is not None else RetryBudget()
        self._lock = threading.Lock()
        self._seq = random.getrandbits(31)
        self._waiters: Dict[Tuple[int, int], _Waiter] = {}
        self._handlers: Dict[Name, Handler] = {}
        self._registered: Dict[Name, Tuple[int, Optional[str]]] = {}
        self._executor: Optional[ThreadPoolExecutor] = None
        self._max_queued = 0
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._closed = threading.Event()
        self._lost = False
        self._rx_replies = Reassembler(reassembly_timeout, max_buffered)
        self._rx_requests = Reassembler(reassembly_timeout, max_buffered)
        self._counts: Dict[str, int] = {"calls": 0, "retries": 0, "timeouts": 0, "served": 0,
                                        "handler_errors": 0, "late_replies": 0, "malformed": 0,
                                        "overload_drops": 0, "unhandled_requests": 0}
        self._nacks: Dict[str, int] = {}
        self._sock = self._connect(socket_path)
        self.name: Name = self._attach(timeout)
        self._rx = threading.Thread(target=self._rx_loop, name=f"dmsc-rx {self.name.text}",
                                    daemon=True)
        self._rx.start()

    # ------------------------------------------------------------ connecting
    @staticmethod
    def _connect(path: str) -> socket.socket:
        if not os.path.exists(path):
            raise DmscError(f"no Service Gateway socket at {path!r} (is the forwarder "
                            "running with role sg, and is this its local socket path?)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(os.path.realpath(path))  # a link to a short /run/dmsc socket
        except OSError as exc:
            sock.close()
            raise DmscError(f"cannot connect to the Service Gateway socket {path!r}: "
                            f"{exc.strerror or exc}") from None
        return sock

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
                data = self._sock.recv(RECV_SIZE)
                if not data:
                    raise DmscError(f"the Service Gateway at {self.socket_path!r} closed "
                                    "the connection during ATTACH")
                try:
                    pkt = wire.decode(data)
                except DecodeError:
                    continue
                if pkt.type == PacketType.ATTACH:
                    self._sock.settimeout(None)
                    self.nonce = pkt.payload
                    return pkt.dst
        except socket.timeout:
            self._sock.close()
            raise CallTimeout(f"no ATTACH answer from the Service Gateway at "
                              f"{self.socket_path!r} within {timeout}s (is the node a "
                              "Service Gateway, role sg?)") from None
        except OSError as exc:
            self._sock.close()
            raise DmscError(f"ATTACH to {self.socket_path!r} failed: {exc}") from None
        except BaseException:
            self._sock.close()
            raise

    # --------------------------------------------------------------- helpers
    def _next_seq(self) -> int:
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            return self._seq

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    @property
    def counters(self) -> dict:
        """Snapshot: calls, retries, timeouts, nacks by reason, served, handler_errors, ..."""
        with self._lock:
            out = dict(self._counts)
            out["nacks"] = dict(self._nacks)
        out["reassembly_expired"] = self._rx_replies.expired + self._rx_requests.expired
        out["reassembly_dropped"] = self._rx_replies.dropped + self._rx_requests.dropped
        return out

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def source_name(self, flow: Optional[str] = None) -> Name:
        """The source name used for `flow` (None: the client's own name)."""
        if flow is None:
            return self.name
        try:
            return self.name.append(flow)
        except InvalidName as exc:
            raise DmscError(f"flow {flow!r} cannot extend {self.name.text}: {exc}") from None

    def _send_packets(self, pkts: List[Packet]) -> None:
        if self._closed.is_set():
            raise DmscError("the client is closed")
        try:
            for p in pkts:
                self._sock.send(p.encode())
        except OSError as exc:
            raise DmscError(f"sending to the Service Gateway failed: {exc}") from None

    def _exchange(self, pkts: List[Packet], timeout: float, what: str) -> Packet:
        """Send packets of one message and wait for the answer with their (flow_id, seq)."""
        key = (pkts[0].flow_id, pkts[0].seq)
        w = _Waiter()
        with self._lock:
            self._waiters[key] = w
        try:
            self._send_packets(pkts)
            if not w.event.wait(timeout):
                raise CallTimeout(f"no answer to {what} within {timeout}s")
        finally:
            with self._lock:
                self._waiters.pop(key, None)
        if w.packet is None:
            raise DmscError(f"the connection to the Service Gateway at {self.socket_path!r} "
                            f"was closed while waiting for {what}")
        return w.packet

    # ------------------------------------------------------------------ calls
    def request(self, name: NameLike, payload: bytes = b"", *, timeout: Optional[float] = None,
                retries: Optional[int] = None, flow: Optional[str] = None,
                priority: Optional[int] = None, trace: Optional[bytes] = None,
                idempotent: bool = True) -> Reply:
        """Like :meth:`call` but returns a :class:`Reply` (payload and responder name).

        With ``idempotent=False`` a timeout is not retried (the service may have
        run the request); NACKs are, since a NACK means it was not delivered.
        """
        dst = Name.parse(name)
        src = self.source_name(flow)
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        tlvs: List[Tuple[int, bytes]] = []
        if priority is not None:
            if not 0 <= priority <= 7:
                raise ValueError(f"priority {priority} not in 0..7")
            tlvs.append((int(TlvType.PRIORITY), bytes((priority,))))
        if trace is not None:
            tlvs.append(_trace_tlv(trace))
        flow_id = flow_id_for(src)
        self._count("calls")
        self.budget.deposit()
        attempt = 0
        while True:
            pkt = Packet(PacketType.REQUEST, dst=dst, src=src, payload=bytes(payload),
                         flow_id=flow_id, seq=self._next_seq(), tlvs=tlvs)
            try:
                pkts = fragment(pkt, self.mtu)
            except ValueError as exc:
                raise DmscError(f"cannot send {len(payload)} bytes to {dst.text}: {exc}") from None
            try:
                ans = self._exchange(pkts, timeout, f"REQUEST {dst.text}")
            except CallTimeout:
                self._count("timeouts")
                if not idempotent or not self._may_retry(attempt, retries):
                    raise
                attempt += 1
                continue
            if ans.type == PacketType.NACK:
                err = self._nack_error(ans)
                if err.reason not in RETRYABLE_NACKS or not self._may_retry(attempt, retries):
                    raise err
                # Routing is converging: back off a little before trying again.
                time.sleep(min(1.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0))
                attempt += 1
                continue
            return Reply(ans)

    def call(self, name: NameLike, payload: bytes = b"", *, timeout: Optional[float] = None,
             retries: Optional[int] = None, flow: Optional[str] = None,
             priority: Optional[int] = None, trace: Optional[bytes] = None,
             idempotent: bool = True) -> bytes:
        """Send a REQUEST to `name`, return the DATA payload.

        Raises NackError (the network refused it), CallTimeout (no answer within
        `timeout` per attempt, after `retries` retries) or DmscError.
        """
        return self.request(name, payload, timeout=timeout, retries=retries, flow=flow,
                            priority=priority, trace=trace, idempotent=idempotent).payload

    def _may_retry(self, attempt: int, retries: int) -> bool:
        if attempt >= retries or self._closed.is_set() or not self.budget.withdraw():
            return False
        self._count("retries")
        return True

    def _nack_error(self, pkt: Packet) -> NackError:
        try:
            body = NackBody.decode(pkt.payload)
            err = NackError(body.reason, pkt.src, body.refused_dst)
        except DecodeError:
            err = NackError(0, pkt.src)
        with self._lock:
            self._nacks[err.reason_name] = self._nacks.get(err.reason_name, 0) + 1
        return err

    def ping(self, name: NameLike, *, timeout: float = 1.0, telemetry: bool = True) -> dict:
        """ECHO_REQUEST to a node or service name: {"rtt_ms", "responder", "hops"}."""
        dst = Name.parse(name)
        echo_id = random.getrandbits(32)
        body = EchoBody(time.time_ns(), echo_id)
        pkt = Packet(PacketType.ECHO_REQUEST, dst=dst, src=self.name, payload=body.encode(),
                     flags=int(wire.Flag.TELEMETRY) if telemetry else 0,
                     flow_id=flow_id_for(self.name), seq=self._next_seq())
        ans = self._exchange([pkt], timeout, f"ECHO_REQUEST {dst.text}")
        now = time.time_ns()
        if ans.type == PacketType.NACK:
            raise self._nack_error(ans)
        try:
            sent = EchoBody.decode(ans.payload).send_time_ns
        except DecodeError:
            sent = body.send_time_ns
        return {"rtt_ms": (now - sent) / 1e6, "responder": ans.src.text,
                "hops": len(ans.tlvs_of(TlvType.HOP_RECORD))}

    def echoes(self, name: NameLike, count: int, interval: float = 0.0, *, size: int = 0,
               telemetry: bool = True, timeout: float = 1.0) -> List[EchoResult]:
        """`count` ECHO_REQUESTs, one every `interval` s (0: back to back), answers
        collected as they come with their arrival times: what per-hop timing needs
        (the replies keep their HOP_RECORDs), which `ping` summarizes away."""
        dst = Name.parse(name)

        def make() -> Packet:
            body = EchoBody(time.time_ns(), random.getrandbits(32), b"\0" * size)
            return Packet(PacketType.ECHO_REQUEST, dst=dst, src=self.name, payload=body.encode(),
                          flags=int(wire.Flag.TELEMETRY) if telemetry else 0,
                          flow_id=flow_id_for(self.name), seq=self._next_seq())
        pkts = [make() for _ in range(count)] if interval == 0 else []
        pending: List[Tuple[Packet, _Waiter, float]] = []
        t0 = time.monotonic()
        try:
            for i in range(count):
                if interval:
                    delay = t0 + i * interval - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    pkt = make()
                else:
                    pkt = pkts[i]
                w = _Waiter()
                with self._lock:
                    self._waiters[(pkt.flow_id, pkt.seq)] = w
                pending.append((pkt, w, time.monotonic() + timeout))
                if interval:
                    self._send_packets([pkt])
            if not interval:
                self._send_packets(pkts)
            out = []
            for pkt, w, deadline in pending:
                w.event.wait(max(0.0, deadline - time.monotonic()))
                out.append(EchoResult(pkt, w.packet, w.arrived_ns))
            return out
        finally:
            with self._lock:
                for pkt, _, _ in pending:
                    self._waiters.pop((pkt.flow_id, pkt.seq), None)

    # ------------------------------------------------------------- registering
    def register(self, prefix: NameLike, *, cost: int = 0,
                 http_backend: Optional[str] = None, identity=None) -> None:
        """Register `prefix` at the gateway; DmscError with the gateway's message if refused.

        With a service identity (spa.ServiceIdentity, or the client's own) the
        REGISTER carries its authorization and a signature over the gateway's
        challenge, as a gateway enforcing SPA requires (docs/protocol.md 11.3)."""
        p = Name.parse(prefix)
        if len(p) == 0:
            raise DmscError("cannot register the empty name /")
        flags = RegisterBody.HTTP if http_backend else 0
        options = json.dumps({"http": http_backend}).encode() if http_backend else b""
        identity = identity or self.identity
        tlvs = identity.register_tlvs(self.nonce, p) if identity is not None and self.nonce else []
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

    def unregister(self, prefix: NameLike) -> None:
        """Withdraw `prefix` (the gateway sends no answer)."""
        p = Name.parse(prefix)
        with self._lock:
            self._registered.pop(p, None)
            self._handlers.pop(p, None)
        self._send_packets([Packet(PacketType.UNREGISTER, dst=p, src=self.name,
                                   seq=self._next_seq())])

    # ----------------------------------------------------------------- serving
    def serve(self, prefix: NameLike, handler: Handler, *, cost: int = 0, workers: int = 8,
              http_backend: Optional[str] = None) -> None:
        """Register `prefix` and answer its REQUESTs with handler(payload, request) -> bytes.

        Handlers run in a pool of `workers` threads (created by the first
        serve). A handler exception is logged and answered with an empty DATA,
        since a NACK is the network's word, not the application's.
        """
        p = Name.parse(prefix)
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="dmsc-serve")
                self._max_queued = workers * 64
            self._handlers[p] = handler
        try:
            self.register(p, cost=cost, http_backend=http_backend)
        except BaseException:
            with self._lock:
                self._handlers.pop(p, None)
            raise

    def _handler_for(self, dst: Name) -> Optional[Handler]:
        with self._lock:
            best, found = -1, None
            for p, h in self._handlers.items():
                if len(p) > best and p.is_prefix_of(dst):
                    best, found = len(p), h
            return found

    def _submit(self, req: Packet) -> None:
        handler = self._handler_for(req.dst)
        with self._lock:
            ex = self._executor
            if handler is None or ex is None:
                self._counts["unhandled_requests"] += 1
                return
            if self._inflight >= self._max_queued:
                self._counts["overload_drops"] += 1
                return
            self._inflight += 1
        try:
            ex.submit(self._handle, handler, req)
        except RuntimeError:  # executor shut down while closing
            self._done_one()

    def _done_one(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def _handle(self, handler: Handler, req: Packet) -> None:
        try:
            try:
                out = handler(req.payload, req)
                if not isinstance(out, (bytes, bytearray, memoryview)):
                    raise TypeError(f"handler returned {type(out).__name__}, not bytes")
                out = bytes(out)
                self._count("served")
            except Exception:
                log.exception("handler for %s failed", req.dst.text)
                self._count("handler_errors")
                out = b""
            reply = Packet(PacketType.DATA, dst=req.src, src=self.name, payload=out,
                           flow_id=req.flow_id, seq=req.seq)
            try:
                self._send_packets(fragment(reply, self.mtu))
            except (DmscError, ValueError) as exc:
                if not self._closed.is_set():
                    log.warning("reply to %s failed: %s", req.src.text, exc)
        finally:
            self._done_one()

    def serve_forever(self) -> None:
        """Block until close(); raises DmscError if the gateway dropped the connection."""
        while not self._closed.wait(0.5):
            pass
        if self._lost:
            raise DmscError(f"the Service Gateway at {self.socket_path!r} closed the connection")

    # ---------------------------------------------------------------- receiving
    def _rx_loop(self) -> None:
        sock = self._sock
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except OSError:
                break
            if not data:
                break
            try:
                pkt = wire.decode(data)
            except DecodeError:
                self._count("malformed")
                continue
            try:
                self._dispatch(pkt)
            except Exception:  # never let one packet kill the receiver
                log.exception("dispatching %s failed", pkt)
        if not self._closed.is_set():
            self._lost = True
            log.warning("Service Gateway at %s closed the connection", self.socket_path)
        self._shutdown_waiters()

    def _dispatch(self, pkt: Packet) -> None:
        t = pkt.type
        if t in (PacketType.DATA, PacketType.NACK, PacketType.ECHO_REPLY,
                 PacketType.REGISTER_RESULT):
            key = (pkt.flow_id, pkt.seq)
            with self._lock:
                w = self._waiters.get(key)
            if w is None or w.event.is_set():
                self._count("late_replies")
                return
            if pkt.frag_count > 1:
                whole = self._rx_replies.add(pkt)
                if whole is None:
                    return
                pkt = whole
            w.set(pkt)
        elif t == PacketType.REQUEST:
            whole = self._rx_requests.add(pkt)
            if whole is not None:
                self._submit(whole)
        # ATTACH repeats and anything else are ignored.

    def _shutdown_waiters(self) -> None:
        self._closed.set()
        with self._lock:
            waiters = list(self._waiters.values())
        for w in waiters:
            if not w.event.is_set():
                w.set(None)

    # ------------------------------------------------------------------ closing
    def close(self, drain: float = 2.0) -> None:
        """Unregister every prefix, let running handlers finish (up to `drain` s), disconnect."""
        if self._closed.is_set() and self._sock.fileno() < 0:
            return
        with self._lock:
            prefixes = list(self._registered)
            self._handlers.clear()
            self._registered.clear()
        if not self._closed.is_set():
            for p in prefixes:
                try:
                    self.unregister(p)
                except DmscError:
                    break
            with self._lock:
                end = time.monotonic() + drain
                while self._inflight > 0 and time.monotonic() < end:
                    self._idle.wait(end - time.monotonic())
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if threading.current_thread() is not self._rx:
            self._rx.join(2.0)
        self._sock.close()
        self._shutdown_waiters()
        ex = self._executor
        if ex is not None:
            ex.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        name = getattr(self, "name", None)
        return f"Client({self.socket_path!r}, name={name.text if name else None})"


# ---------------------------------------------------------------------------
# Conveniences
# ---------------------------------------------------------------------------

_CLIENT_KW = ("mtu", "timeout", "retries", "budget", "reassembly_timeout", "max_buffered")


def serve(socket_path: str, prefix: NameLike, handler: Handler, **kw) -> Client:
    """Attach, register `prefix` and serve it from background threads; returns the Client."""
    ckw = {k: kw.pop(k) for k in list(kw) if k in _CLIENT_KW}
    client = Client(socket_path, **ckw)
    try:
        client.serve(prefix, handler, **kw)
    except BaseException:
        client.close()
        raise
    return client


def call(socket_path: str, name: NameLike, payload: bytes = b"", **kw) -> bytes:
    """One call on a fresh attachment (handy in scripts; costs an ATTACH per call)."""
    ckw = {k: kw.pop(k) for k in list(kw) if k in _CLIENT_KW}
    with Client(socket_path, **ckw) as client:
        return client.call(name, payload, **kw)
