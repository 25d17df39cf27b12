"""The satellite's states, and the events its supervisor hears: from the microphone, from Home Assistant's
connections, from playback and from the local pipeline."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from aioesphomeapi.model import VoiceAssistantEventType, VoiceAssistantTimerEventType

from voicebot.listen import Heard, InputEnded, SourceFailed
from voicebot.pipeline import State as PipelineState

if TYPE_CHECKING:
    from voicebot.satellite.frames import Peer


class State(enum.Enum):
    """What the satellite is doing."""

    IDLE = "idle"
    STREAMING = "streaming"  # the microphone goes to Home Assistant
    RESPONDING = "responding"  # Home Assistant's pipeline runs, or its answer plays
    ANNOUNCING = "announcing"
    RINGING = "ringing"  # a timer Home Assistant kept for this satellite has ended


@dataclass(frozen=True)
class Subscribed:
    """A peer subscribed to the voice assistant: it is Home Assistant now."""

    peer: Peer
    api_audio: bool


@dataclass(frozen=True)
class Unsubscribed:
    """A peer unsubscribed from the voice assistant, or its connection ended."""

    peer: Peer


@dataclass(frozen=True)
class RunEvent:
    """Home Assistant's pipeline reported progress: run start, end of speech, the answer's URL, run end."""

    peer: Peer
    kind: VoiceAssistantEventType
    data: Mapping[str, str]


@dataclass(frozen=True)
class RunRefused:
    """Home Assistant could not start the pipeline run asked for."""

    peer: Peer


@dataclass(frozen=True)
class TimerEvent:
    """Home Assistant started, changed, cancelled or finished a timer it keeps for this satellite."""

    peer: Peer
    kind: VoiceAssistantTimerEventType
    timer_id: str
    name: str
    total_seconds: int


@dataclass(frozen=True)
class RingEnded:
    """A ring played out its timers.ring_s unanswered."""

    ring_id: int


@dataclass(frozen=True)
class AnnounceRequested:
    """A peer asked for media to be played (a pre-announce sound, then the announcement)."""

    peer: Peer
    urls: tuple[str, ...]
    start_conversation: bool


@dataclass(frozen=True)
class PlaybackStarted:
    """A playback's first sample reached the output, at clock time `at`."""

    playback_id: int
    at: float


@dataclass(frozen=True)
class PlaybackEnded:
    """A playback has played to its end; `success` is False if some audio could not be fetched or played."""

    playback_id: int
    success: bool


@dataclass(frozen=True)
class LocalStateChanged:
    """The local pipeline (satellite.fallback_local) moved to `state`."""

    state: PipelineState


@dataclass(frozen=True)
class LocalEnded:
    """The local pipeline's task ended: its input ended, or it failed."""


Event = (
    Heard
    | InputEnded
    | SourceFailed
    | Subscribed
    | Unsubscribed
    | RunEvent
    | RunRefused
    | AnnounceRequested
    | PlaybackStarted
    | PlaybackEnded
    | LocalStateChanged
    | LocalEnded
    | TimerEvent
    | RingEnded
)
