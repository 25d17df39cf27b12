"""Matching text to an intent with hassil, Home Assistant's own parser, before anything reaches the LLM.

Sentences are tried in order: the user's own (intents.custom_sentences, as Home Assistant's custom_sentences
are), then voicebot's (voicebot/intents/sentences/), then Home Assistant's from the home-assistant-intents
package. The first that matches wins, so a phrasing voicebot or the user knows better is never taken by a
broader built-in one. Matching takes milliseconds; a transcript that matches nothing goes to the LLM.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from voicebot.errors import ConfigError

log = logging.getLogger(__name__)

SENTENCES_DIR = Path(__file__).with_name("sentences")
HA_LANGUAGE = {"en": "en", "zh": "zh-CN"}
"""voicebot's language codes, as home-assistant-intents names them."""
TIMER_RANGE = {"range": {"from": 0, "to": 999}}
"""Any number of hours, minutes or seconds matches, so 0 or 900 hours is answered, not sent to the LLM."""
AREAS = {
    "en": (
        "kitchen", "living room", "lounge", "bedroom", "master bedroom", "bathroom", "toilet", "office", "study",
        "hallway", "hall", "garage", "dining room", "garden", "basement", "attic", "nursery", "kids room",
        "guest room", "laundry room", "porch", "patio", "balcony", "upstairs", "downstairs",
    ),
    "zh": (
        "客厅", "卧室", "主卧", "次卧", "厨房", "浴室", "卫生间",
        "书房", "餐厅", "阳台", "车库", "走廊", "儿童房", "客房",
    ),
}  # fmt: skip
"""Rooms a person may name: with no Home Assistant, there are no areas to learn, and a device in one of these is
still a device voicebot says it cannot reach (a free-text area would also take "wake me up at" for a room)."""
ZONES = {"en": ("home", "work", "school"), "zh": ("家", "家里", "公司", "学校")}
"""Places a person may be said to be at; free text there would take "who is the president" for a person's place."""
HERE_AREA = "here"
"""The area Home Assistant's sentences that mean "this room" (mute, set the volume to 50 %) are given."""
MAX_MATCH_CHARS = 300
"""Longer text is a question, not a command, and is not matched (hassil's time grows with the text)."""


@dataclass(frozen=True)
class IntentMatch:
    """What a text asked for: the intent's name, its slots, the language, and how long matching took."""

    intent: str
    slots: dict[str, Any] = field(default_factory=dict)
    language: str = "en"
    text: str = ""
    source: str = "home-assistant"
    """Whose sentence matched: custom, voicebot or home-assistant."""
    match_ms: float = 0.0


def normalise(text: str) -> str:
    """Text as the sentences are written: times and percentages as words and numbers Whisper may write otherwise."""
    text = text.strip()
    text = re.sub(r"\b([ap])\.\s?m\.?", lambda m: f"{m.group(1)}m", text, flags=re.IGNORECASE)
    text = re.sub(r"(?<=\d)[:.](?=\d\d\b)", " ", text)  # 6:30 and 6.30 -> 6 30
    text = re.sub(r"(?<=\d)\s*(am|pm)\b", r" \1", text, flags=re.IGNORECASE)  # 7am -> 7 am
    text = re.sub(r"(\d)\s*%", r"\1 percent", text)
    text = re.sub(r"[。！？!?]+$", "", text)
    return text.strip(" .,")


