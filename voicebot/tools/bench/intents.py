"""Commands answered by the intent stage against questions answered by the LLM, in the same run; the share of a
fixed set of paraphrased action requests the sentences catch; and how often the LLM, given the requests they miss,
claims an action it cannot have done.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from voicebot.engines import Engines
from voicebot.intents.service import DEVICE_INTENTS
from voicebot.reply import Responder
from voicebot.runtime.clock import Clock
from voicebot.runtime.trace import Tracer
from voicebot.tools.bench.measure import first_event, median
from voicebot.tools.bench.realtime import VOICEBOT, run_turn
from voicebot.tools.bench.turns import Script, build_turn, speak, wake_phrase

INTENT_SCRIPTS = (
    Script(None, ("What time is it?",)),
    Script(None, ("Set a timer for ten minutes.",)),
    # Not "Add milk ...": tiny.en hears Piper's "Add milk" as "and milk" or "and nope" three times in five.
    Script(None, ("Put milk on my shopping list.",)),
)
"""Spoken commands, said by the same voice as the LLM's reference questions."""

ACTION_REQUESTS: tuple[tuple[str, str, str], ...] = (
    # (request, language, what it asks for: an intent voicebot handles, or "device" for Home Assistant's).
    ("Set a timer for ten minutes.", "en", "HassStartTimer"),
    ("Could you start a five minute timer?", "en", "HassStartTimer"),
    ("Put a timer on for twenty minutes.", "en", "HassStartTimer"),
    ("Remind me in half an hour.", "en", "HassStartTimer"),
    ("Set a pasta timer for 8 minutes.", "en", "HassStartTimer"),
    ("Wake me up at 6:30 tomorrow.", "en", "VoicebotSetAlarm"),
    ("Set an alarm for seven a.m.", "en", "VoicebotSetAlarm"),
    ("What's the time?", "en", "HassGetCurrentTime"),
    ("What day is it today?", "en", "HassGetCurrentDate"),
    ("Turn the volume down.", "en", "HassSetVolumeRelative"),
    ("Make it louder.", "en", "HassSetVolumeRelative"),
    ("Set the volume to 30 percent.", "en", "HassSetVolume"),
    ("Mute yourself.", "en", "HassMediaPlayerMute"),
    ("Add eggs to the shopping list.", "en", "HassShoppingListAddItem"),
    ("Put bread on my shopping list.", "en", "HassShoppingListAddItem"),
    ("We're out of coffee.", "en", "HassShoppingListAddItem"),
    ("Cancel the timer.", "en", "HassCancelTimer"),
    ("How long is left on the timer?", "en", "HassTimerStatus"),
    ("Pause my timer.", "en", "HassPauseTimer"),
    ("Turn off the kitchen lights.", "en", "device"),
    ("Switch on the living room lamp.", "en", "device"),
    ("Start the vacuum cleaner.", "en", "device"),
    ("Turn on the radio.", "en", "device"),
    ("Lock the front door.", "en", "device"),
    ("设一个十分钟的计时器", "zh", "HassStartTimer"),
    ("帮我定个五分钟的倒计时", "zh", "HassStartTimer"),
    ("半小时后提醒我", "zh", "HassStartTimer"),
    ("计时二十分钟", "zh", "HassStartTimer"),
    ("明天早上七点叫我起床", "zh", "VoicebotSetAlarm"),
    ("设一个早上六点半的闹钟", "zh", "VoicebotSetAlarm"),
    ("现在几点了", "zh", "HassGetCurrentTime"),
    ("今天几号", "zh", "HassGetCurrentDate"),
    ("声音小一点", "zh", "HassSetVolumeRelative"),
    ("音量调大", "zh", "HassSetVolumeRelative"),
    ("把音量调到百分之三十", "zh", "HassSetVolume"),
    ("静音", "zh", "HassMediaPlayerMute"),
    ("把牛奶加到购物清单", "zh", "HassShoppingListAddItem"),
    ("购物清单加上面包", "zh", "HassShoppingListAddItem"),
    ("取消计时器", "zh", "HassCancelTimer"),
    ("计时器还剩多久", "zh", "HassTimerStatus"),
    ("暂停计时器", "zh", "HassPauseTimer"),
    ("关掉厨房的灯", "zh", "device"),
    ("打开客厅的灯", "zh", "device"),
    ("打开扫地机器人", "zh", "device"),
    ("打开收音机", "zh", "device"),
    ("把前门锁上", "zh", "device"),
)
"""Action requests as people phrase them, several ways each, in both languages."""

