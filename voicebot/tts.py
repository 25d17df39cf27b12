"""Speech synthesis with Piper: one voice per language, text made sayable for the voice first; and its service.

`TtsService` is the stage's one owner: the local voices on their pinned worker, a remote engine when
one is configured, the time-outs and the fallback between them. Callers only ask it.

What a voice is given (`text_for_voice`) holds only what it can read aloud: no script it would spell
letter by letter (espeak-ng reads Cyrillic, Hebrew or Arabic to the English voice as letter names),
no control characters or lone surrogates (they make `.encode()` fail), no `[[` (Piper reads `[[...]]`
as raw phonemes), and symbols as the words a person would say: `2+2=4` is "2 plus 2 equals 4",
`ada@example.com` is "ada at example.com", `$5` is "5 dollars" (espeak says "dollar five"), `~10` is
"about 10". Symbols that have no word where they stand are dropped, so a run of them says nothing.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Protocol

import numpy as np

from voicebot.audio import AudioChunk
from voicebot.chunker import chars_for_language
from voicebot.config import TtsConfig
from voicebot.errors import ModelLoadError, RemoteEngineError
from voicebot.runtime.threads import PinnedWorker, iterate_in_worker
from voicebot.runtime.trace import Trace

log = logging.getLogger(__name__)

REMOTE_SPEECH_RATE_HZ = 22050
"""Piper's medium voices' rate: what a Wyoming TTS server most often sends."""

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# A word with a lowercase letter is English; an all-capitals one (GPS, USB, OK) is an acronym either voice says.
ENGLISH_WORD = re.compile(r"[A-Za-z]*[a-z][A-Za-z]*")
LEADING_PUNCTUATION = re.compile(r"^[\s.,;:!?、，。；：！？)）」』》\]-]+")
WHITESPACE = re.compile(r"\s+")
# From 13 to 32 digits espeak says "nonillion"; a person reads such a number digit by digit. Past that espeak
# itself reads digits one by one and stops after about 44, which keeps a 10 kB run of digits short.
LONG_NUMBER = re.compile(r"(?<!\d)\d{13,32}(?!\d)")
HTML_TAG = re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>")
# Compatibility forms the Chinese voice reads as they are; NFKC would make them ASCII.
ZH_KEPT_FORMS = frozenset("，！？；：（）")
# What the English voice makes of CJK punctuation once the Chinese around it is gone.
CJK_PUNCTUATION_FOR_EN = str.maketrans({"。": ".", "、": ",", "「": '"', "」": '"', "『": '"', "』": '"'})
# Punctuation each voice reads as a pause or not at all; any other symbol left over is dropped.
QUIET_PUNCTUATION = frozenset(".,;:!?'\"()-—–“”‘’")
QUIET_PUNCTUATION_ZH = QUIET_PUNCTUATION | frozenset("。，、；：！？「」『』（）《》〈〉【】…")

# Starting only where a number starts keeps every rule linear: from inside a run of 10,000 digits each match
# attempt would read to its end.
NUMBER = r"(?<![\d.,])\d+(?:[.,]\d+)*"
# A letter standing alone, as in `x + y` or `π r`: not part of a word.
VARIABLE = r"(?<![^\W\d_])[A-Za-z\u0391-\u03a9\u03b1-\u03c9](?![^\W\d_])"
OPERAND = rf"\(?(?:{NUMBER}|{VARIABLE})\)?"
OPERATOR = r"==|!=|<=|>=|[-+−*×·/÷^=<>≤≥≠≈±–]"
EXPRESSION = re.compile(rf"{OPERAND}(?:\s*(?:{OPERATOR})\s*{OPERAND})+")
OPERATOR_IN_EXPRESSION = re.compile(rf"\s*({OPERATOR})\s*")
ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
FRACTION_NAMES = {"2": ("half", "halves"), "3": ("third", "thirds"), "4": ("quarter", "quarters")}

OPERATOR_WORDS = {
    "en": {
        "+": "plus",
        "-": "minus",
        "−": "minus",
        "–": "minus",
        "*": "times",
        "×": "times",
        "·": "times",
        "/": "over",
        "÷": "divided by",
        "^": "to the power of",
        "=": "equals",
        "==": "equals",
        "!=": "is not equal to",
        "≠": "is not equal to",
        "<": "is less than",
        ">": "is greater than",
        "<=": "is at most",
        "≤": "is at most",
        ">=": "is at least",
        "≥": "is at least",
        "≈": "is about",
        "±": "plus or minus",
    },
    "zh": {
        "+": "加",
        "-": "减",
        "−": "减",
        "–": "减",
        "*": "乘",
        "×": "乘",
        "·": "乘",
        "/": "除以",
        "÷": "除以",
        "=": "等于",
        "==": "等于",
        "!=": "不等于",
        "≠": "不等于",
        "<": "小于",
        ">": "大于",
        "<=": "小于等于",
        "≤": "小于等于",
        ">=": "大于等于",
        "≥": "大于等于",
        "≈": "约等于",
        "±": "正负",
    },
}
CURRENCIES = {
    "$": ("dollar", "dollars", "美元"),
    "€": ("euro", "euros", "欧元"),
    "£": ("pound", "pounds", "英镑"),
    "¥": ("yen", "yen", "元"),
    "₹": ("rupee", "rupees", "卢比"),
    "₩": ("won", "won", "韩元"),
    "₽": ("ruble", "rubles", "卢布"),
}
# (pattern, English, Chinese). Powers go first: NFKC would turn x² into x2.
POWER_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"(?<=[\w)])²"), " squared", "的平方"),
    (re.compile(r"(?<=[\w)])³"), " cubed", "的立方"),
]
# Words for the symbols outside arithmetic, per voice; each symbol is spoken only where its pattern finds it.
SYMBOL_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(rf"({NUMBER})\s?°\s?C\b"), r"\1 degrees Celsius", r"\1摄氏度"),
    (re.compile(rf"({NUMBER})\s?°\s?F\b"), r"\1 degrees Fahrenheit", r"\1华氏度"),
    (re.compile(rf"({NUMBER})\s?°"), r"\1 degrees", r"\1度"),
    (re.compile(rf"({NUMBER})\s?%"), r"\1 percent", r"百分之\1"),
    (re.compile(rf"({NUMBER})\s?¢"), r"\1 cents", r"\1美分"),
    (re.compile(r"(?<=\w)@(?=\w)"), " at ", "艾特"),
    (re.compile(r"(?<!\S)@(?=\w)"), "at ", "艾特"),
    (re.compile(r"(?<=[A-Za-z0-9])\.(?=[A-Za-z]{2,}\b)"), ".", "点"),  # example.com: espeak's cmn drops the dot
    (re.compile(r"(?<=\w)\s*&\s*(?=\w)"), " and ", "和"),
    (re.compile(r"(?<=\w)\s*=\s*(?=\w)"), " equals ", "等于"),
    (re.compile(r"(?<=\w)\s*\+\s*(?=\w)"), " plus ", "加"),
    (re.compile(r"(?<=[A-Za-z])\+\+(?!\w)"), " plus plus", " plus plus"),
    (re.compile(r"(?<=[A-Za-z])\+(?!\w)"), " plus", " plus"),
    (re.compile(r"(?<![\w)])[-−](?=\d)"), "minus ", "负"),
    (re.compile(r"(?<=[\u3400-\u9fff])[-−](?=\d)"), "-", "负"),  # 今天-5度: no space before a negative in Chinese
    (re.compile(r"(?<![\w)])\+(?=\d)"), "plus ", "正"),
    (re.compile(r"[~≈]\s?(?=\d)"), "about ", "约"),
    (re.compile(r"#\s?(?=\d)"), "number ", "第"),
]


def language_of(text: str, default: str = "en") -> str:
    """'zh' for mostly Chinese text, 'en' for text with English words, else `default` (digits, symbols, acronyms)."""
    han = len(HAN.findall(text))
    latin = sum(len(word) for word in ENGLISH_WORD.findall(text))
    if han and han >= latin / 4:
        return "zh"
    return "en" if latin else default


def text_for_voice(text: str, voice_language: str) -> str:
    """What the voice should be given: symbols as words, nothing it would spell out or fail on; '' if nothing."""
    zh = voice_language == "zh"
    text = _without_unreadable_code_points(text)
    for pattern, english, chinese in POWER_RULES:
        text = pattern.sub(chinese if zh else english, text)
    if zh:
        text = "".join(char if char in ZH_KEPT_FORMS else unicodedata.normalize("NFKC", char) for char in text)
    else:
        text = unicodedata.normalize("NFKC", text).translate(CJK_PUNCTUATION_FOR_EN)
    text = HTML_TAG.sub(" ", text.replace("⁄", "/"))  # NFKC writes ½ as 1⁄2
    text = "".join(_readable_letters(text, _letter_zh if zh else _letter_en))
    text = LONG_NUMBER.sub(lambda run: " ".join(run.group(0)), text)
    text = EXPRESSION.sub(_spoken_expression_zh if zh else _spoken_expression_en, text)
    for pattern, english, chinese in SYMBOL_RULES:
        text = pattern.sub(chinese if zh else english, text)
    text = _CURRENCY.sub(lambda match: _spoken_money(match, zh), text)
    quiet = QUIET_PUNCTUATION_ZH if zh else QUIET_PUNCTUATION
    text = "".join(char if char.isalnum() or char.isspace() or char in quiet else " " for char in text)
    text = LEADING_PUNCTUATION.sub("", WHITESPACE.sub(" ", text)).strip()
    return text if any(char.isalnum() for char in text) else ""


def split_for_voice(text: str, max_chars: int) -> list[str]:
    """Text in parts of at most max_chars, cut at a sentence end, else a clause end, else a space, else anywhere."""
    parts = []
    while len(text) > max_chars:
        cut = _last_break(text, max_chars)
        parts.append(text[:cut].strip())
        text = text[cut:].lstrip()
    parts.append(text)
    return [part for part in parts if part]


def _last_break(text: str, max_chars: int) -> int:
    for ends, cjk_ends in ((".!?", "。！？"), (",;:", "，；：、")):
        for cut in range(max_chars, 0, -1):
            # An ASCII mark ends a sentence only before a space: 3.14 and 10:30 stay whole.
            if text[cut - 1] in cjk_ends or (text[cut - 1] in ends and text[cut].isspace()):
                return cut
    for cut in range(max_chars, 0, -1):
        if text[cut].isspace():
            return cut
    return max_chars


def _without_unreadable_code_points(text: str) -> str:
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc" or category in ("Zl", "Zp"):
            kept.append(" ")
        # Surrogates, private use, unassigned, and format characters (bidi marks, zero-width joiners, soft
        # hyphens) carry no sound; a lone surrogate would also make the text unencodable for espeak.
        elif category[0] != "C":
            kept.append(char)
    return "".join(kept)


def _letter_en(char: str) -> str:
    """The letter as the English voice can read it: espeak reads ASCII, Latin-1 and Latin Extended-A letters
    in words (café, Łódź), but spells out the rest by name (Vietnamese ễ, IPA ɛ), so those lose their accents."""
    if char.isascii() or (char < "\u0180" and unicodedata.name(char, "").startswith("LATIN ")):
        return char
    if not unicodedata.name(char, "").startswith("LATIN "):
        return ""
    return "".join(base for base in unicodedata.normalize("NFD", char) if base.isascii() and base.isalpha())


def _letter_zh(char: str) -> str:
    return char if HAN.match(char) else _letter_en(char)


def _readable_letters(text: str, letter: Callable[[str], str]) -> Iterator[str]:
    """Letters the voice reads, lone Greek letters (π, θ: espeak names them), digits as ASCII; the rest as spaces."""
    for index, char in enumerate(text):
        category = unicodedata.category(char)
        if category[0] == "L":
            if _is_greek(char) and not _is_letter_at(text, index - 1) and not _is_letter_at(text, index + 1):
                yield char
            else:
                yield letter(char) or " "
        elif category[0] == "M":
            continue  # NFKC has composed the accents of Latin letters; a mark left over is on a letter we dropped
        elif category == "Nd":
            yield str(unicodedata.decimal(char))
        elif category[0] == "N" and not char.isascii():
            yield " "
        else:
            yield char


def _is_greek(char: str) -> bool:
    return "\u0391" <= char <= "\u03c9"


def _is_letter_at(text: str, index: int) -> bool:
    return 0 <= index < len(text) and unicodedata.category(text[index])[0] in "LM"


def _spoken_expression_en(match: re.Match[str]) -> str:
    return _spoken_expression(match.group(0), "en") or match.group(0)


def _spoken_expression_zh(match: re.Match[str]) -> str:
    return _spoken_expression(match.group(0), "zh") or match.group(0)


def _spoken_expression(expression: str, language: str) -> str | None:
    """`5-3=2` as "5 minus 3 equals 2"; a lone dash or slash between numbers as a range, date or fraction."""
    # A dash alone is a range or a score (5-10 minutes, won 5 - 3), never a subtraction with nothing after it.
    operators = set(OPERATOR_IN_EXPRESSION.findall(expression))
    operands = OPERATOR_IN_EXPRESSION.split(expression)[::2]
    numbers = all(re.fullmatch(NUMBER, operand) for operand in operands)
    if operators <= {"-", "–"}:
        if not numbers:
            return None  # x-ray, A-B: a hyphen, not arithmetic
        if len(operands) == 2:
            return f"{operands[0]}到{operands[1]}" if language == "zh" else f"{operands[0]} to {operands[1]}"
        if date := ISO_DATE.fullmatch(expression):
            year, month, day = date.groups()
            if 1 <= int(month) <= 12:
                if language == "zh":
                    return f"{year}年{int(month)}月{int(day)}日"
                return f"{int(day)} {MONTHS[int(month) - 1]} {year}"
        return " ".join(operands)  # a phone number or code: its digits, without "dash"
    if operators == {"/"} and numbers:
        if len(operands) != 2:
            return " ".join(operands)  # a date such as 1/2/2024
        numerator, denominator = operands
        if language == "zh":
            return f"{denominator}分之{numerator}"
        if denominator in FRACTION_NAMES:
            return f"{'one' if numerator == '1' else numerator} {FRACTION_NAMES[denominator][numerator != '1']}"
        return f"{numerator} over {denominator}"
    words = OPERATOR_WORDS[language]
    if language == "zh":
        # 2^3 is 2的3次方: the exponent sits inside the words.
        expression = re.sub(rf"\s*\^\s*({OPERAND})", r"的\1次方", expression)
        return OPERATOR_IN_EXPRESSION.sub(lambda op: words[op.group(1)], expression)
    return OPERATOR_IN_EXPRESSION.sub(lambda op: f" {words[op.group(1)]} ", expression)


_CURRENCY = re.compile(rf"([{''.join(CURRENCIES)}])\s?({NUMBER})")


def _spoken_money(match: re.Match[str], zh: bool) -> str:
    """`$5` as "5 dollars" (espeak says "dollar five"), `$3.50` as "3 dollars 50", `¥100` as 100元."""
    one, many, chinese = CURRENCIES[match.group(1)]
    amount = match.group(2)
    if zh:
        return f"{amount}{chinese}"
    whole, _, cents = amount.partition(".")
    spoken = f"{whole} {one if whole == '1' else many}"
    return f"{spoken} {cents}" if cents else spoken


class Synthesizer:
    """Piper voices for English and Chinese, with explicit ONNX Runtime thread counts."""

    def __init__(self, voices: dict[str, Path], config: TtsConfig, threads: int) -> None:
        self.config = config
        self._voices = {language: _load_voice(path, threads) for language, path in voices.items()}
        self._warned_missing: set[str] = set()
        if not self._voices:
            raise ModelLoadError("no Piper voice configured; set models.voice_en or models.voice_zh")

    @property
    def rate_hz(self) -> int:
        """Output rate of the first voice (all replies are resampled for the device anyway)."""
        return next(iter(self._voices.values())).config.sample_rate

    def voice_for(self, text: str, language: str | None = None) -> str:
        """Which voice says `text`: its own language when clear, else `language` (the question's), else English."""
        wanted = language_of(text, default=language or "en")
        if wanted in self._voices:
            return wanted
        fallback = "en" if "en" in self._voices else next(iter(self._voices))
        if wanted not in self._warned_missing:
            setting = f" (models.voice_{wanted})" if wanted in ("en", "zh") else ""
            log.warning(
                "no Piper voice for %s%s: the %s voice says what it can of that text", wanted, setting, fallback
            )
            self._warned_missing.add(wanted)
        return fallback

    def synthesize(self, text: str, language: str | None = None) -> Iterator[AudioChunk]:
        """Audio for one piece of text, a chunk per sentence; nothing if the text has nothing to say.

        `language` is the language the question was asked in: it picks the voice for text that could be
        either (digits, symbols, an acronym), while clearly English or Chinese text keeps its own voice.
        """
        from piper import SynthesisConfig

        voice = self.voice_for(text, language)
        spoken = text_for_voice(text, voice)
        syn_config = SynthesisConfig(length_scale=self.config.length_scale, volume=self.config.volume)
        # Piper cuts only at sentence ends: a long line without one would become a single huge inference.
        for part in split_for_voice(spoken, chars_for_language(self.config.max_piece_chars, voice)):
            for chunk in self._voices[voice].synthesize(part, syn_config=syn_config):
                yield AudioChunk(chunk.audio_float_array, chunk.sample_rate)


def _load_voice(model_path: Path, threads: int):
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    config_path = Path(f"{model_path}.json")
    options = onnxruntime.SessionOptions()
    # Explicit counts: otherwise ONNX Runtime starts a thread per core and pins them, fighting the LLM.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # noqa: BLE001 - model loaders raise many unrelated types; re-raised as one line
        raise ModelLoadError(f"cannot load Piper voice {model_path}: {error}; fetch the voice again") from None
    return PiperVoice(session=session, config=config)


class RemoteSynthesizer(Protocol):
    """Speech synthesis on another machine; raises RemoteEngineError when it fails or goes quiet."""

    name: str

    def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        """Audio for `text` as it is made."""
        ...


class TtsService:
    """Speech synthesis's one owner: the remote engine first when there is one, else (or when it fails) local
    Piper on its pinned worker. Which one spoke shows only in the trace (`engine_fallback`)."""

    def __init__(
        self,
        local: Synthesizer | None = None,
        worker: PinnedWorker | None = None,
        remote: RemoteSynthesizer | None = None,
        voices: dict[str, Path] | None = None,
    ) -> None:
        if (local is None) != (worker is None) or (local is None and remote is None):
            raise ValueError("a TtsService needs local voices with their worker, a remote engine, or both")
        self._local = local
        self._worker = worker
        self._remote = remote
        self.voices = dict(voices or {})
        """The local voices' model files, by language."""

    @property
    def rate_hz(self) -> int:
        """The rate speech usually comes at: the local voice's, else a remote Piper's."""
        return self._local.rate_hz if self._local is not None else REMOTE_SPEECH_RATE_HZ

    async def synthesize(
        self, text: str, language: str | None = None, trace: Trace | None = None
    ) -> AsyncIterator[AudioChunk]:
        """Audio for one piece of text as it is made. RemoteEngineError only when the remote engine failed and
        no local voice is loaded to take over."""
        if self._remote is not None:
            try:
                async for audio in self._remote.synthesize(text, language):
                    yield audio
                return
            except RemoteEngineError as error:
                if self._local is None:
                    raise
                # The piece is said again whole: a sentence cut mid-way is harder to follow than a repeat.
                log.warning("%s; local Piper says it instead", error)
                if trace is not None:
                    trace.emit("engine_fallback", stage="tts", error=str(error))
        local, worker = self._local, self._worker
        assert local is not None and worker is not None
        async for audio in iterate_in_worker(worker, lambda: local.synthesize(text, language)):
            yield audio

    async def speak(self, text: str, language: str | None = None) -> AudioChunk | None:
        """All of `text` as one piece of audio, or None if it has nothing to say."""
        chunks = [chunk async for chunk in self.synthesize(text, language)]
        if not chunks:
            return None
        rate_hz = chunks[0].rate_hz
        return AudioChunk(np.concatenate([chunk.resampled(rate_hz).samples for chunk in chunks]), rate_hz)

    def warm_up(self) -> None:
        """Say one word with each local voice's first call done, so the first reply pays no set-up; blocking."""
        if self._local is not None and self._worker is not None:
            local = self._local
            self._worker.call(lambda: list(local.synthesize("Ready.")))
