"""The LLM's conversation on the real model: history within its token budget, compressed in blocks,
and a KV cache that stays valid from turn to turn."""

from __future__ import annotations

import time

import pytest
from conftest import bundled_chat

from voicebot.config import ConversationConfig
from voicebot.errors import RequestTooLargeError
from voicebot.llm import (
    COMPRESS_ABOVE,
    COMPRESS_REGARDLESS_ABOVE,
    Conversation,
    Interrupted,
    Sampling,
    prompt_budget,
)

PROMPTS = {"en": "You are a helpful assistant. Be brief.", "zh": "你是一个有用的助手。请简短回答。"}


@pytest.fixture(scope="module")
def chat(llm_worker):
    return bundled_chat(llm_worker, context_tokens=512, max_reply_tokens=64)


def test_the_history_reaches_the_model_in_its_own_chat_template(chat):
    conversation = Conversation(ConversationConfig(), PROMPTS)
    conversation.add("Remember the word banana.", "OK, I will remember the word banana.")

    tokens = conversation.prompt("Which word did I ask you to remember?", "en", chat)

    text = chat._llama.detokenize(tokens, special=True).decode()
    # SmolLM2's ChatML template, rendered from the GGUF's own metadata, holds every turn in order.
    assert text.index("<|im_start|>system\nYou are a helpful assistant.") < text.index(
        "<|im_start|>user\nRemember the word banana.<|im_end|>"
    )
    assert text.index("<|im_start|>assistant\nOK, I will remember the word banana.<|im_end|>") < text.index(
        "<|im_start|>user\nWhich word did I ask you to remember?<|im_end|>"
    )
    assert text.endswith("<|im_start|>assistant\n")
    # The role markers are single special tokens, not text spelled out in pieces.
    assert (
        tokens.count(chat._llama.tokenize(b"<|im_start|>", add_bos=False, special=True)[0]) == 5
    )  # system, 2 turns, the new question, the answer


def test_the_language_picks_the_system_prompt(chat):
    conversation = Conversation(ConversationConfig(), PROMPTS)

    chinese = chat._llama.detokenize(conversation.prompt("今天天气怎么样？", "zh", chat), special=True).decode()
    english = chat._llama.detokenize(conversation.prompt("How is the weather?", "en", chat), special=True).decode()

    assert PROMPTS["zh"] in chinese and PROMPTS["en"] not in chinese
    assert PROMPTS["en"] in english


def test_a_long_history_is_compressed_in_one_block_well_below_the_budget(chat, llm_worker):
    conversation = Conversation(ConversationConfig(compress="drop"), PROMPTS)
    for number in range(12):
        conversation.add(f"Question {number}: tell me about topic {number}.", f"Topic {number} is interesting. " * 4)
    budget = prompt_budget(chat)
    before = len(chat.prompt_tokens(conversation.messages(), add_generation_prompt=False))
    assert before > budget

    done = llm_worker.call(conversation.compress, chat, Sampling(max_tokens=8, seed=1))

    after = len(chat.prompt_tokens(conversation.messages(), add_generation_prompt=False))
    assert done is not None and done.method == "drop" and done.tokens_before == before
    assert after == done.tokens_after <= 0.4 * budget
    # The newest turns are kept, whole and in order; the oldest went in one block.
    kept = [exchange.question for exchange in conversation.exchanges]
    assert kept and kept[-1].startswith("Question 11:")
    assert kept == [f"Question {n}: tell me about topic {n}." for n in range(12 - len(kept), 12)]
    # A history under the threshold is left alone, so the KV cache stays valid.
    assert llm_worker.call(conversation.compress, chat, Sampling(max_tokens=8, seed=1)) is None


def test_summary_compression_keeps_a_summary_in_the_system_prompt(chat, llm_worker):
    conversation = Conversation(ConversationConfig(compress="summary"), PROMPTS)
    for number in range(8):
        conversation.add(f"My cat number {number} is called Tom{number}.", f"Nice, Tom{number} is a fine name. " * 3)

    done = llm_worker.call(conversation.compress, chat, Sampling(max_tokens=8, seed=1, temperature=0.0))

    assert done is not None and done.method == "summary" and conversation.summary
    system = conversation.messages()[0]["content"]
    assert system.startswith(PROMPTS["en"]) and f"Earlier in this conversation: {conversation.summary}" in system
    assert done.tokens_after < done.tokens_before


def test_most_turns_evaluate_only_the_new_question(chat, llm_worker):
    conversation = Conversation(ConversationConfig(), PROMPTS)
    sampling = Sampling(max_tokens=24, seed=1, temperature=0.0)

    def turn(question: str):
        tokens = conversation.prompt(question, "en", chat)
        cost = chat.prompt_cost(tokens)
        answer = chat.complete(tokens, sampling)
        return tokens, cost, answer

    costs = []
    for question in ("What is the capital of France?", "And of Italy?", "Which is bigger?"):
        tokens, cost, answer = llm_worker.call(turn, question)
        conversation.add(question, answer)
        costs.append((cost, len(chat.prompt_tokens([{"role": "user", "content": question}], False))))

    for cost, question_tokens in costs[1:]:
        # The earlier turns come from the cache: what is evaluated is the question, its role markers,
        # and the end of the previous answer.
        assert cost.cached > 0.6 * cost.tokens, cost
        assert cost.evaluated <= question_tokens + 8, (cost, question_tokens)


