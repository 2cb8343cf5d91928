"""Southbound transport: forwarders' agents connect over TCP and speak newline-delimited JSON.

One selector thread accepts connections, reads and splits lines and hands each
parsed message to the application (`on_message(conn, msg)`, `on_close(conn)`);
the application answers with `conn.send(msg)` from any thread. A send writes
straight to the socket when nothing is waiting, so a policy push to 200
forwarders costs 200 send() calls, not 200 thread switches. The message format
is described in docs/scsc.md ("Southbound protocol").
"""
from __future__ import annotations

import errno
import json
import logging
import selectors
import socket
import threading
from typing import Callable, Dict, Optional, Tuple

log = logging.getLogger("dmsc.scsc.southbound")

PROTOCOL_VERSION = 1
MAX_LINE = 8 * 1024 * 1024  # a telemetry report with a large FIB still fits


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class Conn:
    """One agent's connection."""

    def __init__(self, server: "SouthboundServer", sock: socket.socket, peer: Tuple[str, int]) -> None:
        self.server = server
        self.sock = sock
        self.peer = f"{peer[0]}:{peer[1]}"
        self.node: Optional[str] = None     # set by the application on hello
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.lock = threading.Lock()
        self.closed = False
        self._seq = 0

    def next_seq(self) -> int:
        with self.lock:
            self._seq += 1
            return self._seq

    def send(self, msg: dict) -> int:
        """Add v and seq, send; returns the seq. Never blocks; False-y 0 if closed."""
        if self.closed:
            return 0
        seq = self.next_seq()
        msg = {"v": PROTOCOL_VERSION, "seq": seq, **msg}
        self.send_raw(encode(msg))
        return seq

    def send_raw(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            if self.wbuf:
                self.wbuf += data
                return
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                log.debug("send to %s failed: %s", self.peer, exc)
                self.server.wake(("close", self))
                return
            if n < len(data):
                self.wbuf += data[n:]
                self.server.wake(("want_write", self))

    def __repr__(self) -> str:
        return f"Conn({self.node or '?'} at {self.peer})"


class SouthboundServer:
    def __init__(self, host: str, port: int,
                 on_message: Callable[[Conn, dict], None],
                 on_close: Callable[[Conn], None]) -> None:
        self.on_message = on_message
        self.on_close = on_close
        self.sel = selectors.DefaultSelector()
        self.lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(512)
        self.lsock.setblocking(False)
        self.address = self.lsock.getsockname()[:2]
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._todo = []
        self._todo_lock = threading.Lock()
        self.conns: Dict[int, Conn] = {}
        self._running = False
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._running = True
        self.thread = threading.Thread(target=self._run, name="scsc-southbound", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._running = False
        self.wake(("stop", None))
        if self.thread is not None:
            self.thread.join(1.0)
        for c in list(self.conns.values()):
            self._close(c, notify=False)
        try:
            self.lsock.close()
        except OSError:
            pass

    def wake(self, item) -> None:
        with self._todo_lock:
            self._todo.append(item)
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        while self._running:
            try:
                events = self.sel.select(0.5)
            except OSError:
                break
            for key, mask in events:
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    self._do_todo()
                else:
                    conn = key.data
                    if mask & selectors.EVENT_WRITE:
                        self._flush(conn)
                    if mask & selectors.EVENT_READ:
                        self._read(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("cannot accept: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(self, sock, peer)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)
            log.debug("connection from %s", conn.peer)

    def _do_todo(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._todo_lock:
            todo, self._todo = self._todo, []
        for what, conn in todo:
            if what == "want_write" and not conn.closed:
                try:
                    self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
                except (KeyError, ValueError, OSError):
                    pass
            elif what == "close" and not conn.closed:
                self._close(conn)

    def _flush(self, conn: Conn) -> None:
        with conn.lock:
            try:
                n = conn.sock.send(conn.wbuf)
                del conn.wbuf[:n]
            except BlockingIOError:
                return
            except OSError:
                conn.wbuf.clear()
                pending_close = True
            else:
                pending_close = False
            if not conn.wbuf and not pending_close:
                try:
                    self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
                except (KeyError, ValueError, OSError):
                    pass
        if pending_close:
            self._close(conn)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.rbuf += data
        while True:
            nl = conn.rbuf.find(b"\n")
            if nl < 0:
                if len(conn.rbuf) > MAX_LINE:
                    conn.send({"type": "error", "error": "line too long"})
                    self._close(conn)
                break
            line = bytes(conn.rbuf[:nl])
            del conn.rbuf[:nl + 1]
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                conn.send({"type": "error", "error": f"malformed message: {exc}"})
                continue
            try:
                self.on_message(conn, msg)
            except Exception:
                log.exception("handling %s from %s failed", msg.get("type"), conn)
            if conn.closed:
                return

    def _close(self, conn: Conn, notify: bool = True) -> None:
        with conn.lock:
            if conn.closed:
                return
            conn.closed = True
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        try:
            conn.sock.close()
        except OSError:
            pass
        if notify:
            try:
                self.on_close(conn)
            except Exception:
                log.exception("on_close for %s failed", conn)

    def close_conn(self, conn: Conn) -> None:
        """Close from any thread."""
        self.wake(("close", conn))
