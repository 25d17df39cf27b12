"""Wake word detection with openWakeWord, on 80 ms frames."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.audio import FRAME_SAMPLES, AudioChunk
from voicebot.config import WakeConfig
from voicebot.errors import ConfigError, ModelLoadError, ModelNotFoundError

log = logging.getLogger(__name__)

SELF_WAKE_WINDOW_S = 1.0  # the echo's delay and the detectors' differing latency fit well inside this
SILENCE_LEVEL = 1e-4


@dataclass(frozen=True)
class WakeDetection:
    """A wake word was heard."""

    model: str
    score: float
    heard_at: float


def bundled_wake_models() -> dict[str, Path]:
    """openWakeWord's own models, by name (hey_jarvis, alexa, ...)."""
    import openwakeword

    folder = Path(openwakeword.__file__).parent / "resources" / "models"
    skip = {"melspectrogram", "embedding_model", "silero_vad"}
    return {path.stem.rsplit("_v", 1)[0]: path for path in sorted(folder.glob("*.onnx")) if path.stem not in skip}


def resolve_wake_models(names: tuple[str, ...]) -> list[Path]:
    """Turn wake.models entries (names or .onnx paths) into files, or say which one is wrong."""
    bundled = bundled_wake_models()
    paths = []
    for name in names:
        if name.endswith(".onnx"):
            path = Path(name).expanduser()
            if not path.is_file():
                raise ModelNotFoundError(f"wake.models: custom wake word model {path} does not exist; check the path")
            paths.append(path)
        elif name in bundled:
            paths.append(bundled[name])
        else:
            raise ConfigError(
                f"config error: wake.models: unknown wake word {name!r}; "
                f"use one of {', '.join(sorted(bundled))} or a path to an .onnx model"
            )
    return paths


class WakeWordDetector:
    """Scores each 80 ms frame with openWakeWord and reports a detection above the threshold.

    A detection fires when the score rises above the threshold; it re-arms only once the score
    has fallen below it again and the refractory period has passed, so one spoken wake word
    fires once even though its score stays high for many frames.
    """

    def __init__(self, config: WakeConfig) -> None:
        from openwakeword.model import Model

        self.threshold = config.threshold
        self.refractory_s = config.refractory_s
        paths = resolve_wake_models(config.models)
        try:
            # openWakeWord 0.4 builds every ONNX session with one intra- and inter-op thread. It asks
            # for CUDA first; ONNX Runtime's warning that there is none is noise on a Pi.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*CUDAExecutionProvider.*")
                self._model = Model(wakeword_model_paths=[str(p) for p in paths])
        except Exception as error:  # noqa: BLE001 - model loaders raise many unrelated types; re-raised as one line
            raise ModelLoadError(f"cannot load wake word model(s) {', '.join(map(str, paths))}: {error}") from None
        self.model_names = list(self._model.models)
        self.reset()

    def score(self, chunk: AudioChunk) -> tuple[str, float]:
        """The likeliest wake word in one 80 ms frame, and its score."""
        pcm = chunk.int16()
        if len(pcm) != FRAME_SAMPLES:
            raise ValueError(f"wake word frames must be {FRAME_SAMPLES} samples, got {len(pcm)}")
        scores = self._model.predict(pcm)
        name, score = max(scores.items(), key=lambda item: item[1])
        return name, float(score)

    def process(self, chunk: AudioChunk) -> WakeDetection | None:
        """Score one 80 ms frame; return a detection if a wake word just ended."""
        name, score = self.score(chunk)
        if score < self.threshold:
            self._armed = True
            return None
        if not self._armed or chunk.captured_at < self._quiet_until:
            return None
        self._armed = False
        self._quiet_until = chunk.captured_at + self.refractory_s
        log.info("wake word %s (score %.2f)", name, score)
        return WakeDetection(model=name, score=float(score), heard_at=chunk.captured_at)

    def reset(self) -> None:
        """Start a new stream: forget past scores and the refractory period."""
        self._model.reset()
        self._armed = True
        self._quiet_until = float("-inf")


class SelfWakeGuard:
    """Recognises a wake word the assistant said itself, by listening to what its speaker played.

    The echo canceller keeps the assistant's voice out of the microphone, but it needs a moment to
    adapt, and a reply can say the wake word in its first second. So the same wake word model also
    scores the reply audio (the canceller's reference); a detection in the microphone within
    `window_s` of the reply saying the wake word is the assistant's own. It runs only while replies
    play, and costs nothing in silence.
    """

    def __init__(self, config: WakeConfig, window_s: float = SELF_WAKE_WINDOW_S) -> None:
        self.threshold = config.threshold
        self.window_s = window_s
        self._detector = WakeWordDetector(config)
        self._said_at = float("-inf")
        self._sounding_until = float("-inf")

    def hear_reply(self, played: AudioChunk) -> None:
        """Score the reply audio that reached the speaker during one frame (silence when nothing played)."""
        if np.abs(played.samples).max(initial=0.0) > SILENCE_LEVEL:
            if played.captured_at > self._sounding_until:
                self._detector.reset()  # A new reply: no stale context from the last one.
            self._sounding_until = played.captured_at + self.window_s
        if played.captured_at > self._sounding_until:
            return
        _, score = self._detector.score(played)
        if score >= self.threshold:
            self._said_at = played.captured_at

    def said_it(self, detection: WakeDetection) -> bool:
        """Whether the reply itself said the wake word just before `detection`."""
        return -FRAME_SAMPLES / 16000 <= detection.heard_at - self._said_at <= self.window_s
