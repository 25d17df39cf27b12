"""The intent stage's one owner: it matches text, runs the handler, keeps the state handlers change (timers,
alarms, lists, the volume) and saves it, and says when a timer or alarm rings.

Callers ask `handle(text, language)`: a match is answered here, without the LLM; None means the text is the
LLM's. The pipeline hears only what to say and, through `run(on_ring)`, what to ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from voicebot.audio import Volume
from voicebot.config import IntentsConfig, TimersConfig
from voicebot.intents.lists import ListBook
from voicebot.intents.match import IntentMatch, IntentMatcher
from voicebot.intents.responses import LIST_NAMES, joined, say
from voicebot.intents.speech import calendar_date, clock_time, day_word, duration, zh_number
from voicebot.intents.state import StateDirError, StateFile, default_state_dir
from voicebot.intents.timers import Refusal, Timer, TimerBook, local_alarm_time

log = logging.getLogger(__name__)

DEVICE_INTENTS = frozenset(
    {
        "HassTurnOn",
        "HassTurnOff",
        "HassToggle",
        "HassLightSet",
        "HassClimateSetTemperature",
        "HassClimateGetTemperature",
        "HassGetState",
        "HassFanSetSpeed",
        "HassSetPosition",
        "HassVacuumStart",
        "HassVacuumReturnToBase",
        "HassVacuumCleanArea",
        "HassLawnMowerStartMowing",
        "HassLawnMowerDock",
        "HassMediaPause",
        "HassMediaUnpause",
        "HassMediaNext",
        "HassMediaPrevious",
        "HassMediaSearchAndPlay",
        "HassBroadcast",
    }
)
"""Intents about devices and media Home Assistant would control: alone, voicebot says it cannot reach them."""
PASSED_TO_LLM = frozenset({"HassRespond"})
"""Intents that are conversation, not commands."""
VOLUME_STEP = 0.1
CLOCK_JUMP_CHECK_S = 30.0
"""The longest the scheduler sleeps before looking at the wall clock again: a Pi has no real-time clock, and
its time may jump when NTP sets it after boot."""


@dataclass(frozen=True)
class Handled:
    """An intent answered here: what was matched and what to say ("" for a silent stop)."""

    match: IntentMatch
    text: str
    stop: bool = False
    """Whether it asked to stop (never mind, stop): the turn ends with nothing said."""


@dataclass(frozen=True)
class Ring:
    """A timer or alarm that has ended: what to say while it rings, and how late it is."""

    timer: Timer
    text: str
    late_s: float


class IntentService:
    """Matches text to intents and handles them on the state it owns; saves every change at once."""

    def __init__(
        self, config: IntentsConfig, timers: TimersConfig, volume: Volume | None = None, clock=time.time
    ) -> None:
        self.config = config
        self.timers_config = timers
        self.volume = volume or Volume()
        self._clock = clock
        self.lists = ListBook(tuple(config.lists or ()))
        self.book = TimerBook(timers.max_h * 3600)
        folder = Path(config.state_dir).expanduser() if config.state_dir else default_state_dir()
        self.state_file = StateFile(folder)
        self._lock_file: int | None = None
        self.saving = self._take_ownership(folder)
        custom = Path(config.custom_sentences).expanduser() if config.custom_sentences else None
        self.matcher = IntentMatcher(custom, self.lists.spoken_names(), self.lists.spoken_names(but="shopping"))
        self._changed: asyncio.Event | None = None
        self._missed: list[Ring] = []
        self._load()

    # Ownership and saving.

    def _take_ownership(self, folder: Path) -> bool:
        """One voicebot at a time keeps the state: a second one (a `voicebot chat` beside the service) works on
        a copy it does not save, so neither undoes the other's changes."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = os.open(folder / "state.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            log.error("timers and lists will not be kept: cannot use %s (%s)", folder, error.strerror or error)
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            log.warning("another voicebot keeps the timers and lists in %s; this one's changes are not saved", folder)
            return False
        self._lock_file = handle
        return True

    def close(self) -> None:
        """Let another voicebot keep the state."""
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def _load(self) -> None:
        state = self.state_file.load()
        problems = self.book.load(state.get("timers", {})) + self.lists.load(state.get("lists", {}))
        for problem in problems[:5]:
            log.warning("state file %s: skipped %s", self.state_file.path, problem)
        volume = state.get("volume", {})
        if isinstance(volume, dict):
            level = volume.get("level", 1.0)
            self.volume.level = min(1.0, max(0.0, float(level))) if isinstance(level, (int, float)) else 1.0
            self.volume.muted = bool(volume.get("muted", False))
        now = self._clock()
        self._missed = [self._ring(timer, now) for timer in self.book.due(now)]
        if self._missed:
            self._save()

    def _save(self) -> bool:
        if not self.saving:
            return True
        state = {
            "timers": self.book.to_state(),
            "lists": self.lists.to_state(),
            "volume": {"level": self.volume.level, "muted": self.volume.muted},
        }
        try:
            self.state_file.save(state)
        except StateDirError as error:
            log.error("%s", error)
            return False
        return True

    def _changed_now(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # Answering.

    def warm_up(self) -> None:
        """Match one sentence per language, so the first question does not pay for hassil's set-up; blocking."""
        for text, language in (("what time is it", "en"), ("现在几点", "zh"), ("set a timer for 1 minute", "en")):
            self.matcher.match(text, language)

    def match(self, text: str, language: str) -> IntentMatch | None:
        """The intent `text` asks for, if voicebot answers it (or knows it cannot); None: the LLM's. Changes nothing,
        so a question still being asked can be matched early."""
        if not self.config.enabled:
            return None
        match = self.matcher.match(text, language)
        return None if match is None or match.intent in PASSED_TO_LLM else match

    def answer(self, match: IntentMatch) -> Handled:
        """Carry out a matched intent and say what was done (or why not); the change is saved before it returns."""
        language = match.language
        try:
            reply = self._answer(match, language)
        except Refusal as refusal:
            reply = self._refusal(refusal, language)
        changed = match.intent not in ("HassGetCurrentTime", "HassGetCurrentDate", "HassNevermind")
        if changed and not self._save():
            reply = f"{reply} {say('state_not_saved', language)}".strip()
        self._changed_now()
        return Handled(match, reply, stop=match.intent == "HassNevermind")

    def handle(self, text: str, language: str) -> Handled | None:
        """Match `text` and, if it is an intent, answer it (a typed question: nothing to wait for)."""
        match = self.match(text, language)
        return self.answer(match) if match is not None else None

    def _refusal(self, refusal: Refusal, language: str) -> str:
        fields = dict(refusal.fields)
        if refusal.key == "timer_too_long":
            fields["max"] = duration(fields.pop("max_s"), language)
        if refusal.key == "which_timer":
            timers = fields.pop("timers")
            fields |= {"count": len(timers), "timers": joined([self._describe(t, language) for t in timers], language)}
        if refusal.key == "no_such_time":
            fields["minute"] = f"{int(fields['minute']):02d}"
        if refusal.key == "time_skipped":
            fields["time"] = clock_time(datetime.time(fields["hour"], fields["minute"]), language)
        if refusal.key == "no_such_list":
            fields["name"] = fields.get("name") or ""
        return say(refusal.key, language, **fields)

    def _answer(self, match: IntentMatch, language: str) -> str:
        intent, slots = match.intent, match.slots
        handler = getattr(self, f"_on_{intent}", None)
        if handler is not None:
            return handler(slots, language)
        if intent in DEVICE_INTENTS:
            return say("no_devices", language)
        if intent == "HassGetWeather":
            return say("no_weather", language)
        return say("cannot_do", language)

    # The time and the date.

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock()).astimezone()

    def _on_HassGetCurrentTime(self, slots: dict[str, Any], language: str) -> str:
        return say("current_time", language, time=clock_time(self._now(), language))

    def _on_HassGetCurrentDate(self, slots: dict[str, Any], language: str) -> str:
        return say("current_date", language, date=calendar_date(self._now().date(), language))

    def _on_HassNevermind(self, slots: dict[str, Any], language: str) -> str:
        return ""

    # Timers.

    def _describe(self, timer: Timer, language: str) -> str:
        """A timer as named in a sentence: "the pasta timer", "the timer for 10 minutes", 十分钟的计时器."""
        if timer.is_alarm:
            return clock_time(datetime.time(*map(int, (timer.alarm_at or "0:0").split(":"))), language)
        if language == "zh":
            return f"{timer.name}计时器" if timer.name else f"{duration(timer.duration_s, language)}的计时器"
        if timer.name:
            return f"the {timer.name} timer"
        return f"the timer for {duration(timer.duration_s, language)}"

    @staticmethod
    def _seconds(slots: dict[str, Any], prefix: str = "") -> float | None:
        if prefix == "" and "special" in slots:
            return float(slots["special"])
        parts = [(f"{prefix}hours", 3600), (f"{prefix}minutes", 60), (f"{prefix}seconds", 1)]
        found = [(float(slots[name]), unit) for name, unit in parts if name in slots]
        return sum(value * unit for value, unit in found) if found else None

    def _timer_named(self, slots: dict[str, Any]) -> Timer:
        name = slots.get("name")
        return self.book.one(name if isinstance(name, str) else None, self._seconds(slots, "start_"))

    def _on_HassStartTimer(self, slots: dict[str, Any], language: str) -> str:
        seconds = self._seconds(slots)
        name = slots.get("name") if isinstance(slots.get("name"), str) else None
        command = slots.get("conversation_command")
        if name is None and isinstance(command, str) and command.strip().lower() not in ("remind me", "提醒我"):
            name = command.strip()
        timer = self.book.start(seconds or 0, language, name, self._clock())
        key = "named_timer_started" if timer.name else "timer_started"
        return say(key, language, name=timer.name, duration=duration(timer.duration_s, language))

    def _on_HassCancelTimer(self, slots: dict[str, Any], language: str) -> str:
        timer = self._timer_named(slots)
        self.book.cancel(timer)
        return say("timer_cancelled", language, timer=self._describe(timer, language))

    def _on_HassCancelAllTimers(self, slots: dict[str, Any], language: str) -> str:
        timers = self.book.find()
        if not timers:
            raise Refusal("no_timer")
        for timer in timers:
            self.book.cancel(timer)
        if len(timers) == 1:
            return say("timer_cancelled", language, timer=self._describe(timers[0], language))
        return say("timers_cancelled", language, count=len(timers))

    def _on_HassTimerStatus(self, slots: dict[str, Any], language: str) -> str:
        now = self._clock()
        if slots.get("name") or any(k.startswith("start_") for k in slots):
            timers = [self._timer_named(slots)]
        else:
            timers = self.book.find()
        if not timers:
            raise Refusal("no_timer")
        if len(timers) == 1:
            timer = timers[0]
            key = "timer_paused_left" if timer.paused else "timer_left"
            return say(key, language, timer=self._describe(timer, language), left=duration(timer.left_s(now), language))
        each = [self._with_time_left(t, now, language) for t in timers]
        return say("timers_left", language, count=len(timers), timers=joined(each, language))

    def _with_time_left(self, timer: Timer, now: float, language: str) -> str:
        left = duration(timer.left_s(now), language)
        if language == "zh":
            return f"{self._describe(timer, language)}还剩{left}"
        return f"{self._describe(timer, language)} with {left} left"

    def _change_timer(self, slots: dict[str, Any], language: str, sign: int) -> str:
        timer = self._timer_named(slots)
        delta = self._seconds(slots) or 0
        self.book.change(timer, sign * delta, self._clock())
        return say(
            "timer_changed",
            language,
            timer=self._describe(timer, language),
            left=duration(timer.left_s(self._clock()), language),
        )

    def _on_HassIncreaseTimer(self, slots: dict[str, Any], language: str) -> str:
        return self._change_timer(slots, language, 1)

    def _on_HassDecreaseTimer(self, slots: dict[str, Any], language: str) -> str:
        return self._change_timer(slots, language, -1)

    def _on_HassPauseTimer(self, slots: dict[str, Any], language: str) -> str:
        timer = self._timer_named(slots)
        self.book.pause(timer, self._clock())
        left = duration(timer.left_s(self._clock()), language)
        return say("timer_paused", language, timer=self._describe(timer, language), left=left)

    def _on_HassUnpauseTimer(self, slots: dict[str, Any], language: str) -> str:
        timer = self._timer_named(slots)
        self.book.resume(timer, self._clock())
        left = duration(timer.left_s(self._clock()), language)
        return say("timer_resumed", language, timer=self._describe(timer, language), left=left)

    # Alarms.

    def _on_VoicebotSetAlarm(self, slots: dict[str, Any], language: str) -> str:
        if "named_time" in slots:
            hour, minute = (int(part) for part in str(slots["named_time"]).split(":"))
        else:
            hour, minute = int(slots.get("hour", 0)), int(slots.get("minute", 0))
        ampm = slots.get("ampm")
        if ampm is not None and not (0 <= hour <= 12):
            raise Refusal("no_such_time", hour=hour, minute=minute)
        if ampm == "pm" and hour < 12:
            hour += 12
        elif ampm == "am" and hour == 12:
            hour = 0
        elif ampm == "noon" and hour < 11:
            hour += 12
        day = slots.get("day")
        now = self._now()
        at = local_alarm_time(hour, minute, int(day) if day is not None else None, now)
        self.book.set_alarm(at, language, self._clock())
        spoken_day = day_word(at.date(), now.date(), language)
        return say("alarm_set", language, time=clock_time(at, language), day=spoken_day)

    def _on_VoicebotCancelAlarm(self, slots: dict[str, Any], language: str) -> str:
        alarms = self.book.find(alarms=True)
        if "hour" in slots:
            wanted = f"{int(slots['hour']):02d}:{int(slots.get('minute', 0)):02d}"
            alarms = [a for a in alarms if a.alarm_at in (wanted, f"{(int(slots['hour']) + 12) % 24:02d}:{wanted[3:]}")]
        if not alarms:
            raise Refusal("no_alarm")
        for alarm in alarms:
            self.book.cancel(alarm)
        if len(alarms) == 1:
            return say("alarm_cancelled", language, time=self._describe(alarms[0], language))
        return say("alarms_cancelled", language, count=len(alarms))

    def _on_VoicebotAlarmStatus(self, slots: dict[str, Any], language: str) -> str:
        alarms = sorted(self.book.find(alarms=True), key=lambda a: a.ends_at or 0)
        if not alarms:
            raise Refusal("no_alarm")
        today = self._now().date()
        times = []
        for alarm in alarms:
            at = datetime.datetime.fromtimestamp(alarm.ends_at or 0).astimezone()
            day = day_word(at.date(), today, language)
            spoken = clock_time(at, language)
            times.append(f"{day}{spoken}" if language == "zh" else f"{spoken} {day}")
        return say("alarm_status", language, times=joined(times, language))

    # Volume.

    def _on_HassSetVolume(self, slots: dict[str, Any], language: str) -> str:
        percent = float(slots.get("volume_level", -1))
        if not 0 <= percent <= 100:
            raise Refusal("volume_out_of_range")
        self.volume.level, self.volume.muted = percent / 100, False
        return say("volume_set", language, percent=self._percent(percent, language))

    def _on_HassSetVolumeRelative(self, slots: dict[str, Any], language: str) -> str:
        step = slots.get("volume_step")
        change = step / 100 if isinstance(step, (int, float)) else VOLUME_STEP if step == "up" else -VOLUME_STEP
        level = min(1.0, max(0.0, round(self.volume.level + change, 2)))
        if level == self.volume.level and not self.volume.muted:
            raise Refusal("volume_highest" if change > 0 else "volume_lowest")
        self.volume.level, self.volume.muted = level, False
        return say("volume_set", language, percent=self._percent(level * 100, language))

    @staticmethod
    def _percent(value: float, language: str) -> str:
        return zh_number(round(value)) if language == "zh" else str(round(value))

    def _on_HassMediaPlayerMute(self, slots: dict[str, Any], language: str) -> str:
        self.volume.muted = True
        return say("muted", language)

    def _on_HassMediaPlayerUnmute(self, slots: dict[str, Any], language: str) -> str:
        self.volume.muted = False
        return say("unmuted", language)

    # Lists.

    def _list_name(self, key: str, language: str) -> str:
        return LIST_NAMES.get(key, {}).get(language if language == "zh" else "en", key)

    def _on_HassShoppingListAddItem(self, slots: dict[str, Any], language: str) -> str:
        return self._on_list("shopping", "add", slots, language)

    def _on_HassListAddItem(self, slots: dict[str, Any], language: str) -> str:
        return self._on_list(self.lists.key_of(slots.get("name")), "add", slots, language)

    def _on_HassShoppingListCompleteItem(self, slots: dict[str, Any], language: str) -> str:
        return self._on_list("shopping", "complete", slots, language)

    def _on_HassListCompleteItem(self, slots: dict[str, Any], language: str) -> str:
        return self._on_list(self.lists.key_of(slots.get("name")), "complete", slots, language)

    def _on_HassListRemoveItem(self, slots: dict[str, Any], language: str) -> str:
        return self._on_list(self.lists.key_of(slots.get("name")), "remove", slots, language)

    def _on_list(self, key: str, action: str, slots: dict[str, Any], language: str) -> str:
        """Add, complete or remove the slot's item on list `key`; every answer names the list."""
        name = self._list_name(key, language)
        change = {"add": self.lists.add, "complete": self.lists.complete, "remove": self.lists.remove}[action]
        try:
            item = change(key, str(slots.get("item", "")))
        except Refusal as refusal:
            refusal.fields["list"] = name
            raise
        key_said = {"add": "item_added", "complete": "item_completed", "remove": "item_removed"}[action]
        return say(key_said, language, item=item.text, list=name)

    def _on_VoicebotListItems(self, slots: dict[str, Any], language: str) -> str:
        key = self.lists.key_of(slots.get("name"))
        items = [item.text for item in self.lists.open_items(key)]
        name = self._list_name(key, language)
        if not items:
            return say("list_empty", language, list=name)
        return say("list_items", language, list=name, items=joined(items, language))

    # Ringing.

    def _ring(self, timer: Timer, now: float) -> Ring:
        language = timer.language
        late_s = max(0.0, now - (timer.ends_at or now))
        if timer.is_alarm:
            text = say("alarm_rings", language, time=self._describe(timer, language))
        elif timer.name:
            text = say("timer_rings", language, name=timer.name)
        else:
            text = say("unnamed_timer_rings", language, duration=duration(timer.duration_s, language))
        return Ring(timer, text, late_s)

    def take_missed(self) -> list[str]:
        """What ended while voicebot was not running, each said once: "your pasta timer ended 5 minutes ago"."""
        missed, self._missed = self._missed, []
        return [
            say("timer_missed", ring.timer.language, timer=self._describe(ring.timer, ring.timer.language),
                late=duration(ring.late_s, ring.timer.language))
            for ring in missed
        ]  # fmt: skip

    async def run(self, on_ring: Callable[[Ring], None]) -> None:
        """Ring each timer and alarm when it ends, on the wall clock, until cancelled."""
        self._changed = asyncio.Event()
        try:
            while True:
                now = self._clock()
                due = self.book.due(now)
                if due:
                    self._save()
                for timer in due:
                    on_ring(self._ring(timer, now))
                next_end = self.book.next_end()
                wait_s = CLOCK_JUMP_CHECK_S if next_end is None else min(CLOCK_JUMP_CHECK_S, next_end - now)
                self._changed.clear()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancel that comes as the event is
                # set, and this loop then never ends.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait_s)):
                        await self._changed.wait()
        finally:
            self._changed = None

    # Views for the web page and the API.

    def timers_view(self) -> list[dict[str, Any]]:
        """The timers and alarms as the page shows them: name, what it was set for, when it ends, time left."""
        now = self._clock()
        return [
            {
                "id": timer.id,
                "name": timer.name,
                "kind": "alarm" if timer.is_alarm else "timer",
                "duration_s": round(timer.duration_s, 1),
                "ends_at": timer.ends_at,
                "left_s": round(timer.left_s(now), 1),
                "paused": timer.paused,
                "alarm_at": timer.alarm_at,
            }
            for timer in sorted(self.book.timers.values(), key=lambda t: (t.ends_at or float("inf"), t.id))
        ]

    def lists_view(self) -> dict[str, list[dict[str, Any]]]:
        """Every list with its items and whether each is done."""
        return {key: [{"text": i.text, "done": i.done} for i in items] for key, items in self.lists.lists.items()}
