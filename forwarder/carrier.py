"""Carrier changes from the kernel over rtnetlink, decoded with pyroute2.

A link failure must reach routing the moment the kernel knows it: the
forwarder listens to RTMGRP_LINK on a non-blocking netlink socket in its own
loop (no thread), and pyroute2's ifinfmsg parser decodes the messages.
"""
from __future__ import annotations

import socket
import struct
from typing import Dict, List, Tuple

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
NLMSG_HDR = struct.Struct("=IHHII")


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
                    msg = ifinfmsg(data[off:off + length])
                    msg.decode()
                    name = msg.get_attr("IFLA_IFNAME")
                    if name in self.watched:
                        up = (mtype == RTM_NEWLINK and bool(msg["flags"] & IFF_UP)
                              and bool(msg["flags"] & IFF_LOWER_UP))
                        if self.state.get(name) != up:
                            self.state[name] = up
                            changes.append((name, up))
                off += (length + 3) & ~3
        return changes

    def close(self) -> None:
        self.sock.close()
