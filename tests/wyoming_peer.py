"""A real `voicebot wyoming` in a subprocess on free ports, and Wyoming peers for it: wyoming's own client for
well-behaved requests, raw streams for bad peers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from http_server import ServerProcess, free_port
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.handle import Handled, HandledChunk, HandledStop
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

START_TIMEOUT_S = 90
EVENT_TIMEOUT_S = 30
READY = "voicebot: serving Wyoming"


class WyomingProcess(ServerProcess):
    """`voicebot wyoming` with the bundled models; its stdout and stderr go to a log file the test reads."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1", options: tuple[str, ...] = ()) -> None:
        self.ports = {"asr": free_port(), "tts": free_port(), "handle": free_port()}
        settings = ["--set", "profile=bundled", "--set", f"wyoming.host={host}"]
        settings += [arg for name, port in self.ports.items() for arg in ("--set", f"wyoming.{name}_port={port}")]
        super().__init__("wyoming", [*settings, *options], log_path)

    def wait_ready(self) -> WyomingProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if READY in self.log():
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"voicebot wyoming exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.2)
        raise AssertionError(f"voicebot wyoming was not ready within {START_TIMEOUT_S} s:\n{self.log()}")

    def lines(self) -> list[str]:
        return self.log().splitlines()

    def wait_for_line(self, pattern: str, after: int = 0, timeout_s: float = 10.0) -> str:
        """The first log line from line `after` on that matches `pattern`, waiting for it."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [line for line in self.lines()[after:] if re.search(pattern, line)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout_s} s:\n{self.log()}")
            time.sleep(0.1)


def client(port: int) -> AsyncTcpClient:
    """wyoming's own client, every read bounded."""
    return AsyncTcpClient("127.0.0.1", port, connect_timeout=5, read_timeout=EVENT_TIMEOUT_S)


async def read(peer: AsyncTcpClient) -> Event:
    event = await peer.read_event()
    assert event is not None, "the server closed the connection"
    return event


async def describe(port: int) -> Info:
    async with client(port) as peer:
        await peer.write_event(Describe().event())
        event = await read(peer)
        assert Info.is_type(event.type), event
        return Info.from_event(event)


def pcm_of(samples: np.ndarray, width: int, channels: int) -> bytes:
    """Float samples in [-1, 1] as interleaved PCM of `width` bytes with `channels` identical channels."""
    samples = np.repeat(np.clip(samples, -1.0, 1.0)[:, None], channels, axis=1).reshape(-1)
    if width == 1:
        return (samples * 127 + 128).astype(np.uint8).tobytes()
    if width == 2:
        return (samples * 32767).astype("<i2").tobytes()
    if width == 4:
        return (samples * 2147483647).astype("<i4").tobytes()
    raise ValueError(width)


def audio_events(pcm: bytes, rate: int, width: int, channels: int, chunk_samples: int = 1024) -> list[Event]:
    step = chunk_samples * width * channels
    return [
        AudioStart(rate, width, channels).event(),
        *(AudioChunk(rate, width, channels, pcm[i : i + step]).event() for i in range(0, len(pcm), step)),
        AudioStop().event(),
    ]


async def transcribe(peer: AsyncTcpClient, pcm: bytes, rate: int, width: int, channels: int) -> Event:
    """Send one utterance on an open connection; the server's answer (a transcript or an error)."""
    await peer.write_event(Transcribe(language="en").event())
    for event in audio_events(pcm, rate, width, channels):
        await peer.write_event(event)
    return await read(peer)


@dataclass
class Speech:
    """What a TTS server sent for one request, with when each audio chunk arrived."""

    events: list[Event] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [event.type for event in self.events]

    @property
    def start(self) -> AudioStart:
        return AudioStart.from_event(next(e for e in self.events if AudioStart.is_type(e.type)))

    def samples(self) -> np.ndarray:
        pcm = b"".join(AudioChunk.from_event(e).audio for e in self.events if AudioChunk.is_type(e.type))
        return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0


