"""What a conversation costs as it grows, and how soon a quick follow-up is answered while history is compressed.

One conversation of 20 turns through the Responder, text only as `voicebot chat` runs it, against a
baseline that evaluates the whole prompt every turn (the KV cache cleared) with the same prompts, the
same history and the same cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import time
from typing import Any

from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.llm import Conversation, Sampling
from voicebot.reply import Responder
from voicebot.runtime.clock import Clock
from voicebot.runtime.threads import iterate_in_worker
from voicebot.runtime.trace import Tracer
from voicebot.tools.bench.measure import first_event, median, ratio, timed_async, words

CONVERSATION = (
    "Hi, I'm Sam, and my favourite fruit is the mango. What is a good breakfast for a busy morning?",
    "How long should I boil an egg for a soft yolk?",
    "What can I add to porridge to make it less boring?",
    "Why does bread go stale?",
    "How do I keep fresh herbs from wilting in the fridge?",
    "What is the difference between baking soda and baking powder?",
    "Why do onions make people cry?",
    "How do I stop rice from sticking to the pan?",
    "What is a quick vegetarian dinner I can make in twenty minutes?",
    "How long can cooked chicken stay in the fridge?",
    "Why is the sky blue?",
    "How far away is the moon?",
    "What causes thunder?",
    "Why do cats purr?",
    "How do bees make honey?",
    "What is the tallest mountain in Europe?",
    "Why do leaves change colour in autumn?",
    "How does a rainbow form?",
    "What should I pack for a day of hiking?",
)
RECALL_QUESTION = "By the way, what is my name, and which fruit did I say I like best?"
RECALL_WORDS = ("sam", "mango")
REPORTED_TURNS = (1, 5, 10, 20)


def multi_turn(engines: Engines, turns: int) -> dict[str, Any]:
    """One conversation through the Responder, then the same prompts with the KV cache cleared before each."""
    questions = [*CONVERSATION[: max(turns - 1, 0)], RECALL_QUESTION][:turns]
    engines.warm_up_llm()
    rows, compressions, answers, compressing = asyncio.run(_converse(engines, questions))
    cold = asyncio.run(_cold_first_tokens(engines, [row.pop("tokens") for row in rows]))
    engines.warm_up_llm()
    for row, (seconds, counted) in zip(rows, cold, strict=True):
        row["baseline_evaluated"] = row["prompt_tokens"]
        row["baseline_evaluated_llama"] = counted
        row["baseline_first_token_s"] = round(seconds, 4)
    later = rows[1:] or rows

    def median_of(key: str) -> float:
        return median([row[key] for row in later])

    recall = answers[-1]
    return {
        "turns": len(rows),
        "rows": rows,
        "at": {str(row["turn"]): row for row in rows if row["turn"] in REPORTED_TURNS},
        "median_after_turn_1": {
            "evaluated": median_of("evaluated"),
            "baseline_evaluated": median_of("baseline_evaluated"),
            "first_token_s": median_of("first_token_s"),
            "baseline_first_token_s": median_of("baseline_first_token_s"),
        },
        "first_token_ratio": ratio(median_of("first_token_s"), median_of("baseline_first_token_s")),
        "evaluated_ratio": ratio(median_of("evaluated"), median_of("baseline_evaluated")),
        "compressions": compressions,
        "quick_follow_up": asyncio.run(_quick_follow_up(engines, *compressing)) if compressing else None,
        "recall": {
            "question": questions[-1],
            "expected": list(RECALL_WORDS),
            "answer": recall,
            "recalled": [word for word in RECALL_WORDS if word in words(recall)],
        }
        if questions[-1] == RECALL_QUESTION
        else None,
    }


async def _converse(
    engines: Engines, questions: list[str]
) -> tuple[list[dict[str, Any]], list[dict], list[str], tuple[Conversation, str] | None]:
    """The conversation's rows, compressions and answers; and the conversation as the first reply that set
    off a compression left it, with the question that came next."""
    chat, llm_worker = engines.llm.chat, engines.llm.worker
    tracer = Tracer(Clock(), keep=True)
    responder = Responder(engines, None, tracer)
    rows, answers = [], []
    compressing = None
    after_reply: Conversation | None = None
    try:
        for turn, question in enumerate(questions, start=1):
            # Compressing old turns runs while a person hears the answer; here, before the next question.
            compressed_before = len([e for e in tracer.events if e["event"] == "history_compressed"])
            waited_s, _ = await timed_async(responder.settled())
            compressed = len([e for e in tracer.events if e["event"] == "history_compressed"]) > compressed_before
            if compressed and compressing is None and after_reply is not None:
                compressing = (after_reply, question)
            tokens = await llm_worker.run(responder.conversation.prompt, question, "en", chat)
            before = await llm_worker.run(chat.prompt_tokens_evaluated)
            mark = len(tracer.events)
            answers.append(await responder.respond(question))
            after_reply = copy.deepcopy(responder.conversation)  # before the compression it set off can start
            # Read before the compression the reply set off can reach the worker.
            counted = await llm_worker.run(chat.prompt_tokens_evaluated) - before
            events = tracer.events[mark:]
            prompt = first_event(events, "llm_prompt")
            if prompt["prompt_tokens"] != len(tokens):
                raise VoicebotError(f"turn {turn}: the prompt was {prompt['prompt_tokens']} tokens, not {len(tokens)}")
            rows.append(
                {
                    "turn": turn,
                    "history_turns": prompt["history_turns"],
                    "summary": prompt["summary"],
                    "prompt_tokens": prompt["prompt_tokens"],
                    "evaluated": prompt["prompt_tokens_evaluated"],
                    "evaluated_llama": counted,
                    "first_token_s": round(first_event(events, "llm_first_token")["t"] - prompt["t"], 4),
                    "compression_wait_s": round(waited_s, 4),
                    "tokens": tokens,
                }
            )
    finally:
        await responder.settled()
    compressions = [
        {k: v for k, v in e.items() if k != "event"} for e in tracer.events if e["event"] == "history_compressed"
    ]
    return rows, compressions, answers, compressing


async def _quick_follow_up(engines: Engines, after_reply: Conversation, follow_up: str) -> dict[str, Any]:
    """A follow-up asked the moment the reply that set off a compression ends: seconds from asking to
    its first token when it interrupts the compression, and when it waits for it (as before)."""
    chat, llm_worker = engines.llm.chat, engines.llm.worker
    result: dict[str, Any] = {"follow_up": follow_up}
    for design in ("interrupts", "waits"):
        clock = Clock()
        tracer = Tracer(clock, keep=True)
        responder = Responder(engines, None, tracer)
        responder.sampling = dataclasses.replace(responder.sampling, seed=1)
        responder.conversation = copy.deepcopy(after_reply)
        responder.conversation.last_activity = time.monotonic()
        # As the reply left it: the history in the KV cache, and its compression starting.
        await llm_worker.run(chat.forget_cache)
        await llm_worker.run(chat.prefill, chat.prompt_tokens(after_reply.messages(), False))
        responder.compress_in_background()
        asked = clock.now()
        if design == "waits":
            await responder.settled()
        await responder.respond(follow_up)
        await responder.settled()
        first_tokens = [e["t"] for e in tracer.events if e["event"] == "llm_first_token"]
        result[design] = {
            "first_token_s": round(first_tokens[-1] - asked, 4),
            "interrupted": sum(e["event"] == "history_compression_interrupted" for e in tracer.events),
            "compressed": sum(e["event"] == "history_compressed" for e in tracer.events),
        }
    result["ratio"] = ratio(result["interrupts"]["first_token_s"], result["waits"]["first_token_s"])
    return result


async def _cold_first_tokens(engines: Engines, prompts: list[list[int]]) -> list[tuple[float, int]]:
    """Seconds to the first token of each prompt with the KV cache cleared, and the tokens llama.cpp evaluated."""
    chat, llm_worker = engines.llm.chat, engines.llm.worker
    sampling = Sampling.from_config(engines.config.llm)
    results = []
    for tokens in prompts:
        await llm_worker.run(chat.forget_cache)
        before = await llm_worker.run(chat.prompt_tokens_evaluated)
        started = time.perf_counter()
        stream = iterate_in_worker(llm_worker, lambda tokens=tokens: chat.stream(tokens, sampling))
        async with contextlib.aclosing(stream):
            await anext(stream)
        seconds = time.perf_counter() - started
        results.append((seconds, await llm_worker.run(chat.prompt_tokens_evaluated) - before))
    return results
