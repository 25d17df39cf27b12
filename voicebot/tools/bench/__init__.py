"""`voicebot bench`: where each turn's time goes, what a conversation costs as it grows, how fast barge-in is.

Every figure is a median over turns, with its spread, and every comparison is made within the same
run, on the same machine.

- **Reference turns.** A wake word, then a question. Most are spoken by the configured Piper voice;
  some are real people from the recordings kept in `tests/data` (someone saying "Alexa", and
  John F. Kennedy, whose sentence has a natural pause in the middle); and some Piper questions have a
  hesitation in the middle. A pause longer than `vad.early_start_s` starts work on an answer early;
  when speech resumes that work is dropped. Those false early starts are counted, with what they cost.
- **Four designs, the same turns.** voicebot's (early start at the first pause, then streaming);
  streaming alone; and the sequential baseline of the original chat-bot design (wait for the end of
  speech, transcribe, generate the whole answer, synthesise all of it, play). A design with no
  overlap has no reason to leave a core idle, so the baseline's LLM and TTS get every core. For
  comparison with earlier runs, the baseline also runs on voicebot's own pinning.
- **The floor.** First audio cannot come before the endpoint decision, so the pipeline's own overhead
  is first audio − endpoint decided. The older floor (the hangover plus each stage alone) is kept
  beside it, labelled.
- **Barge-in.** A question with a long answer, the wake word 2 to 3 s into the reply, then a second
  question; the reaction is the time from the `wake` event to the output falling silent.
- **Multi-turn cost.** One conversation of 20 turns through the Responder, text only as
  `voicebot chat` runs it, against a baseline that evaluates the whole prompt every turn (the KV cache
  cleared) with the same prompts, the same history and the same cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import os
import platform
import re
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

import voicebot
from voicebot.audio import INPUT_RATE_HZ, AudioChunk, PlaybackTimeline, WavSink, WavSource, read_wav
from voicebot.chunker import SentenceChunker
from voicebot.config import Config
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.llm import ChatModel, Conversation, Sampling, system_prompts
from voicebot.models.paths import ModelPaths, resolve_models
from voicebot.pipeline import Pipeline
from voicebot.reply import Responder
from voicebot.runtime.clock import Clock
from voicebot.runtime.threads import PinnedWorker, available_cores, iterate_in_worker
from voicebot.runtime.trace import Tracer
from voicebot.vad import PRE_ROLL_S, TAIL_S, Endpoint, EndpointKind
from voicebot.wake import WakeWordDetector

log = logging.getLogger(__name__)

T = TypeVar("T")

BENCH_SEED = 1
LEAD_IN_S = 1.0
GAP_AFTER_WAKE_S = 0.3
TRAILING_SILENCE_S = 2.5
# Speech is where the 10 ms loudness stands above this, or above 4 times the recording's own noise floor.
SPEECH_RMS = 0.01
NOISE_FLOOR_FACTOR = 4.0
RMS_FRAME_S = 0.01
# A hesitation in the middle of a question: longer than vad.early_start_s, shorter than vad.hangover_s
# (0.2 s and 0.6 s by default), as people pause to find a word.
HESITATION_S = 0.4


@dataclass(frozen=True)
class Recording:
    """A real recording kept in tests/data, or a stretch of it."""

    name: str
    said: str
    start_s: float = 0.0
    end_s: float | None = None
    wake_model: str | None = None
    """For a recording of a wake word: the openWakeWord model that hears it."""


@dataclass(frozen=True)
class Pause:
    """Silence in the middle of a question."""

    seconds: float


@dataclass(frozen=True)
class Script:
    """What one reference turn says: a wake word (None: the configured one, spoken by Piper), then the question."""

    wake: Recording | None
    question: tuple[str | Recording | Pause, ...]

    @property
    def recordings(self) -> list[Recording]:
        """The real recordings this turn needs."""
        return [part for part in (self.wake, *self.question) if isinstance(part, Recording)]


ALEXA = Recording("alexa_real.wav", "Alexa.", wake_model="alexa")
# Kennedy's "what your country can do for you, ask what you can do for your country", with his own
# 0.6 s pause before "ask"; the excerpt ends before the crowd's noise rises.
JFK = Recording(
    "jfk.flac", "What your country can do for you, ask what you can do for your country.", start_s=5.2, end_s=10.6
)
SCRIPTS = (
    Script(ALEXA, ("How far away is the moon,", Pause(HESITATION_S), "from the earth?")),
    Script(None, ("What is the capital of France?",)),
    Script(None, (JFK,)),
    Script(None, ("How do plants make food?",)),
    Script(ALEXA, ("Why is the sky blue?",)),
    Script(None, ("Give me a tip", Pause(HESITATION_S), "for cooking rice.")),
    Script(None, ("What causes rain?",)),
    Script(None, ("Why do leaves change colour in autumn?",)),
)
TALK = (
    "I moved the lamp to the other side of the room because the light was too harsh in the evening. "
    "The bulbs in the hallway are warmer, and I think they look better with the new curtains. "
    "Tomorrow I will paint the shelf by the window, if the weather stays dry and the shop has the colour I want. "
    "My sister says the kitchen needs brighter lights for cooking, and she is probably right about that. "
)

LONG_QUESTIONS = (
    "Tell me a long story about a lighthouse keeper and his dog.",
    "Tell me everything you know about the history of the bicycle.",
    "Explain in detail how a steam engine works.",
)
SECOND_QUESTION = "What is the capital of France?"
SECOND_ANSWER_WORDS = frozenset({"capital", "france"})
# Silence after the long question: the reply starts about 1 s after it, so the barge-in wake word,
# which is heard as it ends, lands 2 to 3 s into the reply.
BARGE_IN_GAP_S = 2.8

CONVERSATION = (
    "Hi, I'm Sam, and my favourite fruit is the mango. What is a good breakfast for a busy morning?",
    "How long should I boil an egg for a soft yolk?",
    "What can I add to porridge to make it less boring?",
    "Why does bread go stale?",
    "How do I keep fresh herbs from wilting in the fridge?",
    "What is the difference between baking soda and baking powder?",
    "Why do onions make people cry?",
    "How do I stop rice from sticking to the pan?",
    "What is a quick vegetarian dinner I can make in twenty minutes?",
    "How long can cooked chicken stay in the fridge?",
    "Why is the sky blue?",
    "How far away is the moon?",
    "What causes thunder?",
    "Why do cats purr?",
    "How do bees make honey?",
    "What is the tallest mountain in Europe?",
    "Why do leaves change colour in autumn?",
    "How does a rainbow form?",
    "What should I pack for a day of hiking?",
)
RECALL_QUESTION = "By the way, what is my name, and which fruit did I say I like best?"
RECALL_WORDS = ("sam", "mango")
REPORTED_TURNS = (1, 5, 10, 20)


@dataclass(frozen=True)
class ReferenceTurn:
    """A spoken wake word and question, where in the input each one ends, and what kind of speech it is."""

    question: str
    audio: AudioChunk
    wake_end_s: float
    speech_start_s: float
    speech_end_s: float
    wake: str
    """Who says the wake word: 'piper' or the recording's name."""
    speaker: str
    """Who asks: 'piper' or the recording's name."""
    pauses: int
    """Pauses put in the middle of the question (a recording's own are not counted here)."""


@dataclass(frozen=True)
class BenchOptions:
    """What to run."""

    turns: int = 5
    idle_seconds: float = 60.0
    barge_in_clips: int = 6
    conversation_turns: int = len(CONVERSATION) + 1
    plot: Path | None = None
    json: Path | None = None
    markdown: Path | None = None


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

