"""Timers and alarms, kept on the wall clock so they survive a restart.

A running timer is stored as the wall-clock time it ends (not seconds left), so voicebot killed and started
again still rings it at its original time; a paused one as the seconds it has left. An alarm is a timer
that ends at a clock time. Every change goes through TimerBook; the IntentService saves it.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass, field
from typing import Any


class Refusal(Exception):
    """A request the handlers answer with an explanation instead of an action; `key` names the response."""

    def __init__(self, key: str, **fields: Any) -> None:
        super().__init__(key)
        self.key = key
        self.fields = fields


@dataclass
class Timer:
    """One timer or alarm."""

    id: int
    duration_s: float
    """What it was set for, which names it ("the 10 minute timer") even after time is added or taken off; for
    an alarm, from when it was set to when it rings."""
    language: str
    name: str | None = None
    ends_at: float | None = None
    """Wall-clock time (time.time()) it ends, while running."""
    remaining_s: float | None = None
    """Seconds left, while paused."""
    alarm_at: str | None = None
    """For an alarm, the local time it was set for, as HH:MM."""
    created_at: float = field(default_factory=time.time)

    @property
    def paused(self) -> bool:
        """Whether it is paused."""
        return self.ends_at is None

    @property
    def is_alarm(self) -> bool:
        """Whether it rings at a clock time rather than after a duration."""
        return self.alarm_at is not None

    def left_s(self, now: float) -> float:
        """Seconds until it ends (paused: the seconds it had left)."""
        if self.ends_at is None:
            return max(0.0, self.remaining_s or 0.0)
        return max(0.0, self.ends_at - now)

    def to_dict(self) -> dict[str, Any]:
        """As saved in the state file."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timer:
        """From the state file; ValueError if it is not a timer."""
        try:
            timer = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        except TypeError as error:
            raise ValueError(f"not a timer: {error}") from None
        if not isinstance(timer.id, int) or not isinstance(timer.duration_s, (int, float)):
            raise ValueError("not a timer: id or duration_s of the wrong type")
        if (timer.ends_at is None) == (timer.remaining_s is None):
            raise ValueError("not a timer: it must have either ends_at or remaining_s")
        return timer


