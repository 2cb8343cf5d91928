"""Sockets behind faces: AF_PACKET for Ethernet, UDP, and the local Unix socket.

Each class owns one socket and knows how to read a batch of packets from it and
write one packet to it; the pipeline never sees a socket.
"""
from __future__ import annotations

import collections
import errno
import mmap
import os
import socket
import struct
from pathlib import Path
from typing import Deque, List, Optional, Tuple

from ..dataplane.wire import ETH_HEADER_LEN, ETHERTYPE

PACKET_IGNORE_OUTGOING = 23  # linux/if_packet.h, Linux >= 4.20
SOL_PACKET = 263
BROADCAST = b"\xff" * 6
BATCH = 64
RCVBUF = 4 << 20


class FaceIO:
    """Common queueing: packets that the kernel refused (EAGAIN) wait here by priority."""

    def __init__(self, face_id: int) -> None:
        self.face_id = face_id
        self.queues: List[Deque[bytes]] = [collections.deque() for _ in range(8)]
        self.queued = 0
        self.queue_limit = 1024
        self.sock: Optional[socket.socket] = None
        self.batched = False  # True when writes wait for kick()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes, priority: int = 0) -> str:
        """'sent', 'queued' or a drop reason."""
        if self.queued:
            return self._enqueue(data, priority)
        try:
            self._write(data)
            return "sent"
        except BlockingIOError:
            return self._enqueue(data, priority)
        except OSError as exc:
            return _errno_reason(exc)

    def forward(self, data: bytes, hop: int, length: int, offset: int = 0) -> bool:
        """Zero-copy fast path where the face has one (EtherFace with rings)."""
        return False

    def _enqueue(self, data: bytes, priority: int) -> str:
        if self.queued >= self.queue_limit:
            return "queue_full"
        self.queues[min(max(priority, 0), 7)].append(data)
        self.queued += 1
        return "queued"

    def flush(self) -> int:
        """Write queued packets, highest priority first, until the kernel pushes back."""
        sent = 0
        for q in reversed(self.queues):
            while q:
                try:
                    self._write(q[0])
                except BlockingIOError:
                    return sent
                except OSError:
                    pass  # dropped; the face is going down
                q.popleft()
                self.queued -= 1
                sent += 1
        return sent

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _errno_reason(exc: OSError) -> str:
    return {errno.ENETDOWN: "link_down", errno.ENXIO: "link_down", errno.EMSGSIZE: "too_big",
            errno.ENOBUFS: "no_buffer", errno.ECONNREFUSED: "peer_refused"}.get(exc.errno, "send_error")


PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION, PACKET_TX_RING = 5, 6, 10, 13
TPACKET_V2 = 1
TP_STATUS_USER, TP_STATUS_SEND_REQUEST, TP_STATUS_SENDING = 1, 1, 2
TP_HDR = struct.Struct("<IIIHH")  # tpacket2_hdr: status, len, snaplen, mac, net
TP_DATA = 32                        # TPACKET_ALIGN(sizeof(struct tpacket2_hdr))
SLL_PKTTYPE, SLL_ADDR = TP_DATA + 10, TP_DATA + 12  # struct sockaddr_ll after the header
RING_FRAMES = 256
_TX_HDR = struct.Struct("<II").pack_into