# (results key, column heading) of each design's stage summaries, in table order.
DESIGNS = (
    ("stages", "voicebot"),
    ("streaming_only_stages", "streaming only"),
    ("sequential_stages", "sequential, every core"),
    ("sequential_voicebot_cores_stages", "sequential, voicebot's cores"),
)
STAGES = {
    "wake_delay_s": "wake word end → wake",
    "endpoint_delay_s": "end of speech → endpoint decided",
    "asr_s": "ASR",
    "llm_first_token_s": "LLM to first token",
    "llm_first_sentence_s": "LLM to first sentence",
    "tts_first_audio_s": "TTS to first audio",
    "overhead_after_endpoint_s": "endpoint decided → first reply audio",
    "first_audio_s": "end of speech → first reply audio",
    "traced_latency_s": "trace: speech_end → playback_start",
    "answer_spoken_s": "end of speech → whole answer spoken",
}


def run_bench(config: Config, options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark and return its results (also written to options.json and options.plot)."""
    config = _bench_config(config)
    paths = resolve_models(config)
    engines = Engines.load(config, paths)
    all_cores: Engines | None = None
    try:
        engines.warm_up()
        startup_s = _seconds_since_process_start()
        data = recordings_dir()
        scripts = [s for s in SCRIPTS if data is not None or not s.recordings]
        listener = _with_wake_models(engines, config, scripts)
        turns = _reference_turns(listener, scripts, options.turns, data)
        voicebot_runs = [_run_turn(listener, turn, VOICEBOT) for turn in turns]
        streaming_only = [_run_turn(listener, turn, STREAMING_ONLY) for turn in turns]
        sequential_own_cores = [_run_turn(listener, turn, SEQUENTIAL) for turn in turns]
        floors = [_floor(engines, config, turn, run.events) for turn, run in zip(turns, voicebot_runs, strict=True)]
        barge_in = _barge_in(listener, config, options.barge_in_clips, data)
        multi_turn = _multi_turn(engines, options.conversation_turns)
        idle_cpu = _listening_cpu_percent(
            engines, AudioChunk(np.zeros(int(options.idle_seconds * INPUT_RATE_HZ), np.float32), INPUT_RATE_HZ)
        )
        talk_cpu = _listening_cpu_percent(engines, _talk(engines, options.idle_seconds))
        # voicebot's own footprint, before the baseline's second copy of the LLM and voice is loaded.
        peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        all_cores, sequential_view = _on_every_core(listener, config, paths)
        sequential = [_run_turn(sequential_view, turn, SEQUENTIAL) for turn in turns]
    finally:
        if all_cores is not None:
            all_cores.close()
        engines.close()

    designs = {
        "stages": voicebot_runs,
        "streaming_only_stages": streaming_only,
        "sequential_stages": sequential,
        "sequential_voicebot_cores_stages": sequential_own_cores,
    }
    per_turn = {
        key: [_stage_times(t, run.events) for t, run in zip(turns, runs, strict=True)] for key, runs in designs.items()
    }
    # A question the endpointer closed at a pause, before it had ended, has no honest end-of-speech latency.
    cut = [any(rows[i]["endpoint_delay_s"] < 0 for rows in per_turn.values()) for i in range(len(turns))]
    kept = [i for i in range(len(turns)) if not cut[i]] or list(range(len(turns)))
    summaries = {key: _summaries([rows[i] for i in kept]) for key, rows in per_turn.items()}

    def median_of(key: str, stage: str) -> float:
        return summaries[key][stage]["median"]

    first_audio = median_of("stages", "first_audio_s")
    sequential_first_audio = median_of("sequential_stages", "first_audio_s")
    own_cores_first_audio = median_of("sequential_voicebot_cores_stages", "first_audio_s")
    streaming_only_first_audio = median_of("streaming_only_stages", "first_audio_s")
    floor = _median([f["total_s"] for f in floors])
    early_starts = [_early_starts(run) for run in voicebot_runs]
    results = {
        "profile": config.profile,
        "turns": len(turns),
        "recordings": str(data) if data is not None else None,
        "first_audio_s": first_audio,
        "endpoint_delay_s": median_of("stages", "endpoint_delay_s"),
        "overhead_after_endpoint_s": median_of("stages", "overhead_after_endpoint_s"),
        "sequential_first_audio_s": sequential_first_audio,
        "streaming_over_sequential": _ratio(first_audio, sequential_first_audio),
        "streaming_only_first_audio_s": streaming_only_first_audio,
        "streaming_only_over_sequential": _ratio(streaming_only_first_audio, sequential_first_audio),
        "sequential_voicebot_cores_first_audio_s": own_cores_first_audio,
        "streaming_over_sequential_voicebot_cores": _ratio(first_audio, own_cores_first_audio),
        "floor_s": floor,
        "overhead_vs_floor": _ratio(first_audio, floor),
        "idle_cpu_percent": idle_cpu,
        "talk_cpu_percent": talk_cpu,
        "peak_rss_mb": peak_rss_mb,
        "startup_s": round(startup_s, 3),
        "barge_in_reaction_s": barge_in["reaction_s"]["median"] if barge_in["reaction_s"] else None,
        "barge_in": barge_in,
        "multi_turn": multi_turn,
        "false_early_starts": _false_early_start_summary(early_starts, per_turn["stages"], turns),
        "questions_cut_at_a_pause": sum(cut),
        **summaries,
        "floor_stages": _summaries(floors),
        "turn_details": [
            {
                "question": turn.question,
                "wake": turn.wake,
                "speaker": turn.speaker,
                "pauses": turn.pauses,
                "cut_at_a_pause": cut[i],
                "early_starts": early_starts[i],
                "first_audio_s": {key: round(rows[i]["first_audio_s"], 4) for key, rows in per_turn.items()},
                "overhead_after_endpoint_s": {
                    key: round(rows[i]["overhead_after_endpoint_s"], 4) for key, rows in per_turn.items()
                },
                "transcript": _first(voicebot_runs[i].events, "transcript")["text"],
            }
            for i, turn in enumerate(turns)
        ],
        "questions": [turn.question for turn in turns],
        "answers": [_said(run.events) for run in voicebot_runs],
        "machine": _machine(),
        "config": {
            "vad.hangover_s": config.vad.hangover_s,
            "vad.early_start_s": config.vad.early_start_s,
            "llm.cores": list(engines.llm_worker.cores) if engines.llm_worker else None,
            "tts.cores": list(engines.tts_worker.cores) if engines.tts_worker else None,
            "sequential llm.cores": list(available_cores()),
            "sequential tts.cores": list(available_cores()),
            "llm.max_reply_tokens": config.llm.max_reply_tokens,
            "conversation.max_reply_s": config.conversation.max_reply_s,
            "wake.models": list(listener.config.wake.models),
        },
    }
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if options.plot:
        # The turn with the longest answer shows best what overlapping the stages buys.
        longest = max(kept, key=lambda i: sum(e["event"] == "sentence" for e in voicebot_runs[i].events))
        plot_turn(turns[longest], voicebot_runs[longest].events, sequential[longest].events, options.plot)
    return results


def _bench_config(config: Config) -> Config:
    """The same answers from every design (a fixed seed), and no follow-up window between runs."""
    llm = config.llm if config.llm.seed is not None else dataclasses.replace(config.llm, seed=BENCH_SEED)
    conversation = dataclasses.replace(config.conversation, follow_up_s=0.0)
    return dataclasses.replace(config, llm=llm, conversation=conversation)


def recordings_dir() -> Path | None:
    """tests/data in a checkout; None when voicebot was installed without it (from a wheel)."""
    folder = Path(voicebot.__file__).resolve().parents[1] / "tests" / "data"
    needed = {r.name for s in SCRIPTS for r in s.recordings}
    return folder if all((folder / name).is_file() for name in needed) else None


def _with_wake_models(engines: Engines, config: Config, scripts: list[Script]) -> Engines:
    """The engines with a wake word detector that also hears the recorded wake words."""
    models = list(config.wake.models)
    for script in scripts:
        if script.wake is not None and script.wake.wake_model not in models:
            models.append(script.wake.wake_model)
    if len(models) == len(config.wake.models):
        return engines
    assert engines.listen_worker is not None
    wake_config = dataclasses.replace(config.wake, models=tuple(models))
    detector = engines.listen_worker.call(WakeWordDetector, wake_config)
    return dataclasses.replace(engines, config=dataclasses.replace(config, wake=wake_config), wake=detector)


def _on_every_core(listener: Engines, config: Config, paths: ModelPaths) -> tuple[Engines, Engines]:
    """The LLM and the voice loaded again on every core, for the sequential baseline; returns (loaded, view)."""
    every = available_cores()
    spread = dataclasses.replace(
        config,
        llm=dataclasses.replace(config.llm, cores=every),
        tts=dataclasses.replace(config.tts, cores=every),
    )
    loaded = Engines.load(spread, paths, frozenset({"llm", "tts"}))
    try:
        loaded.warm_up()
    except BaseException:
        loaded.close()
        raise
    view = dataclasses.replace(
        listener,
        chat=loaded.chat,
        llm_worker=loaded.llm_worker,
        synthesizer=loaded.synthesizer,
        tts_worker=loaded.tts_worker,
    )
    return loaded, view


# Reference audio.


def _reference_turns(engines: Engines, scripts: list[Script], count: int, data: Path | None) -> list[ReferenceTurn]:
    wake = _speak(engines, _wake_phrase(engines.config))
    return [_build_turn(engines, scripts[i % len(scripts)], wake, data) for i in range(count)]


def _wake_phrase(config: Config) -> str:
    return Path(config.wake.models[0]).stem.rsplit("_v", 1)[0].replace("_", " ").title() + "."


def _build_turn(engines: Engines, script: Script, piper_wake: np.ndarray, data: Path | None) -> ReferenceTurn:
    wake = piper_wake if script.wake is None else _recording(script.wake, data)
    question, pauses = _question_audio(engines, script.question, data)
    parts = [_silence(LEAD_IN_S), wake, _silence(GAP_AFTER_WAKE_S), question, _silence(TRAILING_SILENCE_S)]
    wake_end = LEAD_IN_S + _speech_span(wake)[1]
    question_at = LEAD_IN_S + len(wake) / INPUT_RATE_HZ + GAP_AFTER_WAKE_S
    start, end = _speech_span(question)
    said = " ".join(p.said if isinstance(p, Recording) else p for p in script.question if not isinstance(p, Pause))
    spoken_by = [p.name for p in script.question if isinstance(p, Recording)]
    return ReferenceTurn(
        question=said,
        audio=AudioChunk(np.concatenate(parts), INPUT_RATE_HZ),
        wake_end_s=wake_end,
        speech_start_s=question_at + start,
        speech_end_s=question_at + end,
        wake="piper" if script.wake is None else script.wake.name,
        speaker=", ".join(spoken_by) or "piper",
        pauses=pauses,
    )


def _question_audio(
    engines: Engines, parts: tuple[str | Recording | Pause, ...], data: Path | None
) -> tuple[np.ndarray, int]:
    """The question's audio; speech next to a pause is trimmed to the speech, so the pause is exactly as long."""
    pieces = []
    for index, part in enumerate(parts):
        if isinstance(part, Pause):
            pieces.append(_silence(part.seconds))
            continue
        audio = _recording(part, data) if isinstance(part, Recording) else _speak(engines, part)
        start, end = _speech_span(audio)
        if index + 1 < len(parts) and isinstance(parts[index + 1], Pause):
            audio = audio[: int(end * INPUT_RATE_HZ)]
        if index > 0 and isinstance(parts[index - 1], Pause):
            audio = audio[int(start * INPUT_RATE_HZ) :]
        pieces.append(audio)
    return np.concatenate(pieces), sum(isinstance(p, Pause) for p in parts)


def _recording(recording: Recording, data: Path | None) -> np.ndarray:
    assert data is not None
    samples = read_wav(data / recording.name).resampled(INPUT_RATE_HZ).samples
    end = None if recording.end_s is None else int(recording.end_s * INPUT_RATE_HZ)
    return samples[int(recording.start_s * INPUT_RATE_HZ) : end]


def _speak(engines: Engines, text: str) -> np.ndarray:
    assert engines.synthesizer is not None and engines.tts_worker is not None
    chunks = engines.tts_worker.call(lambda: list(engines.synthesizer.synthesize(text)))
    return AudioChunk(np.concatenate([c.samples for c in chunks]), chunks[0].rate_hz).resampled(INPUT_RATE_HZ).samples


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * INPUT_RATE_HZ), np.float32)


