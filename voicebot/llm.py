"""The local LLM: llama-cpp-python with the GGUF's own chat template, streamed, on pinned cores.

One `Llama` object, one owner: every call runs on the same pinned worker thread, because
concurrent calls on one `Llama` crash. Its OpenMP threads inherit that thread's affinity.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from voicebot.config import ConversationConfig, LlmConfig
from voicebot.errors import ModelLoadError, RequestTooLargeError
from voicebot.threads import PinnedWorker

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD_TOKENS = 8  # Role markers and separators the chat template adds to each message.


@dataclass
class Conversation:
    """The system prompt and the recent question-and-answer pairs, trimmed to fit the context."""

    config: ConversationConfig
    system_prompt: str
    turns: list[tuple[str, str]] = field(default_factory=list)
    last_activity: float = field(default_factory=time.monotonic)

    def add(self, question: str, answer: str) -> None:
        """Remember a finished exchange."""
        self.turns.append((question, answer))
        del self.turns[: max(0, len(self.turns) - self.config.history_turns)]
        self.last_activity = time.monotonic()

    def forget_if_stale(self) -> None:
        """Start afresh after a long pause, as a person would."""
        idle_s = time.monotonic() - self.last_activity
        if self.turns and self.config.forget_after_s and idle_s > self.config.forget_after_s:
            log.info("forgetting the conversation after %.0f s of quiet", idle_s)
            self.turns.clear()

    def messages(self, question: str, chat: ChatModel) -> list[dict[str, str]]:
        """Chat messages for `question`, dropping the oldest turns until the reply fits the context."""
        self.forget_if_stale()
        budget = chat.context_tokens - chat.max_reply_tokens
        fixed = chat.count_tokens(self.system_prompt) + chat.count_tokens(question) + 3 * MESSAGE_OVERHEAD_TOKENS
        if fixed > budget:
            raise RequestTooLargeError(
                f"the question is too long for the LLM's context ({fixed} tokens, {budget} available with "
                f"llm.max_reply_tokens={chat.max_reply_tokens}); shorten it or raise llm.context_tokens"
            )
        kept: list[tuple[str, str]] = []
        for asked, answered in reversed(self.turns):
            cost = chat.count_tokens(asked) + chat.count_tokens(answered) + 2 * MESSAGE_OVERHEAD_TOKENS
            if fixed + cost > budget:
                break
            fixed += cost
            kept.insert(0, (asked, answered))
        messages = [{"role": "system", "content": self.system_prompt}]
        for asked, answered in kept:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        messages.append({"role": "user", "content": question})
        return messages


class ChatModel:
    """A GGUF chat model loaded on its own pinned worker; streams reply tokens."""

    def __init__(self, model_path: Path, config: LlmConfig, worker: PinnedWorker) -> None:
        self.config = config
        self.worker = worker
        self.context_tokens = config.context_tokens
        self.max_reply_tokens = config.max_reply_tokens
        self.model_path = model_path
        self._llama = worker.call(self._load)

    def _load(self):
        from llama_cpp import Llama

        threads = len(self.worker.cores)
        try:
            return Llama(
                model_path=str(self.model_path),
                n_ctx=self.config.context_tokens,
                # One thread per pinned core: more OpenMP threads than cores spin against each other.
                n_threads=threads,
                n_threads_batch=threads,
                seed=self.config.seed if self.config.seed is not None else 0xFFFFFFFF,
                verbose=False,
            )
        except Exception as error:
            raise ModelLoadError(
                f"cannot load LLM {self.model_path}: {error}; the file may be truncated, fetch it again"
            ) from None

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer (thread-safe: tokenizing does not touch the context)."""
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def warm_up(self, system_prompt: str) -> None:
        """Evaluate the system prompt once, so the first question reuses it from llama.cpp's prefix cache."""
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": "Hi"}]
        self._llama.create_chat_completion(messages=messages, max_tokens=1)

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        """Yield reply text as it is generated; call on the worker thread and close it to stop early."""
        completion = self._llama.create_chat_completion(
            messages=messages,
            stream=True,
            max_tokens=self.config.max_reply_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=self.config.seed,
        )
        try:
            for chunk in completion:
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    yield text
        finally:
            completion.close()