class EtherFace(FaceIO):
    """A raw socket bound to one interface that only sees EtherType 0x88B5.

    With PACKET_MMAP rings (TPACKET_V2) frames are read from and written to
    memory shared with the kernel: no system call per received frame, and one
    send() per batch to transmit everything written since the last flush.
    Without them (an old kernel, no memory) it falls back to recv/send.
    """

    def __init__(self, face_id: int, interface: str, mtu: int = 1500, rings: bool = True) -> None:
        super().__init__(face_id)
        self.interface = interface
        self.frame_max = mtu + ETH_HEADER_LEN + 4
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        try:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # older kernel: outgoing copies are filtered by pkttype below
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
        self.sock = s
        self.rx = self.tx = None
        self.tx_pending = 0
        self.prio_sock: Optional[socket.socket] = None
        if rings:
            try:
                self._setup_rings()
                self.batched = True
            except OSError:
                self.rx = self.tx = None
        s.bind((interface, ETHERTYPE))
        s.setblocking(False)
        self.mac = s.getsockname()[4]
        self.learn(BROADCAST)

    def _setup_rings(self) -> None:
        fsize = 2048
        while fsize < self.frame_max + TP_DATA + 32:
            fsize *= 2
        block = max(fsize, mmap.PAGESIZE)
        nframes = RING_FRAMES
        req = struct.pack("IIII", block, (fsize * nframes) // block, fsize, nframes)
        self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.sock.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
        size = fsize * nframes
        ring = mmap.mmap(self.sock.fileno(), 2 * size, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)
        self.ring = ring
        self.fsize, self.nframes = fsize, nframes
        self.rx, self.tx = 0, size   # offsets of the two rings in the mapping
        self.rx_i = self.tx_i = 0
        self.rx_hole, self.rx_holes = -1, 0   # see _read_ring

    HIGH_PRIORITY = 6  # classes 6 and 7 leave through a socket with SO_PRIORITY 7

    def send(self, data: bytes, priority: int = 0) -> str:
        """High classes bypass the ring on their own socket whose skb->priority a
        prio/HTB qdisc on the interface can serve first under congestion."""
        if priority < self.HIGH_PRIORITY:
            return super().send(data, priority)
        if self.prio_sock is None:
            ps = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            ps.bind((self.interface, 0))
            ps.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 7)
            ps.setblocking(False)
            self.prio_sock = ps
        frame = self.eth_header + data
        try:
            self.prio_sock.send(frame if len(frame) >= 60 else frame.ljust(60, b"\0"))
            return "sent"
        except BlockingIOError:
            return self._enqueue(data, priority)
        except OSError as exc:
            return _errno_reason(exc)

    def kernel_drops(self) -> int:
        """Frames the kernel dropped because we did not read fast enough (since last call)."""
        try:
            packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return 0
        return drops

    @property
    def ring_mode(self) -> bool:
        return self.rx is not None

    def read_batch(self) -> List[bytes]:
        """Up to BATCH whole Ethernet frames without blocking (the packet starts at 14)."""
        if self.rx is not None:
            return self._read_ring()
        out = []
        recv, size = self.sock.recvfrom, self.frame_max
        for _ in range(BATCH):
            try:
                frame, addr = recv(size)
            except (BlockingIOError, OSError):
                break
            if addr[2] != socket.PACKET_OUTGOING and len(frame) >= ETH_HEADER_LEN:
                out.append(frame)
        return out

    def _read_ring(self) -> List[bytes]:
        ring, fsize, n, i = self.ring, self.fsize, self.nframes, self.rx_i
        unpack, pack = TP_HDR.unpack_from, struct.pack_into
        out = []
        for _ in range(BATCH):
            off = i * fsize
            if not ring[off] & TP_STATUS_USER:
                # A slot the kernel moved past without filling (seen after overruns):
                # the next slot is ready while this one stays empty. A slot being
                # filled turns ready within microseconds, so one still empty on the
                # next read, with its successor ready, is a hole: step over it, or
                # the ring would stall for good with every later frame waiting.
                if ring[((i + 1) % n) * fsize] & TP_STATUS_USER:
                    if self.rx_hole == i:
                        self.rx_hole = -1
                        self.rx_holes += 1
                        i = (i + 1) % n
                        continue
                    self.rx_hole = i
                break
            _, length, snap, mac, _ = unpack(ring, off)
            if ring[off + SLL_PKTTYPE] != socket.PACKET_OUTGOING and snap >= ETH_HEADER_LEN:
                out.append(ring[off + mac:off + mac + snap])
            pack("<I", ring, off, 0)  # hand the slot back to the kernel
            i = (i + 1) % n
        self.rx_i = i
        return out

    def learn(self, mac: bytes) -> None:
        """Address frames to the neighbour's MAC (point-to-point links); broadcast until known."""
        self.peer_mac = bytes(mac)
        self.mac_pair = self.peer_mac + self.mac
        self.eth_header = self.mac_pair + b"\x88\xb5"

    def forward(self, data: bytes, hop: int, length: int, offset: int = 0) -> bool:
        """Fast path: copy data[offset:offset + length] into the TX ring with the hop limit byte replaced.

        False when it cannot be done now (no ring, a backlog, a full ring); the caller
        then takes the ordinary send() path, which queues.
        """
        if self.tx is None or self.queued:
            return False
        ring, off = self.ring, self.tx + self.tx_i * self.fsize
        if ring[off] & 3:
            self.kick()
            if ring[off] & 3:
                return False
        d = off + TP_DATA
        flen = 14 + length
        if offset == 14 and len(data) == flen:
            ring[d:d + flen] = data          # one copy of the whole frame...
            ring[d:d + 12] = self.mac_pair   # ...then our addresses over the old ones
        else:
            ring[d:d + 14] = self.eth_header
            ring[d + 14:d + flen] = memoryview(data)[offset:offset + length]
        ring[d + 17] = hop
        if flen < 60:
            ring[d + flen:d + 60] = bytes(60 - flen)
            flen = 60
        _TX_HDR(ring, off, TP_STATUS_SEND_REQUEST, flen)
        self.tx_i = (self.tx_i + 1) % self.nframes
        self.tx_pending += 1
        return True

    def _write(self, data: bytes) -> None:
        frame = self.eth_header + data
        if len(frame) < 60:
            frame = frame.ljust(60, b"\0")
        if self.tx is None:
            self.sock.send(frame)
            return
        ring, off = self.ring, self.tx + self.tx_i * self.fsize
        if ring[off] & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING):
            self.kick()
            if ring[off] & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING):
                raise BlockingIOError
        n = len(frame)
        if n > self.fsize - TP_DATA:
            raise OSError(errno.EMSGSIZE, "frame larger than a ring slot")
        ring[off + TP_DATA:off + TP_DATA + n] = frame
        struct.pack_into("<I", ring, off + 4, n)
        struct.pack_into("<I", ring, off, TP_STATUS_SEND_REQUEST)
        self.tx_i = (self.tx_i + 1) % self.nframes
        self.tx_pending += 1

    def flush(self) -> int:
        sent = super().flush()
        self.kick()
        return sent

    def kick(self) -> int:
        """Transmit every frame written to the TX ring since the last kick."""
        if not self.tx_pending:
            return 0
        sent, self.tx_pending = self.tx_pending, 0
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        except OSError:
            return 0
        return sent

    def carrier(self) -> bool:
        """Operationally up: operstate turns "up" only once the kernel transmits
        again (the carrier bit alone turns 1 a moment before, and frames sent
        then are lost)."""
        base = f"/sys/class/net/{self.interface}/"
        try:
            state = Path(base + "operstate").read_text().strip()
            if state == "unknown":  # drivers that do not report operstate
                return Path(base + "carrier").read_text().strip() == "1"
            return state == "up"
        except OSError:
            return False

    def close(self) -> None:
        if self.rx is not None:
            self.ring.close()
            self.rx = self.tx = None
        if self.prio_sock is not None:
            self.prio_sock.close()
        super().close()


