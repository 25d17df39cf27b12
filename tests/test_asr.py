"""faster-whisper on real speech, in English and Chinese, and its guard against hallucinations."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import data_clip, espeak

from voicebot.asr import Transcriber, is_junk
from voicebot.audio import INPUT_RATE_HZ, read_wav
from voicebot.config import AsrConfig, config_from_dict
from voicebot.errors import ConfigError
from voicebot.models import resolve_asr


def transcriber(language: str) -> Transcriber:
    config = config_from_dict({"profile": "bundled", "asr": {"language": language}})
    return Transcriber(resolve_asr(config), config.asr, threads=2)


@pytest.fixture(scope="module")
def english() -> Transcriber:
    return transcriber("en")


def test_real_speech_is_transcribed(english):
    audio = read_wav(data_clip("jfk.flac")).resampled(INPUT_RATE_HZ).samples

    text = english.transcribe(audio).text.lower()

    assert "ask not what your country can do for you" in text


@pytest.mark.parametrize(
    "audio",
    [
        pytest.param(np.zeros(3 * INPUT_RATE_HZ, np.float32), id="silence"),
        pytest.param(np.random.default_rng(1).normal(0, 0.05, 3 * INPUT_RATE_HZ).astype(np.float32), id="noise"),
        pytest.param(np.zeros(INPUT_RATE_HZ // 10, np.float32), id="too-short"),
    ],
)
def test_silence_and_noise_give_an_empty_transcript(english, audio):
    assert english.transcribe(audio).text == ""


@pytest.mark.parametrize(
    "text, junk",
    [
        ("", True),
        ("  ...  ", True),
        ("Thank you.", True),
        ("Thanks for watching!", True),
        ("[Music]", True),
        ("谢谢观看", True),
        ("What is the weather like?", False),
        ("今天天气怎么样？", False),
        ("Thank you for the weather report, what about tomorrow?", False),
    ],
)
def test_junk_transcripts(text, junk):
    assert is_junk(text) is junk


def test_auto_language_uses_the_multilingual_model_and_detects_english():
    auto = transcriber("auto")
    audio = read_wav(data_clip("jfk.flac")).resampled(INPUT_RATE_HZ).samples

    transcript = auto.transcribe(audio)

    assert transcript.language == "en"
    assert "your country" in transcript.text.lower()


def test_a_whisper_loop_is_dropped(speech_dir):
    # espeak-ng's Mandarin is too robotic for Whisper base, which loops on it ("天天天天..."):
    # exactly the failure the compression-ratio guard exists for.
    zh = transcriber("zh")
    audio = (
        read_wav(espeak("今天天气很好", speech_dir, voice="cmn-latn-pinyin", speed=120))
        .resampled(INPUT_RATE_HZ)
        .samples
    )

    assert len(zh.transcribe(audio).text) < 20


def test_english_only_model_refuses_chinese():
    config = config_from_dict({"profile": "bundled"})
    with pytest.raises(ConfigError, match=r"asr.language = 'zh' but .* is an English-only model"):
        Transcriber(resolve_asr(config), AsrConfig(language="zh"), threads=1)
