"""Soak test: hundreds of spoken turns in one process, watching memory, open files and threads.

    python -m voicebot.tools.soak [--turns 300] [--json FILE] [--config PATH] [--set section.key=value ...]

Each turn is Piper saying the wake word and a question, heard by the real pipeline as fast as it can
take it (a WAV-like source that loops the turns), answered with the real models into a WAV file. After
every turn it samples the process's resident memory, open file descriptors and threads. It passes when,
from turn 20 (once caches, arenas and the conversation's compression have settled) to the end, memory
grows by less than 5 % and descriptors and threads stay flat. Exit 0 on a pass, 1 on a fail.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from voicebot.assistant import load_engines
from voicebot.audio import FRAME_SAMPLES, INPUT_RATE_HZ, AudioChunk, WavSink
from voicebot.config import Config, load_config
from voicebot.errors import VoicebotError
from voicebot.pipeline import Pipeline
from voicebot.runtime.clock import Clock
from voicebot.runtime.trace import Tracer
from voicebot.tts import TtsService

log = logging.getLogger("voicebot.tools.soak")

SETTLED_AFTER_TURNS = 20
ANSWER_TIMEOUT_S = 60.0
MAX_GROWTH = 0.05
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky?",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "How many days are in a week?",
]


@dataclasses.dataclass(frozen=True)
class Sample:
    turn: int
    rss_mb: float
    fds: int
    threads: int


def process_sample(turn: int) -> Sample:
    """This process's resident memory, open descriptors and threads (the kernel's count, native ones included)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return Sample(
        turn=turn,
        rss_mb=round(int(status["VmRSS"].split()[0]) / 1024, 1),
        fds=len(os.listdir("/proc/self/fd")),
        threads=int(status["Threads"]),
    )


class LoopedTurns:
    """An audio source that plays the turns' clips one after another until `turns` have been heard: each clip as
    fast as the pipeline takes it, then silence in real time until the answer has ended, as a person waits."""

    def __init__(self, clips: list[np.ndarray], turns: int, clock: Clock) -> None:
        self.clips = clips
        self.turns = turns
        self.clock = clock
        self.answered = asyncio.Event()

    async def frames(self) -> AsyncIterator[AudioChunk]:
        self.clock.restart()
        silence = np.zeros(FRAME_SAMPLES, np.float32)
        for turn in range(self.turns):
            self.answered.clear()
            samples = self.clips[turn % len(self.clips)]
            for start in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
                await asyncio.sleep(0)
                yield AudioChunk(samples[start : start + FRAME_SAMPLES], INPUT_RATE_HZ, self.clock.now())
            # Then a quiet room, in real time, until the answer has been given.
            waited_s = 0.0
            while not self.answered.is_set() and waited_s < ANSWER_TIMEOUT_S:
                await asyncio.sleep(FRAME_SAMPLES / INPUT_RATE_HZ)
                waited_s += FRAME_SAMPLES / INPUT_RATE_HZ
                yield AudioChunk(silence, INPUT_RATE_HZ, self.clock.now())
            if not self.answered.is_set():
                log.warning("turn %d got no answer within %.0f s; asking the next question", turn + 1, ANSWER_TIMEOUT_S)


class SamplingTracer(Tracer):
    """Keeps no events (as in service); samples the process at each turn's end."""

    def __init__(self, clock: Clock, on_turn_end) -> None:
        super().__init__(clock)
        self.on_turn_end = on_turn_end
        self.reasons: dict[str, int] = {}

    def emit(self, event: str, t: float | None = None, **fields: Any) -> None:
        super().emit(event, t, **fields)
        if event == "turn_end":
            reason = fields.get("reason", "?")
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            self.on_turn_end()


async def turn_clips(tts: TtsService) -> list[np.ndarray]:
    """Piper saying the wake word and each question, with the pauses a person leaves."""

    async def speak(text: str) -> np.ndarray:
        audio = await tts.speak(text)
        assert audio is not None
        return audio.resampled(INPUT_RATE_HZ).samples

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * INPUT_RATE_HZ), np.float32)

    wake = await speak("Hey Jarvis.")
    return [np.concatenate([silence(0.5), wake, silence(0.3), await speak(q), silence(1.5)]) for q in QUESTIONS]


