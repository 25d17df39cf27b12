"""The shared LLM on the real model: voice first, pre-emption and resumption, a KV cache per conversation."""

from __future__ import annotations

import asyncio

import pytest
from conftest import bundled_chat

from voicebot.llm import ChatModel, Sampling
from voicebot.llm_service import LlmBusyError, LlmService, Priority

GREEDY = Sampling(max_tokens=40, temperature=0.0, seed=1)


@pytest.fixture(scope="module")
def chat(llm_worker):
    return bundled_chat(llm_worker, context_tokens=1024, max_reply_tokens=64)


def asking(question: str, history: list[tuple[str, str]] = ()):
    def prepare(chat: ChatModel) -> list[int]:
        messages = [{"role": "system", "content": "You are a helpful assistant."}]
        for asked, answered in history:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        return chat.prompt_tokens([*messages, {"role": "user", "content": question}])

    return prepare


async def collect(stream, log: list | None = None, name: str = "") -> str:
    text = ""
    async for piece in stream:
        text += piece
        if log is not None:
            log.append(name)
    return text


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def long_typed_answer_under_way(service: LlmService, order: list[str]) -> asyncio.Task[str]:
    """A 60-token typed answer, once its first 5 pieces are written; each piece logs "typed" in `order`."""
    long_answer = Sampling(max_tokens=60, temperature=0.0, seed=1)
    typed = asyncio.create_task(
        collect(service.generate("web", asking("Tell me about the history of bread."), long_answer), order, "typed")
    )
    while order.count("typed") < 5:  # noqa: ASYNC110 - waits on a list the stream fills
        await asyncio.sleep(0.005)
    return typed


def test_a_voice_turn_overtakes_a_typed_generation_within_one_step_and_the_typed_one_resumes(chat, llm_worker):
    async def scenario():
        service = LlmService(chat, llm_worker)
        order: list[str] = []
        typed = await long_typed_answer_under_way(service, order)
        typed_before_voice = order.count("typed")
        voice = await collect(
            service.generate("voice", asking("What is two plus two?"), GREEDY, Priority.VOICE), order, "voice"
        )
        typed_text = await typed
        await service.close()
        return order, typed_before_voice, voice, typed_text

    order, typed_before_voice, voice, typed_text = run(scenario())

    first_voice = order.index("voice")
    # At most one typed token was written after the voice turn arrived, then the voice turn ran whole.
    assert first_voice - typed_before_voice <= 1, order
    assert "typed" not in order[first_voice : first_voice + order.count("voice")], order
    # The typed answer then went on to its end: all 60 tokens, none lost or repeated at the seam.
    assert order.count("typed") == 60 and voice and typed_text


def test_switching_conversations_keeps_each_ones_kv_cache(chat, llm_worker):
    history = [("My name is Ada and I like green apples.", "Nice to meet you, Ada.")] * 6
    follow_up = asking("What is my name?", history)

    async def scenario(kv_slots: int) -> list[int]:
        service = LlmService(chat, llm_worker, kv_slots=kv_slots)
        cached: list[int] = []
        await collect(service.generate("voice", asking("Hello?", history), GREEDY, Priority.VOICE))
        await collect(service.generate("web", asking("Name a colour."), GREEDY))
        await collect(
            service.generate("voice", follow_up, GREEDY, Priority.VOICE, on_prompt=lambda cost: cached.append(cost))
        )
        await service.close()
        return cached, service

    [with_states], service = run(scenario(kv_slots=4))
    [without], _ = run(scenario(kv_slots=0))
    prompt_tokens = len(llm_worker.call(follow_up, chat))

    assert service.kv_saves >= 2 and service.kv_restores >= 1
    # Back in the voice conversation after the web one: its history came back from the saved state.
    assert with_states.cached >= 0.8 * prompt_tokens, with_states
    # Without saved states the web request's prompt had replaced it: only the system prompt is shared.
    assert without.cached < 0.4 * prompt_tokens, without
    print(f"KV reuse: {with_states.cached} of {prompt_tokens} prompt tokens cached, against {without.cached}")


def test_a_full_queue_refuses_typed_requests_but_never_voice(chat, llm_worker):
    async def scenario():
        service = LlmService(chat, llm_worker, max_waiting=2)
        first = asyncio.create_task(collect(service.generate("web0", asking("Count to ten."), GREEDY)))
        while service.running is None:  # noqa: ASYNC110 - the scheduler has no event for this
            await asyncio.sleep(0.005)
        waiting = [
            asyncio.create_task(collect(service.generate(f"web{n}", asking(f"Count to {n}."), GREEDY))) for n in (1, 2)
        ]
        assert service.queue_length == 2
        with pytest.raises(LlmBusyError, match="2 requests are already waiting"):
            service.generate("web9", asking("Hi."), GREEDY)
        voice = await collect(service.generate("voice", asking("Hi."), GREEDY, Priority.VOICE))
        results = await asyncio.gather(first, *waiting)
        await service.close()
        return voice, results

    voice, results = run(scenario())
    assert voice and all(results)


def test_a_consumer_that_leaves_stops_its_generation_at_once(chat, llm_worker):
    async def scenario():
        service = LlmService(chat, llm_worker)
        stream = service.generate("web", asking("Tell me a long story."), Sampling(max_tokens=60, seed=1))
        taken = 0
        async for _ in stream:
            taken += 1
            if taken == 3:
                break
        await stream.aclose()
        # The next request starts right away: nothing is still generating for the one that left.
        answer = await collect(service.generate("web2", asking("Say yes."), Sampling(max_tokens=3, seed=1)))
        job_pieces = taken
        await service.close()
        return job_pieces, answer

    taken, answer = run(scenario())
    assert taken == 3 and answer


def test_sampling_is_per_request(chat, llm_worker):
    async def scenario():
        service = LlmService(chat, llm_worker)
        short = await collect(
            service.generate("a", asking("Describe the sea."), Sampling(max_tokens=4, temperature=0.0))
        )
        again = await collect(
            service.generate("b", asking("Describe the sea."), Sampling(max_tokens=4, temperature=0.0))
        )
        longer = await collect(
            service.generate("c", asking("Describe the sea."), Sampling(max_tokens=20, temperature=0.0))
        )
        await service.close()
        return short, again, longer

    short, again, longer = run(scenario())
    assert len(chat.tokens_of(short)) <= 5 and short == again
    assert longer.startswith(short) and len(longer) > len(short)


def test_a_voice_hold_pauses_typed_work_at_its_next_token_until_released(chat, llm_worker):
    async def scenario():
        service = LlmService(chat, llm_worker)
        order: list[str] = []
        typed = await long_typed_answer_under_way(service, order)
        hold = service.hold_for_voice("voice")
        await asyncio.sleep(0.3)  # as long as a transcription: nothing typed may be written meanwhile
        during_hold = order.count("typed")
        waiting = service.queue_length
        switched_ahead = service.kv_saves  # the web chat's cache was put aside for the voice turn's meanwhile
        hold.release()
        hold.release()  # a second release changes nothing
        text = await typed
        await service.close()
        return order, during_hold, waiting, switched_ahead, text

    order, during_hold, waiting, switched_ahead, text = run(scenario())
    # It stopped within a token of the hold, waited (queued again) and then finished its 60 tokens.
    assert 5 <= during_hold <= 7 and waiting == 1 and switched_ahead == 1
    assert order.count("typed") == 60 and text
