"""voicebot as a Home Assistant voice satellite, the device linux-voice-assistant is.

Home Assistant's ESPHome integration connects to this server. The wake word is heard here; then the
microphone is streamed to Home Assistant as VoiceAssistantAudio until its pipeline says the speech
ended; the answer Home Assistant names by URL is downloaded and played here; an announcement is
played and answered with VoiceAssistantAnnounceFinished. The wake word heard during the answer stops
it and starts a new request (barge-in).

One supervisor task owns the state, as in the standalone pipeline. The microphone, the connections
(voicebot/satellite/api.py), the playback tasks and the local pipeline post events to its inbox;
cancellation goes out of band, as `Task.cancel()`, awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping

import httpx
from aioesphomeapi import api_pb2
from aioesphomeapi.model import VoiceAssistantEventType as Ev
from aioesphomeapi.model import VoiceAssistantTimerEventType as TimerKind

from voicebot.audio import AudioChunk, AudioSink, AudioSource, PlaybackTimeline, VolumeSink
from voicebot.config import Config, SatelliteConfig
from voicebot.earcons import Earcon, Earcons
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.listen import hear_source
from voicebot.pipeline import Pipeline
from voicebot.pipeline import State as PipelineState
from voicebot.ring import ring
from voicebot.runtime.inbox import Inbox
from voicebot.runtime.net import is_loopback
from voicebot.runtime.tasks import cancel_and_wait
from voicebot.runtime.trace import Tracer
from voicebot.satellite.api import ApiServer, WakeWords, device_mac, wake_phrase
from voicebot.satellite.events import (
    AnnounceRequested,
    Event,
    Heard,
    InputEnded,
    LocalEnded,
    LocalStateChanged,
    PlaybackEnded,
    PlaybackStarted,
    RingEnded,
    RunEvent,
    RunRefused,
    SourceFailed,
    State,
    Subscribed,
    TimerEvent,
    Unsubscribed,
)
from voicebot.satellite.frames import Peer, PeerError, decode_encryption_key
from voicebot.satellite.media import TooLong, audio_blocks
from voicebot.wake import WakeDetection

log = logging.getLogger(__name__)

PLAY_AHEAD_S = 2.0
"""How far ahead of the speaker Home Assistant's audio is decoded and queued."""
MAX_STREAM_S = 30.0
"""The longest question streamed before the satellite stops on its own (Home Assistant's VAD normally ends it)."""
CANCEL_TIMEOUT_S = 3.0
BUSY = (State.RESPONDING, State.ANNOUNCING)
"""The states in which Home Assistant's audio plays or is on its way, and the wake word barges in."""


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


class RelaySource:
    """The microphone as the satellite hands it on to the local pipeline; None ends it."""

    def __init__(self) -> None:
        self._frames: asyncio.Queue[AudioChunk | None] = asyncio.Queue(maxsize=4)

    async def put(self, chunk: AudioChunk | None) -> None:
        """Hand on a chunk, waiting while the pipeline is behind (the source then drops and counts frames)."""
        await self._frames.put(chunk)

    def abandon(self) -> None:
        """The pipeline is gone: drop what waits for it, so a put waiting for room returns."""
        while not self._frames.empty():
            self._frames.get_nowait()

    async def frames(self) -> AsyncIterator[AudioChunk]:
        """The chunks handed on, until the end."""
        while (chunk := await self._frames.get()) is not None:
            yield chunk


@dataclass
class Playback:
    """Audio from Home Assistant being fetched and played: the answer to a run, or an announcement."""

    id: int
    task: asyncio.Task[None]
    peer: Peer
    announcement: bool
    start_conversation: bool = False
    started_at: float | None = None


