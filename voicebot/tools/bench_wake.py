"""False wakes, counted: hours of speech with no wake word in it, through the real listening path.

    python -m voicebot.tools.bench_wake [--hours 2] [--seed 1] [--recall full|short] [--json FILE]
                                        [--cache DIR] [--config PATH] [--set section.key=value ...]

It builds, deterministically from `--seed`, a stream of speech that never says the wake word: English
said by the configured Piper voice and by espeak-ng's voices at several speeds and pitches, Mandarin said
by espeak-ng's `cmn` voice (robotic, and a poor Mandarin, but Chinese-sounding speech with no wake word),
the real recordings in tests/data (none of which says "hey jarvis"), and names that rhyme with the wake
word's ("Hey Travis"), counted apart as a stated challenge. The texts (voicebot/tools/wake_texts.py) are
household requests and everyday talk written for it, and short passages of public-domain books and poems.
Each scene is mixed with kitchen-like noise made here (running water, the clatter of dishes, a fan's hum, a
radio's band-limited talk and music, or all at once) at 20, 10, 5 or 0 dB below the speech, or a quiet
room, at a speech level from -36 to -18 dBFS; some scenes are that noise with no speech at all. `--hours`
is the hours of speech itself; the pauses and noise around it, and the noise-only scenes (8 % of `--hours`),
come on top.

The stream is heard as fast as the listener takes it: the Listener that `Engines.load` builds, with the
configured echo canceller (its reference silent, as whenever nothing plays), the self-wake guard and the
wake word detector at the configured threshold and refractory period, 80 ms at a time. Every detection is
a false accept, counted once per detection as the pipeline would count it. Then the wake-word clips: the
configured wake word said by Piper and espeak-ng, and the real "Alexa" and "Hey Mycroft" recordings in
tests/data heard by those words' models instead, each alone in the same noise mixes, and how many are
still caught.

Synthetic speech is not the DiPCo far-field set openWakeWord's published false-accept figures use: these
numbers compare settings and catch regressions on this machine; they are not those figures.
Clips are cached by what made them (`--cache`, default ~/.cache/voicebot/bench_wake), so a second run
hears exactly the same audio; Piper's own sampling noise makes a freshly synthesised clip differ a little.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal

import numpy as np
import soundfile

from voicebot.audio import FRAME_SAMPLES, INPUT_RATE_HZ, AudioChunk, PlaybackTimeline, read_wav
from voicebot.config import Config, load_config
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.listen import Listener
from voicebot.models.paths import CACHE_DIR, resolve_models
from voicebot.tools.machine import machine
from voicebot.tools.recordings import RECORDINGS, RECORDINGS_DIR, recordings_present
from voicebot.tools.wake_texts import CHINESE, ENGLISH, NEAR_MISSES
from voicebot.tts import Synthesizer, TtsService
from voicebot.wake import WakeWordDetector

log = logging.getLogger("voicebot.tools.bench_wake")

STAGES = frozenset({"listen", "tts"})
RATE_HZ = INPUT_RATE_HZ
DIPCO_NOTE = (
    "Synthetic speech is not the DiPCo far-field set openWakeWord's published false-accept figures use "
    "(real dinner-party talk recorded across a room); these figures compare settings and catch regressions, "
    "and are not those figures."
)

# The noise mixes: each kind of kitchen noise at each SNR below the speech, or a quiet room.
NOISES = ("water", "clatter", "fan", "radio", "kitchen")
SNRS_DB = (20.0, 10.0, 5.0, 0.0)
QUIET = "quiet"
QUIET_SHARE = 0.2
ROOM_FLOOR_DBFS = -62.0  # A quiet room's own noise under everything, so no frame is digital silence.
SPEECH_DBFS = (-36.0, -18.0)  # The active speech level of a scene: a quiet voice across the room to a near one.
UTTERANCE_SPREAD_DB = 3.0
NOISE_ONLY_DBFS = (-45.0, -20.0)
SPEECH_SCENE_S = (20.0, 60.0)
NOISE_SCENE_S = (10.0, 40.0)
EDGE_S = (0.3, 1.2)  # Noise before the first utterance of a scene and after its last.
PAUSE_S = (0.2, 1.5)
ACTIVE_WITHIN_DB = 30.0  # Speech level: the RMS of the 10-ms frames within this of the loudest.
TRIM_LEVEL = 0.02  # Of a synthetic clip's peak: where its leading and trailing silence ends.
TRIM_PAD_S = 0.05

PIPER_LENGTH_SCALES = (0.85, 1.0, 1.15)
ESPEAK_EN_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan")
ESPEAK_VARIANTS = ("", "+f1", "+f2", "+f3", "+f4", "+m1", "+m2", "+m3", "+m4", "+m7")
ESPEAK_ZH_VARIANTS = ("", "+f2", "+f3", "+f4", "+m1", "+m3")
ESPEAK_EN_WPM = (130, 190)
ESPEAK_ZH_WPM = (120, 180)
ESPEAK_PITCH = (30, 70)

# Recall: each wake-word clip alone in a mix, with noise before it and after it (longer than the refractory period).
RECALL_LEAD_S = 1.0
RECALL_TAIL_S = 2.5
RECALL_LATE_S = 1.0  # A detection this long after the clip ends still counts as catching it.
RECALL_DBFS = -26.0
RECALL_ESPEAK = (("en-us", ""), ("en-gb", ""), ("en-us", "+f3"), ("en-gb-scotland", "+m3"))
RECALL_ESPEAK_WPM = (130, 160, 190)
ATTRIBUTE_LATE_S = 1.0  # A false accept this long after an utterance ends is still put down to it.


# The real wake words in tests/data, each heard by its own model.
REAL_WAKE_WORDS = (("alexa", "alexa_real.wav"), ("hey_mycroft", "hey_mycroft_real.wav"))


@dataclass(frozen=True)
class Kind:
    """A kind of audio in the stream, and its share of the speech hours (of `--hours` for noise only)."""

    name: str
    language: str
    share: float
    what: str


KINDS = (
    Kind("en-piper", "en", 0.32, "English, the configured Piper voice"),
    Kind("en-espeak", "en", 0.28, "English, espeak-ng voices"),
    Kind("zh-espeak", "zh", 0.28, "Mandarin, espeak-ng cmn (poor Mandarin)"),
    Kind("en-recorded", "en", 0.05, "English recordings in tests/data, repeated"),
    Kind("zh-recorded", "zh", 0.03, "Mandarin recordings in tests/data, repeated"),
    Kind("near-miss", "en", 0.04, '"Hey Travis" and other rhymes, Piper and espeak-ng'),
    Kind("noise", "-", 0.08, "kitchen noise, no speech"),
)
NOISE_ONLY = "noise"
NEAR_MISS = "near-miss"


@dataclass(frozen=True)
class Voice:
    """What says a text: Piper at a length scale, espeak-ng at a speed and pitch, or a real recording."""

    engine: Literal["piper", "espeak-ng", "recording"]
    name: str
    rate: float = 1.0
    """Piper's length_scale, or espeak-ng's words per minute."""
    pitch: int = 50

    @property
    def label(self) -> str:
        """The voice as the table names it."""
        if self.engine == "piper":
            return f"piper {self.name} x{self.rate:g}"
        if self.engine == "espeak-ng":
            return f"espeak-ng {self.name} {self.rate:g} wpm p{self.pitch}"
        return self.name


@dataclass(frozen=True)
class Said:
    """One thing said: the text, its language, and the voice."""

    text: str
    language: str
    voice: Voice


@dataclass(frozen=True)
class Placed:
    """Something said, where it starts in its scene, how long it lasts and how loud it is."""

    said: Said
    start_s: float
    seconds: float
    level_dbfs: float


@dataclass(frozen=True)
class Scene:
    """A stretch of the stream: one kind of speech (or none) in one noise mix."""

    index: int
    kind: str
    start_sample: int
    samples: int
    noise: str
    snr_db: float | None
    level_dbfs: float
    """The speech's active level, or the noise's level in a scene without speech."""
    placed: tuple[Placed, ...]

    @property
    def start_s(self) -> float:
        """Where the scene starts in the stream."""
        return self.start_sample / RATE_HZ

    @property
    def seconds(self) -> float:
        """Its length."""
        return self.samples / RATE_HZ

    @property
    def speech_s(self) -> float:
        """Seconds of speech in it."""
        return sum(placed.seconds for placed in self.placed)

    @property
    def mix(self) -> str:
        """Its noise and SNR, as the table names them."""
        return mix_label(self.noise, self.snr_db)


def mix_label(noise: str, snr_db: float | None) -> str:
    """`water 5 dB`, or `quiet`."""
    return noise if snr_db is None else f"{noise} {snr_db:g} dB"


def snr_label(snr_db: float | None) -> str:
    """`5 dB`, or `quiet`."""
    return QUIET if snr_db is None else f"{snr_db:g} dB"


# Kitchen-like noise, made here from a seed. Every generator returns unit RMS.


def _unit(samples: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(samples**2)))
    return (samples / rms if rms > 0 else samples).astype(np.float32)


def _filtered(samples: np.ndarray, low_hz: float, high_hz: float, slope_db_per_octave: float = 0.0) -> np.ndarray:
    """`samples` band-limited with soft fourth-order edges and tilted by a slope, at unit RMS."""
    spectrum = np.fft.rfft(samples)
    hz = np.maximum(np.fft.rfftfreq(len(samples), 1 / RATE_HZ), 1.0)
    gain = 1 / np.sqrt((1 + (low_hz / hz) ** 8) * (1 + (hz / high_hz) ** 8))
    if slope_db_per_octave:
        gain *= (hz / 1000.0) ** (slope_db_per_octave / 6.0206)
    gain[0] = 0.0
    return _unit(np.fft.irfft(spectrum * gain, len(samples)))


def _band(rng: np.random.Generator, n: int, low_hz: float, high_hz: float, slope: float = 0.0) -> np.ndarray:
    return _filtered(rng.standard_normal(n), low_hz, high_hz, slope)


def _add(out: np.ndarray, at: int, sound: np.ndarray) -> None:
    end = min(len(out), at + len(sound))
    if at < end:
        out[at:end] += sound[: end - at]


def water_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """A running tap: hiss that swells and falls, with bubbles (short rising chirps)."""
    out = _band(rng, n, 400, 7000, -2) * np.clip(1 + 0.35 * _band(rng, n, 0.01, 2.0), 0.3, 2.0)
    for _ in range(rng.poisson(25 * n / RATE_HZ)):
        t = np.arange(int(rng.uniform(0.008, 0.04) * RATE_HZ)) / RATE_HZ
        start_hz = rng.uniform(500, 2500)
        phase = 2 * np.pi * start_hz * (t + 1.5 * t**2 / max(t[-1], 1e-3))
        _add(out, int(rng.integers(0, n)), rng.uniform(0.5, 2.5) * np.sin(phase) * np.exp(-3 * t / max(t[-1], 1e-3)))
    return _unit(out)


def clatter_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Dishes and cutlery: bursts of ringing knocks over a low room tone."""
    out = 0.03 * _band(rng, n, 100, 4000, -4)
    t = np.arange(int(0.3 * RATE_HZ)) / RATE_HZ
    for _ in range(rng.poisson(0.8 * n / RATE_HZ)):
        at = int(rng.integers(0, n))
        loudness = 10 ** rng.uniform(-0.7, 0.0)
        for _ in range(int(rng.integers(1, 5))):
            knock = sum(
                np.sin(2 * np.pi * rng.uniform(1200, 7000) * t + rng.uniform(0, 2 * np.pi))
                * np.exp(-t / rng.uniform(0.02, 0.2))
                for _ in range(3)
            )
            knock[:32] += rng.standard_normal(32) * np.exp(-np.arange(32) / 8)
            _add(out, at, loudness * rng.uniform(0.5, 1.0) * knock)
            at += int(rng.uniform(0.03, 0.25) * RATE_HZ)
    return _unit(out)


