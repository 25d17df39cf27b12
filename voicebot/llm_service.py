"""The one LLM, shared: a scheduler that runs one generation at a time on the LLM's pinned worker.

Voice turns go before typed requests; a typed request that is generating gives way at its next token
when a voice turn arrives, and resumes afterwards where it stopped. Each conversation keeps its own KV
cache: when the model turns to another conversation, the one it leaves is saved (llama.cpp's state, a
few MB) in a small LRU, and put back when that conversation speaks again, so switching between the
voice conversation and a web chat evaluates neither history again.
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
from typing import AsyncIterator, Callable

from voicebot.errors import VoicebotError
from voicebot.llm import ChatModel, Interrupted, KvState, PromptCost, Sampling
from voicebot.threads import PinnedWorker

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """Lower runs first."""

    VOICE = 0
    TYPED = 1


class LlmBusyError(VoicebotError):
    """Too many typed requests are waiting for the LLM; try again shortly."""


@dataclass(eq=False)
class _Job:
    conversation: str
    prepare: Callable[[ChatModel], list[int]]
    sampling: Sampling
    priority: Priority
    order: int
    on_prompt: Callable[[PromptCost], None]
    loop: asyncio.AbstractEventLoop
    pieces: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    preempt: threading.Event = field(default_factory=threading.Event)
    prompt: list[int] | None = None
    written: str = ""
    pieces_written: int = 0
    preemptions: int = 0

    def sort_key(self) -> tuple[int, int]:
        return (self.priority, self.order)

    def deliver(self, item: str | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)


class LlmService:
    """Owns the chat model's use: queue, priorities, pre-emption, and a KV cache per conversation."""

    def __init__(self, chat: ChatModel, worker: PinnedWorker, kv_slots: int = 4, max_waiting: int = 8) -> None:
        self.chat = chat
        self.worker = worker
        self.kv_slots = kv_slots
        self.max_waiting = max_waiting
        self._waiting: list[tuple[tuple[int, int], _Job]] = []
        self._running: _Job | None = None
        self._orders = itertools.count()
        self._arrived = asyncio.Event()
        self._saved: collections.OrderedDict[str, KvState] = collections.OrderedDict()
        self._cache_owner: str | None = None  # worker only
        self._scheduler: asyncio.Task[None] | None = None
        self.kv_restores = 0
        self.kv_saves = 0

    @property
    def queue_length(self) -> int:
        """Generations waiting, not counting the one running."""
        return sum(1 for _, job in self._waiting if not job.cancelled.is_set())

    async def generate(
        self,
        conversation: str,
        prepare: Callable[[ChatModel], list[int]],
        sampling: Sampling,
        priority: Priority = Priority.TYPED,
        on_prompt: Callable[[PromptCost], None] = lambda cost: None,
    ) -> AsyncIterator[str]:
        """Yield the reply's text as it is written. `prepare` builds the prompt's tokens on the worker, right
        before generating (so it sees the conversation's own KV cache); `on_prompt` hears what it cost.

        Leaving the loop early (a client gone, a turn cancelled) stops the generation at its next token.
        """
        if priority is Priority.TYPED and self._typed_waiting() >= self.max_waiting:
            raise LlmBusyError(f"{self.max_waiting} requests are already waiting for the LLM; try again shortly")
        self._ensure_scheduler()
        job = _Job(conversation, prepare, sampling, priority, next(self._orders), on_prompt, asyncio.get_running_loop())
        heapq.heappush(self._waiting, (job.sort_key(), job))
        running = self._running
        if running is not None and job.priority < running.priority:
            running.preempt.set()
        self._arrived.set()
        try:
            while True:
                item = await job.pieces.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()

    def _typed_waiting(self) -> int:
        return sum(1 for _, job in self._waiting if job.priority is Priority.TYPED and not job.cancelled.is_set())

    def _ensure_scheduler(self) -> None:
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = asyncio.create_task(self._schedule(), name="llm-scheduler")

    async def _schedule(self) -> None:
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            _, job = heapq.heappop(self._waiting)
            if job.cancelled.is_set():
                continue
            self._running = job
            try:
                outcome = await self.worker.run(self._run, job)
            finally:
                self._running = None
            if outcome == "preempted":
                log.info(
                    "a typed request gave way to a voice turn after %d pieces; it resumes next", job.pieces_written
                )
                heapq.heappush(self._waiting, (job.sort_key(), job))

    async def close(self) -> None:
        """Stop scheduling; a generation still running ends at its next token."""
        for _, job in self._waiting:
            job.cancelled.set()
            job.deliver(VoicebotError("the LLM service stopped"))
        if self._running is not None:
            self._running.cancelled.set()
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)

    # On the worker.

    def _run(self, job: _Job) -> str:
        try:
            self._switch_to(job.conversation)
            if job.prompt is None:
                job.prompt = job.prepare(self.chat)
            # Resuming after pre-emption: the prompt and what was already written, most of it still cached.
            tokens = job.prompt + (self.chat.tokens_of(job.written) if job.written else [])
            cost = self.chat.prompt_cost(tokens)
            if not job.written:
                job.on_prompt(cost)
            left = job.sampling.max_tokens - job.pieces_written
            if left <= 0:
                job.deliver(None)
                return "done"
            sampling = dataclasses.replace(job.sampling, max_tokens=left)

            def should_stop() -> bool:
                return job.cancelled.is_set() or job.preempt.is_set()

            for piece in self.chat.stream(tokens, sampling, should_stop):
                job.written += piece
                job.pieces_written += 1
                job.deliver(piece)
        except Interrupted:
            if job.cancelled.is_set():
                job.deliver(None)
                return "cancelled"
            job.preempt.clear()
            job.preemptions += 1
            return "preempted"
        except VoicebotError as error:
            job.deliver(error)
            return "failed"
        except Exception as error:  # noqa: BLE001 - one failed request must not stop the service
            log.error("generation failed: %s: %s", type(error).__name__, error)
            job.deliver(VoicebotError(f"the LLM failed: {type(error).__name__}: {error}"))
            return "failed"
        job.deliver(None)
        return "done"

    def _switch_to(self, conversation: str) -> None:
        """Keep the KV cache of the conversation the model leaves; bring back the one it turns to."""
        if self._cache_owner == conversation:
            return
        if self._cache_owner is not None:
            self._saved[self._cache_owner] = self.chat.save_state()
            self._saved.move_to_end(self._cache_owner)
            self.kv_saves += 1
            while len(self._saved) > self.kv_slots:
                dropped, _ = self._saved.popitem(last=False)
                log.debug("dropped the saved KV cache of conversation %s", dropped)
        saved = self._saved.pop(conversation, None)
        if saved is not None:
            self.chat.load_state(saved)
            self.kv_restores += 1
        self._cache_owner = conversation
