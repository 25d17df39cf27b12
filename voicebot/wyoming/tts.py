"""Text-to-speech over Wyoming with the loaded Piper voices: whole texts, or text streamed in as it is written.

Text goes through voicebot's SentenceChunker, so each sentence is synthesised and sent as soon as it is
complete: with `synthesize-start`/`synthesize-chunk`, the first sentence is heard while the rest of the text
is still arriving. Each request is one audio stream (one `audio-start`, its chunks, one `audio-stop`), at
the rate of the first voice that speaks in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import re
import time
from pathlib import Path

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from voicebot.audio import AudioChunk as Audio
from voicebot.chunker import SentenceChunker
from voicebot.config import Config
from voicebot.errors import VoicebotError
from voicebot.models.registry import entry_at
from voicebot.tts import TtsService, language_of
from voicebot.wyoming.peer import BadRequest, Connection, EventServer, parsed, text_field

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 10_000
"""Text in one request, whole or streamed: about ten minutes of speech."""
SAMPLES_PER_CHUNK = 1024
WIDTH_BYTES = 2


class TtsServer(EventServer):
    """The loaded Synthesizer, on its pinned worker, for every connection."""

    name = "tts"

    def __init__(self, tts: TtsService, config: Config) -> None:
        super().__init__()
        if not tts.voices:
            raise VoicebotError("voicebot wyoming serves this machine's own Piper voices, and none is loaded")
        self.speech = tts
        self.tts = config.tts
        self.voices = {_voice_name(path): language for language, path in tts.voices.items()}
        """Voice name (the .onnx file's name) -> the Synthesizer's language key."""
        self.info = tts_info(tts.voices)
        self.info_event = self.info.event()
        self._warned: set[str] = set()

    def connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> TtsConnection:
        return TtsConnection(reader, writer, self)

    def language_for(self, voice: SynthesizeVoice | None) -> str | None:
        """The voice a request asks for, as the Synthesizer's language; None to go by the text's language."""
        if voice is None:
            return None
        if isinstance(voice.name, str) and voice.name:
            if voice.name in self.voices:
                return self.voices[voice.name]
            # Each unknown name once, and only a few: a peer naming endless voices must not fill the journal.
            if voice.name not in self._warned and len(self._warned) < 16:
                self._warned.add(voice.name)
                log.warning(
                    "wyoming tts: no voice named %r (this server has %s); the text's language chooses",
                    voice.name[:80],
                    ", ".join(self.voices),
                )
            return None
        if isinstance(voice.language, str) and voice.language:
            return re.split(r"[-_]", voice.language, maxsplit=1)[0].lower()
        return None


def tts_info(voices: dict[str, Path]) -> Info:
    """What `describe` answers: Piper, and each voice loaded with its language and licence."""
    return Info(
        tts=[
            TtsProgram(
                name="voicebot piper",
                attribution=Attribution(name="Rhasspy", url="https://github.com/OHF-Voice/piper1-gpl"),
                installed=True,
                description="Piper, served by voicebot: each sentence is spoken as soon as its text is complete",
                version=importlib.metadata.version("piper-tts"),
                voices=[_voice_info(path) for path in voices.values()],
                supports_synthesize_streaming=True,
            )
        ]
    )


def _voice_name(path: Path) -> str:
    return path.name.removesuffix(".onnx")


def _voice_info(path: Path) -> TtsVoice:
    voice_config = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
    language = voice_config.get("language", {})
    code = language.get("code") if isinstance(language, dict) else None
    return TtsVoice(
        name=_voice_name(path),
        attribution=Attribution(name="Rhasspy", url="https://huggingface.co/rhasspy/piper-voices"),
        installed=True,
        description=f"Piper voice {_voice_name(path)}, {voice_config.get('audio', {}).get('sample_rate', '?')} Hz; "
        f"dataset licence: {_voice_licence(path)}",
        version=None,
        languages=[code or _voice_name(path).split("-", 1)[0]],
    )


def _voice_licence(path: Path) -> str:
    """The dataset licence from the voice's MODEL_CARD (Piper's voices ship one), else the registry's."""
    card = path.parent / "MODEL_CARD"
    if card.is_file():
        found = re.search(r"^\*\s*License:\s*(.+)$", card.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
        if found:
            return found.group(1).strip()
    entry = entry_at(path.name)
    return entry.licence if entry is not None else "unknown"


class TtsConnection(Connection):
    """`synthesize`, or `synthesize-start`/`-chunk`s/`-stop`, in; audio out."""

    server: TtsServer

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: TtsServer) -> None:
        super().__init__(reader, writer, server)
        self._stream: _Speech | None = None

    def pending(self) -> str | None:
        if self._stream is None:
            return None
        return f"a streamed synthesis ({self._stream.chars} characters received)"

    async def handle_event(self, event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.server.info_event)
        elif Synthesize.is_type(event.type):
            if self._stream is not None:
                return True  # The whole text again, which streaming clients send for servers that do not stream.
            request = parsed(Synthesize.from_event, event)
            speech = _Speech(self, self.server.language_for(request.voice), streamed=False)
            await speech.feed(text_field(request.text, "the text", MAX_TEXT_CHARS))
            await speech.finish()
        elif SynthesizeStart.is_type(event.type):
            if self._stream is not None:
                raise BadRequest("synthesize-start while a streamed synthesis is open", "invalid-event")
            start = parsed(SynthesizeStart.from_event, event)
            self._stream = _Speech(self, self.server.language_for(start.voice), streamed=True)
        elif SynthesizeChunk.is_type(event.type):
            if self._stream is None:
                raise BadRequest("synthesize-chunk without synthesize-start", "invalid-event")
            chunk = parsed(SynthesizeChunk.from_event, event)
            await self._stream.feed(text_field(chunk.text, "a synthesize-chunk's text", MAX_TEXT_CHARS))
        elif SynthesizeStop.is_type(event.type):
            if self._stream is None:
                raise BadRequest("synthesize-stop without synthesize-start", "invalid-event")
            speech, self._stream = self._stream, None
            await speech.finish()
            await self.write_event(SynthesizeStopped().event())
        return True


