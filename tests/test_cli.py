"""The `voicebot` command: each subcommand on real models, and one-line errors for bad input."""

from __future__ import annotations

import wave

import pytest
from conftest import data_clip, run_voicebot

BUNDLED = ["--set", "profile=bundled"]
COMMANDS = ["run", "ask", "say", "transcribe", "devices"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = run_voicebot(command, "--help")

    assert result.returncode == 0
    assert f"usage: voicebot {command}" in result.stdout and "--config" in result.stdout and "--set" in result.stdout


def test_transcribe_prints_the_words():
    result = run_voicebot("transcribe", *BUNDLED, str(data_clip("jfk.flac")))

    assert result.returncode == 0, result.stderr
    assert "ask not what your country can do for you" in result.stdout.lower()


def test_say_writes_speech(tmp_path):
    out = tmp_path / "say.wav"

    result = run_voicebot("say", *BUNDLED, "Hello from the kitchen. 你好。", "--output", str(out))

    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as spoken:
        assert spoken.getnframes() / spoken.getframerate() > 0.8


def test_ask_prints_and_speaks_the_answer(tmp_path):
    out, trace = tmp_path / "ask.wav", tmp_path / "trace.jsonl"

    result = run_voicebot(
        "ask",
        *BUNDLED,
        "--set",
        "llm.seed=1",
        "What is the capital of France?",
        "--output",
        str(out),
        "--trace",
        str(trace),
    )

    assert result.returncode == 0, result.stderr
    assert "paris" in result.stdout.lower()
    assert '"event": "playback_start"' in trace.read_text()
    with wave.open(str(out)) as spoken:
        assert spoken.getnframes() > 0


def one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("voicebot:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_pi_models_say_how_to_fetch_them_or_use_bundled(tmp_path):
    result = run_voicebot("ask", "--set", "profile=pi", "--set", f"models.dir={tmp_path}", "hi")

    line = one_line_error(result, 66)
    assert f"{tmp_path}/qwen2.5-0.5b-instruct-q4_k_m.gguf" in line
    assert "models.llm" in line and "profile=bundled" in line
    assert f"curl -fL --create-dirs -o {tmp_path}/qwen2.5-0.5b-instruct-q4_k_m.gguf https://" in line


def test_missing_voice_config_is_named(tmp_path):
    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"not a model")

    line = one_line_error(run_voicebot("say", *BUNDLED, "--set", f"models.voice_en={voice}", "hi"), 66)

    assert f"{voice}.json not found" in line


@pytest.mark.parametrize(
    "key, filename, code",
    [("models.llm", "broken.gguf", 65), ("models.voice_en", "broken.onnx", 65)],
)
def test_corrupt_model_file_is_one_line(tmp_path, key, filename, code):
    broken = tmp_path / filename
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    (tmp_path / f"{filename}.json").write_text('{"audio": {"sample_rate": 22050}}')
    command = ["ask", "hi"] if key == "models.llm" else ["say", "hi"]

    line = one_line_error(run_voicebot(command[0], *BUNDLED, "--set", f"{key}={broken}", *command[1:]), code)

    assert str(broken) in line and "cannot load" in line


def write_text(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: d / "absent.wav", "does not exist"),
        (lambda d: write_text(d / "text.wav", "not audio"), "is not a readable WAV (no RIFF/WAVE header)"),
        (lambda d: d, "Is a directory"),
    ],
)
def test_bad_input_wav_is_one_line(tmp_path, make_input, message):
    line = one_line_error(run_voicebot("transcribe", *BUNDLED, str(make_input(tmp_path))), 66)

    assert message in line


def test_oversized_question_is_refused_with_the_fix(tmp_path):
    question = "Tell me about the weather. " * 400

    command = ["ask", *BUNDLED, "--set", "llm.context_tokens=512", question, "--output", str(tmp_path / "o.wav")]

    line = one_line_error(run_voicebot(*command), 65)

    assert "too long for the LLM's context" in line and "llm.context_tokens" in line


def test_unknown_audio_device_is_one_line():
    line = one_line_error(run_voicebot("say", *BUNDLED, "--set", "audio.output_device=no-such-speaker", "hi"), 69)

    assert "audio.output_device = 'no-such-speaker'" in line


def test_unwritable_trace_is_one_line(tmp_path):
    line = one_line_error(
        run_voicebot("ask", *BUNDLED, "hi", "--trace", str(tmp_path / "no" / "such" / "dir.jsonl")), 70
    )

    assert "cannot write trace file" in line


def test_fast_needs_an_input_file():
    line = one_line_error(run_voicebot("run", *BUNDLED, "--fast"), 70)

    assert "--fast needs --input" in line
