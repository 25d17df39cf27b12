"""Bad peers and real clients at once against `voicebot serve`: are the real ones served, and does the server get
back what the bad ones held?

    python -m voicebot.tools.bench_load [--idle 200] [--slowloris 50] [--chats 20] [--max-tokens 24]
        [--duration-s 30] [--timeout-s 180] [--json FILE] [--config PATH] [--set section.key=value ...]

It starts `voicebot serve` on a free port of 127.0.0.1 (with the --config and --set given), waits for /health,
has one chat answered to warm it up, and notes the server's open descriptors and resident memory (from /proc).
Then the siege:
- `--idle` sockets that connect and send nothing, each connecting again about a second after the server closes it;
- `--slowloris` clients that send a request's headers a byte every half second and never end them, each
  connecting again about a second after the server closes it;
and 3 s into it, the real clients:
- `--chats` at once, each asking for a streamed answer of `--max-tokens` tokens, as an OpenAI client would: after
  a 429 or a 503 it waits as Retry-After says, after a dropped connection it tries again;
- a /health every second on a new connection, timed.
When every chat has its answer (or after --timeout-s), and the bad peers have gone on for --duration-s, they stop
and close; it waits for the server's descriptors to settle and prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

START_TIMEOUT_S = 120.0
RECONNECT_S = (0.5, 1.5)
"""A bad peer the server closed connects again after a time drawn from this range (not all at once)."""
LORIS_BYTE_S = 0.5
HEALTH_EVERY_S = 1.0
SIEGE_FIRST_S = 3.0
SETTLE_S = 15.0
QUESTION = "Tell me a short story about a lighthouse."


@dataclass
class Figures:
    """What one run measured."""

    idle_sockets: int
    slowloris_clients: int
    chats: int
    chats_served: int = 0
    chat_seconds_median: float = 0.0
    chat_seconds_max: float = 0.0
    chat_retries_after_429: int = 0
    chat_retries_after_503: int = 0
    chat_retries_after_a_drop: int = 0
    all_chats_served_in_s: float | None = None
    bad_connections_opened: int = 0
    bad_connections_closed_by_the_server: int = 0
    health_checks: int = 0
    health_answered: int = 0
    health_refused_503: int = 0
    health_seconds_max: float = 0.0
    descriptors_before: int = 0
    descriptors_peak: int = 0
    descriptors_after: int = 0
    rss_mb_before: float = 0.0
    rss_mb_peak: float = 0.0
    rss_mb_after: float = 0.0
    server_log_lines: int = 0
    server_log_tracebacks: int = 0
    wall_s: float = 0.0
    chat_seconds: list[float] = field(default_factory=list, repr=False)


def reconnect_s() -> float:
    return random.uniform(*RECONNECT_S)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descriptors(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Load:
    """The bad peers, the chats and the health checks against one server, and what they saw."""

    def __init__(self, url: str, port: int, figures: Figures, max_tokens: int) -> None:
        self.url = url
        self.port = port
        self.figures = figures
        self.max_tokens = max_tokens
        self.stopping = asyncio.Event()

    async def idle_socket(self) -> None:
        """Connect, send nothing, and connect again a second after the server closes the connection."""
        while not self.stopping.is_set():
            await self._hold(b"")

    async def slowloris(self) -> None:
        """Send a request's headers a byte at a time, never ending them; again a second after being closed."""
        while not self.stopping.is_set():
            await self._hold(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100_000)

    async def _hold(self, drip: bytes) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
        except (OSError, TimeoutError):
            await self._pause(reconnect_s())
            return
        self.figures.bad_connections_opened += 1
        closed_by_server = False
        try:
            for byte in drip:
                writer.write(bytes([byte]))
                await writer.drain()
                if await self._closed_within(reader, LORIS_BYTE_S):
                    closed_by_server = True
                    break
            else:
                while not self.stopping.is_set():
                    if await self._closed_within(reader, 1.0):
                        closed_by_server = True
                        break
        except (ConnectionError, OSError):
            closed_by_server = True
        finally:
            writer.close()
        self.figures.bad_connections_closed_by_the_server += closed_by_server
        await self._pause(reconnect_s())

    async def _closed_within(self, reader: asyncio.StreamReader, timeout_s: float) -> bool:
        try:
            data = await asyncio.wait_for(reader.read(4096), timeout_s)
        except TimeoutError:
            return self.stopping.is_set()
        return not data or self.stopping.is_set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def chat(self, started: float) -> None:
        """One streamed answer, retried as a client would after a 429 or a dropped connection."""
        body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True, "max_tokens": self.max_tokens}
        while not self.stopping.is_set():
            try:
                async with (
                    httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client,
                    client.stream("POST", f"{self.url}v1/chat/completions", json=body) as response,
                ):
                    if response.status_code in (429, 503):
                        if response.status_code == 429:
                            self.figures.chat_retries_after_429 += 1
                        else:
                            self.figures.chat_retries_after_503 += 1
                        await self._pause(min(float(response.headers.get("retry-after", "1")), 5.0))
                        continue
                    response.raise_for_status()
                    lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
                if lines and lines[-1] == "data: [DONE]":
                    self.figures.chat_seconds.append(time.monotonic() - started)
                    return
            except httpx.HTTPError:
                self.figures.chat_retries_after_a_drop += 1
                await self._pause(0.2)

    async def health(self) -> None:
        """A /health every second on a new connection, timed, as a monitor would ask."""
        while not self.stopping.is_set():
            self.figures.health_checks += 1
            asked = time.monotonic()
            try:
                async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
                    status = (await client.get(f"{self.url}health")).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                self.figures.health_answered += 1
                self.figures.health_seconds_max = max(self.figures.health_seconds_max, time.monotonic() - asked)
            elif status == 503:
                self.figures.health_refused_503 += 1
            await self._pause(HEALTH_EVERY_S)


