"""Thin adapter over charon's VICI socket: one call, one type conversion, bounded in time.

charon's replies are decoded from bytes to str here, streamed calls are materialised, and
failures become `CharonError` (charon said no; the message is its `errmsg`) or
`CharonUnreachable` (no socket, timeout, EOF: the session is closed and must be reopened).
Secrets are unwrapped only here, at the VICI call.

May import: vici, vici_socket, vici_wire, naming, connections (its types), errors, stdlib.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import vici
import vici.exception
import vici.protocol

from ovs_ipsec.adapters.vici_socket import open_vici
from ovs_ipsec.core import naming, vici_wire
from ovs_ipsec.core.connections import ConnSpec, KeySpec, SharedSpec
from ovs_ipsec.core.vici_wire import bytes_to_text as decode
from ovs_ipsec.errors import CharonError, CharonUnreachable

DEFAULT_VICI_URI = "unix:///var/run/charon.vici"


def vici_path(uri: str) -> str:
    """`unix:///abs/path` -> `/abs/path` (the only transport charon's vici plugin offers us)."""
    parsed = urlparse(uri)
    if (
        parsed.scheme != "unix"
        or not parsed.path.startswith("/")
        or parsed.netloc
        or parsed.query
        or parsed.fragment
        or "?" in uri
        or "#" in uri
    ):
        raise ValueError(f"--vici must look like unix:///absolute/path, got {uri!r}")
    return parsed.path


# While waiting for a reply, the daemon's other duties (the control socket) run this often.
WAIT_SLICE = 0.1
# Requests written ahead of their replies in `pipeline`: enough to keep charon busy while we
# encode the next ones, few enough that a refused batch is never far behind what was sent.
PIPELINE_WINDOW = 32

# A command and its message: a mapping, or a message already encoded (a connection's body).
Request = tuple[str, Mapping[str, Any] | bytes]


class _BoundedTransport(vici.protocol.Transport):
    """vici's Transport lifts the socket timeout after the first byte of a reply, so a charon
    stopped half-way through a reply (SIGSTOP) would block us for ever. This one keeps a single
    deadline per read, and while it waits it calls `on_wait` every WAIT_SLICE seconds so that
    ovs-appctl keeps getting answers from a daemon whose charon hangs."""

    def __init__(
        self, sock: socket.socket, timeout: float, on_wait: Callable[[], None] | None
    ) -> None:
        super().__init__(sock)
        self.timeout = timeout
        self.on_wait = on_wait
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def send(self, packet: bytes) -> None:
        data = memoryview(struct_length(packet) + packet)
        deadline = time.monotonic() + self.timeout
        while data:
            try:
                sent = self.socket.send(data)
            except BlockingIOError:
                sent = 0
            data = data[sent:]
            if data:
                self._wait(deadline, select.POLLOUT)

    def _recvall(self, count: int, timeout: Any = vici.protocol.RECV_TIMEOUT_DEFAULT) -> bytes:
        limit = self.timeout if timeout is vici.protocol.RECV_TIMEOUT_DEFAULT else timeout
        deadline = time.monotonic() + (self.timeout if limit is None else limit)
        data = b""
        while len(data) < count:
            try:
                chunk = self.socket.recv(count - len(data))
            except BlockingIOError:
                self._wait(deadline, select.POLLIN)
                continue
            if not chunk:
                raise ConnectionError("Connection closed")
            data += chunk
        return data

    def _wait(self, deadline: float, events: int) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self._poll.modify(self.socket.fileno(), events)
        if not self._poll.poll(int(min(remaining, WAIT_SLICE) * 1000) + 1) and self.on_wait:
            self.on_wait()


def struct_length(packet: bytes) -> bytes:
    return len(packet).to_bytes(4, "big")


class Charon:
    """The command session. (Events use their own session: a session registered for events
    cannot send requests.)"""

    def __init__(
        self, path: str, timeout: float, on_wait: Callable[[], None] | None = None
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.on_wait = on_wait
        self._session: vici.Session | None = None
        self._socket: socket.socket | None = None
        self._busy = False

    @property
    def connected(self) -> bool:
        return self._session is not None

    def connect(self) -> None:
        self.close()
        sock = open_vici(self.path, self.timeout, "connect")
        session = vici.Session(sock)
        session.transport = _BoundedTransport(sock, self.timeout, self._waiting)
        self._session, self._socket = session, sock

    def _waiting(self) -> None:
        if self.on_wait is not None:
            self.on_wait()

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        self._session, self._socket = None, None

    def fileno(self) -> int | None:
        return self._socket.fileno() if self._socket is not None else None

    def _call(self, command: str, message: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One request: charon's reply, or its refusal raised as CharonError."""
        (outcome,) = self.pipeline([(command, message or {})])
        if isinstance(outcome, CharonError):
            raise outcome
        return outcome

    def _stream(
        self, command: str, event: str, message: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        session = self._require(command)
        self._busy = True
        try:
            return [decode(item) for item in session.streamed_request(command, event, message)]
        except vici.exception.CommandException as exc:
            raise CharonError(command, _errmsg(exc)) from exc
        except (OSError, vici.exception.SessionException) as exc:
            self.close()
            raise CharonUnreachable(command, str(exc) or type(exc).__name__) from exc
        finally:
            self._busy = False

    def pipeline(self, requests: Sequence[Request]) -> list[dict[str, Any] | CharonError]:
        """Send simple (non-streamed) requests without waiting for each reply before the next.

        charon handles the requests of one session in order and answers in order, so the
        outcome is that of calling them one by one: one reply or refusal per request, in the
        requests' order. Only the round trips overlap (charon works on one while we encode the
        next). `CharonUnreachable` if the session fails; what charon did before it is found by
        listing it again."""
        if not requests:
            return []
        session = self._require(requests[0][0])
        transport = session.transport
        self._busy = True
        outcomes: list[dict[str, Any] | CharonError] = []
        in_flight: deque[str] = deque()
        try:
            for command, message in requests:
                payload = (
                    message if isinstance(message, bytes) else vici_wire.encode_message(message)
                )
                transport.send(vici.protocol.Packet.request(command, payload))
                in_flight.append(command)
                if len(in_flight) >= PIPELINE_WINDOW:
                    outcomes.append(_reply(in_flight.popleft(), transport.receive()))
            while in_flight:
                outcomes.append(_reply(in_flight.popleft(), transport.receive()))
        except (OSError, vici.exception.SessionException) as exc:
            self.close()
            raise CharonUnreachable(in_flight[0] if in_flight else requests[0][0],
                                    str(exc) or type(exc).__name__) from exc  # fmt: skip
        finally:
            self._busy = False
        return outcomes

    def _require(self, command: str) -> vici.Session:
        # on_wait runs other handlers while a call is outstanding; one of them calling charon
        # on this session would interleave two requests on one socket.
        if self._busy:
            raise RuntimeError(f"{command}: charon session is busy (re-entrant call)")
        if self._session is None:
            self.connect()
        assert self._session is not None
        return self._session

    @property
    def busy(self) -> bool:
        return self._busy

    # -- reads ----------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return self._call("version")

    def stats(self) -> dict[str, Any]:
        return self._call("stats")

    def get_algorithms(self) -> dict[str, Any]:
        """The algorithms charon's plugins provide, by type (section) and name."""
        return self._call("get-algorithms")

    def owned_conns(self) -> frozenset[str]:
        names = self._call("get-conns").get("conns", [])
        return frozenset(name for name in names if naming.is_owned_conn(name))

    def owned_shared(self) -> frozenset[str]:
        ids = self._call("get-shared").get("keys", [])
        return frozenset(secret_id for secret_id in ids if naming.is_owned_shared(secret_id))

    def list_sas(self, ike: str | None = None) -> list[dict[str, Any]]:
        message = {"noblock": "yes"}
        if ike is not None:
            message["ike"] = ike
        return self._stream("list-sas", "list-sa", message)

    # -- writes ---------------------------------------------------------------------------

    def unload_conn(self, name: str) -> None:
        self._call("unload-conn", {"name": name})

    def load_key(self, spec: KeySpec) -> str:
        """Load a private key; returns charon's id for it (its public key's digest)."""
        reply = self._call("load-key", {"type": "any", "data": spec.secret.reveal()})
        return str(reply.get("id", ""))

    def unload_key(self, key_id: str) -> None:
        self._call("unload-key", {"id": key_id})

    def key_ids(self) -> frozenset[str]:
        return frozenset(self._call("get-keys").get("keys", []))

    def unload_shared(self, secret_id: str) -> None:
        self._call(*unload_shared_request(secret_id))

    def terminate_ike(self, conn: str) -> None:
        """Close every IKE_SA of `conn` without waiting (timeout -1: charon answers at once)."""
        try:
            self._stream("terminate", "control-log", {"ike": conn, "timeout": "-1"})
        except CharonError as exc:
            # charon answers "no matching SAs to terminate found" when there is nothing to close.
            if "no matching" not in exc.errmsg:
                raise


def load_conn_request(spec: ConnSpec) -> Request:
    return "load-conn", vici_wire.section(spec.name, spec.wire)


def load_shared_request(spec: SharedSpec) -> Request:
    return "load-shared", {
        "id": spec.id,
        "type": "IKE",
        "data": spec.secret.reveal(),
        "owners": list(spec.owners),
    }


def unload_shared_request(secret_id: str) -> Request:
    return "unload-shared", {"id": secret_id}


def _reply(command: str, payload: bytes) -> dict[str, Any] | CharonError:
    """One reply of `pipeline`, judged as vici.Session.request judges it."""
    packet = vici.protocol.Packet.parse(payload)
    if packet.response_type != vici.protocol.Packet.CMD_RESPONSE:
        raise vici.exception.SessionException(
            f"{command}: unexpected response type {packet.response_type}"
        )
    reply = decode(vici.protocol.Message.deserialize(packet.payload))
    if reply.get("success", "yes") != "yes":
        return CharonError(command, str(reply.get("errmsg", "")))
    return reply


def _errmsg(exc: Exception) -> str:
    text = str(exc)
    prefix = "Command failed: "
    return text[len(prefix) :] if text.startswith(prefix) else text
