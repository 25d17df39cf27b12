"""The trace: one JSON line per pipeline event, all on the input's clock."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

from voicebot.errors import VoicebotError, describe_os_error
from voicebot.runtime.clock import Clock

log = logging.getLogger(__name__)


class Tracer:
    """Writes `{"t": seconds since the input started, "event": name, ...}` lines; with keep, also keeps them.

    A service runs for weeks, so events are kept in memory only for callers that read them back
    (the benchmark, tests).
    """

    def __init__(self, clock: Clock, path: str | Path | None = None, keep: bool = False) -> None:
        self.clock = clock
        self.keep = keep
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
        if self.keep:
            self.events.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        """Finish the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


class HeldTracer:
    """A turn's view of the trace: events wait until the turn is confirmed, and vanish if it never is.

    A turn started early, during a pause, may be dropped when the person goes on talking; its
    events must not appear in the trace as if it had happened.
    """

    def __init__(self, tracer: Tracer, released: bool = False) -> None:
        self.tracer = tracer
        self.clock = tracer.clock
        self.released = released
        self._held: list[tuple[str, float, dict[str, Any]]] = []

    def emit(self, event: str, t: float | None = None, **fields: Any) -> None:
        """Record an event, or hold it until release()."""
        if self.released:
            self.tracer.emit(event, t, **fields)
        else:
            self._held.append((event, self.clock.now() if t is None else t, fields))

    def release(self) -> None:
        """Write the held events, with the times they happened, and pass later ones straight through."""
        self.released = True
        for event, t, fields in self._held:
            self.tracer.emit(event, t, **fields)
        self._held.clear()


Trace = Tracer | HeldTracer
"""Where a stage reports what it did: the whole trace, or one turn's held view of it."""