def _speech_span(samples: np.ndarray) -> tuple[float, float]:
    """Where speech starts and ends: 10 ms frames louder than SPEECH_RMS and than the recording's noise floor."""
    frame = int(RMS_FRAME_S * INPUT_RATE_HZ)
    frames = len(samples) // frame
    rms = np.sqrt(np.mean(samples[: frames * frame].reshape(frames, frame) ** 2, axis=1))
    level = max(SPEECH_RMS, NOISE_FLOOR_FACTOR * float(np.percentile(rms, 10)))
    loud = np.flatnonzero(rms > level)
    return loud[0] * RMS_FRAME_S, (loud[-1] + 1) * RMS_FRAME_S


def _talk(engines: Engines, seconds: float) -> AudioChunk:
    talk = _speak(engines, TALK)
    repeats = int(np.ceil(seconds * INPUT_RATE_HZ / len(talk)))
    return AudioChunk(np.tile(talk, repeats)[: int(seconds * INPUT_RATE_HZ)], INPUT_RATE_HZ)


# Running the pipeline, watched from outside.


@dataclass(frozen=True)
class WorkSpan:
    """One call on a model's worker thread, on the run's clock."""

    worker: str
    started: float
    ended: float


@dataclass(frozen=True)
class Decision:
    """One endpointing decision, and the clock time it was made."""

    kind: EndpointKind
    at: float
    decided_at: float


@dataclass
class Run:
    """What one real-time run of the pipeline left: its trace, its endpointing decisions and its model calls."""

    events: list[dict[str, Any]]
    decisions: list[Decision] = field(default_factory=list)
    work: list[WorkSpan] = field(default_factory=list)


class _TimedWorker:
    """A pinned worker seen from outside: every call runs as before, and when it ran is noted."""

    def __init__(self, worker: PinnedWorker, clock: Clock, work: list[WorkSpan]) -> None:
        self.worker = worker
        self.name = worker.name
        self.cores = worker.cores
        self._clock = clock
        self._work = work

    def submit(self, fn: Callable[..., T], *args):
        def timed() -> T:
            started = self._clock.now()
            try:
                return fn(*args)
            finally:
                self._work.append(WorkSpan(self.name, started, self._clock.now()))

        return self.worker.submit(timed)

    def call(self, fn: Callable[..., T], *args) -> T:
        return self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))


