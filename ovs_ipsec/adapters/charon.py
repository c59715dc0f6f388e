"""Thin adapter over charon's VICI socket: one call, one type conversion, bounded in time.

charon's replies are decoded to str here (core/vici_wire.py; the framing and the bounded waits
are adapters/vici_socket.py's `ViciStream`, shared with the event session), streamed calls are
materialised, and failures become `CharonError` (charon said no; the message is its `errmsg`) or
`CharonUnreachable` (no socket, timeout, EOF, a reply that is not VICI: the session is closed
and must be reopened). Secrets are unwrapped only here, at the VICI call.

May import: vici_socket, vici_wire, naming, connections (its types), reconcile (its actions),
outcomes, sas, errors, stdlib.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import urlparse

from ovs_ipsec.adapters.vici_socket import ViciStream, open_vici
from ovs_ipsec.core import naming, vici_wire
from ovs_ipsec.core.connections import ConnSpec, KeySpec, SharedSpec
from ovs_ipsec.core.outcomes import Outcome
from ovs_ipsec.core.reconcile import Action, LoadConn, LoadShared, UnloadShared
from ovs_ipsec.core.sas import IkeSa, parse_sas
from ovs_ipsec.core.vici_wire import PacketType
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


# Requests written ahead of their replies in `pipeline`: enough to keep charon busy while we
# encode the next ones, few enough that a refused batch is never far behind what was sent.
PIPELINE_WINDOW = 32

# A command and its message: a mapping, or a message already encoded (a connection's body).
Request = tuple[str, Mapping[str, Any] | bytes]


class Charon:
    """The command session. (Events use their own session: a session registered for events
    cannot send requests.)"""

    def __init__(
        self, path: str, timeout: float, on_wait: Callable[[], None] | None = None
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.on_wait = on_wait
        self._stream: ViciStream | None = None
        self._busy = False
        # The last get-conns and get-shared replies: their digest, our names in them.
        self._listings: dict[str, tuple[bytes, tuple[str, ...]]] = {}

    @property
    def connected(self) -> bool:
        return self._stream is not None

    def connect(self) -> None:
        self.close()
        sock = open_vici(self.path, self.timeout, "connect")
        self._stream = ViciStream(sock, self.timeout, self._waiting)

    def _waiting(self) -> None:
        if self.on_wait is not None:
            self.on_wait()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = None

    def fileno(self) -> int | None:
        return self._stream.fileno() if self._stream is not None else None

    def _call(self, command: str, message: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        """One request: charon's reply, or its refusal raised as CharonError."""
        (outcome,) = self.pipeline([(command, message or {})])
        if isinstance(outcome, CharonError):
            raise outcome
        return outcome

    def _streamed(
        self, command: str, event: str, message: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """A request whose answer comes as `event`s before the reply (list-sas): charon sends
        them only to a session registered for `event`, so register, ask, collect, unregister."""
        with self._session(command) as stream:
            _registration(stream, vici_wire.register_packet(event))
            stream.send(vici_wire.request_packet(command, message))
            items: list[dict[str, Any]] = []
            while True:
                packet = vici_wire.decode_packet(stream.receive())
                if packet.type != PacketType.EVENT:
                    break
                items.append(vici_wire.decode_message(packet.payload))
            reply = _reply(command, packet)
            _registration(stream, vici_wire.unregister_packet(event))
        if isinstance(reply, CharonError):
            raise reply
        return items

    def pipeline(self, requests: Iterable[Request]) -> list[Mapping[str, Any] | CharonError]:
        """Send simple (non-streamed) requests without waiting for each reply before the next.

        charon handles the requests of one session in order and answers in order, so the
        outcome is that of calling them one by one: one reply or refusal per request, in the
        requests' order. Only the round trips overlap (charon works on one while we encode the
        next). A request VICI cannot carry (too large, not UTF-8) is refused here, unsent:
        charon would drop the session for it. `CharonUnreachable` if the session fails; what
        charon did before it is found by listing it again. `requests` is read as they are
        sent: a bulk load's thousands of messages are never all built at once."""
        pending = iter(requests)
        first = next(pending, None)
        if first is None:
            return []
        stream = self._require(first[0])
        self._busy = True
        outcomes: list[Mapping[str, Any] | CharonError | None] = []
        in_flight: deque[tuple[int, str]] = deque()

        def take_reply() -> None:
            index, command = in_flight[0]
            outcomes[index] = _reply(command, vici_wire.decode_packet(stream.receive()))
            in_flight.popleft()

        try:
            for index, (command, message) in enumerate(itertools.chain((first,), pending)):
                outcomes.append(None)
                try:
                    packet = vici_wire.request_packet(command, message)
                except vici_wire.Unsendable as exc:
                    # charon would drop the whole session for it: refused here, unsent.
                    outcomes[index] = CharonError(command, f"not sent: {exc}")
                    continue
                stream.send(packet)
                in_flight.append((index, command))
                if len(in_flight) >= PIPELINE_WINDOW:
                    take_reply()
            while in_flight:
                take_reply()
        except (OSError, ValueError) as exc:
            self.close()
            raise CharonUnreachable(in_flight[0][1] if in_flight else first[0],
                                    str(exc) or type(exc).__name__) from exc  # fmt: skip
        except BaseException:
            # Replies still on their way would be read as the answers to the next requests.
            if in_flight:
                self.close()
            raise
        finally:
            self._busy = False
        # Every request was answered or refused unsent: no slot is left empty.
        return cast(list[Mapping[str, Any] | CharonError], outcomes)

    @contextlib.contextmanager
    def _session(self, command: str) -> Iterator[ViciStream]:
        """The session for one exchange of `command`, marked busy meanwhile; a failure of the
        socket or of the framing loses the session (`CharonUnreachable`)."""
        stream = self._require(command)
        self._busy = True
        try:
            yield stream
        except (OSError, ValueError) as exc:
            self.close()
            raise CharonUnreachable(command, str(exc) or type(exc).__name__) from exc
        finally:
            self._busy = False

    def _require(self, command: str) -> ViciStream:
        # on_wait runs other handlers while a call is outstanding; one of them calling charon
        # on this session would interleave two requests on one socket.
        if self._busy:
            raise RuntimeError(f"{command}: charon session is busy (re-entrant call)")
        if self._stream is None:
            self.connect()
        assert self._stream is not None
        return self._stream

    @property
    def busy(self) -> bool:
        return self._busy

    # -- reads ----------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return dict(self._call("version"))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("stats"))

    def get_algorithms(self) -> dict[str, Any]:
        """The algorithms charon's plugins provide, by type (section) and name."""
        return dict(self._call("get-algorithms"))

    def owned_conns(self) -> frozenset[str]:
        return self._owned("get-conns", "conns", naming.is_owned_conn)

    def owned_shared(self) -> frozenset[str]:
        return self._owned("get-shared", "keys", naming.is_owned_shared)

    def _owned(self, command: str, key: str, owned: Callable[[str], bool]) -> frozenset[str]:
        """Our names in charon's reply to `command`. A reply byte for byte the same as the last
        one (the usual periodic check) has the same names: they are not decoded and judged
        again, which at N = 5,000 tunnels was 17 ms of a check's ~40."""
        with self._session(command) as stream:
            stream.send(vici_wire.request_packet(command, {}))
            packet = vici_wire.decode_packet(stream.receive())
            digest = hashlib.blake2b(packet.payload, digest_size=16).digest()
            last = self._listings.get(command)
            if packet.type == PacketType.CMD_RESPONSE and last is not None and last[0] == digest:
                return frozenset(last[1])
            reply = _reply(command, packet)
        if isinstance(reply, CharonError):
            raise reply
        # Names of the last listing were judged ours already: only new ones are judged.
        known = frozenset(last[1]) if last is not None else frozenset()
        names = tuple(name for name in reply.get(key, []) if name in known or owned(name))
        # Kept as a tuple, not the frozenset: a tenth of its memory at thousands of names.
        self._listings[command] = (digest, names)
        return frozenset(names)

    def listed_sas(self) -> dict[str, tuple[IkeSa, ...]]:
        """Our connections' SAs, parsed (core/sas.py)."""
        return parse_sas(self.list_sas())

    def failures(self, sas: Mapping[str, tuple[IkeSa, ...]]) -> dict[str, Outcome]:
        return {}  # charon tells them by events (adapters/events.py, core/outcomes.py)

    def list_sas(self, ike: str | None = None) -> list[dict[str, Any]]:
        message = {"noblock": "yes"}
        if ike is not None:
            message["ike"] = ike
        return self._streamed("list-sas", "list-sa", message)

    # -- writes ---------------------------------------------------------------------------

    def carry_out(self, actions: Sequence[Action]) -> Sequence[Mapping[str, Any] | CharonError]:
        """Loads and unloads of connections and secrets, pipelined (`pipeline`), each request
        built as it is sent (at thousands of tunnels, all of them built first were a bulk
        load's largest transient)."""
        return self.pipeline(map(request_of, actions))

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
            self._streamed("terminate", "control-log", {"ike": conn, "timeout": "-1"})
        except CharonError as exc:
            # charon answers "no matching SAs to terminate found" when there is nothing to close.
            if "no matching" not in exc.errmsg:
                raise


def request_of(action: Action) -> Request:
    if isinstance(action, LoadShared):
        return load_shared_request(action.spec)
    if isinstance(action, LoadConn):
        return load_conn_request(action.spec)
    assert isinstance(action, UnloadShared)
    return unload_shared_request(action.id)


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


# charon's whole reply to a load or unload that worked. Those replies are one read-only object,
# not decoded: a bulk load's thousands of them, each a dict and two strings of its own until the
# pipeline ended, were a transient whose memory the daemon kept afterwards (issue 14).
SUCCESS: Mapping[str, Any] = MappingProxyType({"success": "yes"})
_SUCCESS_PAYLOAD = vici_wire.encode_message(SUCCESS)


def _reply(command: str, packet: vici_wire.Packet) -> Mapping[str, Any] | CharonError:
    """charon's reply to one request, or its refusal (a reply without `success=yes`)."""
    if packet.type != PacketType.CMD_RESPONSE:
        # CMD_UNKNOWN, or a packet out of turn: the session cannot be trusted any more.
        raise ValueError(f"{command}: unexpected response type {packet.type}")
    if packet.payload == _SUCCESS_PAYLOAD:
        return SUCCESS
    reply = vici_wire.decode_message(packet.payload)
    if reply.get("success", "yes") != "yes":
        return CharonError(command, str(reply.get("errmsg", "")))
    return reply


def _registration(stream: ViciStream, packet: bytes) -> None:
    """(Un)register for an event: EVENT_CONFIRM, after any events still on their way."""
    stream.send(packet)
    while True:
        reply = vici_wire.decode_packet(stream.receive())
        if reply.type != PacketType.EVENT:
            break
    if reply.type != PacketType.EVENT_CONFIRM:
        raise ValueError(f"unexpected response type {reply.type} to an event registration")
