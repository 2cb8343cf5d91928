"""Watch the kernel's IPv4 routes, nexthop objects and links of many namespaces from one thread.

One NETLINK_ROUTE socket per namespace (opened inside it with `socket_in`),
subscribed to IPv4 route, nexthop and link notifications; one thread waits on
all of them and stamps every message with ``time.time()`` when it is read, so
all namespaces share one clock with the process that cuts links.  It keeps
each namespace's main-table routes (prefix -> out interfaces, resolving FRR's
nexthop objects, ``nhid``) so callers can ask when a route moved and when every
node had a route to every prefix.

Standard library only (a few netlink structures by hand).
"""
from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from .nsenter import socket_in

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE, RTNLGRP_NEXTHOP = 1, 7, 32

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300

RTA_DST, RTA_OIF, RTA_MULTIPATH, RTA_TABLE, RTA_NH_ID = 1, 4, 9, 15, 30
NHA_ID, NHA_GROUP, NHA_BLACKHOLE, NHA_OIF = 1, 2, 4, 5
IFLA_IFNAME = 3
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
RT_TABLE_MAIN = 254
RCVBUF = 8 << 20

_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NHMSG = struct.Struct("=BBBBI")
_IFINFO = struct.Struct("=BxHiII")
_RTNH = struct.Struct("=HBBi")


def _attrs(data: bytes, off: int):
    """(type, payload) of each rtattr from ``off`` on."""
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            return
        yield kind & 0x3FFF, data[off + 4: off + length]
        off += (length + 3) & ~3


@dataclass(frozen=True)
class RouteEvent:
    """One change of a watched (node, prefix)'s out interfaces (empty: no route)."""

    time: float
    node: str
    prefix: str
    devs: FrozenSet[str]


@dataclass(frozen=True)
class LinkEvent:
    time: float
    node: str
    intf: str
    up: bool        # administratively up
    carrier: bool   # IFF_LOWER_UP


class _NsState:
    def __init__(self) -> None:
        self.routes: Dict[str, Tuple[Optional[int], FrozenSet[int]]] = {}  # prefix -> (nhid, oifs)
        self.nhs: Dict[int, Tuple[FrozenSet[int], FrozenSet[int]]] = {}    # id -> (oifs, group ids)
        self.ifnames: Dict[int, str] = {}
        self.last_fib_change = 0.0
        self.fib_changes = 0
        self.overruns = 0

    def oifs(self, prefix: str) -> FrozenSet[int]:
        entry = self.routes.get(prefix)
        if entry is None:
            return frozenset()
        nhid, oifs = entry
        if nhid is None:
            return oifs
        return self._nh_oifs(nhid, 0)

    def _nh_oifs(self, nhid: int, depth: int) -> FrozenSet[int]:
        nh = self.nhs.get(nhid)
        if nh is None or depth > 4:
            return frozenset()
        oifs, group = nh
        out = set(oifs)
        for g in group:
            out |= self._nh_oifs(g, depth + 1)
        return frozenset(out)

    def devs(self, prefix: str) -> FrozenSet[str]:
        return frozenset(self.ifnames.get(i, f"if{i}") for i in self.oifs(prefix))


