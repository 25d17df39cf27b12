"""The satellite's ESPHome API server: one task per connection, reading frames within their caps.

A connection answers at once what changes nothing (hello, device info, ping, the entity list, the
wake word configuration) and posts everything else to the satellite's supervisor, which alone
decides what the satellite does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
from typing import Callable

from aioesphomeapi import api_pb2
from aioesphomeapi.model import (
    VoiceAssistantEventType,
    VoiceAssistantFeature,
    VoiceAssistantSubscriptionFlag,
    VoiceAssistantTimerEventType,
)
from google.protobuf import message as protobuf

from voicebot import __version__
from voicebot.config import SatelliteConfig
from voicebot.errors import VoicebotError
from voicebot.satellite.events import (
    AnnounceRequested,
    Event,
    RunEvent,
    RunRefused,
    Subscribed,
    TimerEvent,
    Unsubscribed,
)
from voicebot.satellite.frames import Peer, PeerError, PeerLeft, decode_message, open_frames

log = logging.getLogger(__name__)

API_VERSION = (1, 10)
"""The API version linux-voice-assistant reports."""
FEATURES = (
    VoiceAssistantFeature.VOICE_ASSISTANT
    | VoiceAssistantFeature.API_AUDIO
    | VoiceAssistantFeature.ANNOUNCE
    | VoiceAssistantFeature.START_CONVERSATION
    | VoiceAssistantFeature.TIMERS
)
MAX_CONNECTIONS = 4
"""Home Assistant holds one; a few more for a second instance or a reconnect overlapping the old one. At the cap,
the oldest connection that never subscribed to the voice assistant gives way, so Home Assistant always gets in."""
HELLO_TIMEOUT_S = 5.0
"""A new connection must have said hello (its Noise handshake done, if encrypted) within this long."""
IDLE_TIMEOUT_S = 90.0
"""A connection silent this long is dropped; Home Assistant pings every 20 s or so."""
CLOSE_TIMEOUT_S = 3.0


def device_mac(name: str) -> str:
    """A stable MAC-like id for this host and device name, locally administered so it clashes with no card."""
    digest = bytearray(hashlib.sha256(f"{socket.gethostname()}/{name}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{byte:02X}" for byte in digest)


def wake_phrase(model: str) -> str:
    """What a wake word model listens for, as words: hey_jarvis_v0.1 -> hey jarvis."""
    stem = re.sub(r"_v\d[\w.]*$", "", model.rsplit("/", 1)[-1].removesuffix(".onnx"))
    return stem.replace("_", " ").strip()


class WakeWords:
    """The wake word models heard here, and those Home Assistant has made active (all of them until it says).

    It is configuration, not the satellite's state: connections set it as Home Assistant asks, and the
    supervisor reads it when it hears a wake word.
    """

    def __init__(self, models: list[str]) -> None:
        self.models = list(models)
        self.active = set(models)


class ApiServer:
    """The ESPHome API on host:port; what Home Assistant says that matters to the satellite goes to `post`."""

    def __init__(
        self, config: SatelliteConfig, mac: str, psk: bytes | None, wake_words: WakeWords, post: Callable[[Event], None]
    ) -> None:
        self.config = config
        self.mac = mac
        self.psk = psk
        self.wake_words = wake_words
        self.post = post
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._open: dict[asyncio.StreamWriter, Peer | None] = {}  # in the order accepted; None: no hello yet
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Listen; a port that cannot be had is a VoicebotError."""
        try:
            self._server = await asyncio.start_server(self._serve, self.config.host, self.config.port)
        except OSError as error:
            raise VoicebotError(
                f"satellite: cannot listen on {self.config.host}:{self.config.port}: {error.strerror or error}"
            ) from None

    async def close(self) -> None:
        """Stop listening, drop every connection and wait until their tasks have ended."""
        if self._server is None:
            return
        self._server.close()
        # A dropped connection ends its task as a peer leaving does; cancelling it instead would make
        # Python 3.11's stream callback log the cancellation as an error.
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._server.wait_closed()
        except TimeoutError:
            log.debug("satellite: connections still closing")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        host, port = writer.get_extra_info("peername")[:2]
        address = f"{host}:{port}"
        if len(self._open) >= MAX_CONNECTIONS and not self._make_room(address):
            writer.transport.abort()
            self._tasks.discard(task)
            return
        self._open[writer] = None
        self._writers.add(writer)
        peer: Peer | None = None
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                frames, first = await open_frames(reader, writer, self.psk, self.config.name, self.mac)
                peer = Peer(writer, frames, address)
                type_id, payload = await frames.read(reader, first)
            if decode_message(type_id, payload).__class__ is not api_pb2.HelloRequest:
                raise PeerError(f"message type {type_id} before its hello")
            self._open[writer] = peer
            while True:
                msg = decode_message(type_id, payload)
                if msg is None:
                    log.debug("satellite: %s sent message type %d, unknown here; ignored", address, type_id)
                elif not self._handle(peer, msg):
                    break
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT_S):
                        type_id, payload = await frames.read(reader)
                except TimeoutError:
                    log.info("satellite: dropped %s: silent for %.0f s", address, IDLE_TIMEOUT_S)
                    break
        except PeerError as error:
            log.warning("satellite: dropped %s: it sent %s", address, error)
        except TimeoutError:
            log.warning("satellite: dropped %s: no hello within %.0f s", address, HELLO_TIMEOUT_S)
        except (PeerLeft, ConnectionError):
            log.debug("satellite: %s closed the connection", address)
        finally:
            self._open.pop(writer, None)
            self._writers.discard(writer)
            if peer is not None:
                self.post(Unsubscribed(peer))
            writer.transport.abort()
            self._tasks.discard(task)

    def _make_room(self, address: str) -> bool:
        """At the cap: drop the oldest connection that never subscribed (one still in its hello, or one that only
        said hello), so Home Assistant always gets in; False, with one line, if every one is a subscriber."""
        for writer, peer in self._open.items():
            if peer is None or not peer.subscribed:
                del self._open[writer]
                who = peer.address if peer is not None else "a connection still in its hello"
                log.warning("satellite: %d connections: dropped %s, which never subscribed, for %s",
                            MAX_CONNECTIONS, who, address)  # fmt: skip
                writer.transport.abort()
                return True
        log.warning("satellite: refused %s: already %d subscribed connections", address, MAX_CONNECTIONS)
        return False

    def _handle(self, peer: Peer, msg: protobuf.Message) -> bool:
        """Answer or pass on one message; False when the peer asked to disconnect."""
        if isinstance(msg, api_pb2.HelloRequest):
            peer.send(
                api_pb2.HelloResponse(
                    api_version_major=API_VERSION[0],
                    api_version_minor=API_VERSION[1],
                    server_info=f"voicebot {__version__}",
                    name=self.config.name,
                )
            )
            log.info("satellite: %s connected (%s)", peer.address, msg.client_info[:64])
        elif isinstance(msg, api_pb2.DeviceInfoRequest):
            peer.send(
                api_pb2.DeviceInfoResponse(
                    uses_password=False,
                    name=self.config.name,
                    friendly_name=self.config.name,
                    mac_address=self.mac,
                    manufacturer="voicebot",
                    model="voicebot",
                    project_name="voicebot.voicebot",
                    project_version=__version__,
                    esphome_version="2025.9.0",
                    voice_assistant_feature_flags=int(FEATURES),
                )
            )
        elif isinstance(msg, api_pb2.ListEntitiesRequest):
            peer.send(api_pb2.ListEntitiesDoneResponse())
        elif isinstance(msg, api_pb2.PingRequest):
            peer.send(api_pb2.PingResponse())
        elif isinstance(msg, api_pb2.DisconnectRequest):
            peer.send(api_pb2.DisconnectResponse())
            return False
        elif isinstance(msg, api_pb2.SubscribeVoiceAssistantRequest):
            peer.subscribed = msg.subscribe
            api_audio = bool(msg.flags & VoiceAssistantSubscriptionFlag.API_AUDIO)
            self.post(Subscribed(peer, api_audio) if msg.subscribe else Unsubscribed(peer))
        elif isinstance(msg, api_pb2.VoiceAssistantConfigurationRequest):
            models = self.wake_words.models
            peer.send(
                api_pb2.VoiceAssistantConfigurationResponse(
                    available_wake_words=[
                        api_pb2.VoiceAssistantWakeWord(id=model, wake_word=wake_phrase(model), trained_languages=["en"])
                        for model in models
                    ],
                    active_wake_words=[model for model in models if model in self.wake_words.active],
                    max_active_wake_words=max(1, len(models)),
                )
            )
        elif isinstance(msg, api_pb2.VoiceAssistantSetConfiguration):
            chosen = [model for model in msg.active_wake_words if model in self.wake_words.models]
            self.wake_words.active = set(chosen)
            log.info("satellite: active wake words: %s", ", ".join(chosen) or "none")
        elif isinstance(msg, api_pb2.VoiceAssistantEventResponse):
            try:
                kind = VoiceAssistantEventType(msg.event_type)
            except ValueError:
                log.debug("satellite: %s sent pipeline event %d, unknown here; ignored", peer.address, msg.event_type)
            else:
                self.post(RunEvent(peer, kind, {item.name: item.value for item in msg.data}))
        elif isinstance(msg, api_pb2.VoiceAssistantResponse):
            if msg.error:
                self.post(RunRefused(peer))
        elif isinstance(msg, api_pb2.VoiceAssistantAnnounceRequest):
            urls = tuple(url for url in (msg.preannounce_media_id, msg.media_id) if url)
            self.post(AnnounceRequested(peer, urls, msg.start_conversation))
        elif isinstance(msg, api_pb2.VoiceAssistantTimerEventResponse):
            try:
                timer_kind = VoiceAssistantTimerEventType(msg.event_type)
            except ValueError:
                log.debug("satellite: %s sent timer event %d, unknown here; ignored", peer.address, msg.event_type)
            else:
                self.post(TimerEvent(peer, timer_kind, msg.timer_id[:64], msg.name[:64], msg.total_seconds))
        elif isinstance(msg, api_pb2.VoiceAssistantAudio):
            log.debug("satellite: audio from %s ignored: answers are played from their URL", peer.address)
        # Subscriptions to states, Home Assistant states and services, and the rest: nothing to report.
        return True
