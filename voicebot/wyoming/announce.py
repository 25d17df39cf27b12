"""The Wyoming servers announced as `_wyoming._tcp` services (mDNS), so Home Assistant discovers them."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
MAX_INSTANCE_NAME_BYTES = 63  # An mDNS label.
REGISTER_TIMEOUT_S = 10.0


def service_name(service: str, hostname: str | None = None) -> str:
    """The instance name, e.g. voicebot-asr-kitchen._wyoming._tcp.local."""
    hostname = (hostname or socket.gethostname()).split(".")[0] or "voicebot"
    prefix = f"voicebot-{service}-"
    hostname = hostname.encode()[: MAX_INSTANCE_NAME_BYTES - len(prefix)].decode(errors="ignore")
    return f"{prefix}{hostname}.{SERVICE_TYPE}"


def addresses_for(host: str) -> list[str]:
    """The addresses a server listening on `host` is reached at: the host itself, or for a wildcard every
    address of this machine's interfaces but loopback and link-local ones."""
    try:
        listening = ipaddress.ip_address(host)
    except ValueError:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)})
    if not listening.is_unspecified:
        return [host]
    import ifaddr  # zeroconf's own dependency, for the interfaces' addresses.

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
            if address.is_loopback or address.is_link_local or address.version > listening.version:
                continue
            found.append(str(address))
    return sorted(set(found))


class Announcer:
    """Registers each server with AsyncZeroconf, and withdraws them (goodbye packets) on close."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._zeroconf = None
        self.names: list[str] = []

    async def announce(self, services: dict[str, int]) -> None:
        """Announce `services` (name -> port); a network without multicast is logged once, not fatal."""
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        addresses = addresses_for(self.host)
        if not addresses:
            log.warning("wyoming: not announced with zeroconf: this machine has no address but loopback")
            return
        if self.host == "0.0.0.0":
            interfaces, ip_version = InterfaceChoice.All, IPVersion.V4Only
        elif self.host == "::":
            interfaces, ip_version = InterfaceChoice.All, IPVersion.All
        else:
            interfaces, ip_version = addresses, None
        try:
            self._zeroconf = AsyncZeroconf(interfaces=interfaces, ip_version=ip_version)
            hostname = socket.gethostname().split(".")[0] or "voicebot"
            infos = [
                AsyncServiceInfo(
                    SERVICE_TYPE,
                    service_name(service),
                    port=port,
                    parsed_addresses=addresses,
                    server=f"{hostname}.local.",
                    properties={"service": service, "software": "voicebot"},
                )
                for service, port in services.items()
            ]
            async with asyncio.timeout(REGISTER_TIMEOUT_S):
                registered = [
                    await self._zeroconf.async_register_service(info, allow_name_change=True) for info in infos
                ]
                await asyncio.gather(*registered)
        except (OSError, TimeoutError, ValueError) as error:
            log.warning("wyoming: could not announce with zeroconf (%s); the servers still run", error or "timed out")
            await self.close()
            return
        self.names = [info.name for info in infos]
        log.info("wyoming: announced %s on %s", ", ".join(self.names), ", ".join(addresses))

    async def close(self) -> None:
        """Withdraw the announcements and stop zeroconf."""
        zeroconf, self._zeroconf = self._zeroconf, None
        if zeroconf is None:
            return
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT_S):
                await zeroconf.async_unregister_all_services()
                await zeroconf.async_close()
        except (OSError, TimeoutError) as error:
            log.warning("wyoming: zeroconf did not close cleanly: %s", error or "timed out")
        else:
            if self.names:
                log.info("wyoming: withdrew the zeroconf announcements")