class _WatchedEndpointer:
    """The pipeline's endpointer seen from outside: it decides as before, and each decision is noted."""

    def __init__(self, endpointer, clock: Clock, decisions: list[Decision]) -> None:
        self._endpointer = endpointer
        self._clock = clock
        self._decisions = decisions

    def process(self, chunk: AudioChunk) -> list[Endpoint]:
        endpoints = self._endpointer.process(chunk)
        now = self._clock.now()
        self._decisions.extend(Decision(e.kind, e.at, now) for e in endpoints)
        return endpoints

    def __getattr__(self, name: str) -> Any:
        return getattr(self._endpointer, name)


def _run_turn(engines: Engines, turn: ReferenceTurn, design: Design) -> Run:
    # Every turn starts from the same LLM cache: the system prompt evaluated, the question not.
    engines.warm_up_llm()
    return asyncio.run(_hear_in_real_time(engines, turn.audio, design))


async def _hear_in_real_time(engines: Engines, audio: AudioChunk, design: Design) -> Run:
    """Run the real pipeline on `audio`, fed and played at real-time pace, as `voicebot run --input` does."""
    assert engines.synthesizer is not None
    clock = Clock()
    tracer = Tracer(clock, keep=True)
    run = Run(tracer.events)
    watched = dataclasses.replace(
        engines,
        endpointer=_WatchedEndpointer(engines.endpointer, clock, run.decisions),
        **{
            name: _TimedWorker(getattr(engines, name), clock, run.work)
            for name in ("asr_worker", "llm_worker", "tts_worker")
        },
    )
    timeline = PlaybackTimeline()
    with tempfile.TemporaryDirectory() as folder:
        sink = WavSink(
            Path(folder) / "reply.wav", clock, realtime=True, rate_hz=engines.synthesizer.rate_hz, timeline=timeline
        )
        try:
            source = WavSource(audio, clock)
            await Pipeline(watched, source, sink, tracer, design.streaming, design.early_start, timeline).run()
        finally:
            sink.close()
    return run


