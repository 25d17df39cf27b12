"""A supervisor's inbox: control events go out of band, ahead of the audio frames queued behind them."""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, TypeVar

E = TypeVar("E")
FRAMES_AHEAD = 4


class Inbox(Generic[E]):
    """The supervisor's queue: control events first, audio frames in order, with room for only a few.

    The bound keeps back-pressure on the source (a slow pipeline makes the microphone drop and count
    frames), while a control event never waits behind audio.
    """

    def __init__(self, frames_ahead: int = FRAMES_AHEAD) -> None:
        self._control: collections.deque[E] = collections.deque()
        self._frames: collections.deque[E] = collections.deque()
        self._frames_ahead = frames_ahead
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()

    def post(self, event: E) -> None:
        """Deliver a control event."""
        self._control.append(event)
        self._arrived.set()

    async def put_frame(self, event: E) -> None:
        """Deliver audio (or its end), waiting while the supervisor is behind."""
        while len(self._frames) >= self._frames_ahead:
            self._taken.clear()
            await self._taken.wait()
        self._frames.append(event)
        self._arrived.set()

    async def get(self) -> E:
        """The next event: control before audio."""
        while True:
            if self._control:
                return self._control.popleft()
            if self._frames:
                self._taken.set()
                return self._frames.popleft()
            self._arrived.clear()
            await self._arrived.wait()
