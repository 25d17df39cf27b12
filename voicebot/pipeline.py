"""The voice loop: microphone → wake word → end of utterance → ASR → LLM → chunker → TTS → speaker.

Stages are asyncio tasks joined by queues; every blocking model call runs on a pinned worker
thread. The reply is spoken piece by piece while the LLM is still writing it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from voicebot.asr import Transcriber
from voicebot.audio import AudioChunk, AudioSink, AudioSource
from voicebot.chunker import SentenceChunker
from voicebot.config import Config
from voicebot.errors import VoicebotError
from voicebot.llm import ChatModel, Conversation
from voicebot.models import ModelPaths
from voicebot.threads import PinnedWorker, iterate_in_worker, resolve_cores
from voicebot.trace import HeldTracer, Tracer
from voicebot.tts import Synthesizer
from voicebot.vad import Endpoint, Endpointer, EndpointKind, SileroVad
from voicebot.wake import WakeDetection, WakeWordDetector

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 3.0


class State(enum.Enum):
    """What the assistant is doing."""

    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass
class Engines:
    """The loaded models and the pinned worker thread each one runs on."""

    config: Config
    listen_worker: PinnedWorker | None = None
    asr_worker: PinnedWorker | None = None
    llm_worker: PinnedWorker | None = None
    tts_worker: PinnedWorker | None = None
    wake: WakeWordDetector | None = None
    endpointer: Endpointer | None = None
    transcriber: Transcriber | None = None
    chat: ChatModel | None = None
    synthesizer: Synthesizer | None = None
    workers: list[PinnedWorker] = field(default_factory=list)

    @classmethod
    def load(
        cls, config: Config, paths: ModelPaths, stages: frozenset[str] = frozenset({"listen", "asr", "llm", "tts"})
    ) -> Engines:
        """Load the models for `stages`, each on its own thread pinned to its configured cores."""
        engines = cls(config)
        try:
            if "tts" in stages:
                engines.tts_worker = engines._worker("tts", resolve_cores(config.tts.cores, "tts"))
                engines.synthesizer = engines.tts_worker.call(
                    Synthesizer, paths.voices, config.tts, len(engines.tts_worker.cores)
                )
            if "llm" in stages:
                engines.llm_worker = engines._worker("llm", resolve_cores(config.llm.cores, "llm"))
                engines.chat = ChatModel(paths.llm, config.llm, engines.llm_worker)
            if "asr" in stages:
                engines.asr_worker = engines._worker("asr", resolve_cores(config.asr.cores, "asr"))
                engines.transcriber = engines.asr_worker.call(
                    Transcriber, paths.asr, config.asr, len(engines.asr_worker.cores)
                )
            if "listen" in stages:
                # The always-on stages share the TTS cores: they are light, and must not slow the LLM.
                engines.listen_worker = engines._worker("listen", resolve_cores(config.tts.cores, "tts"))
                engines.wake = engines.listen_worker.call(WakeWordDetector, config.wake)
                engines.endpointer = engines.listen_worker.call(lambda: Endpointer(config.vad, SileroVad()))
        except BaseException:
            engines.close()
            raise
        return engines

    def _worker(self, name: str, cores: tuple[int, ...]) -> PinnedWorker:
        worker = PinnedWorker(name, cores)
        self.workers.append(worker)
        return worker

    def warm_up(self) -> None:
        """Run each model once, so the first question does not pay for first-call set-up."""
        self.warm_up_llm()
        if self.transcriber is not None and self.asr_worker is not None:
            self.asr_worker.call(self.transcriber.transcribe, np.zeros(16000, np.float32))
        if self.synthesizer is not None and self.tts_worker is not None:
            self.tts_worker.call(lambda: list(self.synthesizer.synthesize("Ready.")))

    def warm_up_llm(self) -> None:
        """Put the system prompt in llama.cpp's prompt cache."""
        if self.chat is not None and self.llm_worker is not None:
            self.llm_worker.call(self.chat.warm_up, self.config.llm.system_prompt)

    def close(self) -> None:
        """Stop the worker threads."""
        for worker in self.workers:
            worker.close()
        self.workers.clear()


