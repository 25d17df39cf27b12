"""The supervisor's own rules: one writer of the state, control before audio, stop commands, earcons."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from voicebot.audio import AudioChunk, WavSink
from voicebot.config import EarconsConfig, config_from_dict
from voicebot.earcons import EARCON_RATE_HZ, Earcon, Earcons
from voicebot.engines import Engines
from voicebot.models.paths import ModelPaths
from voicebot.pipeline import Heard, InputEnded, Pipeline, PlaybackStarted, State, TurnEnded, is_stop_command
from voicebot.runtime.clock import Clock
from voicebot.runtime.inbox import Inbox
from voicebot.runtime.trace import Tracer

TIMEOUT_S = 5


class Silence:
    """An input that has ended: the supervisor under test is driven through its inbox."""

    async def frames(self):
        return
        yield


def idle_pipeline(tmp_path) -> Pipeline:
    clock = Clock()
    config = config_from_dict({"profile": "bundled"})
    sink = WavSink(tmp_path / "out.wav", clock, realtime=False)
    return Pipeline(Engines(config, ModelPaths(Path(), Path(), {})), Silence(), sink, Tracer(clock, keep=True))


def test_a_late_playback_start_from_a_cancelled_turn_changes_nothing(tmp_path):
    # The old bug: the speaker's first-sample callback landed after a cancel and left the state
    # "speaking" with no turn, so every later wake word was ignored.
    pipeline = idle_pipeline(tmp_path)

    async def scenario():
        await pipeline._handle(PlaybackStarted(turn_id=7))
        await pipeline._handle(TurnEnded(turn_id=7, reason="answered"))

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S))

    assert pipeline.state is State.IDLE
    assert not [e for e in pipeline.tracer.events if e["event"] in ("state", "follow_up_start", "earcon")]


def test_control_events_overtake_queued_audio():
    async def scenario():
        inbox = Inbox(frames_ahead=3)
        chunk = AudioChunk(np.zeros(1280, np.float32), 16000)
        for _ in range(3):
            await inbox.put_frame(Heard(chunk))
        inbox.post(TurnEnded(1, "answered"))
        return [type(await inbox.get()).__name__ for _ in range(4)]

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S)) == ["TurnEnded", "Heard", "Heard", "Heard"]


def test_the_source_waits_while_the_supervisor_is_behind():
    async def scenario():
        inbox = Inbox(frames_ahead=2)
        chunk = AudioChunk(np.zeros(1280, np.float32), 16000)
        await inbox.put_frame(Heard(chunk))
        await inbox.put_frame(Heard(chunk))
        third = asyncio.create_task(inbox.put_frame(InputEnded()))
        await asyncio.sleep(0.05)
        blocked = not third.done()
        await inbox.get()
        await asyncio.wait_for(third, TIMEOUT_S)
        return blocked

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S)) is True


@pytest.mark.parametrize(
    "text, stop",
    [
        ("Stop.", True),
        ("stop!", True),
        ("Cancel", True),
        ("Never mind.", True),
        ("停止。", True),
        ("别说了", True),
        ("Stop the music in the kitchen.", False),
        ("How do I cancel a subscription?", False),
        ("What is a bus stop?", False),
    ],
)
def test_stop_commands(text, stop):
    assert is_stop_command(text) is stop


def test_earcons_are_short_soft_and_distinct():
    earcons = Earcons(EarconsConfig(volume=0.3))

    for earcon in Earcon:
        sound = earcons.sound(earcon)
        assert sound is not None and sound.rate_hz == EARCON_RATE_HZ
        assert 0.05 < sound.seconds < 0.3
        assert abs(np.abs(sound.samples).max() - 0.3) < 0.01
        # Soft edges: no click at either end.
        assert abs(sound.samples[0]) < 0.01 and abs(sound.samples[-1]) < 0.01

    def pitch(samples: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(samples))
        return float(np.fft.rfftfreq(len(samples), 1 / EARCON_RATE_HZ)[spectrum.argmax()])

    wake, error = earcons.sound(Earcon.WAKE).samples, earcons.sound(Earcon.ERROR).samples
    # The wake chirp rises; the error tone falls.
    assert pitch(wake[: len(wake) // 3]) < pitch(wake[-len(wake) // 3 :])
    assert pitch(error[: len(error) // 3]) > pitch(error[-len(error) // 3 :])


@pytest.mark.parametrize(
    "config, silent",
    [
        (EarconsConfig(volume=0.0), set(Earcon)),
        (EarconsConfig(wake=False), {Earcon.WAKE}),
        (EarconsConfig(follow_up=False, error=False), {Earcon.FOLLOW_UP, Earcon.ERROR}),
    ],
)
def test_earcons_can_be_turned_off(config, silent):
    earcons = Earcons(config)

    assert {earcon for earcon in Earcon if earcons.sound(earcon) is None} == silent
