"""The Responder's work between turns (compressing the history) gives way to the next question."""

from __future__ import annotations

import asyncio

from conftest import engines_fixture

from voicebot.llm import COMPRESS_ABOVE, prompt_budget
from voicebot.llm_service import Priority
from voicebot.reply import Responder
from voicebot.runtime.clock import Clock
from voicebot.runtime.trace import Tracer

engines = engines_fixture({"llm": {"seed": 3, "context_tokens": 1024, "max_reply_tokens": 24}}, {"llm"})


def named(tracer: Tracer, name: str) -> list[dict]:
    return [event for event in tracer.events if event["event"] == name]


def test_a_question_asked_while_the_history_is_compressed_interrupts_it_and_the_next_one_finishes(engines):
    chat = engines.llm.chat
    tracer = Tracer(Clock(), keep=True)
    responder = Responder(engines, None, tracer)
    conversation = responder.conversation
    number = 0
    while len(chat.prompt_tokens(conversation.messages(), False)) <= (COMPRESS_ABOVE + 0.01) * prompt_budget(chat):
        conversation.add(f"My cat number {number} is called Tom{number}.", f"Tom{number} is a fine name.")
        number += 1
    history_turns = len(conversation.exchanges)

    async def scenario():
        await responder.respond("Say hello.")  # its reply sets off a compression
        while engines.llm.running is not Priority.BACKGROUND:  # noqa: ASYNC110 - the service has no event for this
            await asyncio.sleep(0.001)
        await responder.respond("Say goodbye.")  # asked while it runs, as a quick follow-up
        await responder.settled()

    asyncio.run(asyncio.wait_for(scenario(), 120))

    interrupted, compressed = named(tracer, "history_compression_interrupted"), named(tracer, "history_compressed")
    prompts = named(tracer, "llm_prompt")
    assert len(interrupted) == 1 and len(compressed) == 1, [e["event"] for e in tracer.events]
    # The follow-up came first, over the whole history, nearly all of it from the KV cache.
    assert interrupted[0]["t"] < prompts[1]["t"] < compressed[0]["t"]
    assert prompts[1]["history_turns"] == history_turns + 1 and not prompts[1]["summary"]
    assert prompts[1]["prompt_tokens_evaluated"] < 0.1 * prompts[1]["prompt_tokens"]
    # Then, with nobody waiting, the compression ran to the end.
    assert compressed[0]["turns"] >= 1 and conversation.summary
    assert len(conversation.exchanges) == history_turns + 2 - compressed[0]["turns"]