class Responder:
    """Question text in, spoken answer out: LLM tokens → chunker → TTS → sink, all overlapping.

    With streaming=False it works as chat-bot pipelines used to: the whole answer is written,
    then all of it synthesised, then played. The benchmark uses that as its baseline.
    """

    def __init__(
        self,
        engines: Engines,
        sink: AudioSink,
        tracer: Tracer,
        on_speaking: Callable[[], None] = lambda: None,
        streaming: bool = True,
    ) -> None:
        self.engines = engines
        self.sink = sink
        self.tracer = tracer
        self.on_speaking = on_speaking
        self.streaming = streaming
        config = engines.config
        self.conversation = Conversation(config.conversation, config.llm.system_prompt)
        self._new_chunker = lambda: SentenceChunker(config.tts.first_piece_chars, config.tts.max_piece_chars)

    async def respond(
        self, question: str, tracer: Tracer | HeldTracer | None = None, may_speak: asyncio.Event | None = None
    ) -> str:
        """Ask the LLM and speak its answer as it is written; returns the answer's text.

        With `may_speak`, everything up to the first sound is done, then playback waits for it.
        """
        tracer = tracer or self.tracer
        chat, llm_worker = self.engines.chat, self.engines.llm_worker
        assert chat is not None and llm_worker is not None
        messages = await llm_worker.run(self.conversation.messages, question, chat)
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        writer = asyncio.create_task(self._write(messages, pieces, tracer))
        try:
            await self._speak(pieces, tracer, may_speak)
            reply = await writer
        finally:
            if not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
        if may_speak is not None:
            await may_speak.wait()  # An early answer joins the conversation only once its question has ended.
        self.conversation.add(question, reply)
        return reply

    async def say(self, text: str) -> None:
        """Speak `text` as it is, piece by piece."""
        chunker = self._new_chunker()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        for piece in chunker.feed(text) + chunker.flush():
            self.tracer.emit("sentence", text=piece)
            pieces.put_nowait(piece)
        pieces.put_nowait(None)
        await self._speak(pieces, self.tracer)

    async def _write(
        self, messages: list[dict[str, str]], pieces: asyncio.Queue[str | None], tracer: Tracer | HeldTracer
    ) -> str:
        chat, llm_worker = self.engines.chat, self.engines.llm_worker
        assert chat is not None and llm_worker is not None
        chunker = self._new_chunker()
        reply: list[str] = []
        held: list[str] = []
        release = pieces.put_nowait if self.streaming else held.append
        try:
            async for token in iterate_in_worker(llm_worker, lambda: chat.stream(messages)):
                if not reply:
                    tracer.emit("llm_first_token")
                reply.append(token)
                for piece in chunker.feed(token):
                    tracer.emit("sentence", text=piece)
                    release(piece)
            for piece in chunker.flush():
                tracer.emit("sentence", text=piece)
                release(piece)
            tracer.emit("llm_done", tokens=len(reply))
            for piece in held:
                pieces.put_nowait(piece)
        finally:
            pieces.put_nowait(None)
        return "".join(reply)

    async def _speak(
        self, pieces: asyncio.Queue[str | None], tracer: Tracer | HeldTracer, may_speak: asyncio.Event | None = None
    ) -> None:
        synthesizer, tts_worker = self.engines.synthesizer, self.engines.tts_worker
        assert synthesizer is not None and tts_worker is not None
        playing = False
        held: list[AudioChunk] = []

        def on_first_sample(heard_at: float) -> None:
            tracer.emit("playback_start", t=heard_at)
            self.on_speaking()

        async def play(audio: AudioChunk) -> None:
            nonlocal playing
            if not playing:
                if may_speak is not None:
                    await may_speak.wait()
                self.sink.start(on_first_sample)
                playing = True
            await self.sink.play(audio)

        first_audio = True
        try:
            while (piece := await pieces.get()) is not None:
                async for audio in iterate_in_worker(tts_worker, lambda: synthesizer.synthesize(piece)):
                    if first_audio:
                        tracer.emit("tts_first_audio")
                        first_audio = False
                    if self.streaming:
                        await play(audio)
                    else:
                        held.append(audio)
            for audio in held:
                await play(audio)
            if playing:
                await self.sink.drain()
                tracer.emit("playback_end")
        except BaseException:
            if playing:
                self.sink.stop()
            raise


