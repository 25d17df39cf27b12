"""The whole voice loop on real models: a WAV of a wake word and a question in, a spoken answer out."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from conftest import REPO, build_wav, data_clip, espeak, run_voicebot

BUNDLED = [
    "--set",
    "profile=bundled",
    "--set",
    "llm.seed=3",
    "--set",
    "llm.temperature=0.2",
    "--set",
    "llm.max_reply_tokens=120",
]


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def first(events: list[dict], name: str) -> dict:
    matches = [e for e in events if e["event"] == name]
    assert matches, f"no {name!r} event in trace: {[e['event'] for e in events]}"
    return matches[0]


def run_assistant(tmp_path: Path, wav: Path, *options: str) -> tuple[str, list[dict]]:
    """`voicebot run` on a WAV, replies to tmp_path/reply.wav; returns its stderr and trace."""
    trace_path = tmp_path / "trace.jsonl"
    output = ["--output", str(tmp_path / "reply.wav"), "--trace", str(trace_path)]
    result = run_voicebot("run", *BUNDLED, *options, "--input", str(wav), *output)
    assert result.returncode == 0, result.stderr
    return result.stderr, read_trace(trace_path)


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3}


@pytest.fixture(scope="module")
def whisper():
    """faster-whisper tiny.en, to hear what voicebot said."""
    from faster_whisper import WhisperModel

    from voicebot.config import config_from_dict
    from voicebot.models.paths import resolve_asr

    model_dir = resolve_asr(config_from_dict({"profile": "bundled"}))
    return WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)


CASES = [
    pytest.param(
        "alexa", lambda d: data_clip("alexa_real.wav"), "Why is the sky blue?", {"blue", "sky"}, id="real-alexa"
    ),
    pytest.param(
        "hey_jarvis",
        lambda d: espeak("hey jarvis", d),
        "How do plants make food?",
        {"make", "food"},
        id="espeak-hey-jarvis",
    ),
]


@pytest.mark.parametrize("wake_model, wake_clip, question, question_words", CASES)
def test_spoken_question_gets_a_spoken_answer(
    tmp_path, speech_dir, whisper, wake_model, wake_clip, question, question_words
):
    wav = build_wav(tmp_path / "input.wav", [1.0, wake_clip(speech_dir), 0.3, espeak(question, speech_dir), 2.5])
    wake_args = [] if wake_model == "hey_jarvis" else ["--set", f"wake.models=[{wake_model}]"]

    _, events = run_assistant(tmp_path, wav, *wake_args)

    assert first(events, "wake")["model"].startswith(wake_model)
    transcript = first(events, "transcript")["text"]
    assert question_words <= words(transcript), transcript
    sentences = [e["text"] for e in events if e["event"] == "sentence"]
    assert len(sentences) >= 2, sentences
    # Speech starts while the LLM is still writing the rest of the answer.
    assert first(events, "playback_start")["t"] < first(events, "llm_done")["t"]
    # The answer may be started at the first pause, before speech_end is decided, but is heard only after it.
    order = ("wake", "speech_start", "transcript", "llm_first_token", "tts_first_audio", "playback_start")
    times = [first(events, name)["t"] for name in (*order, "playback_end", "turn_end")]
    assert times == sorted(times), times
    assert first(events, "speech_end")["t"] <= first(events, "playback_start")["t"]
    assert [e["event"] for e in events].count("transcript") == 1
    assert first(events, "turn_end")["reason"] == "answered"

    reply = tmp_path / "reply.wav"
    with wave.open(str(reply)) as spoken:
        assert spoken.getnframes() / spoken.getframerate() > 2.0
    segments, _ = whisper.transcribe(str(reply), language="en", beam_size=1)
    heard = words(" ".join(s.text for s in segments))
    said = words(" ".join(sentences))
    assert len(heard & said) >= 0.5 * len(said), (heard, said)


@pytest.mark.parametrize("clip", ["jfk.flac", "speech_long_no_wakeword.flac"])
def test_speech_without_the_wake_word_gets_no_reply(tmp_path, clip):
    _, events = run_assistant(tmp_path, data_clip(clip), "--fast")

    assert not {e["event"] for e in events} & {"wake", "transcript", "sentence", "playback_start"}, events
    with wave.open(str(tmp_path / "reply.wav")) as reply:
        assert reply.getnframes() == 0


def test_wake_word_then_silence_times_out_quietly(tmp_path, speech_dir):
    wav = build_wav(tmp_path / "input.wav", [0.5, espeak("hey jarvis", speech_dir), 6.0])

    _, events = run_assistant(tmp_path, wav, "--set", "vad.no_speech_timeout_s=2", "--fast")

    assert first(events, "wake")
    assert first(events, "turn_end")["reason"] == "no_speech"
    assert not [e for e in events if e["event"] in ("transcript", "sentence")]


def test_a_pause_mid_question_drops_the_early_answer(tmp_path, speech_dir):
    # The 0.45 s pause is past vad.early_start_s (work on an answer starts) but short of the hangover.
    question = [espeak("What is the capital", speech_dir), 0.45, espeak("of Germany?", speech_dir)]
    wav = build_wav(tmp_path / "input.wav", [1.0, espeak("hey jarvis", speech_dir), 0.3, *question, 2.5])
    vad = ["--set", "vad.hangover_s=1.0", "--set", "vad.early_start_s=0.2"]

    log, events = run_assistant(tmp_path, wav, *vad, "--log-level", "DEBUG")

    assert "dropping the early answer" in log
    transcripts = [e["text"] for e in events if e["event"] == "transcript"]
    assert len(transcripts) == 1 and {"capital", "germany"} <= words(transcripts[0]), transcripts
    assert [e["reason"] for e in events if e["event"] == "turn_end"] == ["answered"]


def test_a_whole_turn_runs_with_no_network_at_all(tmp_path, speech_dir):
    """In a network namespace of its own (only a loopback, down), nothing can phone home: the turn must not need to."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare is missing (util-linux)")
    reach_out = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
    probe = subprocess.run(["unshare", "-n", sys.executable, "-c", reach_out], capture_output=True, text=True)
    if "unshare:" in probe.stderr:
        pytest.fail(f"unshare -n does not work here: {probe.stderr.strip()}")
    assert probe.returncode != 0 and "Network is unreachable" in probe.stderr, probe.stderr
    wav = build_wav(
        tmp_path / "input.wav",
        [0.5, espeak("hey jarvis", speech_dir), 0.3, espeak("What is the capital of France?", speech_dir), 2.0],
    )
    trace = tmp_path / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}

    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "voicebot", "run", *BUNDLED, "--fast", "--input", str(wav),
         "--output", str(tmp_path / "reply.wav"), "--trace", str(trace)],
        capture_output=True, text=True, timeout=180, env=env, cwd=REPO,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    events = read_trace(trace)
    assert "capital" in first(events, "transcript")["text"].lower()
    assert first(events, "turn_end")["reason"] == "answered"
    assert [e for e in events if e["event"] == "sentence"]
