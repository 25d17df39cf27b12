"""What voicebot says after handling an intent, in English and Chinese: one short sentence each.

Written for the ear: durations and times come in already spoken (voicebot/intents/speech.py), and nothing
claims an action that was not done.
"""

from __future__ import annotations

from typing import Any

RESPONSES: dict[str, dict[str, str]] = {
    # Timers.
    "timer_started": {"en": "Timer set for {duration}.", "zh": "好的，{duration}的计时器开始了。"},
    "named_timer_started": {"en": "{name} timer set for {duration}.", "zh": "好的，{name}计时器，{duration}。"},
    "timer_too_short": {"en": "A timer needs at least one second.", "zh": "计时器至少要一秒钟。"},
    "timer_too_long": {"en": "Timers can run for at most {max}.", "zh": "计时器最长只能设{max}。"},
    "timer_name_taken": {
        "en": "You already have a timer called {name}; give this one another name.",
        "zh": "已经有一个叫{name}的计时器了，请换个名字。",
    },
    "no_timer": {"en": "There is no timer running.", "zh": "现在没有计时器。"},
    "no_such_timer": {"en": "There is no timer called {name}.", "zh": "没有叫{name}的计时器。"},
    "which_timer": {
        "en": "You have {count} timers: {timers}. Say which one.",
        "zh": "你有{count}个计时器：{timers}。请说是哪一个。",
    },
    "timer_cancelled": {"en": "Cancelled {timer}.", "zh": "已取消{timer}。"},
    "timers_cancelled": {"en": "All {count} timers cancelled.", "zh": "{count}个计时器都已取消。"},
    "timer_left": {"en": "{timer} has {left} left.", "zh": "{timer}还剩{left}。"},
    "timer_paused_left": {"en": "{timer} is paused with {left} left.", "zh": "{timer}暂停了，还剩{left}。"},
    "timers_left": {"en": "You have {count} timers: {timers}.", "zh": "你有{count}个计时器：{timers}。"},
    "timer_changed": {"en": "{timer} now has {left} left.", "zh": "好的，{timer}现在还剩{left}。"},
    "timer_would_end": {
        "en": "That would end the timer; cancel it instead.",
        "zh": "那样计时器就结束了，不如直接取消它。",
    },
    "timer_paused": {"en": "{timer} paused with {left} left.", "zh": "{timer}已暂停，还剩{left}。"},
    "timer_resumed": {"en": "{timer} resumed, {left} left.", "zh": "{timer}继续了，还剩{left}。"},
    "timer_already_paused": {"en": "That timer is already paused.", "zh": "这个计时器已经暂停了。"},
    "timer_not_paused": {"en": "That timer is not paused.", "zh": "这个计时器没有暂停。"},
    "timer_rings": {"en": "Your {name} timer is done.", "zh": "{name}计时器时间到了。"},
    "unnamed_timer_rings": {"en": "Your timer for {duration} is done.", "zh": "{duration}的计时器时间到了。"},
    "timer_missed": {
        "en": "While I was off, {timer} ended {late} ago.",
        "zh": "我没在运行的时候，{timer}在{late}前就到时了。",
    },
    # Alarms.
    "alarm_set": {"en": "Alarm set for {time} {day}.", "zh": "好的，闹钟定在{day}{time}。"},
    "alarm_in_past": {"en": "That time has already passed today.", "zh": "今天这个时间已经过了。"},
    "alarm_too_far": {"en": "Alarms can be set up to a week ahead.", "zh": "闹钟最多只能提前一周设置。"},
    "no_such_time": {"en": "There is no {hour}:{minute} on the clock.", "zh": "没有{hour}点{minute}分这个时间。"},
    "time_skipped": {
        "en": "The clocks skip {time} that day, so there is no such time.",
        "zh": "那天因为调时，{time}这个时间不存在。",
    },
    "alarm_rings": {"en": "It's {time}. This is your alarm.", "zh": "现在是{time}，闹钟响了。"},
    "no_alarm": {"en": "You have no alarm set.", "zh": "你没有设闹钟。"},
    "alarm_cancelled": {"en": "Cancelled the alarm for {time}.", "zh": "已取消{time}的闹钟。"},
    "alarms_cancelled": {"en": "All {count} alarms cancelled.", "zh": "{count}个闹钟都已取消。"},
    "alarm_status": {"en": "Your alarm is set for {times}.", "zh": "你的闹钟定在{times}。"},
    # The time and the date.
    "current_time": {"en": "It's {time}.", "zh": "现在是{time}。"},
    "current_date": {"en": "Today is {date}.", "zh": "今天是{date}。"},
    # Volume.
    "volume_set": {"en": "Volume set to {percent} percent.", "zh": "音量已调到百分之{percent}。"},
    "volume_out_of_range": {"en": "The volume goes from 0 to 100 percent.", "zh": "音量只能在百分之零到一百之间。"},
    "volume_highest": {"en": "The volume is already at its highest.", "zh": "音量已经是最大了。"},
    "volume_lowest": {"en": "The volume is already at its lowest.", "zh": "音量已经是最小了。"},
    "muted": {"en": "Muted.", "zh": "已静音。"},
    "unmuted": {"en": "Sound is back on.", "zh": "声音已恢复。"},
    # Lists.
    "item_added": {"en": "Added {item} to your {list}.", "zh": "好的，已把{item}加到{list}。"},
    "item_already_there": {"en": "{item} is already on your {list}.", "zh": "{item}已经在{list}上了。"},
    "item_completed": {"en": "Checked {item} off your {list}.", "zh": "好的，已把{item}从{list}上划掉。"},
    "item_removed": {"en": "Removed {item} from your {list}.", "zh": "好的，已把{item}从{list}上删除。"},
    "item_not_there": {"en": "{item} is not on your {list}.", "zh": "{item}不在{list}上。"},
    "list_items": {"en": "Your {list} has {items}.", "zh": "{list}上有{items}。"},
    "list_empty": {"en": "Your {list} is empty.", "zh": "{list}是空的。"},
    "no_such_list": {
        "en": "I have no list called {name}; I keep a shopping list and a to-do list.",
        "zh": "我没有叫{name}的清单，只有购物清单和待办事项。",
    },
    "empty_item": {"en": "What should I add?", "zh": "要加什么呢？"},
    "list_full": {"en": "That list is full.", "zh": "这个清单已经满了。"},
    # What voicebot cannot do alone.
    "no_devices": {
        "en": "I can't reach your devices from here; I'm not connected to Home Assistant.",
        "zh": "我在这里控制不了家里的设备，因为没有连接 Home Assistant。",
    },
    "no_weather": {
        "en": "I can't get the weather: I work offline.",
        "zh": "我是离线工作的，查不了天气。",
    },
    "cannot_do": {"en": "I can't do that here.", "zh": "这个我在这里做不到。"},
    "nevermind": {"en": "", "zh": ""},
    "state_not_saved": {
        "en": "Done, but I could not save it, so it will be forgotten if I restart.",
        "zh": "好了，但是没能保存，重启后会丢失。",
    },
}
"""Each response by key, per language; every key has both."""

LIST_NAMES = {"shopping": {"en": "shopping list", "zh": "购物清单"}, "todo": {"en": "to-do list", "zh": "待办事项"}}
TIMER_WORD = {"en": ("the timer", "timer"), "zh": ("计时器", "计时器")}


def say(key: str, language: str, **fields: Any) -> str:
    """The response `key` in `language` (English for any language but Chinese), with its fields filled in."""
    text = RESPONSES[key]["zh" if language == "zh" else "en"].format(**fields)
    return text[:1].upper() + text[1:] if language != "zh" else text


def joined(items: list[str], language: str) -> str:
    """Items as a spoken list: "a, b and c", 甲、乙和丙."""
    if language == "zh":
        return items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
