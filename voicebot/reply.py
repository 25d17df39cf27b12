"""The reply: question text in, spoken answer out. LLM tokens → chunker → TTS → sink, all overlapping.

The answer is capped in seconds of speech at a sentence boundary, a stalled generation is
abandoned, and only what the person actually heard joins the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from voicebot.audio import AudioChunk, AudioSink
from voicebot.chunker import SentenceChunker
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.llm import (
    ChatModel,
    Compression,
    Conversation,
    Interrupted,
    Message,
    PromptCost,
    Sampling,
    system_prompts,
)
from voicebot.llm_service import Priority
from voicebot.runtime.trace import HeldTracer, Tracer
from voicebot.tts import HAN

log = logging.getLogger(__name__)

# Speaking pace of a Piper medium voice at length_scale 1, measured on this project's voices:
# about 15 characters a second in English, 4.5 Chinese characters a second.
LATIN_CHARS_PER_S = 15.0
HAN_CHARS_PER_S = 4.5
# The LLM service keeps a KV cache per conversation; this is the voice loop's.
VOICE_CONVERSATION = "voice"


class LlmStalledError(VoicebotError):
    """The LLM stopped producing tokens."""


def speech_seconds(text: str, length_scale: float = 1.0) -> float:
    """How long `text` takes to say, estimated from its characters at a Piper voice's pace."""
    han = len(HAN.findall(text))
    return (han / HAN_CHARS_PER_S + (len(text) - han) / LATIN_CHARS_PER_S) * length_scale


@dataclass
class SpeechBudget:
    """How much of one reply may be said: pieces are admitted until `limit_s` of speech; the first always is."""

    limit_s: float
    length_scale: float = 1.0
    spent_s: float = 0.0
    pieces: int = 0
    capped: bool = False

    def admits(self, piece: str) -> bool:
        """Count `piece` in if it fits; once one does not, the reply is capped."""
        seconds = speech_seconds(piece, self.length_scale)
        if self.pieces and self.spent_s + seconds > self.limit_s:
            self.capped = True
            return False
        self.spent_s += seconds
        self.pieces += 1
        return True


@dataclass
class SpokenPieces:
    """The pieces of one reply in order, and how many seconds of audio each became."""

    texts: list[str] = field(default_factory=list)
    audio_s: list[float] = field(default_factory=list)

    def heard(self, heard_s: float) -> str:
        """The words a listener heard in the first `heard_s` seconds of the reply."""
        words: list[str] = []
        elapsed = 0.0
        for text, seconds in zip(self.texts, self.audio_s, strict=False):
            if elapsed + seconds <= heard_s:
                words.append(text)
            elif heard_s > elapsed and seconds > 0:
                part = text.split()
                kept = int(len(part) * (heard_s - elapsed) / seconds)
                if kept:
                    words.append(" ".join(part[:kept]) + "…")
                break
            else:
                break
            elapsed += seconds
        return " ".join(words)


