"""Audio in and out: the microphone or a WAV file in, the speaker or a WAV file out.

Sources yield `AudioChunk`s of 80 ms at 16 kHz mono, the frame openWakeWord expects. Sinks take
reply audio at the voice's rate, convert it for the device, and play it without gaps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol

import numpy as np
import soundfile
import soxr

from voicebot.errors import AudioDeviceError, AudioInputError, describe_os_error
from voicebot.runtime.clock import Clock

log = logging.getLogger(__name__)

INPUT_RATE_HZ = 16000
FRAME_SAMPLES = 1280  # 80 ms at 16 kHz: one openWakeWord step.


@dataclass(frozen=True)
class AudioChunk:
    """Mono audio samples (float32 in [-1, 1]) with their rate and the clock time their last sample arrived."""

    samples: np.ndarray
    rate_hz: int
    captured_at: float = 0.0

    @property
    def seconds(self) -> float:
        """Duration."""
        return len(self.samples) / self.rate_hz

    def int16(self) -> np.ndarray:
        """Samples as 16-bit PCM."""
        return np.clip(self.samples * 32768.0, -32768, 32767).astype(np.int16)

    def resampled(self, rate_hz: int) -> AudioChunk:
        """The same audio at another rate."""
        if rate_hz == self.rate_hz:
            return self
        if len(self.samples) == 0:
            return AudioChunk(self.samples, rate_hz, self.captured_at)
        converted = soxr.resample(self.samples, self.rate_hz, rate_hz).astype(np.float32)
        return AudioChunk(converted, rate_hz, self.captured_at)


def read_wav(path: str | Path) -> AudioChunk:
    """Read an audio file (WAV, FLAC, MP3 or OGG; any rate, channel count and sample format), mixed down to mono."""
    path = Path(path)
    try:
        # Python opens the file, not libsndfile, whose only reason for a missing file is "System error".
        with path.open("rb") as file:
            samples, rate_hz = soundfile.read(file, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioInputError(f"input audio file {path} does not exist; check the path") from None
    except OSError as error:
        raise AudioInputError(
            f"cannot read input audio file {path}: {error.strerror or error}; check the path and its permissions"
        ) from None
    except soundfile.SoundFileError as error:
        reason = (getattr(error, "error_string", "") or str(error)).removeprefix("Error : ").rstrip(".")
        raise AudioInputError(
            f"input audio file {path} is not readable audio ({reason}); "
            "use WAV, FLAC, MP3 or OGG, or convert it with: ffmpeg -i IN OUT.wav"
        ) from None
    return AudioChunk(samples.mean(axis=1, dtype=np.float32), rate_hz)


def write_wav(path: str | Path, audio: AudioChunk) -> None:
    """Write mono 16-bit PCM."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(audio.rate_hz)
        wav.writeframes(audio.int16().tobytes())


class AudioSource(Protocol):
    """Where the assistant hears: yields 80 ms chunks at 16 kHz until the input ends."""

    def frames(self) -> AsyncIterator[AudioChunk]: ...


class WavSource:
    """A WAV file heard like a microphone: at real-time pace, or as fast as it is taken.

    With `echo`, what the speaker played is mixed back in, as a microphone in the same room hears it:
    `echo(frame_end_t, samples)` returns the echo for the frame that ends at that clock time.
    """

    def __init__(
        self,
        audio: AudioChunk,
        clock: Clock,
        realtime: bool = True,
        echo: Callable[[float, int], np.ndarray] | None = None,
    ) -> None:
        self.audio = audio.resampled(INPUT_RATE_HZ)
        self.clock = clock
        self.realtime = realtime
        self.echo = echo
        self._next_sample = 0

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        clock: Clock,
        realtime: bool = True,
        echo: Callable[[float, int], np.ndarray] | None = None,
    ) -> WavSource:
        """Hear an audio file of any rate and channel count."""
        return cls(read_wav(path), clock, realtime, echo)

    async def frames(self) -> AsyncIterator[AudioChunk]:
        """Yield the file in 80 ms chunks; the clock starts with the first one.

        Taken again (after a config reload), it carries on where it stopped, as a microphone would.
        """
        samples = self.audio.samples
        if self._next_sample == 0:
            self.clock.restart()
        for start in range(self._next_sample, len(samples), FRAME_SAMPLES):
            self._next_sample = start + FRAME_SAMPLES
            frame = samples[start : start + FRAME_SAMPLES]
            if len(frame) < FRAME_SAMPLES:
                frame = np.pad(frame, (0, FRAME_SAMPLES - len(frame)))
            heard_at = (start + FRAME_SAMPLES) / INPUT_RATE_HZ
            if self.realtime:
                await asyncio.sleep(max(0.0, heard_at - self.clock.now()))
            else:
                await asyncio.sleep(0)
            if self.echo is not None:
                frame = np.clip(frame + self.echo(heard_at, FRAME_SAMPLES), -1.0, 1.0).astype(np.float32)
            yield AudioChunk(frame, INPUT_RATE_HZ, self.clock.now())