async def read_speech(peer: AsyncTcpClient, until: str, speech: Speech | None = None) -> Speech:
    """Audio events until an event of type `until` (audio-stop, or synthesize-stopped for a stream)."""
    speech = speech or Speech()
    while True:
        event = await read(peer)
        speech.events.append(event)
        if AudioChunk.is_type(event.type):
            speech.chunk_times.append(time.monotonic())
        assert not Error.is_type(event.type), event
        if event.type == until:
            return speech


async def synthesize(port: int, text: str) -> Speech:
    async with client(port) as peer:
        await peer.write_event(Synthesize(text=text).event())
        return await read_speech(peer, AudioStop().event().type)


@dataclass
class StreamedSpeech(Speech):
    last_text_sent_at: float = 0.0
    first_audio_before_rest: bool = False


async def synthesize_streamed(port: int, first_parts: list[str], rest: list[str], wait_s: float) -> StreamedSpeech:
    """Stream `first_parts`, wait up to `wait_s` for the first audio chunk, then stream `rest`, the whole text
    (as Home Assistant does for servers that do not stream) and synthesize-stop; read until synthesize-stopped."""
    speech = StreamedSpeech()
    async with client(port) as peer:
        await peer.write_event(SynthesizeStart().event())
        for part in first_parts:
            await peer.write_event(SynthesizeChunk(text=part).event())

        async def first_audio() -> None:
            while not speech.chunk_times:
                event = await read(peer)
                speech.events.append(event)
                if AudioChunk.is_type(event.type):
                    speech.chunk_times.append(time.monotonic())

        try:
            await asyncio.wait_for(first_audio(), wait_s)
            speech.first_audio_before_rest = True
        except TimeoutError:
            pass
        for part in rest:
            await peer.write_event(SynthesizeChunk(text=part).event())
        speech.last_text_sent_at = time.monotonic()
        await peer.write_event(Synthesize(text="".join(first_parts + rest)).event())
        await peer.write_event(SynthesizeStop().event())
        await read_speech(peer, SynthesizeStopped().event().type, speech)
    return speech


@dataclass
class Answer:
    events: list[Event]

    @property
    def handled(self) -> Handled:
        return Handled.from_event(next(e for e in self.events if Handled.is_type(e.type)))

    @property
    def streamed_text(self) -> str:
        return "".join(HandledChunk.from_event(e).text for e in self.events if HandledChunk.is_type(e.type))


async def ask(port: int, text: str, conversation_id: str | None) -> Answer:
    """A transcript to the conversation agent on a new connection, as Home Assistant sends it."""
    async with client(port) as peer:
        return await ask_on(peer, text, conversation_id)


async def ask_on(peer: AsyncTcpClient, text: str, conversation_id: str | None) -> Answer:
    """A transcript on an open connection; everything up to handled-stop."""
    context = {"conversation_id": conversation_id} if conversation_id else None
    await peer.write_event(Transcript(text=text, context=context, language="en").event())
    events = []
    while True:
        event = await read(peer)
        events.append(event)
        assert not Error.is_type(event.type), event
        if HandledStop.is_type(event.type):
            return Answer(events)


@dataclass
class RawPeer:
    """A bad peer: bytes on a plain connection, and whatever comes back."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        return cls(reader, writer)

    @property
    def local_port(self) -> int:
        return self.writer.get_extra_info("sockname")[1]

    async def send(self, *parts: bytes | Event) -> None:
        for part in parts:
            if isinstance(part, Event):
                await async_write_event(part, self.writer)
            else:
                self.writer.write(part)
                await self.writer.drain()

    async def events_until_closed(self) -> list[Event]:
        """Events the server sends until it closes the connection (a reset counts as closed)."""
        events = []
        try:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                while (event := await async_read_event(self.reader)) is not None:
                    events.append(event)
        except ConnectionError:
            pass
        return events

    async def next_event(self) -> Event:
        event = await asyncio.wait_for(async_read_event(self.reader), EVENT_TIMEOUT_S)
        assert event is not None, "the server closed the connection"
        return event

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
