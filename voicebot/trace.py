"""The trace: one JSON line per pipeline event, all on the input's clock."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

from voicebot.audio import Clock
from voicebot.errors import VoicebotError, describe_os_error

log = logging.getLogger(__name__)


class Tracer:
    """Writes `{"t": seconds since the input started, "event": name, ...}` lines, and keeps them for callers."""

    def __init__(self, clock: Clock, path: str | Path | None = None) -> None:
        self.clock = clock
        self.events: list[dict[str, Any]] = []
        self._file: IO[str] | None = None
        if path is not None:
            try:
                self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            except OSError as error:
                raise VoicebotError(f"cannot write trace file {path}: {describe_os_error(error)}") from None

    def emit(self, event: str, t: float | None = None, **fields: Any) -> None:
        """Record an event now, or at clock time `t` for something that happened earlier."""
        record = {"t": round(self.clock.now() if t is None else t, 4), "event": event, **fields}
        self.events.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        """Finish the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
