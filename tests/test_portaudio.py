"""MicrophoneSource and SpeakerSink through real PortAudio streams, against a private PulseAudio null sink.

The speaker plays into the null sink `vmic`; the microphone records its monitor, so what the speaker played comes
back as what the microphone heard (tests/pulse.py starts that daemon). Skipped, with the reason, only where
PulseAudio cannot start. Every await is bounded; the fault test that kills the daemon restarts it afterwards.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import sounddevice as sd

from voicebot.audio import (
    FRAME_SAMPLES,
    INPUT_RATE_HZ,
    AudioChunk,
    Clock,
    MicrophoneSource,
    SpeakerSink,
    list_devices,
)
from voicebot.errors import AudioDeviceError

try:
    from .pulse import PulseDaemon, PulseStartError, rescan_portaudio
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path.
    from pulse import PulseDaemon, PulseStartError, rescan_portaudio

pytestmark = pytest.mark.timeout(60)

DEVICE = "pulse"
VOICE_RATE_HZ = 22050  # Piper's rate: the sink must resample it for the device.
TONE_HZ = 1000.0
AMPLITUDE = 0.3
WINDOW = 80  # 5 ms at 16 kHz, for envelopes.
LOUD = 0.5 * AMPLITUDE / np.sqrt(2)  # Half the tone's RMS.
QUIET = 0.02  # RMS below this is near-silence.


@pytest.fixture(scope="module")
def pulse():
    """A PulseAudio daemon of our own, with the test process pointed at its null sink and monitor."""
    daemon = PulseDaemon()
    env = pytest.MonkeyPatch()
    try:
        daemon.start()
    except PulseStartError as error:
        daemon.cleanup()
        pytest.skip(f"PulseAudio could not start: {error}")
    env.delenv("PULSE_SERVER", raising=False)
    for name, value in daemon.client_env.items():
        env.setenv(name, value)
    rescan_portaudio()  # sounddevice was imported above, before the daemon existed.
    try:
        yield daemon
    finally:
        daemon.cleanup()
        env.undo()
        rescan_portaudio()


def run(coro, timeout: float):
    """Run one test's coroutine with an overall bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def tone(seconds: float, rate_hz: int, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


class Recorder:
    """Runs `MicrophoneSource.frames()` in a task, keeping every chunk and the error that ended it, if any."""

    def __init__(self, source: MicrophoneSource) -> None:
        self.source = source
        self.chunks: list[AudioChunk] = []
        self.error: BaseException | None = None
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Recorder:
        self.task = asyncio.create_task(self._run())
        try:
            await self.wait_frames(3, timeout=5)  # The stream is open and delivering.
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _run(self) -> None:
        try:
            async for chunk in self.source.frames():
                self.chunks.append(chunk)
        except AudioDeviceError as error:
            self.error = error

    async def wait_frames(self, count: int, timeout: float) -> None:  # noqa: ASYNC109 - polls a deadline
        """Wait until `count` more chunks have arrived."""
        target = len(self.chunks) + count
        deadline = time.monotonic() + timeout
        while len(self.chunks) < target:
            if self.task.done():
                raise AssertionError(f"microphone ended early: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.chunks)} of {target} microphone frames after {timeout} s")
            await asyncio.sleep(0.02)

    async def wait_until_loud(self, timeout: float) -> None:  # noqa: ASYNC109 - polls a deadline
        deadline = time.monotonic() + timeout
        while not self.chunks or rms(self.chunks[-1].samples[-WINDOW:]) < LOUD:
            if time.monotonic() > deadline:
                raise AssertionError(f"the microphone never heard the tone within {timeout} s")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.task is not None:
            done, _ = await asyncio.wait({self.task}, timeout=5)
            assert done, "the microphone task did not end within 5 s of being cancelled"

    def samples(self) -> np.ndarray:
        return np.concatenate([c.samples for c in self.chunks])

    def times(self) -> np.ndarray:
        """Clock time at which each sample arrived, from each chunk's `captured_at`."""
        offsets = (np.arange(FRAME_SAMPLES) - (FRAME_SAMPLES - 1)) / INPUT_RATE_HZ
        return np.concatenate([c.captured_at + offsets[-len(c.samples) :] for c in self.chunks])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def envelope(samples: np.ndarray) -> np.ndarray:
    """RMS per 5 ms window."""
    usable = len(samples) - len(samples) % WINDOW
    return np.sqrt(np.mean(np.square(samples[:usable].reshape(-1, WINDOW), dtype=np.float64), axis=1))


def longest_run(mask: np.ndarray) -> int:
    best = current = 0
    for value in mask:
        current = current + 1 if value else 0
        best = max(best, current)
    return best


