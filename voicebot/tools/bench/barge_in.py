"""Barge-in: a question with a long answer, the wake word 2 to 3 s into the reply, then a second question.

The reaction is the time from the `wake` event to the output falling silent; the time from the end of
the spoken wake word is given beside it, and whether the second question was answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicebot.audio import INPUT_RATE_HZ, AudioChunk
from voicebot.config import Config
from voicebot.engines import Engines
from voicebot.tools.bench.measure import summary, words
from voicebot.tools.bench.realtime import VOICEBOT, run_turn
from voicebot.tools.bench.turns import (
    ALEXA,
    GAP_AFTER_WAKE_S,
    LEAD_IN_S,
    TRAILING_SILENCE_S,
    recording,
    silence,
    speak,
    speech_span,
    wake_phrase,
)

LONG_QUESTIONS = (
    "Tell me a long story about a lighthouse keeper and his dog.",
    "Tell me everything you know about the history of the bicycle.",
    "Explain in detail how a steam engine works.",
)
SECOND_QUESTION = "What is the capital of France?"
SECOND_ANSWER_WORDS = frozenset({"capital", "france"})
# Silence after the long question: the reply starts about 1 s after it, so the barge-in wake word,
# which is heard as it ends, lands 2 to 3 s into the reply.
BARGE_IN_GAP_S = 2.8


@dataclass(frozen=True)
class BargeInClip:
    """A question with a long answer, then the wake word and a second question 2 to 3 s into the reply."""

    wake: str
    question: str
    audio: AudioChunk
    wake_end_s: float
    """Where the barge-in wake word ends in the clip."""


def barge_in(engines: Engines, config: Config, count: int, data: Path | None) -> dict[str, Any]:
    """Run the barge-in clips and measure how soon the output fell silent after the wake word."""
    rows = []
    for clip in barge_in_clips(engines, count, data):
        events = run_turn(engines, clip.audio, VOICEBOT).events
        rows.append({"wake": clip.wake, "question": clip.question, **barge_in_outcome(events, clip.wake_end_s)})
    reactions = [row["reaction_s"] for row in rows if row["reaction_s"] is not None]
    from_speech = [row["wake_end_to_silent_s"] for row in rows if row["wake_end_to_silent_s"] is not None]
    return {
        "clips": len(rows),
        "barged_in": sum(row["barged_in"] for row in rows),
        "stopped_playback": len(reactions),
        "second_question_answered": sum(row["second_question_answered"] for row in rows),
        "reaction_s": summary(reactions) if reactions else None,
        "wake_end_to_silent_s": summary(from_speech) if from_speech else None,
        "barge_in_enabled": config.conversation.barge_in,
        "rows": rows,
    }


def barge_in_clips(engines: Engines, count: int, data: Path | None) -> list[BargeInClip]:
    """`count` clips, alternating a person's wake word (when the recordings are here) and Piper's."""
    piper_wake = speak(engines, wake_phrase(engines.config))
    wakes = [("piper", piper_wake)]
    if data is not None:
        # The real recording first, so that --short's one clip is a person.
        wakes.insert(0, (ALEXA.name, recording(ALEXA, data)))
    second = speak(engines, SECOND_QUESTION)
    clips = []
    for index in range(count):
        question = LONG_QUESTIONS[(index // len(wakes)) % len(LONG_QUESTIONS)]
        wake_name, wake = wakes[index % len(wakes)]
        parts = [
            silence(LEAD_IN_S),
            piper_wake,
            silence(GAP_AFTER_WAKE_S),
            speak(engines, question),
            silence(BARGE_IN_GAP_S),
            wake,
            silence(GAP_AFTER_WAKE_S),
            second,
            silence(TRAILING_SILENCE_S),
        ]
        wake_end_s = sum(len(part) for part in parts[:5]) / INPUT_RATE_HZ + speech_span(wake)[1]
        clips.append(BargeInClip(wake_name, question, AudioChunk(np.concatenate(parts), INPUT_RATE_HZ), wake_end_s))
    return clips


def barge_in_outcome(events: list[dict[str, Any]], wake_end_s: float) -> dict[str, Any]:
    """What one clip's trace shows: whether it barged in, how soon the output fell silent, the second answer."""
    barges = [i for i, e in enumerate(events) if e["event"] == "barge_in"]
    if not barges:
        return {
            "barged_in": False,
            "state": None,
            "wake_into_reply_s": None,
            "reaction_s": None,
            "wake_end_to_silent_s": None,
            "second_question_answered": False,
        }
    at = barges[0]
    wake = next(e for e in reversed(events[:at]) if e["event"] == "wake")
    stop = next((e for e in events[at:] if e["event"] == "playback_stop"), None)
    reply_started = next((e["t"] for e in events[:at] if e["event"] == "playback_start"), None)
    later = events[at:]
    heard = [e["text"] for e in later if e["event"] == "transcript"]
    answered = any(e["event"] == "turn_end" and e["reason"] == "answered" for e in later)
    return {
        "barged_in": True,
        "state": events[at]["state"],
        "wake_into_reply_s": round(wake["t"] - reply_started, 3) if reply_started is not None else None,
        "reaction_s": round(stop["t"] - wake["t"], 4) if stop is not None else None,
        "wake_end_to_silent_s": round(stop["t"] - wake_end_s, 4) if stop is not None else None,
        "second_question_answered": answered and any(words(text) >= SECOND_ANSWER_WORDS for text in heard),
    }
