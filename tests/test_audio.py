"""Audio files of any common format in, and the WAV speaker's real-time behaviour."""

from __future__ import annotations

import asyncio
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import data_clip

from voicebot.audio import FRAME_SAMPLES, INPUT_RATE_HZ, AudioChunk, WavSink, WavSource, read_wav
from voicebot.errors import AudioInputError
from voicebot.runtime.clock import Clock


def sox(source: Path, target: Path, *options: str, effects: tuple[str, ...] = ()) -> Path:
    """Convert with sox, which takes the output's format options before its name and effects after it."""
    subprocess.run(["sox", str(source), *options, str(target), *effects], check=True, timeout=60)
    return target


def reference_speech() -> np.ndarray:
    """jfk as 16 kHz mono, decoded by sox rather than by the reader under test."""
    raw = subprocess.run(
        ["sox", str(data_clip("jfk.flac")), "-t", "raw", "-e", "signed", "-b", "16", "-"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def mp3(source: Path, target: Path) -> Path:
    """MP3 from FFmpeg's LAME encoder through PyAV, because Debian's sox cannot write MP3."""
    with av.open(str(source)) as heard, av.open(str(target), "w") as out:
        stream = out.add_stream("libmp3lame", rate=44100, layout="stereo")
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=44100)
        for frame in heard.decode(audio=0):
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return target


@pytest.mark.parametrize(
    "name, convert",
    [
        ("wav", lambda s, t: sox(s, t, "-r", "44100", "-c", "2", "-b", "24")),
        ("wav", lambda s, t: sox(s, t, "-r", "8000", "-c", "1", "-b", "8")),
        ("wav", lambda s, t: sox(s, t, "-r", "48000", "-c", "2", "-b", "32")),
        ("wav", lambda s, t: sox(s, t, "-r", "22050", "-c", "1", "-e", "floating-point", "-b", "32")),
        ("wav", lambda s, t: sox(s, t, "-e", "floating-point", "-b", "64")),
        ("flac", lambda s, t: sox(s, t, "-r", "48000", "-c", "2", "-b", "24")),
        ("ogg", lambda s, t: sox(s, t, "-r", "44100", "-c", "2")),
        ("mp3", mp3),
    ],
    ids=[
        "wav-44k-stereo-24bit",
        "wav-8k-8bit",
        "wav-48k-stereo-32bit",
        "wav-float",
        "wav-double",
        "flac-48k-stereo",
        "ogg-vorbis",
        "mp3",
    ],
)
def test_real_speech_in_any_format_becomes_the_same_mono_audio(tmp_path, name, convert):
    original = reference_speech()
    converted = convert(data_clip("jfk.flac"), tmp_path / f"jfk.{name}")

    audio = read_wav(converted)
    samples = audio.resampled(INPUT_RATE_HZ).samples

    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - len(original)) < 0.01 * INPUT_RATE_HZ, (len(samples), len(original))
    n = min(len(samples), len(original))
    assert np.corrcoef(samples[:n], original[:n])[0, 1] > 0.95


def test_stereo_is_mixed_down_not_cut_to_one_channel(tmp_path):
    original = reference_speech()
    # Speech only in the right channel: reading the left alone would give silence.
    right_only = sox(data_clip("jfk.flac"), tmp_path / "right.wav", effects=("remix", "0", "1"))

    samples = read_wav(right_only).samples

    assert np.corrcoef(samples, original)[0, 1] > 0.99
    assert np.std(samples) == pytest.approx(np.std(original) / 2, rel=0.01)


def text_file(folder: Path) -> Path:
    path = folder / "notes.wav"
    path.write_text("not audio")
    return path


def holed_flac(folder: Path) -> Path:
    data = bytearray(data_clip("jfk.flac").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = bytes(4000)  # A run of zeros in the middle, as a bad block leaves.
    path = folder / "holed.flac"
    path.write_bytes(data)
    return path


def cut_flac(folder: Path) -> Path:
    path = folder / "cut.flac"
    path.write_bytes(data_clip("jfk.flac").read_bytes()[:30000])  # An interrupted copy.
    return path


@pytest.mark.parametrize(
    "make_input, fault, fix",
    [
        (lambda d: d / "absent.wav", "does not exist", "check the path"),
        (lambda d: d, "Is a directory", "check the path"),
        (text_file, "is not readable audio (Format not recognised)", "convert it with: ffmpeg"),
        (holed_flac, "is not readable audio (flac decoder lost sync)", "convert it with: ffmpeg"),
        (cut_flac, "is not readable audio (", "convert it with: ffmpeg"),
    ],
    ids=["missing", "directory", "not-audio", "corrupt", "truncated"],
)
def test_a_bad_input_file_is_one_line_naming_the_file_the_fault_and_the_fix(tmp_path, make_input, fault, fix):
    path = make_input(tmp_path)

    with pytest.raises(AudioInputError) as raised:
        read_wav(path)

    message = str(raised.value)
    assert "\n" not in message
    assert str(path) in message and fault in message and fix in message, message


def test_wav_source_paces_like_a_microphone():
    async def frames(realtime: bool):
        clock = Clock()
        source = WavSource.from_file(data_clip("alexa_real.wav"), clock, realtime=realtime)
        return [chunk async for chunk in source.frames()], clock.now()

    chunks, took_s = asyncio.run(frames(realtime=True))
    fast_chunks, fast_took_s = asyncio.run(frames(realtime=False))

    assert all(len(c.samples) == FRAME_SAMPLES for c in chunks)
    # alexa_real.wav is 10,000 samples: seven whole 80 ms frames and an eighth padded with silence.
    assert len(chunks) == len(fast_chunks) == 8
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
