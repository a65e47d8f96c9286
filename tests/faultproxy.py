"""A fault-injecting HTTP proxy on loopback, in front of a real registry: what a flaky network or a busy
registry does to a client, made repeatable. Each Fault names the requests it hits (method, a regex on the
path, only those with a Range header for the range kinds) and how many of them, counted per path (each blob
its own) or over all. Everything else is forwarded unchanged, and every request is recorded in `seen`."""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.loopback import LoopbackServer, running

BLOB = r"/blobs/sha256:"
MANIFEST = r"/manifests/"
PING = r"^/v2/$"

# what a Fault does:
STATUS = "status"  # answer `status` (and `headers`) without asking the registry
DROP = "drop"  # forward, then send the headers and half the body and close the connection (FIN)
RESET = "reset"  # as DROP, but abort the connection (RST)
IGNORE_RANGE = "ignore-range"  # forward without the Range header: a 200 with the whole blob
EARLY_RANGE = "early-range"  # answer a Range request with 206 for the whole blob (Content-Range from 0)
LATE_RANGE = "late-range"  # answer 'bytes=N-' with the registry's 206 for 'bytes=N+1-'


@dataclass
class Fault:
    kind: str
    path: str  # regex searched in the request path
    method: str = "GET"
    times: int | None = 1  # None: every matching request
    per_path: bool = True
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    _count: Counter[str] = field(default_factory=Counter)

    def hits(self, method: str, path: str, has_range: bool) -> bool:
        """Whether this request is one of the fault's (and count it)."""
        if method != self.method or not re.search(self.path, path):
            return False
        if self.kind in (IGNORE_RANGE, EARLY_RANGE, LATE_RANGE) and not has_range:
            return False
        key = path if self.per_path else ""
        if self.times is not None and self._count[key] >= self.times:
            return False
        self._count[key] += 1
        return True


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    at: float
    fault: str | None


@dataclass
class FaultProxy:
    upstream: str  # HOST:PORT of the registry (plain http)
    faults: list[Fault]
    host: str = ""  # HOST:PORT to give clients
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault_for(self, method: str, path: str, has_range: bool) -> Fault | None:
        with self.lock:
            return next((f for f in self.faults if f.hits(method, path, has_range)), None)

    def ranges(self, path_re: str = BLOB) -> list[Seen]:
        return [s for s in self.seen if s.range and re.search(path_re, s.path)]


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _relay(self, range_header: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """The registry's answer (status, headers less hop-by-hop ones, whole body) with this request's
        Range replaced by range_header."""
        host, _, port = self.server.state.upstream.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"range"}}
        if range_header:
            headers["Range"] = range_header
        try:
            conn.request(self.command, self.path, headers=headers)
            resp = conn.getresponse()
            body = b"" if self.command == "HEAD" else resp.read()
            kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            return resp.status, kept, body
        finally:
            conn.close()

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes, cut: int | None = None) -> None:
        """Answer status, headers and body (only its first `cut` bytes, Content-Length still whole)."""
        self.send_response(status)
        for k, v in headers:
            if k.lower() != "content-length":
                self.send_header(k, v)
        length = next((v for k, v in headers if k.lower() == "content-length"), None)
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = True

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.state
        range_header = self.headers.get("Range")
        fault = proxy.fault_for(self.command, self.path, range_header is not None)
        kind = fault.kind if fault else None
        proxy.seen.append(Seen(self.command, self.path, range_header, time.monotonic(), kind))
        if fault is None:
            self._send(*self._relay(range_header))
        elif kind == STATUS:
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
            headers = [*fault.headers.items(), ("Content-Type", "application/json")]
            self._send(fault.status, headers, body)
        elif kind in (DROP, RESET):
            status, headers, body = self._relay(range_header)
            self._send(status, headers, body, cut=len(body) // 2)
            if kind == RESET:  # linger 0: close() aborts with RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        elif kind == IGNORE_RANGE:
            self._send(*self._relay(None))
        elif kind == EARLY_RANGE:
            status, headers, body = self._relay(None)
            headers = [*headers, ("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")]
            self._send(206 if status == 200 else status, headers, body)
        elif kind == LATE_RANGE:
            assert range_header is not None
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            self._send(*self._relay(f"bytes={start + 1}-"))
        else:
            raise AssertionError(kind)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()


@contextmanager
def serve_proxy(upstream: str, faults: list[Fault]) -> Iterator[FaultProxy]:
    """A running FaultProxy on a free loopback port in front of upstream, stopped when the block ends."""
    proxy = FaultProxy(upstream, faults)
    with running(_Handler, proxy) as server:
        proxy.host = server.host
        yield proxy
