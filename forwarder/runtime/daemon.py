"""The forwarder process: sockets, timers and child adapters around the pipeline.

One thread runs the event loop and owns the pipeline. The management server
runs in its own thread and hands work to the loop through `call_soon_wait`, so
nothing but the loop ever touches a table.
"""
from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

from ..dataplane import wire
from ..dataplane.wire import ETH_HEADER_LEN
from ..config import NodeConfig
from ..dataplane.facetable import ETHER, LOCAL, UDP
from .events import EVENTS_FILE, EventLog
from .faces import EtherFace, FaceIO, LocalFace, LocalListener, PodFace, UdpFace, UdpSocket
from ..dataplane.names import Name
from ..dataplane.pipeline import Control, Delivered, Forwarder, Noted, Offload, Registered, Send
from ..dataplane.rib import Route
from ..dataplane.strategy import Rule

log = logging.getLogger("dmsc.forwarder")
# Housekeeping: flow and rule expiry, kernel drop counters, the /sys carrier fallback
# (netlink is the fast signal), the revocation list. Once a second: every wake-up of
# an idle forwarder counts when 200 of them share 2 cores.
TICK_S = 1.0
# LSAs handled per turn of the event loop. Hellos and ACKs are handled as they
# arrive; LSAs wait in a queue, so a flood of them (a database exchange, a big
# network coming up) cannot keep a starved forwarder from its hellos, timers and
# management requests for longer than one batch, and adjacencies do not time out
# behind it.
LSA_BATCH = 16
SLOW_TURN_S = 1.0  # a loop turn longer than this is logged



def _carrier_first(event) -> bool:
    """Sort key of a selector event: carrier (link) events first."""
    return event[0].data[0] != "carrier"