class Responder:
    """Answers questions within one conversation: asks the LLM, speaks the answer as it is written.

    With streaming=False it works as chat-bot pipelines used to: the whole answer is written,
    then all of it synthesised, then played. The benchmark uses that as its baseline. With no
    sink, nothing is spoken: `on_piece` gets each piece of the answer (for `voicebot chat`).
    """

    def __init__(
        self,
        engines: Engines,
        sink: AudioSink | None,
        tracer: Tracer,
        streaming: bool = True,
        on_piece: Callable[[str], None] = lambda piece: None,
    ) -> None:
        self.engines = engines
        self.sink = sink
        self.tracer = tracer
        self.streaming = streaming
        self.on_piece = on_piece
        config = engines.config
        self.config = config
        self.sampling = Sampling.from_config(config.llm)
        self.conversation = Conversation(config.conversation, system_prompts(config.llm))
        self._background: set[asyncio.Task[None]] = set()

    def _speech_budget(self) -> SpeechBudget:
        return SpeechBudget(self.config.conversation.max_reply_s, self.config.tts.length_scale)

    def _new_chunker(self, language: str) -> SentenceChunker:
        return SentenceChunker(self.config.tts.first_piece_chars, self.config.tts.max_piece_chars, language=language)

    async def respond(
        self,
        question: str,
        language: str = "en",
        tracer: Tracer | HeldTracer | None = None,
        may_speak: asyncio.Event | None = None,
        on_speaking: Callable[[float], None] = lambda heard_at: None,
    ) -> str:
        """Ask the LLM and speak its answer as it is written; returns what was said.

        With `may_speak`, everything up to the first sound is done, then playback waits for it.
        """
        tracer = tracer or self.tracer

        def on_prompt(cost: PromptCost) -> None:
            tracer.emit(
                "llm_prompt",
                language=language,
                history_turns=len(self.conversation.exchanges),
                summary=bool(self.conversation.summary),
                prompt_tokens=cost.tokens,
                prompt_tokens_cached=cost.cached,
                prompt_tokens_evaluated=cost.evaluated,
            )

        answer = self._answer(question, language, tracer, on_prompt)
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        spoken = SpokenPieces()
        writer = asyncio.create_task(self._write(answer, pieces, tracer, language))
        try:
            if self.sink is None:
                await self._show(pieces, spoken)
            else:
                await self._speak(pieces, tracer, spoken, language, may_speak, on_speaking)
            reply, capped = await writer
        except asyncio.CancelledError:
            if may_speak is None or may_speak.is_set():
                heard = spoken.heard(self.sink.heard_s) if self.sink is not None else ""
                if heard:
                    self.conversation.add(question, heard)
                log.info("reply cut short; the person heard: %r", heard)
            raise
        finally:
            if not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
        if may_speak is not None:
            await may_speak.wait()  # An early answer joins the conversation only once its question has ended.
        # The whole reply as written keeps llama.cpp's KV cache valid; a capped one is what was said.
        said = " ".join(spoken.texts) if capped else reply
        self.conversation.add(question, said)
        self.compress_in_background(tracer)
        return said

    def _answer(
        self, question: str, language: str, tracer: Tracer | HeldTracer, on_prompt: Callable[[PromptCost], None]
    ) -> AsyncIterator[str]:
        """The answer's text as it is written, by whichever LLM the service asks."""
        llm_config = self.config.llm

        def remote_messages(chat: ChatModel | None) -> list[Message]:
            budget = llm_config.context_tokens - llm_config.max_reply_tokens
            messages = self.conversation.remote_messages(question, language, chat, budget)
            tracer.emit("llm_prompt", language=language, backend="openai", history_turns=len(messages) // 2 - 1)
            return messages

        def prepare(chat: ChatModel) -> list[int]:
            # Built on the worker when the model turns to it: after any compression has finished or given way.
            return self.conversation.prompt(question, language, chat)

        return self.engines.llm.answer(
            VOICE_CONVERSATION, prepare, remote_messages, self.sampling, Priority.VOICE, on_prompt, tracer
        )

    def compress_in_background(self, tracer: Tracer | HeldTracer | None = None) -> None:
        """Compress old turns, if due, on the LLM worker now, while the person listens, not when they next ask.

        Anything asked of the LLM meanwhile interrupts it, and it runs again after the next reply; unless
        the history is so near the budget that it must be compressed before the next question.
        """
        compressed = self.engines.llm.compress(VOICE_CONVERSATION, self.conversation, self.sampling, Priority.VOICE)
        task = asyncio.create_task(self._report_compression(compressed, tracer or self.tracer), name="compress")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report_compression(self, compressed: asyncio.Future[Compression | None], tracer: Tracer | HeldTracer):
        started = time.monotonic()
        try:
            done = await compressed
        except Interrupted as interruption:
            tracer.emit("history_compression_interrupted", after_s=round(time.monotonic() - started, 3))
            log.info("history compression gave way: %s", interruption)
            return
        except VoicebotError as error:
            log.warning("history compression failed, the history stays as it was: %s", error)
            return
        if done is not None:
            tracer.emit(
                "history_compressed",
                method=done.method,
                turns=done.turns,
                tokens_before=done.tokens_before,
                tokens_after=done.tokens_after,
                tokens_evaluated=done.tokens_evaluated,
            )

    async def settled(self) -> None:
        """Wait for background work on the conversation (compression) to end."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def close(self) -> None:
        """Stop background work on the conversation and wait for it."""
        for task in self._background:
            task.cancel()
        await self.settled()

    async def say(
        self,
        text: str,
        language: str = "en",
        tracer: Tracer | HeldTracer | None = None,
        may_speak: asyncio.Event | None = None,
        on_speaking: Callable[[float], None] = lambda heard_at: None,
        sink: AudioSink | None = None,
    ) -> None:
        """Speak `text` as it is, piece by piece, within the same length cap as answers; with `may_speak`, the
        first sound waits for it; `sink` overrides the responder's (a timer's ring speaks through its own)."""

        async def whole() -> AsyncIterator[str]:
            yield text

        await self.say_stream(whole(), language, on_speaking, tracer, may_speak, sink)

    async def say_stream(
        self,
        text: AsyncIterator[str],
        language: str = "en",
        on_speaking: Callable[[float], None] = lambda heard_at: None,
        tracer: Tracer | HeldTracer | None = None,
        may_speak: asyncio.Event | None = None,
        sink: AudioSink | None = None,
    ) -> None:
        """Speak text as it arrives (an answer being written elsewhere), within the same length cap as answers."""
        tracer = tracer or self.tracer
        chunker = self._new_chunker(language)
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        budget = self._speech_budget()

        def admit(piece: str) -> bool:
            if not budget.admits(piece):
                limit_s, said = budget.limit_s, budget.pieces
                log.warning("text capped at %.0f s of speech (conversation.max_reply_s), %d pieces", limit_s, said)
                tracer.emit("reply_capped", max_reply_s=budget.limit_s, pieces=budget.pieces)
                return False
            tracer.emit("sentence", text=piece)
            pieces.put_nowait(piece)
            return True

        async def feed() -> None:
            try:
                async for part in text:
                    if not all(admit(piece) for piece in chunker.feed(part)):
                        return
                all(admit(piece) for piece in chunker.flush())
            finally:
                pieces.put_nowait(None)

        feeder = asyncio.create_task(feed())
        try:
            await self._speak(pieces, tracer, SpokenPieces(), language, may_speak, on_speaking, sink)
            await feeder
        finally:
            if not feeder.done():
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)

    async def _write(
        self, answer: AsyncIterator[str], pieces: asyncio.Queue[str | None], tracer: Tracer | HeldTracer, language: str
    ) -> tuple[str, bool]:
        """Take the answer as it is generated, cut it into pieces and release them; returns (reply text,
        whether it was capped)."""
        chunker = self._new_chunker(language)
        reply: list[str] = []
        held: list[str] = []
        release = pieces.put_nowait if self.streaming else held.append
        budget = self._speech_budget()

        def admit(piece: str) -> bool:
            if not budget.admits(piece):
                tracer.emit("reply_capped", max_reply_s=budget.limit_s, spoken_s=round(budget.spent_s, 2))
                return False
            tracer.emit("sentence", text=piece)
            release(piece)
            return True

        stall_s = self.config.llm.stall_timeout_s
        try:
            async with contextlib.aclosing(answer):
                while not budget.capped:
                    try:
                        async with asyncio.timeout(stall_s):
                            token = await anext(answer)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise LlmStalledError(
                            f"the LLM produced no token for {stall_s:.0f} s (llm.stall_timeout_s); reply abandoned"
                        ) from None
                    if not reply:
                        tracer.emit("llm_first_token")
                    reply.append(token)
                    for piece in chunker.feed(token):
                        if not admit(piece):
                            break
            if not budget.capped:
                for piece in chunker.flush():
                    if not admit(piece):
                        break
            tracer.emit("llm_done", tokens=len(reply), capped=budget.capped)
            for piece in held:
                pieces.put_nowait(piece)
        finally:
            pieces.put_nowait(None)
        return "".join(reply), budget.capped

    async def _show(self, pieces: asyncio.Queue[str | None], spoken: SpokenPieces) -> None:
        while (piece := await pieces.get()) is not None:
            spoken.texts.append(piece)
            spoken.audio_s.append(speech_seconds(piece))
            self.on_piece(piece)

    async def _speak(
        self,
        pieces: asyncio.Queue[str | None],
        tracer: Tracer | HeldTracer,
        spoken: SpokenPieces,
        language: str,
        may_speak: asyncio.Event | None = None,
        on_speaking: Callable[[float], None] = lambda heard_at: None,
        sink: AudioSink | None = None,
    ) -> None:
        sink = sink or self.sink
        assert sink is not None
        playing = False
        held: list[AudioChunk] = []

        def on_first_sample(heard_at: float) -> None:
            tracer.emit("playback_start", t=heard_at)
            on_speaking(heard_at)

        async def play(audio: AudioChunk) -> None:
            nonlocal playing
            if not playing:
                if may_speak is not None:
                    await may_speak.wait()
                sink.start(on_first_sample)
                playing = True
            await sink.play(audio)

        first_audio = True
        try:
            while (piece := await pieces.get()) is not None:
                spoken.texts.append(piece)
                spoken.audio_s.append(0.0)
                self.on_piece(piece)
                async for audio in self.engines.tts.synthesize(piece, language, tracer):
                    if first_audio:
                        tracer.emit("tts_first_audio")
                        first_audio = False
                    spoken.audio_s[-1] += audio.seconds
                    if self.streaming:
                        await play(audio)
                    else:
                        held.append(audio)
            for audio in held:
                await play(audio)
            if playing:
                await sink.drain()
                tracer.emit("playback_end")
        except BaseException:
            if playing:
                sink.stop()
            raise