CLOSE_TIMEOUT_S = 1.0


def _close_stream(stream, what: str) -> threading.Thread:
    """Abort and close a PortAudio stream on a thread of its own: on a stalled device (a suspended sound
    server, an unplugged USB device) that can block for good, and it must never block the event loop."""

    def close() -> None:
        with contextlib.suppress(Exception):  # PortAudio raises its own error types for a dead stream.
            stream.abort()
        with contextlib.suppress(Exception):
            stream.close()

    closer = threading.Thread(target=close, name=f"close-{what}", daemon=True)
    closer.start()
    return closer


async def _close_stream_async(stream, what: str) -> None:
    closer = _close_stream(stream, what)
    await asyncio.to_thread(closer.join, CLOSE_TIMEOUT_S)
    if closer.is_alive():
        log.warning("PortAudio did not close the %s stream within %.0f s; leaving it behind", what, CLOSE_TIMEOUT_S)


def _find_device(sd, device: int | str | None, kind: str) -> int | str | None:
    """Check the configured device exists, so a typo fails at start-up with the list of choices."""
    if device is None:
        return None
    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    try:
        devices = sd.query_devices()
    except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
        raise AudioDeviceError(f"cannot list sound devices: {error}") from None
    names = [d["name"] for d in devices if d[channels_key] > 0]
    try:
        sd.query_devices(device, kind)  # The same matching the stream will use: exactly one device of this kind.
        return device
    except (ValueError, sd.PortAudioError):  # No match, several matches, or not an input/output device.
        pass
    choices = ", ".join(repr(name) for name in names) or "none"
    raise AudioDeviceError(
        f"audio.{kind}_device = {device!r}: no single {kind} device matches it; "
        f"choose one of {choices} (see: voicebot devices)"
    )


class InputLiveness:
    """Tells a stalled microphone from a quiet one, by what arrives rather than by errors.

    ALSA often reports nothing when a USB microphone is unplugged, and PulseAudio silently moves a
    stream whose source vanished to another one, which hears only exact zeros.
    """

    def __init__(self, stall_s: float, zero_stall_s: float) -> None:
        self.stall_s = stall_s
        self.zero_stall_s = zero_stall_s
        self._last_nonzero_at = time.monotonic()

    def problem(self, samples: np.ndarray) -> str | None:
        """Why the device counts as stalled after these samples, or None."""
        now = time.monotonic()
        if np.any(samples):
            self._last_nonzero_at = now
        elif self.zero_stall_s and now - self._last_nonzero_at > self.zero_stall_s:
            return f"it gave only exact zeros for {self.zero_stall_s:g} s"
        return None


