"""Durations, clock times and dates as a person says them: "3 minutes and 20 seconds", 下午三点十五分, not 15:15.

Piper reads digits well in English; the Chinese voice reads Chinese numerals best, so Chinese text gets them.
"""

from __future__ import annotations

import datetime

from voicebot.tts import MONTHS

ZH_DIGITS = "零一二三四五六七八九"
EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ZH_WEEKDAYS = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")


def zh_number(value: int) -> str:
    """A whole number from 0 to 9999 in Chinese numerals: 15 -> 十五, 105 -> 一百零五, 2026 -> 两千零二十六."""
    if not 0 <= value <= 9999:
        return str(value)
    if value < 10:
        return ZH_DIGITS[value]
    if value < 20:
        return "十" + (ZH_DIGITS[value % 10] if value % 10 else "")
    parts = []
    zero_pending = False
    for unit_value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = value // unit_value % 10
        if digit == 0:
            zero_pending = bool(parts)
            continue
        if zero_pending:
            parts.append("零")
            zero_pending = False
        # 两 before 千 and 百 is how it is said (两千, 两百); 二十 keeps 二.
        word = "两" if digit == 2 and unit in ("千", "百") else ZH_DIGITS[digit]
        parts.append(word + unit)
    return "".join(parts)


def duration(seconds: float, language: str) -> str:
    """A length of time in hours, minutes and seconds, rounded to the second: "1 hour and 5 minutes", 一小时五分钟."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if language == "zh":
        parts = []
        if hours:
            parts.append(f"{zh_number(hours)}个小时" if hours != 2 else "两个小时")
        if minutes:
            parts.append(f"{zh_number(minutes) if minutes != 2 else '两'}分钟")
        if secs or not parts:
            parts.append(f"{zh_number(secs) if secs != 2 else '两'}秒")
        return "".join(parts)
    parts = [
        f"{count} {unit}{'' if count == 1 else 's'}"
        for count, unit in ((hours, "hour"), (minutes, "minute"), (secs, "second"))
        if count
    ] or ["0 seconds"]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def clock_time(moment: datetime.time | datetime.datetime, language: str) -> str:
    """A time of day as said aloud: "3:15 PM", "7 AM", 下午三点十五分, 早上七点."""
    hour, minute = moment.hour, moment.minute
    if language == "zh":
        if hour < 5:
            part = "凌晨"
        elif hour < 9:
            part = "早上"
        elif hour < 12:
            part = "上午"
        elif hour < 13:
            part = "中午"
        elif hour < 18:
            part = "下午"
        else:
            part = "晚上"
        twelve = hour % 12 or 12
        spoken_hour = "两" if twelve == 2 else zh_number(twelve)
        if minute == 0:
            return f"{part}{spoken_hour}点"
        if minute == 30:
            return f"{part}{spoken_hour}点半"
        spoken_minute = ("零" + zh_number(minute)) if minute < 10 else zh_number(minute)
        return f"{part}{spoken_hour}点{spoken_minute}分"
    suffix = "AM" if hour < 12 else "PM"
    twelve = hour % 12 or 12
    if hour == 12 and minute == 0:
        return "12 noon"
    if hour == 0 and minute == 0:
        return "12 midnight"
    return f"{twelve} {suffix}" if minute == 0 else f"{twelve}:{minute:02d} {suffix}"


def calendar_date(day: datetime.date, language: str) -> str:
    """A date with its weekday: "Monday, December 7, 2026", 二零二六年十二月七日，星期一."""
    if language == "zh":
        year = "".join(ZH_DIGITS[int(digit)] for digit in str(day.year))
        return f"{year}年{zh_number(day.month)}月{zh_number(day.day)}日，{ZH_WEEKDAYS[day.weekday()]}"
    return f"{EN_WEEKDAYS[day.weekday()]}, {MONTHS[day.month - 1]} {day.day}, {day.year}"


def day_word(day: datetime.date, today: datetime.date, language: str) -> str:
    """'today', 'tomorrow', or the weekday, for when an alarm will ring."""
    delta = (day - today).days
    if language == "zh":
        return {0: "今天", 1: "明天", 2: "后天"}.get(delta, ZH_WEEKDAYS[day.weekday()])
    return {0: "today", 1: "tomorrow"}.get(delta, f"on {EN_WEEKDAYS[day.weekday()]}")