class Daemon:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.spa = self._spa_validator(cfg)
        self._crl_mtime = None
        self.core = Forwarder(cfg.node, roles=cfg.roles, hop_limit=cfg.hop_limit,
                              flow_idle=cfg.flow_idle_s, seed=cfg.seed, spa=self.spa,
                              spa_enforce=cfg.spa.enforce)
        self.sel = selectors.DefaultSelector()
        self.io: Dict[int, FaceIO] = {}
        self.udp_sockets: Dict[Tuple[str, int], UdpSocket] = {}
        self.listener: Optional[LocalListener] = None
        self.started = time.time()
        self._timers: List[Tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._calls: "queue.Queue[Callable[[], None]]" = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._running = False
        self._waiters: Dict[Tuple[int, int], Callable[[wire.Packet, float], None]] = {}
        self.children: List[subprocess.Popen] = []
        self._child_specs: Dict[int, tuple] = {}  # pid -> (argv, log file, restarts so far)
        self.control_handler: Optional[Callable[[int, wire.Packet, float], None]] = None
        self.tx_errors: Dict[str, int] = {}
        self._dirty: set = set()  # ring faces with frames written but not yet kicked
        self.on_crl: Optional[Callable[[], None]] = None  # routing re-validates its LSDB
        self.router = None
        # (face id, originator, seq, fragment) -> packet: a copy retransmitted while
        # the first still waits is the same work, so it is not queued twice
        self._lsa_queue: "OrderedDict[tuple, wire.Packet]" = OrderedDict()
        self.lsa_queue_max = 0  # the longest the queue has been (GET /status)
        self.lsa_queue_merged = 0  # LSAs that were already queued (GET /status)
        self.slow_turns = 0  # loop turns longer than SLOW_TURN_S (GET /status)
        self._slow_logged = -1e9
        self._routing_due = float("inf")
        self._routing_token = 0
        self.carrier = None
        self.face_events: Dict[str, dict] = {}  # face name -> last carrier change seen
        self.events = EventLog(cfg.workdir / EVENTS_FILE, cfg.node.text)
        self.offload = None  # forwarder.runtime.offload.KernelOffload when the kernel fast path runs
        self.pods = None     # forwarder.runtime.pods.PodRuntime when this SG has pods
        self.dataplane = {"mode": "python", "reason": "not opened yet"}
        if cfg.routing.enabled:
            from ..routing.backoff import Backoff
            from ..routing.linkstate import LinkStateRouter
            rc = cfg.routing
            self.router = LinkStateRouter(
                cfg.node, hello_interval=rc.hello_ms / 1000, dead_interval=rc.dead_ms / 1000,
                validator=self._validate_prefix, retransmit_interval=rc.retransmit_ms / 1000,
                ack_delay=rc.ack_delay_ms / 1000,
                spf_backoff=Backoff.from_ms(rc.spf_backoff_ms) if rc.spf_backoff_ms else None,
                lsa_backoff=Backoff.from_ms(rc.lsa_backoff_ms) if rc.lsa_backoff_ms else None)
            self.control_handler = self._on_control
            self.on_crl = lambda: self._route_act(self.router.revalidate(time.time()))

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _spa_validator(cfg: NodeConfig):
        if not cfg.spa.enabled:
            return None
        from ..spa import Validator, load_public_key
        return Validator([load_public_key(p) for p in cfg.spa.trust])

    def reload_crl(self) -> None:
        """Apply the revocation list file when it changed (polled; cheap stat)."""
        path = self.cfg.spa.crl
        if self.spa is None or path is None:
            return
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._crl_mtime:
            return
        self._crl_mtime = mtime
        from ..spa import SpaError
        try:
            if self.spa.load_revocation_list(path.read_bytes()):
                log.info("revocation list %s applied", path)
                if self.on_crl is not None:
                    self.on_crl()
        except SpaError as exc:
            log.error("revocation list %s refused: %s", path, exc)

    def open(self) -> None:
        """Open every socket; raises OSError with the face named on failure."""
        now = time.time()
        for fc in self.cfg.faces:
            if fc.type == "ether":
                face = self.core.add_face(ETHER, fc.name, fc.mtu)
                try:
                    io = EtherFace(face.face_id, fc.interface, fc.mtu,
                                   rings=os.environ.get("DMSC_RINGS", "1") != "0")
                except OSError as exc:
                    raise OSError(exc.errno, f"face {fc.name}: cannot open interface "
                                             f"{fc.interface}: {exc.strerror}") from None
                face.up = io.carrier()
            else:
                face = self.core.add_face(UDP, fc.name, fc.mtu)
                us = self.udp_sockets.get(fc.local)
                io = UdpFace(face.face_id, fc.local, fc.remote, us.sock if us else None)
                if us is None:
                    us = self.udp_sockets[fc.local] = UdpSocket(io.sock)
                    self.sel.register(us, selectors.EVENT_READ, ("udp", us))
                us.faces[fc.remote] = io
            self.io[face.face_id] = io
            if fc.type == "ether":
                self.sel.register(io, selectors.EVENT_READ, ("ether", io))
        if self.cfg.pods:
            from .pods import PodRuntime
            self.pods = PodRuntime(self)
            self.pods.open(now)
        self._open_dataplane()
        ether = [fc.interface for fc in self.cfg.faces if fc.type == "ether"]
        if ether:
            from .carrier import CarrierMonitor
            self.carrier = CarrierMonitor(ether)
            self.sel.register(self.carrier, selectors.EVENT_READ, ("carrier", self.carrier))
        if self.router is not None:
            for face in self.core.faces:
                if face.network:
                    cost = self.cfg.routing.costs.get(face.name, 1)
                    self._route_act(self.router.add_face(face.face_id, cost, now))
                    if not face.up:
                        self._route_act(self.router.face_state(face.face_id, False, now))
            self._schedule_routing()
        for r in self.cfg.routes:
            face = self.core.faces.by_name(r.face)
            self.core.add_route(Route(r.prefix, face.face_id, r.cost, r.priority, "static",
                                      r.instance), now)
        for rd in self.cfg.rules:
            self.core.set_rule(Rule.from_json(rd))
        if self.cfg.local_socket is not None:
            self.listener = LocalListener(self.cfg.local_socket)
            self.sel.register(self.listener, selectors.EVENT_READ, ("listen", self.listener))
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self.reload_crl()
        self.every(TICK_S, self._tick)

    def _open_dataplane(self) -> None:
        """Load the kernel fast path on the Ethernet faces, or say why not (`dataplane`)."""
        from ..dataplane.fastpath.pins import pin_dir_for
        from .offload import choose
        faces = [(f.face_id, self.io[f.face_id].interface, f.kind)
                 for f in self.core.faces if f.kind == ETHER and f.face_id in self.io]
        pods = [(p.face_id, self.io[p.face_id].interface, p.address)
                for p in self.pods.gateway.pods.values()] if self.pods is not None else []
        self.offload, reason = choose(self.cfg.dataplane, self.core, pin_dir_for(self.cfg.workdir),
                                      faces, pods)
        self.dataplane = {"mode": "ebpf" if self.offload else "python", "configured":
                          self.cfg.dataplane, "reason": reason}
        if self.offload is not None and self.pods is not None:
            from ..dataplane.fastpath.layout import MARK_GATEWAY
            for face_id in self.pods.gateway.pods:
                self.io[face_id].only_marked(MARK_GATEWAY)
        log.info("data plane %s", reason)
        self.events.emit("dataplane", mode=self.dataplane["mode"], reason=reason)

    def _kernel_generation(self) -> None:
        """Every table change reaches the kernel's generation at once (cheap if none)."""
        if self.offload is not None:
            self.offload.sync_generation()

    def sync_kernel(self) -> None:
        """Merge the kernel's counters into the pipeline's (before anyone reads them)."""
        if self.offload is not None:
            self.offload.merge()

    def start_children(self, python: str = sys.executable) -> None:
        """HTTP adapters run as child processes that die with the forwarder."""
        sock = str(self.cfg.local_socket)
        work = self.cfg.workdir
        if self.cfg.http_proxy:
            host, port = self.cfg.http_proxy
            argv = [python, "-m", "forwarder.apps.http_proxy", "--socket", sock,
                    "--listen", f"{host}:{port}"]
            for h, p in self.cfg.host_map.items():
                argv += ["--map", f"{h}={p}"]
            self._spawn(argv, work / "http_proxy.log")
        for i, svc in enumerate(self.cfg.http_services):
            argv = [python, "-m", "forwarder.apps.http_backend", "--socket", sock,
                    "--prefix", svc.prefix.text, "--backend", f"{svc.backend[0]}:{svc.backend[1]}",
                    "--cost", str(svc.cost)]
            if svc.identity is not None:
                argv += ["--identity", str(svc.identity)]
            self._spawn(argv, work / f"http_backend{i}.log")

    def _spawn(self, argv: List[str], logfile) -> subprocess.Popen:
        out = open(logfile, "ab")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent, cwd=os.getcwd())
        out.close()
        log.info("started %s (pid %d), log %s", argv[2], proc.pid, logfile)
        self.children.append(proc)
        self._child_specs[proc.pid] = (argv, logfile, 0)
        return proc

    def _supervise(self, now: float) -> None:
        """Restart an adapter that exited, with a growing back-off (1, 2, 4 ... 30 s)."""
        for proc in list(self.children):
            if proc.poll() is None:
                continue
            argv, logfile, restarts = self._child_specs.pop(proc.pid, (None, None, 0))
            self.children.remove(proc)
            if argv is None or not self._running:
                continue
            delay = min(30.0, 2.0 ** restarts)
            log.error("adapter %s exited with %s; restarting in %.0f s", argv[2], proc.returncode, delay)

            def again(argv=argv, logfile=logfile, restarts=restarts) -> None:
                if self._running:
                    new = self._spawn(argv, logfile)
                    self._child_specs[new.pid] = (argv, logfile, restarts + 1)
            self.call_later(delay, again)

    # ----------------------------------------------------------------- timers
    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def every(self, period: float, fn: Callable[[], None]) -> None:
        def again() -> None:
            fn()
            self.call_later(period, again)
        self.call_later(period, again)

    def call_soon_wait(self, fn: Callable[[], object], timeout: float = 5.0) -> object:
        """Run fn on the loop thread and return its result (from another thread)."""
        done = threading.Event()
        box: list = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except Exception as exc:  # handed back to the caller's thread
                box.append((False, exc))
            # a change made through the management API holds in the kernel before it is
            # acknowledged: the caller's next packet must not meet the old decision
            self._kernel_generation()
            done.set()
        self._calls.put(run)
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:
            pass
        if not done.wait(timeout):
            raise TimeoutError("the forwarder loop did not answer")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    # ------------------------------------------------------------------- loop
    def run(self) -> None:
        self._running = True
        log.info("forwarder %s up: roles %s, faces %s, local socket %s, management %s",
                 self.cfg.node, ",".join(self.cfg.roles),
                 ", ".join(f.name for f in self.cfg.faces) or "none",
                 self.cfg.local_socket, self.cfg.management)
        select = self.sel.select
        while self._running:
            timeout = 0.0 if self._lsa_queue else 5.0
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            events = select(timeout)
            t_turn = time.monotonic()
            if len(events) > 1:
                # link changes before packets: a frame the kernel passed up because its
                # out interface had just gone down is then routed with that face down
                events.sort(key=_carrier_first)
            for key, mask in events:
                kind, obj = key.data
                if mask & selectors.EVENT_WRITE:
                    self._flush(obj)
                if not mask & selectors.EVENT_READ:
                    continue
                if kind == "ether":
                    self._read_ether(obj)
                elif kind == "udp":
                    self._read_udp(obj)
                elif kind == "local":
                    self._read_local(obj)
                elif kind == "listen":
                    self._accept()
                elif kind == "wake":
                    self._drain_calls()
                elif kind == "carrier":
                    self._carrier_events()
                elif kind == "pod":
                    self.pods.read(obj)
                elif kind == "dns":
                    self.pods.dns_read()
            if self._lsa_queue:
                self._drain_lsas()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                try:
                    fn()
                except Exception:
                    log.exception("timer failed")
            if self._dirty:
                self._kick()
            self._kernel_generation()
            if self.pods is not None:
                self.pods.refresh_services()
            turn = time.monotonic() - t_turn
            if turn > SLOW_TURN_S:
                self._slow_turn(turn, len(events))

    def _slow_turn(self, seconds: float, events: int) -> None:
        """A turn of the loop long enough to endanger adjacencies: say so, with what
        was in it, so that an overloaded lab shows in the logs (at most every 10 s)."""
        self.slow_turns += 1
        self.events.emit("slow_turn", seconds=round(seconds, 3), ready=events,
                         lsa_queue=len(self._lsa_queue))
        now = time.monotonic()
        if now - self._slow_logged >= 10.0:
            self._slow_logged = now
            log.warning("one turn of the event loop took %.2f s (%d ready sources, %d LSAs "
                        "queued, CPU time of this process %.1f s): the machine is overloaded",
                        seconds, events, len(self._lsa_queue), time.process_time())

    def _kick(self) -> None:
        for io in self._dirty:
            io.kick()
        self._dirty.clear()

    def stop(self) -> None:
        """Safe from a signal handler: the loop wakes up at once to notice."""
        self._running = False
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def close(self) -> None:
        if self.carrier is not None:
            self.carrier.close()
        if self.pods is not None:
            self.pods.close()
        if self.offload is not None:
            try:
                self.offload.close()
            except OSError as exc:
                log.warning("kernel fast path: %s", exc)
            self.offload = None
        self.events.close()
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 2.0
        for proc in self.children:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for io in self.io.values():
            io.close()
        if self.listener:
            self.listener.close()

    def _drain_calls(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            fn()

    # -------------------------------------------------------------------- I/O
    def _read_ether(self, io: EtherFace) -> None:
        """The hot loop: flow-table hits go straight from RX ring to TX ring."""
        fast, receive = self.core.fast_forward, self.core.receive
        ios, dirty, faces = self.io, self._dirty, self.core.counters.faces
        fid = io.face_id
        now = time.time()
        for frame in io.read_batch():
            hit = fast(fid, frame, now, 14)
            if hit is None:
                mac = frame[6:12]
                if mac != io.peer_mac:
                    io.learn(mac)
                    if self.offload is not None:
                        self.offload.neighbour_learnt(fid, io)
                self._act(receive(fid, frame[14:], now))
                continue
            out_id, hop, length = hit
            out = ios.get(out_id)
            if self.offload is not None and out is not None:
                self.offload.python_hit(fid, frame, out, io)
            if out is not None and out.forward(frame, hop, length, 14):
                dirty.add(out)
                fc = faces[out_id]
                fc.tx_packets += 1
                fc.tx_bytes += length
                continue
            data = bytearray(frame[14:14 + length])
            data[3] = hop
            self._act((Send(out_id, bytes(data), 0),))

    def _read_udp(self, us: UdpSocket) -> None:
        now = time.time()
        for data, addr in us.read_batch():
            io = us.faces.get(addr)
            if io is None:
                self.core.counters.drop(0, "udp_unknown_peer")
                continue
            self._act(self.core.receive(io.face_id, data, now))

    def _accept(self) -> None:
        conn = self.listener.accept()
        if conn is None:
            return
        face = self.core.add_face(LOCAL, f"app{conn.fileno()}", mtu=65535)
        face.name = f"app-{face.face_id}"
        io = LocalFace(face.face_id, conn)
        self.io[face.face_id] = io
        self.sel.register(io, selectors.EVENT_READ, ("local", io))

    def _read_local(self, io: LocalFace) -> None:
        batch = io.read_batch()
        now = time.time()
        for data in batch or ():
            self._act(self.core.receive(io.face_id, data, now))
        if batch is None:
            self._close_local(io, now)

    def _close_local(self, io: LocalFace, now: float) -> None:
        face = self.core.faces.get(io.face_id)
        self._unregister(io)
        io.close()
        self.io.pop(io.face_id, None)
        self._act(self.core.remove_face(io.face_id, now))
        if face is not None and face.app_name is not None:
            log.info("application %s left", face.app_name)

    def _unregister(self, io: FaceIO) -> None:
        try:
            self.sel.unregister(io)
        except (KeyError, ValueError):
            pass

    def _act(self, actions) -> None:
        for a in actions:
            if type(a) is Send:
                io = self.io.get(a.face_id)
                if io is None:
                    self.core.counters.drop(a.face_id, "no_io")
                    continue
                if type(io) is PodFace:   # a carried packet (or a NACK) for a pod
                    self.pods.deliver(a.face_id, a.data)
                    continue
                res = io.send(a.data, a.priority)
                fc = self.core.counters.faces[a.face_id]
                if res == "sent":
                    fc.tx_packets += 1
                    fc.tx_bytes += len(a.data)
                    if io.batched:
                        self._dirty.add(io)
                elif res == "queued":
                    self._want_flush(io)
                else:
                    self.core.counters.drop(a.face_id, res)
            elif type(a) is Delivered:
                p = a.packet
                cb = self._waiters.pop((p.flow_id, p.seq), None)
                if cb is not None:
                    cb(p, a.time)
            elif type(a) is Control:
                if self.control_handler is not None:
                    self.control_handler(a.face_id, a.packet, time.time())
                else:
                    self.core.counters.drop(a.face_id, "no_routing")
            elif type(a) is Registered:
                log.info("prefix %s %s", a.prefix, "registered" if a.added else "withdrawn")
                self.announce()
            elif type(a) is Offload:
                if self.offload is not None:
                    self._offload(a)
            elif type(a) is Noted:
                log.warning("%s %s", a.kind, a.detail)
                self.events.emit(a.kind, **a.detail)

    def _offload(self, a: Offload) -> None:
        out, inn = self.io.get(a.flow.face_id), self.io.get(a.in_face)
        if out is None or inn is None:
            return
        l4 = self.pods.l4_spec(a) if self.pods is not None and a.kind != "forward" else None
        try:
            self.offload.install(a, out, inn, l4)
        except OSError as exc:  # a full or vanished map: the Python path carries on
            log.warning("kernel fast path: install failed: %s", exc)

    def _want_flush(self, io: FaceIO) -> None:
        """Ask for a write event; UDP faces share a socket and simply drop instead."""
        if isinstance(io, UdpFace):
            return
        key = self.sel.get_key(io)
        if not key.events & selectors.EVENT_WRITE:
            self.sel.modify(io, selectors.EVENT_READ | selectors.EVENT_WRITE, key.data)

    def _flush(self, io: FaceIO) -> None:
        fc = self.core.counters.faces[io.face_id]
        fc.tx_packets += io.flush()
        face = self.core.faces.get(io.face_id)
        if face is not None:
            face.queued = io.queued
        if io.queued == 0:
            key = self.sel.get_key(io)
            self.sel.modify(io, selectors.EVENT_READ, key.data)

    def _tick(self) -> None:
        now = time.time()
        if self.offload is not None:
            self.offload.merge()  # idle times first: a flow busy in the kernel is not idle
        if self.pods is not None:
            self.pods.tick(now)
        self.core.tick(now)
        if self.offload is not None:
            self.offload.prune()
        for fid, io in list(self.io.items()):
            if isinstance(io, EtherFace):
                if io.ring_mode:
                    # the socket is readable only while the slot before the kernel's
                    # head is filled; a ring that skipped slots (faces.EtherFace
                    # ._read_ring) may hold frames and not say so
                    self._read_ether(io)
                lost = io.kernel_drops()
                if lost:
                    fc = self.core.counters.faces[fid]
                    fc.drops["kernel_rx_overrun"] += lost
                    self.core.counters.drops["kernel_rx_overrun"] += lost
                # netlink is the fast signal; this poll catches a missed message
                self._set_carrier(fid, io.carrier(), now, "poll")
        self._supervise(now)
        self.reload_crl()

    # ---------------------------------------------------------------- carrier
    def _carrier_events(self) -> None:
        now = time.time()
        for ifname, up in self.carrier.read():
            for fid, io in self.io.items():
                if isinstance(io, EtherFace) and io.interface == ifname:
                    self._set_carrier(fid, up, now, "netlink")

    def _set_carrier(self, fid: int, up: bool, now: float, source: str) -> None:
        face = self.core.faces.get(fid)
        if face is None or face.up == up:
            return
        log.warning("face %s carrier %s (%s)", face.name, "up" if up else "down", source)
        self.face_events[face.name] = {"up": up, "time": now, "source": source}
        self.events.emit("carrier", face=face.name, up=up, source=source)
        self.core.set_face_state(fid, up, now)
        self._kernel_generation()   # the kernel's entries are decided again, as Python's are
        io = self.io.get(fid)
        if not up and isinstance(io, EtherFace):
            io.learn(b"\xff" * 6)
        if up and isinstance(io, EtherFace) and io.ring_mode:
            self._reopen(io)
        if self.router is not None:
            self._route_act(self.router.face_state(fid, up, now))

    def _reopen(self, old: EtherFace) -> None:
        """Fresh socket and rings once a link is back: after the interface went down
        the kernel's ring positions no longer match ours, and the first frames in
        either direction would wait in the rings (seen as lost pings after a flap)."""
        self._unregister(old)
        self._dirty.discard(old)
        try:
            new = EtherFace(old.face_id, old.interface, old.frame_max - ETH_HEADER_LEN - 4)
        except OSError as exc:
            log.error("face %s: cannot reopen %s: %s", old.face_id, old.interface, exc)
            self.sel.register(old, selectors.EVENT_READ, ("ether", old))
            return
        old.close()
        self.io[old.face_id] = new
        self.sel.register(new, selectors.EVENT_READ, ("ether", new))

    # ---------------------------------------------------------------- routing
    def _validate_prefix(self, prefix: Name, authorization: bytes, originator: Name) -> Optional[str]:
        """SPA check of an advertised prefix; cached by the validator, so cheap on refresh."""
        if self.spa is None:
            return None
        from ..spa import SpaError
        try:
            self.spa.check_authorization(authorization, prefix)
        except SpaError as exc:
            log.warning("prefix %s from %s rejected: %s", prefix, originator, exc)
            return exc.reason
        return None

    def _on_control(self, face_id: int, packet: wire.Packet, now: float) -> None:
        if packet.type == wire.PacketType.LSA:
            key = (face_id, packet.src, packet.seq, packet.frag_index)
            if key in self._lsa_queue:
                self.lsa_queue_merged += 1
                return
            self._lsa_queue[key] = packet
            self.lsa_queue_max = max(self.lsa_queue_max, len(self._lsa_queue))
        else:
            self._route_act(self.router.on_packet(face_id, packet, now))

    def lsa_queue_len(self) -> int:
        return len(self._lsa_queue)

    def _drain_lsas(self) -> None:
        """Hand at most LSA_BATCH queued LSAs to routing (at the current time: the
        router's clock must not run backwards)."""
        q, on_packet, apply = self._lsa_queue, self.router.on_packet, self._route_apply
        for _ in range(min(LSA_BATCH, len(q))):
            key, packet = q.popitem(last=False)
            apply(on_packet(key[0], packet, time.time()))
        self._routing_woken()

    def _schedule_routing(self, only_if_sooner: bool = False) -> None:
        """Run the router's timers exactly when it says something is due: an idle
        forwarder must not wake up for nothing (a 208-node lab shares 2 cores).

        With only_if_sooner, a run already set for that time or earlier stays: a
        busy loop (a backlog of LSAs) calls this every turn, and moving an imminent
        run out again each time would starve hellos, ACKs and SPF for good."""
        now = time.time()
        delay = min(max(self.router.next_tick() - now, 0.002), 1.0)
        due = now + delay
        if only_if_sooner and due >= self._routing_due - 0.001:
            return
        self._routing_token += 1
        token = self._routing_token

        def run() -> None:
            if token != self._routing_token:
                return  # superseded by an earlier run scheduled after it
            self._routing_due = float("inf")
            self._route_apply(self.router.tick(time.time()))
            self._schedule_routing()
        self._routing_due = due
        self.call_later(delay, run)

    def _routing_woken(self) -> None:
        """After an input (a packet, a carrier change, a registration) the router may
        have work due sooner than the timer already set, e.g. an SPF run: bring it forward."""
        if self.router is not None:
            self._schedule_routing(only_if_sooner=True)

    def _route_act(self, actions) -> None:
        self._route_apply(actions)
        self._routing_woken()

    def _route_apply(self, actions) -> None:
        from ..routing.linkstate import RoutesChanged, RoutingEvent, SendControl
        for a in actions:
            if type(a) is SendControl:
                self._act((Send(a.face_id, a.packet.encode(), 7),))
            elif type(a) is RoutesChanged:
                self.core.replace_routes("routing", a.routes, time.time())
                self._kernel_generation()
                self.events.emit("routes_changed", routes=len(a.routes),
                                 prefixes=len({r.prefix for r in a.routes}))
                for r in a.routes:  # so pings and traces can name the hops
                    if r.instance:
                        self.core.names_seen.setdefault(Name.parse(r.instance).hash32, r.instance)
            elif type(a) is RoutingEvent:
                level = logging.WARNING if a.kind.endswith(("down", "rejected")) else logging.INFO
                log.log(level, "routing: %s %s", a.kind, a.detail)
                self.events.emit(a.kind, **a.detail)

    def announce(self) -> None:
        """Tell routing which prefixes this node originates (after any registration change)."""
        if self.router is None:
            return
        prefixes = {}
        for r in self.core.local_prefixes():
            prefixes.setdefault(r.prefix, (r.prefix, r.cost, r.authorization))
        self._route_act(self.router.set_prefixes(list(prefixes.values()), time.time()))

    def shutdown_routing(self) -> None:
        """Flush our LSA so neighbours withdraw our prefixes at once, not after a dead interval."""
        if self.router is not None:
            self._route_act(self.router.shutdown(time.time()))
            self._kick()

    # ------------------------------------------------------- node's own pings
    def echo(self, dst: Name, hop_limit: int, telemetry: bool, timeout: float,
             on_done: Callable[[Optional[wire.Packet], float], None], size: int = 0) -> None:
        """Send an ECHO_REQUEST from the node itself; on_done(reply or None, rtt_s)."""
        now = time.time()
        flow = self.core.next_flow_id()
        body = wire.EchoBody(time.time_ns(), flow, b"\0" * size)
        pkt = wire.Packet(wire.PacketType.ECHO_REQUEST, dst=dst, src=self.core.name,
                          payload=body.encode(), flags=wire.Flag.TELEMETRY if telemetry else 0,
                          hop_limit=hop_limit, flow_id=flow, seq=1)
        sent_at = time.monotonic()
        finished = []

        def got(reply: wire.Packet, t: float) -> None:
            if not finished:
                finished.append(1)
                on_done(reply, time.monotonic() - sent_at)

        def expire() -> None:
            if not finished:
                finished.append(1)
                self._waiters.pop((flow, 1), None)
                on_done(None, timeout)
        self._waiters[(flow, 1)] = got
        self.call_later(timeout, expire)
        self._act(self.core.originate(pkt, now))


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
