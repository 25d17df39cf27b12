"""The voice loop: microphone → wake word → end of utterance → ASR → LLM → chunker → TTS → speaker.

One supervisor on the event loop owns the state. The microphone, the turns and the speaker post
events to its inbox and it alone decides what happens next; cancellation goes out of band, as
`Task.cancel()`. Every blocking model call runs on a pinned worker thread, and the reply is spoken
piece by piece while the LLM is still writing it (voicebot/reply.py).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import numpy as np

from voicebot.asr import Transcript
from voicebot.audio import AudioChunk, AudioSink, AudioSource, PlaybackTimeline, VolumeSink
from voicebot.earcons import Earcon, Earcons
from voicebot.engines import Engines
from voicebot.errors import RemoteEngineError, VoicebotError
from voicebot.intents.match import IntentMatch
from voicebot.intents.service import Ring
from voicebot.listen import Heard, InputEnded, Listener, SourceFailed, hear_source
from voicebot.reply import VOICE_CONVERSATION, Responder
from voicebot.ring import ring
from voicebot.runtime.inbox import Inbox
from voicebot.runtime.tasks import cancel_and_wait
from voicebot.runtime.trace import HeldTracer, Tracer
from voicebot.tts import language_of
from voicebot.vad import Endpoint, EndpointKind
from voicebot.wake import WakeDetection

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 3.0
# After the follow-up earcon, its echo and the reply's room tail must not count as a new question.
ECHO_TAIL_S = 0.15
APOLOGIES = {
    "en": "Sorry, I can't answer right now.",
    "zh": "抱歉，我现在无法回答。",
}
RING_PAUSE_S = 0.12
"""Silence after speech that hands what was said over the ring to be heard: "stop" is one short word."""
RING_STOPPING_INTENTS = frozenset({"HassNevermind", "HassCancelTimer", "HassCancelAllTimers", "VoicebotCancelAlarm"})
"""Said while a timer rings, each of these stops the ring."""
RING_STOP_WORDS = frozenset({"stop", "cancel", "enough", "quiet", "dismiss", "silence"})
"""A word that stops a ringing timer wherever it falls in what was heard: over a ring, the microphone also hears
the remains of the ring's own words ("your timer is done"), which never hold one of these."""
RING_STOP_PHRASES = ("别响", "停", "关掉", "关了", "关闭", "闭嘴", "安静", "好了", "知道了", "取消", "起来了")
"""The same for Chinese, which has no spaces between words."""
RING_STOP_REPLIES = frozenset({"ok", "okay", "thanks", "thank you", "got it", "i'm up", "im up", "i am up"})
"""What else stops a ring when said on its own (Whisper also makes these out of noise, so not as a part)."""
STOP_COMMANDS = frozenset(
    {"stop", "stop it", "cancel", "cancel that", "never mind", "nevermind", "be quiet", "quiet", "shut up", "enough"}
    | {"停", "停止", "停下", "取消", "别说了", "算了", "安静"}
)


class State(enum.Enum):
    """What the assistant is doing."""

    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    RINGING = "ringing"


def is_stop_command(text: str) -> bool:
    """True for a question that only says stop, cancel or the like."""
    return re.sub(r"[^\w\s]+", "", text.lower()).strip() in STOP_COMMANDS


# Events posted to the supervisor.


@dataclass(frozen=True)
class PlaybackStarted:
    """A turn's first reply sample reached the output."""

    turn_id: int


@dataclass(frozen=True)
class TurnEnded:
    """A turn finished, for `reason`."""

    turn_id: int
    reason: str


@dataclass(frozen=True)
class SpeakText:
    """Text from elsewhere (an answer typed on the web page) to say through the speaker, as it arrives."""

    text: AsyncIterator[str]
    language: str
    source: str = "typed"


@dataclass(frozen=True)
class TimerRang:
    """A timer or alarm has ended."""

    ring: Ring


@dataclass(frozen=True)
class RingEnded:
    """The ring played out its timers.ring_s unanswered."""

    ring_id: int


@dataclass(frozen=True)
class StopHeard:
    """Stop (or the like) was said while ringing."""

    ring_id: int
    text: str


Event = Heard | InputEnded | SourceFailed | PlaybackStarted | TurnEnded | SpeakText | TimerRang | RingEnded | StopHeard