def peak_hz(samples: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate_hz)[np.argmax(spectrum)])


def test_list_devices_lists_pulse(pulse):
    listing = list_devices()
    assert any(line.split(maxsplit=1)[-1].startswith(DEVICE + ",") for line in listing.splitlines()), listing


def test_plain_playrec_round_trips_the_tone(pulse):
    """The fixture itself: what PortAudio plays into `vmic` comes back from `vmic.monitor`."""
    played = tone(1.0, INPUT_RATE_HZ)
    recorded = sd.playrec(played, samplerate=INPUT_RATE_HZ, channels=1, device=DEVICE, blocking=True)[:, 0]
    assert abs(float(np.max(np.abs(recorded))) - AMPLITUDE) < 0.02
    assert abs(peak_hz(recorded, INPUT_RATE_HZ) - TONE_HZ) < 10


@pytest.mark.parametrize("device_rate_hz", [None, 48000], ids=["device-default-rate", "48kHz"])
def test_speaker_plays_two_chunks_without_a_gap(pulse, device_rate_hz):
    clock = Clock()
    reply = tone(1.2, VOICE_RATE_HZ)
    split = 12127  # Not on any block boundary: about 0.55 s.
    first_sample_calls: list[float] = []

    async def scenario():
        async with Recorder(MicrophoneSource(DEVICE, clock)) as recorder:
            sink = SpeakerSink(DEVICE, clock, device_rate_hz)
            try:
                assert sink.rate_hz != VOICE_RATE_HZ, "the point is to resample"
                # The app keeps one output stream open for its whole run. Audio written in the first ~60 ms of a new
                # stream is partly missing from the null sink's monitor (PulseAudio rewinds the sink for the new
                # stream; seen with paplay too), so let the stream settle as it would have in the app.
                await asyncio.sleep(0.3)
                sink.start(first_sample_calls.append)
                started = clock.now()
                await asyncio.wait_for(sink.play(AudioChunk(reply[:split], VOICE_RATE_HZ)), 1)
                await asyncio.sleep(0.25)  # The second sentence arrives while the first is playing.
                await asyncio.wait_for(sink.play(AudioChunk(reply[split:], VOICE_RATE_HZ)), 1)
                await asyncio.wait_for(sink.drain(), 5)
                drained = clock.now()
                await recorder.wait_frames(5, timeout=3)  # Let the capture catch up.
            finally:
                sink.close()
        return recorder, started, drained

    recorder, started, drained = run(scenario(), timeout=20)
    assert recorder.error is None
    samples, times = recorder.samples(), recorder.times()
    env = envelope(samples)
    loud = np.flatnonzero(env > LOUD)
    assert len(loud), f"no tone recorded (peak {np.max(np.abs(samples)):.3f})"
    first, last = loud[0], loud[-1]
    heard = samples[first * WINDOW : (last + 1) * WINDOW]

    assert abs(peak_hz(heard, INPUT_RATE_HZ) - TONE_HZ) < 10
    assert abs(float(np.max(np.abs(heard))) - AMPLITUDE) < 0.05
    gap_ms = longest_run(env[first : last + 1] < QUIET) * WINDOW / INPUT_RATE_HZ * 1000
    assert gap_ms <= 20, f"{gap_ms:.0f} ms of silence inside the reply"
    heard_s = len(heard) / INPUT_RATE_HZ
    assert abs(heard_s - len(reply) / VOICE_RATE_HZ) < 0.05, f"reply lasted {heard_s:.3f} s"

    assert len(first_sample_calls) == 1, first_sample_calls
    first_sample_at = first_sample_calls[0]
    assert isinstance(first_sample_at, float)
    assert started <= first_sample_at <= drained
    # The microphone hears the tone after the speaker's and its own latency, never before it was played.
    onset_captured_at = times[first * WINDOW]
    assert -0.02 <= onset_captured_at - first_sample_at < 0.5, (first_sample_at, onset_captured_at)


