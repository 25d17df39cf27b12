"""The voice loop with its speech recognition and TTS on another voicebot, over Wyoming (a real peer).

The same spoken question is answered all-local and then with ASR and TTS on `voicebot wyoming`,
with the first-audio latency of each; then the Wyoming server dies mid-turn and the local models
take over, and the trace says so.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import build_wav, espeak, named, trace_events
from http_server import ServerProcess
from llama_peer import LlamaServer
from wyoming_peer import WyomingProcess

QUESTION = "What is the capital of France?"


def run_voicebot(folder: Path, wav: Path, *options: str) -> tuple[int, str, list[dict]]:
    folder.mkdir()
    trace = folder / "trace.jsonl"
    settings = ["--set", "profile=bundled", "--set", "llm.seed=3", "--set", "llm.max_reply_tokens=60", *options]
    voicebot = ServerProcess(
        "run", [*settings, "--input", str(wav), "--output", str(folder / "reply.wav"), "--trace", str(trace)],
        folder / "run.log",
    )  # fmt: skip
    code = voicebot.process.wait(timeout=150)
    log = voicebot.log()
    voicebot.stop()
    return code, log, trace_events(trace)


def first_audio_s(trace: list[dict]) -> float:
    return named(trace, "playback_start")[0]["t"] - named(trace, "speech_end")[0]["t"]


@pytest.fixture
def question_wav(tmp_path, speech_dir):
    wake, question = espeak("hey jarvis", speech_dir), espeak(QUESTION, speech_dir)
    return build_wav(tmp_path / "input.wav", [1.0, wake, 0.3, question, 8.0])


def remote(server: WyomingProcess, fallback: bool) -> list[str]:
    return [
        "--set", "asr.backend=wyoming",
        "--set", f"asr.url=tcp://127.0.0.1:{server.ports['asr']}",
        "--set", f"asr.fallback={str(fallback).lower()}",
        "--set", "asr.timeout_s=5",
        "--set", "tts.backend=wyoming",
        "--set", f"tts.url=tcp://127.0.0.1:{server.ports['tts']}",
        "--set", f"tts.fallback={str(fallback).lower()}",
        "--set", "tts.timeout_s=3",
    ]  # fmt: skip


@pytest.mark.slow
def test_asr_and_tts_on_another_voicebot_answer_as_the_local_ones_do(tmp_path, question_wav):
    server = WyomingProcess(tmp_path / "wyoming.log").wait_ready()
    try:
        local_code, local_log, local = run_voicebot(tmp_path / "local", question_wav)
        remote_code, remote_log, remote_trace = run_voicebot(
            tmp_path / "remote", question_wav, *remote(server, fallback=False)
        )
        llama = LlamaServer(tmp_path / "llama.log")
        try:
            llm = ["--set", "llm.backend=openai", "--set", f"llm.url={llama.url}", "--set", "llm.fallback=false"]
            all_code, all_log, all_remote = run_voicebot(
                tmp_path / "all-remote", question_wav, *remote(server, fallback=False), *llm
            )
        finally:
            llama.stop()
    finally:
        server.stop()

    assert local_code == 0 and remote_code == 0 and all_code == 0, remote_log + all_log
    assert named(all_remote, "llm_prompt")[0]["backend"] == "openai" and llama.requests() == 1
    for trace in (local, remote_trace, all_remote):
        assert [e["reason"] for e in named(trace, "turn_end")] == ["answered"]
        assert "capital" in named(trace, "transcript")[0]["text"].lower()
    assert not named(remote_trace, "engine_fallback")
    # The remote server really did the work: its log shows a transcription and syntheses.
    wyoming_log = server.log()
    assert "transcribed in" in wyoming_log and "characters as" in wyoming_log, wyoming_log
    reply = (tmp_path / "remote" / "reply.wav").stat().st_size
    assert reply > 20_000, "the remote TTS's answer is missing from the reply"
    print(
        f"first audio after the end of the question: all-local {first_audio_s(local):.3f} s, "
        f"ASR and TTS over Wyoming {first_audio_s(remote_trace):.3f} s, "
        f"and with the LLM on llama_cpp.server too {first_audio_s(all_remote):.3f} s"
    )


@pytest.mark.slow
def test_a_wyoming_server_killed_mid_turn_hands_over_to_the_local_models(tmp_path, question_wav):
    server = WyomingProcess(tmp_path / "wyoming.log").wait_ready()
    folder = tmp_path / "run"
    folder.mkdir()
    trace = folder / "trace.jsonl"
    settings = ["--set", "profile=bundled", "--set", "llm.seed=3", *remote(server, fallback=True)]
    voicebot = ServerProcess(
        "run", [*settings, "--input", str(question_wav), "--output", str(folder / "reply.wav"), "--trace", str(trace)],
        folder / "run.log",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not named(trace_events(trace), "wake"):
            assert time.monotonic() < deadline and voicebot.process.poll() is None, voicebot.log()
            time.sleep(0.01)
        server.stop()  # killed while the question is being asked
        code = voicebot.process.wait(timeout=120)
        log = voicebot.log()
    finally:
        voicebot.stop()
        server.stop()

    assert code == 0, log
    turn = trace_events(trace)
    assert [e["reason"] for e in named(turn, "turn_end")] == ["answered"]
    assert {e["stage"] for e in named(turn, "engine_fallback")} == {"asr", "tts"}
    assert "capital" in named(turn, "transcript")[0]["text"].lower()
    assert "transcribing here instead" in log and "local Piper says it instead" in log