def fan_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """A cooker-hood fan: low rushing air, its blade tone with harmonics, and mains hum."""
    blade_hz = rng.uniform(90, 160) * (1 + 0.005 * _band(rng, n, 0.01, 0.5))
    phase = 2 * np.pi * np.cumsum(blade_hz) / RATE_HZ
    tones = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    mains_hz = float(rng.choice([50.0, 60.0]))
    t = np.arange(n) / RATE_HZ
    hum = np.sin(2 * np.pi * 2 * mains_hz * t) + 0.4 * np.sin(2 * np.pi * 3 * mains_hz * t)
    return _unit(_band(rng, n, 40, 2500, -4) + 0.6 * _unit(tones) + 0.3 * _unit(hum))


def radio_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """A small radio across the kitchen: talk-like babble and simple music, band-limited to 300-3400 Hz, with hiss."""
    out = np.zeros(n, np.float64)
    at = 0
    while at < n:
        length = min(n - at, int(rng.uniform(2.0, 8.0) * RATE_HZ))
        if rng.random() < 0.5:
            syllables = np.maximum(_band(rng, length, 0.01, 6.0), 0.0)
            piece = _band(rng, length, 200, 4000, -3) * syllables
        else:
            piece = np.zeros(length)
            note_at = 0
            while note_at < length:
                note = min(length - note_at, int(rng.uniform(0.25, 0.6) * RATE_HZ))
                t = np.arange(note) / RATE_HZ
                for semitone in rng.choice([0, 2, 4, 7, 9, 12, 14, 16], size=3, replace=False):
                    hz = 220.0 * 2 ** (semitone / 12)
                    tone = sum(np.sin(2 * np.pi * k * hz * t) / k for k in (1, 2, 3))
                    piece[note_at : note_at + note] += tone * np.exp(-t / 0.3)
                note_at += note
        out[at : at + length] = _unit(piece)
        at += length
    return _unit(_filtered(out, 300, 3400) + 0.1 * _band(rng, n, 300, 3400))


