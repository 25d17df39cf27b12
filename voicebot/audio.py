"""Audio in and out: the microphone or a WAV file in, the speaker or a WAV file out.

Sources yield `AudioChunk`s of 80 ms at 16 kHz mono, the frame openWakeWord expects. Sinks take
reply audio at the voice's rate, convert it for the device, and play it without gaps.
"""

from __future__ import annotations

import asyncio
import collections
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

log = logging.getLogger(__name__)

INPUT_RATE_HZ = 16000
FRAME_SAMPLES = 1280  # 80 ms at 16 kHz: one openWakeWord step.
STALL_WARNING_S = 2.0


class Clock:
    """The one clock every trace event uses: seconds since the input started."""

    def __init__(self) -> None:
        self._origin = time.monotonic()

    def restart(self) -> None:
        """Make now the zero point."""
        self._origin = time.monotonic()

    def now(self) -> float:
        """Seconds since the zero point."""
        return time.monotonic() - self._origin


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
        """Yield the file in 80 ms chunks; the clock starts with the first one."""
        samples = self.audio.samples
        self.clock.restart()
        for start in range(0, len(samples), FRAME_SAMPLES):
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


def _find_device(sd, device: int | str | None, kind: str) -> int | str | None:
    """Check the configured device exists, so a typo fails at start-up with the list of choices."""
    if device is None:
        return None
    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    try:
        devices = sd.query_devices()
    except Exception as error:  # PortAudio raises its own error types.
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


class MicrophoneSource:
    """The microphone through PortAudio, at 16 kHz mono.

    The PortAudio callback only copies frames into a bounded queue; a full queue drops the
    oldest frame and counts it, so a slow pipeline never blocks the audio thread.
    """

    def __init__(self, device: int | str | None, clock: Clock, queue_s: float = 2.0) -> None:
        self.device = device
        self.clock = clock
        self.dropped_frames = 0
        self._queue: asyncio.Queue[AudioChunk | BaseException] = asyncio.Queue(
            maxsize=max(1, int(queue_s * INPUT_RATE_HZ / FRAME_SAMPLES))
        )

    async def frames(self) -> AsyncIterator[AudioChunk]:
        """Yield 80 ms chunks from the microphone until the device fails."""
        import sounddevice as sd

        loop = asyncio.get_running_loop()
        device = _find_device(sd, self.device, "input")

        def on_audio(indata, frame_count, time_info, status) -> None:
            samples = np.frombuffer(bytes(indata), np.int16).astype(np.float32) / 32768.0
            loop.call_soon_threadsafe(self._put, AudioChunk(samples, INPUT_RATE_HZ, self.clock.now()))

        def on_finished() -> None:
            loop.call_soon_threadsafe(self._put, AudioDeviceError(f"microphone {device or 'default'} stopped"))

        try:
            stream = sd.RawInputStream(
                samplerate=INPUT_RATE_HZ,
                blocksize=FRAME_SAMPLES,
                channels=1,
                dtype="int16",
                device=device,
                callback=on_audio,
                finished_callback=on_finished,
            )
        except Exception as error:
            raise AudioDeviceError(
                f"cannot open microphone {device or 'default'}: {error}; check audio.input_device (voicebot devices)"
            ) from None
        self.clock.restart()
        with stream:
            stalled = False
            while True:
                try:
                    item = await asyncio.wait_for(self._queue.get(), STALL_WARNING_S)
                except TimeoutError:
                    if not stream.active:
                        raise AudioDeviceError(f"microphone {device or 'default'} vanished") from None
                    if not stalled:
                        log.warning("no audio from microphone %s for %.0f s", device or "default", STALL_WARNING_S)
                    stalled = True
                    continue
                if isinstance(item, BaseException):
                    raise item
                if stalled:
                    log.info("microphone audio is back")
                    stalled = False
                yield item

    def _put(self, item: AudioChunk | BaseException) -> None:
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

    def add(self, starts_at: float, chunk: AudioChunk) -> None:
        """`chunk` starts playing at clock time `starts_at`."""
        samples = chunk.resampled(INPUT_RATE_HZ).samples
        if len(samples) == 0:
            return
        start = round(starts_at * INPUT_RATE_HZ)
        with self._lock:
            self._spans.append((start, samples))
            while self._spans and self._spans[0][0] + len(self._spans[0][1]) < start - self._keep_samples:
                self._spans.popleft()

    def cut(self, at: float) -> None:
        """Nothing scheduled after clock time `at` was played."""
        end = round(at * INPUT_RATE_HZ)
        with self._lock:
            kept = [(start, samples[: max(0, end - start)]) for start, samples in self._spans if start < end]
            self._spans = collections.deque(span for span in kept if len(span[1]))

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


