"""Voice and typed chats on one model, measured: what each costs the other.

    python -m voicebot.tools.bench_http [--rounds 5] [--json FILE] [--config PATH] [--set section.key=value ...]

One process runs the real pipeline (Piper saying the wake word and a question, heard as fast as the
pipeline takes it) and the real HTTP server, on the same models. Each round measures, with the
conversation forgotten between turns so every turn starts alike:
- a typed request's first token over HTTP (streamed), the model idle, and again while a voice turn runs;
- a voice turn's first audio after the end of its question, alone, and again with 8 streamed typed
  answers open (one generating, seven queued).
It prints medians, the ratio of each pair, and one typed LLM step (the median gap between tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import numpy as np

from voicebot.assistant import load_engines
from voicebot.audio import FRAME_SAMPLES, INPUT_RATE_HZ, AudioChunk, WavSink
from voicebot.config import Config, load_config
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.http.app import HttpServer, VoiceLink, create_app
from voicebot.llm_service import Priority
from voicebot.pipeline import Pipeline
from voicebot.runtime.clock import Clock
from voicebot.runtime.trace import Tracer
from voicebot.tools.soak import soak_config, turn_clips

log = logging.getLogger("voicebot.tools.bench_http")

STREAMS = 8
TYPED_QUESTION = "Write a very long story about a dragon, at least ten paragraphs."
TURN_TIMEOUT_S = 60.0


class ClipsOnDemand:
    """An audio source that plays a clip when asked (as fast as the pipeline takes it), and a quiet room in
    real time otherwise."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.clips: asyncio.Queue[np.ndarray] = asyncio.Queue()

    async def frames(self) -> AsyncIterator[AudioChunk]:
        self.clock.restart()
        silence = np.zeros(FRAME_SAMPLES, np.float32)
        while True:
            try:
                samples = self.clips.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(FRAME_SAMPLES / INPUT_RATE_HZ)
                yield AudioChunk(silence, INPUT_RATE_HZ, self.clock.now())
                continue
            for start in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
                await asyncio.sleep(0)
                yield AudioChunk(samples[start : start + FRAME_SAMPLES], INPUT_RATE_HZ, self.clock.now())


def bench_config(config: Config) -> Config:
    """The soak's short answers, no follow-up window, and a conversation forgotten between turns."""
    config = soak_config(config)
    conversation = dataclasses.replace(config.conversation, forget_after_s=1.0)
    http = dataclasses.replace(config.http, host="127.0.0.1", max_queued=STREAMS - 1, token=None)
    return dataclasses.replace(config, conversation=conversation, http=http)


