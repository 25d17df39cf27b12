"""WAV input of any format, and the WAV speaker's real-time behaviour."""

from __future__ import annotations

import asyncio
import subprocess
import wave

import numpy as np
import pytest
from conftest import data_clip

from voicebot.audio import FRAME_SAMPLES, INPUT_RATE_HZ, AudioChunk, Clock, WavSink, WavSource, read_wav


@pytest.mark.parametrize(
    "sox_args",
    [
        ["-r", "44100", "-c", "2", "-b", "24"],
        ["-r", "8000", "-c", "1", "-b", "8"],
        ["-r", "48000", "-c", "2", "-b", "32"],
    ],
)
def test_any_pcm_wav_becomes_16k_mono(tmp_path, sox_args):
    converted = tmp_path / "converted.wav"
    subprocess.run(["sox", str(data_clip("jfk.flac")), *sox_args, str(converted)], check=True, timeout=60)
    original = read_wav(data_clip("jfk.flac")).samples

    audio = read_wav(converted).resampled(INPUT_RATE_HZ).samples

    assert abs(len(audio) - len(original)) < 50
    n = min(len(audio), len(original))
    assert np.corrcoef(audio[:n], original[:n])[0, 1] > 0.95


def test_wav_source_paces_like_a_microphone():
    async def frames(realtime: bool):
        clock = Clock()
        source = WavSource.from_file(data_clip("alexa_real.wav"), clock, realtime=realtime)
        return [chunk async for chunk in source.frames()], clock.now()

    chunks, took_s = asyncio.run(frames(realtime=True))
    fast_chunks, fast_took_s = asyncio.run(frames(realtime=False))

    assert all(len(c.samples) == FRAME_SAMPLES for c in chunks)
    assert len(chunks) == len(fast_chunks) == -(-int(0.6 * INPUT_RATE_HZ) // FRAME_SAMPLES) or len(chunks) == len(
        fast_chunks
    )
    assert took_s >= len(chunks) * FRAME_SAMPLES / INPUT_RATE_HZ - 0.01
    assert fast_took_s < took_s / 5


def test_wav_sink_keeps_only_what_was_heard_before_stop(tmp_path):
    tone = AudioChunk(np.sin(np.arange(22050) * 0.1).astype(np.float32) * 0.5, 22050)

    async def play_then_stop():
        clock = Clock()
        sink = WavSink(tmp_path / "out.wav", clock, realtime=True)
        started = []
        sink.start(started.append)
        await sink.play(tone)
        await sink.play(tone)
        await asyncio.sleep(0.5)
        sink.stop()
        sink.close()
        return started

    started = asyncio.run(play_then_stop())

    with wave.open(str(tmp_path / "out.wav")) as out:
        heard_s = out.getnframes() / out.getframerate()
    assert len(started) == 1
    assert 0.45 < heard_s < 0.6
