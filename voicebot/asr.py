"""Speech recognition: faster-whisper, int8 on the CPU, guarded against hallucinated text; and its service.

`AsrService` is the stage's one owner: the local model on its pinned worker, a remote engine when
one is configured, the time-outs and the fallback between them. Callers only ask it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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


@dataclass(frozen=True)
class Transcript:
    """What was said, in which language; empty text when nothing real was heard."""

    text: str
    language: str


def _normalized(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def is_junk(text: str) -> bool:
    """True for transcripts that are not a question: empty, no letters, or a known hallucination."""
    key = _normalized(text)
    if not key or not any(unicodedata.category(char).startswith("L") for char in key):
        return True
    return key in {_normalized(phrase) for phrase in HALLUCINATIONS}


class Transcriber:
    """faster-whisper on the CPU, int8, with a fixed thread count."""

    def __init__(self, model_dir: Path, config: AsrConfig, threads: int) -> None:
        from faster_whisper import WhisperModel

        self.config = config
        try:
            self._model = WhisperModel(
                str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1
            )
        except Exception as error:  # noqa: BLE001 - model loaders raise many unrelated types; re-raised as one line
            raise ModelLoadError(f"cannot load speech recognition model {model_dir}: {error}") from None
        if config.language != "en" and not self._model.model.is_multilingual:
            raise ConfigError(
                f"config error: asr.language = {config.language!r} but {model_dir} is an English-only model; "
                "set asr.language: en or use a multilingual Whisper model (models.asr)"
            )

    def _is_silence(self, no_speech_prob: float, avg_logprob: float) -> bool:
        """Whisper's own rule: silence only if the no-speech token is likely and the words are also unsure.

        A high no_speech_prob alone is not enough: Whisper raises it for one-word commands such as "Stop."
        (0.3 to 0.5 from tiny.en, against under 0.1 for a sentence) even when it is sure of the word.
        """
        return no_speech_prob > self.config.no_speech_prob_max and avg_logprob < self.config.avg_logprob_min

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe 16 kHz float32 speech; segments that are silence or a repeating loop are dropped."""
        if len(audio) < MIN_AUDIO_S * 16000:
            return Transcript("", self.config.language)
        language = None if self.config.language == "auto" else self.config.language
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=self.config.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,  # The endpointer already cut the audio to the speech.
            no_speech_threshold=None,  # The silence rule is applied below, where each drop is logged.
        )
        kept = []
        for segment in segments:
            if segment.compression_ratio > MAX_COMPRESSION_RATIO:
                log.info(
                    "dropped segment %r: repeats itself (compression %.1f)",
                    segment.text[:40],
                    segment.compression_ratio,
                )
            elif self._is_silence(segment.no_speech_prob, segment.avg_logprob):
                log.info(
                    "dropped segment %r: silence (no_speech_prob %.2f, avg_logprob %.2f)",
                    segment.text,
                    segment.no_speech_prob,
                    segment.avg_logprob,
                )
            else:
                kept.append(segment.text.strip())
        separator = "" if info.language == "zh" else " "
        text = separator.join(kept).strip()
        if is_junk(text):
            if text:
                log.info("ignored transcript %r: looks like noise, not a question", text)
            text = ""
        return Transcript(text, info.language)


class RemoteTranscriber(Protocol):
    """Speech recognition on another machine; raises RemoteEngineError when it cannot answer in time."""

    name: str

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        """The transcript of 16 kHz float32 speech."""
        ...


class AsrService:
    """Speech recognition's one owner: the remote engine first when there is one, else (or when it fails) the
    local Whisper on its pinned worker. Which one answered shows only in the trace (`engine_fallback`)."""

    def __init__(
        self,
        local: Transcriber | None = None,
        worker: PinnedWorker | None = None,
        remote: RemoteTranscriber | None = None,
        model_dir: Path | None = None,
    ) -> None:
        if (local is None) != (worker is None) or (local is None and remote is None):
            raise ValueError("an AsrService needs a local model with its worker, a remote engine, or both")
        self._local = local
        self._worker = worker
        self._remote = remote
        self.model_dir = model_dir
        """The local model's folder, if one is loaded."""

    async def transcribe(self, audio: np.ndarray, trace: Trace | None = None) -> Transcript:
        """What was said in 16 kHz float32 `audio`. RemoteEngineError only when the remote engine failed and
        no local model is loaded to take over."""
        if self._remote is not None:
            try:
                return await self._remote.transcribe(audio)
            except RemoteEngineError as error:
                if self._local is None:
                    raise
                log.warning("%s; transcribing here instead", error)
                if trace is not None:
                    trace.emit("engine_fallback", stage="asr", error=str(error))
        assert self._local is not None and self._worker is not None
        return await self._worker.run(self._local.transcribe, audio)

    def warm_up(self) -> None:
        """Run the local model once, so the first question does not pay for its set-up; blocking."""
        if self._local is not None and self._worker is not None:
            self._worker.call(self._local.transcribe, np.zeros(16000, np.float32))