class Bench:
    def __init__(self, engines: Engines, config: Config, folder: Path) -> None:
        self.engines = engines
        self.config = config
        self.clock = Clock()
        self.tracer = Tracer(self.clock, keep=True)
        self.source = ClipsOnDemand(self.clock)
        self.sink = WavSink(folder / "replies.wav", self.clock, realtime=False, rate_hz=engines.tts.rate_hz)
        self.pipeline = Pipeline(engines, self.source, self.sink, self.tracer)
        self.started = asyncio.Event()
        self.server = HttpServer(
            create_app(
                engines.llm, config, engines.loaded_models(), VoiceLink(state=lambda: self.pipeline.state.value)
            ),
            config.http,
            on_started=lambda url: self.started.set(),
        )
        self.url = self.server.url
        self.token_gaps_s: list[float] = []

    def count(self, name: str) -> int:
        return sum(event["event"] == name for event in self.tracer.events)

    def last(self, name: str) -> dict[str, Any]:
        return [event for event in self.tracer.events if event["event"] == name][-1]

    async def until(self, condition, what: str) -> None:
        deadline = time.monotonic() + TURN_TIMEOUT_S
        while not condition():  # noqa: ASYNC110 - polls the trace and the LLM service, which have no events
            if time.monotonic() > deadline:
                raise VoicebotError(f"the bench waited {TURN_TIMEOUT_S:.0f} s for {what}; it never came")
            await asyncio.sleep(0.002)

    async def wait_for(self, name: str, count: int) -> None:
        await self.until(lambda: self.count(name) >= count, f"trace event {name}")

    async def voice_turn(self, clip: np.ndarray, while_generating=None) -> float:
        """Ask a question aloud; seconds from the end of speech to the first reply audio. `while_generating`
        runs once the LLM is writing the voice answer."""
        turns = self.count("turn_end")
        await asyncio.sleep(1.2)  # past conversation.forget_after_s: every turn starts with no history
        self.source.clips.put_nowait(clip)
        if while_generating is not None:
            await self.until(lambda: self.engines.llm.running is Priority.VOICE, "the voice answer being written")
            await while_generating()
        await self.wait_for("turn_end", turns + 1)
        if self.last("turn_end")["reason"] != "answered":
            raise VoicebotError(f"a bench turn ended with {self.last('turn_end')['reason']}, not an answer")
        return self.last("playback_start")["t"] - self.last("speech_end")["t"]

    async def first_token_s(self, client: httpx.AsyncClient, max_tokens: int = 8) -> float:
        """Seconds from sending a streamed request to its first piece of text."""
        body = {"messages": [{"role": "user", "content": "Name a colour."}], "stream": True, "max_tokens": max_tokens}
        started = time.monotonic()
        first = None
        async with client.stream("POST", "v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if (
                    first is None
                    and line.startswith("data: {")
                    and '"content":"' in line
                    and '"content":""' not in line
                ):
                    first = time.monotonic() - started
        if first is None:
            raise VoicebotError("a bench request got no text")
        return first

    async def long_stream(self, client: httpx.AsyncClient, record_gaps: bool) -> None:
        body = {
            "messages": [{"role": "user", "content": TYPED_QUESTION}],
            "stream": True,
            "max_tokens": 300,
            "temperature": 0,
        }
        last = None
        async with client.stream("POST", "v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line:
                    now = time.monotonic()
                    if record_gaps and last is not None:
                        self.token_gaps_s.append(now - last)
                    last = now

    async def run(self, rounds: int) -> dict[str, Any]:
        clips = (await turn_clips(self.engines.tts))[:1]  # the same question every time
        results: dict[str, list[float]] = {key: [] for key in ("http_alone", "http_during_voice", "voice_alone")}
        results["voice_with_streams"] = []
        pipeline = asyncio.create_task(self.pipeline.run(), name="pipeline")
        server = asyncio.create_task(self.server.serve(), name="http")
        try:
            await asyncio.wait_for(self.started.wait(), 30)
            async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
                await self.first_token_s(client)  # warm-up
                await self.voice_turn(clips[0])
                for round_number in range(rounds):
                    results["http_alone"].append(await self.first_token_s(client))
                    results["voice_alone"].append(await self.voice_turn(clips[0]))

                    results["voice_with_streams"].append(await self._voice_with_streams(client, clips[0]))

                    async def typed_request_now() -> None:
                        results["http_during_voice"].append(await self.first_token_s(client))

                    await self.voice_turn(clips[0], while_generating=typed_request_now)
                    log.info("round %d of %d done", round_number + 1, rounds)
        finally:
            self.server.stop()
            pipeline.cancel()
            await asyncio.gather(pipeline, server, return_exceptions=True)
            self.sink.close()
        return summarise(results, self.token_gaps_s)

    async def _voice_with_streams(self, client: httpx.AsyncClient, clip: np.ndarray) -> float:
        streams = [asyncio.create_task(self.long_stream(client, record_gaps=n == 0)) for n in range(STREAMS)]
        llm = self.engines.llm
        assert llm is not None
        await self.until(lambda: llm.queue_length >= STREAMS - 1, "the typed requests to queue")
        seconds = await self.voice_turn(clip)
        await asyncio.gather(*streams)
        return seconds


def summarise(results: dict[str, list[float]], token_gaps_s: list[float]) -> dict[str, Any]:
    medians = {key: round(statistics.median(values), 3) for key, values in results.items()}
    step_s = statistics.median(token_gaps_s)
    return {
        "medians_s": medians,
        "runs": {key: [round(v, 3) for v in values] for key, values in results.items()},
        "typed_llm_step_s": round(step_s, 4),
        "voice_delay_by_streams_s": round(medians["voice_with_streams"] - medians["voice_alone"], 3),
        "voice_delay_in_llm_steps": round((medians["voice_with_streams"] - medians["voice_alone"]) / step_s, 1),
        "ratio_voice_with_streams_to_alone": round(medians["voice_with_streams"] / medians["voice_alone"], 3),
        "ratio_http_during_voice_to_alone": round(medians["http_during_voice"] / medians["http_alone"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicebot.tools.bench_http", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the four measurements (default 5)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--config", metavar="PATH", help="YAML config file")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], help="override a key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("uvicorn", "uvicorn.error", "httpx", "voicebot.http.app", "voicebot.pipeline", "voicebot.reply"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = bench_config(load_config(args.config, args.set))
        engines = load_engines(config)
        try:
            with tempfile.TemporaryDirectory(prefix="voicebot-bench-http-") as folder:
                result = asyncio.run(Bench(engines, config, Path(folder)).run(args.rounds))
        finally:
            engines.close()
    except VoicebotError as error:
        print(f"voicebot.tools.bench_http: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
