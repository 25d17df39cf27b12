"""Local lists: the shopping list, the to-do list, and any the config names, each known by its names in both
languages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from voicebot.intents.timers import Refusal

MAX_ITEMS = 500
MAX_ITEM_CHARS = 200
BUILT_IN_LISTS = {
    "shopping": ("shopping list", "shopping", "groceries", "grocery list", "购物清单", "购物单", "购物列表"),
    "todo": ("to-do list", "to do list", "todo list", "to-do", "todo", "to do", "待办事项", "待办清单", "待办"),
}


@dataclass
class ListItem:
    """One entry of a list."""

    text: str
    done: bool = False
    added_at: float = field(default_factory=time.time)


class ListBook:
    """Named lists of items; item matching ignores case and surrounding punctuation."""

    def __init__(self, extra_lists: tuple[str, ...] = ()) -> None:
        self.names = {key: names for key, names in BUILT_IN_LISTS.items()}
        for name in extra_lists:
            self.names.setdefault(name.strip().lower(), (name.strip().lower(),))
        self.lists: dict[str, list[ListItem]] = {key: [] for key in self.names}

    def spoken_names(self, but: str | None = None) -> list[str]:
        """Every name a list may be called by (the slot list the matcher uses), but those of list `but`."""
        return [name for key, names in self.names.items() if key != but for name in names]

    def key_of(self, spoken: str | None) -> str:
        """The list a spoken name means (the shopping list when none is named); Refusal for an unknown one."""
        if not spoken:
            return "shopping"
        wanted = _key(spoken).removesuffix(" list")
        for key, names in self.names.items():
            if any(_key(name).removesuffix(" list") == wanted for name in names):
                return key
        raise Refusal("no_such_list", name=spoken)

    def add(self, key: str, text: str) -> ListItem:
        """Add an item; Refusal if it is already there (not done), empty, or the list is full."""
        text = _clean(text)
        if not text:
            raise Refusal("empty_item")
        items = self.lists[key]
        if any(_key(item.text) == _key(text) and not item.done for item in items):
            raise Refusal("item_already_there", item=text)
        if len(items) >= MAX_ITEMS:
            raise Refusal("list_full")
        items[:] = [item for item in items if _key(item.text) != _key(text)]
        item = ListItem(text)
        items.append(item)
        return item

    def complete(self, key: str, text: str) -> ListItem:
        """Mark an item done; Refusal if it is not on the list."""
        item = self._find(key, text)
        item.done = True
        return item

    def remove(self, key: str, text: str) -> ListItem:
        """Take an item off the list; Refusal if it is not on it."""
        item = self._find(key, text)
        self.lists[key].remove(item)
        return item

    def open_items(self, key: str) -> list[ListItem]:
        """The items not yet done, in the order they were added."""
        return [item for item in self.lists[key] if not item.done]

    def _find(self, key: str, text: str) -> ListItem:
        for item in self.lists[key]:
            if _key(item.text) == _key(text) and not item.done:
                return item
        raise Refusal("item_not_there", item=_clean(text))

    def to_state(self) -> dict[str, Any]:
        """As saved in the state file."""
        return {key: [vars(item) for item in items] for key, items in self.lists.items()}

    def load(self, state: dict[str, Any]) -> list[str]:
        """Take the lists from the state file; returns a line for each entry that could not be read."""
        problems = []
        for key, items in state.items() if isinstance(state, dict) else []:
            if key not in self.lists or not isinstance(items, list):
                problems.append(f"list {str(key)[:40]!r} unknown here")
                continue
            for data in items[:MAX_ITEMS]:
                if isinstance(data, dict) and isinstance(data.get("text"), str):
                    done, added = data.get("done", False), data.get("added_at", 0.0)
                    self.lists[key].append(ListItem(_clean(data["text"]), bool(done), float(added or 0.0)))
                else:
                    problems.append(f"an entry of list {key!r} is not an item")
        return problems


def _clean(text: str) -> str:
    return " ".join(text.strip(" \t\n.,;:!?。，；：！？\"'“”").split())[:MAX_ITEM_CHARS]


def _key(text: str) -> str:
    return _clean(text).lower()
