"""A shaped link with a priority class whose counters say which packets took it.

pfifo_fast sends skb priority 6 and 7 first (band 0), but counts per band
nowhere, and this kernel has no prio qdisc. ``shape_with_priority_class``
builds the same thing out of HTB, which counts per class:

    1:    htb (default 1:20)
    1:1   rate = ceil = the link's rate
    1:10  prio 0: skb->priority >= 6 (what pfifo_fast puts in band 0), a tenth
          of the rate guaranteed, the whole rate as ceiling
    1:20  prio 1: everything else, the rest guaranteed, the whole as ceiling

While the priority class stays within its guarantee, HTB serves it first whenever
it has a packet, non-preemptively, as pfifo_fast serves band 0. A packet is put in
its class by a six-instruction eBPF classifier that reads skb->priority: loaded
with the bpf() system call and attached over rtnetlink from this process, so it
needs neither a compiler nor a mounted bpffs; it goes away with the namespace.

``class_stats`` reads ``tc -s class show``: per class, packets and bytes sent,
drops, backlog. A test asserts with them which class a kind of traffic went
through and which class queued or dropped, instead of timing the packets.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import struct
from typing import Dict

from .nsenter import socket_in

PRIORITY_CLASS = "1:10"
BULK_CLASS = "1:20"
_CLASSIDS = {PRIORITY_CLASS: 0x10010, BULK_CLASS: 0x10020}
HIGH_PRIORITY = 6  # skb->priority 6 and 7: pfifo_fast's band 0

_SYS_BPF = 321  # x86_64
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_SKB_PRIORITY_OFFSET = 32  # offsetof(struct __sk_buff, priority)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _classifier(high: int, low: int, min_priority: int = HIGH_PRIORITY) -> bytes:
    """r0 = skb->priority; return r0 >= min_priority ? high : low (cls_bpf: a classid)."""
    return b"".join([
        _insn(0x61, dst=0, src=1, off=_SKB_PRIORITY_OFFSET),  # r0 = *(u32 *)(r1 + 32)
        _insn(0x35, dst=0, off=2, imm=min_priority),           # if r0 >= min goto +2
        _insn(0xB7, dst=0, imm=low),                           # r0 = low
        _insn(0x95),                                           # exit
        _insn(0xB7, dst=0, imm=high),                          # r0 = high
        _insn(0x95)])                                          # exit


def _load(prog: bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    code = ctypes.create_string_buffer(prog, len(prog))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(16384)
    attr = ctypes.create_string_buffer(
        struct.pack("<IIQQIIQ", _BPF_PROG_TYPE_SCHED_CLS, len(prog) // 8, ctypes.addressof(code),
                    ctypes.addressof(lic), 1, len(log), ctypes.addressof(log)), 128)
    fd = libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, attr, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"loading the priority classifier: {os.strerror(err)}: "
                           f"{log.value.decode(errors='replace')}")
    return fd


def _attr(kind: int, payload: bytes) -> bytes:
    a = struct.pack("<HH", 4 + len(payload), kind) + payload
    return a + b"\0" * (-len(a) % 4)


def _attach(netns: str, ifindex: int, fd: int) -> None:
    """RTM_NEWTFILTER: a cls_bpf filter (not direct-action: its return value is the
    classid) on qdisc 1:, every protocol, with the program fd."""
    options = _attr(6, struct.pack("<I", fd)) + _attr(7, b"dmsc-priority\0")  # TCA_BPF_FD, _NAME
    tcm = struct.pack("<BBHiIII", socket.AF_UNSPEC, 0, 0, ifindex, 0, 0x10000,
                      (1 << 16) | socket.htons(0x0003))  # prio 1, ETH_P_ALL
    body = tcm + _attr(1, b"bpf\0") + _attr(2, options)  # TCA_KIND, TCA_OPTIONS
    flags = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST, ACK, CREATE, EXCL
    msg = struct.pack("<IHHII", 16 + len(body), 44, flags, 1, 0) + body  # RTM_NEWTFILTER
    s = socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    try:
        s.bind((0, 0))
        s.send(msg)
        reply = s.recv(65536)
    finally:
        s.close()
    mtype = struct.unpack_from("<H", reply, 4)[0]
    err = struct.unpack_from("<i", reply, 16)[0] if mtype == 2 else 0  # NLMSG_ERROR
    if err:
        raise OSError(-err, f"attaching the priority classifier: {os.strerror(-err)}")


def shape_with_priority_class(node, dev: str, mbit: int) -> None:
    """On an NsNode's interface: the HTB tree above, shaped to `mbit` Mbit/s."""
    tc = lambda *a: node.cmd(["tc", *a])  # noqa: E731
    rate, high = f"{mbit}mbit", max(1, mbit // 10)
    tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20")
    tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate)
    for cls, guaranteed, prio in ((PRIORITY_CLASS, high, "0"), (BULK_CLASS, mbit - high, "1")):
        tc("class", "add", "dev", dev, "parent", "1:1", "classid", cls, "htb",
           "rate", f"{guaranteed}mbit", "ceil", rate, "prio", prio)
    ifindex = json.loads(node.cmd(["ip", "-j", "link", "show", "dev", dev]).stdout)[0]["ifindex"]
    fd = _load(_classifier(_CLASSIDS[PRIORITY_CLASS], _CLASSIDS[BULK_CLASS]))
    try:
        _attach(node.netns, ifindex, fd)
    finally:
        os.close(fd)  # the filter holds the program


_CLASS = re.compile(r"^class htb (\S+) .*?\n\s*Sent (\d+) bytes (\d+) pkt \(dropped (\d+), "
                    r"overlimits (\d+).*?\n\s*backlog ([\d.]+)([KMG]?)b (\d+)p", re.M | re.S)
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def class_stats(node, dev: str) -> Dict[str, dict]:
    """classid -> {"bytes", "packets", "drops", "overlimits", "backlog" (bytes, as tc
    rounds it: "344Kb"), "qlen" (packets queued)}, from ``tc -s class show`` (iproute2
    6.1 prints no JSON for HTB classes)."""
    text = node.cmd(["tc", "-s", "class", "show", "dev", dev]).stdout
    out = {}
    for cls, sent, pkts, drops, over, backlog, unit, qlen in _CLASS.findall(text):
        out[cls] = {"bytes": int(sent), "packets": int(pkts), "drops": int(drops),
                    "overlimits": int(over), "backlog": int(float(backlog) * _UNIT[unit]),
                    "qlen": int(qlen)}
    if not {PRIORITY_CLASS, BULK_CLASS} <= set(out):
        raise RuntimeError(f"tc class show dev {dev}: cannot read the classes from\n{text}")
    return out
