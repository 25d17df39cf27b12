"""End of utterance: Silero VAD, streamed in 32 ms windows, decides when the question has ended."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.audio import INPUT_RATE_HZ, AudioChunk
from voicebot.config import VadConfig
from voicebot.errors import ModelLoadError

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
SPEECH_START_WINDOWS = 3  # ~100 ms of speech before we believe it: clicks and breaths are shorter.
PRE_ROLL_S = 0.3
TAIL_S = 0.2


def silero_model_path() -> Path:
    """The Silero VAD v6 model that ships inside faster-whisper."""
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / "silero_vad_v6.onnx"


class SileroVad:
    """Speech probability for each 512-sample window, carrying the model's state across calls."""

    def __init__(self, model_path: Path | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread, set explicitly: ONNX Runtime would otherwise spread over (and pin) every core.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        path = model_path or silero_model_path()
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # noqa: BLE001 - model loaders raise many unrelated types; re-raised as one line
            raise ModelLoadError(f"cannot load the Silero VAD model {path}: {error}") from None
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), np.float32)

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of the next 512 samples (16 kHz float32)."""
        batch = np.concatenate([self._context, window[None, :].astype(np.float32)], axis=1)
        output, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = batch[:, -CONTEXT_SAMPLES:]
        return float(np.ravel(output)[0])


class EndpointKind(enum.Enum):
    """What the endpointer decided."""

    SPEECH_START = "speech_start"
    PAUSE = "pause"
    """Silence long enough to start working on an answer early, but not yet the end."""
    RESUME = "resume"
    """Speech again after a PAUSE: the early answer is for an unfinished question."""
    SPEECH_END = "speech_end"
    MAX_LENGTH = "max_length"
    NO_SPEECH = "no_speech"


@dataclass(frozen=True)
class Endpoint:
    """An endpointing decision, with the clock time the audio it refers to was heard."""

    kind: EndpointKind
    at: float


@dataclass(frozen=True)
class Utterance:
    """The spoken question: 16 kHz float32 audio and when the speech in it started and ended."""

    audio: np.ndarray
    speech_start: float
    speech_end: float

    @property
    def seconds(self) -> float:
        """Duration of the audio."""
        return len(self.audio) / INPUT_RATE_HZ


class Endpointer:
    """Listens after the wake word and decides when the question starts and ends."""

    def __init__(self, config: VadConfig, vad: SileroVad) -> None:
        self.config = config
        self.vad = vad
        self._silence_threshold = max(config.threshold - 0.15, 0.01)
        self.begin(0.0)

    def begin(self, at: float, no_speech_timeout_s: float | None = None, pause_s: float | None = None) -> None:
        """Start listening for a question with audio heard from clock time `at` on.

        `no_speech_timeout_s` replaces vad.no_speech_timeout_s for this question (a follow-up window; math.inf
        waits for ever), and `pause_s` replaces vad.early_start_s (a short word to catch quickly, "stop").
        """
        self.vad.reset()
        self._begun_at = at
        self._no_speech_timeout_s = (
            self.config.no_speech_timeout_s if no_speech_timeout_s is None else no_speech_timeout_s
        )
        self._pause_s = self.config.early_start_s if pause_s is None else pause_s
        self._pending = np.zeros(0, np.float32)
        self._recorded: list[np.ndarray] = []
        self._recorded_samples = 0
        self._speech_windows = 0
        self._speech_start_sample: int | None = None
        self._speech_start_at = 0.0
        self._last_speech_sample = 0
        self._last_speech_at = at
        self._paused = False
        self.utterance: Utterance | None = None
        """The finished question, once SPEECH_END or MAX_LENGTH has been decided."""
        self.candidate: Utterance | None = None
        """The question as heard up to the latest PAUSE."""

    def process(self, chunk: AudioChunk) -> list[Endpoint]:
        """Feed audio heard after the wake word; returns the decisions it led to, in order."""
        if self.utterance is not None or chunk.captured_at <= self._begun_at:
            return []
        self._recorded.append(chunk.samples)
        buffer = np.concatenate([self._pending, chunk.samples])
        usable = len(buffer) - len(buffer) % WINDOW_SAMPLES
        window_start_sample = self._recorded_samples - len(self._pending)
        self._recorded_samples += len(chunk.samples)
        self._pending = buffer[usable:]
        endpoints = []
        for offset in range(0, usable, WINDOW_SAMPLES):
            window_end_at = chunk.captured_at - (len(buffer) - offset - WINDOW_SAMPLES) / INPUT_RATE_HZ
            window_end_sample = window_start_sample + offset + WINDOW_SAMPLES
            endpoint = self._decide(
                self.vad.probability(buffer[offset : offset + WINDOW_SAMPLES]), window_end_sample, window_end_at
            )
            if endpoint is not None:
                endpoints.append(endpoint)
                if endpoint.kind is not EndpointKind.SPEECH_START:
                    break
        return endpoints

    def _decide(self, probability: float, sample: int, at: float) -> Endpoint | None:
        config = self.config
        if self._speech_start_sample is None:
            self._speech_windows = self._speech_windows + 1 if probability >= config.threshold else 0
            if self._speech_windows >= SPEECH_START_WINDOWS:
                self._speech_start_sample = sample - SPEECH_START_WINDOWS * WINDOW_SAMPLES
                self._speech_start_at = at - SPEECH_START_WINDOWS * WINDOW_SAMPLES / INPUT_RATE_HZ
                self._last_speech_sample, self._last_speech_at = sample, at
                return Endpoint(EndpointKind.SPEECH_START, self._speech_start_at)
            if at - self._begun_at >= self._no_speech_timeout_s:
                self.utterance = Utterance(np.zeros(0, np.float32), at, at)
                return Endpoint(EndpointKind.NO_SPEECH, at)
            return None
        if probability >= self._silence_threshold:
            self._last_speech_sample, self._last_speech_at = sample, at
            if self._paused:
                self._paused = False
                return Endpoint(EndpointKind.RESUME, at)
        if at - self._speech_start_at >= config.max_utterance_s:
            self._finish(sample, at)
            return Endpoint(EndpointKind.MAX_LENGTH, at)
        silence_s = at - self._last_speech_at
        if silence_s >= config.hangover_s:
            self._finish(self._last_speech_sample, self._last_speech_at)
            return Endpoint(EndpointKind.SPEECH_END, self._last_speech_at)
        if 0 < self._pause_s <= silence_s and not self._paused:
            self._paused = True
            self.candidate = self._heard(self._last_speech_sample, self._last_speech_at)
            return Endpoint(EndpointKind.PAUSE, self._last_speech_at)
        return None

    def finish_now(self) -> Endpoint | None:
        """The input ended while listening: close the question with what was heard so far."""
        if self.utterance is not None or self._speech_start_sample is None:
            return None
        self._finish(self._last_speech_sample, self._last_speech_at)
        return Endpoint(EndpointKind.SPEECH_END, self._last_speech_at)

    def _heard(self, end_sample: int, end_at: float) -> Utterance:
        audio = np.concatenate(self._recorded) if self._recorded else np.zeros(0, np.float32)
        self._recorded = [audio]
        assert self._speech_start_sample is not None
        start = max(0, self._speech_start_sample - int(PRE_ROLL_S * INPUT_RATE_HZ))
        end = min(len(audio), end_sample + int(TAIL_S * INPUT_RATE_HZ))
        return Utterance(audio[start:end].copy(), self._speech_start_at, end_at)

    def _finish(self, end_sample: int, end_at: float) -> None:
        self.utterance = self._heard(end_sample, end_at)
        self._recorded = []
