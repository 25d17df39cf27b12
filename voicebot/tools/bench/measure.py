"""What every part of the benchmark measures with: timing an await, reading a run's trace, medians and ratios."""

from __future__ import annotations

import re
import statistics
import time
from typing import Any, Awaitable, TypeVar

from voicebot.errors import VoicebotError

T = TypeVar("T")


async def timed_async(work: Awaitable[T]) -> tuple[float, T]:
    """Seconds awaiting `work` took, and what it returned."""
    started = time.perf_counter()
    result = await work
    return time.perf_counter() - started, result


def first_event(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The first trace event called `name`; a run without one is a broken benchmark turn."""
    for event in events:
        if event["event"] == name:
            return event
    raise VoicebotError(f"benchmark turn has no {name!r} event; events: {[e['event'] for e in events]}")


def said(events: list[dict[str, Any]]) -> str:
    """The answer's sentences, as the trace has them."""
    return " ".join(e["text"] for e in events if e["event"] == "sentence")


def words(text: str) -> set[str]:
    """The lowercase words in `text`."""
    return set(re.findall(r"[a-z]+", text.lower()))


def median(values: list[float]) -> float:
    """The median, rounded as the report gives it."""
    return round(statistics.median(values), 4)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None where either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 3)


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value."""
    return {
        "median": median(values),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "values": [round(v, 4) for v in values],
    }


def summaries(rows: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """A summary of each figure over rows that all name the same figures."""
    return {name: summary([row[name] for row in rows]) for name in rows[0]}
