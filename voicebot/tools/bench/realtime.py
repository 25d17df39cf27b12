"""The real pipeline on one clip, fed and played at real-time pace as `voicebot run --input` does, and watched.

Nothing inside the stages knows it is measured: the trace says what the pipeline decided, and every
pinned worker of the engines reports each call it ran, whoever asked for it (a service's own
scheduler included), through `PinnedWorker.watched`.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicebot.audio import AudioChunk, PlaybackTimeline, WavSink, WavSource
from voicebot.engines import Engines
from voicebot.pipeline import Pipeline
from voicebot.runtime.clock import Clock
from voicebot.runtime.threads import PinnedWorker
from voicebot.runtime.trace import Tracer


@dataclass(frozen=True)
class Design:
    """How a pipeline overlaps its stages."""

    streaming: bool
    """Speak each sentence as soon as it is ready, while the LLM goes on."""
    early_start: bool
    """Start on the answer at the first pause, during the VAD hangover."""


VOICEBOT = Design(streaming=True, early_start=True)
SEQUENTIAL = Design(streaming=False, early_start=False)
STREAMING_ONLY = Design(streaming=True, early_start=False)


@dataclass(frozen=True)
class WorkSpan:
    """One call on a pinned worker (listen, asr, llm or tts), on the run's clock."""

    worker: str
    started: float
    ended: float


@dataclass
class Run:
    """What one real-time run of the pipeline left: its trace and every call its workers ran."""

    events: list[dict[str, Any]]
    work: list[WorkSpan] = field(default_factory=list)


def run_turn(engines: Engines, audio: AudioChunk, design: Design, workers: Sequence[PinnedWorker] = ()) -> Run:
    """One turn from the same LLM cache as every other: the system prompt evaluated, the question not."""
    engines.warm_up_llm()
    return asyncio.run(hear_in_real_time(engines, audio, design, workers))


async def hear_in_real_time(
    engines: Engines, audio: AudioChunk, design: Design, workers: Sequence[PinnedWorker] = ()
) -> Run:
    """Run the real pipeline on `audio`, watching every worker of the engines (or `workers`, when the engines'
    stages run on workers of other engines too)."""
    clock = Clock()
    tracer = Tracer(clock, keep=True)
    calls: list[tuple[str, float, float]] = []

    def note(worker: str, started: float, ended: float) -> None:
        calls.append((worker, started, ended))

    timeline = PlaybackTimeline()
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as watching:
        for worker in workers or engines.workers:
            watching.enter_context(worker.watched(note))
        sink = WavSink(Path(folder) / "reply.wav", clock, realtime=True, rate_hz=engines.tts.rate_hz, timeline=timeline)
        try:
            source = WavSource(audio, clock)
            await Pipeline(engines, source, sink, tracer, design.streaming, design.early_start, timeline).run()
        finally:
            sink.close()
    # The source restarts the clock as the input begins, so its zero is read once the run is over.
    zero = time.monotonic() - clock.now()
    return Run(tracer.events, [WorkSpan(name, started - zero, ended - zero) for name, started, ended in calls])
