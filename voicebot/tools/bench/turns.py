"""Reference turns: what each one says, who says it, and its audio, built so the benchmark knows where speech ends.

Most questions are spoken by the configured Piper voice; some are real people from the recordings kept
in `tests/data` (someone saying "Alexa", and John F. Kennedy, whose sentence has a natural pause in the
middle); and some Piper questions have a hesitation in the middle. A pause longer than
`vad.early_start_s` starts work on an answer early; when speech resumes that work is dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.audio import INPUT_RATE_HZ, AudioChunk
from voicebot.config import Config
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.tools.recordings import recording_samples, recordings_present
from voicebot.tools.recordings import speech_span as recording_span
from voicebot.wake import WakeWordDetector

LEAD_IN_S = 1.0
GAP_AFTER_WAKE_S = 0.3
TRAILING_SILENCE_S = 2.5
# A hesitation in the middle of a question: longer than vad.early_start_s, shorter than vad.hangover_s
# (0.2 s and 0.6 s by default), as people pause to find a word.
HESITATION_S = 0.4


@dataclass(frozen=True)
class Recording:
    """A real recording kept in tests/data, or a stretch of it."""

    name: str
    said: str
    start_s: float = 0.0
    end_s: float | None = None
    wake_model: str | None = None
    """For a recording of a wake word: the openWakeWord model that hears it."""


@dataclass(frozen=True)
class Pause:
    """Silence in the middle of a question."""

    seconds: float


@dataclass(frozen=True)
class Script:
    """What one reference turn says: a wake word (None: the configured one, spoken by Piper), then the question."""

    wake: Recording | None
    question: tuple[str | Recording | Pause, ...]

    @property
    def recordings(self) -> list[Recording]:
        """The real recordings this turn needs."""
        return [part for part in (self.wake, *self.question) if isinstance(part, Recording)]


ALEXA = Recording("alexa_real.wav", "Alexa.", wake_model="alexa")
# Kennedy's "what your country can do for you, ask what you can do for your country", with his own
# 0.6 s pause before "ask"; the excerpt ends before the crowd's noise rises.
JFK = Recording(
    "jfk.flac", "What your country can do for you, ask what you can do for your country.", start_s=5.2, end_s=10.6
)
SCRIPTS = (
    Script(ALEXA, ("How far away is the moon,", Pause(HESITATION_S), "from the earth?")),
    Script(None, ("What is the capital of France?",)),
    Script(None, (JFK,)),
    Script(None, ("How do plants make food?",)),
    Script(ALEXA, ("Why is the sky blue?",)),
    Script(None, ("Give me a tip", Pause(HESITATION_S), "for cooking rice.")),
    Script(None, ("What causes rain?",)),
    Script(None, ("Why do leaves change colour in autumn?",)),
)
TALK = (
    "I moved the lamp to the other side of the room because the light was too harsh in the evening. "
    "The bulbs in the hallway are warmer, and I think they look better with the new curtains. "
    "Tomorrow I will paint the shelf by the window, if the weather stays dry and the shop has the colour I want. "
    "My sister says the kitchen needs brighter lights for cooking, and she is probably right about that. "
)


@dataclass(frozen=True)
class ReferenceTurn:
    """A spoken wake word and question, where in the input each one ends, and what kind of speech it is."""

    question: str
    audio: AudioChunk
    wake_end_s: float
    speech_start_s: float
    speech_end_s: float
    wake: str
    """Who says the wake word: 'piper' or the recording's name."""
    speaker: str
    """Who asks: 'piper' or the recording's name."""
    pauses: int
    """Pauses put in the middle of the question (a recording's own are not counted here)."""


def recordings_dir() -> Path | None:
    """tests/data in a checkout; None when voicebot was installed without it (from a wheel)."""
    return recordings_present(r.name for s in SCRIPTS for r in s.recordings)


def with_wake_models(engines: Engines, config: Config, scripts: list[Script]) -> Engines:
    """The engines with a wake word detector that also hears the recorded wake words."""
    models = list(config.wake.models)
    for script in scripts:
        if script.wake is not None and script.wake.wake_model not in models:
            models.append(script.wake.wake_model)
    if len(models) == len(config.wake.models):
        return engines
    wake_config = dataclasses.replace(config.wake, models=tuple(models))
    listener = engines.listener
    detector = listener.worker.call(WakeWordDetector, wake_config)
    return engines.with_listener(listener.with_wake(detector), dataclasses.replace(config, wake=wake_config))


