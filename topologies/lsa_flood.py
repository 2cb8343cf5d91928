"""A stand-in neighbour's LSA flood: what the LSA-backlog test and benchmark send to a
forwarder to see whether its hellos and ACKs keep going while it works off a backlog.

Every LSA is news (rising sequence numbers, none merged) and carries 30 prefixes, so
that processing one takes long enough for a backlog to form at any machine speed.
"""
from __future__ import annotations

import socket
import time
from typing import List

from forwarder.dataplane import wire
from forwarder.dataplane.names import Name


def lsa_flood_frames(eth: bytes, me: Name, neighbour: Name, count: int = 60_000) -> List[bytes]:
    """`count` LSA frames of `me` (adjacent to `neighbour`), sequence numbers 2, 3, ...;
    `eth` is the Ethernet header (destination, source, EtherType)."""
    prefixes = [wire.LsaPrefix(me)] + [wire.LsaPrefix(Name.parse(f"/t/p{i}"), 1) for i in range(30)]
    body = wire.LsaBody(1, 0, 0, [(neighbour, 1)], prefixes).encode()
    template = bytearray(eth + wire.Packet(wire.PacketType.LSA, dst=wire.LSA_NAME, src=me,
                                           hop_limit=1, payload=body, seq=1).encode())
    at = len(template) - len(body)  # the body's seq; the header's is at 14 + 12
    frames = []
    for seq in range(2, count + 2):
        template[14 + 12:14 + 16] = seq.to_bytes(4, "big")
        template[at:at + 8] = seq.to_bytes(8, "big")
        frames.append(bytes(template))
    return frames


def send_flood(sock: socket.socket, frames: List[bytes], rate: int = 20_000, burst: int = 200,
               again: int = 20) -> None:
    """`rate` frames a second in bursts of `burst` (and the first `again` of each burst a
    second time, as a retransmitting neighbour would): several times what a forwarder
    can process, without merely overrunning its receive ring. A full queue towards it
    loses frames: the flood only has to outpace it."""
    start = time.monotonic()
    for i in range(0, len(frames), burst):
        for f in frames[i:i + burst] + frames[i:i + again]:
            try:
                sock.send(f)
            except OSError:
                pass
        time.sleep(max(0.0, start + (i + burst) / rate - time.monotonic()))