class MicrophoneSource:
    """The microphone through PortAudio, as 16 kHz mono frames.

    It is opened at 16 kHz, or at the device's own rate and resampled when it refuses 16 kHz. The
    PortAudio callback only copies frames into a bounded queue; a full queue drops the oldest frame
    and counts it, so a slow pipeline never blocks the audio thread.
    """

    def __init__(
        self,
        device: int | str | None,
        clock: Clock,
        queue_s: float = 2.0,
        rate_hz: int | None = None,
        stall_s: float = 2.0,
        zero_stall_s: float = 30.0,
    ) -> None:
        self.device = device
        self.clock = clock
        self.rate_hz = rate_hz
        self.stall_s = stall_s
        self.zero_stall_s = zero_stall_s
        self.dropped_frames = 0
        self.opened_rate_hz: int | None = None
        self._opened = 0  # streams opened so far: a closed stream's late callbacks are told apart by it
        self._queue: asyncio.Queue[tuple[np.ndarray, float] | BaseException] = asyncio.Queue(
            maxsize=max(1, int(queue_s * INPUT_RATE_HZ / FRAME_SAMPLES))
        )

    @classmethod
    def from_config(cls, config, clock: Clock) -> MicrophoneSource:
        """As the `audio` section says."""
        return cls(
            config.input_device,
            clock,
            config.input_queue_s,
            config.input_sample_rate_hz,
            config.stall_s,
            config.zero_input_stall_s,
        )

    async def frames(self) -> AsyncIterator[AudioChunk]:
        """Yield 80 ms chunks from the microphone until the device fails or stalls."""
        import sounddevice as sd

        loop = asyncio.get_running_loop()
        device = _find_device(sd, self.device, "input")
        name = device if device is not None else "default"
        first_open = self._opened == 0
        self._opened += 1
        opened = self._opened
        while not self._queue.empty():
            self._queue.get_nowait()

        def on_audio(indata, frame_count, time_info, status) -> None:
            heard = (np.frombuffer(bytes(indata), np.int16), self.clock.now())
            loop.call_soon_threadsafe(self._put, opened, heard)

        def on_finished() -> None:
            loop.call_soon_threadsafe(self._put, opened, AudioDeviceError(f"microphone {name} stopped"))

        stream = self._open(sd, device, name, on_audio, on_finished)
        rate_hz = self.opened_rate_hz
        resampler = None if rate_hz == INPUT_RATE_HZ else soxr.ResampleStream(rate_hz, INPUT_RATE_HZ, 1, "float32")
        liveness = InputLiveness(self.stall_s, self.zero_stall_s)
        pending = np.zeros(0, np.float32)
        if first_open:
            self.clock.restart()  # Reopened after a loss, it keeps the clock the trace and the timeline use.
        try:
            stream.start()
        except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
            _close_stream(stream, f"microphone {name}")
            raise AudioDeviceError(f"cannot start microphone {name}: {error}") from None
        try:
            while True:
                try:
                    async with asyncio.timeout(self.stall_s):
                        item = await self._queue.get()
                except TimeoutError:
                    state = "vanished" if not stream.active else f"stalled: no audio for {self.stall_s:g} s"
                    raise AudioDeviceError(f"microphone {name} {state}") from None
                if isinstance(item, BaseException):
                    raise item
                block, heard_at = item
                problem = liveness.problem(block)
                if problem:
                    raise AudioDeviceError(f"microphone {name} stalled: {problem}")
                samples = block.astype(np.float32) / 32768.0
                if resampler is not None:
                    samples = resampler.resample_chunk(samples)
                pending = np.concatenate([pending, samples]) if len(pending) else samples
                while len(pending) >= FRAME_SAMPLES:
                    frame, pending = pending[:FRAME_SAMPLES], pending[FRAME_SAMPLES:]
                    # Stamped when PortAudio delivered the block, not when the pipeline got round to it.
                    yield AudioChunk(frame, INPUT_RATE_HZ, heard_at)
        finally:
            await _close_stream_async(stream, f"microphone {name}")

    def _open(self, sd, device, name, on_audio, on_finished):
        """The input stream, at the configured rate, else 16 kHz, else the device's default rate."""
        rates = [self.rate_hz] if self.rate_hz else [INPUT_RATE_HZ]
        if not self.rate_hz:
            try:
                default_rate = int(sd.query_devices(device, "input")["default_samplerate"])
            except Exception:  # noqa: BLE001 - PortAudio raises its own error types; opening will say what is wrong
                default_rate = INPUT_RATE_HZ
            if default_rate != INPUT_RATE_HZ:
                rates.append(default_rate)
        failure = None
        for rate_hz in rates:
            try:
                stream = sd.RawInputStream(
                    samplerate=rate_hz,
                    blocksize=FRAME_SAMPLES * rate_hz // INPUT_RATE_HZ,
                    channels=1,
                    dtype="int16",
                    device=device,
                    callback=on_audio,
                    finished_callback=on_finished,
                )
            except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
                failure = error
                continue
            if rate_hz != INPUT_RATE_HZ:
                log.info("microphone %s opened at %d Hz, resampled to %d Hz", name, rate_hz, INPUT_RATE_HZ)
            self.opened_rate_hz = rate_hz
            return stream
        tried = " or ".join(f"{rate} Hz" for rate in rates)
        raise AudioDeviceError(
            f"cannot open microphone {name} at {tried}: {failure}; "
            "check audio.input_device and audio.input_sample_rate_hz (voicebot devices)"
        )

    def _put(self, opened: int, item: tuple[np.ndarray, float] | BaseException) -> None:
        if opened != self._opened:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped_frames += 1
            if self.dropped_frames in (1, 10, 100) or self.dropped_frames % 1000 == 0:
                log.warning("pipeline is behind: dropped %d microphone frames so far", self.dropped_frames)
        self._queue.put_nowait(item)