def kitchen_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """A busy kitchen: the tap, the dishes, the radio and the fan at once."""
    return _unit(
        water_noise(rng, n) + 0.7 * clatter_noise(rng, n) + 0.6 * radio_noise(rng, n) + 0.5 * fan_noise(rng, n)
    )


NOISE_MAKERS = {
    "water": water_noise,
    "clatter": clatter_noise,
    "fan": fan_noise,
    "radio": radio_noise,
    "kitchen": kitchen_noise,
}


def room_floor(rng: np.random.Generator, n: int) -> np.ndarray:
    """A quiet room's own noise, at ROOM_FLOOR_DBFS."""
    return _band(rng, n, 50, 7000, -3) * 10 ** (ROOM_FLOOR_DBFS / 20)


def active_rms(samples: np.ndarray) -> float:
    """Speech's active level: the RMS of the 10-ms frames within ACTIVE_WITHIN_DB of the loudest."""
    frame = RATE_HZ // 100
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
    if len(frames) == 0:
        return 0.0
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = rms[rms >= rms.max() * 10 ** (-ACTIVE_WITHIN_DB / 20)]
    return float(np.sqrt(np.mean(loud**2)))


def at_level(samples: np.ndarray, level_dbfs: float) -> np.ndarray:
    """`samples` scaled so that their active level is `level_dbfs`."""
    rms = active_rms(samples)
    return samples * (10 ** (level_dbfs / 20) / rms) if rms > 0 else samples


def mixed(
    speech: np.ndarray, noise: str, snr_db: float | None, level_dbfs: float, rng: np.random.Generator
) -> np.ndarray:
    """Speech (already at `level_dbfs`) with `noise` at `snr_db` below that level, over a quiet room's floor."""
    out = speech.astype(np.float64) + room_floor(rng, len(speech))
    if noise != QUIET and snr_db is not None:
        out += NOISE_MAKERS[noise](rng, len(speech)) * 10 ** ((level_dbfs - snr_db) / 20)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# The voices, and the clips they make.


def trimmed(samples: np.ndarray) -> np.ndarray:
    """A synthetic clip with its leading and trailing silence cut to TRIM_PAD_S."""
    loud = np.flatnonzero(np.abs(samples) > TRIM_LEVEL * np.abs(samples).max(initial=0.0))
    if len(loud) == 0:
        return samples
    pad = int(TRIM_PAD_S * RATE_HZ)
    return samples[max(0, loud[0] - pad) : loud[-1] + 1 + pad]


