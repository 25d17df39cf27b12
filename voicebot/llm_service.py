"""The one LLM, shared: a scheduler that runs one job at a time on the LLM's pinned worker.

It is the stage's one owner, as AsrService and TtsService are theirs: with llm.backend: openai it
also holds the remote LLM, asks it first, and hands an answer it cannot finish to the local model,
which goes on from what the remote one had written.

Voice turns go before typed requests, and both before background work (compressing a history). A
typed request that is generating gives way at its next token when a voice turn arrives, and resumes
afterwards where it stopped; background work gives way to anything. Each conversation keeps its own
KV cache: when the model turns to another conversation, the one it leaves is saved (llama.cpp's
state, a few MB) in a small LRU, and put back when that conversation speaks again, so switching
between the voice conversation and a web chat evaluates neither history again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import heapq
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Protocol, TypeVar

from voicebot.errors import RemoteEngineError, VoicebotError
from voicebot.llm import (
    ChatModel,
    Compression,
    Conversation,
    Interrupted,
    KvState,
    Message,
    PromptCost,
    Sampling,
    StopCheck,
)
from voicebot.runtime.threads import PinnedWorker
from voicebot.runtime.trace import Trace

log = logging.getLogger(__name__)

T = TypeVar("T")


class Priority(enum.IntEnum):
    """Lower runs first, and pre-empts a higher one that is running."""

    VOICE = 0
    TYPED = 1
    BACKGROUND = 2


class LlmBusyError(VoicebotError):
    """Too many typed requests are waiting for the LLM; try again shortly."""


class LlmStoppedError(VoicebotError):
    """The LLM service was shut down."""


class NoLocalLlmError(VoicebotError):
    """Something needs the local model, and only a remote LLM is configured."""


class RemoteLlm(Protocol):
    """An LLM on another machine; raises RemoteEngineError when it cannot be reached, fails or stalls."""

    url: str

    def stream(self, messages: list[Message], sampling: Sampling) -> AsyncIterator[str]:
        """The answer's text as it is written."""
        ...


@dataclass(frozen=True)
class Finished:
    """How a generation ended: "stop" (the model ended it), "length" (max_tokens) or "cancelled"."""

    reason: str
    completion_tokens: int


@dataclass(eq=False)
class _Job:
    """One piece of work for the model, in one conversation's KV cache."""

    conversation: str
    priority: Priority
    order: int
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event = field(default_factory=threading.Event)
    preempt: threading.Event = field(default_factory=threading.Event)

    def sort_key(self) -> tuple[int, int]:
        return (self.priority, self.order)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.preempt.is_set()

    def call_on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            self.cancelled.set()  # The event loop has closed: nobody is waiting any more.

    def run(self, chat: ChatModel) -> str:
        """On the worker: do the work; returns "done", "preempted", "cancelled" or "failed"."""
        raise NotImplementedError

    def abandon(self, error: BaseException) -> None:
        """Tell whoever waits that the job will not run."""
        raise NotImplementedError


@dataclass(eq=False)
class _Generation(_Job):
    prepare: Callable[[ChatModel], list[int]] = lambda chat: []
    sampling: Sampling = Sampling(max_tokens=0)
    pieces: asyncio.Queue = field(default_factory=asyncio.Queue)
    prompt: list[int] | None = None
    written: str = ""
    preemptions: int = 0

    def deliver(self, item: str | PromptCost | Finished | BaseException) -> None:
        self.call_on_loop(self.pieces.put_nowait, item)

    def abandon(self, error: BaseException) -> None:
        self.deliver(error)

    def run(self, chat: ChatModel) -> str:
        try:
            if self.prompt is None:
                self.prompt = self.prepare(chat)
                self.deliver(chat.prompt_cost(self.prompt))
            # Resuming after pre-emption: the prompt and what was already written, most of it still cached.
            written_tokens = len(chat.tokens_of(self.written)) if self.written else 0
            tokens = self.prompt + (chat.tokens_of(self.written) if self.written else [])
            left = self.sampling.max_tokens - written_tokens
            if left <= 0:
                self.deliver(Finished("length", written_tokens))
                return "done"
            stream = chat.stream(tokens, dataclasses.replace(self.sampling, max_tokens=left), self.should_stop)
            while True:
                try:
                    piece = next(stream)
                except StopIteration as end:
                    reason = end.value
                    break
                self.written += piece
                self.deliver(piece)
        except Interrupted:
            if self.cancelled.is_set():
                self.deliver(Finished("cancelled", 0))
                return "cancelled"
            self.preempt.clear()
            self.preemptions += 1
            return "preempted"
        except VoicebotError as error:
            self.deliver(error)
            return "failed"
        except Exception as error:  # noqa: BLE001 - one failed request must not stop the service
            log.error("generation failed: %s: %s", type(error).__name__, error)
            self.deliver(VoicebotError(f"the LLM failed: {type(error).__name__}: {error}"))
            return "failed"
        self.deliver(Finished(reason, len(chat.tokens_of(self.written))))
        return "done"


