"""The `voicebot` command: each subcommand on real models, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import wave

import pytest
from conftest import REPO, data_clip, run_voicebot

BUNDLED = ["--set", "profile=bundled"]
COMMANDS = ["run", "ask", "say", "chat", "transcribe", "devices"]


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
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    # What is printed is what was spoken, piece by piece (the words themselves are a 135M model's to choose).
    spoken = " ".join(e["text"] for e in events if e["event"] == "sentence")
    assert spoken and set(re.findall(r"\w+", spoken)) <= set(re.findall(r"\w+", result.stdout)), (spoken, result.stdout)
    assert "playback_start" in {e["event"] for e in events}
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
    assert "get them all with: voicebot models fetch" in line


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
        (lambda d: write_text(d / "text.wav", "not audio"), "is not readable audio (Format not recognised)"),
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


@pytest.mark.parametrize("command", ["say", "ask"])
@pytest.mark.parametrize("text", ["", "   ", "🙂🙂", "..."])
def test_text_with_nothing_to_say_is_refused(command, text, tmp_path):
    line = one_line_error(run_voicebot(command, *BUNDLED, text, "--output", str(tmp_path / "o.wav")), 70)

    assert f"{command}: the text {text!r} has nothing to say" in line


def test_very_long_text_is_capped_like_an_answer_with_a_warning(tmp_path):
    out = tmp_path / "long.wav"
    text = "The kettle is on and the bread is in the oven. " * 425  # about 20,000 characters

    result = run_voicebot("say", *BUNDLED, "--set", "conversation.max_reply_s=10", text, "--output", str(out))

    assert result.returncode == 0, result.stderr
    assert "text capped at 10 s of speech (conversation.max_reply_s)" in result.stderr
    with wave.open(str(out)) as spoken:
        seconds = spoken.getnframes() / spoken.getframerate()
    assert 5.0 < seconds <= 10 * 1.3, seconds


@pytest.mark.parametrize(
    "args, message",
    [
        (["--echo", "0.5,30"], "--echo needs --input in real time"),
        (["--echo", "loud", "--input", "IN"], "--echo expects GAIN[,DELAY_MS]"),
        (["--echo", "0.5,30", "--input", "IN", "--fast"], "--echo needs --input in real time"),
    ],
)
def test_bad_echo_option_is_one_line(tmp_path, args, message):
    wav = tmp_path / "in.wav"
    wav.write_bytes((REPO / "tests" / "data" / "alexa_real.wav").read_bytes())
    args = [str(wav) if arg == "IN" else arg for arg in args]

    line = one_line_error(run_voicebot("run", *BUNDLED, *args, "--output", str(tmp_path / "o.wav")), 70)

    assert message in line


def test_chat_output_needs_speak(tmp_path):
    line = one_line_error(run_voicebot("chat", *BUNDLED, "--output", str(tmp_path / "o.wav")), 70)

    assert "--output needs --speak" in line
