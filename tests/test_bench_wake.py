"""The false-wake benchmark, on a few minutes' worth of its stream: the shape of its report, and that it still
catches the wake word it is meant to leave alone everywhere else."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
from conftest import REPO, TIMEOUT_S

from voicebot.tools import bench_wake, wake_texts

KINDS = {"en-piper", "en-espeak", "zh-espeak", "en-recorded", "zh-recorded", "near-miss", "noise"}


def test_a_tiny_run_reports_false_accepts_per_hour_and_catches_the_wake_words(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebot.tools.bench_wake",
            "--set",
            "profile=bundled",
            "--hours",
            "0.02",
            "--recall",
            "short",
            "--cache",
            str(tmp_path / "cache"),
            "--json",
            str(tmp_path / "wake.json"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "not the DiPCo far-field set" in result.stdout
    report = json.loads((tmp_path / "wake.json").read_text(encoding="utf-8"))
    stream = report["stream"]

    assert {row["name"] for row in stream["by_kind"]} == KINDS
    assert all(row["hours"] > 0 for row in stream["by_kind"])
    assert stream["speech_hours"] >= 0.02
    assert math.isclose(sum(row["speech_hours"] for row in stream["by_kind"]), stream["speech_hours"], abs_tol=1e-3)
    assert next(row for row in stream["by_kind"] if row["name"] == "noise")["speech_hours"] == 0
    assert math.isclose(sum(row["hours"] for row in stream["by_kind"]), stream["hours"], abs_tol=1e-3)
    assert {row["name"] for row in stream["by_language"] if row["hours"] > 0} == {"en", "zh", "-"}
    assert stream["false_accepts"] == len(stream["heard"]) == sum(row["false_accepts"] for row in stream["by_kind"])
    assert math.isfinite(stream["per_hour"])
    assert stream["per_hour"] == round(stream["false_accepts"] / stream["hours"], 3)
    for heard in stream["heard"]:
        assert re.fullmatch(r"\d+:\d\d:\d\d\.\d", heard["at"]) and heard["kind"] in KINDS

    recall = {row["set"]: row for row in report["recall"]}
    assert set(recall) == {
        "hey jarvis, Piper",
        "hey jarvis, espeak-ng",
        "alexa, real (alexa_real.wav)",
        "hey mycroft, real (hey_mycroft_real.wav)",
    }
    assert report["recall_mixes"] == ["quiet", "kitchen 10 dB"]
    for row in recall.values():
        assert row["clips"] == 2 and row["caught"] == row["clips"] - len(row["missed"])
        assert row["by_mix"]["quiet"] == {"clips": 1, "caught": 1}, row
    assert recall["hey jarvis, Piper"]["model"] == "hey_jarvis"
    assert recall["alexa, real (alexa_real.wav)"]["model"] == "alexa"
    assert report["speed"]["stream_x_realtime"] > 1.0
    assert report["config"]["threshold"] == 0.5 and report["config"]["echo_canceller"] == "speex"


class _Lengths:
    """Clip lengths that depend only on the text, in place of the voices."""

    piper_voice = "voice"

    def piper(self, length_scale: float) -> bench_wake.Voice:
        return bench_wake.Voice("piper", self.piper_voice, length_scale)

    def say(self, said: bench_wake.Said) -> np.ndarray:
        return np.zeros(800 * (1 + len(said.text) % 7), np.float32)


def test_the_stream_is_planned_from_the_seed():
    first = bench_wake.plan_stream(0.05, 7, _Lengths(), recordings=False)
    again = bench_wake.plan_stream(0.05, 7, _Lengths(), recordings=False)
    other = bench_wake.plan_stream(0.05, 8, _Lengths(), recordings=False)

    assert first == again and first != other
    assert {scene.kind for scene in first} == KINDS - {"en-recorded", "zh-recorded"}
    assert all(scene.samples % bench_wake.FRAME_SAMPLES == 0 for scene in first)
    assert [scene.start_sample for scene in first[1:]] == [s.start_sample + s.samples for s in first[:-1]]


def test_no_text_says_the_wake_word():
    texts = wake_texts.ENGLISH + wake_texts.CHINESE + wake_texts.NEAR_MISSES
    assert len(set(texts)) == len(texts) > 300
    assert [text for text in texts if re.search(r"jarv|jerv|贾维斯", text, re.IGNORECASE)] == []
