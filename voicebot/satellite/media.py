"""Audio Home Assistant names by URL (an answer, an announcement), fetched and decoded within caps."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import soundfile

from voicebot.audio import AudioChunk
from voicebot.satellite.frames import PeerError

MAX_AUDIO_BYTES = 32 * 1024 * 1024
"""The largest answer or announcement downloaded."""
DOWNLOAD_TIMEOUT_S = 15.0


async def fetch_audio(url: str) -> AudioChunk:
    """Download audio (WAV, FLAC, MP3, OGG) and decode it to mono; httpx.HTTPError or PeerError if it cannot be."""
    if not url.startswith(("http://", "https://")):
        raise PeerError(f"a media URL that is not http(s): {url[:100]!r}")
    body = bytearray()
    client = httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True)
    async with client, client.stream("GET", url) as response:
        response.raise_for_status()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > MAX_AUDIO_BYTES:
                raise PeerError(f"audio larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MiB")
    return await asyncio.to_thread(_decode, bytes(body))


def _decode(body: bytes) -> AudioChunk:
    try:
        samples, rate_hz = soundfile.read(io.BytesIO(body), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, TypeError) as error:
        raise PeerError(f"audio that does not decode ({error})") from None
    return AudioChunk(np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32)), int(rate_hz))
