"""The LLM's conversation: history that stays within the context window, on the real model."""

from __future__ import annotations

import time

import pytest

from voicebot.config import ConversationConfig, LlmConfig, config_from_dict
from voicebot.errors import RequestTooLargeError
from voicebot.llm import ChatModel, Conversation
from voicebot.models import resolve_llm
from voicebot.threads import PinnedWorker, available_cores


@pytest.fixture(scope="module")
def chat():
    worker = PinnedWorker("llm-test", available_cores()[-1:])
    config = LlmConfig(context_tokens=512, max_reply_tokens=64, seed=1, temperature=0.0)
    model = ChatModel(resolve_llm(config_from_dict({"profile": "bundled"})), config, worker)
    yield model
    worker.close()


def prompt_tokens(chat: ChatModel, messages: list[dict[str, str]]) -> int:
    return sum(chat.count_tokens(m["content"]) + 8 for m in messages)


def test_history_is_trimmed_oldest_first_to_fit_the_context(chat):
    conversation = Conversation(ConversationConfig(history_turns=50), "Be brief.")
    for number in range(30):
        conversation.add(f"Question {number}: tell me about topic {number} in detail.", "An answer. " * 12)

    messages = conversation.messages("What did I ask first?", chat)

    assert prompt_tokens(chat, messages) + chat.max_reply_tokens <= chat.context_tokens
    assert messages[0]["role"] == "system" and messages[-1]["content"] == "What did I ask first?"
    kept = [m["content"] for m in messages if m["role"] == "user"][:-1]
    assert kept and "Question 29" in kept[-1] and not any("Question 0:" in k for k in kept)


def test_history_turns_caps_what_is_remembered(chat):
    conversation = Conversation(ConversationConfig(history_turns=2), "Be brief.")
    for number in range(5):
        conversation.add(f"q{number}", f"a{number}")

    messages = conversation.messages("next", chat)

    assert [m["content"] for m in messages[1:]] == ["q3", "a3", "q4", "a4", "next"]


def test_a_quiet_spell_forgets_the_conversation(chat):
    conversation = Conversation(ConversationConfig(forget_after_s=1.0), "Be brief.")
    conversation.add("My name is Ada.", "Hello Ada.")
    conversation.last_activity = time.monotonic() - 2.0

    assert len(conversation.messages("What is my name?", chat)) == 2


def test_a_question_too_long_for_the_context_is_refused(chat):
    conversation = Conversation(ConversationConfig(), "Be brief.")

    with pytest.raises(RequestTooLargeError, match=r"too long for the LLM's context .* raise llm.context_tokens"):
        conversation.messages("Tell me about the weather. " * 200, chat)


def test_the_model_hears_the_history(chat):
    # SmolLM2-135M is a weak memory, but it repeats a word it was given, and never invents this one.
    def answer(conversation: Conversation) -> str:
        return "".join(chat.stream(conversation.messages("Which word did I ask you to remember?", chat)))

    remembering = Conversation(ConversationConfig(), "You are a helpful assistant.")
    remembering.add("Remember the word banana.", "OK, I will remember the word banana.")
    fresh = Conversation(ConversationConfig(), "You are a helpful assistant.")

    assert "banana" in answer(remembering).lower()
    assert "banana" not in answer(fresh).lower()