@dataclass(eq=False)
class _Work(_Job):
    work: Callable[[ChatModel, StopCheck], Any] = lambda chat, should_stop: None
    result: asyncio.Future | None = None

    def _settle(self, error: BaseException | None, value: Any = None) -> None:
        assert self.result is not None
        if self.result.done():
            return
        if error is not None:
            self.result.set_exception(error)
        else:
            self.result.set_result(value)

    def abandon(self, error: BaseException) -> None:
        self.call_on_loop(self._settle, error)

    def run(self, chat: ChatModel) -> str:
        try:
            value = self.work(chat, self.should_stop)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting coroutine, which re-raises it
            self.call_on_loop(self._settle, error)
            return "failed"
        self.call_on_loop(self._settle, None, value)
        return "done"


class Generation:
    """A reply being written: iterate it for text; `prompt_cost` and `finished` are set as it goes.

    Close it (or leave an `async with`) to stop the generation at its next token.
    """

    def __init__(self, job: _Generation, on_prompt: Callable[[PromptCost], None]) -> None:
        self._job = job
        self._on_prompt = on_prompt
        self.prompt_cost: PromptCost | None = None
        self.finished: Finished | None = None

    @property
    def preemptions(self) -> int:
        """How often a voice turn made it give way."""
        return self._job.preemptions

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str:
        while self.finished is None:
            item = await self._job.pieces.get()
            if isinstance(item, str):
                return item
            if isinstance(item, PromptCost):
                self.prompt_cost = item
                self._on_prompt(item)
            elif isinstance(item, Finished):
                self.finished = item
            else:
                self._job.cancelled.set()
                raise item
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop generating (at the next token if it is running; at once if it is waiting)."""
        self._job.cancelled.set()

    def __del__(self) -> None:
        self._job.cancelled.set()  # Dropped without being closed: nobody will read what it writes.

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class VoiceHold:
    """Typed and background work held back for a voice turn; release() once, early or late, ends it."""

    def __init__(self, end: Callable[[], None]) -> None:
        self._end: Callable[[], None] | None = end

    def release(self) -> None:
        """Let typed and background work run again (again does nothing)."""
        if self._end is not None:
            end, self._end = self._end, None
            end()

    def __enter__(self) -> VoiceHold:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class LlmService:
    """Owns the chat model's use: queue, priorities, pre-emption, and a KV cache per conversation."""

    def __init__(
        self,
        chat: ChatModel | None,
        worker: PinnedWorker | None,
        kv_slots: int = 4,
        max_waiting: int = 8,
        remote: RemoteLlm | None = None,
    ) -> None:
        if (chat is None) != (worker is None) or (chat is None and remote is None):
            raise ValueError("an LlmService needs a local model with its worker, a remote LLM, or both")
        self._chat = chat
        self._worker = worker
        self._remote = remote
        self.kv_slots = kv_slots
        self.max_waiting = max_waiting
        self._waiting: list[tuple[tuple[int, int], _Job]] = []
        self._running: _Job | None = None
        self._orders = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._saved: collections.OrderedDict[str, KvState] = collections.OrderedDict()
        self._cache_owner: str | None = None  # worker only
        self._voice_holds = 0
        self._switch_wanted: str | None = None
        self.kv_restores = 0
        self.kv_saves = 0

    @property
    def has_local(self) -> bool:
        """Whether the local model is loaded (as the LLM, or as a remote LLM's fallback)."""
        return self._chat is not None

    @property
    def chat(self) -> ChatModel:
        """The local model, for its tokenizer and template; NoLocalLlmError if only a remote LLM is configured."""
        return self._local()[0]

    @property
    def worker(self) -> PinnedWorker:
        """The local model's pinned worker; NoLocalLlmError if only a remote LLM is configured."""
        return self._local()[1]

    def _local(self) -> tuple[ChatModel, PinnedWorker]:
        if self._chat is None or self._worker is None:
            raise NoLocalLlmError(
                "this needs the local LLM, and llm.backend is openai with llm.fallback off; turn llm.fallback on"
            )
        return self._chat, self._worker

    @property
    def answers_remotely(self) -> bool:
        """Whether answers are asked of a remote LLM first."""
        return self._remote is not None

    @property
    def queue_length(self) -> int:
        """Jobs waiting, not counting the one running."""
        return sum(1 for _, job in self._waiting if not job.cancelled.is_set())

    @property
    def running(self) -> Priority | None:
        """The priority of the job the model is working on now, if any."""
        return self._running.priority if self._running is not None else None

    def generate(
        self,
        conversation: str,
        prepare: Callable[[ChatModel], list[int]],
        sampling: Sampling,
        priority: Priority = Priority.TYPED,
        on_prompt: Callable[[PromptCost], None] = lambda cost: None,
    ) -> Generation:
        """Queue a reply and return it to iterate. `prepare` builds the prompt's tokens on the worker, right
        before generating (so it sees the conversation's own KV cache); `on_prompt` hears what it cost.

        Raises LlmBusyError at once when too many typed requests are waiting.
        """
        self._local()  # NoLocalLlmError, in one line, before anything is queued
        if priority is Priority.TYPED and self._typed_waiting() >= self.max_waiting:
            raise LlmBusyError(f"{self.max_waiting} requests are already waiting for the LLM; try again shortly")
        loop = self._ensure_scheduler()
        job = _Generation(conversation, priority, next(self._orders), loop, prepare=prepare, sampling=sampling)
        self._enqueue(job)
        return Generation(job, on_prompt)

    def submit(
        self,
        conversation: str,
        work: Callable[[ChatModel, StopCheck], T],
        priority: Priority = Priority.BACKGROUND,
    ) -> asyncio.Future[T]:
        """Queue work(chat, should_stop), to run on the worker in `conversation`'s KV cache; await the result.

        `should_stop()` turns true when something more urgent arrives or the future is cancelled; the work
        should then raise Interrupted, leaving things as they were.
        """
        self._local()  # NoLocalLlmError, in one line, before anything is queued
        loop = self._ensure_scheduler()
        job = _Work(conversation, priority, next(self._orders), loop, work=work, result=loop.create_future())
        assert job.result is not None
        job.result.add_done_callback(lambda result: job.cancelled.set())
        self._enqueue(job)
        return job.result

    def hold_for_voice(self, conversation: str) -> VoiceHold:
        """From now until the hold is released, only voice jobs start, and a typed or background job that
        is running gives way at its next token: while a voice question is transcribed and its answer's
        first sentence written and synthesised, the cores (and Python's GIL) are the voice turn's.

        Meanwhile the model turns to `conversation`'s KV cache, so the voice job does not wait for that.
        With no local model there is nothing to hold.
        """
        if self._chat is None:
            return VoiceHold(lambda: None)
        self._voice_holds += 1
        self._switch_wanted = conversation
        running = self._running
        if running is not None and running.priority > Priority.VOICE:
            running.preempt.set()
        if self._arrived is not None:
            self._arrived.set()
        return VoiceHold(self._end_voice_hold)

    def _end_voice_hold(self) -> None:
        self._voice_holds -= 1
        if self._arrived is not None:
            self._arrived.set()

    def _may_start_next(self) -> bool:
        if not self._waiting:
            return False
        return not self._voice_holds or self._waiting[0][1].priority is Priority.VOICE

    async def answer(
        self,
        conversation: str,
        prepare: Callable[[ChatModel], list[int]],
        remote_messages: Callable[[ChatModel | None], list[Message]],
        sampling: Sampling,
        priority: Priority = Priority.VOICE,
        on_prompt: Callable[[PromptCost], None] = lambda cost: None,
        trace: Trace | None = None,
    ) -> AsyncIterator[str]:
        """The answer's text as it is written: by the remote LLM if there is one, else (or when it fails, from
        where it stopped) by the local one. `remote_messages(local model or None)` builds the remote request;
        `prepare` the local prompt, on the worker. RemoteEngineError only when the remote LLM failed and no
        local model is loaded to take over."""
        written = ""
        if self._remote is not None:
            try:
                async for piece in self._remote.stream(remote_messages(self._chat), sampling):
                    written += piece
                    yield piece
                return
            except RemoteEngineError as error:
                if self._chat is None:
                    raise
                log.warning("%s; the local LLM answers instead", error)
                if trace is not None:
                    trace.emit("engine_fallback", stage="llm", error=str(error), chars_written=len(written))

        def resume(chat: ChatModel) -> list[int]:
            # After a remote LLM failed mid-answer, the local one goes on from what it had written.
            prompt = prepare(chat)
            return prompt + chat.tokens_of(written) if written else prompt

        generation = self.generate(conversation, resume, sampling, priority, on_prompt)
        async with generation:
            async for piece in generation:
                yield piece

    def warm_up(self, system_prompt: str) -> None:
        """Put the system prompt in llama.cpp's prompt cache; blocking, and nothing to do with no local model."""
        if self._chat is not None and self._worker is not None:
            self._worker.call(self._chat.warm_up, system_prompt)

    def compress(
        self, conversation: str, history: Conversation, sampling: Sampling, urgent: Priority
    ) -> asyncio.Future[Compression | None]:
        """Queue compressing `history`'s old turns, if due, in `conversation`'s KV cache: as background work
        that anything pre-empts, or at `urgent` priority when the history is so near the budget that it must
        be compressed before its next question.

        A remote LLM's history is kept within its budget by dropping the oldest turns: nothing to do then.
        """
        if self._remote is not None or self._chat is None:
            done: asyncio.Future[Compression | None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        priority = urgent if history.must_compress(self._chat) else Priority.BACKGROUND
        return self.submit(
            conversation, lambda chat, should_stop: history.compress(chat, sampling, should_stop), priority
        )

    def _enqueue(self, job: _Job) -> None:
        heapq.heappush(self._waiting, (job.sort_key(), job))
        running = self._running
        if running is not None and job.priority < running.priority:
            running.preempt.set()
        assert self._arrived is not None
        self._arrived.set()

    def _typed_waiting(self) -> int:
        return sum(1 for _, job in self._waiting if job.priority is Priority.TYPED and not job.cancelled.is_set())

    def _ensure_scheduler(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._scheduler is None or self._scheduler.done():
            # A new event loop (or the first): jobs of a loop that has ended have nobody waiting for them.
            self._waiting = [(key, job) for key, job in self._waiting if job.loop is loop]
            heapq.heapify(self._waiting)
            self._loop, self._arrived = loop, asyncio.Event()
            self._scheduler = loop.create_task(self._schedule(), name="llm-scheduler")
        return loop

    async def _schedule(self) -> None:
        assert self._arrived is not None
        while True:
            while not self._may_start_next():
                if self._voice_holds and self._switch_wanted is not None:
                    conversation, self._switch_wanted = self._switch_wanted, None
                    await self.worker.run(self._switch_to_quietly, conversation)
                    continue
                self._arrived.clear()
                await self._arrived.wait()
            _, job = heapq.heappop(self._waiting)
            if job.cancelled.is_set():
                job.abandon(Interrupted("cancelled before it ran"))
                continue
            self._running = job
            try:
                outcome = await self.worker.run(self._run, job)
            except asyncio.CancelledError:
                job.cancelled.set()
                raise
            finally:
                self._running = None
            if outcome == "preempted":
                log.info("a typed request gave way to a voice turn; it resumes after it")
                heapq.heappush(self._waiting, (job.sort_key(), job))

    async def close(self) -> None:
        """Stop scheduling; a job still running ends at its next check."""
        for _, job in self._waiting:
            job.cancelled.set()
            job.abandon(LlmStoppedError("the LLM service stopped"))
        self._waiting.clear()
        if self._running is not None:
            self._running.cancelled.set()
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)

    # On the worker.

    def _run(self, job: _Job) -> str:
        try:
            self._switch_to(job.conversation)
        except VoicebotError as error:
            job.abandon(error)
            return "failed"
        return job.run(self.chat)

    def _switch_to_quietly(self, conversation: str) -> None:
        try:
            self._switch_to(conversation)
        except VoicebotError as error:
            log.warning("could not turn to the voice conversation's KV cache ahead of its turn: %s", error)

    def _switch_to(self, conversation: str) -> None:
        """Keep the KV cache of the conversation the model leaves; bring back the one it turns to."""
        if self._cache_owner == conversation:
            return
        if self._cache_owner is not None and self.kv_slots > 0:
            self._saved[self._cache_owner] = self.chat.save_state()
            self._saved.move_to_end(self._cache_owner)
            self.kv_saves += 1
            while len(self._saved) > self.kv_slots:
                dropped, _ = self._saved.popitem(last=False)
                log.debug("dropped the saved KV cache of conversation %s", dropped)
        self._cache_owner = conversation
        saved = self._saved.pop(conversation, None)
        if saved is not None:
            self.chat.load_state(saved)
            self.kv_restores += 1
