"""voicebot as a Home Assistant voice satellite, the device linux-voice-assistant is.

Home Assistant's ESPHome integration connects to this server. The wake word is heard here; then the
microphone is streamed to Home Assistant as VoiceAssistantAudio until its pipeline says the speech
ended; the answer Home Assistant names by URL is downloaded and played here; an announcement is
played and answered with VoiceAssistantAnnounceFinished. One task owns the state: the microphone
loop; the connections only report what Home Assistant said.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import io
import logging
import re
import socket
from typing import Callable

import httpx
import numpy as np
import soundfile
from aioesphomeapi import api_pb2
from aioesphomeapi.model import VoiceAssistantEventType as Ev
from aioesphomeapi.model import VoiceAssistantFeature, VoiceAssistantSubscriptionFlag
from google.protobuf import message as protobuf

from voicebot import __version__
from voicebot.audio import AudioChunk, AudioSink, AudioSource, PlaybackTimeline
from voicebot.config import Config, SatelliteConfig
from voicebot.earcons import Earcon, Earcons
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.pipeline import Pipeline
from voicebot.pipeline import State as PipelineState
from voicebot.runtime.net import is_loopback
from voicebot.runtime.trace import Tracer
from voicebot.satellite.frames import (
    MESSAGE_TYPE_OF,
    PeerError,
    PeerLeft,
    decode_encryption_key,
    decode_message,
    open_frames,
)

log = logging.getLogger(__name__)

API_VERSION = (1, 10)
"""The API version linux-voice-assistant reports."""
FEATURES = (
    VoiceAssistantFeature.VOICE_ASSISTANT
    | VoiceAssistantFeature.API_AUDIO
    | VoiceAssistantFeature.ANNOUNCE
    | VoiceAssistantFeature.START_CONVERSATION
)
MAX_CONNECTIONS = 4
"""Home Assistant holds one; a few more for a second instance or a reconnect overlapping the old one."""
MAX_WRITE_BUFFER_BYTES = 1024 * 1024
"""A client that leaves this much unread (a stalled Home Assistant while the microphone streams) is dropped."""
MAX_STREAM_S = 30.0
"""The longest question streamed before the satellite stops on its own (Home Assistant's VAD normally ends it)."""
MAX_AUDIO_BYTES = 32 * 1024 * 1024
"""The largest answer or announcement downloaded."""
DOWNLOAD_TIMEOUT_S = 15.0


class State(enum.Enum):
    """What the satellite is doing."""

    IDLE = "idle"
    STREAMING = "streaming"  # the microphone goes to Home Assistant
    RESPONDING = "responding"  # Home Assistant's pipeline runs, or its answer plays
    ANNOUNCING = "announcing"


def check_satellite_config(config: SatelliteConfig) -> None:
    """Refuse settings the satellite cannot honour, before any model loads."""
    if config.encryption_key is not None:
        try:
            decode_encryption_key(config.encryption_key)
        except ValueError as error:
            raise VoicebotError(f"config error: {error}") from None


def check_satellite(config: Config) -> list[str]:
    """Warnings for `voicebot check` about how the satellite is exposed."""
    satellite = config.satellite
    if not satellite.enabled or is_loopback(satellite.host):
        return []
    if satellite.encryption_key is None:
        return [
            f"satellite.host is {satellite.host} and satellite.encryption_key is not set: anyone on the network "
            "can connect to the satellite and hear its microphone; set an encryption key (openssl rand -base64 32)"
        ]
    return []


def device_mac(name: str) -> str:
    """A stable MAC-like id for this host and device name, locally administered so it clashes with no card."""
    digest = bytearray(hashlib.sha256(f"{socket.gethostname()}/{name}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{byte:02X}" for byte in digest)


def wake_phrase(model: str) -> str:
    """What a wake word model listens for, as words: hey_jarvis_v0.1 -> hey jarvis."""
    stem = re.sub(r"_v\d[\w.]*$", "", model.rsplit("/", 1)[-1].removesuffix(".onnx"))
    return stem.replace("_", " ").strip()


class Peer:
    """One connection: Home Assistant (or another client) as the ESPHome API sees it."""

    def __init__(self, writer: asyncio.StreamWriter, frames, address: str) -> None:
        self.writer = writer
        self.frames = frames
        self.address = address
        self.api_audio = False

    def send(self, *messages: protobuf.Message) -> None:
        """Queue messages; a client that does not read is dropped rather than buffered without end."""
        if self.writer.is_closing():
            return
        for msg in messages:
            self.writer.write(self.frames.encode(MESSAGE_TYPE_OF[type(msg)], msg.SerializeToString()))
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            log.warning("satellite: %s reads too slowly; dropping it", self.address)
            self.writer.transport.abort()


class RelaySource:
    """The microphone as the satellite hands it on to the local pipeline; None ends it."""

    def __init__(self) -> None:
        self._frames: asyncio.Queue[AudioChunk | None] = asyncio.Queue(maxsize=4)

    async def put(self, chunk: AudioChunk | None) -> None:
        """Hand on a chunk, waiting while the pipeline is behind (the source then drops and counts frames)."""
        await self._frames.put(chunk)

    async def frames(self):
        """The chunks handed on, until the end."""
        while (chunk := await self._frames.get()) is not None:
            yield chunk


class Satellite:
    """The ESPHome API server and the satellite behind it: hear the wake word, stream, play the answer."""

    def __init__(
        self,
        engines: Engines,
        source: AudioSource,
        sink: AudioSink,
        tracer: Tracer,
        timeline: PlaybackTimeline | None = None,
        on_listening: Callable[[], None] = lambda: None,
    ) -> None:
        self.engines = engines
        self.listener = engines.listener
        self.timeline = timeline
        self.config = engines.config.satellite
        self.source = source
        self.sink = sink
        self.tracer = tracer
        self.on_listening = on_listening
        self.earcons = Earcons(engines.config.earcons)
        self.state = State.IDLE
        self.mac = device_mac(self.config.name)
        self._psk = decode_encryption_key(self.config.encryption_key) if self.config.encryption_key else None
        self._peers: set[Peer] = set()
        self._connections = 0  # counted from accept, so handshakes in progress count too
        self._voice: Peer | None = None  # the client subscribed to the voice assistant
        self._subscribed = asyncio.Event()
        self._wake_models = self.listener.wake_models
        self._active_wake_words = set(self._wake_models)
        self._streamed_s = 0.0
        self._continue = False
        self._run_ended = False
        self._playing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._relay: RelaySource | None = None
        self._answering_locally = False
        self._local: Pipeline | None = None
        if self.config.fallback_local:
            # While Home Assistant is away, the microphone goes to voicebot's own pipeline instead.
            self._relay = RelaySource()
            self._local = Pipeline(engines, self._relay, sink, tracer, timeline=timeline)

    # The server.

    async def run(self) -> None:
        """Serve the API; once Home Assistant has subscribed, hear the microphone until it ends."""
        try:
            server = await asyncio.start_server(self._serve, self.config.host, self.config.port)
        except OSError as error:
            raise VoicebotError(
                f"satellite: cannot listen on {self.config.host}:{self.config.port}: {error.strerror or error}"
            ) from None
        log.info(
            "satellite: serving the ESPHome API on %s:%d as %r (%s)",
            self.config.host,
            self.config.port,
            self.config.name,
            "encrypted" if self._psk else "plaintext",
        )
        self.tracer.emit("satellite_listening", port=self.config.port, encrypted=self._psk is not None)
        local = None
        try:
            if self._local is not None:
                local = asyncio.create_task(self._local.run(), name="local-pipeline")
            else:
                # Nobody to send a question to before Home Assistant subscribes: an input file waits for it.
                await self._subscribed.wait()
            listening = False
            async for chunk in self.source.frames():
                if not listening:
                    listening = True
                    self.on_listening()
                if self._answers_locally():
                    await self._relay.put(chunk)
                else:
                    await self._hear(chunk)
            if local is not None:
                await self._relay.put(None)
                await local  # The last local turn is finished; an error in it is raised here.
            log.info("satellite: the input ended; still serving announcements")
            if self._playing is not None:
                await asyncio.gather(self._playing, return_exceptions=True)
            await asyncio.Event().wait()
        finally:
            if local is not None and not local.done():
                local.cancel()
                await asyncio.gather(local, return_exceptions=True)
            server.close()
            for peer in list(self._peers):
                peer.writer.transport.abort()
            await self._stop_playing()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(server.wait_closed(), 3.0)
            except TimeoutError:
                log.debug("satellite: connections still closing")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        host, port = writer.get_extra_info("peername")[:2]
        address = f"{host}:{port}"
        if self._connections >= MAX_CONNECTIONS:
            log.warning("satellite: refused %s: already %d connections", address, MAX_CONNECTIONS)
            writer.transport.abort()
            self._tasks.discard(task)
            return
        self._connections += 1
        peer: Peer | None = None
        try:
            frames, first = await open_frames(reader, writer, self._psk, self.config.name, self.mac)
            peer = Peer(writer, frames, address)
            self._peers.add(peer)
            while True:
                type_id, payload = await frames.read(reader, first)
                first = None
                msg = decode_message(type_id, payload)
                if msg is None:
                    log.debug("satellite: %s sent message type %d, unknown here; ignored", address, type_id)
                    continue
                if not self._handle(peer, msg):
                    break
        except PeerError as error:
            log.warning("satellite: dropped %s: it sent %s", address, error)
        except TimeoutError:
            log.warning("satellite: dropped %s: no handshake within the time allowed", address)
        except (PeerLeft, ConnectionError):
            log.debug("satellite: %s closed the connection", address)
        finally:
            self._connections -= 1
            if peer is not None:
                self._peers.discard(peer)
                if peer is self._voice:
                    self._lost_voice_client()
            writer.transport.abort()
            self._tasks.discard(task)

    def _handle(self, peer: Peer, msg: protobuf.Message) -> bool:
        """Answer one message; False when the peer asked to disconnect."""
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
            self._subscribe(peer, msg)
        elif isinstance(msg, api_pb2.VoiceAssistantConfigurationRequest):
            peer.send(
                api_pb2.VoiceAssistantConfigurationResponse(
                    available_wake_words=[
                        api_pb2.VoiceAssistantWakeWord(id=model, wake_word=wake_phrase(model), trained_languages=["en"])
                        for model in self._wake_models
                    ],
                    active_wake_words=[model for model in self._wake_models if model in self._active_wake_words],
                    max_active_wake_words=max(1, len(self._wake_models)),
                )
            )
        elif isinstance(msg, api_pb2.VoiceAssistantSetConfiguration):
            chosen = [model for model in msg.active_wake_words if model in self._wake_models]
            self._active_wake_words = set(chosen)
            log.info("satellite: active wake words: %s", ", ".join(chosen) or "none")
        elif isinstance(msg, api_pb2.VoiceAssistantEventResponse) and peer is self._voice:
            self._on_event(Ev(msg.event_type), {item.name: item.value for item in msg.data})
        elif isinstance(msg, api_pb2.VoiceAssistantResponse) and peer is self._voice:
            if msg.error:
                log.warning("satellite: Home Assistant could not start its pipeline")
                self._end_run()
        elif isinstance(msg, api_pb2.VoiceAssistantAnnounceRequest):
            self._announce(peer, msg)
        elif isinstance(msg, api_pb2.VoiceAssistantAudio) and peer is self._voice:
            log.debug("satellite: audio from Home Assistant ignored: answers are played from their URL")
        # Subscriptions to states, Home Assistant states and services, and the rest: nothing to report.
        return True

    def _subscribe(self, peer: Peer, msg: api_pb2.SubscribeVoiceAssistantRequest) -> None:
        if not msg.subscribe:
            if peer is self._voice:
                self._lost_voice_client()
            return
        if not msg.flags & VoiceAssistantSubscriptionFlag.API_AUDIO:
            log.warning("satellite: %s wants audio over UDP, which is not supported; it gets none", peer.address)
        if self._voice is not None and self._voice is not peer:
            log.info("satellite: %s replaces %s as the voice assistant", peer.address, self._voice.address)
            self._lost_voice_client()
        peer.api_audio = bool(msg.flags & VoiceAssistantSubscriptionFlag.API_AUDIO)
        self._voice = peer
        self._subscribed.set()
        log.info("satellite: Home Assistant at %s subscribed to the voice assistant", peer.address)
        self.tracer.emit("satellite_subscribed")

    def _lost_voice_client(self) -> None:
        if self._voice is None:
            return
        if self.state is not State.IDLE:
            log.warning("satellite: Home Assistant left in the middle of a %s run", self.state.value)
        self._voice = None
        self._spawn(self._stop_playing())
        self._set_state(State.IDLE)

    # The microphone.

    def _answers_locally(self) -> bool:
        """Whether this chunk goes to the local pipeline: Home Assistant is away, or a local turn is not over."""
        if self._local is None or self.state is not State.IDLE:
            return False
        if self._voice is None or self._local.state is not PipelineState.IDLE:
            if not self._answering_locally:
                self._answering_locally = True
                log.info("satellite: Home Assistant is not connected; answering here")
            return True
        if self._answering_locally:
            self._answering_locally = False
            log.info("satellite: Home Assistant is connected; questions go to it")
        return False

    async def _hear(self, chunk: AudioChunk) -> None:
        detection = (await self.listener.hear(chunk, listening=False, timeline=self.timeline)).detection
        if self.state is State.STREAMING and self._voice is not None:
            if self._voice.api_audio:
                self._voice.send(api_pb2.VoiceAssistantAudio(data=chunk.int16().tobytes()))
            self._streamed_s += chunk.seconds
            if self._streamed_s > MAX_STREAM_S:
                log.warning("satellite: no end of speech from Home Assistant after %.0f s; stopping", MAX_STREAM_S)
                self._voice.send(api_pb2.VoiceAssistantRequest(start=False))
                self._end_run()
            return
        if detection is None or self.state is not State.IDLE:
            return
        if detection.model not in self._active_wake_words:
            log.info("satellite: heard %s, which Home Assistant made inactive", detection.model)
            return
        if self._voice is None:
            log.info("satellite: heard the wake word, but Home Assistant is not connected")
            return
        self.tracer.emit("wake", t=detection.heard_at, model=detection.model, score=round(detection.score, 3))
        sound = self.earcons.sound(Earcon.WAKE)
        if sound is not None:
            self.sink.start(lambda heard_at: None)
            await self.sink.play(sound)
        self._start_run(wake_phrase(detection.model))

    def _start_run(self, phrase: str | None) -> None:
        """Ask Home Assistant for a pipeline run and stream the microphone to it."""
        assert self._voice is not None
        self._continue = False
        self._run_ended = False
        self._streamed_s = 0.0
        self._voice.send(api_pb2.VoiceAssistantRequest(start=True, wake_word_phrase=phrase or ""))
        log.info(
            "satellite: %s; streaming the question to Home Assistant",
            f"heard {phrase!r}" if phrase else "listening again",
        )
        self._set_state(State.STREAMING, wake_word=phrase or "")

    def _on_event(self, event: Ev, data: dict[str, str]) -> None:
        log.debug("satellite: event %s %s", event.name, data)
        if event is Ev.VOICE_ASSISTANT_RUN_START:
            self._continue = False
        elif event in (Ev.VOICE_ASSISTANT_STT_VAD_END, Ev.VOICE_ASSISTANT_STT_END):
            if self.state is State.STREAMING:
                self._set_state(State.RESPONDING)
            if event is Ev.VOICE_ASSISTANT_STT_END and data.get("text"):
                log.info("satellite: Home Assistant heard %r", data["text"][:200])
        elif event is Ev.VOICE_ASSISTANT_INTENT_END:
            self._continue = data.get("continue_conversation") == "1"
        elif event is Ev.VOICE_ASSISTANT_TTS_END:
            url = data.get("url")
            if url and self._playing is None:
                self._playing = self._spawn(self._play_answer(url))
        elif event is Ev.VOICE_ASSISTANT_ERROR:
            log.warning("satellite: Home Assistant's pipeline failed: %s %s", data.get("code"), data.get("message"))
        elif event is Ev.VOICE_ASSISTANT_RUN_END:
            self._run_ended = True
            if self._playing is None:
                self._after_answer()

    async def _play_answer(self, url: str) -> None:
        if self.state is State.STREAMING:
            self._set_state(State.RESPONDING)
        try:
            await self._play_url(url)
        finally:
            self._playing = None
        if self._run_ended:
            self._after_answer()

    def _after_answer(self) -> None:
        """The answer has played: tell Home Assistant, then listen again if the conversation goes on."""
        if self._voice is None:
            return
        self._voice.send(api_pb2.VoiceAssistantAnnounceFinished(success=True))
        if self._continue:
            self._start_run(None)
        else:
            self._end_run()

    def _end_run(self) -> None:
        self._set_state(State.IDLE)

    # Announcements.

    def _announce(self, peer: Peer, msg: api_pb2.VoiceAssistantAnnounceRequest) -> None:
        if self.state is not State.IDLE or self._playing is not None:
            log.info("satellite: announcement refused while %s", self.state.value)
            peer.send(api_pb2.VoiceAssistantAnnounceFinished(success=False))
            return
        urls = [url for url in (msg.preannounce_media_id, msg.media_id) if url]
        self._set_state(State.ANNOUNCING)
        self._playing = self._spawn(self._play_announcement(peer, urls, msg.start_conversation))

    async def _play_announcement(self, peer: Peer, urls: list[str], start_conversation: bool) -> None:
        success = True
        try:
            for url in urls:
                success = await self._play_url(url) and success
        finally:
            self._playing = None
        peer.send(api_pb2.VoiceAssistantAnnounceFinished(success=success))
        if start_conversation and peer is self._voice:
            self._start_run(None)
        else:
            self._set_state(State.IDLE)

    # Playback.

    async def _play_url(self, url: str) -> bool:
        """Download audio (WAV, FLAC, MP3, OGG) and play it to its end; False, with one log line, if it cannot."""
        try:
            audio = await self._download(url)
        except (httpx.HTTPError, PeerError) as error:
            log.warning("satellite: cannot fetch %s: %s", url[:200], error)
            return False
        try:
            self.sink.start(lambda heard_at: None)
            await self.sink.play(audio)
            await self.sink.drain()
        except VoicebotError as error:
            log.error("satellite: cannot play the answer: %s", error)
            return False
        self.tracer.emit("satellite_played", seconds=round(audio.seconds, 3))
        log.info("satellite: played %.1f s from %s", audio.seconds, url[:200])
        return True

    async def _download(self, url: str) -> AudioChunk:
        if not url.startswith(("http://", "https://")):
            raise PeerError(f"a media URL that is not http(s): {url[:100]!r}")
        body = bytearray()
        client = httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True)
        async with client, client.stream("GET", url) as response:
            response.raise_for_status()
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > MAX_AUDIO_BYTES:
                    raise PeerError(f"audio larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MiB")
        return await asyncio.to_thread(_decode, bytes(body))

    async def _stop_playing(self) -> None:
        playing, self._playing = self._playing, None
        if playing is None or playing.done():
            return
        self.sink.stop()
        playing.cancel()
        await asyncio.gather(playing, return_exceptions=True)

    # Bookkeeping.

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _set_state(self, state: State, **fields) -> None:
        if state is self.state:
            return
        log.info("satellite state: %s -> %s", self.state.value, state.value)
        self.state = state
        self.tracer.emit("state", state=state.value, **fields)


def _decode(body: bytes) -> AudioChunk:
    try:
        samples, rate_hz = soundfile.read(io.BytesIO(body), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, TypeError) as error:
        raise PeerError(f"audio that does not decode ({error})") from None
    return AudioChunk(np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32)), int(rate_hz))
