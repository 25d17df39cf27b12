"""The one clock of a run."""

from __future__ import annotations

import time


class Clock:
    """The one clock every trace event uses: seconds since the input started."""

    def __init__(self) -> None:
        self._origin = time.monotonic()

    def restart(self) -> None:
        """Make now the zero point."""
        self._origin = time.monotonic()

    def now(self) -> float:
        """Seconds since the zero point."""
        return time.monotonic() - self._origin
