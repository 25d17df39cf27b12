"""The local LLM: llama-cpp-python with the GGUF's own chat template, streamed, on pinned cores.

One `Llama` object, one owner: every call runs on the same pinned worker thread, because
concurrent calls on one `Llama` crash. Its OpenMP threads inherit that thread's affinity.

The conversation is kept so that llama.cpp's KV cache stays valid from turn to turn: history
only grows at the end, and when it outgrows its budget the oldest turns are compressed in one
block (summarised or dropped), after the reply, and the new prefix is evaluated at once. So most
turns evaluate only the new question.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator

from voicebot.config import ConversationConfig, LlmConfig
from voicebot.errors import ModelLoadError, RequestTooLargeError, VoicebotError
from voicebot.runtime.threads import PinnedWorker

log = logging.getLogger(__name__)

Message = dict[str, str]

# History is compressed once it fills this share of the prompt budget, down to the lower share,
# so that several turns in a row then only append to a prompt the KV cache already holds.
COMPRESS_ABOVE = 0.75
COMPRESS_TO = 0.4
# Above this share a compression no longer gives way to a question: the next prompt would soon have
# to drop turns one at a time, and each drop makes llama.cpp evaluate the whole prompt again.
COMPRESS_REGARDLESS_ABOVE = 0.9
# A conservative estimate for a remote model's tokenizer when no local one is loaded: English BPE runs
# about 4 characters a token, Chinese about 1.5; 2.5 keeps mixed text within the budget.
CHARS_PER_TOKEN = 2.5
SUMMARY_MAX_TOKENS = 60
# Prefill that may be interrupted is evaluated in blocks this long: small enough to stop within a
# fraction of a second on a Pi, large enough to keep batched evaluation efficient.
PREFILL_BLOCK_TOKENS = 64

StopCheck = Callable[[], bool]


def never() -> bool:
    return False


class Interrupted(VoicebotError):
    """LLM work gave way to something more urgent; whatever it was changing is as it was before."""


@dataclass(frozen=True)
class KvState:
    """A snapshot of the KV cache: the tokens it holds and llama.cpp's state for them."""

    tokens: tuple[int, ...]
    data: bytes


