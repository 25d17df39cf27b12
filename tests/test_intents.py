"""The intent stage from text: Home Assistant's parser and sentences plus voicebot's, the handlers, their answers in
English and Chinese, the refusals, and the state file. No models: matching and handling are plain Python."""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import pytest

from voicebot.config import ConfigError, IntentsConfig, TimersConfig
from voicebot.intents.service import IntentService
from voicebot.intents.speech import calendar_date, clock_time, duration, zh_number
from voicebot.intents.timers import Refusal, local_alarm_time

NOW = datetime.datetime(2026, 12, 7, 15, 15, 0).astimezone().timestamp()
"""A Monday afternoon, 15:15 local time: every clock in these tests reads it."""


class FakeClock:
    """A test's own wall clock, moved on by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def matcher_service(tmp_path_factory):
    """One compiled service for the matching table (compiling takes a moment)."""
    service = IntentService(IntentsConfig(state_dir=str(tmp_path_factory.mktemp("state"))), TimersConfig())
    yield service
    service.close()


def service_in(folder: Path, clock: FakeClock | None = None, **timers) -> IntentService:
    return IntentService(IntentsConfig(state_dir=str(folder)), TimersConfig(**timers), clock=clock or FakeClock())


# What each sentence is matched to: (text, language, intent or None for the LLM, slots that must be among its slots).
MATCHES = [
    ("Set a timer for ten minutes.", "en", "HassStartTimer", {"minutes": 10}),
    ("Set a timer for 3 seconds.", "en", "HassStartTimer", {"seconds": 3}),
    ("set a pasta timer for 10 minutes", "en", "HassStartTimer", {"name": "pasta", "minutes": 10}),
    ("Set a timer for 5 minutes called eggs.", "en", "HassStartTimer", {"name": "eggs", "minutes": 5}),
    ("Remind me in ten minutes.", "en", "HassStartTimer", {"minutes": 10}),
    ("set a timer for 1 hour and 30 minutes", "en", "HassStartTimer", {"hours": 1, "minutes": 30}),
    ("Set a timer for half an hour.", "en", "HassStartTimer", {"special": 1800}),
    ("What time is it?", "en", "HassGetCurrentTime", {}),
    ("What's the date today?", "en", "HassGetCurrentDate", {}),
    ("Cancel my timer.", "en", "HassCancelTimer", {}),
    ("Cancel all timers.", "en", "HassCancelAllTimers", {}),
    ("How much time is left on my timer?", "en", "HassTimerStatus", {}),
    ("Pause the timer.", "en", "HassPauseTimer", {}),
    ("Resume the timer.", "en", "HassUnpauseTimer", {}),
    ("Add 5 minutes to the timer.", "en", "HassIncreaseTimer", {"minutes": 5}),
    ("Wake me up at seven.", "en", "VoicebotSetAlarm", {"hour": 7}),
    ("Set an alarm for 6:30 tomorrow.", "en", "VoicebotSetAlarm", {"hour": 6, "minute": 30, "day": 1}),
    ("Wake me up at 6.30 a.m.", "en", "VoicebotSetAlarm", {"hour": 6, "minute": 30, "ampm": "am"}),
    ("Set the volume to 50%.", "en", "HassSetVolume", {"volume_level": 50}),
    ("Turn up the volume.", "en", "HassSetVolumeRelative", {"volume_step": "up"}),
    ("Mute.", "en", "HassMediaPlayerMute", {}),
    ("Unmute.", "en", "HassMediaPlayerUnmute", {}),
    ("Add milk to my shopping list.", "en", "HassShoppingListAddItem", {"item": "milk"}),
    ("and milk to my shopping list.", "en", "HassShoppingListAddItem", {"item": "milk"}),  # Whisper's "Add"
    ("Check milk off my shopping list.", "en", "HassShoppingListCompleteItem", {"item": "milk"}),
    ("What's on my shopping list?", "en", "VoicebotListItems", {}),
    ("Add call the plumber to my to-do list.", "en", "HassListAddItem", {"item": "call the plumber"}),
    ("Check eggs off my to-do list.", "en", "HassListCompleteItem", {"item": "eggs"}),
    ("Remove eggs from the todo list.", "en", "HassListRemoveItem", {"item": "eggs"}),
    ("把买票加到待办事项", "zh", "HassListAddItem", {"item": "买票"}),
    ("Never mind.", "en", "HassNevermind", {}),
    ("Stop.", "en", "HassNevermind", {}),
    ("Turn on the kitchen light.", "en", "HassTurnOn", {"area": "kitchen"}),
    ("What is the weather?", "en", "HassGetWeather", {}),
    ("设一个五秒的计时器", "zh", "HassStartTimer", {"seconds": 5}),
    ("设置一个十分钟的计时器", "zh", "HassStartTimer", {"minutes": 10}),
    ("五分钟后提醒我", "zh", "HassStartTimer", {"minutes": 5}),
    ("现在几点", "zh", "HassGetCurrentTime", {}),
    ("现在几点了？", "zh", "HassGetCurrentTime", {}),
    ("今天几号", "zh", "HassGetCurrentDate", {}),
    ("取消计时器", "zh", "HassCancelTimer", {}),
    ("取消所有计时器", "zh", "HassCancelAllTimers", {}),
    ("计时器还剩多少时间", "zh", "HassTimerStatus", {}),
    ("暂停计时器", "zh", "HassPauseTimer", {}),
    ("明天早上六点半叫我", "zh", "VoicebotSetAlarm", {"day": 1, "ampm": "am", "hour": 6, "minute": 30}),
    ("把音量调到百分之五十", "zh", "HassSetVolume", {"volume_level": 50}),
    ("大声一点", "zh", "HassSetVolumeRelative", {"volume_step": "up"}),
    ("静音", "zh", "HassMediaPlayerMute", {}),
    ("取消静音", "zh", "HassMediaPlayerUnmute", {}),
    ("把鸡蛋加到购物清单", "zh", "HassShoppingListAddItem", {"item": "鸡蛋"}),
    ("把牛奶从购物清单上划掉", "zh", "HassShoppingListCompleteItem", {"item": "牛奶"}),
    ("停", "zh", "HassNevermind", {}),
    ("打开客厅的灯", "zh", "HassTurnOn", {"area": "客厅"}),
    # Questions are the LLM's.
    ("What is the capital of France?", "en", None, {}),
    ("Tell me a joke.", "en", None, {}),
    ("What time is it in Tokyo?", "en", None, {}),
    ("How long do I boil an egg?", "en", None, {}),
    ("Who is the president of France?", "en", None, {}),
    ("法国的首都是哪里", "zh", None, {}),
    ("讲个笑话", "zh", None, {}),
]


@pytest.mark.parametrize(("text", "language", "intent", "slots"), MATCHES, ids=[m[0] for m in MATCHES])
def test_sentences_match_their_intent_and_questions_go_to_the_llm(matcher_service, text, language, intent, slots):
    match = matcher_service.match(text, language)
    if intent is None:
        assert match is None, match
        return
    assert match is not None, f"{text!r} matched nothing"
    assert match.intent == intent, match
    assert {key: match.slots.get(key) for key in slots} == slots, match.slots
    assert match.match_ms < 1000


# What each request says back, from an empty state at NOW (15:15, Monday 7 December 2026).
ANSWERS = [
    ("Set a timer for ten minutes.", "en", "Timer set for 10 minutes."),
    ("set a pasta timer for 3 minutes", "en", "Pasta timer set for 3 minutes."),
    ("What time is it?", "en", "It's 3:15 PM."),
    ("What's the date today?", "en", "Today is Monday, December 7, 2026."),
    ("Set the volume to 50%.", "en", "Volume set to 50 percent."),
    ("Add milk to my shopping list.", "en", "Added milk to your shopping list."),
    ("Add call the plumber to my to-do list.", "en", "Added call the plumber to your to-do list."),
    ("把买票加到待办事项", "zh", "好的，已把买票加到待办事项。"),
    ("Wake me up at seven.", "en", "Alarm set for 7 AM tomorrow."),
    ("Set an alarm for 6 pm.", "en", "Alarm set for 6 PM today."),
    ("Turn on the kitchen light.", "en", "I can't reach your devices from here; I'm not connected to Home Assistant."),
    ("设一个五秒的计时器", "zh", "好的，五秒的计时器开始了。"),
    ("现在几点", "zh", "现在是下午三点十五分。"),
    ("今天几号", "zh", "今天是二零二六年十二月七日，星期一。"),
    ("把音量调到百分之五十", "zh", "音量已调到百分之五十。"),
    ("把鸡蛋加到购物清单", "zh", "好的，已把鸡蛋加到购物清单。"),
    ("明天早上六点半叫我", "zh", "好的，闹钟定在明天早上六点半。"),
    ("打开客厅的灯", "zh", "我在这里控制不了家里的设备，因为没有连接 Home Assistant。"),
]


@pytest.mark.parametrize(("text", "language", "answer"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_each_intent_is_handled_here_with_an_answer_in_its_language(tmp_path, text, language, answer):
    service = service_in(tmp_path)
    try:
        handled = service.handle(text, language)
    finally:
        service.close()
    assert handled is not None
    assert handled.text == answer


BAD_INPUTS = [
    ("Set a timer for 0 seconds.", "A timer needs at least one second."),
    ("Set a timer for 900 hours.", "Timers can run for at most 24 hours."),
    ("Cancel my timer.", "There is no timer running."),
    ("Wake me up at 25.", "There is no 25:00 on the clock."),
    ("Set an alarm for 13 pm.", "There is no 13:00 on the clock."),
    ("Set the volume to 150%.", "The volume goes from 0 to 100 percent."),
    ("Check eggs off my shopping list.", "Eggs is not on your shopping list."),
]


@pytest.mark.parametrize(("text", "answer"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_requests_get_a_clear_answer_and_change_nothing(tmp_path, text, answer):
    service = service_in(tmp_path)
    try:
        before = (service.timers_view(), service.lists_view(), service.volume.level)
        handled = service.handle(text, "en")
        after = (service.timers_view(), service.lists_view(), service.volume.level)
    finally:
        service.close()
    assert handled is not None and handled.text == answer
    assert after == before


def test_two_timers_with_one_name_and_an_ambiguous_cancel(tmp_path):
    service = service_in(tmp_path)
    try:
        assert service.handle("set a pasta timer for 3 minutes", "en").text == "Pasta timer set for 3 minutes."
        taken = service.handle("set a pasta timer for 5 minutes", "en").text
        service.handle("set a timer for 10 minutes", "en")
        service.handle("set an eggs timer for 6 minutes", "en")
        which = service.handle("cancel my timer", "en").text
        assert len(service.timers_view()) == 3
        named = service.handle("cancel the pasta timer", "en").text
        left = [timer["name"] for timer in service.timers_view()]
    finally:
        service.close()
    assert taken == "You already have a timer called pasta; give this one another name."
    assert which == ("You have 3 timers: the pasta timer, the timer for 10 minutes and the eggs timer. Say which one.")
    assert named == "Cancelled the pasta timer."
    assert left == ["eggs", None]


def test_a_timer_counts_down_pauses_resumes_and_changes_on_the_wall_clock(tmp_path):
    clock = FakeClock()
    service = service_in(tmp_path, clock)
    try:
        service.handle("set a timer for 10 minutes", "en")
        clock.now += 125
        assert service.handle("how much time is left on my timer", "en").text == (
            "The timer for 10 minutes has 7 minutes and 55 seconds left."
        )
        assert service.handle("pause the timer", "en").text == (
            "The timer for 10 minutes paused with 7 minutes and 55 seconds left."
        )
        clock.now += 600  # Paused: nothing runs down.
        assert service.handle("resume the timer", "en").text == (
            "The timer for 10 minutes resumed, 7 minutes and 55 seconds left."
        )
        assert service.handle("add 5 minutes to the timer", "en").text == (
            "The timer for 10 minutes now has 12 minutes and 55 seconds left."
        )
        assert service.handle("计时器还剩多少时间", "zh").text == "十分钟的计时器还剩十二分钟五十五秒。"
        assert service.book.next_end() == pytest.approx(clock.now + 775)
    finally:
        service.close()


def test_lists_add_complete_and_read_back_in_both_languages(tmp_path):
    service = service_in(tmp_path)
    try:
        service.handle("Add milk to my shopping list.", "en")
        assert service.handle("Add milk to my shopping list.", "en").text == "Milk is already on your shopping list."
        service.handle("把鸡蛋加到购物清单", "zh")
        assert service.handle("What's on my shopping list?", "en").text == "Your shopping list has milk and 鸡蛋."
        assert service.handle("Check milk off my shopping list.", "en").text == ("Checked milk off your shopping list.")
        assert service.handle("购物清单上有什么", "zh").text == "购物清单上有鸡蛋。"
        assert service.lists_view()["shopping"] == [{"text": "milk", "done": True}, {"text": "鸡蛋", "done": False}]
    finally:
        service.close()


def test_volume_is_kept_and_mute_is_not_a_level(tmp_path):
    service = service_in(tmp_path)
    try:
        service.handle("Set the volume to 40%.", "en")
        assert service.handle("louder", "en").text == "Volume set to 50 percent."
        service.handle("mute", "en")
        assert (service.volume.level, service.volume.muted) == (0.5, True)
        assert service.volume.gain() == 0.0 and service.volume.gain(alarm=True) == 0.5
        service.handle("unmute", "en")
        assert service.volume.gain() == 0.5
    finally:
        service.close()


def test_everything_survives_a_restart_on_the_original_wall_clock(tmp_path):
    clock = FakeClock()
    first = service_in(tmp_path, clock)
    first.handle("set a pasta timer for 10 minutes", "en")
    first.handle("set a timer for 1 hour", "en")
    first.handle("Add milk to my shopping list.", "en")
    first.handle("Set the volume to 30%.", "en")
    first.close()  # No goodbye is needed: every change was saved as it was made.
    clock.now += 20 * 60  # Twenty minutes later voicebot starts again: pasta ended ten minutes ago.
    second = service_in(tmp_path, clock)
    try:
        missed = second.take_missed()
        assert missed == ["While I was off, the pasta timer ended 10 minutes ago."]
        assert second.take_missed() == []  # Said once.
        assert [t["name"] for t in second.timers_view()] == [None]
        assert second.timers_view()[0]["left_s"] == pytest.approx(40 * 60, abs=1)
        assert second.lists_view()["shopping"] == [{"text": "milk", "done": False}]
        assert second.volume.level == pytest.approx(0.3)
    finally:
        second.close()
    third = service_in(tmp_path, clock)  # The missed timer was announced and is gone for good.
    try:
        assert third.take_missed() == []
    finally:
        third.close()


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b'{"version": 99}', b"[1, 2, 3]"])
def test_an_unreadable_state_file_is_kept_aside_and_voicebot_starts_anyway(tmp_path, content, caplog):
    (tmp_path / "state.json").write_bytes(content)
    service = service_in(tmp_path)
    try:
        assert service.timers_view() == [] and service.lists_view()["shopping"] == []
        service.handle("Add milk to my shopping list.", "en")
    finally:
        service.close()
    kept = list(tmp_path.glob("state.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == content
    assert json.loads((tmp_path / "state.json").read_text())["lists"]["shopping"][0]["text"] == "milk"
    lines = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and str(kept[0]) in lines[0]


def test_a_second_voicebot_does_not_overwrite_the_first_ones_state(tmp_path):
    owner = service_in(tmp_path)
    visitor = service_in(tmp_path)
    try:
        owner.handle("Add milk to my shopping list.", "en")
        visitor.handle("Add eggs to my shopping list.", "en")
        saved = json.loads((tmp_path / "state.json").read_text())
    finally:
        visitor.close()
        owner.close()
    assert [item["text"] for item in saved["lists"]["shopping"]] == ["milk"]


def test_custom_sentences_come_first_and_a_broken_file_is_one_line(tmp_path):
    folder = tmp_path / "sentences"
    folder.mkdir()
    (folder / "en.yaml").write_text(
        'language: en\nintents:\n  HassGetCurrentTime:\n    data:\n      - sentences:\n          - "what\'s the clock"\n',
        encoding="utf-8",
    )
    service = IntentService(
        IntentsConfig(state_dir=str(tmp_path / "state"), custom_sentences=str(folder)), TimersConfig()
    )
    try:
        match = service.match("What's the clock?", "en")
    finally:
        service.close()
    assert match is not None and (match.intent, match.source) == ("HassGetCurrentTime", "custom")
    (folder / "en.yaml").write_text("intents: [not, a, mapping]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        IntentService(IntentsConfig(state_dir=str(tmp_path / "s2"), custom_sentences=str(folder)), TimersConfig())
    assert "\n" not in str(error.value) and "intents.custom_sentences" in str(error.value)


def test_an_alarm_time_skipped_by_a_clock_change_does_not_exist(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        # 2027-03-14: clocks go from 02:00 to 03:00 in New York.
        before = datetime.datetime(2027, 3, 13, 12, 0).astimezone()
        with pytest.raises(Refusal) as refusal:
            local_alarm_time(2, 30, 1, before)
        assert refusal.value.key == "time_skipped"
        assert local_alarm_time(3, 30, 1, before).strftime("%H:%M %Z") == "03:30 EDT"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
        os.environ.get("TZ")


SPOKEN = [
    (clock_time(datetime.time(15, 15), "zh"), "下午三点十五分"),
    (clock_time(datetime.time(7, 30), "zh"), "早上七点半"),
    (clock_time(datetime.time(14, 2), "zh"), "下午两点零二分"),
    (clock_time(datetime.time(0, 0), "en"), "12 midnight"),
    (clock_time(datetime.time(15, 15), "en"), "3:15 PM"),
    (duration(7322, "en"), "2 hours, 2 minutes and 2 seconds"),
    (duration(125, "zh"), "两分钟五秒"),
    (zh_number(2026), "两千零二十六"),
    (zh_number(105), "一百零五"),
    (calendar_date(datetime.date(2026, 12, 7), "zh"), "二零二六年十二月七日，星期一"),
]


@pytest.mark.parametrize(("said", "expected"), SPOKEN, ids=[s[1] for s in SPOKEN])
def test_times_and_durations_are_said_as_people_say_them(said, expected):
    assert said == expected
