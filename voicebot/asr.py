"""Speech recognition: Whisper (faster-whisper's model, int8 on the CPU), guarded against hallucinated text; and its
service.

The Transcriber drives the model through the CTranslate2 API that faster-whisper loads, rather than through
`WhisperModel.transcribe`, which pads every question to Whisper's 30-second window: the encoder sees a window
sized to the utterance instead (never under WINDOW_FLOOR_S, never over 30 s), and one encoder pass serves
both language detection and decoding. Chinese comes out in the script its readers use (asr.chinese_script).
Why the floor and the margin are what they are: docs/models.md.

`AsrService` is the stage's one owner: the local model on its pinned worker, a remote engine when
one is configured, the time-outs and the fallback between them. Callers only ask it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from voicebot.config import AsrConfig
from voicebot.errors import ConfigError, ModelLoadError, RemoteEngineError
from voicebot.runtime.threads import PinnedWorker
from voicebot.runtime.trace import Trace

log = logging.getLogger(__name__)

# What Whisper is known to "hear" in silence, noise or music (from its training subtitles).
HALLUCINATIONS = {
    "you",
    "thank you",
    "thanks for watching",
    "thank you for watching",
    "thanks for watching and see you next time",
    "please subscribe",
    "subtitles by the amaraorg community",
    "music",
    "applause",
    "silence",
    "bye",
    "字幕",
    "谢谢观看",
    "谢谢大家",
    "字幕由amaraorg社区提供",
    "请不吝点赞订阅转发打赏支持明镜与点点栏目",
}
MIN_AUDIO_S = 0.3
MAX_COMPRESSION_RATIO = 2.4  # Above this a segment repeats itself: Whisper stuck in a loop.
WHISPER_WINDOW_S = 30.0
# Measured on real and synthetic English and Mandarin (docs/models.md): with windows of 5 or 8 s Whisper
# repeated itself on short questions, with 10 s on none; with the window ending right at the speech, or
# 0.5 to 1 s after it, it repeated itself on some longer ones, with 2 s on none.
WINDOW_FLOOR_S = 10.0
WINDOW_MARGIN_S = 2.0
# Whisper tiny (its weights under this size; base's are 145 MB) is not so steady: through the pipeline, tiny.en
# misheard 6 of 24 cuts of a Piper command and 8 of 12 of an espeak-ng question in the 10-s window that it heard
# right in the 30-s one, where base heard the same in both. So asr.window_s auto keeps 30 s for it.
TINY_WEIGHTS_BYTES = 100_000_000
# A budget for the decoder: real speech came to at most 6.3 tokens per second of audio, while a loop runs on
# to the 224 tokens CTranslate2 allows. About three times the fastest speech stops a loop early, which on a
# Pi saves seconds.
MAX_TOKENS_PER_S = 20.0
MIN_TOKEN_BUDGET = 8
# A phrase said again straight after itself is taken for the start of a loop ("What time is it? What time is
# it?", "No? No?"), once it is a word or more, or two CJK characters or more: Chinese doubles single
# characters into words of their own (谢谢, 看看, 天天).
MIN_REPEATED_CJK = 2
ChineseScriptName = Literal["simplified", "traditional", "as_heard"]


@dataclass(frozen=True)
class Transcript:
    """What was said, in which language; empty text when nothing real was heard."""

    text: str
    language: str


def _normalized(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def is_junk(text: str) -> bool:
    """True for transcripts that are not a question: empty, no letters or digits, or a known hallucination."""
    key = _normalized(text)
    if not key or not any(unicodedata.category(char)[0] in "LN" for char in key):
        return True
    return key in {_normalized(phrase) for phrase in HALLUCINATIONS}


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_UNITS = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
_UNITS_CJK = re.compile(f"[{_CJK}]")


def text_units(text: str) -> list[str]:
    """The words of `text`, lower-cased, with each CJK character a word of its own."""
    return _UNITS.findall(text.lower())


def repeats_itself(text: str) -> bool:
    """True when a phrase comes again straight after itself: a word or more, or MIN_REPEATED_CJK CJK
    characters or more. This is how Whisper's loops begin; real speech that does it is decoded once more."""
    units = text_units(text)
    # A word weighs as much as MIN_REPEATED_CJK characters.
    weights = [1 if _UNITS_CJK.fullmatch(unit) else MIN_REPEATED_CJK for unit in units]
    for period in range(1, len(units) // 2 + 1):
        run, weight = 0, 0  # units in a row equal to the unit one period before them, and what they weigh
        for index in range(period, len(units)):
            if units[index] == units[index - period]:
                run, weight = run + 1, weight + weights[index]
                if run >= period and weight >= MIN_REPEATED_CJK:
                    return True
            else:
                run, weight = 0, 0
    return False


def compression_ratio(text: str) -> float:
    """How much zlib shrinks the text: high for text that repeats itself (faster-whisper's measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class ChineseScript:
    """Chinese transcripts in the configured script (asr.chinese_script), converted with OpenCC."""

    def __init__(self, script: ChineseScriptName) -> None:
        self.script = script
        self._converter = None
        if script != "as_heard":
            import opencc

            self._converter = opencc.OpenCC("t2s.json" if script == "simplified" else "s2t.json")

    def __call__(self, transcript: Transcript) -> Transcript:
        """The transcript in this script, if it is Chinese; any other transcript as it is."""
        if self._converter is None or not transcript.language.startswith("zh"):
            return transcript
        return Transcript(self._converter.convert(transcript.text), transcript.language)


@dataclass(frozen=True)
class _Decoded:
    """One window's decoding and what the guards need to judge it."""

    text: str
    language: str
    audio_s: float
    window_s: float
    tokens: int
    cut_short: bool
    """The decoder used up its budget: far more text than the audio could hold."""
    no_speech_prob: float
    avg_logprob: float


class Transcriber:
    """Whisper on the CPU, int8, with a fixed thread count; each question in a window sized to it."""

    def __init__(self, model_dir: Path, config: AsrConfig, threads: int) -> None:
        from faster_whisper import WhisperModel

        self.config = config
        try:
            self._whisper = WhisperModel(
                str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1
            )
        except Exception as error:  # noqa: BLE001 - model loaders raise many unrelated types; re-raised as one line
            raise ModelLoadError(f"cannot load speech recognition model {model_dir}: {error}") from None
        self._multilingual = self._whisper.model.is_multilingual
        if config.language != "en" and not self._multilingual:
            raise ConfigError(
                f"config error: asr.language = {config.language!r} but {model_dir} is an English-only model; "
                "set asr.language: en or use a multilingual Whisper model (models.asr)"
            )
        self._frames_per_s = self._whisper.frames_per_second
        tiny = (model_dir / "model.bin").stat().st_size < TINY_WEIGHTS_BYTES
        self.auto_floor_s = WHISPER_WINDOW_S if tiny else WINDOW_FLOOR_S
        """The window's floor with asr.window_s auto: 30 s for Whisper tiny, WINDOW_FLOOR_S for larger ones."""
        self._tokenizers: dict[str, tuple] = {}
        self._script = ChineseScript(config.chinese_script)

    def with_window(self, window_s: float | Literal["auto"]) -> Transcriber:
        """The same loaded model with another asr.window_s (1 to 30 s, or auto): for measuring windows."""
        if window_s != "auto" and not (isinstance(window_s, (int, float)) and 1 <= window_s <= WHISPER_WINDOW_S):
            raise ValueError(f"window_s must be 'auto' or 1 to {WHISPER_WINDOW_S:g} seconds, not {window_s!r}")
        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, window_s=window_s)
        return other

    def window_for(self, audio_s: float) -> float:
        """The window the encoder sees for `audio_s` seconds of audio (of at most 30 s)."""
        floor_s = self.auto_floor_s if self.config.window_s == "auto" else float(self.config.window_s)
        return min(WHISPER_WINDOW_S, max(floor_s, audio_s + WINDOW_MARGIN_S))

    def _is_silence(self, no_speech_prob: float, avg_logprob: float) -> bool:
        """Whisper's own rule: silence only if the no-speech token is likely and the words are also unsure.

        A high no_speech_prob alone is not enough: Whisper raises it for one-word commands such as "Stop."
        (0.3 to 0.5 from tiny.en, against under 0.1 for a sentence) even when it is sure of the word.
        """
        return no_speech_prob > self.config.no_speech_prob_max and avg_logprob < self.config.avg_logprob_min

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe 16 kHz float32 speech; what is silence or a repeating loop is dropped."""
        if len(audio) < MIN_AUDIO_S * 16000:
            return Transcript("", self.config.language)
        features = self._whisper.feature_extractor(audio)
        # The extractor's last frame covers only the 10 ms it pads the audio with; faster-whisper drops it too.
        features = features[:, : features.shape[-1] - 1]
        language = None if self.config.language == "auto" else self.config.language
        whole_frames = round(WHISPER_WINDOW_S * self._frames_per_s)
        kept = []
        for start in range(0, features.shape[-1], whole_frames):
            decoded = self._decode(features[:, start : start + whole_frames], language)
            language = decoded.language  # A question is in one language: the first window's serves the rest.
            if self._keeps(decoded):
                kept.append(decoded.text)
        assert language is not None
        separator = "" if language == "zh" else " "
        transcript = self._script(Transcript(separator.join(kept).strip(), language))
        if is_junk(transcript.text):
            if transcript.text:
                log.info("ignored transcript %r: looks like noise, not a question", transcript.text)
            transcript = Transcript("", language)
        return transcript

    def _decode(self, features: np.ndarray, language: str | None) -> _Decoded:
        """Decode in the sized window; what looks wrong there is decoded again in Whisper's own 30-s window."""
        audio_s = features.shape[-1] / self._frames_per_s
        decoded = self._decode_in(features, language, self.window_for(audio_s))
        if decoded.window_s < WHISPER_WINDOW_S:
            doubt = self._doubt(decoded)
            if doubt:
                log.info(
                    "decoding again in a %g-s window: %r in a %.1f-s window %s",
                    WHISPER_WINDOW_S,
                    decoded.text[:60],
                    decoded.window_s,
                    doubt,
                )
                decoded = self._decode_in(features, language, WHISPER_WINDOW_S)
        return decoded

    def _doubt(self, decoded: _Decoded) -> str | None:
        """Why a sized window's text is not to be trusted, if it is not: it loops, or Whisper is unsure of it.

        Whisper itself decodes again when its words average under -1 log-probability (its temperature
        fallback), and the silence rule needs that too: so nothing is dropped as silence on a short
        window's evidence, and a short command it is unsure of ("cancelled" for "Cancel") is heard again.
        """
        if decoded.cut_short or repeats_itself(decoded.text) or compression_ratio(decoded.text) > MAX_COMPRESSION_RATIO:
            return "looks like a loop"
        if decoded.avg_logprob < self.config.avg_logprob_min:
            return f"is unsure (avg_logprob {decoded.avg_logprob:.2f})"
        return None

    def _decode_in(self, features: np.ndarray, language: str | None, window_s: float) -> _Decoded:
        """One encoder pass over `features` padded to `window_s`; it detects the language too when it is None."""
        import ctranslate2

        model = self._whisper.model
        window = np.zeros((1, features.shape[0], round(window_s * self._frames_per_s)), np.float32)
        window[0, :, : features.shape[-1]] = features
        encoded = model.encode(ctranslate2.StorageView.from_array(window))
        if language is None:
            language = model.detect_language(encoded)[0][0][0][2:-2]  # "<|zh|>" -> "zh"
        tokenizer, suppressed = self._tokenizer(language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        audio_s = features.shape[-1] / self._frames_per_s
        # CTranslate2 lets Whisper write max_length / 2 tokens (the other half of its 448 is kept for a prompt).
        budget = min(self._whisper.max_length // 2, math.ceil(MAX_TOKENS_PER_S * audio_s) + MIN_TOKEN_BUDGET)
        result = model.generate(
            encoded,
            [prompt],
            beam_size=self.config.beam_size,
            max_length=2 * budget,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppressed,
        )[0]
        tokens = result.sequences_ids[0]
        # faster-whisper's average log-probability per token, from the length-normalised score.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        return _Decoded(
            text=tokenizer.decode(tokens).strip(),
            language=language,
            audio_s=audio_s,
            window_s=window_s,
            tokens=len(tokens),
            cut_short=len(tokens) >= budget,
            no_speech_prob=result.no_speech_prob,
            avg_logprob=avg_logprob,
        )

    def _tokenizer(self, language: str) -> tuple:
        """faster-whisper's tokenizer for `language`, and the tokens it keeps out of transcripts."""
        if language not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            tokenizer = Tokenizer(
                self._whisper.hf_tokenizer,
                self._multilingual,
                task="transcribe",
                language=language if self._multilingual else None,
            )
            # [-1]: Whisper's usual set, the symbols that are never speech (faster-whisper's default).
            self._tokenizers[language] = (tokenizer, get_suppressed_tokens(tokenizer, [-1]))
        return self._tokenizers[language]

    def _keeps(self, decoded: _Decoded) -> bool:
        """Whether a window's text is speech: not a loop, not silence. Each drop is logged."""
        ratio = compression_ratio(decoded.text)
        if decoded.cut_short:
            log.info(
                "dropped segment %r: repeats itself (%d tokens for %.1f s of audio)",
                decoded.text[:40],
                decoded.tokens,
                decoded.audio_s,
            )
        elif ratio > MAX_COMPRESSION_RATIO:
            log.info("dropped segment %r: repeats itself (compression %.1f)", decoded.text[:40], ratio)
        elif self._is_silence(decoded.no_speech_prob, decoded.avg_logprob):
            log.info(
                "dropped segment %r: silence (no_speech_prob %.2f, avg_logprob %.2f)",
                decoded.text,
                decoded.no_speech_prob,
                decoded.avg_logprob,
            )
        else:
            return True
        return False


class RemoteTranscriber(Protocol):
    """Speech recognition on another machine; raises RemoteEngineError when it cannot answer in time."""

    name: str

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        """The transcript of 16 kHz float32 speech."""
        ...


class AsrService:
    """Speech recognition's one owner: the remote engine first when there is one, else (or when it fails) the
    local Whisper on its pinned worker. Which one answered shows only in the trace (`engine_fallback`).
    Chinese comes out in one script whichever engine heard it."""

    def __init__(
        self,
        local: Transcriber | None = None,
        worker: PinnedWorker | None = None,
        remote: RemoteTranscriber | None = None,
        model_dir: Path | None = None,
        chinese_script: ChineseScriptName | None = None,
    ) -> None:
        if (local is None) != (worker is None) or (local is None and remote is None):
            raise ValueError("an AsrService needs a local model with its worker, a remote engine, or both")
        self._local = local
        self._worker = worker
        self._remote = remote
        self.model_dir = model_dir
        """The local model's folder, if one is loaded."""
        if chinese_script is None:
            chinese_script = local.config.chinese_script if local is not None else AsrConfig().chinese_script
        # A remote engine (Home Assistant's Whisper add-on, say) writes Chinese as it likes: converted here.
        self._script = ChineseScript(chinese_script) if remote is not None else None

    def with_window(self, window_s: float | Literal["auto"]) -> AsrService:
        """The same service, model and worker with the local model's window set to `window_s` (the
        benchmark's comparison of windows in one run)."""
        if self._local is None:
            raise ValueError("the window is the local model's, and this service has none")
        other = copy.copy(self)
        other._local = self._local.with_window(window_s)
        return other

    async def transcribe(self, audio: np.ndarray, trace: Trace | None = None) -> Transcript:
        """What was said in 16 kHz float32 `audio`. RemoteEngineError only when the remote engine failed and
        no local model is loaded to take over."""
        if self._remote is not None:
            try:
                transcript = await self._remote.transcribe(audio)
            except RemoteEngineError as error:
                if self._local is None:
                    raise
                log.warning("%s; transcribing here instead", error)
                if trace is not None:
                    trace.emit("engine_fallback", stage="asr", error=str(error))
            else:
                assert self._script is not None
                return self._script(transcript)
        assert self._local is not None and self._worker is not None
        return await self._worker.run(self._local.transcribe, audio)

    def warm_up(self) -> None:
        """Run the local model once, so the first question does not pay for its set-up; blocking."""
        if self._local is not None and self._worker is not None:
            self._worker.call(self._local.transcribe, np.zeros(16000, np.float32))