class Speech:
    """Says texts with Piper (through the TTS service, on its worker) and espeak-ng, at 16 kHz; each clip is
    cached as FLAC under a name made from what made it."""

    def __init__(self, engines: Engines, config: Config, cache_dir: Path) -> None:
        self.engines = engines
        self.config = config
        self.cache_dir = cache_dir
        self.piper_voice = engines.paths.voices["en"].name.removesuffix(".onnx")
        self._services: dict[float, TtsService] = {}
        self._recordings: dict[str, np.ndarray] = {}
        self.made = 0
        self.cached = 0
        self.making_s = 0.0

    def piper(self, length_scale: float) -> Voice:
        """The configured English Piper voice at `length_scale`."""
        return Voice("piper", self.piper_voice, length_scale)

    def say(self, said: Said) -> np.ndarray:
        """The clip for `said`, from the cache or made now."""
        if said.voice.engine == "recording":
            if said.voice.name not in self._recordings:
                self._recordings[said.voice.name] = (
                    read_wav(RECORDINGS_DIR / said.voice.name).resampled(RATE_HZ).samples
                )
            return self._recordings[said.voice.name]
        key = json.dumps([dataclasses.asdict(said.voice), said.text], ensure_ascii=False)
        path = self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.flac"
        if path.is_file():
            self.cached += 1
            samples, _ = soundfile.read(path, dtype="float32")
            return samples
        started = time.perf_counter()
        samples = trimmed(self._piper(said) if said.voice.engine == "piper" else self._espeak(said))
        self.making_s += time.perf_counter() - started
        self.made += 1
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{time.monotonic_ns()}.part")
        soundfile.write(partial, samples, RATE_HZ, subtype="PCM_16", format="FLAC")
        partial.replace(path)
        return samples

    def _piper(self, said: Said) -> np.ndarray:
        audio = asyncio.run(self._service(said.voice.rate).speak(said.text, said.language))
        if audio is None:
            raise VoicebotError(f"the Piper voice said nothing for {said.text!r}")
        return audio.resampled(RATE_HZ).samples

    def _service(self, length_scale: float) -> TtsService:
        if length_scale == self.config.tts.length_scale:
            return self.engines.tts
        if length_scale not in self._services:
            worker = self.engines.worker("tts")
            tts_config = dataclasses.replace(self.config.tts, length_scale=length_scale)
            voices = {"en": self.engines.paths.voices["en"]}
            synthesizer = worker.call(Synthesizer, voices, tts_config, len(worker.cores))
            self._services[length_scale] = TtsService(synthesizer, worker)
        return self._services[length_scale]

    def _espeak(self, said: Said) -> np.ndarray:
        voice = said.voice
        with tempfile.TemporaryDirectory(prefix="voicebot-bench-wake-") as folder:
            path = Path(folder) / "said.wav"
            command = ["espeak-ng", "-v", voice.name, "-s", f"{voice.rate:g}", "-p", str(voice.pitch)]
            subprocess.run([*command, "-w", str(path), said.text], check=True, timeout=60, capture_output=True)
            return read_wav(path).resampled(RATE_HZ).samples


# The stream's plan: which scenes, in which order, saying what. Every choice comes from the seed.