def test_stop_silences_the_reply_quickly(pulse):
    clock = Clock()
    reply = tone(4.0, VOICE_RATE_HZ)

    async def scenario():
        async with Recorder(MicrophoneSource(DEVICE, clock)) as recorder:
            sink = SpeakerSink(DEVICE, clock)
            try:
                sink.start(lambda t: None)
                await asyncio.wait_for(sink.play(AudioChunk(reply, VOICE_RATE_HZ)), 1)
                await recorder.wait_until_loud(timeout=3)
                await asyncio.sleep(0.5)
                stopped_at = clock.now()
                sink.stop()
                await asyncio.wait_for(sink.drain(), 2)  # Nothing is left to drain.
                drained_in = clock.now() - stopped_at
                await recorder.wait_frames(12, timeout=3)  # About 1 s after the stop.
                latency = sink._stream.latency
            finally:
                sink.close()
        return recorder, stopped_at, drained_in, latency

    recorder, stopped_at, drained_in, latency = run(scenario(), timeout=20)
    assert recorder.error is None
    samples, times = recorder.samples(), recorder.times()
    env = envelope(samples)
    window_times = times[WINDOW - 1 :: WINDOW][: len(env)]
    loud = np.flatnonzero(env > LOUD)
    heard_s = (loud[-1] - loud[0] + 1) * WINDOW / INPUT_RATE_HZ
    silenced_after = window_times[loud[-1]] - stopped_at
    print(
        f"stop: tone heard for {heard_s:.2f} s, silent {silenced_after * 1000:.0f} ms after stop() in capture time "
        f"(output latency {latency * 1000:.0f} ms), drain() after stop took {drained_in * 1000:.0f} ms"
    )
    assert heard_s < 2.0, f"the 4 s reply was heard for {heard_s:.2f} s despite stop()"
    assert silenced_after < 0.5 + latency, f"still loud {silenced_after:.2f} s after stop()"
    # From then on the output is silent, not just quieter.
    after = env[window_times > stopped_at + silenced_after + 0.05]
    assert len(after) and float(np.max(after)) < QUIET, float(np.max(after, initial=0))
    assert drained_in < 1.0


def test_unknown_device_is_named_with_the_choices(pulse):
    clock = Clock()
    with pytest.raises(AudioDeviceError) as speaker:
        SpeakerSink("no-such-device", clock)

    async def open_microphone():
        frames = MicrophoneSource("no-such-device", clock).frames()
        try:
            await asyncio.wait_for(anext(frames), 5)
        finally:
            await asyncio.wait_for(frames.aclose(), 5)

    with pytest.raises(AudioDeviceError) as microphone:
        run(open_microphone(), timeout=10)

    for error in (speaker.value, microphone.value):
        message = str(error)
        assert "\n" not in message
        assert "'no-such-device'" in message
        assert "'pulse'" in message and "'default'" in message, message


def test_ambiguous_device_name_is_one_line(pulse):
    """ "e" is in both 'pulse' and 'default': the error must still be one line, with the choices."""
    with pytest.raises(AudioDeviceError) as speaker:
        SpeakerSink("e", Clock())
    message = str(speaker.value)
    assert "\n" not in message
    assert "'pulse'" in message and "'default'" in message, message


def test_killing_pulseaudio_ends_the_microphone_and_speaker_with_an_error(pulse):
    """Kept last; restarts the daemon anyway so any test after it still has one."""
    clock = Clock()
    reply = AudioChunk(tone(3.0, VOICE_RATE_HZ), VOICE_RATE_HZ)

    async def scenario():
        recorder = Recorder(MicrophoneSource(DEVICE, clock))
        await recorder.__aenter__()
        sink = SpeakerSink(DEVICE, clock)
        try:
            sink.start(lambda t: None)
            await asyncio.wait_for(sink.play(reply), 1)
            await recorder.wait_until_loud(timeout=3)
            frames_before = len(recorder.chunks)
            killed_at = clock.now()
            pulse.kill()
            # Bounded: more than the source's 2 s stall check, so a stalled stream shows up here, not as a hang.
            done, _ = await asyncio.wait({recorder.task}, timeout=8)
            mic_ended_at = clock.now()
            try:
                await asyncio.wait_for(sink.drain(), 5)
                speaker_error = None
            except AudioDeviceError as error:
                speaker_error = error
            return recorder, bool(done), frames_before, killed_at, mic_ended_at, speaker_error
        finally:
            sink.close()
            await recorder.stop()

    try:
        recorder, ended, frames_before, killed_at, mic_ended_at, speaker_error = run(scenario(), timeout=30)
    finally:
        pulse.start()  # Same runtime directory, so the environment set by the fixture still points at it.
        rescan_portaudio()

    frames_after = len(recorder.chunks) - frames_before
    microphone = f"ended with {recorder.error!r}" if ended else "still waiting"
    print(
        f"kill: {frames_before} frames before, {frames_after} after; microphone {microphone} "
        f"{mic_ended_at - killed_at:.2f} s after; speaker drain: {speaker_error!r}"
    )
    assert ended, f"frames() neither yielded nor failed for 8 s after the kill ({frames_after} frames after it)"
    assert isinstance(recorder.error, AudioDeviceError), recorder.error
    assert "\n" not in str(recorder.error)
    assert frames_after <= 2  # A frame already in flight, at most.
    assert isinstance(speaker_error, AudioDeviceError), "drain() returned normally after the daemon died"
    assert "\n" not in str(speaker_error)
