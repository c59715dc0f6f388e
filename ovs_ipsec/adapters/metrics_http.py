"""A minimal HTTP/1.0 server inside the daemon's ovs.poller loop, for Prometheus scrapes.

prometheus-client's own server runs in a thread; the daemon has one loop and no threads, so the
listening socket and each client are non-blocking and served from `run()`. A client that does
not send its request within `CLIENT_TIMEOUT` is dropped; replies are small and sent with one
bounded write loop.

What /metrics shows (interface names, peer addresses, certificate paths) is for the host's
operator: with no HOST the server listens on the loopback address only, and it has no
authentication. With `MAX_CLIENTS` connected, the listener is left out of the poll set (the
next client waits in the kernel's backlog), so a full table never wakes the loop for nothing.
A successful reply is kept for `CACHE_SECONDS`: scraping faster than that costs the loop nothing
more. A handler that raises answers 500, and the daemon runs on.

May import: stdlib.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLIENT_TIMEOUT = 5.0
MAX_REQUEST = 8192
MAX_CLIENTS = 16
# A snapshot costs work in proportion to the tunnels; Prometheus scrapes every 15 s or more.
CACHE_SECONDS = 1.0
DEFAULT_HOST = "127.0.0.1"
_ERROR_LOG_INTERVAL = 60.0

# (status line, content type, body) for a request path.
Handler = Callable[[str], tuple[str, str, bytes]]


def parse_address(text: str) -> tuple[str, int]:
    """`[HOST]:PORT` -> (host, port); HOST defaults to the loopback address (127.0.0.1), IPv6
    in brackets; every address is asked for explicitly (`0.0.0.0:PORT`, `[::]:PORT`)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--metrics-address must be [HOST]:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or DEFAULT_HOST, int(port_text)


@dataclass
class _Client:
    sock: socket.socket
    started: float
    data: bytes = b""
    out: bytes = b""
    done: bool = field(default=False)


class HttpServer:
    def __init__(
        self,
        address: tuple[str, int],
        handler: Handler,
        clock: Callable[[], float] = time.monotonic,
        log_error: Callable[[str], None] | None = None,
    ) -> None:
        """`log_error` is called inside the `except` block of a failed handler (so that
        vlog.exception logs its traceback), at most once a minute."""
        host, port = address
        family = socket.AF_INET6 if ":" in host or not host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("", "::"):
            # Also IPv4 on "[::]": accept both families on the unspecified address.
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind((host or "::", port))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.handler = handler
        self.clock = clock
        self.log_error = log_error
        self.clients: list[_Client] = []
        # path -> (when, status, content type, body) of its last successful reply.
        self._cache: dict[str, tuple[float, str, str, bytes]] = {}
        self._error_logged: float | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def run(self) -> None:
        now = self.clock()
        while len(self.clients) < MAX_CLIENTS:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            conn.setblocking(False)
            self.clients.append(_Client(conn, now))
        for client in list(self.clients):
            self._serve(client, now)
            if client.done:
                client.sock.close()
                self.clients.remove(client)

    def _serve(self, client: _Client, now: float) -> None:
        if now - client.started > CLIENT_TIMEOUT:
            client.done = True
            return
        if not client.out:
            try:
                chunk = client.sock.recv(MAX_REQUEST)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                client.done = True
                return
            client.data += chunk
            if not chunk or b"\r\n\r\n" in client.data or len(client.data) > MAX_REQUEST:
                client.out = self._respond(client.data, now)
        if client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                client.done = True
                return
            client.out = client.out[sent:]
            client.done = not client.out

    def _respond(self, request: bytes, now: float) -> bytes:
        line = request.split(b"\r\n", 1)[0].decode("latin-1", "replace").split()
        if len(line) < 2 or line[0] not in ("GET", "HEAD"):
            status, ctype, body = "400 Bad Request", "text/plain", b"bad request\n"
        else:
            status, ctype, body = self._page(line[1].split("?", 1)[0], now)
        head = (
            f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        return head + (b"" if line[:1] == ["HEAD"] else body)

    def _page(self, path: str, now: float) -> tuple[str, str, bytes]:
        cached = self._cache.get(path)
        if cached is not None and 0 <= now - cached[0] < CACHE_SECONDS:
            return cached[1:]
        try:
            status, ctype, body = self.handler(path)
        except Exception:
            logged = self._error_logged
            if self.log_error and (logged is None or now - logged >= _ERROR_LOG_INTERVAL):
                self._error_logged = now
                self.log_error(f"metrics: the handler of {path[:100]!r} failed")
            return "500 Internal Server Error", "text/plain", b"internal error\n"
        if status.startswith("200"):
            # Only the pages the handler knows (a few): unknown paths answer 404 uncached.
            self._cache[path] = (now, status, ctype, body)
        return status, ctype, body

    def wait(self, poller: object) -> None:
        poll_in = select.POLLIN
        if len(self.clients) < MAX_CLIENTS:
            # When full, a waiting client would keep the listener readable: not polled then.
            poller.fd_wait(self.sock, poll_in)  # type: ignore[attr-defined]
        for client in self.clients:
            poller.fd_wait(client.sock, select.POLLOUT if client.out else poll_in)  # type: ignore[attr-defined]
        if self.clients:
            poller.timer_wait(int(CLIENT_TIMEOUT * 1000))  # type: ignore[attr-defined]

    def close(self) -> None:
        for client in self.clients:
            client.sock.close()
        self.clients.clear()
        self.sock.close()
