"""Small network helpers shared by the servers (HTTP, Wyoming, the satellite): what loopback is, the errors a
peer causes, a log line that a flood of peers cannot multiply, and the registry that keeps a server's
connections under its cap by dropping the one that has waited longest without being served."""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

IDLE_GRACE_S = 5.0
"""A client that has shown it is real (an authorised request, a well-formed event) keeps an idle connection
this long before a newcomer at the cap may take its place; a peer that has shown nothing has no such grace."""
FRESH_S = 0.1
"""A connection this new is not dropped to make room: a burst of connections is accepted before any of them is
read, so a real client's request may not have been seen yet. A burst at the cap is refused instead, as is a flood
that fills every place faster than this."""
RESERVED_DESCRIPTORS = 16
"""File descriptors kept free of connections: for model files, logs, sound devices and a new accept()."""


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PeerError(Exception):
    """What a peer sent cannot be read within the protocol and its caps; the connection cannot go on.

    `code` is the protocol's name for the refusal where it has one (Wyoming's error events carry it).
    """

    def __init__(self, reason: str, code: str = "invalid-event") -> None:
        super().__init__(reason)
        self.code = code


class PeerLeft(Exception):
    """The peer closed the connection, perhaps in the middle of something."""


class RateLimitedLog:
    """One log line per event, but at most `burst` lines of one kind in `per_s` seconds; the rest are counted,
    and the count is told with the next line of that kind, so a flood of bad peers cannot flood the journal."""

    def __init__(self, logger: logging.Logger, burst: int = 20, per_s: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.per_s = per_s
        self._kinds: dict[str, list[float | int]] = {}  # kind -> [window start, lines in it, held back]

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        """Log `message % args` unless `kind` has had its `burst` of lines in this window."""
        now = time.monotonic()
        window = self._kinds.setdefault(kind, [now, 0, 0])
        if now - window[0] >= self.per_s:
            window[0], window[1] = now, 0
        if window[1] >= self.burst:
            window[2] += 1
            return
        window[1] += 1
        held, window[2] = window[2], 0
        if held:
            message = f"{message} (and {held} more like it, not logged)"
        self.logger.log(level, message, *args)

    def warning(self, kind: str, message: str, *args: object) -> None:
        """A refusal or a drop."""
        self.log(logging.WARNING, kind, message, *args)

    def info(self, kind: str, message: str, *args: object) -> None:
        """A peer that left or went quiet."""
        self.log(logging.INFO, kind, message, *args)


class Peer(Protocol):
    """What the registry needs of a connection."""

    @property
    def label(self) -> str:
        """How log lines name it, e.g. "127.0.0.1:50312"."""
        ...

    @property
    def trusted(self) -> bool:
        """Whether it has shown it is a real client: an authorised request, a well-formed event."""
        ...

    @property
    def idle_since(self) -> float | None:
        """time.monotonic() when it last finished a request (or connected); None while one is being served."""
        ...

    def drop(self) -> None:
        """Close it at once, quietly: the registry's caller has logged why."""
        ...


P = TypeVar("P", bound=Peer)


@dataclass(frozen=True)
class Admission(Generic[P]):
    """Whether a new connection was let in, and the one dropped to make room for it, if any."""

    admitted: bool
    dropped: P | None = None


class Connections(Generic[P]):
    """A server's open connections, at most `cap`; at the cap, a newcomer takes the place of the connection that
    has waited longest without being served (untrusted, or idle past IDLE_GRACE_S), or is refused if none has."""

    def __init__(self, cap: int, grace_s: float = IDLE_GRACE_S, fresh_s: float = FRESH_S) -> None:
        self.cap = cap
        self.grace_s = grace_s
        self.fresh_s = fresh_s
        self._open: set[P] = set()

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self):
        return iter(list(self._open))

    def admit(self, peer: P) -> Admission[P]:
        """Let `peer` in, dropping the longest-waiting idle or untrusted connection if the cap is reached."""
        dropped = None
        if len(self._open) >= self.cap:
            dropped = self.droppable()
            if dropped is None:
                return Admission(False)
            self._open.discard(dropped)
            dropped.drop()
        self._open.add(peer)
        return Admission(True, dropped)

    def droppable(self) -> P | None:
        """The connection a newcomer may replace: not being served, and untrusted (and not fresh) or idle past the
        grace; the one waiting longest."""
        now = time.monotonic()
        waiting = [
            (since, peer)
            for peer in self._open
            if (since := peer.idle_since) is not None
            and now - since >= (self.fresh_s if not peer.trusted else self.grace_s)
        ]
        return min(waiting, key=lambda item: item[0])[1] if waiting else None

    def discard(self, peer: P) -> None:
        """Forget a closed connection."""
        self._open.discard(peer)


def descriptor_budget(wanted: int, reserve: int = RESERVED_DESCRIPTORS) -> int:
    """`wanted` connections, or as many as this process's descriptor limit (ulimit -n) leaves room for, with
    `reserve` kept free, so that at the cap a new accept() still finds a descriptor to make room with."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32  # No /proc: a guess at a server's own files, sockets and pipes.
    return max(1, min(wanted, soft - in_use - reserve))


def excerpt(text: str, limit: int = 60) -> str:
    """`text` for a log line or a message: at most `limit` characters, repr-quoted, visibly cut if longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
