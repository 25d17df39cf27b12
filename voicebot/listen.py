"""Listening: the always-on stages on their own worker. The microphone's echo of the reply is cancelled, the
wake word is heard in every frame, and the end of the utterance is found while a question is awaited.

The pipeline and the satellite both hear through a Listener; neither touches the models it holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from voicebot.audio import AudioChunk, AudioSource, PlaybackTimeline
from voicebot.echo import EchoCanceller
from voicebot.errors import AudioDeviceError, VoicebotError
from voicebot.runtime.inbox import Inbox
from voicebot.runtime.threads import PinnedWorker
from voicebot.vad import Endpoint, Endpointer, Utterance
from voicebot.wake import SelfWakeGuard, WakeDetection, WakeWordDetector

log = logging.getLogger(__name__)

# The echo canceller's reference must run on without gaps or overlaps; the clock times frames are
# stamped with jitter by milliseconds, so the reference follows its own sample count and only
# jumps to the clock when they drift further apart than this (frames dropped, a stalled device).
REFERENCE_RESYNC_S = 0.1


@dataclass(frozen=True)
class Heard:
    """80 ms of microphone audio."""

    chunk: AudioChunk


@dataclass(frozen=True)
class InputEnded:
    """The source has no more audio (a file came to its end)."""


@dataclass(frozen=True)
class SourceFailed:
    """The microphone failed."""

    error: BaseException


LISTENING_AFTER_S = 0.5
"""Audio a source must deliver before it counts as listening (or as back after a loss): a stream reopened on a
suspended PulseAudio sink hands over what it had buffered, then stalls again."""


async def hear_source(source: AudioSource, inbox: Inbox, on_listening: Callable[[], None]) -> None:
    """Hand each frame of `source` to a supervisor's inbox as Heard (waiting while it is behind), then InputEnded;
    a failure, whatever it is, reaches the supervisor as SourceFailed, in one line. `on_listening` is called once
    the source has delivered LISTENING_AFTER_S of audio."""
    delivered_s = 0.0
    try:
        async for chunk in source.frames():
            if delivered_s < LISTENING_AFTER_S:
                delivered_s += chunk.seconds
                if delivered_s >= LISTENING_AFTER_S:
                    on_listening()
            await inbox.put_frame(Heard(chunk))
    except VoicebotError as error:
        inbox.post(SourceFailed(error))
        return
    except Exception as error:  # noqa: BLE001 - whatever ends the input must reach the supervisor
        log.debug("the audio source failed", exc_info=True)
        inbox.post(SourceFailed(AudioDeviceError(f"the audio input failed: {type(error).__name__}: {error}")))
        return
    await inbox.put_frame(InputEnded())


@dataclass(frozen=True)
class Hearing:
    """What one frame held: a wake word, the endpoints found, and a wake word ignored as the assistant's own."""

    detection: WakeDetection | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
    own_voice: WakeDetection | None = None


class Listener:
    """The wake word detector, the endpointer, and the echo canceller and self-wake guard in front of them, all
    on one pinned worker; every model call goes through it, in order."""

    def __init__(
        self,
        worker: PinnedWorker,
        wake: WakeWordDetector,
        endpointer: Endpointer,
        echo_canceller: EchoCanceller | None = None,
        self_wake_guard: SelfWakeGuard | None = None,
    ) -> None:
        self.worker = worker
        self.wake = wake
        self.endpointer = endpointer
        self.echo_canceller = echo_canceller
        self.self_wake_guard = self_wake_guard
        self._reference_end: float | None = None  # worker only

    @property
    def wake_models(self) -> list[str]:
        """The wake word models listened for."""
        return list(self.wake.model_names)

    @property
    def candidate(self) -> Utterance | None:
        """The question so far, at a pause the endpointer is waiting out."""
        return self.endpointer.candidate

    @property
    def utterance(self) -> Utterance | None:
        """The question, once it has ended."""
        return self.endpointer.utterance

    def with_wake(self, wake: WakeWordDetector) -> Listener:
        """The same listener with another wake word detector (the benchmark's, which knows more words)."""
        return Listener(self.worker, wake, self.endpointer, self.echo_canceller, self.self_wake_guard)

    async def reset(self) -> None:
        """Start afresh: no wake word score carried over, the echo reference resynchronised."""
        await self.worker.run(self._reset)

    def _reset(self) -> None:
        self.wake.reset()
        self._reference_end = None

    async def hear(
        self,
        chunk: AudioChunk,
        listening: bool,
        timeline: PlaybackTimeline | None = None,
        over_playback: bool = False,
    ) -> Hearing:
        """Hear one frame: the wake word always, the end of the question while `listening`. With the `timeline` of
        what the speaker played, the echo of it is taken out first, for the wake word; and for the question too
        when it is asked `over_playback` (a "stop" said while a timer rings)."""
        return await self.worker.run(self._hear, chunk, listening, timeline, over_playback)

    def _hear(
        self, chunk: AudioChunk, listening: bool, timeline: PlaybackTimeline | None, over_playback: bool = False
    ) -> Hearing:
        # A question is otherwise heard as the microphone has it: no reply plays while the assistant listens, and
        # the canceller's suppressor, which lives in speex's denoiser, would only blur the words for ASR.
        heard = chunk
        if timeline is not None and (self.echo_canceller is not None or self.self_wake_guard is not None):
            reference = timeline.render(self._reference_time(chunk), len(chunk.samples))
            if self.self_wake_guard is not None:
                self.self_wake_guard.hear_reply(AudioChunk(reference, chunk.rate_hz, chunk.captured_at))
            if self.echo_canceller is not None:
                cleaned = self.echo_canceller.process(chunk.samples, reference)
                chunk = AudioChunk(cleaned, chunk.rate_hz, chunk.captured_at)
        if over_playback:
            heard = chunk
        detection = self.wake.process(chunk)
        own_voice = None
        if detection is not None and self.self_wake_guard is not None and self.self_wake_guard.said_it(detection):
            detection, own_voice = None, detection
        endpoints = self.endpointer.process(heard) if listening else []
        return Hearing(detection, endpoints, own_voice)

    def _reference_time(self, chunk: AudioChunk) -> float:
        """The clock time the echo reference for `chunk` ends at: the last one's end plus this chunk's length."""
        following = None if self._reference_end is None else self._reference_end + chunk.seconds
        if following is None or abs(following - chunk.captured_at) > REFERENCE_RESYNC_S:
            following = chunk.captured_at
        self._reference_end = following
        return following

    async def begin(self, at: float, timeout_s: float | None = None, pause_s: float | None = None) -> None:
        """Await a question from clock time `at`; with `timeout_s`, give up on one that does not start; with
        `pause_s`, report a pause after that much silence instead of vad.early_start_s."""
        await self.worker.run(self.endpointer.begin, at, timeout_s, pause_s)

    async def finish_now(self) -> Endpoint | None:
        """The input has ended: end the question where it is, if one was started."""
        return await self.worker.run(self.endpointer.finish_now)
