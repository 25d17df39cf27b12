"""The voice loop with its speech recognition and TTS on another voicebot, over Wyoming (a real peer).

The same spoken question is answered all-local and then with ASR and TTS on `voicebot wyoming`,
with the first-audio latency of each; then the Wyoming server dies mid-turn and the local models
take over, and the trace says so.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from conftest import build_wav, espeak
from http_server import ServerProcess, free_port

QUESTION = "What is the capital of France?"


class WyomingProcess(ServerProcess):
    """`voicebot wyoming` on free ports, ready once its speech-to-text port accepts connections."""

    def __init__(self, log_path: Path) -> None:
        self.asr_port, self.tts_port, self.handle_port = free_port(), free_port(), free_port()
        ports = [
            "--set", f"wyoming.asr_port={self.asr_port}",
            "--set", f"wyoming.tts_port={self.tts_port}",
            "--set", f"wyoming.handle_port={self.handle_port}",
        ]  # fmt: skip
        super().__init__("wyoming", ["--set", "profile=bundled", *ports], log_path)

    def wait_ready(self) -> WyomingProcess:
        deadline = time.monotonic() + 90
        for port in (self.asr_port, self.tts_port):
            while True:
                assert self.process.poll() is None, self.log()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"voicebot wyoming did not listen:\n{self.log()}"
                    time.sleep(0.2)
        return self


def events(trace: Path) -> list[dict]:
    if not trace.exists():
        return []
    return [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def named(trace_events: list[dict], name: str) -> list[dict]:
    return [e for e in trace_events if e["event"] == name]


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
    return code, log, events(trace)


def first_audio_s(trace: list[dict]) -> float:
    return named(trace, "playback_start")[0]["t"] - named(trace, "speech_end")[0]["t"]


@pytest.fixture
def question_wav(tmp_path, speech_dir):
    wake, question = espeak("hey jarvis", speech_dir), espeak(QUESTION, speech_dir)
    return build_wav(tmp_path / "input.wav", [1.0, wake, 0.3, question, 8.0])


def remote(server: WyomingProcess, fallback: bool) -> list[str]:
    return [
        "--set", "asr.backend=wyoming",
        "--set", f"asr.url=tcp://127.0.0.1:{server.asr_port}",
        "--set", f"asr.fallback={str(fallback).lower()}",
        "--set", "asr.timeout_s=5",
        "--set", "tts.backend=wyoming",
        "--set", f"tts.url=tcp://127.0.0.1:{server.tts_port}",
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
    finally:
        server.stop()

    assert local_code == 0 and remote_code == 0, remote_log
    for trace in (local, remote_trace):
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
        f"ASR and TTS over Wyoming {first_audio_s(remote_trace):.3f} s"
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
        while not named(events(trace), "wake"):
            assert time.monotonic() < deadline and voicebot.process.poll() is None, voicebot.log()
            time.sleep(0.01)
        server.stop()  # killed while the question is being asked
        code = voicebot.process.wait(timeout=120)
        log = voicebot.log()
    finally:
        voicebot.stop()
        server.stop()

    assert code == 0, log
    turn = events(trace)
    assert [e["reason"] for e in named(turn, "turn_end")] == ["answered"]
    assert {e["stage"] for e in named(turn, "engine_fallback")} == {"asr", "tts"}
    assert "capital" in named(turn, "transcript")[0]["text"].lower()
    assert "transcribing here instead" in log and "local Piper says it instead" in log