class RouteMonitor:
    """Kernel routing state of many namespaces, updated from netlink notifications.

    ``watch`` (node, prefix) pairs to get a `RouteEvent` each time the prefix's
    out interfaces change there; every route or nexthop message in the main
    table updates the node's ``last_fib_change`` time.
    """

    def __init__(self, namespaces: Dict[str, str]) -> None:
        self._socks: Dict[int, Tuple[str, socket.socket]] = {}
        self._state: Dict[str, _NsState] = {}
        self._lock = threading.Lock()
        self._watched: Dict[Tuple[str, str], FrozenSet[str]] = {}
        self.route_events: List[RouteEvent] = []
        self.link_events: List[LinkEvent] = []
        self._present_since: Dict[Tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._seq = 0
        self._pending: Dict[str, List[int]] = {}
        for node, ns in namespaces.items():
            s = socket_in(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind((0, 0))
            for group in (RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE, RTNLGRP_NEXTHOP):
                s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            s.setblocking(False)
            self._socks[s.fileno()] = (node, s)
            self._state[node] = _NsState()
            self._pending[node] = [RTM_GETLINK, RTM_GETNEXTHOP, RTM_GETROUTE]

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "RouteMonitor":
        """Dump each namespace's links, nexthops and routes, then follow changes."""
        for node, s in self._socks.values():
            self._send_dump(node, s)
        self._thread = threading.Thread(target=self._loop, name="rtmon", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for _, s in self._socks.values():
            s.close()
        self._socks.clear()

    def __enter__(self) -> "RouteMonitor":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def synced(self) -> bool:
        """True once every namespace's initial dumps have been read."""
        with self._lock:
            return not any(self._pending.values())

    # -- queries -------------------------------------------------------------------
    def watch(self, node: str, prefix: str) -> FrozenSet[str]:
        """Report changes of ``prefix``'s out interfaces on ``node``; returns the current ones."""
        with self._lock:
            devs = self._state[node].devs(prefix)
            self._watched[(node, prefix)] = devs
            return devs

    def devs(self, node: str, prefix: str) -> FrozenSet[str]:
        with self._lock:
            return self._state[node].devs(prefix)

    def prefixes(self, node: str) -> Set[str]:
        with self._lock:
            return set(self._state[node].routes)

    def last_fib_change(self, nodes: Optional[Iterable[str]] = None) -> float:
        with self._lock:
            return max((self._state[n].last_fib_change for n in (nodes or self._state)), default=0.0)

    def fib_changes(self) -> Dict[str, int]:
        with self._lock:
            return {n: st.fib_changes for n, st in self._state.items()}

    def overruns(self) -> int:
        with self._lock:
            return sum(st.overruns for st in self._state.values())

    def all_reach(self, targets: Dict[str, str]) -> Optional[float]:
        """If every node has a route to every other node's prefix in ``targets``
        (node -> prefix), the time the last of those routes appeared; else None."""
        last = 0.0
        with self._lock:
            for n, st in self._state.items():
                for m, p in targets.items():
                    if m == n:
                        continue
                    if not st.oifs(p):
                        return None
                    last = max(last, self._present_since.get((n, p), 0.0))
        return last

    # -- netlink -------------------------------------------------------------------
    def _send_dump(self, node: str, s: socket.socket) -> None:
        kind = self._pending[node][0]
        self._seq += 1
        if kind == RTM_GETROUTE:
            body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        elif kind == RTM_GETNEXTHOP:
            body = _NHMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        else:
            body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        s.send(_NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0) + body)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._poll_once(0.2) is None:
                return

    def _poll_once(self, timeout: float, extra: Iterable[int] = ()) -> Optional[List[int]]:
        """Wait up to ``timeout`` for netlink messages and read them all; returns which of
        the ``extra`` fds are readable (None once the sockets are closed)."""
        fds = list(self._socks) + list(extra)
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return None
        for fd in ready:
            if fd not in self._socks:
                continue
            node, s = self._socks[fd]
            while True:
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.ENOBUFS:  # lost messages: read the state again
                        with self._lock:
                            self._state[node].overruns += 1
                            if not self._pending[node]:
                                self._pending[node] = [RTM_GETNEXTHOP, RTM_GETROUTE]
                                self._send_dump(node, s)
                        continue
                    raise
                self._handle(node, s, data, time.time())
        return [fd for fd in ready if fd not in self._socks]

    def _handle(self, node: str, s: socket.socket, data: bytes, now: float) -> None:
        off = 0
        with self._lock:
            st = self._state[node]
            while off + _NLMSG.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    break
                body = data[off + _NLMSG.size: off + length]
                off += (length + 3) & ~3
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    if self._pending[node]:
                        self._pending[node].pop(0)
                        if self._pending[node]:
                            self._send_dump(node, s)
                elif kind in (RTM_NEWROUTE, RTM_DELROUTE):
                    if self._route(node, st, kind, body, now):
                        st.last_fib_change = now
                        st.fib_changes += 1
                        self._check_watched(node, st, now)
                elif kind in (RTM_NEWNEXTHOP, RTM_DELNEXTHOP):
                    self._nexthop(st, kind, body)
                    st.last_fib_change = now
                    st.fib_changes += 1
                    self._check_watched(node, st, now)
                elif kind in (RTM_NEWLINK, RTM_DELLINK):
                    self._link(node, st, kind, body, now)

    def _check_watched(self, node: str, st: _NsState, now: float) -> None:
        for (n, p), old in self._watched.items():
            if n != node:
                continue
            new = st.devs(p)
            if new != old:
                self._watched[(n, p)] = new
                self.route_events.append(RouteEvent(now, n, p, new))

    def _route(self, node: str, st: _NsState, kind: int, body: bytes, now: float) -> bool:
        if len(body) < _RTMSG.size:
            return False
        family, dst_len, _s, _t, table, _p, _sc, _ty, _f = _RTMSG.unpack_from(body)
        if family != socket.AF_INET:
            return False
        dst, oifs, nhid = "0.0.0.0", set(), None
        for a, payload in _attrs(body, _RTMSG.size):
            if a == RTA_TABLE:
                table = struct.unpack_from("=I", payload)[0]
            elif a == RTA_DST:
                dst = socket.inet_ntoa(payload[:4])
            elif a == RTA_OIF:
                oifs.add(struct.unpack_from("=i", payload)[0])
            elif a == RTA_NH_ID:
                nhid = struct.unpack_from("=I", payload)[0]
            elif a == RTA_MULTIPATH:
                o = 0
                while o + _RTNH.size <= len(payload):
                    ln, _fl, _hops, ifindex = _RTNH.unpack_from(payload, o)
                    oifs.add(ifindex)
                    o += (ln + 3) & ~3 if ln >= _RTNH.size else len(payload)
        if table != RT_TABLE_MAIN:
            return False
        prefix = dst if dst_len == 32 else f"{dst}/{dst_len}"
        if kind == RTM_NEWROUTE:
            if prefix not in st.routes:
                self._present_since[(node, prefix)] = now
            st.routes[prefix] = (nhid, frozenset(oifs))
        else:
            st.routes.pop(prefix, None)
        return True

    @staticmethod
    def _nexthop(st: _NsState, kind: int, body: bytes) -> None:
        if len(body) < _NHMSG.size:
            return
        nhid, oifs, group = None, set(), set()
        for a, payload in _attrs(body, _NHMSG.size):
            if a == NHA_ID:
                nhid = struct.unpack_from("=I", payload)[0]
            elif a == NHA_OIF:
                oifs.add(struct.unpack_from("=I", payload)[0])
            elif a == NHA_GROUP:
                for o in range(0, len(payload) - 7, 8):
                    group.add(struct.unpack_from("=I", payload, o)[0])
        if nhid is None:
            return
        if kind == RTM_NEWNEXTHOP:
            st.nhs[nhid] = (frozenset(oifs), frozenset(group))
        else:
            st.nhs.pop(nhid, None)

    def _link(self, node: str, st: _NsState, kind: int, body: bytes, now: float) -> None:
        if len(body) < _IFINFO.size:
            return
        _fam, _type, index, flags, _change = _IFINFO.unpack_from(body)
        name = None
        for a, payload in _attrs(body, _IFINFO.size):
            if a == IFLA_IFNAME:
                name = payload.split(b"\0", 1)[0].decode()
        if name is None:
            return
        st.ifnames[index] = name
        if kind == RTM_NEWLINK:
            self.link_events.append(LinkEvent(now, node, name, bool(flags & IFF_UP),
                                              bool(flags & IFF_LOWER_UP)))


# -- in a process of its own ------------------------------------------------------------------
# In the measuring process the monitor thread competes for the GIL with the
# benchmark's other threads, and its receipt times come late by milliseconds
# under load.  `MonitorProcess` runs the monitor single-threaded in a child
# (SCHED_FIFO if allowed: it sleeps in select() nearly all the time) and asks
# it over a pipe; the child stamps each message as it reads it.

_RPC = ("synced", "watch", "devs", "prefixes", "last_fib_change", "fib_changes", "overruns",
        "all_reach", "events")


def _serve(namespaces: Dict[str, str]) -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError):
        pass
    mon = RouteMonitor(namespaces)
    for node, s in mon._socks.values():
        mon._send_dump(node, s)
    stdin = sys.stdin.buffer
    out = sys.stdout
    buf = b""
    out.write("ready\n")
    out.flush()
    while True:
        ready = mon._poll_once(1.0, [stdin.fileno()])
        if ready is None:
            return
        if not ready:
            continue
        chunk = os.read(stdin.fileno(), 1 << 16)
        if not chunk:  # the parent went away
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            method, args = req["m"], req.get("a", [])
            if method == "events":
                value = {"route": [[e.time, e.node, e.prefix, sorted(e.devs)]
                                   for e in mon.route_events[args[0]:]],
                         "link": [[e.time, e.node, e.intf, e.up, e.carrier]
                                  for e in mon.link_events[args[1]:]]}
            elif method == "stop":
                out.write(json.dumps({"v": None}) + "\n")
                out.flush()
                return
            else:
                value = getattr(mon, method)(*args)
                if isinstance(value, (set, frozenset)):
                    value = sorted(value)
            out.write(json.dumps({"v": value}) + "\n")
            out.flush()


class MonitorProcess:
    """`RouteMonitor`'s queries, answered by a child process (see above).

    ``records`` (a `Records`) records the child so ``clean`` stops it after a crash;
    it also exits by itself when this process closes the pipe.
    """

    def __init__(self, namespaces: Dict[str, str], records=None) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "topologies.rtmon", json.dumps(namespaces)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parent.parent), start_new_session=True)
        if records is not None:
            records.pid(self._proc.pid)
        self._lock = threading.Lock()
        self.route_events: List[RouteEvent] = []
        self.link_events: List[LinkEvent] = []
        if self._proc.stdout.readline().strip() != b"ready":
            self._proc.kill()
            raise RuntimeError("the route monitor process did not start")

    def start(self) -> "MonitorProcess":
        return self

    def _call(self, method: str, *args):
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the route monitor process exited ({self._proc.returncode})")
            self._proc.stdin.write((json.dumps({"m": method, "a": list(args)}) + "\n").encode())
            self._proc.stdin.flush()
            return json.loads(self._proc.stdout.readline())["v"]

    def refresh(self) -> None:
        """Fetch the events recorded since the last call into route_events / link_events."""
        v = self._call("events", len(self.route_events), len(self.link_events))
        self.route_events += [RouteEvent(t, n, p, frozenset(d)) for t, n, p, d in v["route"]]
        self.link_events += [LinkEvent(t, n, i, u, c) for t, n, i, u, c in v["link"]]

    def synced(self) -> bool:
        return self._call("synced")

    def watch(self, node: str, prefix: str) -> FrozenSet[str]:
        return frozenset(self._call("watch", node, prefix))

    def devs(self, node: str, prefix: str) -> FrozenSet[str]:
        return frozenset(self._call("devs", node, prefix))

    def prefixes(self, node: str) -> Set[str]:
        return set(self._call("prefixes", node))

    def last_fib_change(self, nodes: Optional[Iterable[str]] = None) -> float:
        return self._call("last_fib_change", list(nodes) if nodes is not None else None)

    def fib_changes(self) -> Dict[str, int]:
        return self._call("fib_changes")

    def overruns(self) -> int:
        return self._call("overruns")

    def all_reach(self, targets: Dict[str, str]) -> Optional[float]:
        return self._call("all_reach", targets)

    def stop(self) -> None:
        if self._proc.poll() is None:
            try:
                self._call("stop")
            except (OSError, ValueError, RuntimeError):
                pass
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self) -> "MonitorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
