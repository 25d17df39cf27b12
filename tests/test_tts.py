"""Piper synthesis, and the text that reaches it."""

from __future__ import annotations

import numpy as np
import pytest

from voicebot.config import TtsConfig, config_from_dict
from voicebot.models import resolve_voices
from voicebot.tts import Synthesizer, language_of, text_for_voice


@pytest.fixture(scope="module")
def synthesizer() -> Synthesizer:
    voices = resolve_voices(config_from_dict({"profile": "bundled"}))
    return Synthesizer(voices, TtsConfig(), threads=1)


@pytest.mark.parametrize(
    "text, language",
    [
        ("Hello there.", "en"),
        ("你好，今天天气很好。", "zh"),
        ("我喜欢Python编程。", "zh"),
        ("I love 北京 in spring.", "en"),
        ("3.14", "en"),
    ],
)
def test_language_of(text, language):
    assert language_of(text) == language


@pytest.mark.parametrize(
    "text, voice, spoken",
    [
        ("Hello *world*", "en", "Hello world"),
        ("Cost is <5> | ~10", "en", "Cost is 5 10"),
        ("我爱北京。Beijing is great!", "en", "Beijing is great!"),
        ("你好", "en", ""),
        ("你好，世界。", "zh", "你好，世界。"),
        ("***", "en", ""),
    ],
)
def test_text_for_voice(text, voice, spoken):
    assert text_for_voice(text, voice) == spoken


def test_synthesis_gives_audio_at_the_voice_rate(synthesizer):
    chunks = list(synthesizer.synthesize("The capital of France is Paris."))

    audio = np.concatenate([c.samples for c in chunks])
    assert chunks[0].rate_hz == synthesizer.rate_hz == 22050
    assert 1.0 < len(audio) / 22050 < 4.0
    assert np.abs(audio).max() > 0.3


@pytest.mark.parametrize("text", ["", "   ", "你好世界", "🙂🙂", "***", "\u200b\u200d"])
def test_text_with_nothing_to_say_gives_no_audio(synthesizer, text):
    assert list(synthesizer.synthesize(text)) == []


@pytest.mark.parametrize(
    "text", ["a" * 2000, "Ünïcödé façade — naïve café.", "123456789012345678901234567890", "\x00\x07 odd control chars"]
)
def test_odd_text_is_spoken_without_error(synthesizer, text):
    chunks = list(synthesizer.synthesize(text))
    assert chunks and all(np.isfinite(c.samples).all() for c in chunks)
