"""Voice and typed chats on one model: a voice turn from a WAV while eight HTTP streams are open.

`voicebot run` hears the same question three times, the conversation forgotten in between so each
turn starts alike: first to warm up, then alone, then while eight streamed typed answers (each
several hundred tokens) fill the LLM's queue. The voice turn goes first, the typed answers all
complete, and requests over the queue's cap get 429.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import build_wav, espeak, named, trace_events
from http_server import ServerProcess

QUESTION = "What is the capital of France?"
STREAMS = 8
GAP_S = 12.0


def wait_for(condition, timeout_s: float, what: str, process: ServerProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.process.poll() is not None:
            raise AssertionError(f"voicebot exited while waiting for {what}:\n{process.log()}")
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s:\n{process.log()}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_voice_turn_goes_first_while_eight_http_streams_are_open(tmp_path, speech_dir):
    question = espeak(QUESTION, speech_dir)
    wake = espeak("hey jarvis", speech_dir)
    # Each reply takes a few seconds and the follow-up window 5 s, so each turn starts well after the last
    # has ended. The silence at the end (4 minutes) outlasts the typed answers even on a loaded machine; the test
    # stops voicebot once they are done.
    turn = [wake, 0.3, question]
    wav = build_wav(tmp_path / "input.wav", [1.0, *turn, GAP_S, *turn, GAP_S, *turn, 240])
    trace = tmp_path / "trace.jsonl"
    options = [
        "--set", "profile=bundled",
        "--set", "llm.seed=3",
        "--set", "llm.temperature=0",
        "--set", "llm.max_reply_tokens=40",
        "--set", "conversation.forget_after_s=1",
        "--set", "http.enabled=true",
        "--set", f"http.max_queued={STREAMS - 1}",
        "--input", str(wav),
        "--output", str(tmp_path / "reply.wav"),
        "--trace", str(trace),
    ]  # fmt: skip
    voicebot = ServerProcess("run", options, tmp_path / "run.log").wait_ready()
    try:
        wait_for(lambda: len(named(trace_events(trace), "turn_end")) >= 2, 60, "the second turn's end", voicebot)
        # The streams open as the third question begins: they are generating while it is spoken and answered.
        wait_for(lambda: len(named(trace_events(trace), "wake")) >= 3, 60, "the third wake word", voicebot)

        body = {
            "messages": [
                {"role": "user", "content": "Write a very long story about a dragon, at least ten paragraphs."}
            ],
            "stream": True,
            "max_tokens": 500,
            "temperature": 0,
        }
        results: dict[int, dict] = {}

        def stream(index: int) -> None:
            url = f"{voicebot.url}v1/chat/completions"
            with httpx.stream("POST", url, json=body, timeout=httpx.Timeout(120)) as response:
                lines = [line for line in response.iter_lines() if line]
                results[index] = {"status": response.status_code, "lines": lines, "ended_at": time.monotonic()}

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        wait_for(
            lambda: httpx.get(f"{voicebot.url}health", timeout=5).json()["queue_length"] >= STREAMS - 1,
            20,
            "a full queue",
            voicebot,
        )
        over_cap = [
            httpx.post(f"{voicebot.url}v1/chat/completions", json={**body, "stream": False}, timeout=30)
            for _ in range(2)
        ]
        wait_for(lambda: len(named(trace_events(trace), "turn_end")) >= 3, 90, "the third turn's end", voicebot)
        voice_turn_ended_at = time.monotonic()
        for thread in threads:
            thread.join(120)
        still_running = voicebot.process.poll() is None
    finally:
        code = voicebot.stop()
    log = voicebot.log()
    assert still_running and code == 0, log
    assert "Traceback" not in log, log

    recorded = trace_events(trace)
    transcripts = named(recorded, "transcript")
    assert len(transcripts) == 3 and all("capital" in t["text"].lower() for t in transcripts), transcripts
    assert [e["reason"] for e in named(recorded, "turn_end")] == ["answered"] * 3
    assert all(p["history_turns"] == 0 for p in named(recorded, "llm_prompt"))
    # Everything completed; going over the cap was refused.
    assert sorted(results) == list(range(STREAMS))
    assert all(r["status"] == 200 and r["lines"][-1] == "data: [DONE]" for r in results.values()), [
        (r["status"], r["lines"][-3:]) for r in results.values()
    ]
    assert [r.status_code for r in over_cap] == [429, 429] and over_cap[0].headers["Retry-After"]
    # The typed answers were still being written when the voice turn ended: it did not wait for them.
    assert sum(r["ended_at"] > voice_turn_ended_at for r in results.values()) >= STREAMS // 2
    # A typed answer was running when the voice turn came, and gave way to it.
    assert "gave way to a voice turn" in log, log

    def first_audio_s(turn: int) -> float:
        ends, starts = named(recorded, "speech_end"), named(recorded, "playback_start")
        return starts[turn]["t"] - ends[turn]["t"]

    def first_token_s(turn: int) -> float:
        prompts, tokens = named(recorded, "llm_prompt"), named(recorded, "llm_first_token")
        return tokens[turn]["t"] - prompts[turn]["t"]

    for turn in (1, 2):
        end = named(recorded, "speech_end")[turn]["t"]
        steps = ("transcript", "llm_prompt", "llm_first_token", "tts_first_audio", "playback_start")
        print(
            f"turn {turn + 1}:",
            ", ".join(f"{name} {named(recorded, name)[turn]['t'] - end:+.3f}" for name in steps),
            f"asr_s {transcripts[turn]['asr_s']}",
        )
    alone, with_streams = first_audio_s(1), first_audio_s(2)
    print(
        f"voice turn, end of speech to first audio: {alone:.3f} s alone, {with_streams:.3f} s with {STREAMS} "
        f"HTTP streams open; prompt to first token {first_token_s(1):.3f} s and {first_token_s(2):.3f} s"
    )
    # Without the voice-first scheduler the second turn would wait for 8 answers of up to 500 tokens (~30 s).
    assert with_streams < alone + 1.0


@pytest.mark.slow
def test_an_answer_typed_on_the_page_can_be_spoken_through_the_speaker(tmp_path):
    from faster_whisper import WhisperModel

    from voicebot.config import config_from_dict
    from voicebot.models.paths import resolve_asr

    wav = build_wav(tmp_path / "input.wav", [40.0])  # a quiet room
    trace, reply = tmp_path / "trace.jsonl", tmp_path / "reply.wav"
    options = ["--set", "profile=bundled", "--set", "http.enabled=true", "--input", str(wav)]
    voicebot = ServerProcess("run", [*options, "--output", str(reply), "--trace", str(trace)], tmp_path / "run.log")
    voicebot.wait_ready()
    try:
        assert httpx.get(f"{voicebot.url}health", timeout=5).json()["can_speak"] is True
        body = {
            "messages": [
                {"role": "system", "content": "Repeat the user's sentence exactly, with nothing else."},
                {"role": "user", "content": "The garden is full of yellow flowers."},
            ],
            "temperature": 0,
            "max_tokens": 30,
            "speak": True,
        }
        answer = httpx.post(f"{voicebot.url}v1/chat/completions", json=body, timeout=60).json()
        text = answer["choices"][0]["message"]["content"]
        wait_for(lambda: named(trace_events(trace), "turn_end"), 60, "the spoken answer's end", voicebot)
        states = [e["state"] for e in named(trace_events(trace), "state")]
    finally:
        assert voicebot.stop() == 0, voicebot.log()

    assert named(trace_events(trace), "turn_end")[0]["reason"] == "spoken"
    assert "speaking" in states and states[-1] == "idle", states
    model_dir = resolve_asr(config_from_dict({"profile": "bundled"}))
    whisper = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)
    heard = " ".join(s.text for s in whisper.transcribe(str(reply), language="en", beam_size=1)[0]).lower()
    said = {w for w in text.lower().replace(".", " ").split() if len(w) > 3}
    assert said and len(said & set(heard.replace(".", " ").replace(",", " ").split())) >= len(said) // 2, (text, heard)
