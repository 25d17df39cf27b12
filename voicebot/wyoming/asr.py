"""Speech-to-text over Wyoming: audio in any rate, width and channel count, transcribed by the loaded faster-whisper."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info

from voicebot.asr import AsrService
from voicebot.audio import INPUT_RATE_HZ
from voicebot.config import Config
from voicebot.errors import VoicebotError
from voicebot.models.registry import MODELS, ModelEntry, entry_at
from voicebot.wyoming.peer import BadRequest, Connection, EventServer, parsed

log = logging.getLogger(__name__)

MIN_RATE_HZ = 4000
MAX_RATE_HZ = 192_000
WIDTHS = (1, 2, 3, 4)
MAX_CHANNELS = 2  # What AudioChunkConverter mixes down to mono.


class AsrServer(EventServer):
    """The loaded Transcriber, on its pinned worker, for every connection."""

    name = "asr"

    def __init__(self, asr: AsrService, config: Config) -> None:
        super().__init__()
        if asr.model_dir is None:
            raise VoicebotError("voicebot wyoming serves this machine's own Whisper, and none is loaded")
        self.asr = asr
        self.max_audio_s = config.wyoming.max_audio_s
        self.info = asr_info(asr.model_dir, config)
        self.info_event = self.info.event()

    def connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> AsrConnection:
        return AsrConnection(reader, writer, self)


def asr_info(model_dir: Path, config: Config) -> Info:
    """What `describe` answers: faster-whisper, the model loaded, and the languages it transcribes."""
    entry = _registry_entry(model_dir)
    name = entry.name if entry is not None else model_dir.name
    about = entry.description if entry is not None else f"faster-whisper model {model_dir}"
    licence = entry.licence if entry is not None else "licence unknown"
    model = AsrModel(
        name=name,
        attribution=Attribution(name="OpenAI", url="https://github.com/openai/whisper"),
        installed=True,
        description=f"{about}; {licence}",
        version=None,
        languages=_languages(config.asr.language),
    )
    return Info(
        asr=[
            AsrProgram(
                name="voicebot faster-whisper",
                attribution=Attribution(name="SYSTRAN", url="https://github.com/SYSTRAN/faster-whisper"),
                installed=True,
                description="faster-whisper, int8 on the CPU, served by voicebot",
                version=importlib.metadata.version("faster-whisper"),
                models=[model],
            )
        ]
    )


def _registry_entry(model_dir: Path) -> ModelEntry | None:
    """The registry's model in `model_dir`: by the folder name `voicebot models fetch` gives it, else (a model
    a pip package installed, in a folder called "model") by its model.bin's published size."""
    entry = entry_at(model_dir.name)
    if entry is not None:
        return entry
    try:
        size = (model_dir / "model.bin").stat().st_size
    except OSError:
        return None
    return next((e for e in MODELS if e.kind == "asr" and e.files[0].size_bytes == size), None)


def _languages(language: str | None) -> list[str]:
    """What the Transcriber transcribes: the configured language, or with auto every language Whisper knows."""
    if language != "auto":
        return [language or "en"]
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # Whisper's languages; faster-whisper names no public list.

    return list(_LANGUAGE_CODES)


@dataclass
class _Utterance:
    """Audio received for one transcription, as 16 kHz 16-bit mono."""

    format: str
    converter: AudioChunkConverter = field(
        default_factory=lambda: AudioChunkConverter(rate=INPUT_RATE_HZ, width=2, channels=1)
    )
    pcm: bytearray = field(default_factory=bytearray)
    seconds: float = 0.0
    refused: bool = False


class AsrConnection(Connection):
    """`transcribe`, `audio-start`, `audio-chunk`s and `audio-stop` in, one `transcript` out."""

    server: AsrServer

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: AsrServer) -> None:
        super().__init__(reader, writer, server)
        self._request: Transcribe | None = None
        self._utterance: _Utterance | None = None

    def pending(self) -> str | None:
        utterance = self._utterance
        if utterance is None or utterance.refused:
            return None
        return f"an audio stream ({utterance.seconds:.1f} s received), not transcribed"

    async def handle_event(self, event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.server.info_event)
        elif Transcribe.is_type(event.type):
            self._request = parsed(Transcribe.from_event, event)
        elif AudioStart.is_type(event.type):
            start = parsed(AudioStart.from_event, event)
            self._start(start.rate, start.width, start.channels)
        elif AudioChunk.is_type(event.type):
            self._add(parsed(AudioChunk.from_event, event))
        elif AudioStop.is_type(event.type):
            await self._transcribe()
        return True

    def _add(self, chunk: AudioChunk) -> None:
        utterance = self._utterance
        if utterance is None:  # Audio without audio-start: its chunks say its format.
            utterance = self._start(chunk.rate, chunk.width, chunk.channels)
        if utterance.refused:
            return
        try:
            _format_of(chunk.rate, chunk.width, chunk.channels)
            if len(chunk.audio) % (chunk.width * chunk.channels):
                raise BadRequest("an audio-chunk's payload is not a whole number of samples", "bad-audio")
            utterance.seconds += chunk.seconds
            if utterance.seconds > self.server.max_audio_s:
                raise BadRequest(
                    f"audio longer than {self.server.max_audio_s:g} s (wyoming.max_audio_s); it is not transcribed",
                    "audio-too-long",
                )
            utterance.pcm += utterance.converter.convert(chunk).audio
        except BadRequest:
            utterance.refused = True  # One refusal per stream: its other chunks are dropped quietly.
            utterance.pcm = bytearray()
            raise

    def _start(self, rate: object, width: object, channels: object) -> _Utterance:
        utterance = self._utterance = _Utterance("?")
        try:
            utterance.format = _format_of(rate, width, channels)
        except BadRequest:
            utterance.refused = True
            raise
        return utterance

    async def _transcribe(self) -> None:
        utterance, self._utterance = self._utterance, None
        request, self._request = self._request, None
        if utterance is None:
            raise BadRequest("audio-stop without audio", "invalid-event")
        if utterance.refused:
            return
        samples = np.frombuffer(bytes(utterance.pcm), np.int16).astype(np.float32) / 32768.0
        started = time.monotonic()
        transcript = await self.server.asr.transcribe(samples)
        log.info(
            "%s: %.1f s of audio (%s) transcribed in %.2f s: %r",
            self.label,
            utterance.seconds,
            utterance.format,
            time.monotonic() - started,
            transcript.text,
        )
        context = request.context if request is not None and isinstance(request.context, dict) else None
        await self.write_event(Transcript(text=transcript.text, language=transcript.language, context=context).event())


def _format_of(rate: object, width: object, channels: object) -> str:
    """The audio format as a person reads it, refused if it cannot be converted to 16 kHz mono."""
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (rate, width, channels)):
        raise BadRequest("audio rate, width and channels must be whole numbers", "bad-audio")
    assert isinstance(rate, int) and isinstance(width, int) and isinstance(channels, int)
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise BadRequest(f"audio at {rate} Hz; send {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz", "bad-audio")
    if width not in WIDTHS:
        raise BadRequest(f"audio samples of {width} bytes; send 1 to 4 bytes", "bad-audio")
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadRequest(f"audio with {channels} channels; send mono or stereo", "bad-audio")
    return f"{rate} Hz, {8 * width}-bit, {'mono' if channels == 1 else 'stereo'}"
