"""The real recordings the measuring tools hear (tests/data, with sources and licences in its README), what is said
in each, and where speech starts and ends in a recording."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

import voicebot
from voicebot.audio import INPUT_RATE_HZ, read_wav

RECORDINGS_DIR = Path(voicebot.__file__).resolve().parents[1] / "tests" / "data"
"""tests/data in a checkout; absent when voicebot was installed from a wheel."""
# Speech is where the 10 ms loudness stands above this, or above 4 times the recording's own noise floor.
SPEECH_RMS = 0.01
NOISE_FLOOR_FACTOR = 4.0
RMS_FRAME_S = 0.01


@dataclass(frozen=True)
class Recording:
    """A real recording in tests/data and what is said in it."""

    name: str
    language: str
    said: str
    transcript: bool = True
    """Whether `said` is word for word (False: a description)."""


RECORDINGS = (
    Recording("speech_long_no_wakeword.flac", "en", "casual speech about smart bulbs, 34 s", transcript=False),
    Recording(
        "jfk.flac",
        "en",
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.",
    ),
    Recording("en_voice2json_turn_on_living_room_lamp.flac", "en", "turn on the living room lamp"),
    Recording(
        "en_voice2json_would_you_please_turn_on_living_room_lamp.flac",
        "en",
        "would you please turn on the living room lamp",
    ),
    Recording("en_speech_recognition_one_two_three.flac", "en", "one two three"),
    Recording("alexa_real.wav", "en", "Alexa"),
    Recording("hey_mycroft_real.wav", "en", "Hey Mycroft"),
    Recording("zh_aishell1_BAC009S0764W0121.flac", "zh", "甚至出现交易几乎停滞的情况"),
    Recording("zh_funasr_asr_example.flac", "zh", "欢迎大家来体验达摩院推出的语音识别模型"),
    Recording("zh_funasr_llamacpp_sample.flac", "zh", "我想问我在滨海新区有房"),
    Recording("zh_paddlespeech_zh.flac", "zh", "我认为跑步最重要的就是给我带来了身体健康"),
    Recording("zh_speech_recognition_chinese.flac", "zh", "砸自己的脚"),
    Recording("zh_wenet_nihao.flac", "zh", "你好你好"),
)
WAKE_WORD_RECORDINGS = frozenset({"alexa_real.wav", "hey_mycroft_real.wav"})


def recordings_present(names: Iterable[str]) -> Path | None:
    """RECORDINGS_DIR if every one of `names` is in it, else None."""
    return RECORDINGS_DIR if all((RECORDINGS_DIR / name).is_file() for name in names) else None


def recording_samples(name: str, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """A recording from tests/data at 16 kHz, or a stretch of it."""
    samples = read_wav(RECORDINGS_DIR / name).resampled(INPUT_RATE_HZ).samples
    end = None if end_s is None else int(end_s * INPUT_RATE_HZ)
    return samples[int(start_s * INPUT_RATE_HZ) : end]


def speech_span(samples: np.ndarray) -> tuple[float, float] | None:
    """Where speech starts and ends, in seconds: 10 ms frames louder than SPEECH_RMS and than the recording's
    noise floor; None if there are none."""
    frame = int(RMS_FRAME_S * INPUT_RATE_HZ)
    frames = len(samples) // frame
    rms = np.sqrt(np.mean(samples[: frames * frame].reshape(frames, frame) ** 2, axis=1))
    level = max(SPEECH_RMS, NOISE_FLOOR_FACTOR * float(np.percentile(rms, 10)))
    loud = np.flatnonzero(rms > level)
    if len(loud) == 0:
        return None
    return loud[0] * RMS_FRAME_S, (loud[-1] + 1) * RMS_FRAME_S
