"""Wyoming clients: speech recognition and TTS on another machine's Wyoming servers (asr/tts.backend: wyoming).

Each has explicit time-outs and raises RemoteEngineError, one line naming the server and what went
wrong, for the stage's service to fall back to the local model or give up. A dead server never hangs
a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator
from urllib.parse import urlparse

import numpy as np

from voicebot.asr import Transcript
from voicebot.audio import AudioChunk
from voicebot.config import AsrConfig, TtsConfig
from voicebot.errors import ConfigError, RemoteEngineError

log = logging.getLogger(__name__)

INPUT_RATE_HZ = 16000
CHUNK_SAMPLES = 1024


def tcp_address(url: str | None, key: str) -> tuple[str, int]:
    """(host, port) of a tcp://host:port URL, or a config error naming `key`."""
    parsed = urlparse(url or "")
    if parsed.scheme != "tcp" or not parsed.hostname or not parsed.port:
        raise ConfigError(f"config error: {key} is {url!r}; give the Wyoming server as tcp://host:port")
    return parsed.hostname, parsed.port


class WyomingTranscriber:
    """Speech recognition on a Wyoming speech-to-text server (asr.backend: wyoming)."""

    def __init__(self, config: AsrConfig) -> None:
        self.host, self.port = tcp_address(config.url, "asr.url")
        self.name = f"the speech-to-text server at {config.url}"
        self.timeout_s = config.timeout_s
        self.language = None if config.language in (None, "auto") else config.language

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        """The transcript of 16 kHz float32 speech; RemoteEngineError if the server fails or is too slow."""
        from wyoming.asr import Transcribe
        from wyoming.asr import Transcript as WyomingTranscript
        from wyoming.audio import AudioChunk as WyomingChunk
        from wyoming.audio import AudioStart, AudioStop
        from wyoming.client import AsyncTcpClient
        from wyoming.error import Error

        pcm = AudioChunk(audio, INPUT_RATE_HZ).int16().tobytes()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with AsyncTcpClient(self.host, self.port) as client:
                    await client.write_event(Transcribe(language=self.language).event())
                    await client.write_event(AudioStart(rate=INPUT_RATE_HZ, width=2, channels=1).event())
                    for start in range(0, len(pcm), CHUNK_SAMPLES * 2):
                        chunk = WyomingChunk(
                            rate=INPUT_RATE_HZ, width=2, channels=1, audio=pcm[start : start + CHUNK_SAMPLES * 2]
                        )
                        await client.write_event(chunk.event())
                    await client.write_event(AudioStop().event())
                    while True:
                        event = await client.read_event()
                        if event is None:
                            raise RemoteEngineError(f"{self.name} closed the connection")
                        if Error.is_type(event.type):
                            raise RemoteEngineError(f"{self.name} failed: {Error.from_event(event).text}")
                        if WyomingTranscript.is_type(event.type):
                            transcript = WyomingTranscript.from_event(event)
                            return Transcript(transcript.text.strip(), transcript.language or self.language or "en")
        except TimeoutError:
            raise RemoteEngineError(
                f"{self.name} gave no transcript within {self.timeout_s:g} s (asr.timeout_s)"
            ) from None
        except OSError as error:
            raise RemoteEngineError(f"cannot reach {self.name}: {error.strerror or error}") from None


class WyomingSynthesizer:
    """Speech synthesis on a Wyoming TTS server (tts.backend: wyoming), a piece of text at a time."""

    def __init__(self, config: TtsConfig) -> None:
        self.host, self.port = tcp_address(config.url, "tts.url")
        self.name = f"the TTS server at {config.url}"
        self.voice = config.voice
        self.timeout_s = config.timeout_s

    async def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        """Audio for `text` as the server sends it; RemoteEngineError if it fails or goes quiet."""
        from wyoming.audio import AudioChunk as WyomingChunk
        from wyoming.audio import AudioStop
        from wyoming.client import AsyncTcpClient
        from wyoming.error import Error
        from wyoming.tts import Synthesize, SynthesizeVoice

        voice = SynthesizeVoice(name=self.voice, language=None if self.voice else language)
        client = AsyncTcpClient(self.host, self.port)
        try:
            async with asyncio.timeout(self.timeout_s):
                await client.connect()
                await client.write_event(Synthesize(text=text, voice=voice).event())
            while True:
                async with asyncio.timeout(self.timeout_s):
                    event = await client.read_event()
                if event is None:
                    raise RemoteEngineError(f"{self.name} closed the connection mid-answer")
                if Error.is_type(event.type):
                    raise RemoteEngineError(f"{self.name} failed: {Error.from_event(event).text}")
                if WyomingChunk.is_type(event.type):
                    yield _float_chunk(WyomingChunk.from_event(event))
                elif AudioStop.is_type(event.type):
                    return
        except TimeoutError:
            raise RemoteEngineError(f"{self.name} sent nothing for {self.timeout_s:g} s (tts.timeout_s)") from None
        except OSError as error:
            raise RemoteEngineError(f"cannot reach {self.name}: {error.strerror or error}") from None
        finally:
            with contextlib.suppress(OSError):
                await client.disconnect()


def _float_chunk(chunk: Any) -> AudioChunk:
    """A Wyoming audio chunk (PCM of any width and channel count) as voicebot's mono float32 chunk."""
    dtype = {1: np.int8, 2: np.int16, 4: np.int32}[chunk.width]
    samples = np.frombuffer(chunk.audio, dtype=dtype).astype(np.float32) / float(np.iinfo(dtype).max + 1)
    if chunk.channels > 1:
        samples = samples.reshape(-1, chunk.channels).mean(axis=1)
    return AudioChunk(samples.astype(np.float32), chunk.rate)
