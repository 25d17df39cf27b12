"""A turn can be cancelled at any point: generation, synthesis and playback all stop."""

from __future__ import annotations

import asyncio
import time
import wave

import pytest
from conftest import engines_fixture

from voicebot.audio import WavSink
from voicebot.reply import Responder
from voicebot.runtime.clock import Clock
from voicebot.runtime.trace import Tracer

TIMEOUT_S = 60
LONG_ANSWER = "Tell me a long story about a lighthouse keeper and his dog."


engines = engines_fixture({"llm": {"seed": 5, "max_reply_tokens": 400}}, {"llm", "tts"})


async def wait_for_event(tracer: Tracer, name: str) -> None:
    while not any(e["event"] == name for e in tracer.events):  # noqa: ASYNC110 - the tracer has no event to wait on
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("cancel_after", ["llm_first_token", "tts_first_audio", "playback_start"])
def test_cancelling_stops_generation_synthesis_and_playback(engines, tmp_path, cancel_after):
    async def scenario():
        clock = Clock()
        tracer = Tracer(clock, keep=True)
        sink = WavSink(tmp_path / "reply.wav", clock, realtime=True, rate_hz=engines.tts.rate_hz)
        reply = asyncio.create_task(Responder(engines, sink, tracer).respond(LONG_ANSWER))
        await asyncio.wait_for(wait_for_event(tracer, cancel_after), TIMEOUT_S)
        cancelled_at = clock.now()
        reply.cancel()
        await asyncio.wait_for(asyncio.gather(reply, return_exceptions=True), 2.0)
        stopped_in_s = clock.now() - cancelled_at
        # Both workers are free again at once: nothing is still generating or synthesising.
        started = time.monotonic()
        await asyncio.wait_for(engines.worker("llm").run(lambda: None), 2.0)
        await asyncio.wait_for(engines.worker("tts").run(lambda: None), 2.0)
        workers_free_in_s = time.monotonic() - started
        events_before = len(tracer.events)
        await asyncio.sleep(0.5)
        sink.close()
        return reply, stopped_in_s, workers_free_in_s, tracer.events, events_before, cancelled_at

    reply, stopped_in_s, workers_free_in_s, events, events_before, cancelled_at = asyncio.run(scenario())

    assert reply.cancelled()
    assert stopped_in_s < 0.5 and workers_free_in_s < 1.0
    assert len(events) == events_before, "events arrived after the turn was cancelled"
    assert "llm_done" not in {e["event"] for e in events}
    with wave.open(str(tmp_path / "reply.wav")) as played:
        heard_s = played.getnframes() / played.getframerate()
    playback = [e["t"] for e in events if e["event"] == "playback_start"]
    assert heard_s <= (cancelled_at - playback[0] + 0.05 if playback else 0.0)


def test_a_new_reply_works_after_a_cancelled_one(engines, tmp_path):
    async def scenario():
        clock = Clock()
        tracer = Tracer(clock, keep=True)
        sink = WavSink(tmp_path / "reply.wav", clock, realtime=False, rate_hz=engines.tts.rate_hz)
        responder = Responder(engines, sink, tracer)
        first = asyncio.create_task(responder.respond(LONG_ANSWER))
        await asyncio.wait_for(wait_for_event(tracer, "sentence"), TIMEOUT_S)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        answer = await asyncio.wait_for(responder.respond("What is two plus two?"), TIMEOUT_S)
        sink.close()
        return answer, tracer.events

    answer, events = asyncio.run(scenario())

    assert answer.strip()
    assert [e["event"] for e in events].count("llm_done") == 1
