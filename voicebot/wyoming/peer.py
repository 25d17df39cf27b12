"""One Wyoming peer: its events read within caps, each refusal one log line, the server unharmed.

wyoming's own reader trusts what a header claims: a header that announces a payload of gigabytes has
that much buffered, and a header that is not a JSON object, or whose lengths are not numbers, raises
out of the handler's task; and it waits for ever for the rest of a line. Here every event is read within
caps and deadlines, and a peer that breaks them is told why (an `error` event), logged once and
disconnected; a connection that goes quiet is closed; at the cap of connections, the one that has waited
longest without sending a whole event makes room. The other connections go on.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Any, Callable, ClassVar, TypeVar

from wyoming.error import Error
from wyoming.event import Event, async_write_event, write_event
from wyoming.server import AsyncEventHandler

from voicebot.config import WyomingConfig
from voicebot.errors import VoicebotError
from voicebot.runtime.net import Connections, PeerError, PeerLeft, RateLimitedLog

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_HEADER_BYTES = 64 * 1024
"""The JSON header line of one event; asyncio's StreamReader refuses a longer line before buffering more."""
MAX_DATA_BYTES = 256 * 1024
"""The additional JSON data of one event (a text to synthesise, a transcript)."""
MAX_PAYLOAD_BYTES = 1024 * 1024
"""The binary payload of one event: an audio chunk (Home Assistant sends about 2 KB)."""
MAX_CONNECTIONS: int = WyomingConfig.max_connections
"""Open connections per server by default (wyoming.max_connections); Home Assistant opens one per request."""


class BadRequest(Exception):
    """A well-formed event that cannot be served: answered with an `error` event, and the connection goes on."""

    def __init__(self, text: str, code: str) -> None:
        super().__init__(text)
        self.code = code


class PeerIdle(Exception):
    """The peer sent nothing for the idle time-out."""


async def read_event(
    reader: asyncio.StreamReader,
    event_timeout_s: float = WyomingConfig.event_timeout_s,
    idle_timeout_s: float | None = None,
    on_first_byte: Callable[[], None] = lambda: None,
) -> Event | None:
    """The next event within the caps, or None when the peer closed the connection between events.

    Its first byte may take up to `idle_timeout_s` (PeerIdle after that); from then on, the whole event (header
    line, data, payload) must arrive within `event_timeout_s` (PeerError, "timeout").
    """
    try:
        async with asyncio.timeout(idle_timeout_s):
            first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        return None
    except TimeoutError:
        raise PeerIdle from None
    except ConnectionError:
        raise PeerLeft("with the connection reset") from None
    on_first_byte()
    event_type = ""
    try:
        async with asyncio.timeout(event_timeout_s):
            line = first if first == b"\n" else first + await _rest_of_line(reader)
            if not line.endswith(b"\n") and not line.strip():
                return None  # Blank bytes, then the end: the peer closed between events.
            event_type, data, data_length, payload_length = _header(line)
            if data_length:
                data.update(_json_object(await reader.readexactly(data_length), f"{event_type} event's data"))
            payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise PeerLeft(f"in the middle of {_an(event_type)} event") from None
    except ConnectionError:
        where = f"in the middle of {_an(event_type)} event, " if event_type else ""
        raise PeerLeft(f"{where}with the connection reset") from None
    except TimeoutError:
        what = f"the rest of {_an(event_type)} event" if event_type else "the rest of an event header line"
        raise PeerError(f"{what} did not arrive within {event_timeout_s:g} s", "timeout") from None
    return Event(type=event_type, data=data, payload=payload)


async def _rest_of_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as end:
        return end.partial  # A last header without its newline: wyoming's reader accepts it too.
    except asyncio.LimitOverrunError:
        raise PeerError(f"an event header longer than {MAX_HEADER_BYTES // 1024} KiB", "event-too-large") from None


