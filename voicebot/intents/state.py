"""What the assistant keeps across restarts: timers, alarms, lists and the volume, in one JSON file.

It is written atomically (a temporary file beside it, fsync, rename, fsync of the folder), so a crash or
`kill -9` leaves either the old file or the new one, never half of one. A file that cannot be read as this
state is kept aside under another name, logged in one line, and the assistant starts afresh.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from voicebot.errors import VoicebotError, describe_os_error

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"
MAX_STATE_BYTES = 4 * 1024 * 1024
"""A state file larger than this is not ours (lists of a few hundred items take kilobytes)."""


class StateDirError(VoicebotError):
    """The state directory cannot be created or written."""


def default_state_dir() -> Path:
    """Where state lives: systemd's StateDirectory ($STATE_DIRECTORY, /var/lib/voicebot under the system unit),
    else the XDG state directory of the user ($XDG_STATE_HOME/voicebot, ~/.local/state/voicebot)."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "voicebot"


class StateFile:
    """One JSON document on disk, read once at start and replaced whole on every change."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATE_FILE

    def load(self) -> dict[str, Any]:
        """The saved state, or an empty one (a missing file is a first start; an unreadable one is kept aside)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return {}
        except OSError as error:
            log.error("cannot read the state file %s: %s; starting with no timers or lists", self.path, error)
            return {}
        try:
            if size > MAX_STATE_BYTES:
                raise ValueError(f"it is {size} bytes, more than a state file ever holds")
            state = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise ValueError("it is not voicebot's state, version 1")
        except (ValueError, UnicodeDecodeError, OSError) as error:
            kept = self._keep_aside()
            log.error(
                "the state file %s cannot be read (%s); kept it as %s and started with no timers or lists",
                self.path,
                str(error)[:200],
                kept,
            )
            return {}
        return state

    def _keep_aside(self) -> Path | str:
        aside = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(self.path, aside)
        except OSError as error:
            return f"nothing (it could not be moved: {describe_os_error(error)})"
        return aside

    def save(self, state: dict[str, Any]) -> None:
        """Replace the file with `state`, atomically; StateDirError in one line if it cannot be written."""
        body = json.dumps({**state, "version": STATE_VERSION}, ensure_ascii=False, indent=1)
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=folder, prefix=".state-", suffix=".tmp", delete=False
            ) as temporary:
                temporary.write(body)
                temporary.flush()
                os.fsync(temporary.fileno())
            os.replace(temporary.name, self.path)
            directory = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as error:
            raise StateDirError(
                f"cannot save timers and lists in {self.path}: {describe_os_error(error)}; "
                "set intents.state_dir to a folder voicebot may write"
            ) from None