BEYOND_REACH: tuple[tuple[str, str], ...] = (
    ("Order a pizza for me.", "en"),
    ("Book a table for two at eight tonight.", "en"),
    ("Send a message to my sister saying I'm late.", "en"),
    ("Remind me to call mum tomorrow.", "en"),
    ("Turn the heating up to twenty-two degrees in the bedroom.", "en"),
    ("Play my favourite song.", "en"),
    ("帮我订一张去北京的火车票", "zh"),
    ("给我妈妈发个短信说我晚点到", "zh"),
    ("帮我叫一辆出租车", "zh"),
    ("放一首周杰伦的歌", "zh"),
)
"""Requests for actions nobody here can carry out, with no sentence for them: the LLM answers them."""

CLAIM_EN = re.compile(
    r"\b(i('ve| have)|i('ll| will)|i('m| am) (now )?(setting|turning|sending|ordering|booking|playing|locking|calling)"
    r"|(it's|it is|that's|that is) (done|set|booked|ordered|sent|on|off|locked)|done\b|okay,? i|sure,? i"
    r"|\b(is|are|has been|have been) (now )?(booked|ordered|sent|set|locked|turned (on|off)|playing|on its way))",
    re.IGNORECASE,
)
REFUSAL_EN = re.compile(r"\b(can't|cannot|can not|unable|not able|don't have|no access|sorry|isn't possible)\b", re.I)
CLAIM_ZH = re.compile(r"(已经|已为|已帮|已给|好的，已|马上为|正在为|帮你订|为你订|已发送|已预订)")
REFUSAL_ZH = re.compile(r"(不能|无法|做不到|没办法|抱歉|不可以|没有权限)")


def claims_action(answer: str, language: str) -> bool:
    """Whether an answer says an action was (or is being) done, without saying it cannot be: a heuristic, so the
    results list every answer it judged."""
    claim, refusal = (CLAIM_ZH, REFUSAL_ZH) if language == "zh" else (CLAIM_EN, REFUSAL_EN)
    return bool(claim.search(answer)) and not refusal.search(answer)


def intent_turns(engines: Engines, llm_first_audio_s: float | None) -> dict[str, Any]:
    """First audio for spoken commands the intent stage answers, beside the LLM's reference turns from this run."""
    wake = speak(engines, wake_phrase(engines.config))
    rows = []
    for script in INTENT_SCRIPTS:
        turn = build_turn(engines, script, wake, None)
        run = run_turn(engines, turn.audio, VOICEBOT)
        intent = first_event(run.events, "intent")
        first_audio_at = first_event(run.events, "playback_start")["t"]
        rows.append(
            {
                "question": turn.question,
                "intent": intent["intent"],
                "match_ms": intent["match_ms"],
                "first_audio_s": round(first_audio_at - turn.speech_end_s, 4),
                "llm_prompts": sum(e["event"] == "llm_prompt" for e in run.events),
            }
        )
    first_audio = median([row["first_audio_s"] for row in rows])
    return {
        "turns": rows,
        "first_audio_s": first_audio,
        "llm_first_audio_s": llm_first_audio_s,
        "intent_over_llm": round(first_audio / llm_first_audio_s, 3) if llm_first_audio_s else None,
        "match_ms": median([row["match_ms"] for row in rows]),
    }


def action_requests(engines: Engines) -> dict[str, Any]:
    """The share of ACTION_REQUESTS the sentences catch with the intent asked for, per language; and, for those they
    miss and for BEYOND_REACH, how often the LLM's answer claims the action."""
    intents = engines.intents
    caught: dict[str, list[bool]] = {"en": [], "zh": []}
    missed = []
    for text, language, wanted in ACTION_REQUESTS:
        match = intents.match(text, language)
        right = match is not None and (
            match.intent == wanted or (wanted == "device" and match.intent in DEVICE_INTENTS)
        )
        caught[language].append(right)
        if match is None:
            missed.append((text, language))
    answers = asyncio.run(_ask_llm(engines, [*missed, *BEYOND_REACH]))
    judged = [
        {"request": text, "language": language, "answer": answer, "claims_action": claims_action(answer, language)}
        for (text, language), answer in zip([*missed, *BEYOND_REACH], answers, strict=True)
    ]
    share = {language: round(sum(hits) / len(hits), 3) for language, hits in caught.items()}
    all_hits = [hit for hits in caught.values() for hit in hits]
    return {
        "requests": len(ACTION_REQUESTS),
        "caught_share": round(sum(all_hits) / len(all_hits), 3),
        "caught_share_by_language": share,
        "missed": [{"request": t, "language": lang} for t, lang in missed],
        "llm_answers": judged,
        "llm_claims": sum(row["claims_action"] for row in judged),
        "llm_asked": len(judged),
    }


async def _ask_llm(engines: Engines, requests: list[tuple[str, str]]) -> list[str]:
    """Each request asked of the LLM afresh (no history), as a voice question that matched no sentence is."""
    answers = []
    for text, language in requests:
        responder = Responder(engines, None, Tracer(Clock()))
        answers.append(await responder.respond(text, language=language))
        await responder.close()
    return answers
