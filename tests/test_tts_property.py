"""Any Unicode at all reaches the real Piper voice safely: no error, sane audio, silence for what it cannot read."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from voicebot.config import TtsConfig, config_from_dict
from voicebot.models.paths import resolve_voices
from voicebot.tts import Synthesizer, text_for_voice

# 10 kB lines without punctuation. A whole one in English is 9 minutes of speech (30 s to synthesise here),
# so test_tts.py times only its first audio; this one speaks a word in four.
LONG_MIXED = ("the quick brown fox Привет мир 😀🎉 שלום עולם 你好世界 " * 250)[:10_000]
LONG_HAN = "中文没有空格也没有标点" * 1000
# Measured worst cases, per character of input: Ⅷ (NFKC "VIII") 0.84 s, "2^2^2" 0.48 s, "1≤2≥1" 0.37 s,
# "$1$2" 0.36 s, a 30-digit number 0.27 s; English words are about 0.06 s.
MAX_SECONDS_PER_CHAR = 1.0
# Piper is given parts of at most max_piece_chars (250) characters; the slowest measured (spoken digits)
# made 33 s of audio, plain English 15 s.
MAX_CHUNK_S = 45.0

SYMBOLS = "+-−*×·/÷^=<>≤≥≠≈±%$€£¥°#&@~|\\`_[]{}\"'()…—–。，！？、；：「」《》"
CHARACTERS = st.one_of(
    st.characters(codec=None),  # any code point but surrogates
    st.characters(categories=["Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Mn"]),
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.sampled_from(SYMBOLS),
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji
    st.characters(min_codepoint=0x0590, max_codepoint=0x08FF),  # Hebrew, Arabic, Syriac, Thaana: right to left
    st.characters(min_codepoint=0x0370, max_codepoint=0x04FF),  # Greek, Cyrillic
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # Han
)
WORDS = st.sampled_from(["hello", "2+2=4", "ada@example.com", "x²", "$5", "20°C", "Привет", "שלום", "你好", "😀", " "])
TEXT = st.one_of(
    st.text(CHARACTERS, max_size=200),
    st.lists(st.one_of(WORDS, st.text(CHARACTERS, max_size=5)), max_size=30).map(" ".join),
)


@pytest.fixture(scope="module")
def synthesizer() -> Synthesizer:
    voices = resolve_voices(config_from_dict({"profile": "bundled"}))
    return Synthesizer(voices, TtsConfig(), threads=1)


@pytest.fixture(scope="module")
def voice_rate_hz() -> int:
    """The rate the voice's own config file names, not the Synthesizer's report of it."""
    voice = resolve_voices(config_from_dict({"profile": "bundled"}))["en"]
    return json.loads(voice.with_name(voice.name + ".json").read_text(encoding="utf-8"))["audio"]["sample_rate"]


def readable_by_english_voice(text: str) -> bool:
    """Whether the text has anything the English voice could say: a Latin or Greek letter, or a digit."""
    for char in unicodedata.normalize("NFKC", "".join(c for c in text if unicodedata.category(c) != "Cs")):
        name = unicodedata.name(char, "")
        if name.startswith(("LATIN ", "GREEK ")) and char.isalpha() or unicodedata.category(char) == "Nd":
            return True
    return False


@settings(max_examples=120, deadline=None)
@given(text=TEXT, language=st.sampled_from([None, "en", "zh", "fr"]))
@example(text="", language=None)
@example(text="😀🎉👍🏽🇺🇸 ❤️", language=None).via("emoji only")
@example(text="Great job 🎉 you did it 😀", language=None).via("emoji in words")
@example(text="\x00\x07\x1b[31m\x7f\u200b\u200d\ufeff\u2028", language=None).via("control characters")
@example(text="bell\x07 and\x00 null\u00ad", language="en").via("control characters in words")
@example(text=LONG_MIXED, language=None).via("10 kB line, no punctuation")
@example(text="1" * 10_000, language=None).via("10 kB number")
@example(text=LONG_HAN, language="zh").via("10 kB of Chinese, no voice for it")
@example(text="Hello 你好 Привет שלום مرحبا こんにちは 안녕 Γειά", language=None).via("mixed scripts")
@example(text="a\ud800b\udfff c \ud83d\ude00", language=None).via("lone surrogates")
@example(text="\ud800\udc00\udbff", language=None).via("surrogates only")
@example(text="שלום עולם, مرحبا بالعالم", language=None).via("right to left")
@example(text="\u202eevil\u202c and \u200fRTL marks\u200e 123", language=None).via("bidi controls")
@example(text="[[hɛloʊ]] and {braces} <b>tags</b>", language=None).via("raw phoneme markers")
@example(text="≤≥≠≈±^=<>" * 50, language=None).via("operators alone")
@example(text="1≤2≥1≠2^2=4 " * 5, language=None).via("operators between numbers")
@example(text="ⅧⅧⅧ ㎉㎉ ℡ ①②③", language=None).via("compatibility characters")
def test_any_text_gives_safe_bounded_audio(synthesizer, voice_rate_hz, text, language):
    chunks = list(synthesizer.synthesize(text, language))

    seconds = sum(len(chunk.samples) / chunk.rate_hz for chunk in chunks)
    for chunk in chunks:
        assert chunk.rate_hz == voice_rate_hz
        assert np.isfinite(chunk.samples).all()
        assert np.abs(chunk.samples).max(initial=0.0) <= 1.0
        assert len(chunk.samples) / chunk.rate_hz <= MAX_CHUNK_S
    assert seconds <= 1.0 + MAX_SECONDS_PER_CHAR * len(text)
    if not readable_by_english_voice(text):
        assert chunks == []


# Marks both voices read as a pause or not at all; the Chinese voice also has its own.
QUIET = set(".,;:!?'\"()-—–“”‘’ ")
QUIET_ZH = QUIET | set("。，、；：！？「」『』（）《》〈〉【】…")


def is_han(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff" or char >= "\U00020000"


@settings(max_examples=500, deadline=None)
@given(text=TEXT)
@example(text="a\ud800b 2+2=4 ada@example.com ¥100 50% 「你好」 [[x]] *_~|")
def test_text_for_either_voice_is_encodable_and_holds_only_what_the_voice_reads(text):
    for voice, quiet in (("en", QUIET), ("zh", QUIET_ZH)):
        spoken = text_for_voice(text, voice)

        spoken.encode("utf-8")
        assert spoken == spoken.strip()
        for char in spoken:
            letter = unicodedata.name(char, "").startswith(("LATIN ", "GREEK ")) and char.isalpha()
            assert letter or char.isdigit() or char in quiet or (voice == "zh" and is_han(char)), (voice, char, spoken)
