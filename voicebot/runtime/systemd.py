"""Talking to systemd: readiness, reload and stop notices, and watchdog pings over $NOTIFY_SOCKET.

The protocol is one unix datagram per notice, of newline-separated KEY=VALUE lines (sd_notify(3));
it needs no library. Outside systemd, with no $NOTIFY_SOCKET, every notice is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends sd_notify notices; pings the watchdog from the event loop, so a blocked loop gets restarted."""

    def __init__(self, socket_path: str | None, watchdog_interval_s: float | None = None) -> None:
        self.socket_path = socket_path
        self.watchdog_interval_s = watchdog_interval_s
        self._socket: socket.socket | None = None
        if socket_path:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # An abstract socket is named with a leading "@" in the environment, a NUL byte on the wire.
            self._address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        """As systemd sets it up for a Type=notify service with WatchdogSec=; inert elsewhere."""
        interval_s = None
        watchdog_usec = os.environ.get("WATCHDOG_USEC")
        watchdog_pid = os.environ.get("WATCHDOG_PID")
        if watchdog_usec and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            try:
                # Ping twice per period, as sd_watchdog_enabled(3) advises.
                interval_s = int(watchdog_usec) / 1e6 / 2
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", watchdog_usec)
        return cls(os.environ.get("NOTIFY_SOCKET"), interval_s)

    @property
    def active(self) -> bool:
        """Whether systemd is listening."""
        return self._socket is not None

    def notify(self, *fields: str) -> None:
        """Send one notice; a lost notice is logged, never raised: systemd decides what it means."""
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as error:
            log.warning("cannot notify systemd at %s: %s", self.socket_path, error.strerror or error)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """Ping the watchdog for as long as the event loop runs; runs forever when there is a watchdog."""
        if self._socket is None or not self.watchdog_interval_s:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_interval_s)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