@dataclass
class SatelliteRing:
    """A timer of Home Assistant's ringing here."""

    id: int
    timer_ids: list[str]
    task: asyncio.Task[None]


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
        self.barge_in = engines.config.conversation.barge_in
        self.source = source
        self.sink = sink
        self.tracer = tracer
        self.on_listening = on_listening
        self.earcons = Earcons(engines.config.earcons)
        self.timers = engines.config.timers
        # Timers ring even when muted: the voice-set volume, without the mute.
        self.alarm_sink: AudioSink = sink.for_alarms() if isinstance(sink, VolumeSink) else sink
        self.state = State.IDLE
        self.mac = device_mac(self.config.name)
        self._psk = decode_encryption_key(self.config.encryption_key) if self.config.encryption_key else None
        self._wake_words = WakeWords(self.listener.wake_models)
        self._inbox: Inbox[Event] = Inbox()
        self._supervisor: asyncio.Task | None = None
        # Everything below is the supervisor's alone.
        self._voice: Peer | None = None  # the client subscribed to the voice assistant
        self._api_audio = False
        self._subscribed = asyncio.Event()  # the source waits for it when nothing else would answer
        self._streamed_s = 0.0
        self._continue = False
        self._run_ended = False
        self._stopped_run_open = False  # a run stopped by barge-in whose end Home Assistant has yet to send
        self._playback: Playback | None = None
        self._playback_ids = itertools.count(1)
        self._ring: SatelliteRing | None = None
        self._rings_waiting: list[str] = []  # names of timers that finished while something else went on
        self._ring_ids = itertools.count(1)
        self._relay: RelaySource | None = None
        self._local: Pipeline | None = None
        self._local_task: asyncio.Task[None] | None = None
        self._local_state = PipelineState.IDLE
        self._answering_locally = False
        if self.config.fallback_local:
            # While Home Assistant is away, the microphone goes to voicebot's own pipeline instead.
            self._relay = RelaySource()
            self._local = Pipeline(
                engines,
                self._relay,
                sink,
                tracer,
                timeline=timeline,
                on_state=lambda state: self._post(LocalStateChanged(state)),
            )

    def _post(self, event: Event) -> None:
        self._inbox.post(event)

    # The supervisor.

    async def run(self) -> None:
        """Serve the API and hear the microphone (once Home Assistant has subscribed, unless it can answer here)
        until cancelled; when the input ends it goes on serving announcements."""
        self._supervisor = asyncio.current_task()
        self._inbox = Inbox()
        self._voice, self._playback, self._local_state = None, None, PipelineState.IDLE
        self._subscribed.clear()
        self._set_state(State.IDLE)
        server = ApiServer(self.config, self.mac, self._psk, self._wake_words, self._post)
        await server.start()
        log.info(
            "satellite: serving the ESPHome API on %s:%d as %r (%s)",
            self.config.host,
            self.config.port,
            self.config.name,
            "encrypted" if self._psk else "plaintext",
        )
        self.tracer.emit("satellite_listening", port=self.config.port, encrypted=self._psk is not None)
        reader = asyncio.create_task(self._read_source(), name="satellite-source")
        if self._local is not None and self._relay is not None:
            self._local_task = asyncio.create_task(self._local.run(), name="local-pipeline")
            self._local_task.add_done_callback(self._on_local_done)
        try:
            while True:
                await self._handle(await self._inbox.get())
        finally:
            await cancel_and_wait(reader)
            if self._local_task is not None:
                await cancel_and_wait(self._local_task)
                self._local_task = None
            await server.close()
            await self._stop_playback()

    async def _read_source(self) -> None:
        if self._local is None:
            # Nobody to send a question to before Home Assistant subscribes: an input file waits for it.
            await self._subscribed.wait()
        await hear_source(self.source, self._inbox, self.on_listening)

    def _on_local_done(self, task: asyncio.Task) -> None:
        if self._relay is not None:
            self._relay.abandon()
        self._post(LocalEnded())

    async def _handle(self, event: Event) -> None:
        if isinstance(event, Heard):
            await self._on_heard(event.chunk)
        elif isinstance(event, RunEvent):
            if event.peer is self._voice:
                self._on_run_event(event.kind, event.data)
        elif isinstance(event, PlaybackStarted):
            playback = self._playback
            if playback is not None and playback.id == event.playback_id and playback.started_at is None:
                playback.started_at = event.at
                self.tracer.emit("playback_start", t=event.at, source="home_assistant")
        elif isinstance(event, PlaybackEnded):
            if self._playback is not None and self._playback.id == event.playback_id:
                self._on_playback_ended(self._playback, event.success)
        elif isinstance(event, AnnounceRequested):
            self._on_announce(event)
        elif isinstance(event, RunRefused):
            if event.peer is self._voice and self.state is State.STREAMING:
                log.warning("satellite: Home Assistant could not start its pipeline")
                self._set_state(State.IDLE)
        elif isinstance(event, Subscribed):
            await self._on_subscribed(event.peer, event.api_audio)
        elif isinstance(event, Unsubscribed):
            if event.peer is self._voice:
                await self._lose_voice()
        elif isinstance(event, LocalStateChanged):
            self._local_state = event.state
        elif isinstance(event, LocalEnded):
            self._on_local_ended()
        elif isinstance(event, InputEnded):
            if self._relay is not None and self._local_task is not None:
                await self._relay.put(None)  # The local pipeline finishes its last turn, then ends.
            else:
                log.info("satellite: the input ended; still serving announcements")
        elif isinstance(event, SourceFailed):
            raise event.error
        elif isinstance(event, TimerEvent):
            if event.peer is self._voice:
                await self._on_timer_event(event)
        elif isinstance(event, RingEnded) and self._ring is not None and self._ring.id == event.ring_id:
            await self._stop_ringing("timeout")

    def _set_state(self, state: State, **fields: Any) -> None:
        assert asyncio.current_task() is self._supervisor, "only the supervisor sets the satellite's state"
        if state is self.state:
            return
        log.info("satellite state: %s -> %s", self.state.value, state.value)
        self.state = state
        self.tracer.emit("state", state=state.value, **fields)
        if state is State.IDLE and self._rings_waiting:
            self._start_ringing()  # A timer that ended during a run rings once it is over.

    # Home Assistant, subscribed or gone.

    async def _on_subscribed(self, peer: Peer, api_audio: bool) -> None:
        if not api_audio:
            log.warning("satellite: %s wants audio over UDP, which is not supported; it gets none", peer.address)
        if self._voice is not None and self._voice is not peer:
            log.info("satellite: %s replaces %s as the voice assistant", peer.address, self._voice.address)
            await self._lose_voice()
        self._voice, self._api_audio = peer, api_audio
        self._subscribed.set()
        log.info("satellite: Home Assistant at %s subscribed to the voice assistant", peer.address)
        self.tracer.emit("satellite_subscribed")

    async def _lose_voice(self) -> None:
        if self.state is not State.IDLE:
            log.warning("satellite: Home Assistant left in the middle of a %s run", self.state.value)
        lost, self._voice = self._voice, None
        playback = await self._stop_playback()
        if playback is not None and playback.announcement and playback.peer is not lost:
            playback.peer.send(api_pb2.VoiceAssistantAnnounceFinished(success=False))
        self._set_state(State.IDLE)

    # The microphone.

    async def _on_heard(self, chunk: AudioChunk) -> None:
        if self._answers_locally():
            assert self._relay is not None
            await self._relay.put(chunk)
            return
        hearing = await self.listener.hear(chunk, listening=False, timeline=self.timeline)
        own = hearing.own_voice
        if own is not None:
            log.info("satellite: ignored the wake word: the answer said it itself (score %.2f)", own.score)
            self.tracer.emit("own_wake_word_ignored", t=own.heard_at, score=round(own.score, 3))
        if self.state is State.STREAMING:
            self._stream(chunk)
        elif hearing.detection is not None:
            await self._on_wake(hearing.detection)

    def _answers_locally(self) -> bool:
        """Whether this chunk goes to the local pipeline: Home Assistant is away, or a local turn is not over."""
        if self._local_task is None or self.state is not State.IDLE:
            return False
        if self._voice is None or self._local_state is not PipelineState.IDLE:
            if not self._answering_locally:
                self._answering_locally = True
                log.info("satellite: Home Assistant is not connected; answering here")
            return True
        if self._answering_locally:
            self._answering_locally = False
            log.info("satellite: Home Assistant is connected; questions go to it")
        return False

    def _stream(self, chunk: AudioChunk) -> None:
        assert self._voice is not None
        if self._api_audio:
            self._voice.send(api_pb2.VoiceAssistantAudio(data=chunk.int16().tobytes()))
        self._streamed_s += chunk.seconds
        if self._streamed_s > MAX_STREAM_S:
            log.warning("satellite: no end of speech from Home Assistant after %.0f s; stopping", MAX_STREAM_S)
            self._voice.send(api_pb2.VoiceAssistantRequest(start=False))
            self._set_state(State.IDLE)

    async def _on_wake(self, detection: WakeDetection) -> None:
        if detection.model not in self._wake_words.active:
            log.info("satellite: heard %s, which Home Assistant made inactive", detection.model)
            return
        if self._voice is None:
            log.info("satellite: heard the wake word, but Home Assistant is not connected")
            return
        if self.state is State.RINGING:
            await self._stop_ringing("wake_word")
        busy = self.state in BUSY
        if busy and not self.barge_in:
            log.info("satellite: wake word ignored while %s (conversation.barge_in is off)", self.state.value)
            return
        self.tracer.emit("wake", t=detection.heard_at, model=detection.model, score=round(detection.score, 3))
        if busy:
            await self._barge_in()
        sound = self.earcons.sound(Earcon.WAKE)
        if sound is not None:
            self.tracer.emit("earcon", name=Earcon.WAKE.value)
            try:
                self.sink.start(lambda heard_at: None)
                await self.sink.play(sound)
            except VoicebotError as error:
                log.error("satellite: cannot play the wake earcon: %s", error)
        self._start_run(wake_phrase(detection.model), barged_in=busy)

    async def _barge_in(self) -> None:
        """Stop Home Assistant's audio at once (the output first, then its task), and end its run or announcement."""
        self.tracer.emit("barge_in", state=self.state.value)
        stopped_at = self.sink.stop()
        playback = await self._end_playback()
        if playback is not None and playback.started_at is not None:
            self.tracer.emit("playback_stop", t=stopped_at, reason="barge_in")
        if self.state is State.ANNOUNCING:
            if playback is not None:
                playback.peer.send(api_pb2.VoiceAssistantAnnounceFinished(success=False))
        elif self._voice is not None:
            self._voice.send(api_pb2.VoiceAssistantRequest(start=False))
            self._stopped_run_open = not self._run_ended

    # Timers Home Assistant keeps for this satellite (it says when one starts, changes, is cancelled or ends).

    async def _on_timer_event(self, event: TimerEvent) -> None:
        kind = event.kind
        log.info("satellite: Home Assistant's timer %r %s", event.name or event.timer_id, kind.name.rsplit("_", 1)[-1])
        if kind is TimerKind.VOICE_ASSISTANT_TIMER_FINISHED:
            self._rings_waiting.append(event.timer_id)
            if self.state is State.IDLE:
                self._start_ringing()
        elif kind is TimerKind.VOICE_ASSISTANT_TIMER_CANCELLED:
            if event.timer_id in self._rings_waiting:
                self._rings_waiting.remove(event.timer_id)
            if self._ring is not None and event.timer_id in self._ring.timer_ids:
                await self._stop_ringing("cancelled")

    def _start_ringing(self) -> None:
        timer_ids, self._rings_waiting = self._rings_waiting, []
        ring_id = next(self._ring_ids)
        task = asyncio.create_task(self._ring_out(ring_id), name=f"satellite-ring-{ring_id}")
        self._ring = SatelliteRing(ring_id, timer_ids, task)
        self.tracer.emit("ring_start", timers=timer_ids, source="home_assistant")
        self._set_state(State.RINGING)

    async def _ring_out(self, ring_id: int) -> None:
        try:
            await ring([], self.alarm_sink, self.timers, self.tracer)
        except VoicebotError as error:
            log.error("satellite: cannot ring: %s", error)
        self._post(RingEnded(ring_id))

    async def _stop_ringing(self, reason: str) -> None:
        """Silence the ring at once, then stop its task; a timer that ended meanwhile rings next."""
        current, self._ring = self._ring, None
        if current is None:
            return
        stopped_at = self.alarm_sink.stop()
        await cancel_and_wait(current.task)
        self.tracer.emit("ring_stop", t=stopped_at, reason=reason)
        if self.state is State.RINGING:
            self._set_state(State.IDLE)
        if self._rings_waiting and reason not in ("wake_word", "stopped"):
            self._start_ringing()

    # Home Assistant's pipeline run.

    def _start_run(self, phrase: str | None, barged_in: bool = False) -> None:
        """Ask Home Assistant for a pipeline run and stream the microphone to it."""
        assert self._voice is not None
        self._continue = False
        self._run_ended = False
        self._streamed_s = 0.0
        self._voice.send(api_pb2.VoiceAssistantRequest(start=True, wake_word_phrase=phrase or ""))
        heard = f"heard {phrase!r}" + (" (barge-in)" if barged_in else "")
        log.info("satellite: %s; streaming the question to Home Assistant", heard if phrase else "listening again")
        self._set_state(State.STREAMING, wake_word=phrase or "")

    def _on_run_event(self, kind: Ev, data: Mapping[str, str]) -> None:
        log.debug("satellite: event %s %s", kind.name, dict(data))
        if kind is Ev.VOICE_ASSISTANT_RUN_START:
            self._continue = False
            self._stopped_run_open = False
        elif kind in (Ev.VOICE_ASSISTANT_STT_VAD_END, Ev.VOICE_ASSISTANT_STT_END):
            if self.state is State.STREAMING:
                self._set_state(State.RESPONDING)
            if kind is Ev.VOICE_ASSISTANT_STT_END and data.get("text"):
                log.info("satellite: Home Assistant heard %r", data["text"][:200])
        elif kind is Ev.VOICE_ASSISTANT_INTENT_END:
            self._continue = data.get("continue_conversation") == "1"
        elif kind is Ev.VOICE_ASSISTANT_TTS_END:
            url = data.get("url")
            if url and self._playback is None and self.state in (State.STREAMING, State.RESPONDING):
                self._set_state(State.RESPONDING)
                self._playback = self._start_playback(self._voice, (url,), announcement=False)
        elif kind is Ev.VOICE_ASSISTANT_ERROR:
            log.warning("satellite: Home Assistant's pipeline failed: %s %s", data.get("code"), data.get("message"))
        elif kind is Ev.VOICE_ASSISTANT_RUN_END:
            if self._stopped_run_open:
                # Home Assistant ends a run it was told to stop, and this end came before the new run began.
                self._stopped_run_open = False
                return
            self._run_ended = True
            if self._playback is None and self.state in (State.STREAMING, State.RESPONDING):
                self._after_answer()

    def _after_answer(self) -> None:
        """The answer has played: tell Home Assistant, then listen again if the conversation goes on."""
        assert self._voice is not None
        self._voice.send(api_pb2.VoiceAssistantAnnounceFinished(success=True))
        if self._continue:
            self._start_run(None)
        else:
            self._set_state(State.IDLE)

    # Announcements.

    def _on_announce(self, event: AnnounceRequested) -> None:
        if event.peer is not self._voice:
            # Only Home Assistant, which subscribed to the voice assistant, may make the satellite speak.
            log.warning("satellite: refused an announcement from %s, which did not subscribe", event.peer.address)
            event.peer.send(api_pb2.VoiceAssistantAnnounceFinished(success=False))
            return
        if self.state is not State.IDLE or self._playback is not None:
            log.info("satellite: announcement refused while %s", self.state.value)
            event.peer.send(api_pb2.VoiceAssistantAnnounceFinished(success=False))
            return
        self._set_state(State.ANNOUNCING)
        self._playback = self._start_playback(
            event.peer, event.urls, announcement=True, start_conversation=event.start_conversation
        )

    # Playback.

    def _on_playback_ended(self, playback: Playback, success: bool) -> None:
        self._playback = None
        if not playback.announcement:
            if self._run_ended and self._voice is not None:
                self._after_answer()
            return
        playback.peer.send(api_pb2.VoiceAssistantAnnounceFinished(success=success))
        if playback.start_conversation and playback.peer is self._voice:
            self._start_run(None)
        else:
            self._set_state(State.IDLE)

    def _start_playback(
        self, peer: Peer | None, urls: tuple[str, ...], announcement: bool, start_conversation: bool = False
    ) -> Playback:
        assert peer is not None
        playback_id = next(self._playback_ids)
        task = asyncio.create_task(self._play(playback_id, urls), name=f"satellite-playback-{playback_id}")
        return Playback(playback_id, task, peer, announcement, start_conversation)

    async def _stop_playback(self) -> Playback | None:
        """Silence the output if something plays, then end the playback task."""
        if self._playback is not None and not self._playback.task.done():
            self.sink.stop()
        return await self._end_playback()

    async def _end_playback(self) -> Playback | None:
        """Cancel the playback task and wait until it has ended; the caller has silenced the output first."""
        playback, self._playback = self._playback, None
        if playback is None or playback.task.done():
            return playback
        playback.task.cancel()
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                await asyncio.gather(playback.task, return_exceptions=True)
        except TimeoutError:
            log.error("satellite: playback did not stop within %.0f s of being cancelled", CANCEL_TIMEOUT_S)
        return playback

    async def _play(self, playback_id: int, urls: tuple[str, ...]) -> None:
        """Play each URL in turn; it only reports to the supervisor, it never sets the state."""
        success = True
        try:
            for url in urls:
                success = await self._play_url(playback_id, url) and success
        except Exception as error:  # noqa: BLE001 - a broken playback must still be reported as ended
            log.error("satellite: playback failed: %s: %s", type(error).__name__, error)
            success = False
        self._post(PlaybackEnded(playback_id, success))

    async def _play_url(self, playback_id: int, url: str) -> bool:
        """Fetch audio and play it a second at a time, a few seconds ahead of the speaker, so memory stays flat
        however long it is; False, with one log line, if it cannot be fetched, decoded or played, or is too long."""
        queued_s = 0.0
        try:
            async with contextlib.aclosing(audio_blocks(url, self.config.max_announcement_s)) as blocks:
                async for chunk in blocks:
                    if queued_s == 0.0:
                        self.sink.start(lambda heard_at: self._post(PlaybackStarted(playback_id, heard_at)))
                    await self.sink.play(chunk)
                    queued_s += chunk.seconds
                    ahead_s = queued_s - self.sink.heard_s
                    if ahead_s > PLAY_AHEAD_S:
                        await asyncio.sleep(ahead_s - PLAY_AHEAD_S)  # The speaker plays in real time.
            await self.sink.drain()
        except TooLong as error:
            await self.sink.drain()
            log.warning("satellite: played %.0f s of %s and stopped: %s", queued_s, url[:200], error)
            return False
        except (httpx.HTTPError, PeerError) as error:
            log.warning("satellite: cannot fetch %s: %s", url[:200], error)
            return False
        except VoicebotError as error:
            log.error("satellite: cannot play the answer: %s", error)
            return False
        self.tracer.emit("satellite_played", seconds=round(queued_s, 3))
        log.info("satellite: played %.1f s from %s", queued_s, url[:200])
        return True

    # The local pipeline.

    def _on_local_ended(self) -> None:
        task, self._local_task = self._local_task, None
        if task is None or task.cancelled():
            return
        task.result()  # An error in the last local turn is raised here.
        log.info("satellite: the input ended; still serving announcements")