def soak_config(config: Config) -> Config:
    """Short answers, and no follow-up window: each turn starts with the wake word. A clip is heard faster than
    real time, so the next wake word can come sooner after the last than the refractory period allows. Timers
    and lists are kept apart from the user's."""
    llm = dataclasses.replace(config.llm, max_reply_tokens=min(config.llm.max_reply_tokens, 40))
    conversation = dataclasses.replace(config.conversation, follow_up_s=0.0)
    wake = dataclasses.replace(config.wake, refractory_s=0.5)
    # Timers and lists apart from the user's (a few bytes in the system's temporary folder).
    intents = dataclasses.replace(config.intents, state_dir=tempfile.mkdtemp(prefix="voicebot-soak-state-"))
    return dataclasses.replace(config, llm=llm, conversation=conversation, wake=wake, intents=intents)


def run_soak(config: Config, turns: int) -> dict[str, Any]:
    engines = load_engines(config)
    samples: list[Sample] = []
    try:
        clips = asyncio.run(turn_clips(engines.tts))
        clock = Clock()
        source = LoopedTurns(clips, turns, clock)

        def on_turn_end() -> None:
            samples.append(process_sample(len(samples) + 1))
            source.answered.set()

        tracer = SamplingTracer(clock, on_turn_end)
        with tempfile.TemporaryDirectory(prefix="voicebot-soak-") as folder:
            sink = WavSink(Path(folder) / "replies.wav", clock, realtime=False, rate_hz=engines.tts.rate_hz)
            try:
                pipeline = Pipeline(engines, source, sink, tracer)
                asyncio.run(pipeline.run())
            finally:
                sink.close()
    finally:
        engines.close()
    return verdict(samples, turns, tracer.reasons)


def verdict(samples: list[Sample], turns: int, reasons: dict[str, int]) -> dict[str, Any]:
    if len(samples) <= SETTLED_AFTER_TURNS:
        raise VoicebotError(f"only {len(samples)} turns ended; the soak needs more than {SETTLED_AFTER_TURNS}")
    settled, last = samples[SETTLED_AFTER_TURNS - 1], samples[-1]
    after = samples[SETTLED_AFTER_TURNS - 1 :]
    growth = (last.rss_mb - settled.rss_mb) / settled.rss_mb
    result = {
        "turns_heard": turns,
        "turns_ended": len(samples),
        "turn_end_reasons": reasons,
        "rss_mb": {"turn_1": samples[0].rss_mb, f"turn_{SETTLED_AFTER_TURNS}": settled.rss_mb, "last": last.rss_mb},
        "rss_growth_after_settling": round(growth, 4),
        "rss_max_mb": max(s.rss_mb for s in after),
        "fds": {f"turn_{SETTLED_AFTER_TURNS}": settled.fds, "last": last.fds, "max": max(s.fds for s in after)},
        "threads": {
            f"turn_{SETTLED_AFTER_TURNS}": settled.threads,
            "last": last.threads,
            "max": max(s.threads for s in after),
        },
        "samples": [dataclasses.asdict(s) for s in samples],
    }
    result["passed"] = bool(
        growth < MAX_GROWTH
        and max(s.fds for s in after) == settled.fds == last.fds
        and max(s.threads for s in after) == settled.threads == last.threads
        and reasons.get("answered", 0) >= 0.9 * turns
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicebot.tools.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=300, help="spoken turns to run (default 300; CI runs 40)")
    parser.add_argument("--json", metavar="FILE", help="write the figures, with a sample per turn, as JSON")
    parser.add_argument("--config", metavar="PATH", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_soak(soak_config(load_config(args.config, args.set)), args.turns)
    except VoicebotError as error:
        print(f"soak: {error}", file=sys.stderr)
        return error.exit_code
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(
        f"soak: {result['turns_ended']} turns ({result['turn_end_reasons']}); RSS {result['rss_mb']} MB, "
        f"growth after turn {SETTLED_AFTER_TURNS}: {result['rss_growth_after_settling']:.1%}; "
        f"fds {result['fds']}; threads {result['threads']}: " + ("PASS" if result["passed"] else "FAIL")
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