def reference_turns(engines: Engines, scripts: list[Script], count: int, data: Path | None) -> list[ReferenceTurn]:
    """`count` turns, cycling through `scripts`."""
    wake = speak(engines, wake_phrase(engines.config))
    return [build_turn(engines, scripts[i % len(scripts)], wake, data) for i in range(count)]


def wake_phrase(config: Config) -> str:
    """The configured wake word as Piper should say it: "Hey Jarvis."."""
    return Path(config.wake.models[0]).stem.rsplit("_v", 1)[0].replace("_", " ").title() + "."


def build_turn(engines: Engines, script: Script, piper_wake: np.ndarray, data: Path | None) -> ReferenceTurn:
    """One turn's audio: silence, the wake word, a short gap, the question, and the silence after it."""
    wake = piper_wake if script.wake is None else recording(script.wake, data)
    question, pauses = question_audio(engines, script.question, data)
    parts = [silence(LEAD_IN_S), wake, silence(GAP_AFTER_WAKE_S), question, silence(TRAILING_SILENCE_S)]
    wake_end = LEAD_IN_S + speech_span(wake)[1]
    question_at = LEAD_IN_S + len(wake) / INPUT_RATE_HZ + GAP_AFTER_WAKE_S
    start, end = speech_span(question)
    text = " ".join(p.said if isinstance(p, Recording) else p for p in script.question if not isinstance(p, Pause))
    spoken_by = [p.name for p in script.question if isinstance(p, Recording)]
    return ReferenceTurn(
        question=text,
        audio=AudioChunk(np.concatenate(parts), INPUT_RATE_HZ),
        wake_end_s=wake_end,
        speech_start_s=question_at + start,
        speech_end_s=question_at + end,
        wake="piper" if script.wake is None else script.wake.name,
        speaker=", ".join(spoken_by) or "piper",
        pauses=pauses,
    )


def question_audio(
    engines: Engines, parts: tuple[str | Recording | Pause, ...], data: Path | None
) -> tuple[np.ndarray, int]:
    """The question's audio; speech next to a pause is trimmed to the speech, so the pause is exactly as long."""
    pieces = []
    for index, part in enumerate(parts):
        if isinstance(part, Pause):
            pieces.append(silence(part.seconds))
            continue
        audio = recording(part, data) if isinstance(part, Recording) else speak(engines, part)
        start, end = speech_span(audio)
        if index + 1 < len(parts) and isinstance(parts[index + 1], Pause):
            audio = audio[: int(end * INPUT_RATE_HZ)]
        if index > 0 and isinstance(parts[index - 1], Pause):
            audio = audio[int(start * INPUT_RATE_HZ) :]
        pieces.append(audio)
    return np.concatenate(pieces), sum(isinstance(p, Pause) for p in parts)


def recording(recording: Recording, data: Path | None) -> np.ndarray:
    """The recording's samples at the input rate."""
    assert data is not None
    return recording_samples(recording.name, recording.start_s, recording.end_s)


def speak(engines: Engines, text: str) -> np.ndarray:
    """`text` said by the configured voice, through the TTS service, at the input rate."""
    audio = asyncio.run(engines.tts.speak(text))
    if audio is None:
        raise VoicebotError(f"the voice said nothing for {text!r}")
    return audio.resampled(INPUT_RATE_HZ).samples


def silence(seconds: float) -> np.ndarray:
    """`seconds` of silence at the input rate."""
    return np.zeros(int(seconds * INPUT_RATE_HZ), np.float32)


def speech_span(samples: np.ndarray) -> tuple[float, float]:
    """Where speech starts and ends in a clip the bench made or read, which has some."""
    span = recording_span(samples)
    if span is None:
        raise VoicebotError("a clip of the benchmark holds no speech")
    return span


def talk(engines: Engines, seconds: float) -> AudioChunk:
    """`seconds` of talk with no wake word in it, for the cost of listening."""
    samples = speak(engines, TALK)
    repeats = int(np.ceil(seconds * INPUT_RATE_HZ / len(samples)))
    return AudioChunk(np.tile(samples, repeats)[: int(seconds * INPUT_RATE_HZ)], INPUT_RATE_HZ)