class SpeakerSink:
    """The speaker through PortAudio: one stream kept open, fed from a buffer so sentences join without gaps."""

    def __init__(
        self,
        device: int | str | None,
        clock: Clock,
        rate_hz: int | None = None,
        timeline: PlaybackTimeline | None = None,
    ) -> None:
        import sounddevice as sd

        self.clock = clock
        self.timeline = timeline
        self.device = _find_device(sd, device, "output")
        try:
            self.rate_hz = int(rate_hz or sd.query_devices(self.device, "output")["default_samplerate"])
        except Exception as error:
            if self.device is None:
                raise AudioDeviceError(
                    "no speaker found; connect one, set audio.output_device, or use --output WAV"
                ) from None
            raise AudioDeviceError(f"cannot query speaker {self.device}: {error}") from None
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
        self._restarting = False  # stop() is aborting the stream on purpose
        try:
            self._stream = sd.OutputStream(
                samplerate=self.rate_hz,
                channels=1,
                dtype="float32",
                device=self.device,
                callback=self._fill,
                finished_callback=self._on_finished,
            )
            self._stream.start()
        except Exception as error:
            raise AudioDeviceError(
                f"cannot open speaker {self.device or 'default'}: {error}; check audio.output_device (voicebot devices)"
            ) from None

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
        if not self._restarting:
            self._error = f"speaker {self.device or 'default'} stopped"

    def start(self, on_first_sample: Callable[[float], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._resampler = None
        with self._lock:
            self._on_first_sample = on_first_sample
            self._reply_samples = 0

    async def play(self, chunk: AudioChunk) -> None:
        if self._error or not self._stream.active:
            raise AudioDeviceError(self._error or f"speaker {self.device or 'default'} vanished")
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
        while True:
            with self._lock:
                remaining = self._queued_samples
            if remaining <= 0:
                break
            if self._error or not self._stream.active:
                raise AudioDeviceError(self._error or f"speaker {self.device or 'default'} vanished")
            await asyncio.sleep(min(0.05, remaining / self.rate_hz))
        await asyncio.sleep(self._stream.latency)

    def stop(self) -> float:
        self._resampler = None
        with self._lock:
            self._buffer.clear()
            self._queued_samples = 0
            self._on_first_sample = None
            sounding = time.monotonic() - self._last_sound_at < self._stream.latency + 0.1
        # A stream that already failed has nothing left to drop, and starting it again can block for good (seen
        # with PulseAudio killed mid-reply: Pa_StartStream never returned).
        if sounding and self._error is None and self._stream.active:
            # Abort drops what the device has queued, which would otherwise play on for its latency.
            self._restarting = True
            try:
                self._stream.abort()
                self._stream.start()
            except Exception as error:
                self._error = f"speaker {self.device or 'default'} failed to restart: {error}"
            finally:
                self._restarting = False
        stopped_at = self.clock.now()
        if self.timeline is not None:
            self.timeline.cut(stopped_at)
        return stopped_at

    @property
    def heard_s(self) -> float:
        with self._lock:
            handed_s = self._reply_samples / self.rate_hz
        return max(0.0, handed_s - self._stream.latency)

    def close(self) -> None:
        self.stop()
        self._stream.close()


def list_devices() -> str:
    """PortAudio's device list, as `python -m sounddevice` prints it."""
    import sounddevice as sd

    try:
        return str(sd.query_devices())
    except Exception as error:
        raise AudioDeviceError(f"cannot list sound devices: {error}") from None
