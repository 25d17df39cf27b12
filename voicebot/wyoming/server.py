"""voicebot wyoming: speech-to-text, TTS and the LLM, each a Wyoming server on its own port of wyoming.host.

The ports are bound before the models load, so a port in use is a one-line error at once; connections are
accepted once the models are ready. Off loopback, each server is announced with zeroconf.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os

from wyoming.server import AsyncTcpServer, HandlerFactory

from voicebot.asr import AsrService
from voicebot.config import Config
from voicebot.errors import ConfigError, VoicebotError
from voicebot.llm_service import LlmService
from voicebot.runtime.net import descriptor_budget, is_loopback
from voicebot.tts import TtsService
from voicebot.wyoming.announce import Announcer
from voicebot.wyoming.asr import AsrServer
from voicebot.wyoming.handle import HandleServer
from voicebot.wyoming.peer import MAX_HEADER_BYTES, Connection, EventServer
from voicebot.wyoming.tts import TtsServer

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0
"""On stop, requests being answered get this long before their connections are cut."""
WHAT = {"asr": "speech-to-text", "tts": "TTS", "handle": "conversation"}


def check_wyoming_config(config: Config) -> None:
    """Refuse two servers on one port, and a stage whose local model would not be loaded."""
    for stage, backend, fallback in (
        ("asr", config.asr.backend, config.asr.fallback),
        ("tts", config.tts.backend, config.tts.fallback),
        ("llm", config.llm.backend, config.llm.fallback),
    ):
        if backend != "local" and not fallback:
            raise ConfigError(
                f"config error: voicebot wyoming serves this machine's models, but {stage}.backend is {backend} "
                f"with {stage}.fallback off; set {stage}.backend: local"
            )
    wyoming = config.wyoming
    ports = {"asr_port": wyoming.asr_port, "tts_port": wyoming.tts_port, "handle_port": wyoming.handle_port}
    for key, port in ports.items():
        others = [other for other, value in ports.items() if value == port and other != key]
        if others:
            raise ConfigError(
                f"config error: wyoming.{key} and wyoming.{others[0]} are both {port}; give each server its own port"
            )


class _TcpServer(AsyncTcpServer):
    """wyoming's TCP server, bound early and started later, with header lines capped at MAX_HEADER_BYTES."""

    async def bind(self, handler_factory: HandlerFactory) -> None:
        """Take the port without accepting connections yet."""
        self._server = await asyncio.start_server(
            functools.partial(self._handler_callback, handler_factory),
            host=self.host,
            port=self.port,
            limit=MAX_HEADER_BYTES,
            start_serving=False,
        )

    async def start(self, handler_factory: HandlerFactory | None = None) -> None:
        """Accept connections on the bound port."""
        assert self._server is not None
        await self._server.start_serving()

    def close(self) -> None:
        """Stop accepting connections."""
        if self._server is not None:
            self._server.close()


class WyomingServers:
    """The three servers, the services behind them, and their zeroconf announcement."""

    def __init__(self, config: Config) -> None:
        check_wyoming_config(config)
        self.config = config
        self.host = config.wyoming.host
        wyoming = config.wyoming
        self.ports = {"asr": wyoming.asr_port, "tts": wyoming.tts_port, "handle": wyoming.handle_port}
        self.servers: dict[str, EventServer] = {}
        self._servers: dict[str, _TcpServer] = {}
        self._announcer: Announcer | None = None

    def url(self, name: str) -> str:
        """Where a server listens, as a Wyoming URI."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.ports[name]}"

    @property
    def summary(self) -> str:
        """One line: what is served where."""
        return ", ".join(f"{WHAT[name]} on {self.url(name)}" for name in self.ports)

    async def bind(self) -> None:
        """Take the ports; one that cannot be had is a one-line error."""
        for name, port in self.ports.items():
            server = _TcpServer(self.host, port)
            try:
                await server.bind(functools.partial(self._connect, name))
            except OSError as error:
                await self.stop()
                reason = os.strerror(error.errno) if error.errno else str(error)
                raise VoicebotError(
                    f"cannot listen on {self.url(name)} (wyoming.{name}_port): {reason}; "
                    f"set wyoming.host and wyoming.{name}_port"
                ) from None
            self._servers[name] = server

    def _connect(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Connection:
        return self.servers[name].connect(reader, writer)

    async def start(self, asr: AsrService, tts: TtsService, llm: LlmService) -> None:
        """Serve the loaded stages on the bound ports, and announce them off loopback."""
        self.servers = {
            "asr": AsrServer(asr, self.config),
            "tts": TtsServer(tts, self.config),
            "handle": HandleServer(llm, self.config),
        }
        wyoming = self.config.wyoming
        cap = descriptor_budget(len(self.servers) * wyoming.max_connections) // len(self.servers)
        if cap < wyoming.max_connections:
            log.warning(
                "wyoming: serving at most %d connections per server, not %d (wyoming.max_connections): the "
                "descriptor limit leaves room for no more; raise it (ulimit -n, or LimitNOFILE= in the unit)",
                cap,
                wyoming.max_connections,
            )
        for server in self.servers.values():
            server.bound(wyoming, max(1, cap))
        for server in self._servers.values():
            await server.start()
        if is_loopback(self.host):
            log.info("wyoming: not announced with zeroconf: wyoming.host %s is loopback", self.host)
        elif not self.config.wyoming.zeroconf:
            log.info("wyoming: not announced with zeroconf (wyoming.zeroconf is false)")
        else:
            self._announcer = Announcer(self.host)
            await self._announcer.announce({name: self.ports[name] for name in self.ports})

    async def stop(self) -> None:
        """Withdraw the announcement, stop listening, let answers in progress end briefly, then cut them."""
        if self._announcer is not None:
            await self._announcer.close()
            self._announcer = None
        for server in self._servers.values():
            server.close()
        connections = [connection for server in self.servers.values() for connection in server.connections]
        for connection in connections:
            await connection.stop()
        tasks = [connection.task for connection in connections if connection.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for server in self.servers.values():
            await server.close()
