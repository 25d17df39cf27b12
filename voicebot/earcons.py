"""Earcons: short tones that tell the person what the assistant heard, made in code.

Each is a few soft sine tones with raised-cosine edges (no clicks), well under 0.3 s, so none
of them can hold up the reply that follows.
"""

from __future__ import annotations

import enum

import numpy as np

from voicebot.audio import AudioChunk
from voicebot.config import EarconsConfig

EARCON_RATE_HZ = 22050
EDGE_S = 0.01


class Earcon(enum.Enum):
    """What an earcon says."""

    WAKE = "wake"
    """The wake word was heard: speak now."""
    FOLLOW_UP = "follow_up"
    """Still listening for a follow-up, no wake word needed."""
    ERROR = "error"
    """Something went wrong with this turn."""


# (frequency in Hz, seconds) for each tone, played one after another.
TONES = {
    Earcon.WAKE: ((660.0, 0.07), (880.0, 0.09)),
    Earcon.FOLLOW_UP: ((880.0, 0.08),),
    Earcon.ERROR: ((440.0, 0.12), (330.0, 0.16)),
}


def tone(frequency_hz: float, seconds: float, rate_hz: int = EARCON_RATE_HZ) -> np.ndarray:
    """A sine tone at full scale with soft edges."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    samples = np.sin(2 * np.pi * frequency_hz * t)
    edge = min(int(EDGE_S * rate_hz), len(samples) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, edge))
    samples[:edge] *= ramp
    samples[len(samples) - edge :] *= ramp[::-1]
    return samples.astype(np.float32)


class Earcons:
    """The earcons the config turns on, at its volume."""

    def __init__(self, config: EarconsConfig) -> None:
        enabled = {Earcon.WAKE: config.wake, Earcon.FOLLOW_UP: config.follow_up, Earcon.ERROR: config.error}
        self._sounds = {
            earcon: AudioChunk(np.concatenate([tone(f, s) for f, s in tones]) * config.volume, EARCON_RATE_HZ)
            for earcon, tones in TONES.items()
            if enabled[earcon] and config.volume > 0
        }

    def sound(self, earcon: Earcon) -> AudioChunk | None:
        """The audio for `earcon`, or None if it is turned off."""
        return self._sounds.get(earcon)


RING_BEEP = ((1047.0, 0.12), (0.0, 0.08))
"""One beep of the ring: C6 for 0.12 s, then a short gap; four make one burst."""
RING_BEEPS = 4
RING_PAUSE_S = 0.5


def ring_burst(volume: float) -> AudioChunk:
    """One burst of a timer's ring (four quick beeps, then a pause), about 1.3 s, at `volume` (0 to 1).

    A high, quick pattern, like a kitchen timer's, unlike the softer earcons, so it is heard across a room.
    """
    beep = np.concatenate([tone(f, s) if f else np.zeros(int(s * EARCON_RATE_HZ), np.float32) for f, s in RING_BEEP])
    burst = np.concatenate([*[beep] * RING_BEEPS, np.zeros(int(RING_PAUSE_S * EARCON_RATE_HZ), np.float32)])
    return AudioChunk((burst * volume).astype(np.float32), EARCON_RATE_HZ)