class TimerBook:
    """The timers and alarms, with the rules for setting, finding and changing them."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.timers: dict[int, Timer] = {}
        self._next_id = 1

    def start(self, duration_s: float, language: str, name: str | None = None, now: float | None = None) -> Timer:
        """Start a timer; Refusal for one shorter than a second, longer than the cap, or a name already used."""
        now = time.time() if now is None else now
        if duration_s < 1:
            raise Refusal("timer_too_short")
        if duration_s > self.max_s:
            raise Refusal("timer_too_long", max_s=self.max_s)
        if name and any(t.name and t.name.lower() == name.lower() for t in self.timers.values()):
            raise Refusal("timer_name_taken", name=name)
        return self._add(Timer(self._take_id(), duration_s, language, name, ends_at=now + duration_s))

    def set_alarm(self, at: datetime.datetime, language: str, now: float | None = None) -> Timer:
        """Set an alarm for the local time `at` (aware); Refusal for a time already past."""
        now = time.time() if now is None else now
        ends_at = at.timestamp()
        if ends_at <= now:
            raise Refusal("alarm_in_past")
        if ends_at - now > 7 * 24 * 3600:
            raise Refusal("alarm_too_far")
        timer = Timer(self._take_id(), ends_at - now, language, ends_at=ends_at, alarm_at=at.strftime("%H:%M"))
        return self._add(timer)

    def _take_id(self) -> int:
        taken = self._next_id
        self._next_id += 1
        return taken

    def _add(self, timer: Timer) -> Timer:
        self.timers[timer.id] = timer
        return timer

    def find(self, name: str | None = None, duration_s: float | None = None, alarms: bool = False) -> list[Timer]:
        """The timers (or alarms) a request means: by name, by the duration they were set for, or all of them."""
        chosen = [t for t in self.timers.values() if t.is_alarm == alarms]
        if name:
            chosen = [t for t in chosen if t.name and t.name.lower() == name.lower()]
        if duration_s is not None:
            chosen = [t for t in chosen if abs(t.duration_s - duration_s) < 1]
        return sorted(chosen, key=lambda t: t.created_at)

    def one(self, name: str | None = None, duration_s: float | None = None) -> Timer:
        """The one timer a request means; Refusal when there is none, or several and nothing says which."""
        found = self.find(name, duration_s)
        if not found:
            raise Refusal("no_such_timer" if (name or duration_s) else "no_timer", name=name)
        if len(found) > 1:
            raise Refusal("which_timer", timers=found)
        return found[0]

    def cancel(self, timer: Timer) -> None:
        """Remove a timer."""
        self.timers.pop(timer.id, None)

    def change(self, timer: Timer, by_s: float, now: float | None = None) -> None:
        """Add `by_s` seconds to a timer (negative: take them off); Refusal if that ends it or passes the cap."""
        now = time.time() if now is None else now
        left = timer.left_s(now) + by_s
        if left < 1:
            raise Refusal("timer_would_end")
        if left > self.max_s:
            raise Refusal("timer_too_long", max_s=self.max_s)
        if timer.paused:
            timer.remaining_s = left
        else:
            timer.ends_at = now + left

    def pause(self, timer: Timer, now: float | None = None) -> None:
        """Stop a timer's clock; Refusal if it is already paused."""
        if timer.paused:
            raise Refusal("timer_already_paused")
        now = time.time() if now is None else now
        timer.remaining_s, timer.ends_at = timer.left_s(now), None

    def resume(self, timer: Timer, now: float | None = None) -> None:
        """Start a paused timer's clock again; Refusal if it is running."""
        if not timer.paused:
            raise Refusal("timer_not_paused")
        now = time.time() if now is None else now
        timer.ends_at, timer.remaining_s = now + (timer.remaining_s or 0.0), None

    def due(self, now: float | None = None) -> list[Timer]:
        """Take out and return every running timer that has ended, earliest first."""
        now = time.time() if now is None else now
        ended = sorted((t for t in self.timers.values() if t.ends_at is not None and t.ends_at <= now), key=_end)
        for timer in ended:
            del self.timers[timer.id]
        return ended

    def next_end(self) -> float | None:
        """The wall-clock time the next running timer ends, if any."""
        ends = [t.ends_at for t in self.timers.values() if t.ends_at is not None]
        return min(ends) if ends else None

    def to_state(self) -> dict[str, Any]:
        """As saved in the state file."""
        return {"next_id": self._next_id, "items": [t.to_dict() for t in self.timers.values()]}

    def load(self, state: dict[str, Any]) -> list[str]:
        """Take the timers from the state file; returns a line for each entry that could not be read."""
        problems = []
        for data in state.get("items", []) if isinstance(state, dict) else []:
            try:
                timer = Timer.from_dict(data if isinstance(data, dict) else {})
            except ValueError as error:
                problems.append(str(error))
                continue
            self.timers[timer.id] = timer
        next_id = state.get("next_id") if isinstance(state, dict) else None
        self._next_id = max([next_id if isinstance(next_id, int) else 1, *(t.id + 1 for t in self.timers.values())])
        return problems


def _end(timer: Timer) -> float:
    return timer.ends_at if timer.ends_at is not None else float("inf")


def local_alarm_time(
    hour: int, minute: int, day_offset: int | None, now: datetime.datetime | None = None
) -> datetime.datetime:
    """The next local time hour:minute (today or tomorrow), or on the day `day_offset` days from today; on the
    machine's time zone. Refusal for a time that does not exist: 25 o'clock, or one skipped by a clock change."""
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise Refusal("no_such_time", hour=hour, minute=minute)
    now = now or datetime.datetime.now().astimezone()
    day = now.date() + datetime.timedelta(days=day_offset or 0)
    for _ in range(2):
        candidate = _local(day, hour, minute)
        if day_offset is not None or candidate > now:
            return candidate
        day += datetime.timedelta(days=1)
    return _local(day, hour, minute)


def _local(day: datetime.date, hour: int, minute: int) -> datetime.datetime:
    """hour:minute on `day` in local time; Refusal if the clocks skip it (spring forward)."""
    fields = (day.year, day.month, day.day, hour, minute, 0, 0, 0, -1)
    epoch = time.mktime(fields)
    back = time.localtime(epoch)
    if (back.tm_hour, back.tm_min) != (hour, minute):
        raise Refusal("time_skipped", hour=hour, minute=minute)
    return datetime.datetime.fromtimestamp(epoch).astimezone()