def _first(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for event in events:
        if event["event"] == name:
            return event
    raise VoicebotError(f"benchmark turn has no {name!r} event; events: {[e['event'] for e in events]}")


def _said(events: list[dict[str, Any]]) -> str:
    return " ".join(e["text"] for e in events if e["event"] == "sentence")


def _stage_times(turn: ReferenceTurn, events: list[dict[str, Any]]) -> dict[str, float]:
    speech_end = _first(events, "speech_end")
    decided_at = speech_end["t"] + speech_end["endpoint_delay_s"]
    transcript = _first(events, "transcript")
    transcript_at = transcript["t"]
    first_sentence_at = _first(events, "sentence")["t"]
    first_audio_at = _first(events, "playback_start")["t"]
    return {
        "wake_delay_s": _first(events, "wake")["t"] - turn.wake_end_s,
        "endpoint_delay_s": decided_at - turn.speech_end_s,
        "asr_s": transcript["asr_s"],
        "llm_first_token_s": _first(events, "llm_first_token")["t"] - transcript_at,
        "llm_first_sentence_s": first_sentence_at - transcript_at,
        "tts_first_audio_s": _first(events, "tts_first_audio")["t"] - first_sentence_at,
        "overhead_after_endpoint_s": first_audio_at - decided_at,
        "first_audio_s": first_audio_at - turn.speech_end_s,
        "traced_latency_s": first_audio_at - speech_end["t"],
        "answer_spoken_s": _first(events, "playback_end")["t"] - turn.speech_end_s,
    }


def _early_starts(run: Run) -> dict[str, Any]:
    """Early starts in one run, and the model work started by those dropped when speech resumed.

    A dropped early turn owns every model call started from its PAUSE decision until the next
    decision that starts a turn (the next PAUSE, or the end of the question).
    """
    decisions = [d for d in run.decisions if d.kind is not EndpointKind.SPEECH_START]
    started = sum(d.kind is EndpointKind.PAUSE for d in decisions)
    dropped = []
    for index, decision in enumerate(decisions):
        if decision.kind is not EndpointKind.PAUSE:
            continue
        later = decisions[index + 1 :]
        if not later or later[0].kind is not EndpointKind.RESUME:
            continue
        resumed_at = later[0].decided_at
        until = next((d.decided_at for d in later[1:] if d.kind is not EndpointKind.RESUME), float("inf"))
        calls = [w for w in run.work if decision.decided_at <= w.started < until]
        work_s = {name: 0.0 for name in ("asr", "llm", "tts")}
        for call in calls:
            work_s[call.worker] = work_s.get(call.worker, 0.0) + call.ended - call.started
        dropped.append(
            {
                "paused_at": round(decision.at, 3),
                "ran_s": round(resumed_at - decision.decided_at, 4),
                "work_s": {name: round(seconds, 4) for name, seconds in work_s.items()},
                "busy_after_drop_s": round(max([c.ended - resumed_at for c in calls] + [0.0]), 4),
            }
        )
    return {"started": started, "dropped": len(dropped), "dropped_details": dropped}


def _false_early_start_summary(
    early_starts: list[dict[str, Any]], stages: list[dict[str, float]], turns: list[ReferenceTurn]
) -> dict[str, Any]:
    """How many early starts were dropped, the work they threw away, and the latency of the turns that had one."""
    details = [d for turn in early_starts for d in turn["dropped_details"]]
    with_drop = [i for i, turn in enumerate(early_starts) if turn["dropped"]]
    without = [i for i, turn in enumerate(early_starts) if not turn["dropped"]]

    def overhead(indices: list[int]) -> float | None:
        return _median([stages[i]["overhead_after_endpoint_s"] for i in indices]) if indices else None

    return {
        "early_starts": sum(turn["started"] for turn in early_starts),
        "dropped": len(details),
        "turns_with_a_drop": len(with_drop),
        "paused_turns": sum(turn.pauses > 0 or turn.speaker != "piper" for turn in turns),
        "work_thrown_away_s": {
            name: _median([d["work_s"][name] for d in details]) if details else None for name in ("asr", "llm", "tts")
        },
        "ran_before_drop_s": _median([d["ran_s"] for d in details]) if details else None,
        "busy_after_drop_s": _median([d["busy_after_drop_s"] for d in details]) if details else None,
        "overhead_after_endpoint_s": {"with_a_drop": overhead(with_drop), "without": overhead(without)},
    }


# The older floor: the hangover plus each stage alone.


def _floor(engines: Engines, config: Config, turn: ReferenceTurn, events: list[dict[str, Any]]) -> dict[str, float]:
    """Each stage alone at its minimum: ASR of the utterance, LLM to the first sentence warm, TTS of it."""
    assert engines.transcriber and engines.chat and engines.synthesizer
    assert engines.asr_worker and engines.llm_worker and engines.tts_worker
    start = max(0, int((turn.speech_start_s - PRE_ROLL_S) * INPUT_RATE_HZ))
    end = int((turn.speech_end_s + TAIL_S) * INPUT_RATE_HZ)
    utterance = turn.audio.samples[start:end]
    asr_s, transcript = _timed(lambda: engines.asr_worker.call(engines.transcriber.transcribe, utterance))
    question = _first(events, "transcript")["text"] or transcript.text
    conversation = Conversation(config.conversation, system_prompts(config.llm))
    tokens = engines.llm_worker.call(conversation.prompt, question, "en", engines.chat)
    _first_sentence(engines, config, tokens)  # Warm llama.cpp's prompt cache with this very prompt.
    llm_s, sentence = _timed(lambda: _first_sentence(engines, config, tokens))
    tts_s, _ = _timed(lambda: engines.tts_worker.call(lambda: next(iter(engines.synthesizer.synthesize(sentence)))))
    total = config.vad.hangover_s + asr_s + llm_s + tts_s
    return {
        "vad_hangover_s": config.vad.hangover_s,
        "asr_s": asr_s,
        "llm_first_sentence_s": llm_s,
        "tts_first_audio_s": tts_s,
        "total_s": total,
    }


def _first_sentence(engines: Engines, config: Config, tokens: list[int]) -> str:
    async def first() -> str:
        chunker = SentenceChunker(config.tts.first_piece_chars, config.tts.max_piece_chars)
        assert engines.llm_worker and engines.chat
        sampling = Sampling.from_config(config.llm)
        async for token in iterate_in_worker(engines.llm_worker, lambda: engines.chat.stream(tokens, sampling)):
            pieces = chunker.feed(token)
            if pieces:
                return pieces[0]
        return (chunker.flush() or ["."])[0]

    return asyncio.run(first())


def _timed(work):
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


# Barge-in.


@dataclass(frozen=True)
class BargeInClip:
    """A question with a long answer, then the wake word and a second question 2 to 3 s into the reply."""

    wake: str
    question: str
    audio: AudioChunk
    wake_end_s: float
    """Where the barge-in wake word ends in the clip."""


def _barge_in(engines: Engines, config: Config, count: int, data: Path | None) -> dict[str, Any]:
    """Run the barge-in clips and measure how soon the output fell silent after the wake word."""
    clips = _barge_in_clips(engines, count, data)
    rows = []
    for clip in clips:
        engines.warm_up_llm()
        events = asyncio.run(_hear_in_real_time(engines, clip.audio, VOICEBOT)).events
        rows.append({"wake": clip.wake, "question": clip.question, **_barge_in_outcome(events, clip.wake_end_s)})
    reactions = [row["reaction_s"] for row in rows if row["reaction_s"] is not None]
    from_speech = [row["wake_end_to_silent_s"] for row in rows if row["wake_end_to_silent_s"] is not None]
    return {
        "clips": len(rows),
        "barged_in": sum(row["barged_in"] for row in rows),
        "stopped_playback": len(reactions),
        "second_question_answered": sum(row["second_question_answered"] for row in rows),
        "reaction_s": _summary(reactions) if reactions else None,
        "wake_end_to_silent_s": _summary(from_speech) if from_speech else None,
        "barge_in_enabled": config.conversation.barge_in,
        "rows": rows,
    }


def _barge_in_clips(engines: Engines, count: int, data: Path | None) -> list[BargeInClip]:
    piper_wake = _speak(engines, _wake_phrase(engines.config))
    wakes = [("piper", piper_wake)]
    if data is not None:
        # The real recording first, so that --short's one clip is a person.
        wakes.insert(0, (ALEXA.name, _recording(ALEXA, data)))
    second = _speak(engines, SECOND_QUESTION)
    clips = []
    for index in range(count):
        question = LONG_QUESTIONS[(index // len(wakes)) % len(LONG_QUESTIONS)]
        wake_name, wake = wakes[index % len(wakes)]
        parts = [
            _silence(LEAD_IN_S),
            piper_wake,
            _silence(GAP_AFTER_WAKE_S),
            _speak(engines, question),
            _silence(BARGE_IN_GAP_S),
            wake,
            _silence(GAP_AFTER_WAKE_S),
            second,
            _silence(TRAILING_SILENCE_S),
        ]
        wake_end_s = sum(len(part) for part in parts[:5]) / INPUT_RATE_HZ + _speech_span(wake)[1]
        clips.append(BargeInClip(wake_name, question, AudioChunk(np.concatenate(parts), INPUT_RATE_HZ), wake_end_s))
    return clips


def _barge_in_outcome(events: list[dict[str, Any]], wake_end_s: float) -> dict[str, Any]:
    barges = [i for i, e in enumerate(events) if e["event"] == "barge_in"]
    if not barges:
        return {
            "barged_in": False,
            "state": None,
            "wake_into_reply_s": None,
            "reaction_s": None,
            "wake_end_to_silent_s": None,
            "second_question_answered": False,
        }
    at = barges[0]
    wake = next(e for e in reversed(events[:at]) if e["event"] == "wake")
    stop = next((e for e in events[at:] if e["event"] == "playback_stop"), None)
    reply_started = next((e["t"] for e in events[:at] if e["event"] == "playback_start"), None)
    later = events[at:]
    heard = [e["text"] for e in later if e["event"] == "transcript"]
    answered = any(e["event"] == "turn_end" and e["reason"] == "answered" for e in later)
    return {
        "barged_in": True,
        "state": events[at]["state"],
        "wake_into_reply_s": round(wake["t"] - reply_started, 3) if reply_started is not None else None,
        "reaction_s": round(stop["t"] - wake["t"], 4) if stop is not None else None,
        "wake_end_to_silent_s": round(stop["t"] - wake_end_s, 4) if stop is not None else None,
        "second_question_answered": answered and any(_words(text) >= SECOND_ANSWER_WORDS for text in heard),
    }


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


# Multi-turn cost.


def _multi_turn(engines: Engines, turns: int) -> dict[str, Any]:
    """One conversation through the Responder, then the same prompts with the KV cache cleared before each."""
    questions = [*CONVERSATION[: max(turns - 1, 0)], RECALL_QUESTION][:turns]
    engines.warm_up_llm()
    rows, compressions, answers, compressing = asyncio.run(_converse(engines, questions))
    cold = asyncio.run(_cold_first_tokens(engines, [row.pop("tokens") for row in rows]))
    engines.warm_up_llm()
    for row, (seconds, counted) in zip(rows, cold, strict=True):
        row["baseline_evaluated"] = row["prompt_tokens"]
        row["baseline_evaluated_llama"] = counted
        row["baseline_first_token_s"] = round(seconds, 4)
    later = rows[1:] or rows

    def median(key: str) -> float:
        return _median([row[key] for row in later])

    recall = answers[-1]
    return {
        "turns": len(rows),
        "rows": rows,
        "at": {str(row["turn"]): row for row in rows if row["turn"] in REPORTED_TURNS},
        "median_after_turn_1": {
            "evaluated": median("evaluated"),
            "baseline_evaluated": median("baseline_evaluated"),
            "first_token_s": median("first_token_s"),
            "baseline_first_token_s": median("baseline_first_token_s"),
        },
        "first_token_ratio": _ratio(median("first_token_s"), median("baseline_first_token_s")),
        "evaluated_ratio": _ratio(median("evaluated"), median("baseline_evaluated")),
        "compressions": compressions,
        "quick_follow_up": asyncio.run(_quick_follow_up(engines, *compressing)) if compressing else None,
        "recall": {
            "question": questions[-1],
            "expected": list(RECALL_WORDS),
            "answer": recall,
            "recalled": [word for word in RECALL_WORDS if word in _words(recall)],
        }
        if questions[-1] == RECALL_QUESTION
        else None,
    }


async def _converse(
    engines: Engines, questions: list[str]
) -> tuple[list[dict[str, Any]], list[dict], list[str], tuple[Conversation, str, str] | None]:
    """The conversation's rows, compressions and answers; and the conversation as the first reply that set
    off a compression left it, with the question that came next."""
    chat, llm_worker = engines.chat, engines.llm_worker
    assert chat is not None and llm_worker is not None
    tracer = Tracer(Clock(), keep=True)
    responder = Responder(engines, None, tracer)
    rows, answers = [], []
    compressing = None
    after_reply: Conversation | None = None
    try:
        for turn, question in enumerate(questions, start=1):
            # Compressing old turns runs while a person hears the answer; here, before the next question.
            compressed_before = len([e for e in tracer.events if e["event"] == "history_compressed"])
            waited_s, _ = await _timed_async(responder.settled())
            compressed = len([e for e in tracer.events if e["event"] == "history_compressed"]) > compressed_before
            if compressed and compressing is None and after_reply is not None:
                compressing = (after_reply, question)
            tokens = await llm_worker.run(responder.conversation.prompt, question, "en", chat)
            before = await llm_worker.run(_prompt_tokens_counted, chat)
            mark = len(tracer.events)
            answers.append(await responder.respond(question))
            after_reply = copy.deepcopy(responder.conversation)  # before the compression it set off can start
            # Read before the compression the reply set off can reach the worker.
            counted = await llm_worker.run(_prompt_tokens_counted, chat) - before
            events = tracer.events[mark:]
            prompt = _first(events, "llm_prompt")
            if prompt["prompt_tokens"] != len(tokens):
                raise VoicebotError(f"turn {turn}: the prompt was {prompt['prompt_tokens']} tokens, not {len(tokens)}")
            rows.append(
                {
                    "turn": turn,
                    "history_turns": prompt["history_turns"],
                    "summary": prompt["summary"],
                    "prompt_tokens": prompt["prompt_tokens"],
                    "evaluated": prompt["prompt_tokens_evaluated"],
                    "evaluated_llama": counted,
                    "first_token_s": round(_first(events, "llm_first_token")["t"] - prompt["t"], 4),
                    "compression_wait_s": round(waited_s, 4),
                    "tokens": tokens,
                }
            )
    finally:
        await responder.settled()
    compressions = [
        {k: v for k, v in e.items() if k != "event"} for e in tracer.events if e["event"] == "history_compressed"
    ]
    return rows, compressions, answers, compressing


async def _quick_follow_up(engines: Engines, after_reply: Conversation, follow_up: str) -> dict[str, Any]:
    """A follow-up asked the moment the reply that set off a compression ends: seconds from asking to
    its first token when it interrupts the compression, and when it waits for it (as before)."""
    chat, llm_worker = engines.chat, engines.llm_worker
    assert chat is not None and llm_worker is not None
    result: dict[str, Any] = {"follow_up": follow_up}
    for design in ("interrupts", "waits"):
        clock = Clock()
        tracer = Tracer(clock, keep=True)
        responder = Responder(engines, None, tracer)
        responder.sampling = dataclasses.replace(responder.sampling, seed=1)
        responder.conversation = copy.deepcopy(after_reply)
        responder.conversation.last_activity = time.monotonic()
        # As the reply left it: the history in the KV cache, and its compression starting.
        await llm_worker.run(chat.forget_cache)
        await llm_worker.run(chat.prefill, chat.prompt_tokens(after_reply.messages(), False))
        responder.compress_in_background()
        asked = clock.now()
        if design == "waits":
            await responder.settled()
        await responder.respond(follow_up)
        await responder.settled()
        first_tokens = [e["t"] for e in tracer.events if e["event"] == "llm_first_token"]
        result[design] = {
            "first_token_s": round(first_tokens[-1] - asked, 4),
            "interrupted": sum(e["event"] == "history_compression_interrupted" for e in tracer.events),
            "compressed": sum(e["event"] == "history_compressed" for e in tracer.events),
        }
    result["ratio"] = _ratio(result["interrupts"]["first_token_s"], result["waits"]["first_token_s"])
    return result


async def _cold_first_tokens(engines: Engines, prompts: list[list[int]]) -> list[tuple[float, int]]:
    """Seconds to the first token of each prompt with the KV cache cleared, and the tokens llama.cpp evaluated."""
    chat, llm_worker = engines.chat, engines.llm_worker
    assert chat is not None and llm_worker is not None
    sampling = Sampling.from_config(engines.config.llm)
    results = []
    for tokens in prompts:
        await llm_worker.run(chat.forget_cache)
        before = await llm_worker.run(_prompt_tokens_counted, chat)
        started = time.perf_counter()
        stream = iterate_in_worker(llm_worker, lambda tokens=tokens: chat.stream(tokens, sampling))
        async with contextlib.aclosing(stream):
            await anext(stream)
        seconds = time.perf_counter() - started
        results.append((seconds, await llm_worker.run(_prompt_tokens_counted, chat) - before))
    return results


async def _timed_async(work) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await work
    return time.perf_counter() - started, result


# ChatModel has no public way to read llama.cpp's own counters; this reaches into it, on the LLM
# worker, and only the benchmark uses it.


def _prompt_tokens_counted(chat: ChatModel) -> int:
    """llama.cpp's own count of prompt tokens evaluated in batches (a lone re-evaluated token counts elsewhere)."""
    import llama_cpp

    return int(llama_cpp.llama_perf_context(chat._llama._ctx.ctx).n_p_eval)


# Listening cost and the machine.


def _listening_cpu_percent(engines: Engines, audio: AudioChunk) -> float:
    """CPU used by the whole process while it listens in real time, as % of one core."""

    cpu_before, wall_before = time.process_time(), time.monotonic()
    asyncio.run(_hear_in_real_time(engines, audio, VOICEBOT))
    return round(100 * (time.process_time() - cpu_before) / (time.monotonic() - wall_before), 2)


def _seconds_since_process_start() -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    return uptime_s - started_ticks / ticks


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 3)


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": _median(values),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "values": [round(v, 4) for v in values],
    }


def _summaries(rows: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    return {name: _summary([row[name] for row in rows]) for name in rows[0]}


def _machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("model name", "Model")):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}


