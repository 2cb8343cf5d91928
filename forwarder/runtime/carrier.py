"""Carrier changes from the kernel over rtnetlink.

A link failure must reach routing the moment the kernel knows it: the
forwarder listens to RTMGRP_LINK on a non-blocking netlink socket in its own
loop (no thread). The two fields it needs (interface name, flags) are decoded
here with struct: pyroute2's parser would add 12 MB to every forwarder.
"""
from __future__ import annotations

import socket
import struct
from typing import Dict, List, Tuple

RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
NLMSG_HDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change
RTATTR = struct.Struct("=HH")
IFLA_IFNAME, IFLA_OPERSTATE = 3, 16
IF_OPER_UNKNOWN, IF_OPER_UP = 0, 6


def parse_link(msg: bytes) -> Tuple[str, int, int]:
    """(interface name, flags, operstate) of one RTM_NEWLINK/RTM_DELLINK message body."""
    _, _, _, flags, _ = IFINFOMSG.unpack_from(msg, 0)
    off, name, oper = IFINFOMSG.size, "", IF_OPER_UNKNOWN
    while off + RTATTR.size <= len(msg):
        length, kind = RTATTR.unpack_from(msg, off)
        if length < RTATTR.size:
            break
        if kind == IFLA_IFNAME:
            name = msg[off + 4:off + length].split(b"\0", 1)[0].decode(errors="replace")
        elif kind == IFLA_OPERSTATE and length > RTATTR.size:
            oper = msg[off + 4]
        off += (length + 3) & ~3
    return name, flags, oper


def is_up(flags: int, oper: int) -> bool:
    """Operationally up, as /sys/class/net/X/operstate says "up": the carrier flag
    turns on a moment before the kernel transmits again (linkwatch), and frames
    sent in between are lost, so the operational state decides."""
    if not flags & IFF_UP:
        return False
    if oper == IF_OPER_UNKNOWN:  # drivers that do not report it
        return bool(flags & IFF_LOWER_UP)
    return oper == IF_OPER_UP


class CarrierMonitor:
    """Reports (ifname, carrier) for the interfaces it watches."""

    def __init__(self, interfaces) -> None:
        self.watched = set(interfaces)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.setblocking(False)
        self.state: Dict[str, bool] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> List[Tuple[str, bool]]:
        """Changes since the last call: [(ifname, carrier_up)]."""
        changes = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ENOBUFS: we missed messages; callers also poll /sys
                break
            off = 0
            while off + NLMSG_HDR.size <= len(data):
                length, mtype, _, _, _ = NLMSG_HDR.unpack_from(data, off)
                if length < NLMSG_HDR.size:
                    break
                if mtype in (RTM_NEWLINK, RTM_DELLINK):
                    name, flags, oper = parse_link(data[off + NLMSG_HDR.size:off + length])
                    if name in self.watched:
                        up = mtype == RTM_NEWLINK and is_up(flags, oper)
                        if self.state.get(name) != up:
                            self.state[name] = up
                            changes.append((name, up))
                off += (length + 3) & ~3
        return changes

    def close(self) -> None:
        self.sock.close()