class IntentMatcher:
    """Compiled sentences per language, matched in order: the user's, voicebot's, then Home Assistant's."""

    def __init__(
        self,
        custom_sentences: Path | None = None,
        list_names: list[str] | None = None,
        other_lists: list[str] | None = None,
    ) -> None:
        self._stages: dict[str, list[tuple[str, Any]]] = {}
        self._slot_lists: dict[str, dict[str, Any]] = {}
        self._list_names = list_names or []
        self._other_lists = other_lists or []
        self._custom_sentences = custom_sentences
        for language in HA_LANGUAGE:
            self._compile(language)

    def _compile(self, language: str) -> None:
        from hassil import Intents
        from hassil.intents import TextSlotList
        from home_assistant_intents import get_intents

        ha_data = copy.deepcopy(get_intents(HA_LANGUAGE[language]))
        for name in ("timer_hours", "timer_minutes", "timer_seconds"):
            ha_data["lists"][name] = TIMER_RANGE
        ha_data["lists"]["zone"] = {"values": list(ZONES[language])}
        shared = {"lists": ha_data["lists"], "expansion_rules": ha_data["expansion_rules"]}
        stages = []
        custom = self._custom_data(language)
        if custom is not None:
            stages.append(("custom", Intents.from_dict(_merged(shared, custom, ha_data))))
        ours = yaml.safe_load((SENTENCES_DIR / f"{HA_LANGUAGE[language]}.yaml").read_text(encoding="utf-8"))
        stages.append(("voicebot", Intents.from_dict(_merged(shared, ours, ha_data))))
        stages.append(("home-assistant", Intents.from_dict(ha_data)))
        self._stages[language] = stages
        self._slot_lists[language] = {
            "area": TextSlotList.from_strings(AREAS[language], name="area"),
            "floor": TextSlotList.from_strings(("upstairs", "downstairs", "楼上", "楼下"), name="floor"),
            "name": TextSlotList.from_strings(self._list_names or ["shopping list"], name="name"),
            "list_name": TextSlotList.from_strings(self._list_names or ["shopping list"], name="list_name"),
            # The shopping list has Home Assistant's own intents; the generic list sentences name the others.
            "other_list": TextSlotList.from_strings(self._other_lists or ["to-do list"], name="other_list"),
        }

    def _custom_data(self, language: str) -> dict[str, Any] | None:
        folder = self._custom_sentences
        if folder is None:
            return None
        files = sorted(folder.glob(f"{HA_LANGUAGE[language]}*.yaml")) + sorted(folder.glob(f"{language}.yaml"))
        data: dict[str, Any] = {"language": HA_LANGUAGE[language], "intents": {}, "lists": {}, "expansion_rules": {}}
        for path in dict.fromkeys(files):
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                if not isinstance(loaded, dict) or not isinstance(loaded.get("intents", {}), dict):
                    raise ValueError("it has no 'intents:' mapping")
            except (OSError, ValueError, yaml.YAMLError) as error:
                raise ConfigError(
                    f"config error: intents.custom_sentences: cannot read {path}: {str(error).splitlines()[0][:200]}"
                ) from None
            for key in ("intents", "lists", "expansion_rules"):
                data[key].update(loaded.get(key) or {})
        return data if data["intents"] else None

    def match(self, text: str, language: str) -> IntentMatch | None:
        """The intent `text` asks for in `language` (en or zh), or None for anything else (the LLM's)."""
        from hassil import recognize_best

        started = time.perf_counter()
        language = language if language in HA_LANGUAGE else "en"
        cleaned = normalise(text)
        if not cleaned or len(cleaned) > MAX_MATCH_CHARS:
            return None
        for source, intents in self._stages[language]:
            try:
                result = recognize_best(
                    cleaned,
                    intents,
                    slot_lists=self._slot_lists[language],
                    intent_context={"area": HERE_AREA},
                    language=HA_LANGUAGE[language],
                )
            except Exception as error:  # noqa: BLE001 - hassil's own error for a sentence it cannot read
                log.warning("intent matching failed on %r (%s sentences): %s", cleaned[:80], source, error)
                continue
            if result is not None:
                slots = {name: entity.value for name, entity in result.entities.items()}
                elapsed_ms = (time.perf_counter() - started) * 1000
                return IntentMatch(result.intent.name, slots, language, text, source, round(elapsed_ms, 2))
        return None


def _merged(shared: dict[str, Any], sentences: dict[str, Any], ha_data: dict[str, Any]) -> dict[str, Any]:
    """`sentences` compiled with Home Assistant's lists and expansion rules beside their own."""
    return {
        "language": ha_data["language"],
        "intents": sentences.get("intents") or {},
        "lists": {**shared["lists"], **(sentences.get("lists") or {})},
        "expansion_rules": {**shared["expansion_rules"], **(sentences.get("expansion_rules") or {})},
        "skip_words": ha_data.get("skip_words", []),
    }