# Reports.


def format_table(results: dict[str, Any]) -> str:
    """The results for people."""
    lines = [
        f"voicebot bench: profile {results['profile']}, {results['turns']} turns, medians (min–max)",
        "",
        f"{'stage':38} " + " ".join(f"{heading:>22}" for _, heading in DESIGNS),
    ]
    for name, label in STAGES.items():
        lines.append(f"{label:38} " + " ".join(f"{_cell(results[key][name]):>22}" for key, _ in DESIGNS))
    lines += ["", *_headline_lines(results)]
    return "\n".join(lines)


def _headline_lines(results: dict[str, Any]) -> list[str]:
    floor = results["floor_stages"]
    barge = results["barge_in"]
    reaction = barge["reaction_s"]
    multi = results["multi_turn"]
    early = results["false_early_starts"]
    lines = [
        f"first reply audio after end of speech  {results['first_audio_s']:.3f} s",
        f"endpoint decided after end of speech   {results['endpoint_delay_s']:.3f} s "
        "(the floor: first audio cannot come sooner)",
        f"first audio − endpoint decided         {results['overhead_after_endpoint_s']:.3f} s "
        "(the pipeline's own overhead)",
        f"streaming / sequential first audio     {results['streaming_over_sequential']} "
        "against the baseline on every core "
        f"({results['streaming_over_sequential_voicebot_cores']} on voicebot's cores; "
        f"streaming without early start: {results['streaming_only_over_sequential']})",
        f"overhead against the old floor         {results['overhead_vs_floor']} (floor {results['floor_s']:.3f} s = "
        + " + ".join(f"{k.removesuffix('_s')} {v['median']:.3f}" for k, v in floor.items() if k != "total_s")
        + ")",
    ]
    if reaction:
        lines.append(
            f"barge-in: output silent {_ms_range(reaction)} after the wake event, "
            f"{_ms_range(barge['wake_end_to_silent_s'])} after the spoken wake word "
            f"({barge['stopped_playback']} of {barge['clips']} clips); "
            f"second question answered in {barge['second_question_answered']}"
        )
    else:
        lines.append(f"barge-in: no clip stopped a reply ({barge['barged_in']} of {barge['clips']} barged in)")
    lines.append(
        f"false early starts: {early['dropped']} of {early['early_starts']} early starts dropped, "
        f"in {early['turns_with_a_drop']} turns"
    )
    lines.append("multi-turn, prompt tokens evaluated / first token (voicebot | cache cleared):")
    for turn, row in multi["at"].items():
        lines.append(
            f"  turn {turn:>2}: {row['evaluated']:>5} | {row['baseline_evaluated']:>5} tokens, "
            f"{row['first_token_s']:.3f} | {row['baseline_first_token_s']:.3f} s"
        )
    lines += [
        f"CPU while listening: silence {results['idle_cpu_percent']}%, talk {results['talk_cpu_percent']}% of one core",
        f"peak RSS {results['peak_rss_mb']} MB, start to listening {results['startup_s']} s",
    ]
    return lines


