"""Chinese: espeak-ng Mandarin through the multilingual Whisper, Chinese replies through the chunker, and the voice.

espeak-ng's Mandarin is mostly not understood by Whisper base, so these tests check only what was measured to
hold here (see test_espeak_mandarin_is_heard_as_chinese), and test the rest of the Chinese path from text.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import espeak

from voicebot.asr import Transcriber
from voicebot.audio import INPUT_RATE_HZ, AudioChunk, read_wav
from voicebot.chunker import SentenceChunker
from voicebot.config import TtsConfig, config_from_dict
from voicebot.models.paths import resolve_asr, resolve_voices
from voicebot.tts import Synthesizer


@pytest.fixture(scope="module")
def multilingual_asr() -> Transcriber:
    config = config_from_dict({"profile": "bundled", "asr": {"language": "auto"}})
    return Transcriber(resolve_asr(config), config.asr, threads=2)


@pytest.fixture(scope="module")
def english_asr() -> Transcriber:
    config = config_from_dict({"profile": "bundled", "asr": {"language": "en"}})
    return Transcriber(resolve_asr(config), config.asr, threads=2)


@pytest.fixture(scope="module")
def two_voices() -> Synthesizer:
    """An 'en' and a 'zh' voice. Only the English joe voice is bundled, so both entries load that one file:
    which entry was chosen shows in what it was given, since the 'zh' entry is handed Chinese text."""
    joe = resolve_voices(config_from_dict({"profile": "bundled"}))["en"]
    return Synthesizer({"en": joe, "zh": joe}, TtsConfig(), threads=1)


def recovered(said: str, heard: str) -> float:
    """The share of the Chinese characters said that come back in the transcript."""
    return sum(char in heard for char in said) / len(said)


# Measured here with espeak-ng 1.51 and Whisper base (int8), over 12 short sentences at 90, 110, 140 and 175
# words a minute: the `cmn` voice (Chinese read with English rules for its pinyin) was never heard as Chinese;
# `cmn-latn-pinyin` was heard as 'zh' for 5 to 7 of the 12, with 21 to 24% of the characters back. These three
# were 'zh' at every rate. At 90 and 110 the first came back whole, the second 8 characters in 10, the third
# 2 in 5 (as traditional characters: 這個多少錢). The shares asserted leave a little room below those.
HEARD_AS_CHINESE = [("我想喝一杯茶", 0.8), ("明天早上七点叫我起床", 0.7), ("这个多少钱", 0.4)]


@pytest.mark.parametrize("speed", [90, 110])
@pytest.mark.parametrize("sentence, share", HEARD_AS_CHINESE)
def test_espeak_mandarin_is_heard_as_chinese(multilingual_asr, speech_dir, sentence, share, speed):
    audio = read_wav(espeak(sentence, speech_dir, voice="cmn-latn-pinyin", speed=speed)).resampled(INPUT_RATE_HZ)

    transcript = multilingual_asr.transcribe(audio.samples)

    assert transcript.language == "zh"
    assert recovered(sentence, transcript.text) >= share


def chunked(reply: str, tokens: list[str], language: str) -> list[str]:
    chunker = SentenceChunker(language=language)
    return [piece for token in tokens for piece in chunker.feed(token)] + chunker.flush()


REPLY = (
    "明天北京的天气是晴天转多云的，最高气温25℃，最低气温-3℃，适合出门。"
    "如果你要开车，记得打开GPS导航，大约需要30分钟。Have a nice trip!"
)


def test_a_chinese_reply_reaches_the_voices_in_pieces(two_voices):
    pieces = chunked(REPLY, list(REPLY), "zh")

    assert pieces == [
        "明天北京的天气是晴天转多云的，",
        "最高气温25℃，最低气温-3℃，适合出门。",
        "如果你要开车，记得打开GPS导航，大约需要30分钟。",
        "Have a nice trip!",
    ]
    assert [two_voices.voice_for(piece, "zh") for piece in pieces] == ["zh", "zh", "zh", "en"]


# Which voice says a piece: its own language when the piece is clearly English or Chinese; the language of the
# question when it could be either.
VOICE_FOR = [
    ("你好，世界。", None, "zh"),
    ("你好，世界。", "en", "zh"),
    ("Hello there.", "zh", "en"),
    ("我的iPhone很好用", "en", "zh"),
    ("I love 北京 in spring.", "zh", "en"),
    ("3 + 4 = 7", "zh", "zh"),
    ("3 + 4 = 7", "en", "en"),
    ("3 + 4 = 7", None, "en"),
    ("GPS。", "zh", "zh"),
    ("USB 3.0", "zh", "zh"),
    ("OK!", "en", "en"),
    ("……", "zh", "zh"),
    ("2024", "fr", "en"),  # no French voice: English
]


@pytest.mark.parametrize("text, question_language, voice", VOICE_FOR)
def test_voice_for(two_voices, text, question_language, voice):
    assert two_voices.voice_for(text, question_language) == voice


def heard(synthesizer: Synthesizer, text: str, language: str | None, asr: Transcriber) -> str:
    chunks = list(synthesizer.synthesize(text, language))
    audio = AudioChunk(np.concatenate([chunk.samples for chunk in chunks]), chunks[0].rate_hz)
    return re.sub(r"[^\w\s]", "", asr.transcribe(audio.resampled(INPUT_RATE_HZ).samples).text.lower())


@pytest.mark.parametrize(
    "text, question_language, entry",
    [("3 + 4 = 7", "zh", "zh"), ("3 + 4 = 7", "en", "en"), ("3 + 4 = 7", None, "en"), ("Hello there.", "zh", "en")],
)
def test_synthesis_uses_the_chosen_voice(two_voices, english_asr, text, question_language, entry):
    # The 'zh' entry is given "3加4等于7", which the English joe voice reads as "3 Chinese letter 4 ...";
    # the 'en' entry is given "3 plus 4 equals 7". Of 20 renderings each, tiny.en heard "chinese" in all 20 from
    # the 'zh' entry (once "chinese litter") and in none from the 'en' one.
    words = heard(two_voices, text, question_language, english_asr)

    assert ("chinese" in words) == (entry == "zh")


def test_chinese_text_is_silent_without_a_chinese_voice():
    english_only = Synthesizer(resolve_voices(config_from_dict({"profile": "bundled"})), TtsConfig(), threads=1)

    assert list(english_only.synthesize("你好，世界。", "zh")) == []
    assert english_only.voice_for("3 + 4 = 7", "zh") == "en"
    assert list(english_only.synthesize("3 + 4 = 7", "zh"))