@dataclass
class Turn:
    """One question being answered; `confirmed` is set once the question has surely ended."""

    task: asyncio.Task[None]
    tracer: HeldTracer
    confirmed: asyncio.Event

    def confirm(self) -> None:
        """The question has ended: let the turn's events into the trace and its answer be heard."""
        self.tracer.release()
        self.confirmed.set()


class Pipeline:
    """The assistant: hears the source, answers through the sink, one turn at a time.

    Work on the answer starts early, at the first pause in the question (vad.early_start_s), while
    the endpointer waits out its hangover. If the person goes on talking, that early turn is
    cancelled and forgotten; if the pause was the end, its answer is already on its way.
    """

    def __init__(
        self,
        engines: Engines,
        source: AudioSource,
        sink: AudioSink,
        tracer: Tracer,
        streaming: bool = True,
        early_start: bool = True,
    ) -> None:
        self.engines = engines
        self.source = source
        self.tracer = tracer
        self.early_start = early_start
        self.state = State.IDLE
        self.responder = Responder(
            engines, sink, tracer, on_speaking=lambda: self._set_state(State.SPEAKING), streaming=streaming
        )
        self._turn: Turn | None = None

    async def run(self) -> None:
        """Listen until the input ends, then finish the last turn; cancelling stops everything."""
        assert self.engines.listen_worker is not None and self.engines.wake is not None
        await self.engines.listen_worker.run(self.engines.wake.reset)
        try:
            async for chunk in self.source.frames():
                await self._hear(chunk)
            await self._input_ended()
        finally:
            await self.cancel_turn()

    async def cancel_turn(self) -> None:
        """Stop the current turn wherever it is: generation, synthesis and playback."""
        turn, self._turn = self._turn, None
        if turn is None or turn.task.done():
            return
        turn.task.cancel()
        try:
            await asyncio.wait_for(asyncio.gather(turn.task, return_exceptions=True), CANCEL_TIMEOUT_S)
        except TimeoutError:
            log.error("turn did not stop within %.0f s of being cancelled", CANCEL_TIMEOUT_S)

    async def _hear(self, chunk: AudioChunk) -> None:
        worker = self.engines.listen_worker
        assert worker is not None
        listening = self.state is State.LISTENING
        detection, endpoints = await worker.run(self._analyse, chunk, listening)
        if detection is not None:
            await self._on_wake(detection)
        for endpoint in endpoints:
            await self._on_endpoint(endpoint)

    def _analyse(self, chunk: AudioChunk, listening: bool) -> tuple[WakeDetection | None, list[Endpoint]]:
        """Runs on the listen worker: the wake word always, the VAD while a question is awaited."""
        assert self.engines.wake is not None and self.engines.endpointer is not None
        detection = self.engines.wake.process(chunk)
        endpoints = self.engines.endpointer.process(chunk) if listening else []
        return detection, endpoints

    async def _on_wake(self, detection: WakeDetection) -> None:
        if self.state is not State.IDLE:
            # Barge-in will act here; for now a wake word during a turn is noted and ignored.
            log.info("wake word ignored while %s", self.state.value)
            return
        self.tracer.emit("wake", t=detection.heard_at, model=detection.model, score=round(detection.score, 3))
        assert self.engines.listen_worker is not None and self.engines.endpointer is not None
        await self.engines.listen_worker.run(self.engines.endpointer.begin, detection.heard_at)
        self._set_state(State.LISTENING)

    async def _on_endpoint(self, endpoint: Endpoint) -> None:
        endpointer = self.engines.endpointer
        assert endpointer is not None
        kind = endpoint.kind
        if kind is EndpointKind.SPEECH_START:
            self.tracer.emit("speech_start", t=endpoint.at)
        elif kind in (EndpointKind.PAUSE, EndpointKind.RESUME) and not self.early_start:
            pass
        elif kind is EndpointKind.PAUSE:
            assert endpointer.candidate is not None
            await self.cancel_turn()
            self._turn = self._start_turn(endpointer.candidate.audio, confirmed=False)
        elif kind is EndpointKind.RESUME:
            log.debug("speech resumed: dropping the early answer")
            await self.cancel_turn()
        elif kind is EndpointKind.NO_SPEECH:
            log.info("nobody spoke after the wake word")
            self.tracer.emit("turn_end", reason="no_speech")
            self._set_state(State.IDLE)
        else:
            delay = self.tracer.clock.now() - endpoint.at
            self.tracer.emit("speech_end", t=endpoint.at, endpoint_delay_s=round(delay, 4), reason=kind.value)
            self._set_state(State.THINKING)
            if self._turn is not None and not self._turn.confirmed.is_set():
                # Nothing was said since the pause that started this turn, so its question is the final one.
                self._turn.confirm()
            else:
                assert endpointer.utterance is not None
                self._turn = self._start_turn(endpointer.utterance.audio, confirmed=True)

    def _start_turn(self, audio: np.ndarray, confirmed: bool) -> Turn:
        tracer = HeldTracer(self.tracer, released=confirmed)
        gate = asyncio.Event()
        if confirmed:
            gate.set()
        task = asyncio.create_task(self._run_turn(audio, tracer, gate), name="turn")
        return Turn(task, tracer, gate)

    async def _input_ended(self) -> None:
        if self.state is State.LISTENING:
            assert self.engines.listen_worker is not None and self.engines.endpointer is not None
            endpoint = await self.engines.listen_worker.run(self.engines.endpointer.finish_now)
            if endpoint is None:
                await self.cancel_turn()
                self.tracer.emit("turn_end", reason="no_speech")
                self._set_state(State.IDLE)
            else:
                await self._on_endpoint(endpoint)
        if self._turn is not None:
            await asyncio.gather(self._turn.task, return_exceptions=True)

    async def _run_turn(self, audio: np.ndarray, tracer: HeldTracer, confirmed: asyncio.Event) -> None:
        reason = "answered"
        try:
            transcriber, asr_worker = self.engines.transcriber, self.engines.asr_worker
            assert transcriber is not None and asr_worker is not None
            started = tracer.clock.now()
            transcript = await asr_worker.run(transcriber.transcribe, audio)
            asr_s = round(tracer.clock.now() - started, 4)
            tracer.emit("transcript", text=transcript.text, language=transcript.language, asr_s=asr_s)
            if not transcript.text:
                reason = "no_transcript"
                return
            reply = await self.responder.respond(transcript.text, tracer=tracer, may_speak=confirmed)
            log.info("heard: %s / replied: %s", transcript.text, reply)
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except VoicebotError as error:
            reason = "error"
            log.error("turn failed: %s", error)
        except Exception as error:  # noqa: BLE001 - one bad turn must not stop the assistant
            reason = "error"
            log.error("turn failed: %s: %s", type(error).__name__, error)
            log.debug("turn failure details", exc_info=True)
        finally:
            if reason != "cancelled":
                await confirmed.wait()  # An early turn ends only once its question has.
            tracer.emit("turn_end", reason=reason)
            if confirmed.is_set():
                self._set_state(State.IDLE)

    def _set_state(self, state: State) -> None:
        log.info("state: %s -> %s", self.state.value, state.value)
        self.state = state
        self.tracer.emit("state", state=state.value)
