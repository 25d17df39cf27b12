"""The install's smoke test: one line per stage on the real bundled models, and a failure named by its stage."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from voicebot.tools.smoke import STAGES, heard_word, supervise

TIMEOUT_S = 180


def smoke(*args: str) -> subprocess.CompletedProcess:
    """`python -m voicebot.tools.smoke` in a subprocess, as install.sh runs it."""
    return subprocess.run(
        [sys.executable, "-m", "voicebot.tools.smoke", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=REPO,
        env={**os.environ, "VOICEBOT_CONFIG": ""},
    )


def test_the_bundled_profile_passes_every_stage():
    result = smoke("--set", "profile=bundled")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ")[1] for line in lines[:-1]] == ["config", *STAGES], lines
    assert all(line.startswith("ok ") for line in lines[:-1]), lines
    assert lines[4].startswith("ok asr (") and "heard 'testing" in lines[4].lower(), lines[4]
    assert lines[-1].startswith("smoke test passed in "), lines


def test_a_corrupt_gguf_fails_the_llm_stage_in_one_line(tmp_path):
    corrupt = tmp_path / "broken.gguf"
    corrupt.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4096))

    result = smoke("--set", "profile=bundled", "--set", f"models.llm={corrupt}")

    assert result.returncode == 65, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith(f"FAILED llm: cannot load LLM {corrupt}"), lines
    assert [line.split(" ")[1] for line in lines[:-1]] == ["config", "models"], lines
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_model_fails_the_models_stage():
    result = smoke("--set", "profile=bundled", "--set", "models.asr=/nonexistent/whisper")

    assert result.returncode == 66, result.stdout
    assert result.stdout.splitlines()[-1].startswith("FAILED models: speech recognition model /nonexistent/whisper")


def test_a_bad_setting_fails_the_config_stage():
    result = smoke("--set", "profile=laptop")

    assert result.returncode == 78, result.stdout
    assert result.stdout.splitlines() == [result.stdout.strip()]
    assert result.stdout.startswith("FAILED config: config error in --set: profile:"), result.stdout


def fake_child(tmp_path: Path, body: str) -> list[str]:
    """A stand-in for the stage runner: reports the models stage, then does `body`."""
    script = tmp_path / "child.py"
    script.write_text(f"import os, signal, sys, time\nprint('ok models (0.0 s): fake', flush=True)\n{body}\n")
    return [sys.executable, str(script)]


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "os.kill(os.getpid(), signal.SIGILL)",
            "FAILED llm: killed by SIGILL (Illegal instruction): llama.cpp was built for instructions this CPU "
            "lacks; rebuild it here with: install.sh --rebuild-llama",
        ),
        (
            "print('ok llm (0.1 s): fake', flush=True); os.kill(os.getpid(), signal.SIGSEGV)",
            "FAILED tts: killed by SIGSEGV (Segmentation fault)",
        ),
        (
            "print('ok llm (0.1 s): fake', flush=True); sys.stderr.write('boom\\nlast words\\n'); sys.exit(3)",
            "FAILED tts: exited with code 3: last words",
        ),
    ],
    ids=["sigill-in-llm", "sigsegv-in-tts", "exit-in-tts"],
)
def test_a_child_that_dies_is_reported_with_the_stage_it_died_in(tmp_path, body, expected):
    out = io.StringIO()

    code = supervise(fake_child(tmp_path, body), out, timeout_s=30)

    assert code != 0
    assert out.getvalue().splitlines()[-1] == expected, out.getvalue()


def test_a_stage_that_hangs_is_stopped_and_named(tmp_path):
    out = io.StringIO()

    code = supervise(fake_child(tmp_path, "time.sleep(60)"), out, timeout_s=1)

    assert code != 0
    assert out.getvalue().splitlines() == ["ok models (0.0 s): fake", "FAILED llm: no result after 1 s; stopped it"]


@pytest.mark.parametrize(
    "transcript, heard",
    [
        ("testing", True),
        ("Testing.", True),
        (" TESTING, testing", True),
        ("Tasting.", True),
        ("Test in.", True),
        ("Testing 1 2 3", True),
        ("Hello.", False),
        ("Thank you.", False),
        ("", False),
    ],
)
def test_the_word_may_come_back_as_a_near_match(transcript, heard):
    assert heard_word(transcript) is heard
