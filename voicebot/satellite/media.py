"""Audio Home Assistant names by URL (an answer, an announcement), fetched and decoded a second at a time.

A file is downloaded to a temporary file within a byte cap and a time-out, then decoded in one-second
blocks as it plays, never whole: a short, highly compressed file can hold hours of audio (a 223 KB FLAC
of silence once took 660 MB to decode at once). Playing stops at `max_seconds` of audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import AsyncIterator

import httpx
import numpy as np
import soundfile

from voicebot.audio import AudioChunk
from voicebot.runtime.net import PeerError

MAX_AUDIO_BYTES = 32 * 1024 * 1024
"""The largest answer or announcement downloaded."""
DOWNLOAD_TIMEOUT_S = 15.0
BLOCK_S = 1.0
"""Audio decoded at a time."""


class TooLong(PeerError):
    """Audio longer than the cap in seconds: it played up to the cap."""


async def audio_blocks(url: str, max_seconds: float) -> AsyncIterator[AudioChunk]:
    """Audio (WAV, FLAC, MP3, OGG) from `url`, mono, a second at a time; httpx.HTTPError or PeerError if it cannot
    be fetched or decoded, TooLong once `max_seconds` have been given."""
    if not url.startswith(("http://", "https://")):
        raise PeerError(f"a media URL that is not http(s): {url[:100]!r}")
    with tempfile.TemporaryDirectory(prefix="voicebot-media-") as folder:
        path = Path(folder) / "audio"
        await _download(url, path)
        sound = await asyncio.to_thread(_open, path)
        with contextlib.closing(sound):
            block_frames = max(1, int(BLOCK_S * sound.samplerate))
            given_s = 0.0
            while True:
                block = await asyncio.to_thread(_read, sound, block_frames)
                if not len(block):
                    return
                chunk = AudioChunk(np.ascontiguousarray(block.mean(axis=1, dtype=np.float32)), sound.samplerate)
                if given_s + chunk.seconds > max_seconds:
                    raise TooLong(f"audio longer than {max_seconds:g} s (satellite.max_announcement_s)")
                given_s += chunk.seconds
                yield chunk


async def _download(url: str, path: Path) -> None:
    written = 0
    client = httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True)
    async with client, client.stream("GET", url) as response:
        response.raise_for_status()
        with path.open("wb") as file:
            async for piece in response.aiter_bytes():
                written += len(piece)
                if written > MAX_AUDIO_BYTES:
                    raise PeerError(f"audio larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MiB")
                file.write(piece)


def _open(path: Path) -> soundfile.SoundFile:
    try:
        return soundfile.SoundFile(str(path))
    except (soundfile.SoundFileError, RuntimeError, TypeError) as error:
        raise PeerError(f"audio that does not decode ({error})") from None


def _read(sound: soundfile.SoundFile, frames: int) -> np.ndarray:
    try:
        return sound.read(frames, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise PeerError(f"audio that does not decode ({error})") from None