def test_a_quiet_spell_forgets_the_conversation(chat):
    conversation = Conversation(ConversationConfig(forget_after_s=1.0), PROMPTS)
    conversation.add("My name is Ada.", "Hello Ada.")
    conversation.last_activity = time.monotonic() - 2.0

    text = chat._llama.detokenize(conversation.prompt("What is my name?", "en", chat), special=True).decode()

    assert "Ada" not in text and conversation.exchanges == []


def test_a_question_too_long_for_the_context_is_refused(chat):
    conversation = Conversation(ConversationConfig(), PROMPTS)

    with pytest.raises(RequestTooLargeError, match=r"too long for the LLM's context .* raise llm.context_tokens"):
        conversation.prompt("Tell me about the weather. " * 200, "en", chat)


def test_a_long_question_pushes_out_old_turns_rather_than_failing(chat):
    conversation = Conversation(ConversationConfig(), PROMPTS)
    for number in range(3):
        conversation.add(f"Question {number}.", "An answer. " * 20)

    tokens = conversation.prompt("Tell me about the weather. " * 40, "en", chat)

    assert len(tokens) <= prompt_budget(chat)
    assert len(conversation.exchanges) < 3


def history_between(chat, low: float, high: float) -> Conversation:
    """A conversation whose history fills between `low` and `high` of the prompt budget."""
    conversation = Conversation(ConversationConfig(compress="summary"), PROMPTS)
    budget = prompt_budget(chat)
    number = 0
    while len(chat.prompt_tokens(conversation.messages(), False)) <= low * budget:
        conversation.add(f"My cat number {number} is called Tom{number}.", f"Tom{number} is a fine name.")
        number += 1
    assert len(chat.prompt_tokens(conversation.messages(), False)) <= high * budget
    return conversation


class StopAt:
    """A stop check that turns true on its n-th call, so an interruption lands at a chosen point."""

    def __init__(self, call: int) -> None:
        self.call, self.calls = call, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.call


@pytest.mark.parametrize("stop_at_call", [1, 2, 5, 12])
def test_a_compression_interrupted_anywhere_leaves_the_history_and_the_kv_cache_as_they_were(
    chat, llm_worker, stop_at_call
):
    conversation = history_between(chat, COMPRESS_ABOVE, COMPRESS_REGARDLESS_ABOVE)
    exchanges, summary = list(conversation.exchanges), conversation.summary
    # As after a reply: the KV cache holds the whole history.
    llm_worker.call(chat.prefill, chat.prompt_tokens(conversation.messages(), False))
    question = "What is my first cat called?"
    next_prompt = llm_worker.call(conversation.prompt, question, "en", chat)
    uninterrupted_cost = llm_worker.call(chat.prompt_cost, next_prompt)

    stop = StopAt(stop_at_call)
    with pytest.raises(Interrupted):
        llm_worker.call(conversation.compress, chat, Sampling(max_tokens=8, seed=1, temperature=0.0), stop)

    assert stop.calls == stop_at_call  # it stopped at the first check that said so
    assert conversation.exchanges == exchanges and conversation.summary == summary
    # The question asked meanwhile finds its history in the cache, as if nothing had run.
    assert llm_worker.call(chat.prompt_cost, next_prompt) == uninterrupted_cost
    assert uninterrupted_cost.evaluated < 0.1 * uninterrupted_cost.tokens


def test_an_uninterrupted_compression_checks_often_and_leaves_its_prefix_in_the_cache(chat, llm_worker):
    conversation = history_between(chat, COMPRESS_ABOVE, COMPRESS_REGARDLESS_ABOVE)
    stop = StopAt(10**6)

    done = llm_worker.call(conversation.compress, chat, Sampling(max_tokens=8, seed=1, temperature=0.0), stop)

    assert done is not None and done.method == "summary"
    # A check at least every prefill block and every generated token of the summary.
    assert stop.calls >= done.tokens_evaluated // 64 + 2
    next_prompt = llm_worker.call(conversation.prompt, "What is my first cat called?", "en", chat)
    cost = llm_worker.call(chat.prompt_cost, next_prompt)
    assert cost.cached == done.tokens_after


def test_a_history_near_the_budget_is_compressed_even_when_a_question_waits(chat, llm_worker):
    conversation = history_between(chat, COMPRESS_REGARDLESS_ABOVE, 1.0)

    done = llm_worker.call(conversation.compress, chat, Sampling(max_tokens=8, seed=1), lambda: True)

    assert done is not None and done.tokens_after < done.tokens_before


def test_a_saved_kv_cache_comes_back_after_other_work(chat, llm_worker):
    conversation = Conversation(ConversationConfig(), PROMPTS)
    conversation.add("Remember the word banana.", "OK, I will remember the word banana.")
    history = chat.prompt_tokens(conversation.messages(), False)
    llm_worker.call(chat.prefill, history)
    saved = llm_worker.call(chat.save_state)

    llm_worker.call(chat.prefill, chat.prompt_tokens([{"role": "user", "content": "Something else entirely."}]))
    assert (
        llm_worker.call(chat.prompt_cost, history).cached < len(history) // 4
    )  # only the template's opening is shared
    llm_worker.call(chat.load_state, saved)

    assert saved.tokens == tuple(history)
    assert llm_worker.call(chat.prompt_cost, history).cached == len(history) - 1  # the last one is re-evaluated
    sampling = Sampling(max_tokens=6, seed=1, temperature=0.0)
    restored = llm_worker.call(chat.complete, history + [chat._llama.tokenize(b"\n", add_bos=False)[0]], sampling)
    llm_worker.call(chat.forget_cache)
    fresh = llm_worker.call(chat.complete, history + [chat._llama.tokenize(b"\n", add_bos=False)[0]], sampling)
    assert restored == fresh