MARKDOWN_START = "<!-- bench:start -->"
MARKDOWN_END = "<!-- bench:end -->"


def read_markdown_page(path: Path) -> str:
    """The page whose results block the benchmark fills in; checked before a long run, not after."""
    try:
        page = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VoicebotError(f"cannot read {path}: {error.strerror}") from None
    if MARKDOWN_START not in page or MARKDOWN_END not in page:
        raise VoicebotError(f"{path} has no {MARKDOWN_START} ... {MARKDOWN_END} block to fill in")
    return page


def update_markdown(path: Path, results: dict[str, Any], command: str) -> None:
    """Replace the results block between the bench markers in a Markdown page."""
    page = read_markdown_page(path)
    head, rest = page.split(MARKDOWN_START, 1)
    _, tail = rest.split(MARKDOWN_END, 1)
    path.write_text(f"{head}{MARKDOWN_START}\n{format_markdown(results, command)}\n{MARKDOWN_END}{tail}", "utf-8")


def format_markdown(results: dict[str, Any], command: str) -> str:
    """The results as a Markdown section."""
    machine = results["machine"]
    config = results["config"]
    barge = results["barge_in"]
    reaction = barge["reaction_s"]
    early = results["false_early_starts"]
    multi = results["multi_turn"]
    floor = results["floor_stages"]
    floor_parts = " + ".join(f"{k.removesuffix('_s')} {v['median']:.3f}" for k, v in floor.items() if k != "total_s")

    def cell(key: str, stage: str) -> str:
        return _cell(results[key][stage])

    headline = [
        "| headline | value |",
        "|---|---|",
        f"| end of speech → first reply audio | **{results['first_audio_s']:.3f} s** |",
        f"| end of speech → endpoint decided (the floor: no design can answer sooner) | "
        f"{cell('stages', 'endpoint_delay_s')} s |",
        f"| endpoint decided → first reply audio (the pipeline's own overhead) | "
        f"**{cell('stages', 'overhead_after_endpoint_s')} s**; sequential on every core "
        f"{cell('sequential_stages', 'overhead_after_endpoint_s')} s |",
        "| streaming over sequential, first audio, baseline on every core | "
        f"**{results['streaming_over_sequential']}** "
        f"(streaming without early start: {results['streaming_only_over_sequential']}) |",
        "| the same, baseline on voicebot's cores (the old method) | "
        f"{results['streaming_over_sequential_voicebot_cores']} |",
        f"| first audio over the old floor (hangover + each stage alone, {results['floor_s']:.3f} s; the old method) | "
        f"{results['overhead_vs_floor']} |",
        "| barge-in: `wake` event → output silent (end of the spoken wake word → output silent) | "
        + (
            f"**{_ms_range(reaction)}** ({_ms_range(barge['wake_end_to_silent_s'])}), "
            f"{barge['stopped_playback']} of {barge['clips']} clips; second question answered in "
            f"{barge['second_question_answered']} |"
            if reaction
            else f"no clip stopped a reply ({barge['barged_in']} of {barge['clips']} barged in) |"
        ),
        f"| false early starts (dropped when speech resumed) | {early['dropped']} of {early['early_starts']} early "
        f"starts, in {early['turns_with_a_drop']} of {results['turns']} turns |",
        f"| multi-turn, median over turns 2–{multi['turns']}: prompt tokens evaluated | "
        f"**{multi['median_after_turn_1']['evaluated']:g}** against "
        f"{multi['median_after_turn_1']['baseline_evaluated']:g} "
        "with the cache cleared |",
        f"| multi-turn, median over turns 2–{multi['turns']}: first token | "
        f"**{multi['median_after_turn_1']['first_token_s']:.3f} s** against "
        f"{multi['median_after_turn_1']['baseline_first_token_s']:.3f} s (ratio {multi['first_token_ratio']}) |",
        f"| CPU while listening to silence / to talk | **{results['idle_cpu_percent']} %** / "
        f"{results['talk_cpu_percent']} % of one core |",
        f"| peak RSS (voicebot's models) | {results['peak_rss_mb']} MB |",
        f"| start to listening | {results['startup_s']} s |",
    ]
    stage_rows = [
        "| stage | " + " | ".join(heading for _, heading in DESIGNS) + " |",
        "|---|" + "---|" * len(DESIGNS),
        *(f"| {label} | " + " | ".join(cell(key, name) for key, _ in DESIGNS) + " |" for name, label in STAGES.items()),
    ]
    turn_rows = [
        "| # | wake word | question | pauses put in | early starts (dropped) | "
        + " | ".join(f"first audio, {heading}" for _, heading in DESIGNS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(DESIGNS),
    ]
    for index, turn in enumerate(results["turn_details"], start=1):
        asked = turn["question"] + ("" if turn["speaker"] == "piper" else f" ({turn['speaker']}, a person)")
        wake = "Piper" if turn["wake"] == "piper" else f"{turn['wake']} (a person)"
        cut = " (cut at a pause)" if turn["cut_at_a_pause"] else ""
        turn_rows.append(
            f"| {index} | {wake} | {asked}{cut} | {turn['pauses']} | "
            f"{turn['early_starts']['started']} ({turn['early_starts']['dropped']}) | "
            + " | ".join(f"{turn['first_audio_s'][key]:.3f}" for key, _ in DESIGNS)
            + " |"
        )
    multi_rows = [
        "| turn | history turns | prompt tokens | evaluated: voicebot (llama.cpp's count) | evaluated: cache cleared | "
        "first token: voicebot | first token: cache cleared |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {row['turn']} | {row['history_turns']}{' + summary' if row['summary'] else ''} | "
            f"{row['prompt_tokens']} | "
            f"{row['evaluated']} ({row['evaluated_llama']}) | {row['baseline_evaluated']} | "
            f"{row['first_token_s']:.3f} s | {row['baseline_first_token_s']:.3f} s |"
            for row in multi["at"].values()
        ),
    ]
    barge_rows = [
        "| wake word | long question | wake word into the reply | wake event → output silent | "
        "end of the spoken wake word → output silent | second question answered |",
        "|---|---|---|---|---|---|",
    ]
    for row in barge["rows"]:
        wake = "Piper" if row["wake"] == "piper" else f"{row['wake']} (a person)"
        into = "–" if row["wake_into_reply_s"] is None else f"{row['wake_into_reply_s']:.2f} s"
        silent = "not speaking" if row["reaction_s"] is None else f"{row['reaction_s'] * 1000:.0f} ms"
        from_speech = "–" if row["wake_end_to_silent_s"] is None else f"{row['wake_end_to_silent_s'] * 1000:.0f} ms"
        answered = "yes" if row["second_question_answered"] else "no"
        barge_rows.append(f"| {wake} | {row['question']} | {into} | {silent} | {from_speech} | {answered} |")
    work = early["work_thrown_away_s"]
    early_line = (
        f"Each dropped early start had run {early['ran_before_drop_s']:.2f} s (median) when speech resumed; "
        f"it had used {work['asr']:.2f} s of ASR, {work['llm']:.2f} s of LLM and {work['tts']:.2f} s of TTS "
        "worker time, "
        f"and the workers were busy with it for {early['busy_after_drop_s']:.2f} s after the drop. "
        "Endpoint decided → first audio on turns with a dropped early start: "
        f"{_seconds(early['overhead_after_endpoint_s']['with_a_drop'])}; on the others: "
        f"{_seconds(early['overhead_after_endpoint_s']['without'])}."
        if early["dropped"]
        else "No early start was dropped."
    )
    recall = multi["recall"]
    compressions = "; ".join(
        f"{c['method']} of {c['turns']} turns, {c['tokens_before']} → {c['tokens_after']} tokens, "
        f"{c['tokens_evaluated']} evaluated"
        for c in multi["compressions"]
    )
    longest_wait_s = max(row["compression_wait_s"] for row in multi["rows"])
    multi_notes = [
        f"History compressed {len(multi['compressions'])} times"
        + (f" ({compressions})" if compressions else "")
        + f"; the longest wait for a compression before the next question was {longest_wait_s:.2f} s."
    ]
    quick = multi.get("quick_follow_up")
    if quick:
        multi_notes.append(
            f"A follow-up asked the moment the reply that set off a compression ended (“{quick['follow_up']}”): "
            f"first token {quick['interrupts']['first_token_s']:.2f} s after asking, interrupting the compression "
            f"(which then ran after its reply), against {quick['waits']['first_token_s']:.2f} s waiting for it; "
            f"ratio {quick['ratio']:.2f}."
        )
    if recall:
        multi_notes.append(
            f"Recall at turn {multi['turns']} (\u201c{recall['question']}\u201d, expecting "
            f"{', '.join(recall['expected'])}): \u201c{recall['answer']}\u201d; recalled: "
            f"{', '.join(recall['recalled']) or 'nothing'}."
        )
    recordings = (
        "Real recordings from `tests/data`."
        if results["recordings"]
        else "**The recordings in tests/data were not found (installed without the repository), so the turns "
        "with real people were left out.**"
    )
    return "\n".join(
        [
            f"Measured on {machine['cpu']} ({machine['cores']} cores, {machine['machine']}, "
            f"Python {machine['python']}), profile `{results['profile']}`, {results['turns']} reference turns. "
            f"voicebot's LLM on cores {config['llm.cores']}, TTS on cores {config['tts.cores']}; the sequential "
            f"baseline's LLM and TTS on cores {config['sequential llm.cores']}. {recordings} "
            "Seconds, median (min–max).",
            "",
            "    " + command,
            "",
            *headline,
            "",
            "#### Stages, by design",
            "",
            *stage_rows,
            "",
            f"Old floor, each stage alone: {floor_parts} = {results['floor_s']:.3f} s."
            + (
                f" {results['questions_cut_at_a_pause']} question(s) were cut at a pause "
                "and are left out of the medians."
                if results["questions_cut_at_a_pause"]
                else ""
            ),
            "",
            "#### Each reference turn",
            "",
            *turn_rows,
            "",
            early_line,
            "",
            "#### Barge-in",
            "",
            *barge_rows,
            "",
            f"#### One conversation of {multi['turns']} turns (text only, as `voicebot chat`)",
            "",
            *multi_rows,
            "",
            "\n\n".join(multi_notes),
        ]
    )