@dataclass
class Ringing:
    """Timers ringing now: the task playing the ring, and the one checking whether what was said is "stop"."""

    id: int
    rings: list[Ring]
    task: asyncio.Task[None]
    stop_checks: list[asyncio.Task[None]] = field(default_factory=list)
    """Transcriptions of what was said over the ring, each deciding whether it was "stop"."""
    heard_to_pause: bool = False
    """Whether what was said up to the latest pause is already being heard."""


@dataclass
class Turn:
    """One question being answered; `confirmed` is set once the question has surely ended."""

    id: int
    task: asyncio.Task[None]
    tracer: HeldTracer
    confirmed: asyncio.Event
    playback_started_at: float | None = None

    def confirm(self) -> None:
        """The question has ended: let the turn's events into the trace and its answer be heard."""
        self.tracer.release()
        self.confirmed.set()


class Pipeline:
    """The assistant: hears the source, answers through the sink, one turn at a time.

    Work on the answer starts early, at the first pause in the question (vad.early_start_s), while
    the endpointer waits out its hangover. If the person goes on talking, that early turn is
    cancelled and forgotten; if the pause was the end, its answer is already on its way.
    The wake word heard while thinking or speaking stops the turn and listens anew (barge-in).
    After a reply, a follow-up question needs no wake word for conversation.follow_up_s.
    A question the intent stage knows (a timer, the time, the volume) is answered there, not by the LLM;
    a timer that ends rings, and "stop" ends the ring without the wake word.
    """

    def __init__(
        self,
        engines: Engines,
        source: AudioSource,
        sink: AudioSink,
        tracer: Tracer,
        streaming: bool = True,
        early_start: bool = True,
        timeline: PlaybackTimeline | None = None,
        on_listening: Callable[[], None] = lambda: None,
        on_state: Callable[[State], None] = lambda state: None,
    ) -> None:
        self.engines = engines
        self.on_listening = on_listening
        self.on_state = on_state
        self.config = engines.config
        self.source = source
        self.sink = sink
        self.tracer = tracer
        self.early_start = early_start
        self.timeline = timeline
        self.state = State.IDLE
        self.responder = Responder(engines, sink, tracer, streaming=streaming)
        self.earcons = Earcons(self.config.earcons)
        self._inbox: Inbox[Event] = Inbox()
        self._turn: Turn | None = None
        self._turn_ids = itertools.count(1)
        self._follow_up = False
        self._input_ended = False
        self._ringing: Ringing | None = None
        self._waiting_rings: list[Ring] = []
        self._ring_ids = itertools.count(1)
        # Timers ring even when muted: the voice-set volume, without the mute.
        self.alarm_sink: AudioSink = sink.for_alarms() if isinstance(sink, VolumeSink) else sink

    @property
    def listener(self) -> Listener:
        """The always-on stages the microphone goes through."""
        return self.engines.listener

    # The supervisor.

    async def run(self) -> None:
        """Listen until the input ends, then finish the last turn; cancelling stops everything.

        It can run again after the source failed: it starts afresh, waiting for the wake word, with
        the conversation kept.
        """
        await self.listener.reset()
        self._inbox = Inbox()
        self._set_state(State.IDLE)
        self._follow_up = self._input_ended = False
        reader = asyncio.create_task(hear_source(self.source, self._inbox, self.on_listening), name="source")
        timers = None
        if self.engines.has("intents"):
            intents = self.engines.intents
            timers = asyncio.create_task(intents.run(lambda rang: self._inbox.post(TimerRang(rang))), name="timers")
            for text in intents.take_missed():
                self.tracer.emit("timer_missed", text=text)
                self._inbox.post(SpeakText(_once(text), "zh" if language_of(text) == "zh" else "en", "missed"))
        try:
            while not (self._input_ended and self._turn is None and self._ringing is None):
                await self._handle(await self._inbox.get())
        finally:
            tasks = [reader] + ([timers] if timers is not None else [])
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.cancel_turn()
            await self._stop_ringing("stopped")
            await self.responder.close()

    async def _handle(self, event: Event) -> None:
        if isinstance(event, Heard):
            await self._hear(event.chunk)
        elif isinstance(event, PlaybackStarted):
            if self._is_current(event.turn_id) and self.state is State.THINKING:
                self._set_state(State.SPEAKING)
        elif isinstance(event, TurnEnded):
            if self._is_current(event.turn_id):
                self._turn = None
                await self._after_turn(event.reason)
        elif isinstance(event, InputEnded):
            await self._on_input_ended()
        elif isinstance(event, SourceFailed):
            raise event.error
        elif isinstance(event, SpeakText):
            self._on_speak_text(event)
        elif isinstance(event, TimerRang):
            await self._on_timer_rang(event.ring)
        elif isinstance(event, RingEnded) and self._is_ringing(event.ring_id):
            await self._stop_ringing("timeout")
        elif isinstance(event, StopHeard) and self._is_ringing(event.ring_id):
            log.info("heard %r while ringing: stopping the ring", event.text)
            await self._stop_ringing("stop_word")

    def speak_text(self, text: AsyncIterator[str], language: str) -> bool:
        """Say `text` as it arrives, unless the assistant is busy with a turn of its own (then False).

        The wake word stops it, as it stops any reply.
        """
        if self._turn is not None or self.state is not State.IDLE:
            return False
        self._inbox.post(SpeakText(text, language))
        return True

    def _on_speak_text(self, event: SpeakText) -> None:
        if self._turn is not None or self.state is not State.IDLE:
            log.info("typed answer not spoken: a voice turn began first")
            return
        turn_id = next(self._turn_ids)
        turn = Turn(turn_id, asyncio.Future(), HeldTracer(self.tracer, released=True), asyncio.Event())
        turn.confirmed.set()
        turn.task = asyncio.create_task(self._speak_text(turn, event), name=f"speak-{turn_id}")
        self._turn = turn
        self._set_state(State.THINKING, source=event.source)

    async def _speak_text(self, turn: Turn, event: SpeakText) -> None:
        reason = "spoken"
        try:
            await self.responder.say_stream(
                event.text, event.language, on_speaking=lambda heard_at: self._on_speaking(turn, heard_at)
            )
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except Exception as error:  # noqa: BLE001 - a failed typed answer must not stop the assistant
            reason = "error"
            log.error("speaking a typed answer failed: %s: %s", type(error).__name__, error)
        finally:
            turn.tracer.emit("turn_end", reason=reason)
            self._inbox.post(TurnEnded(turn.id, reason))

    def _is_ringing(self, ring_id: int) -> bool:
        return self._ringing is not None and self._ringing.id == ring_id

    def _is_current(self, turn_id: int) -> bool:
        return self._turn is not None and self._turn.id == turn_id

    def _set_state(self, state: State, **fields: Any) -> None:
        if state is self.state and not fields:
            return
        log.info("state: %s -> %s", self.state.value, state.value)
        self.state = state
        self.tracer.emit("state", state=state.value, **fields)
        self.on_state(state)

    async def cancel_turn(self) -> None:
        """Stop the current turn wherever it is: generation, synthesis and playback."""
        turn, self._turn = self._turn, None
        if turn is None or turn.task.done():
            return
        turn.task.cancel()
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                await asyncio.gather(turn.task, return_exceptions=True)
        except TimeoutError:
            log.error("turn did not stop within %.0f s of being cancelled", CANCEL_TIMEOUT_S)

    # Listening.

    async def _hear(self, chunk: AudioChunk) -> None:
        ringing = self.state is State.RINGING
        listening = self.state is State.LISTENING or ringing
        hearing = await self.listener.hear(chunk, listening, self.timeline, over_playback=ringing)
        detection, endpoints, own_voice = hearing.detection, hearing.endpoints, hearing.own_voice
        if own_voice is not None:
            log.info("ignored the wake word: the assistant said it itself (score %.2f)", own_voice.score)
            self.tracer.emit("own_wake_word_ignored", t=own_voice.heard_at, score=round(own_voice.score, 3))
        if detection is not None:
            await self._on_wake(detection)
        for endpoint in endpoints:
            if self.state is State.RINGING:
                await self._on_ring_endpoint(endpoint)
                continue
            if self.state is not State.LISTENING:
                break
            await self._on_endpoint(endpoint)

    async def _on_wake(self, detection: WakeDetection) -> None:
        busy = self.state in (State.THINKING, State.SPEAKING)
        if busy and not self.config.conversation.barge_in:
            log.info("wake word ignored while %s (conversation.barge_in is off)", self.state.value)
            return
        if self.state is State.LISTENING and not self._follow_up:
            return  # Already listening for the question.
        self.tracer.emit("wake", t=detection.heard_at, model=detection.model, score=round(detection.score, 3))
        if self.state is State.RINGING:
            await self._stop_ringing("wake_word")
        if busy:
            await self._barge_in()
        elif self._turn is not None:
            await self.cancel_turn()  # An early answer to a follow-up the wake word now restarts.
        await self._play_earcon(Earcon.WAKE)
        await self._listen(detection.heard_at)

    async def _barge_in(self) -> None:
        """Stop the turn at once: the output first, then generation and synthesis."""
        self.tracer.emit("barge_in", state=self.state.value)
        stopped_at = self.sink.stop()
        if self._turn is not None and self._turn.playback_started_at is not None:
            self.tracer.emit("playback_stop", t=stopped_at, reason="barge_in")
        await self.cancel_turn()

    async def _listen(self, at: float, follow_up: bool = False) -> None:
        timeout_s = self.config.conversation.follow_up_s if follow_up else None
        await self.listener.begin(at, timeout_s)
        self._follow_up = follow_up
        self._set_state(State.LISTENING, follow_up=follow_up)

    async def _on_endpoint(self, endpoint: Endpoint) -> None:
        kind = endpoint.kind
        if kind is EndpointKind.SPEECH_START:
            self.tracer.emit("speech_start", t=endpoint.at)
        elif kind in (EndpointKind.PAUSE, EndpointKind.RESUME) and not self.early_start:
            pass
        elif kind is EndpointKind.PAUSE:
            candidate = self.listener.candidate
            assert candidate is not None
            await self.cancel_turn()
            self._turn = self._start_turn(candidate.audio, confirmed=False)
            self.tracer.emit("early_start", paused_at=round(endpoint.at, 4))
        elif kind is EndpointKind.RESUME:
            log.debug("speech resumed: dropping the early answer")
            if self._turn is not None and not self._turn.confirmed.is_set():
                self.tracer.emit("early_start_dropped", resumed_at=round(endpoint.at, 4))
            await self.cancel_turn()
        elif kind is EndpointKind.NO_SPEECH:
            if self._follow_up:
                log.info("no follow-up question: back to waiting for the wake word")
                self.tracer.emit("follow_up_end", reason="silence")
            else:
                log.info("nobody spoke after the wake word")
                self.tracer.emit("turn_end", reason="no_speech")
            self._follow_up = False
            self._set_state(State.IDLE)
        else:
            delay = self.tracer.clock.now() - endpoint.at
            self.tracer.emit("speech_end", t=endpoint.at, endpoint_delay_s=round(delay, 4), reason=kind.value)
            self._follow_up = False
            self._set_state(State.THINKING)
            if self._turn is not None and not self._turn.confirmed.is_set():
                # Nothing was said since the pause that started this turn, so its question is the final one.
                self._turn.confirm()
            else:
                utterance = self.listener.utterance
                assert utterance is not None
                self._turn = self._start_turn(utterance.audio, confirmed=True)

    async def _on_input_ended(self) -> None:
        self._input_ended = True
        if self.state is State.RINGING:
            await self._stop_ringing("input_ended")
        if self.state is not State.LISTENING:
            return
        endpoint = await self.listener.finish_now()
        if endpoint is None:
            await self.cancel_turn()
            if not self._follow_up:
                self.tracer.emit("turn_end", reason="no_speech")
            self._follow_up = False
            self._set_state(State.IDLE)
        else:
            await self._on_endpoint(endpoint)

    async def _after_turn(self, reason: str) -> None:
        if reason == "error":
            await self._play_earcon(Earcon.ERROR)
        if self._waiting_rings:
            await self._start_ringing()
            return
        follow_up_s = self.config.conversation.follow_up_s
        if reason == "answered" and follow_up_s > 0 and not self._input_ended:
            self.tracer.emit("follow_up_start", window_s=follow_up_s)
            earcon_s = await self._play_earcon(Earcon.FOLLOW_UP)
            await self._listen(self.tracer.clock.now() + earcon_s + ECHO_TAIL_S, follow_up=True)
        else:
            self._set_state(State.IDLE)

    async def _play_earcon(self, earcon: Earcon) -> float:
        """Queue an earcon on the output; returns its length in seconds."""
        sound = self.earcons.sound(earcon)
        if sound is None:
            return 0.0
        self.tracer.emit("earcon", name=earcon.value)
        try:
            self.sink.start(lambda heard_at: None)
            await self.sink.play(sound)
        except VoicebotError as error:
            log.error("cannot play the %s earcon: %s", earcon.value, error)
        return sound.seconds

    # Ringing.

    async def _on_timer_rang(self, rang: Ring) -> None:
        """Ring now if nothing else is going on (a follow-up window counts as nothing); else once the turn ends."""
        self._waiting_rings.append(rang)
        free = self.state is State.IDLE or (self.state is State.LISTENING and self._follow_up)
        if free and self._turn is None and self._ringing is None:
            await self._start_ringing()
        elif self.state is State.LISTENING and self._follow_up:
            await self.cancel_turn()  # An early answer to a follow-up gives way to the ring.
            await self._start_ringing()

    async def _start_ringing(self) -> None:
        rings, self._waiting_rings = self._waiting_rings, []
        ring_id = next(self._ring_ids)
        self._follow_up = False
        self.tracer.emit(
            "ring_start",
            timers=[r.timer.name or r.timer.alarm_at or round(r.timer.duration_s) for r in rings],
            late_s=round(max(r.late_s for r in rings), 3),
        )
        task = asyncio.create_task(self._ring(ring_id, rings), name=f"ring-{ring_id}")
        self._ringing = Ringing(ring_id, rings, task)
        await self._listen_for_stop()
        self._set_state(State.RINGING)

    async def _listen_for_stop(self) -> None:
        """While it rings, "stop" needs no wake word: the endpointer listens with no time-out, and hands over what
        was said at the first short pause, so a one-word "stop" is acted on without waiting out the hangover."""
        await self.listener.begin(self.tracer.clock.now(), math.inf, RING_PAUSE_S)

    async def _ring(self, ring_id: int, rings: list[Ring]) -> None:
        try:
            words = [(each.text, each.timer.language) for each in rings]
            await ring(words, self.alarm_sink, self.config.timers, self.tracer, self._say_over_ring)
        except VoicebotError as error:
            log.error("cannot ring: %s", error)
        self._inbox.post(RingEnded(ring_id))

    async def _say_over_ring(self, text: str, language: str) -> None:
        await self.responder.say(text, language, tracer=self.tracer, sink=self.alarm_sink)

    async def _on_ring_endpoint(self, endpoint: Endpoint) -> None:
        """While ringing: at each pause, hear whether what was said is "stop"; after each utterance, listen on."""
        ringing = self._ringing
        if ringing is None:
            return
        kind = endpoint.kind
        if kind is EndpointKind.RESUME:
            ringing.heard_to_pause = False  # More was said: what follows the pause is heard at the end.
        ended = kind in (EndpointKind.SPEECH_END, EndpointKind.MAX_LENGTH)
        if kind is EndpointKind.PAUSE or (ended and not ringing.heard_to_pause):
            heard = self.listener.candidate if kind is EndpointKind.PAUSE else self.listener.utterance
            if heard is not None and len(heard.audio):
                ringing.heard_to_pause = kind is EndpointKind.PAUSE
                ringing.stop_checks.append(asyncio.create_task(self._check_for_stop(ringing.id, heard.audio)))
        if ended:
            ringing.heard_to_pause = False
            await self._listen_for_stop()

    async def _check_for_stop(self, ring_id: int, audio: np.ndarray) -> None:
        try:
            transcript = await self.engines.asr.transcribe(audio, self.tracer)
        except VoicebotError as error:
            log.warning("could not hear what was said over the ring: %s", error)
            return
        self.tracer.emit("heard_while_ringing", text=transcript.text, language=transcript.language)
        if self._stops_ring(transcript):
            self._inbox.post(StopHeard(ring_id, transcript.text))

    def _stops_ring(self, transcript: Transcript) -> bool:
        if not transcript.text:
            return False
        said = re.sub(r"[^\w\s']+", " ", transcript.text.lower()).strip()
        if is_stop_command(transcript.text) or " ".join(said.split()) in RING_STOP_REPLIES:
            return True
        if RING_STOP_WORDS & set(said.split()) or any(phrase in said for phrase in RING_STOP_PHRASES):
            return True
        if not self.engines.has("intents"):
            return False
        match = self.engines.intents.match(transcript.text, transcript.language)
        return match is not None and match.intent in RING_STOPPING_INTENTS

    async def _stop_ringing(self, reason: str) -> None:
        """Silence the ring at once, then stop its tasks; a timer that ended meanwhile rings next."""
        ringing, self._ringing = self._ringing, None
        if ringing is None:
            return
        stopped_at = self.alarm_sink.stop()
        await cancel_and_wait(ringing.task, *ringing.stop_checks)
        self.tracer.emit("ring_stop", t=stopped_at, reason=reason)
        if self.state is State.RINGING:
            self._set_state(State.IDLE)
        if self._waiting_rings and reason not in ("stopped", "input_ended"):
            await self._start_ringing()

    # Turns.

    def _start_turn(self, audio: np.ndarray, confirmed: bool) -> Turn:
        tracer = HeldTracer(self.tracer, released=confirmed)
        gate = asyncio.Event()
        if confirmed:
            gate.set()
        turn_id = next(self._turn_ids)
        turn = Turn(turn_id, asyncio.Future(), tracer, gate)
        turn.task = asyncio.create_task(self._run_turn(turn, audio), name=f"turn-{turn_id}")
        return turn

    def _on_speaking(self, turn: Turn, heard_at: float) -> None:
        turn.playback_started_at = heard_at
        self._inbox.post(PlaybackStarted(turn.id))

    async def _answer_intent(
        self,
        match: IntentMatch,
        tracer: HeldTracer,
        confirmed: asyncio.Event,
        on_speaking: Callable[[float], None],
    ) -> str:
        """Carry out an intent once its question has surely ended (an early turn may yet be dropped), and say so;
        the `intent` event is traced when it was carried out."""
        await confirmed.wait()
        handled = self.engines.intents.answer(match)
        tracer.emit(
            "intent",
            intent=match.intent,
            slots=match.slots,
            language=match.language,
            match_ms=match.match_ms,
            sentences=match.source,
        )
        log.info("heard: %s / intent %s: %s", match.text, match.intent, handled.text)
        if handled.stop or not handled.text:
            return "stopped"
        await self.responder.say(handled.text, match.language, tracer=tracer, on_speaking=on_speaking)
        return "answered"

    async def _apologise(self, confirmed: asyncio.Event, tracer: HeldTracer) -> None:
        """Say one short sorry when a remote engine failed with nothing local to take over, if speech still works."""
        await confirmed.wait()
        language = self.responder.conversation.language
        tracer.emit("apology", language=language)
        try:
            await self.responder.say(APOLOGIES.get(language, APOLOGIES["en"]), language)
        except VoicebotError as error:
            log.error("cannot say sorry either: %s", error)

    async def _run_turn(self, turn: Turn, audio: np.ndarray) -> None:
        """One turn: transcribe, then answer. It only reports to the supervisor; it never sets the state."""
        reason = "answered"
        tracer, confirmed = turn.tracer, turn.confirmed
        # Typed requests to the local LLM wait from the start of transcription until this answer is heard.
        hold = self.engines.llm.hold_for_voice(VOICE_CONVERSATION) if self.engines.has("llm") else None

        def on_speaking(heard_at: float) -> None:
            if hold is not None:
                hold.release()
            self._on_speaking(turn, heard_at)

        try:
            started = tracer.clock.now()
            transcript = await self.engines.asr.transcribe(audio, tracer)
            asr_s = round(tracer.clock.now() - started, 4)
            tracer.emit("transcript", text=transcript.text, language=transcript.language, asr_s=asr_s)
            if not transcript.text:
                reason = "no_transcript"
                return
            if is_stop_command(transcript.text):
                log.info("heard %r: stopping", transcript.text)
                reason = "stopped"
                return
            if self.engines.has("intents"):
                match = self.engines.intents.match(transcript.text, transcript.language)
                if match is not None:
                    if hold is not None:
                        hold.release()  # The LLM is not needed: typed work may go on.
                    reason = await self._answer_intent(match, tracer, confirmed, on_speaking)
                    return
            reply = await self.responder.respond(
                transcript.text,
                language=transcript.language,
                tracer=tracer,
                may_speak=confirmed,
                on_speaking=on_speaking,
            )
            log.info("heard: %s / replied: %s", transcript.text, reply)
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except RemoteEngineError as error:
            reason = "error"
            log.error("turn failed: %s", error)
            await self._apologise(confirmed, tracer)
        except VoicebotError as error:
            reason = "error"
            log.error("turn failed: %s", error)
        except Exception as error:  # noqa: BLE001 - one bad turn must not stop the assistant
            reason = "error"
            log.error("turn failed: %s: %s", type(error).__name__, error)
            log.debug("turn failure details", exc_info=True)
        finally:
            if hold is not None:
                hold.release()
            if reason != "cancelled":
                await confirmed.wait()  # An early turn ends only once its question has.
            tracer.emit("turn_end", reason=reason)
            self._inbox.post(TurnEnded(turn.id, reason))


async def _once(text: str) -> AsyncIterator[str]:
    yield text