SUMMARY_INSTRUCTIONS = (
    "Summarise this conversation between a person and a voice assistant in at most two short sentences. "
    "Keep names, numbers, places and preferences the person gave. Reply with the summary only."
)


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens; per request."""

    max_tokens: int
    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    repeat_penalty: float = 1.05
    seed: int | None = None

    @classmethod
    def from_config(cls, config: LlmConfig) -> Sampling:
        """The configured defaults."""
        return cls(
            max_tokens=config.max_reply_tokens,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            repeat_penalty=config.repeat_penalty,
            seed=config.seed,
        )


@dataclass(frozen=True)
class PromptCost:
    """How much of a prompt llama.cpp had in its KV cache, and how much it had to evaluate."""

    tokens: int
    cached: int

    @property
    def evaluated(self) -> int:
        """Tokens evaluated for this prompt."""
        return self.tokens - self.cached


class ChatModel:
    """A GGUF chat model loaded on its own pinned worker; renders prompts with its own template and streams."""

    def __init__(self, model_path: Path, config: LlmConfig, worker: PinnedWorker) -> None:
        self.config = config
        self.worker = worker
        self.context_tokens = config.context_tokens
        self.max_reply_tokens = config.max_reply_tokens
        self.model_path = model_path
        self._llama, self._formatters = worker.call(self._load)

    def _load(self):
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        threads = len(self.worker.cores)
        try:
            llama = Llama(
                model_path=str(self.model_path),
                n_ctx=self.config.context_tokens,
                # One thread per pinned core: more OpenMP threads than cores spin against each other.
                n_threads=threads,
                n_threads_batch=threads,
                seed=self.config.seed if self.config.seed is not None else 0xFFFFFFFF,
                verbose=False,
            )
        except Exception as error:  # noqa: BLE001 - model loaders raise many unrelated types; re-raised as one line
            raise ModelLoadError(
                f"cannot load LLM {self.model_path}: {error}; the file may be truncated, fetch it again"
            ) from None
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelLoadError(f"LLM {self.model_path} has no chat template; use an instruct (chat) GGUF model")
        eos, bos = llama.token_eos(), llama.token_bos()
        formatters = {
            add_generation_prompt: Jinja2ChatFormatter(
                template=template,
                eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
                add_generation_prompt=add_generation_prompt,
            )
            for add_generation_prompt in (True, False)
        }
        return llama, formatters

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text the model's own chat template makes of `messages`."""
        return self._formatters[add_generation_prompt](messages=messages).prompt

    def prompt_tokens(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """The tokens of the rendered prompt, exactly as generation will see them.

        Only the template's own markup may become special tokens (<|im_start|>, <|im_end|>): the text of every
        message is tokenized as plain text, so a person who types a control token cannot play one.
        """
        # The template renders placeholders where the texts go; a random tag keeps a typed one from matching.
        tag = secrets.token_hex(8)
        placeholders = [{**message, "content": f"\ue000{tag}{index}\ue001"} for index, message in enumerate(messages)]
        rendered = self.render(placeholders, add_generation_prompt)
        tokens: list[int] = []
        start = 0
        for match in re.finditer(f"\ue000{tag}(\\d+)\ue001", rendered):
            tokens += self._tokenize(rendered[start : match.start()], bos=start == 0, special=True)
            tokens += self._tokenize(messages[int(match.group(1))]["content"], bos=False, special=False)
            start = match.end()
        return tokens + self._tokenize(rendered[start:], bos=start == 0, special=True)

    def _tokenize(self, text: str, bos: bool, special: bool) -> list[int]:
        if not text and not bos:
            return []
        return self._llama.tokenize(text.encode("utf-8"), add_bos=bos, special=special)

    def tokens_of(self, text: str) -> list[int]:
        """The model's tokens for plain text (no BOS, no special tokens), as a reply continues a prompt."""
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer (thread-safe: tokenizing does not touch the context)."""
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def prompt_cost(self, tokens: list[int]) -> PromptCost:
        """How much of `tokens` the KV cache holds now; call on the worker, right before generating."""
        held = self._llama._input_ids
        common = self._held_prefix(tokens)
        # As Llama.generate decides: a prompt held whole is re-evaluated from its last token, unless
        # the live logits are still those of that very prompt.
        if common == len(tokens) == len(held) and not getattr(self._llama, "_requires_eval", True):
            return PromptCost(tokens=len(tokens), cached=len(tokens))
        return PromptCost(tokens=len(tokens), cached=common - 1 if common == len(tokens) else common)

    def _held_prefix(self, tokens: list[int]) -> int:
        held = self._llama._input_ids
        common = 0
        for held_token, wanted in zip(held, tokens, strict=False):
            if held_token != wanted:
                break
            common += 1
        return common

    def prefill(self, tokens: list[int], should_stop: StopCheck = never) -> int:
        """Evaluate `tokens` into the KV cache, in blocks, so that a later prompt starting with them
        finds them there; returns how many were evaluated. On the worker.

        Raises Interrupted between blocks once `should_stop()` is true; the cache then holds a valid
        prefix of `tokens`.
        """
        llama = self._llama
        start = self._held_prefix(tokens)
        llama.n_tokens = start  # eval() drops whatever the cache holds past this point.
        for begin in range(start, len(tokens), PREFILL_BLOCK_TOKENS):
            if should_stop():
                raise Interrupted(f"prefill stopped after {begin - start} of {len(tokens) - start} tokens")
            llama.eval(tokens[begin : begin + PREFILL_BLOCK_TOKENS])
        return len(tokens) - start

    def save_state(self) -> KvState:
        """Snapshot the KV cache; on the worker.

        Llama.save_state() would also copy a row of logits per evaluated token (80 MB for 400 tokens
        of a small model); llama.cpp's own state holds the cache and the last logits, a few MB.
        """
        import ctypes

        import llama_cpp

        context = self._llama._ctx.ctx
        size = llama_cpp.llama_state_get_size(context)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_get_data(context, buffer, size)
        return KvState(tuple(int(t) for t in self._llama._input_ids), ctypes.string_at(buffer, written))

    def load_state(self, state: KvState) -> None:
        """Put back a KV cache saved by save_state(); on the worker."""
        import ctypes

        import llama_cpp

        llama = self._llama
        buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        if llama_cpp.llama_state_set_data(llama._ctx.ctx, buffer, len(state.data)) != len(state.data):
            llama.reset()
            raise VoicebotError("llama.cpp could not restore a saved KV cache; it was cleared instead")
        llama.input_ids[: len(state.tokens)] = state.tokens
        llama.n_tokens = len(state.tokens)
        llama._requires_eval = True  # As Llama.load_state: resample from a re-evaluated last token.

    def forget_cache(self) -> None:
        """Empty the KV cache, so the next prompt is evaluated whole; on the worker."""
        self._llama.reset()

    def prompt_tokens_evaluated(self) -> int:
        """llama.cpp's own count of prompt tokens evaluated in batches since loading (a lone token counts elsewhere)."""
        import llama_cpp

        return int(llama_cpp.llama_perf_context(self._llama._ctx.ctx).n_p_eval)

    def stream(
        self, tokens: list[int], sampling: Sampling, should_stop: StopCheck = never
    ) -> Generator[str, None, str]:
        """Yield reply text as it is generated; call on the worker thread and close it to stop early.

        Returns why it ended: "stop" (the model ended its reply) or "length" (sampling.max_tokens).
        Raises Interrupted at the next token once `should_stop()` is true.
        """
        if len(tokens) >= self.context_tokens:
            raise RequestTooLargeError(
                f"the prompt is {len(tokens)} tokens, more than the LLM's context of {self.context_tokens}; "
                "shorten it or raise llm.context_tokens"
            )
        # All but the last token first, so the last is always evaluated alone, as llama-cpp-python does when the
        # rest is cached: its logits, and so a seeded answer, are then the same whatever the cache held. This
        # also lets a long prompt give way between blocks.
        self.prefill(tokens[:-1], should_stop)
        completion = self._llama.create_completion(
            prompt=tokens,
            stream=True,
            max_tokens=min(sampling.max_tokens, self.context_tokens - len(tokens)),
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            repeat_penalty=sampling.repeat_penalty,
            seed=sampling.seed,
        )
        finish_reason = "stop"
        try:
            for chunk in completion:
                if should_stop():
                    raise Interrupted("generation stopped")
                choice = chunk["choices"][0]
                if choice["text"]:
                    yield choice["text"]
                finish_reason = choice.get("finish_reason") or finish_reason
        finally:
            completion.close()
        return finish_reason

    def complete(self, tokens: list[int], sampling: Sampling, should_stop: StopCheck = never) -> str:
        """The whole reply at once; on the worker thread."""
        return "".join(self.stream(tokens, sampling, should_stop))

    def warm_up(self, system_prompt: str) -> None:
        """Evaluate the system prompt once, so the first question reuses it from the KV cache."""
        tokens = self.prompt_tokens([{"role": "system", "content": system_prompt}], add_generation_prompt=False)
        self.complete(tokens, Sampling(max_tokens=1, seed=0))


@dataclass(frozen=True)
class Exchange:
    """One question and the answer the person actually heard."""

    question: str
    answer: str


@dataclass(frozen=True)
class Compression:
    """What compressing the history did, for the trace."""

    method: str
    turns: int
    tokens_before: int
    tokens_after: int
    tokens_evaluated: int


@dataclass
class Conversation:
    """The system prompt, a summary of older turns, and the recent exchanges, kept within a token budget."""

    config: ConversationConfig
    system_prompts: dict[str, str]
    """System prompt per language; 'en' is used for any language without its own."""
    exchanges: list[Exchange] = field(default_factory=list)
    summary: str = ""
    language: str = "en"
    last_activity: float = field(default_factory=time.monotonic)

    def add(self, question: str, answer: str) -> None:
        """Remember a finished exchange (only what was spoken of the answer)."""
        self.exchanges.append(Exchange(question, answer))
        self.last_activity = time.monotonic()

    def forget_if_stale(self) -> None:
        """Start afresh after a long pause, as a person would."""
        idle_s = time.monotonic() - self.last_activity
        if (self.exchanges or self.summary) and self.config.forget_after_s and idle_s > self.config.forget_after_s:
            log.info("forgetting the conversation after %.0f s of quiet", idle_s)
            self.exchanges.clear()
            self.summary = ""

    def system_message(self, summary: str | None = None) -> Message:
        """The system prompt for the conversation's language, with the summary of older turns."""
        summary = self.summary if summary is None else summary
        prompt = self.system_prompts.get(self.language) or self.system_prompts["en"]
        if summary:
            prompt = f"{prompt}\n\nEarlier in this conversation: {summary}"
        return {"role": "system", "content": prompt}

    def messages(
        self, question: str | None = None, exchanges: list[Exchange] | None = None, summary: str | None = None
    ) -> list[Message]:
        """The chat messages: system, history, and the new question if any.

        `exchanges` and `summary` stand in for the conversation's own, to render a history it may adopt.
        """
        messages = [self.system_message(summary)]
        for exchange in self.exchanges if exchanges is None else exchanges:
            messages += [
                {"role": "user", "content": exchange.question},
                {"role": "assistant", "content": exchange.answer},
            ]
        if question is not None:
            messages.append({"role": "user", "content": question})
        return messages

    def prompt(self, question: str, language: str, chat: ChatModel) -> list[int]:
        """Tokens of the prompt for `question`, within the context with room for the answer; on the LLM worker."""
        self.forget_if_stale()
        self.language = language
        budget = prompt_budget(chat)
        tokens = chat.prompt_tokens(self.messages(question))
        while len(tokens) > budget and (self.exchanges or self.summary):
            # Only a long question gets here: compress() keeps the history well below the budget.
            if self.exchanges:
                dropped = self.exchanges.pop(0)
                log.info("dropped the oldest turn to fit a long question: %r", dropped.question[:40])
            else:
                self.summary = ""
            tokens = chat.prompt_tokens(self.messages(question))
        if len(tokens) > budget:
            raise RequestTooLargeError(
                f"the question is too long for the LLM's context ({len(tokens)} tokens with the system prompt, "
                f"{budget} available with llm.max_reply_tokens={chat.max_reply_tokens}); "
                "shorten it or raise llm.context_tokens"
            )
        return tokens

    def remote_messages(
        self, question: str, language: str, chat: ChatModel | None, budget_tokens: int
    ) -> list[Message]:
        """The messages for `question` to a remote LLM, within `budget_tokens`: counted by the local model's
        tokenizer when one is loaded, else estimated from their characters; the oldest turns go first."""
        if chat is not None:
            self.prompt(question, language, chat)  # drops the oldest turns that do not fit
            return self.messages(question)
        self.forget_if_stale()
        self.language = language
        while (
            self.exchanges and sum(len(m["content"]) for m in self.messages(question)) / CHARS_PER_TOKEN > budget_tokens
        ):
            self.exchanges.pop(0)
        return self.messages(question)

    def must_compress(self, chat: ChatModel) -> bool:
        """Whether the history is so near the prompt budget that it must be compressed before another question."""
        history = len(chat.prompt_tokens(self.messages(), add_generation_prompt=False))
        return bool(self.exchanges) and history > COMPRESS_REGARDLESS_ABOVE * prompt_budget(chat)

    def compress(self, chat: ChatModel, sampling: Sampling, should_stop: StopCheck = never) -> Compression | None:
        """If the history has grown past its share of the budget, compress its oldest turns in one block.

        Then evaluate the new prefix, so the next question finds it in the KV cache. On the LLM worker.
        Once `should_stop()` is true it gives way (Interrupted) and leaves the conversation and the KV
        cache as they were, so a question asked meanwhile costs no more than without it; unless the
        history is so near the budget that it must be compressed now.
        """
        budget = prompt_budget(chat)
        before = len(chat.prompt_tokens(self.messages(), add_generation_prompt=False))
        if before <= COMPRESS_ABOVE * budget or not self.exchanges:
            return None
        if before > COMPRESS_REGARDLESS_ABOVE * budget:
            should_stop = never
        cut = 1
        while cut < len(self.exchanges) and (
            len(chat.prompt_tokens(self.messages(exchanges=self.exchanges[cut:]), False)) > COMPRESS_TO * budget
        ):
            cut += 1
        old, kept = self.exchanges[:cut], self.exchanges[cut:]
        saved = chat.save_state()
        try:
            summary, evaluated = self._summarise(old, chat, sampling, should_stop)
            prefix = chat.prompt_tokens(self.messages(exchanges=kept, summary=summary), add_generation_prompt=False)
            evaluated += chat.prefill(prefix, should_stop)
        except Interrupted:
            chat.load_state(saved)
            raise
        # Re-sliced, not `kept`: the voice loop may have added an exchange while this ran on the worker.
        self.exchanges, self.summary = self.exchanges[len(old) :], summary
        method = "summary" if summary else "drop"
        log.info("compressed %d old turns (%s): %d -> %d prompt tokens", len(old), method, before, len(prefix))
        return Compression(method, len(old), before, len(prefix), evaluated)

    def _summarise(
        self, old: list[Exchange], chat: ChatModel, sampling: Sampling, should_stop: StopCheck
    ) -> tuple[str, int]:
        """The new summary of `old` and what came before it ("" to drop them), and the tokens evaluated."""
        if self.config.compress != "summary":
            return "", 0
        request = chat.prompt_tokens(self._summary_request(old))
        if len(request) + SUMMARY_MAX_TOKENS >= chat.context_tokens:
            log.warning("the turns to summarise are too long for the context; dropping them instead")
            return "", 0
        evaluated = chat.prefill(request[:-1], should_stop)
        summary = chat.complete(request, _summary_sampling(sampling), should_stop)
        return " ".join(summary.split()), evaluated + 1

    def _summary_request(self, old: list[Exchange]) -> list[Message]:
        lines = [f"Earlier: {self.summary}"] if self.summary else []
        for exchange in old:
            lines += [f"Person: {exchange.question}", f"Assistant: {exchange.answer}"]
        return [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS},
            {"role": "user", "content": "\n".join(lines)},
        ]


def prompt_budget(chat: ChatModel) -> int:
    """Prompt tokens allowed: the context less the room kept for the answer."""
    return chat.context_tokens - chat.max_reply_tokens


def _summary_sampling(sampling: Sampling) -> Sampling:
    return dataclasses.replace(sampling, max_tokens=SUMMARY_MAX_TOKENS, temperature=0.2)


def system_prompts(config: LlmConfig) -> dict[str, str]:
    """The configured system prompt per language."""
    return {"en": config.system_prompt, "zh": config.system_prompt_zh}
