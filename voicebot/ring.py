"""A finished timer or alarm ringing: bursts of beeps and what ended, said aloud, until stopped or timers.ring_s.

The pipeline (or the satellite) owns the ringing state and starts and stops this; while it plays, the
microphone is still heard (through the echo canceller), so the wake word, or "stop", ends it.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from voicebot.audio import AudioSink
from voicebot.config import TimersConfig
from voicebot.earcons import ring_burst
from voicebot.runtime.trace import Tracer

log = logging.getLogger(__name__)

BURSTS_BETWEEN_WORDS = 2
"""Beep bursts between each time the ring says what ended."""

Say = Callable[[str, str], Awaitable[None]]
"""Says a text (in a language) through the same output."""


async def ring(
    words: list[tuple[str, str]], sink: AudioSink, config: TimersConfig, tracer: Tracer, say: Say | None = None
) -> None:
    """Ring until `config.ring_s` has passed (cancel the task to stop it sooner): beeps, then, with `say`, each
    (text, language) of `words`, what ended ("your pasta timer is done")."""
    burst = ring_burst(config.volume)
    deadline = time.monotonic() + config.ring_s

    def on_first_sample(heard_at: float) -> None:
        tracer.emit("ring_audio_start", t=heard_at)

    sink.start(on_first_sample)
    try:
        while True:
            for _ in range(BURSTS_BETWEEN_WORDS):
                await sink.play(burst)
                await sink.drain()
                if time.monotonic() >= deadline:
                    return
            if say is not None:
                for text, language in words:
                    await say(text, language)
    except BaseException:
        sink.stop()
        raise