class UdpFace(FaceIO):
    """DMSC over UDP to one peer, to cross an ordinary IP network."""

    def __init__(self, face_id: int, local: Tuple[str, int], remote: Tuple[str, int],
                 shared: Optional[socket.socket] = None) -> None:
        super().__init__(face_id)
        self.remote = remote
        self.queue_limit = 0  # the socket is shared: a full buffer is a drop, counted
        if shared is None:
            fam = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
            shared = socket.socket(fam, socket.SOCK_DGRAM)
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            shared.bind(local)
            shared.setblocking(False)
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock = shared

    def _write(self, data: bytes) -> None:
        self.sock.sendto(data, self.remote)


class UdpSocket:
    """One bound UDP socket shared by the UDP faces on the same local address."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.faces: dict = {}  # (ip, port) -> UdpFace

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self) -> List[Tuple[bytes, Tuple[str, int]]]:
        out = []
        for _ in range(BATCH):
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, OSError):
                break
            out.append((data, addr[:2]))
        return out


class LocalListener:
    """The Service Gateway's Unix socket that applications connect to."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(str(self.path))
        os.chmod(self.path, 0o666)
        s.listen(128)
        s.setblocking(False)
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> Optional[socket.socket]:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, OSError):
            return None
        conn.setblocking(False)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
        return conn

    def close(self) -> None:
        self.sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass


class LocalFace(FaceIO):
    """One connected application."""

    def __init__(self, face_id: int, conn: socket.socket) -> None:
        super().__init__(face_id)
        self.sock = conn
        self.queue_limit = 4096

    def read_batch(self) -> Optional[List[bytes]]:
        """Packets from the app; None when it hung up."""
        out = []
        for _ in range(BATCH):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                return None
            if not data:
                return None if not out else out
            out.append(data)
        return out

    def _write(self, data: bytes) -> None:
        self.sock.send(data)


ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26


class PodFace(FaceIO):
    """The SG's end of a pod's veth: IPv4 frames from the pod (those the kernel fast
    path did not carry already), frames to it (forwarder.gateway decides both)."""

    def __init__(self, face_id: int, interface: str) -> None:
        super().__init__(face_id)
        self.interface = interface
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        try:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind((interface, ETH_P_IP))
        s.setblocking(False)
        self.sock = s
        self.mac = s.getsockname()[4]

    def only_marked(self, mark: int) -> None:
        """Receive only frames the kernel fast path marked for the gateway (classic BPF
        on skb->mark): traffic it passes up between pods' own addresses stays out."""
        import ctypes
        prog = (ctypes.c_uint64 * 4)(*(int.from_bytes(struct.pack("=HBBI", *i), "little") for i in (
            (0x20, 0, 0, 0xFFFFF000 + 20),      # ld mark (SKF_AD_OFF + SKF_AD_MARK)
            (0x15, 0, 1, mark),                 # jeq #mark, accept, drop
            (0x06, 0, 0, 0x40000),              # accept: ret #262144
            (0x06, 0, 0, 0))))                  # drop: ret #0
        fprog = struct.pack("HL", 4, ctypes.addressof(prog))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self._filter = prog   # the kernel copied it; kept only for the record

    def read_batch(self) -> List[bytes]:
        out = []
        for _ in range(BATCH):
            try:
                frame, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, OSError):
                break
            if addr[2] != socket.PACKET_OUTGOING:
                out.append(frame)
        return out

    def _write(self, data: bytes) -> None:
        self.sock.send(data)   # a whole Ethernet frame, made by the gateway