def _ms_range(summary: dict[str, Any]) -> str:
    return f"{summary['median'] * 1000:.0f} ms ({summary['min'] * 1000:.0f}–{summary['max'] * 1000:.0f})"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} s"


def _cell(summary: dict[str, Any]) -> str:
    return f"{summary['median']:.3f} ({summary['min']:.2f}–{summary['max']:.2f})"


def plot_turn(
    turn: ReferenceTurn, streaming: list[dict[str, Any]], sequential: list[dict[str, Any]], path: Path
) -> None:
    """A timeline of one turn, voicebot above the sequential baseline: each stage's span and where audio started."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VoicebotError(
            "--plot needs matplotlib: pip install 'voicebot[bench]' (or pip install matplotlib)"
        ) from None

    figure, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    designs = (
        (axes[0], streaming, "voicebot: early start and streaming"),
        (axes[1], sequential, "sequential baseline, every core"),
    )
    # Show the turn up to a little after the later first audio; long answers play on past the edge.
    right = max(_first(events, "playback_start")["t"] for _, events, _ in designs) + 1.0
    for axis, events, title in designs:
        spans = _spans(turn, events)
        for row, (_, start, end, colour) in enumerate(spans):
            axis.barh(row, max(min(end, right) - start, 0.01), left=start, color=colour, height=0.6)
            label = f"{end - start:.2f} s" + (" →" if end > right else "")
            axis.text(min(end, right - 0.45) + 0.03, row, label, va="center", fontsize=8)
        axis.set_yticks(range(len(spans)), [s[0] for s in spans], fontsize=8)
        axis.invert_yaxis()
        first_audio = _first(events, "playback_start")["t"]
        axis.axvline(turn.speech_end_s, color="black", linestyle=":", linewidth=1)
        axis.axvline(first_audio, color="red", linewidth=1.5)
        axis.set_xlim(turn.speech_start_s - 0.3, right)
        title += f": first reply audio {first_audio - turn.speech_end_s:.2f} s after end of speech"
        axis.set_title(title, fontsize=10)
    axes[1].set_xlabel("seconds since the input started (dotted: end of speech; red: first reply audio)")
    figure.suptitle(f"One turn: \u201c{turn.question}\u201d", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _spans(turn: ReferenceTurn, events: list[dict[str, Any]]) -> list[tuple[str, float, float, str]]:
    speech_end = _first(events, "speech_end")
    decided_at = speech_end["t"] + speech_end["endpoint_delay_s"]
    transcript = _first(events, "transcript")
    transcript_at = transcript["t"]
    first_sentence_at = _first(events, "sentence")["t"]
    return [
        ("question spoken", turn.speech_start_s, turn.speech_end_s, "#999999"),
        ("endpointing", turn.speech_end_s, decided_at, "#8c6bb1"),
        ("ASR", transcript_at - transcript["asr_s"], transcript_at, "#2b8cbe"),
        ("LLM to 1st sentence", transcript_at, first_sentence_at, "#41ab5d"),
        ("LLM whole answer", transcript_at, _first(events, "llm_done")["t"], "#a1d99b"),
        ("TTS 1st audio", first_sentence_at, _first(events, "tts_first_audio")["t"], "#fd8d3c"),
        ("playback", _first(events, "playback_start")["t"], _first(events, "playback_end")["t"], "#e31a1c"),
    ]


def options_from(
    turns: int, short: bool, json_path: str | None, plot_path: str | None, markdown_path: str | None
) -> BenchOptions:
    """Options from the command line; --short is CI's quick check that the benchmark works."""
    options = BenchOptions(
        turns=turns,
        json=Path(json_path) if json_path else None,
        plot=Path(plot_path) if plot_path else None,
        markdown=Path(markdown_path) if markdown_path else None,
    )
    if short:
        return dataclasses.replace(options, turns=1, idle_seconds=3.0, barge_in_clips=1, conversation_turns=5)
    return options