class Talkers:
    """What each kind of scene says next, and in which voice: texts in a seeded order, voices drawn at random."""

    def __init__(self, seed: int, speech: Speech, recordings: bool) -> None:
        self.speech = speech
        self._rngs = {kind.name: np.random.default_rng([seed, 1, i]) for i, kind in enumerate(KINDS)}
        texts = {
            "en-piper": [(t, "en") for t in ENGLISH],
            "en-espeak": [(t, "en") for t in ENGLISH],
            "zh-espeak": [(t, "zh") for t in CHINESE],
            NEAR_MISS: [(t, "en") for t in NEAR_MISSES],
        }
        if recordings:
            for language in ("en", "zh"):
                texts[f"{language}-recorded"] = [(r.name, language) for r in RECORDINGS if r.language == language]
        self._texts = texts
        self._queues: dict[str, list[tuple[str, str]]] = {name: [] for name in texts}

    @property
    def kinds(self) -> list[Kind]:
        """The kinds this stream has (no recordings when tests/data is not here)."""
        return [kind for kind in KINDS if kind.name in self._texts or kind.name == NOISE_ONLY]

    def next(self, kind: str) -> Said:
        """The next thing said in a scene of `kind`."""
        rng = self._rngs[kind]
        if not self._queues[kind]:
            order = rng.permutation(len(self._texts[kind]))
            self._queues[kind] = [self._texts[kind][i] for i in order]
        text, language = self._queues[kind].pop(0)
        if kind.endswith("-recorded"):
            said = next(r.said for r in RECORDINGS if r.name == text)
            return Said(said, language, Voice("recording", text))
        engine = "piper" if kind == "en-piper" or (kind == NEAR_MISS and rng.random() < 0.5) else "espeak-ng"
        if engine == "piper":
            return Said(text, language, self.speech.piper(float(rng.choice(PIPER_LENGTH_SCALES))))
        if language == "zh":
            name = "cmn" + str(rng.choice(ESPEAK_ZH_VARIANTS))
            wpm = int(rng.integers(ESPEAK_ZH_WPM[0] // 10, ESPEAK_ZH_WPM[1] // 10 + 1)) * 10
        else:
            name = str(rng.choice(ESPEAK_EN_VOICES)) + str(rng.choice(ESPEAK_VARIANTS))
            wpm = int(rng.integers(ESPEAK_EN_WPM[0] // 10, ESPEAK_EN_WPM[1] // 10 + 1)) * 10
        pitch = int(rng.integers(ESPEAK_PITCH[0] // 5, ESPEAK_PITCH[1] // 5 + 1)) * 5
        return Said(text, language, Voice("espeak-ng", name, wpm, pitch))


def plan_stream(hours: float, seed: int, speech: Speech, recordings: bool) -> list[Scene]:
    """The scenes of the stream, `hours` of speech (the pauses and noise around it on top, and the noise-only
    scenes), in a seeded order; the clips are made (or found in the cache) as they are planned, since a scene's
    length depends on them."""
    talkers = Talkers(seed, speech, recordings)
    kinds = talkers.kinds
    speech_share = sum(kind.share for kind in kinds if kind.name != NOISE_ONLY)
    quota_s = {
        kind.name: hours * 3600 * kind.share / (1.0 if kind.name == NOISE_ONLY else speech_share) for kind in kinds
    }
    done_s = dict.fromkeys(quota_s, 0.0)
    scenes: list[Scene] = []
    start_sample = 0
    while True:
        left = {
            name: (quota_s[name] - done_s[name]) / quota_s[name] for name in quota_s if done_s[name] < quota_s[name]
        }
        if not left:
            return scenes
        kind = max(left, key=lambda name: left[name])
        rng = np.random.default_rng([seed, 2, len(scenes)])
        remaining_s = quota_s[kind] - done_s[kind]
        if kind == NOISE_ONLY:
            seconds = min(float(rng.uniform(*NOISE_SCENE_S)), max(remaining_s, 1.0))
            samples = math.ceil(seconds * RATE_HZ / FRAME_SAMPLES) * FRAME_SAMPLES
            noise = str(rng.choice(NOISES))
            scene = Scene(
                len(scenes), kind, start_sample, samples, noise, None, float(rng.uniform(*NOISE_ONLY_DBFS)), ()
            )
        else:
            scene = _speech_scene(
                len(scenes), kind, start_sample, float(rng.uniform(*SPEECH_SCENE_S)), remaining_s, rng, talkers
            )
        scenes.append(scene)
        done_s[kind] += scene.seconds if kind == NOISE_ONLY else scene.speech_s
        start_sample += scene.samples


def _speech_scene(
    index: int,
    kind: str,
    start_sample: int,
    target_s: float,
    speech_left_s: float,
    rng: np.random.Generator,
    talkers: Talkers,
) -> Scene:
    """A scene of `kind` about `target_s` long, or shorter once it holds `speech_left_s` of speech (one utterance at
    the least), in a noise mix drawn from `rng`."""
    noise = QUIET if rng.random() < QUIET_SHARE else str(rng.choice(NOISES))
    snr_db = None if noise == QUIET else float(rng.choice(SNRS_DB))
    level_dbfs = float(rng.uniform(*SPEECH_DBFS))
    at_s = float(rng.uniform(*EDGE_S))
    placed: list[Placed] = []
    spoken_s = 0.0
    while not placed or (at_s < target_s and spoken_s < speech_left_s):
        said = talkers.next(kind)
        seconds = len(talkers.speech.say(said)) / RATE_HZ
        spread = float(rng.uniform(-UTTERANCE_SPREAD_DB, UTTERANCE_SPREAD_DB))
        placed.append(Placed(said, at_s, seconds, level_dbfs + spread))
        spoken_s += seconds
        at_s += seconds + float(rng.uniform(*PAUSE_S))
    end_s = placed[-1].start_s + placed[-1].seconds + float(rng.uniform(*EDGE_S))
    samples = math.ceil(end_s * RATE_HZ / FRAME_SAMPLES) * FRAME_SAMPLES
    return Scene(index, kind, start_sample, samples, noise, snr_db, level_dbfs, tuple(placed))


def render_scene(scene: Scene, speech: Speech, seed: int) -> np.ndarray:
    """A scene's audio: its utterances at their levels, in its noise."""
    rng = np.random.default_rng([seed, 3, scene.index])
    if scene.kind == NOISE_ONLY:
        noise = NOISE_MAKERS[scene.noise](rng, scene.samples) * 10 ** (scene.level_dbfs / 20)
        return np.clip(noise + room_floor(rng, scene.samples), -1.0, 1.0).astype(np.float32)
    voices = np.zeros(scene.samples, np.float32)
    for placed in scene.placed:
        clip = at_level(speech.say(placed.said), placed.level_dbfs)
        _add(voices, round(placed.start_s * RATE_HZ), clip)
    return mixed(voices, scene.noise, scene.snr_db, scene.level_dbfs, rng)


# Listening.


@dataclass(frozen=True)
class FalseAccept:
    """A wake word heard in the stream, which never says it."""

    at_s: float
    model: str
    score: float
    scene: Scene
    said: Said | None
    """What was being said, or had just been said; None in noise alone or a pause."""


@dataclass
class Listening:
    """Seconds of audio heard and the wall-clock seconds it took."""

    audio_s: float = 0.0
    wall_s: float = 0.0

    @property
    def x_realtime(self) -> float:
        """How many times faster than real time."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("nan")


async def _rendered(scenes: list[Scene], speech: Speech, seed: int) -> AsyncIterator[tuple[Scene, np.ndarray]]:
    """Each scene's audio, the next one rendered on another thread while this one is heard."""
    if not scenes:
        return
    upcoming = asyncio.create_task(asyncio.to_thread(render_scene, scenes[0], speech, seed))
    for index, scene in enumerate(scenes):
        audio = await upcoming
        if index + 1 < len(scenes):
            upcoming = asyncio.create_task(asyncio.to_thread(render_scene, scenes[index + 1], speech, seed))
        yield scene, audio


async def hear_stream(
    listener: Listener, scenes: list[Scene], speech: Speech, seed: int, listening: Listening
) -> tuple[list[FalseAccept], int]:
    """Every scene through the listener, frame by frame, as the pipeline hears the microphone while it waits for
    the wake word; the detections, and how many the self-wake guard set aside (none, with nothing playing)."""
    timeline = PlaybackTimeline()  # Nothing plays: the echo canceller's reference is silence.
    await listener.reset()
    accepts: list[FalseAccept] = []
    own_voice = 0
    last_report_s = 0.0
    async for scene, audio in _rendered(scenes, speech, seed):
        started = time.perf_counter()
        for start in range(0, scene.samples, FRAME_SAMPLES):
            heard_at = (scene.start_sample + start + FRAME_SAMPLES) / RATE_HZ
            hearing = await listener.hear(
                AudioChunk(audio[start : start + FRAME_SAMPLES], RATE_HZ, heard_at), False, timeline
            )
            if hearing.own_voice is not None:
                own_voice += 1
            if hearing.detection is not None:
                detection = hearing.detection
                accepts.append(
                    FalseAccept(detection.heard_at, detection.model, detection.score, scene, _said_at(scene, heard_at))
                )
                log.info("false accept at %s (%s, %s)", clock(heard_at), scene.kind, scene.mix)
        listening.wall_s += time.perf_counter() - started
        listening.audio_s += scene.seconds
        if listening.audio_s - last_report_s >= 600:
            last_report_s = listening.audio_s
            log.info("heard %s of the stream, %.1f x real time", clock(listening.audio_s), listening.x_realtime)
    return accepts, own_voice


def _said_at(scene: Scene, at_s: float) -> Said | None:
    """What was being said in `scene` at stream time `at_s`, or had ended within ATTRIBUTE_LATE_S."""
    within = at_s - scene.start_s
    for placed in reversed(scene.placed):
        if placed.start_s <= within <= placed.start_s + placed.seconds + ATTRIBUTE_LATE_S:
            return placed.said
    return None


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss.s."""
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    return f"{int(hours)}:{int(minutes):02d}:{rest:04.1f}"


# Recall: the wake-word clips, each alone in each noise mix.


@dataclass(frozen=True)
class WakeClip:
    """One wake word clip: who says it, and the audio."""

    voice: str
    samples: np.ndarray


@dataclass(frozen=True)
class RecallSet:
    """Wake word clips that one model should hear."""

    name: str
    model: str
    clips: tuple[WakeClip, ...]


def wake_phrase(config: Config) -> str:
    """The configured wake word as the voices should say it: "Hey Jarvis."."""
    return Path(config.wake.models[0]).stem.rsplit("_v", 1)[0].replace("_", " ").title() + "."


def recall_mixes(short: bool) -> list[tuple[str, float | None]]:
    """The noise mixes the clips are heard in: every noise at every SNR and a quiet room, or (short) two."""
    if short:
        return [(QUIET, None), ("kitchen", 10.0)]
    return [(QUIET, None)] + [(noise, snr) for noise in NOISES for snr in SNRS_DB]


def recall_sets(config: Config, speech: Speech, short: bool, recordings: bool) -> list[RecallSet]:
    """The configured wake word said by Piper and by espeak-ng, and the real wake words in tests/data."""
    phrase = wake_phrase(config)
    model = Path(config.wake.models[0]).stem
    scales = (1.0,) if short else PIPER_LENGTH_SCALES
    espeak = RECALL_ESPEAK[:1] if short else RECALL_ESPEAK
    wpms = (160,) if short else RECALL_ESPEAK_WPM
    piper = [Said(phrase, "en", speech.piper(scale)) for scale in scales]
    espeak_said = [
        Said(phrase, "en", Voice("espeak-ng", name + variant, wpm)) for name, variant in espeak for wpm in wpms
    ]
    sets = [
        RecallSet(
            f"{phrase.lower().rstrip('.')}, Piper", model, tuple(WakeClip(s.voice.label, speech.say(s)) for s in piper)
        ),
        RecallSet(
            f"{phrase.lower().rstrip('.')}, espeak-ng",
            model,
            tuple(WakeClip(s.voice.label, speech.say(s)) for s in espeak_said),
        ),
    ]
    if recordings:
        for wake_model, name in REAL_WAKE_WORDS:
            said = Said(name, "en", Voice("recording", name))
            sets.append(
                RecallSet(
                    f"{wake_model.replace('_', ' ')}, real ({name})", wake_model, (WakeClip(name, speech.say(said)),)
                )
            )
    return sets


async def hear_recall(
    listener: Listener,
    config: Config,
    recall: RecallSet,
    mixes: list[tuple[str, float | None]],
    seed: int,
    index: int,
    listening: Listening,
) -> dict[str, Any]:
    """Each clip of `recall` alone in each mix, through the listener (with the set's own wake word model when it
    is not the configured one); which were caught."""
    if recall.model not in (Path(m).stem for m in config.wake.models):
        wake_config = dataclasses.replace(config.wake, models=(recall.model,))
        listener = listener.with_wake(await listener.worker.run(WakeWordDetector, wake_config))
    await listener.reset()
    timeline = PlaybackTimeline()
    caught = []
    stray = 0
    at_sample = 0
    for clip_index, clip in enumerate(recall.clips):
        for mix_index, (noise, snr_db) in enumerate(mixes):
            rng = np.random.default_rng([seed, 4, index, clip_index, mix_index])
            lead = int(RECALL_LEAD_S * RATE_HZ)
            samples = math.ceil((lead + len(clip.samples) + RECALL_TAIL_S * RATE_HZ) / FRAME_SAMPLES) * FRAME_SAMPLES
            voice = np.zeros(samples, np.float32)
            _add(voice, lead, at_level(clip.samples, RECALL_DBFS))
            audio = mixed(voice, noise, snr_db, RECALL_DBFS, rng)
            clip_start_s = (at_sample + lead) / RATE_HZ
            clip_end_s = clip_start_s + len(clip.samples) / RATE_HZ
            heard = False
            started = time.perf_counter()
            for start in range(0, samples, FRAME_SAMPLES):
                heard_at = (at_sample + start + FRAME_SAMPLES) / RATE_HZ
                hearing = await listener.hear(
                    AudioChunk(audio[start : start + FRAME_SAMPLES], RATE_HZ, heard_at), False, timeline
                )
                if hearing.detection is None:
                    continue
                if clip_start_s <= heard_at <= clip_end_s + RECALL_LATE_S and not heard:
                    heard = True
                else:
                    stray += 1
            listening.wall_s += time.perf_counter() - started
            listening.audio_s += samples / RATE_HZ
            at_sample += samples
            caught.append(
                {"voice": clip.voice, "mix": mix_label(noise, snr_db), "snr": snr_label(snr_db), "caught": heard}
            )

    def tally(key: str, label: str) -> dict[str, int]:
        these = [c for c in caught if c[key] == label]
        return {"clips": len(these), "caught": sum(c["caught"] for c in these)}

    by_mix = {mix_label(noise, snr): tally("mix", mix_label(noise, snr)) for noise, snr in mixes}
    by_snr = {snr_label(snr): tally("snr", snr_label(snr)) for snr in dict.fromkeys(snr for _, snr in mixes)}
    count = sum(c["caught"] for c in caught)
    return {
        "set": recall.name,
        "model": recall.model,
        "voices": [clip.voice for clip in recall.clips],
        "clips": len(caught),
        "caught": count,
        "recall": round(count / len(caught), 4),
        "stray_detections": stray,
        "by_snr": by_snr,
        "by_mix": by_mix,
        "missed": [{"voice": c["voice"], "mix": c["mix"]} for c in caught if not c["caught"]],
    }


# The report.


def summarise(scenes: list[Scene], accepts: list[FalseAccept], own_voice: int, kinds: list[Kind]) -> dict[str, Any]:
    """Hours, false accepts and false accepts per hour, overall, by kind, by language and by noise mix."""
    total_h = sum(scene.seconds for scene in scenes) / 3600

    def row(name: str, hours: float, count: int, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            **extra,
            "hours": round(hours, 4),
            "false_accepts": count,
            "per_hour": round(count / hours, 3) if hours > 0 else None,
        }

    by_kind = []
    for kind in kinds:
        these = [s for s in scenes if s.kind == kind.name]
        hours = sum(s.seconds for s in these) / 3600
        count = sum(a.scene.kind == kind.name for a in accepts)
        by_kind.append(
            row(
                kind.name,
                hours,
                count,
                language=kind.language,
                what=kind.what,
                scenes=len(these),
                utterances=sum(len(s.placed) for s in these),
                speech_hours=round(sum(p.seconds for s in these for p in s.placed) / 3600, 4),
            )
        )
    by_language = [
        row(
            language,
            sum(s.seconds for s in scenes if _language(s, kinds) == language) / 3600,
            sum(_language(a.scene, kinds) == language for a in accepts),
        )
        for language in ("en", "zh", "-")
    ]
    talk = [s for s in scenes if s.kind != NOISE_ONLY]

    def grouped(key: Callable[[Scene], str], order: Callable[[str], Any]) -> list[dict[str, Any]]:
        """The speech scenes' hours and false accepts, grouped by `key`."""
        labels = sorted({key(s) for s in talk}, key=order)
        return [
            row(
                label,
                sum(s.seconds for s in talk if key(s) == label) / 3600,
                sum(a.scene.kind != NOISE_ONLY and key(a.scene) == label for a in accepts),
            )
            for label in labels
        ]

    by_noise = grouped(lambda s: s.noise, (QUIET, *NOISES).index)
    by_snr = grouped(
        lambda s: snr_label(s.snr_db), lambda label: -float(label.removesuffix(" dB").replace(QUIET, "inf"))
    )
    by_mix = grouped(lambda s: s.mix, _mix_order)
    ordinary = [s for s in scenes if s.kind != NEAR_MISS]
    ordinary_h = sum(s.seconds for s in ordinary) / 3600
    ordinary_count = sum(a.scene.kind != NEAR_MISS for a in accepts)
    return {
        "hours": round(total_h, 4),
        "speech_hours": round(sum(p.seconds for s in scenes for p in s.placed) / 3600, 4),
        "false_accepts": len(accepts),
        "per_hour": round(len(accepts) / total_h, 3) if total_h > 0 else None,
        "per_hour_without_near_misses": round(ordinary_count / ordinary_h, 3) if ordinary_h > 0 else None,
        "set_aside_as_own_voice": own_voice,
        "by_kind": by_kind,
        "by_language": by_language,
        "by_noise": by_noise,
        "by_snr": by_snr,
        "by_mix": by_mix,
        "heard": [
            {
                "at_s": round(a.at_s, 2),
                "at": clock(a.at_s),
                "kind": a.scene.kind,
                "mix": a.scene.mix,
                "model": a.model,
                "score": round(a.score, 3),
                "voice": a.said.voice.label if a.said else None,
                "said": a.said.text if a.said else None,
            }
            for a in accepts
        ],
    }


def _language(scene: Scene, kinds: list[Kind]) -> str:
    return next(kind.language for kind in kinds if kind.name == scene.kind)


def _mix_order(label: str) -> tuple[int, float]:
    noise, _, snr = label.partition(" ")
    return ((QUIET, *NOISES).index(noise), -float(snr.removesuffix(" dB") or "inf"))


def format_report(results: dict[str, Any]) -> str:
    """The results as plain-text tables."""
    stream = results["stream"]
    wake = results["config"]
    lines = [
        f"False wakes: {', '.join(wake['wake_models'])} at threshold {wake['threshold']:g}, refractory "
        f"{wake['refractory_s']:g} s, echo canceller {wake['echo_canceller']}, self-wake guard "
        f"{'on' if wake['ignore_own_voice'] else 'off'}; seed {results['seed']}",
        "",
        f"{'kind':12} {'lang':4} {'hours':>6} {'speech h':>8} {'utterances':>10} {'false accepts':>13} "
        f"{'per hour':>8}  what",
    ]
    for row in stream["by_kind"]:
        lines.append(
            f"{row['name']:12} {row['language']:4} {row['hours']:>6.3f} {row['speech_hours']:>8.3f} "
            f"{row['utterances']:>10} {row['false_accepts']:>13} {_per_hour(row['per_hour']):>8}  {row['what']}"
        )
    lines.append(
        f"{'all':12} {'':4} {stream['hours']:>6.3f} {stream['speech_hours']:>8.3f} "
        f"{sum(r['utterances'] for r in stream['by_kind']):>10} {stream['false_accepts']:>13} "
        f"{_per_hour(stream['per_hour']):>8}"
    )
    lines.append(f"without near misses: {_per_hour(stream['per_hour_without_near_misses'])} false accepts per hour")
    lines.append(
        "by language: "
        + "; ".join(
            f"{r['name']} {r['hours']:.3f} h, {r['false_accepts']} ({_per_hour(r['per_hour'])}/h)"
            for r in stream["by_language"]
        )
    )
    for name in ("noise", "snr"):
        lines.append(
            f"by {name} (speech scenes): "
            + "; ".join(f"{r['name']} {r['hours']:.2f} h, {r['false_accepts']}" for r in stream[f"by_{name}"])
        )
    lines.append("")
    if stream["heard"]:
        lines.append("False accepts heard:")
        for heard in stream["heard"]:
            said = f'"{heard["said"]}" ({heard["voice"]})' if heard["said"] else "(no speech: noise or a pause)"
            lines.append(
                f"  {heard['at']:>10}  {heard['kind']:11} {heard['mix']:16} {heard['model']} "
                f"{heard['score']:.2f}  {said}"
            )
    else:
        lines.append("False accepts heard: none")
    lines.append("")
    snrs = [snr_label(None)] + [snr_label(snr) for snr in SNRS_DB]
    snrs = [label for label in snrs if any(label in row["by_snr"] for row in results["recall"])]
    lines.append(
        f"{'recall set':40} {'model':11} {'caught':>8} {'recall':>7}  " + " ".join(f"{label:>7}" for label in snrs)
    )
    for row in results["recall"]:
        by_snr = " ".join(
            f"{row['by_snr'][label]['caught']:>3}/{row['by_snr'][label]['clips']:<3}"
            if label in row["by_snr"]
            else " " * 7
            for label in snrs
        )
        lines.append(
            f"{row['set']:40} {row['model']:11} {row['caught']:>3}/{row['clips']:<4} "
            f"{100 * row['recall']:>6.1f}%  {by_snr}"
        )
    for row in results["recall"]:
        if row["missed"]:
            missed = ", ".join(f"{m['voice']} in {m['mix']}" for m in row["missed"][:4])
            more = f", and {len(row['missed']) - 4} more" if len(row["missed"]) > 4 else ""
            lines.append(f"  missed ({row['set']}): {missed}{more}")
    speed = results["speed"]
    lines += [
        "",
        f"Heard {speed['stream_audio_s'] / 3600:.2f} h of stream at {speed['stream_x_realtime']:.1f} x real time and "
        f"{speed['recall_audio_s'] / 60:.1f} min of wake-word clips at {speed['recall_x_realtime']:.1f} x, on the "
        f"listen worker (cores {speed['listen_cores']}); clips: {speed['clips_made']} made in "
        f"{speed['making_s']:.0f} s, {speed['clips_cached']} from the cache.",
        "",
        DIPCO_NOTE,
    ]
    return "\n".join(lines)


def _per_hour(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# The run.


def run(config: Config, hours: float, seed: int, short_recall: bool, cache_dir: Path) -> dict[str, Any]:
    """Plan and make the stream and the clips, hear them, and return the results."""
    if shutil.which("espeak-ng") is None:
        raise VoicebotError("espeak-ng is not installed (apt-get install espeak-ng); the benchmark's voices need it")
    recordings = recordings_present(r.name for r in RECORDINGS) is not None
    if not recordings:
        log.warning(
            "no recordings in %s (installed from a wheel?): the recorded kinds and real wake words are left out",
            RECORDINGS_DIR,
        )
    engines = Engines.load(config, resolve_models(config, STAGES), STAGES)
    try:
        speech = Speech(engines, config, cache_dir)
        scenes = plan_stream(hours, seed, speech, recordings)
        sets = recall_sets(config, speech, short_recall, recordings)
        made, cached, making_s = speech.made, speech.cached, speech.making_s
        log.info(
            "planned %d scenes, %.2f h; clips: %d made in %.0f s, %d from the cache",
            len(scenes),
            sum(s.seconds for s in scenes) / 3600,
            made,
            making_s,
            cached,
        )
        stream_listening = Listening()
        recall_listening = Listening()
        listener = engines.listener
        accepts, own_voice = asyncio.run(hear_stream(listener, scenes, speech, seed, stream_listening))
        mixes = recall_mixes(short_recall)
        recall = [
            asyncio.run(hear_recall(listener, config, recall_set, mixes, seed, index, recall_listening))
            for index, recall_set in enumerate(sets)
        ]
        kinds = [kind for kind in KINDS if kind.name in {s.kind for s in scenes} or kind.name == NOISE_ONLY]
        return {
            "seed": seed,
            "hours_asked": hours,
            "machine": machine(),
            "config": {
                "profile": config.profile,
                "wake_models": list(config.wake.models),
                "threshold": config.wake.threshold,
                "refractory_s": config.wake.refractory_s,
                "ignore_own_voice": config.wake.ignore_own_voice,
                "echo_canceller": config.audio.echo_canceller,
                "piper_voice": speech.piper_voice,
            },
            "stream": summarise(scenes, accepts, own_voice, kinds),
            "recall_mixes": [mix_label(noise, snr) for noise, snr in mixes],
            "recall": recall,
            "speed": {
                "stream_audio_s": round(stream_listening.audio_s, 1),
                "stream_wall_s": round(stream_listening.wall_s, 1),
                "stream_x_realtime": round(stream_listening.x_realtime, 2),
                "recall_audio_s": round(recall_listening.audio_s, 1),
                "recall_wall_s": round(recall_listening.wall_s, 1),
                "recall_x_realtime": round(recall_listening.x_realtime, 2),
                "listen_cores": list(listener.worker.cores),
                "clips_made": made,
                "clips_cached": cached,
                "making_s": round(making_s, 1),
            },
            "note": DIPCO_NOTE,
        }
    finally:
        engines.close()


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: hours must be a number above 0, such as 2 or 0.02") from None
    if not (math.isfinite(hours) and 0 < hours <= 100):
        raise argparse.ArgumentTypeError(f"{text!r}: hours must be above 0 and at most 100")
    return hours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicebot.tools.bench_wake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=_hours, default=2.0, help="hours of speech (default 2; 0.02 for CI)")
    parser.add_argument(
        "--seed", type=int, default=1, help="the seed every choice in the stream comes from (default 1)"
    )
    parser.add_argument(
        "--recall",
        choices=("full", "short"),
        default="full",
        help="full: every wake-word voice in every noise mix; short: one Piper and one espeak-ng clip, quiet and "
        "a busy kitchen at 10 dB (for CI)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results, with every false accept, as JSON")
    parser.add_argument(
        "--cache", metavar="DIR", type=Path, default=CACHE_DIR / "bench_wake", help="where synthesised clips are kept"
    )
    parser.add_argument("--config", metavar="PATH", help="YAML config file")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], help="override a key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    try:
        config = load_config(args.config, args.set)
        results = run(config, args.hours, args.seed, args.recall == "short", args.cache)
    except VoicebotError as error:
        print(f"bench_wake: {error}", file=sys.stderr)
        return 1
    results["command"] = "python -m voicebot.tools.bench_wake " + " ".join(argv if argv is not None else sys.argv[1:])
    print(format_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
