"""The voice loop with its LLM on another server: llama-cpp-python's own OpenAI-compatible server (a real peer).

A spoken question from a WAV is answered by the remote LLM; a server frozen mid-answer or killed
mid-turn hands over to the local model, and the trace says so; with no local model, the assistant
says sorry and the next turn works once the server is back.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from conftest import build_wav, espeak, named, trace_events
from http_server import ServerProcess, free_port
from llama_peer import LlamaServer

from voicebot.config import config_from_dict
from voicebot.tools.doctor import Status, check_remote_engines

QUESTION = "What is the capital of France?"


def remote_config(url: str, fallback: bool):
    return config_from_dict({"profile": "bundled", "llm": {"backend": "openai", "url": url, "fallback": fallback}})


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.01)


def run_options(tmp_path: Path, wav: Path, llm_url: str, *extra: str) -> list[str]:
    return [
        "--set", "profile=bundled",
        "--set", "llm.backend=openai",
        "--set", f"llm.url={llm_url}",
        "--set", "llm.model=smollm2",
        "--set", "llm.timeout_s=2",
        "--set", "llm.seed=3",
        "--set", "llm.max_reply_tokens=60",
        *extra,
        "--input", str(wav),
        "--output", str(tmp_path / "reply.wav"),
        "--trace", str(tmp_path / "trace.jsonl"),
    ]  # fmt: skip


@pytest.fixture
def question_wav(tmp_path, speech_dir):
    wake, question = espeak("hey jarvis", speech_dir), espeak(QUESTION, speech_dir)
    return build_wav(tmp_path / "input.wav", [1.0, wake, 0.3, question, 8.0])


def test_a_spoken_question_is_answered_by_the_remote_llm(tmp_path, question_wav):
    server = LlamaServer(tmp_path / "llama.log")
    try:
        options = run_options(tmp_path, question_wav, server.url, "--set", "llm.fallback=false")
        voicebot = ServerProcess("run", options, tmp_path / "run.log")
        code = voicebot.process.wait(timeout=120)
        log = voicebot.log()
        voicebot.stop()
        [reachable] = check_remote_engines(remote_config(server.url, fallback=False))
    finally:
        server.stop()
    [dead_with_fallback] = check_remote_engines(remote_config(server.url, fallback=True))
    [dead_alone] = check_remote_engines(remote_config(server.url, fallback=False))

    assert reachable.status is Status.OK and "serving smollm2" in reachable.found
    assert dead_with_fallback.status is Status.WARN and "the local model answers meanwhile" in dead_with_fallback.found
    assert dead_alone.status is Status.FAIL and "llm.fallback is off" in dead_alone.found
    assert code == 0, log
    trace = trace_events(tmp_path / "trace.jsonl")
    assert [e["reason"] for e in named(trace, "turn_end")] == ["answered"]
    assert named(trace, "llm_prompt")[0]["backend"] == "openai"
    assert not named(trace, "engine_fallback")
    assert "paris" in " ".join(e["text"] for e in named(trace, "sentence")).lower()
    assert server.requests() == 1
    assert "Traceback" not in log


def test_a_remote_llm_frozen_mid_answer_hands_over_to_the_local_one(tmp_path, question_wav):
    server = LlamaServer(tmp_path / "llama.log")
    frozen = False
    try:
        voicebot = ServerProcess("run", run_options(tmp_path, question_wav, server.url), tmp_path / "run.log")
        # Freeze the server the moment it starts answering (its access log line comes with the first bytes).
        wait_until(lambda: server.requests() >= 1, 60, "request to the remote LLM")
        server.process.send_signal(signal.SIGSTOP)
        frozen = True
        code = voicebot.process.wait(timeout=120)
        log = voicebot.log()
        voicebot.stop()
    finally:
        if frozen:
            server.process.send_signal(signal.SIGCONT)
        server.stop()

    assert code == 0, log
    trace = trace_events(tmp_path / "trace.jsonl")
    [fallback] = named(trace, "engine_fallback")
    assert fallback["stage"] == "llm" and "sent nothing for 2 s (llm.timeout_s)" in fallback["error"]
    assert [e["reason"] for e in named(trace, "turn_end")] == ["answered"]
    assert named(trace, "sentence"), "the local LLM said nothing"
    assert "the local LLM answers instead" in log


def test_a_remote_llm_killed_mid_turn_hands_over_to_the_local_one(tmp_path, question_wav):
    server = LlamaServer(tmp_path / "llama.log")
    try:
        voicebot = ServerProcess("run", run_options(tmp_path, question_wav, server.url), tmp_path / "run.log")
        wait_until(lambda: named(trace_events(tmp_path / "trace.jsonl"), "wake"), 60, "wake word")
        server.stop()  # killed while the question is being asked
        code = voicebot.process.wait(timeout=120)
        log = voicebot.log()
        voicebot.stop()
    finally:
        server.stop()

    assert code == 0, log
    trace = trace_events(tmp_path / "trace.jsonl")
    [fallback] = named(trace, "engine_fallback")
    assert fallback["stage"] == "llm" and "cannot reach the LLM server" in fallback["error"]
    assert [e["reason"] for e in named(trace, "turn_end")] == ["answered"]
    assert "paris" in " ".join(e["text"] for e in named(trace, "sentence")).lower()


def test_with_no_local_llm_a_dead_server_gets_an_apology_and_the_next_turn_works(tmp_path, speech_dir):
    wake, question = espeak("hey jarvis", speech_dir), espeak(QUESTION, speech_dir)
    wav = build_wav(tmp_path / "input.wav", [1.0, wake, 0.3, question, 14.0, wake, 0.3, question, 8.0])
    port = free_port()
    options = run_options(tmp_path, wav, f"http://127.0.0.1:{port}/v1", "--set", "llm.fallback=false")
    voicebot = ServerProcess("run", options, tmp_path / "run.log")
    server = None
    try:
        wait_until(lambda: named(trace_events(tmp_path / "trace.jsonl"), "turn_end"), 60, "first turn's end")
        server = LlamaServer(tmp_path / "llama.log", port=port)  # back before the second question
        code = voicebot.process.wait(timeout=120)
        log = voicebot.log()
        voicebot.stop()
    finally:
        if server is not None:
            server.stop()

    assert code == 0, log
    trace = trace_events(tmp_path / "trace.jsonl")
    assert [e["reason"] for e in named(trace, "turn_end")] == ["error", "answered"]
    assert [e["language"] for e in named(trace, "apology")] == ["en"]
    spoken = [e["text"] for e in named(trace, "sentence")]
    assert spoken[0] == "Sorry, I can't answer right now." and "paris" in " ".join(spoken[1:]).lower()
    assert "error" in [e["name"] for e in named(trace, "earcon")]
    assert f"cannot reach the LLM server at http://127.0.0.1:{port}/v1" in log
