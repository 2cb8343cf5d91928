"""A small client of the SCSC's REST API, optionally from inside a network namespace.

In the namespace lab the SCSC listens on the management network, which only
exists inside namespaces; `netns=` opens the TCP socket there (the calling
process stays where it is), so tests and benchmarks in the root namespace can
still talk to it.
"""
from __future__ import annotations

import http.client
import json
import socket
from typing import Any, Optional, Tuple
from urllib.parse import quote


class ScscHttpError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {body}")


class _Conn(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, netns: Optional[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        if self.netns is None:
            return super().connect()
        from topologies.nsenter import socket_in
        s = socket_in(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect((self.host, self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s


class ScscRest:
    def __init__(self, host: str, port: int, netns: Optional[str] = None, timeout: float = 30.0) -> None:
        self.host, self.port, self.netns, self.timeout = host, port, netns, timeout
        self._conn: Optional[_Conn] = None

    def request(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):  # a kept-alive connection the server closed: retry once
            if self._conn is None:
                self._conn = _Conn(self.host, self.port, self.netns, self.timeout)
            try:
                self._conn.request(method, path, body=data,
                                   headers={"Content-Type": "application/json"} if data else {})
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        try:
            out = json.loads(raw) if raw else None
        except ValueError:
            out = raw.decode(errors="replace")
        return resp.status, out

    def get(self, path: str) -> Any:
        status, out = self.request("GET", path)
        if status != 200:
            raise ScscHttpError(status, out)
        return out

    def post_intent(self, intent: dict, wait: Optional[float] = None) -> Any:
        path = "/intents" + (f"?wait={wait}" if wait is not None else "")
        status, out = self.request("POST", path, intent)
        if status != 200:
            raise ScscHttpError(status, out)
        return out

    def delete_intent(self, kind: str, prefix: str, wait: Optional[float] = None) -> Any:
        path = f"/intents?kind={quote(kind)}&prefix={quote(prefix)}"
        if wait is not None:
            path += f"&wait={wait}"
        status, out = self.request("DELETE", path)
        if status != 200:
            raise ScscHttpError(status, out)
        return out

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None