async def run_load(
    url: str, port: int, pid: int, figures: Figures, max_tokens: int, duration_s: float, timeout_s: float
) -> None:
    """The bad peers for `duration_s`, and the chats at once, until every chat is served or `timeout_s` passes."""
    load = Load(url, port, figures, max_tokens)
    started = time.monotonic()
    bad = [asyncio.create_task(load.idle_socket()) for _ in range(figures.idle_sockets)]
    bad += [asyncio.create_task(load.slowloris()) for _ in range(figures.slowloris_clients)]
    await asyncio.sleep(SIEGE_FIRST_S)  # The real clients come to a server already under siege.
    health = asyncio.create_task(load.health())
    chats = [asyncio.create_task(load.chat(time.monotonic())) for _ in range(figures.chats)]

    async def watch() -> None:
        while True:
            figures.descriptors_peak = max(figures.descriptors_peak, descriptors(pid))
            figures.rss_mb_peak = max(figures.rss_mb_peak, rss_mb(pid))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    _, late = await asyncio.wait(chats, timeout=timeout_s)
    if not late:
        figures.all_chats_served_in_s = round(time.monotonic() - started - SIEGE_FIRST_S, 1)
    await asyncio.sleep(max(0.0, started + duration_s - time.monotonic()))
    load.stopping.set()
    for task in late:
        task.cancel()
    await asyncio.wait([*bad, health, *late], timeout=10)
    watcher.cancel()
    await asyncio.gather(watcher, *late, return_exceptions=True)


def start_server(port: int, options: list[str], log_path: Path) -> subprocess.Popen:
    """`voicebot serve` on 127.0.0.1:port, its output in `log_path`."""
    with log_path.open("w", encoding="utf-8") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "voicebot", "serve", *options, "--set", "http.host=127.0.0.1"]
            + ["--set", f"http.port={port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def wait_ready(server: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"voicebot serve exited with {server.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"voicebot serve did not answer within {START_TIMEOUT_S:.0f} s")


def settle(pid: int, before: int) -> int:
    """The server's descriptors once they are back within 10 % of `before`, or after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while (count := descriptors(pid)) > before * 1.1 and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def measure(
    options: list[str], idle: int, slowloris: int, chats: int, max_tokens: int, duration_s: float, timeout_s: float
) -> Figures:
    """Start a server, load it, and return what was measured."""
    figures = Figures(idle_sockets=idle, slowloris_clients=slowloris, chats=chats)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="voicebot-bench-load-") as folder:
        log_path = Path(folder) / "serve.log"
        server = start_server(port, options, log_path)
        try:
            wait_ready(server, url, log_path)
            warm = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": max_tokens}
            httpx.post(f"{url}v1/chat/completions", json=warm, timeout=60).raise_for_status()
            time.sleep(1.0)
            figures.descriptors_before = figures.descriptors_peak = descriptors(server.pid)
            figures.rss_mb_before = figures.rss_mb_peak = round(rss_mb(server.pid), 1)
            started = time.monotonic()
            asyncio.run(run_load(url, port, server.pid, figures, max_tokens, duration_s, timeout_s))
            figures.descriptors_after = settle(server.pid, figures.descriptors_before)
            figures.rss_mb_after = round(rss_mb(server.pid), 1)
            figures.wall_s = round(time.monotonic() - started, 1)
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log = log_path.read_text(encoding="utf-8", errors="replace")
    figures.rss_mb_peak = round(figures.rss_mb_peak, 1)
    figures.chats_served = len(figures.chat_seconds)
    if figures.chat_seconds:
        figures.chat_seconds_median = round(statistics.median(figures.chat_seconds), 2)
        figures.chat_seconds_max = round(max(figures.chat_seconds), 2)
    figures.health_seconds_max = round(figures.health_seconds_max, 3)
    figures.server_log_lines = len(log.splitlines())
    figures.server_log_tracebacks = log.count("Traceback")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicebot.tools.bench_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=200, help="sockets that connect and send nothing (200)")
    parser.add_argument("--slowloris", type=int, default=50, help="clients that never end their headers (50)")
    parser.add_argument("--chats", type=int, default=20, help="real clients, each a streamed answer (20)")
    parser.add_argument("--max-tokens", type=int, default=24, help="tokens in each answer (24)")
    parser.add_argument("--duration-s", type=float, default=30.0, help="how long the bad peers go on (30)")
    parser.add_argument("--timeout-s", type=float, default=180.0, help="give up on the chats after this (180)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--config", metavar="PATH", help="YAML config file for the server")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], help="override a key")
    args = parser.parse_args(argv)
    options = (["--config", args.config] if args.config else []) + [f for s in args.set for f in ("--set", s)]
    try:
        figures = measure(
            options, args.idle, args.slowloris, args.chats, args.max_tokens, args.duration_s, args.timeout_s
        )
    except (RuntimeError, httpx.HTTPError) as error:
        print(f"voicebot.tools.bench_load: {error}", file=sys.stderr)
        return 1
    result = {key: value for key, value in asdict(figures).items() if key != "chat_seconds"}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if figures.chats_served == figures.chats else 2


if __name__ == "__main__":
    sys.exit(main())