def _header(line: bytes) -> tuple[str, dict[str, Any], int, int]:
    header = _json_object(line, "header")
    event_type = header.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise PeerError("not a Wyoming event: its header has no type")
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PeerError(f"{_an(event_type)} event whose data is not a JSON object")
    return (
        event_type,
        data,
        _length(header, "data_length", MAX_DATA_BYTES, event_type),
        _length(header, "payload_length", MAX_PAYLOAD_BYTES, event_type),
    )


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # Not UTF-8, not JSON, or nested past Python's recursion limit.
        raise PeerError(f"not a Wyoming event: its {what} is not JSON") from None
    if not isinstance(value, dict):
        raise PeerError(f"not a Wyoming event: its {what} is not a JSON object")
    return value


def _length(header: dict[str, Any], key: str, cap: int, event_type: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PeerError(f"{_an(event_type)} event whose {key} is not a byte count")
    if value > cap:
        raise PeerError(f"{_an(event_type)} event with {key} {value} bytes, over the cap of {cap}", "event-too-large")
    return value


def _shown(event_type: str) -> str:
    """An event type as it goes into a log line: a peer's garbage must not fill the journal."""
    return repr(event_type[:40]) if not event_type.replace("-", "").isalnum() else event_type[:40]


def _an(event_type: str) -> str:
    shown = _shown(event_type)
    return f"{'an' if shown[:1] in 'aeiou' else 'a'} {shown}"


def parsed(from_event: Callable[[Event], T], event: Event) -> T:
    """`from_event(event)`, with a field missing or of the wrong kind refused as a bad request."""
    try:
        return from_event(event)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BadRequest(f"a malformed {event.type} event ({type(error).__name__}: {error})", "invalid-event") from None


def text_field(value: object, what: str, max_chars: int) -> str:
    """A text a request carries, refused if it is not text or longer than `max_chars`."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} is not text", "invalid-event")
    if len(value) > max_chars:
        raise BadRequest(f"{what} is {len(value)} characters, over the cap of {max_chars}", "text-too-long")
    return value


class EventServer:
    """What the connections of one server share; subclasses serve one Wyoming domain."""

    name: ClassVar[str] = "?"

    def __init__(self) -> None:
        self.connections: Connections[Connection] = Connections(MAX_CONNECTIONS)
        self.event_timeout_s = WyomingConfig.event_timeout_s
        self.idle_timeout_s = WyomingConfig.idle_timeout_s
        self.peers = RateLimitedLog(log)
        """Refusals, drops and departures: one line each, rate-limited."""

    def bound(self, config: WyomingConfig, max_connections: int | None = None) -> None:
        """Take the caps and deadlines from the config (`max_connections` if the descriptor limit leaves fewer)."""
        self.connections.cap = max_connections or config.max_connections
        self.event_timeout_s = config.event_timeout_s
        self.idle_timeout_s = config.idle_timeout_s

    def connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Connection:
        """A handler for a new connection (wyoming's handler factory)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop any work the server runs beside its connections."""


class Connection(AsyncEventHandler):
    """One peer of a server: events read within the caps, refusals and departures logged in one line each.

    Subclasses implement handle_event(); a BadRequest it raises is answered with an `error` event and the
    connection goes on; `pending()` names unfinished work, for the line logged if the peer leaves.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: EventServer) -> None:
        super().__init__(reader, writer)
        self.server = server
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "a peer"
        self.task: asyncio.Task[None] | None = None
        self.trusted = False
        """Whether it has sent a whole, well-formed event: a real client, not one holding a connection open."""
        self.dropped = False
        self._since: float | None = time.monotonic()

    def pending(self) -> str | None:
        """What the peer left unfinished, if it leaves now (e.g. "an audio stream of 1.2 s, not transcribed")."""
        return None

    @property
    def label(self) -> str:
        """How log lines name this connection: "wyoming asr: 127.0.0.1:50312"."""
        return f"wyoming {self.server.name}: {self.peer}"

    @property
    def idle_since(self) -> float | None:
        """When it last finished an event (or connected); None while the server is handling one of its events."""
        return self._since

    async def run(self) -> None:
        """Serve events until the peer leaves, breaks the protocol, goes quiet, or the server stops."""
        self._is_running = True
        self.task = asyncio.current_task()
        admission = self.server.connections.admit(self)
        if not admission.admitted:
            cap = self.server.connections.cap
            self.server.peers.warning("busy", "%s refused: %d connections are already open", self.label, cap)
            await self._send_quietly(Error(f"{cap} connections are already open", "busy").event())
            self.writer.close()
            return
        if (dropped := admission.dropped) is not None:
            waited = time.monotonic() - (dropped.idle_since or time.monotonic())
            self.server.peers.warning(
                "dropped",
                "%s dropped at the cap of %d connections (%s for %.1f s%s) to let %s in",
                dropped.label,
                self.server.connections.cap,
                "idle" if dropped.trusted else "no whole event",
                waited,
                dropped._during(),
                self.peer,
            )
        try:
            await self._serve()
        except asyncio.CancelledError:
            log.info("%s: connection closed as the server stops%s", self.label, self._during())
            raise
        finally:
            self.server.connections.discard(self)
            self.writer.close()

    async def _serve(self) -> None:
        server, peers = self.server, self.server.peers
        try:
            while self._is_running:
                event = await read_event(self.reader, server.event_timeout_s, server.idle_timeout_s)
                if event is None:
                    if self._is_running and not self.dropped and (pending := self.pending()):
                        peers.info("left", "%s left during %s", self.label, pending)
                    return
                self.trusted, self._since = True, None
                try:
                    if not await self._handle(event):
                        return
                finally:
                    self._since = time.monotonic()
        except PeerError as error:
            if self.dropped:  # Cut short by the drop itself, which was logged.
                return
            peers.warning("refused", "%s refused: %s%s; connection closed", self.label, error, self._during())
            await self._send_quietly(Error(f"refused: {error}", error.code).event())
        except PeerIdle:
            peers.info(
                "idle",
                "%s: closed after %g s without an event (wyoming.idle_timeout_s)%s",
                self.label,
                server.idle_timeout_s,
                self._during(),
            )
            quiet = f"closed after {server.idle_timeout_s:g} s without an event"
            await self._send_quietly(Error(quiet, "idle").event())
        except PeerLeft as left:
            if not self.dropped:  # A dropped connection was logged as it was dropped.
                peers.info("left", "%s left %s%s", self.label, left, self._during())
        except Exception as error:  # noqa: BLE001 - one failed connection must not stop the server
            log.error("%s: failed: %s: %s; connection closed", self.label, type(error).__name__, error)
            await self._send_quietly(Error(f"the server failed: {type(error).__name__}", "failed").event())

    async def _handle(self, event: Event) -> bool:
        peers = self.server.peers
        try:
            return await self.handle_event(event)
        except BadRequest as refusal:
            peers.warning("bad-request", "%s: %s refused: %s", self.label, _shown(event.type), refusal)
            await self.write_event(Error(str(refusal), refusal.code).event())
        except VoicebotError as error:
            peers.warning("failed", "%s: %s failed: %s", self.label, _shown(event.type), error)
            await self.write_event(Error(str(error), "failed").event())
        return True

    def drop(self) -> None:
        """Close it at once, with a last `error` event (busy) if its socket takes it; to make room at the cap."""
        self.dropped = True
        goodbye = io.BytesIO()
        write_event(Error("closed to make room for another connection", "busy").event(), goodbye)
        transport = self.writer.transport
        if not transport.is_closing():
            transport.write(goodbye.getvalue())
            if transport.get_write_buffer_size():
                transport.abort()  # A peer that reads nothing must not hold the descriptor until it does.
            else:
                transport.close()

    async def stop(self) -> None:
        """End the connection once the request in progress is answered (the server is stopping)."""
        self._is_running = False
        self.reader.feed_eof()

    def _during(self) -> str:
        pending = self.pending()
        return f", during {pending}" if pending else ""

    async def write_event(self, event: Event) -> None:
        """Send an event; a peer that has gone away raises PeerLeft."""
        if self.writer.is_closing():
            raise PeerLeft("before the answer was sent")
        try:
            await async_write_event(event, self.writer)
        except ConnectionError:
            raise PeerLeft("before the answer was sent") from None

    async def _send_quietly(self, event: Event) -> None:
        """A last word before closing, if the peer is still there to read it."""
        try:
            async with asyncio.timeout(1.0):
                await self.write_event(event)
        except (PeerLeft, TimeoutError):
            pass