class PlaybackTimeline:
    """What reached the speaker and when, at 16 kHz on the pipeline's clock.

    It is the echo canceller's far-end reference, and the source of the simulated echo in file
    mode. Sinks add audio as they schedule it and cut it where playback stopped; the listener
    renders the stretch that matches each microphone frame.
    """

    def __init__(self, keep_s: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._spans: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._keep_samples = int(keep_s * INPUT_RATE_HZ)
        self._held_samples = 0

    def add(self, starts_at: float, chunk: AudioChunk) -> None:
        """`chunk` starts playing at clock time `starts_at`."""
        samples = chunk.resampled(INPUT_RATE_HZ).samples
        if len(samples) == 0:
            return
        start = round(starts_at * INPUT_RATE_HZ)
        with self._lock:
            self._spans.append((start, samples))
            self._held_samples += len(samples)
            # What ended long ago goes, and whatever is held never passes keep_s of audio: an output written
            # faster than real time (--fast) schedules everything at once.
            while self._spans and (
                self._spans[0][0] + len(self._spans[0][1]) < start - self._keep_samples
                or self._held_samples - len(self._spans[0][1]) >= self._keep_samples
            ):
                self._held_samples -= len(self._spans.popleft()[1])

    def cut(self, at: float) -> None:
        """Nothing scheduled after clock time `at` was played."""
        end = round(at * INPUT_RATE_HZ)
        with self._lock:
            kept = [(start, samples[: max(0, end - start)]) for start, samples in self._spans if start < end]
            self._spans = collections.deque(span for span in kept if len(span[1]))
            self._held_samples = sum(len(samples) for _, samples in self._spans)

    def render(self, ends_at: float, count: int) -> np.ndarray:
        """The `count` samples played up to clock time `ends_at` (silence where nothing played)."""
        out = np.zeros(count, np.float32)
        first = round(ends_at * INPUT_RATE_HZ) - count
        with self._lock:
            for start, samples in self._spans:
                low, high = max(start, first), min(start + len(samples), first + count)
                if low < high:
                    out[low - first : high - first] += samples[low - start : high - start]
        return out


class AudioSink(Protocol):
    """Where replies are heard."""

    def start(self, on_first_sample: Callable[[float], None]) -> None:
        """Begin a reply; `on_first_sample(t)` is called when its first sample reaches the output."""

    async def play(self, chunk: AudioChunk) -> None:
        """Queue audio right after what is already queued, with no gap."""

    async def drain(self) -> None:
        """Wait until everything queued has been heard."""

    def stop(self) -> float:
        """Silence the output now, including audio already queued in the device; returns when it fell silent."""

    @property
    def heard_s(self) -> float:
        """Seconds of the current reply that have reached the output so far."""

    def close(self) -> None:
        """Release the output."""


@dataclass
class Volume:
    """The volume set by voice (0 to 1) and whether voicebot is muted; kept by the intent service."""

    level: float = 1.0
    muted: bool = False

    def gain(self, alarm: bool = False) -> float:
        """The amplitude factor for replies and earcons (0 when muted), or for an alarm, which mute spares."""
        return self.level if alarm or not self.muted else 0.0


class VolumeSink:
    """A sink heard at the volume set by voice: every chunk is scaled before the device (and the echo
    canceller's reference) gets it. `for_alarms()` is the same sink for timers, which ring even when muted."""

    def __init__(self, inner: AudioSink, volume: Volume, alarm: bool = False) -> None:
        self.inner = inner
        self.volume = volume
        self.alarm = alarm

    def for_alarms(self) -> VolumeSink:
        """The same output, at the set volume but not silenced by mute."""
        return VolumeSink(self.inner, self.volume, alarm=True)

    def start(self, on_first_sample: Callable[[float], None]) -> None:
        self.inner.start(on_first_sample)

    async def play(self, chunk: AudioChunk) -> None:
        gain = self.volume.gain(self.alarm)
        if gain != 1.0:
            chunk = AudioChunk((chunk.samples * gain).astype(np.float32), chunk.rate_hz, chunk.captured_at)
        await self.inner.play(chunk)

    async def drain(self) -> None:
        await self.inner.drain()

    def stop(self) -> float:
        return self.inner.stop()

    @property
    def heard_s(self) -> float:
        return self.inner.heard_s

    def close(self) -> None:
        self.inner.close()


class WavSink:
    """A WAV file heard like a speaker: audio is 'played' at real-time pace, or at once with realtime=False.

    Only audio whose play time has come is written, so a reply cut short is cut short in the file too.
    Silence between replies is not written.
    """

    def __init__(
        self,
        path: str | Path,
        clock: Clock,
        realtime: bool = True,
        rate_hz: int = 22050,
        timeline: PlaybackTimeline | None = None,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.realtime = realtime
        self.rate_hz = rate_hz
        self.timeline = timeline
        try:
            self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - open for the sink's life, closed in close()
        except OSError as error:
            raise AudioDeviceError(f"cannot write output WAV {self.path}: {describe_os_error(error)}") from None
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate_hz)
        self._pending: collections.deque[tuple[float, AudioChunk]] = collections.deque()
        self._play_head = 0.0
        self._on_first_sample: Callable[[float], None] | None = None
        self._reply: list[tuple[float, float]] = []  # (start, seconds) of each chunk of the current reply
        self._stopped_at: float | None = None

    def start(self, on_first_sample: Callable[[float], None]) -> None:
        self._on_first_sample = on_first_sample
        self._reply = []
        self._stopped_at = None

    async def play(self, chunk: AudioChunk) -> None:
        chunk = chunk.resampled(self.rate_hz)
        now = self.clock.now()
        starts_at = max(now, self._play_head) if self.realtime else now
        if self._on_first_sample is not None:
            self._on_first_sample(starts_at)
            self._on_first_sample = None
        self._pending.append((starts_at, chunk))
        self._reply.append((starts_at, chunk.seconds))
        if self.timeline is not None:
            self.timeline.add(starts_at, chunk)
        self._play_head = starts_at + chunk.seconds
        self._write_heard(now)

    async def drain(self) -> None:
        if self.realtime:
            await asyncio.sleep(max(0.0, self._play_head - self.clock.now()))
        self._write_heard(float("inf"))

    def stop(self) -> float:
        now = self.clock.now()
        self._write_heard(now, cut=True)
        self._play_head = now
        if self._stopped_at is None:
            self._stopped_at = now
        if self.timeline is not None:
            self.timeline.cut(now)
        return now

    @property
    def heard_s(self) -> float:
        if not self.realtime:
            return sum(seconds for _, seconds in self._reply)
        now = self.clock.now() if self._stopped_at is None else self._stopped_at
        return sum(min(seconds, max(0.0, now - start)) for start, seconds in self._reply)

    def close(self) -> None:
        self._write_heard(float("inf"))
        self._wav.close()

    def _write_heard(self, now: float, cut: bool = False) -> None:
        if not self.realtime:
            now = float("inf")
        while self._pending:
            starts_at, chunk = self._pending[0]
            if starts_at >= now:
                break
            played = chunk.seconds if now == float("inf") else min(chunk.seconds, now - starts_at)
            if played < chunk.seconds and not cut:
                break
            self._pending.popleft()
            self._wav.writeframes(
                AudioChunk(chunk.samples[: int(played * self.rate_hz)], self.rate_hz).int16().tobytes()
            )
        if cut:
            self._pending.clear()


class Backoff:
    """Seconds to wait before each retry: doubling from `first_s` up to `most_s`."""

    def __init__(self, first_s: float = 1.0, most_s: float = 30.0) -> None:
        self.first_s = first_s
        self.most_s = most_s
        self.failures = 0

    def next_s(self) -> float:
        """The wait before the next try, counting one more failure."""
        self.failures += 1
        return min(self.most_s, self.first_s * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


class SpeakerSink:
    """The speaker through PortAudio: one stream kept open, fed from a buffer so sentences join without gaps.

    A stream that fails, vanishes or stalls is opened again at the next reply, with backoff, so a
    speaker plugged back in works again without a restart.
    """

    def __init__(
        self,
        device: int | str | None,
        clock: Clock,
        rate_hz: int | None = None,
        timeline: PlaybackTimeline | None = None,
        stall_s: float = 2.0,
        open_now: bool = True,
    ) -> None:
        self.clock = clock
        self.timeline = timeline
        self.configured_device = device
        self.configured_rate_hz = rate_hz
        self.stall_s = stall_s
        self.device = device
        self.rate_hz = rate_hz or 0
        self._lock = threading.Lock()
        self._buffer: collections.deque[np.ndarray] = collections.deque()
        self._queued_samples = 0
        self._on_first_sample: Callable[[float], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: str | None = None
        self._resampler: soxr.ResampleStream | None = None
        self._resampler_rate_hz = 0
        self._reply_samples = 0  # samples of the current reply handed to the device
        self._timeline_end: float | None = None  # when the audio last added to the timeline ends
        self._last_sound_at = float("-inf")
        self._ending_on_purpose = False  # stop() or close() is ending the stream, which is no failure
        self._stream = None
        self._backoff = Backoff()
        self._retry_at = 0.0
        if open_now:
            self._open()
        else:
            self._error = f"speaker {device if device is not None else 'default'} is not open yet"

    @property
    def name(self) -> str:
        return str(self.device) if self.device is not None else "default"

    def _open(self) -> None:
        import sounddevice as sd

        self.device = _find_device(sd, self.configured_device, "output")
        try:
            self.rate_hz = int(self.configured_rate_hz or sd.query_devices(self.device, "output")["default_samplerate"])
        except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
            if self.device is None:
                raise AudioDeviceError(
                    "no speaker found; connect one, set audio.output_device, or use --output WAV"
                ) from None
            raise AudioDeviceError(f"cannot query speaker {self.device}: {error}") from None
        try:
            stream = sd.OutputStream(
                samplerate=self.rate_hz,
                channels=1,
                dtype="float32",
                device=self.device,
                callback=self._fill,
                finished_callback=self._on_finished,
            )
            stream.start()
        except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
            raise AudioDeviceError(
                f"cannot open speaker {self.name}: {error}; check audio.output_device (voicebot devices)"
            ) from None
        self._stream = stream
        self._error = None

    def _usable(self) -> bool:
        return self._stream is not None and self._error is None and self._stream.active

    def _reopen_if_lost(self) -> None:
        """Open a failed, vanished or stalled speaker again; tries are spaced out with backoff."""
        if self._usable():
            return
        lost = self._error or f"speaker {self.name} vanished"
        if time.monotonic() < self._retry_at:
            raise AudioDeviceError(f"{lost}; trying it again in {self._retry_at - time.monotonic():.0f} s")
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self._ending_on_purpose = True
            _close_stream(stream, f"speaker {self.name}").join(CLOSE_TIMEOUT_S)
            self._ending_on_purpose = False
        try:
            self._open()
        except AudioDeviceError as error:
            self._error = str(error)
            self._retry_at = time.monotonic() + self._backoff.next_s()
            raise
        if self._backoff.failures or lost:
            log.info("speaker %s is open again", self.name)
        self._backoff.reset()

    def _fill(self, outdata, frame_count, time_info, status) -> None:
        out = outdata[:, 0]
        filled = 0
        first_sample_at = None
        with self._lock:
            while filled < frame_count and self._buffer:
                head = self._buffer[0]
                take = min(len(head), frame_count - filled)
                out[filled : filled + take] = head[:take]
                if self._on_first_sample is not None and first_sample_at is None:
                    first_sample_at = filled
                if take == len(head):
                    self._buffer.popleft()
                else:
                    self._buffer[0] = head[take:]
                filled += take
            self._queued_samples -= filled
            self._reply_samples += filled
            if filled:
                self._last_sound_at = time.monotonic()
            callback = self._on_first_sample if first_sample_at is not None else None
            if callback is not None:
                self._on_first_sample = None
        out[filled:] = 0.0
        if callback is not None and self._loop is not None:
            # The device hears this buffer after its output latency, not now.
            latency = max(0.0, time_info.outputBufferDacTime - time_info.currentTime)
            heard_at = self.clock.now() + latency + first_sample_at / self.rate_hz
            self._loop.call_soon_threadsafe(callback, heard_at)

    def _on_finished(self) -> None:
        # PortAudio calls this for every stream that ends, including stop()'s own abort, which is no failure.
        if not self._ending_on_purpose and self._error is None:
            self._error = f"speaker {self.name} stopped"
            log.error("%s", self._error)

    def start(self, on_first_sample: Callable[[float], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._reopen_if_lost()
        self._resampler = None
        with self._lock:
            self._on_first_sample = on_first_sample
            self._reply_samples = 0

    async def play(self, chunk: AudioChunk) -> None:
        if not self._usable():
            raise AudioDeviceError(self._error or f"speaker {self.name} vanished")
        if self.timeline is not None:
            with self._lock:
                ahead_s = self._queued_samples / self.rate_hz
            starts_at = self.clock.now() + ahead_s + self._stream.latency
            if ahead_s > 0 and self._timeline_end is not None:
                # Queued behind audio still playing, it follows that audio sample for sample: the echo
                # canceller's reference must not wobble by the device's block size.
                starts_at = self._timeline_end
            self.timeline.add(starts_at, chunk)
            self._timeline_end = starts_at + chunk.seconds
        self._enqueue(self._resample(chunk))

    def _resample(self, chunk: AudioChunk, last: bool = False) -> np.ndarray:
        # One streaming resampler per reply, so sentence joins have no click or phase jump.
        if chunk.rate_hz == self.rate_hz:
            return chunk.samples
        if self._resampler is None or self._resampler_rate_hz != chunk.rate_hz:
            self._resampler = soxr.ResampleStream(chunk.rate_hz, self.rate_hz, 1, dtype="float32")
            self._resampler_rate_hz = chunk.rate_hz
        return self._resampler.resample_chunk(chunk.samples.astype(np.float32), last=last)

    def _enqueue(self, samples: np.ndarray) -> None:
        if len(samples) == 0:
            return
        with self._lock:
            self._buffer.append(samples)
            self._queued_samples += len(samples)

    async def drain(self) -> None:
        if self._resampler is not None:
            tail = AudioChunk(np.zeros(0, np.float32), self._resampler_rate_hz)
            self._enqueue(self._resample(tail, last=True))
            self._resampler = None
        progress_at, last_remaining = time.monotonic(), None
        while True:
            with self._lock:
                remaining = self._queued_samples
            if remaining <= 0:
                break
            if not self._usable():
                raise AudioDeviceError(self._error or f"speaker {self.name} vanished")
            if remaining != last_remaining:
                progress_at, last_remaining = time.monotonic(), remaining
            elif time.monotonic() - progress_at > self.stall_s:
                # A stream can stop asking for audio without an error (a suspended or unplugged device).
                self._error = f"speaker {self.name} stalled: nothing played for {self.stall_s:g} s"
                raise AudioDeviceError(self._error)
            await asyncio.sleep(min(0.05, remaining / self.rate_hz))
        assert self._stream is not None
        await asyncio.sleep(self._stream.latency)

    def stop(self) -> float:
        self._resampler = None
        with self._lock:
            self._buffer.clear()
            self._queued_samples = 0
            self._on_first_sample = None
            sounding = self._usable() and time.monotonic() - self._last_sound_at < self._stream.latency + 0.1
        # A stream that already failed has nothing left to drop, and starting it again can block for good (seen
        # with PulseAudio killed mid-reply: Pa_StartStream never returned).
        if sounding:
            # Abort drops what the device has queued, which would otherwise play on for its latency.
            self._ending_on_purpose = True
            try:
                self._stream.abort()
                self._stream.start()
            except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
                self._error = f"speaker {self.name} failed to restart: {error}"
            finally:
                self._ending_on_purpose = False
        stopped_at = self.clock.now()
        if self.timeline is not None:
            self.timeline.cut(stopped_at)
        return stopped_at

    @property
    def heard_s(self) -> float:
        with self._lock:
            handed_s = self._reply_samples / self.rate_hz if self.rate_hz else 0.0
        return max(0.0, handed_s - (self._stream.latency if self._stream is not None else 0.0))

    def close(self) -> None:
        self.stop()
        self._ending_on_purpose = True
        if self._stream is not None:
            _close_stream(self._stream, f"speaker {self.name}").join(CLOSE_TIMEOUT_S)


def list_devices() -> str:
    """PortAudio's device list, as `python -m sounddevice` prints it."""
    import sounddevice as sd

    try:
        devices = sd.query_devices()
    except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
        raise AudioDeviceError(f"cannot list sound devices: {error}") from None
    if len(devices) == 0:
        raise AudioDeviceError(
            "PortAudio sees no sound devices; check that a microphone and speaker are connected, that this "
            "user is in the audio group (or runs in the desktop session that owns them), and run voicebot check"
        )
    return str(devices)