class _Speech:
    """One request's audio: its text cut into sentences, each synthesised and sent as soon as it is complete."""

    def __init__(self, connection: TtsConnection, language: str | None, streamed: bool) -> None:
        self.connection = connection
        self.server = connection.server
        self.language = language
        self.streamed = streamed
        self.chars = 0
        self.refused = False
        self._chunker: SentenceChunker | None = None
        self._rate_hz: int | None = None
        self._sent_samples = 0
        self._started = time.monotonic()
        self._first_audio_s: float | None = None

    async def feed(self, text: str) -> None:
        """Take more text; synthesise and send every sentence it completes."""
        if self.refused:
            return
        self.chars += len(text)
        if self.chars > MAX_TEXT_CHARS:
            self.refused = True
            raise BadRequest(f"more than {MAX_TEXT_CHARS} characters to synthesise in one request", "text-too-long")
        if self._chunker is None:
            tts = self.server.tts
            language = self.language or language_of(text)
            self._chunker = SentenceChunker(tts.first_piece_chars, tts.max_piece_chars, language=language)
        for piece in self._chunker.feed(text):
            await self._say(piece)

    async def finish(self) -> None:
        """Say what is left of the text and end the audio stream."""
        if self._chunker is not None and not self.refused:
            for piece in self._chunker.flush():
                await self._say(piece)
        if self._rate_hz is None:
            await self._start(self.server.speech.rate_hz)  # Nothing to say: an empty stream, still well formed.
        await self.connection.write_event(AudioStop(timestamp=self._timestamp_ms()).event())
        if self.refused:
            return  # Its refusal was logged.
        log.info(
            "%s: said %d characters%s as %.1f s of audio; first audio after %s",
            self.connection.label,
            self.chars,
            " (streamed)" if self.streamed else "",
            self._sent_samples / (self._rate_hz or 1),
            f"{self._first_audio_s:.2f} s" if self._first_audio_s is not None else "none",
        )

    async def _say(self, piece: str) -> None:
        async with contextlib.aclosing(self.server.speech.synthesize(piece, self.language)) as audio_chunks:
            async for audio in audio_chunks:
                await self._send(audio)

    async def _send(self, audio: Audio) -> None:
        if self._rate_hz is None:
            await self._start(audio.rate_hz)
            self._first_audio_s = time.monotonic() - self._started
        assert self._rate_hz is not None
        pcm = audio.resampled(self._rate_hz).int16().tobytes()
        step = SAMPLES_PER_CHUNK * WIDTH_BYTES
        for offset in range(0, len(pcm), step):
            part = pcm[offset : offset + step]
            await self.connection.write_event(
                AudioChunk(self._rate_hz, WIDTH_BYTES, 1, part, timestamp=self._timestamp_ms()).event()
            )
            self._sent_samples += len(part) // WIDTH_BYTES

    async def _start(self, rate_hz: int) -> None:
        self._rate_hz = rate_hz
        await self.connection.write_event(AudioStart(rate_hz, WIDTH_BYTES, 1, timestamp=0).event())

    def _timestamp_ms(self) -> int:
        return self._sent_samples * 1000 // (self._rate_hz or 1)
