"""Small network helpers shared by the servers (HTTP, Wyoming, the satellite)."""

from __future__ import annotations

import ipaddress


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
