"""`voicebot bench`: where each turn's time goes, against a sequential baseline and against the floor.

Reference turns are spoken by the configured Piper voice ("Hey Jarvis." then a question), so
the benchmark needs nothing but voicebot's own models. Every figure is a median over turns,
with its spread, and every comparison is made within the same run, on the same machine.

The same turns go through three designs: voicebot's (early start at the first pause, then
streaming), streaming alone, and the sequential baseline of the original chat-bot design:
wait for the end of speech, transcribe, generate the whole answer, synthesise all of it, play.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicebot.audio import INPUT_RATE_HZ, AudioChunk, Clock, WavSink, WavSource
from voicebot.chunker import SentenceChunker
from voicebot.config import Config
from voicebot.engines import Engines
from voicebot.errors import VoicebotError
from voicebot.llm import Conversation, Sampling, system_prompts
from voicebot.models import resolve_models
from voicebot.pipeline import Pipeline
from voicebot.threads import iterate_in_worker
from voicebot.trace import Tracer
from voicebot.vad import PRE_ROLL_S, TAIL_S

log = logging.getLogger(__name__)

QUESTIONS = (
    "What is the capital of France?",
    "How do plants make food?",
    "Why is the sky blue?",
    "What causes rain?",
    "How far away is the moon?",
    "Give me a tip for cooking rice.",
    "Why do leaves change colour in autumn?",
)
TALK = (
    "I moved the lamp to the other side of the room because the light was too harsh in the evening. "
    "The bulbs in the hallway are warmer, and I think they look better with the new curtains. "
    "Tomorrow I will paint the shelf by the window, if the weather stays dry and the shop has the colour I want. "
    "My sister says the kitchen needs brighter lights for cooking, and she is probably right about that. "
)
BENCH_SEED = 1
LEAD_IN_S = 1.0
GAP_AFTER_WAKE_S = 0.3
TRAILING_SILENCE_S = 2.5
SPEECH_LEVEL = 0.02


@dataclass(frozen=True)
class ReferenceTurn:
    """A spoken wake word and question, and where in the input each one ends."""

    question: str
    audio: AudioChunk
    wake_end_s: float
    speech_start_s: float
    speech_end_s: float


@dataclass(frozen=True)
class BenchOptions:
    """What to run."""

    turns: int = 5
    idle_seconds: float = 60.0
    plot: Path | None = None
    json: Path | None = None
    markdown: Path | None = None


STAGES = {
    "wake_delay_s": "wake word end → wake",
    "endpoint_delay_s": "end of speech → speech_end decided",
    "asr_s": "ASR",
    "llm_first_token_s": "LLM to first token",
    "llm_first_sentence_s": "LLM to first sentence",
    "tts_first_audio_s": "TTS to first audio",
    "first_audio_s": "end of speech → first reply audio",
    "traced_latency_s": "trace: speech_end → playback_start",
    "answer_spoken_s": "end of speech → whole answer spoken",
}


def run_bench(config: Config, options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark and return its results (also written to options.json and options.plot)."""
    if config.llm.seed is None:
        # The same seed for both pipelines, so the streaming and sequential runs say the same answers.
        config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, seed=BENCH_SEED))
    engines = Engines.load(config, resolve_models(config))
    try:
        engines.warm_up()
        startup_s = _seconds_since_process_start()
        turns = _reference_turns(engines, config, options.turns)
        streaming = [asyncio.run(_run_turn(engines, turn, VOICEBOT)) for turn in turns]
        sequential = [asyncio.run(_run_turn(engines, turn, SEQUENTIAL)) for turn in turns]
        streaming_only = [asyncio.run(_run_turn(engines, turn, STREAMING_ONLY)) for turn in turns]
        floors = [_floor(engines, config, turn, events) for turn, events in zip(turns, streaming, strict=True)]
        idle_cpu = _listening_cpu_percent(
            engines, AudioChunk(np.zeros(int(options.idle_seconds * INPUT_RATE_HZ), np.float32), INPUT_RATE_HZ)
        )
        talk_cpu = _listening_cpu_percent(engines, _talk(engines, options.idle_seconds))
    finally:
        engines.close()
    streaming_stages = [_stage_times(turn, events) for turn, events in zip(turns, streaming, strict=True)]
    sequential_stages = [_stage_times(turn, events) for turn, events in zip(turns, sequential, strict=True)]
    streaming_only_stages = [_stage_times(turn, events) for turn, events in zip(turns, streaming_only, strict=True)]
    first_audio = _median([s["first_audio_s"] for s in streaming_stages])
    sequential_first_audio = _median([s["first_audio_s"] for s in sequential_stages])
    streaming_only_first_audio = _median([s["first_audio_s"] for s in streaming_only_stages])
    floor = _median([f["total_s"] for f in floors])
    results = {
        "profile": config.profile,
        "turns": len(turns),
        "first_audio_s": first_audio,
        "sequential_first_audio_s": sequential_first_audio,
        "streaming_over_sequential": _ratio(first_audio, sequential_first_audio),
        "streaming_only_first_audio_s": streaming_only_first_audio,
        "streaming_only_over_sequential": _ratio(streaming_only_first_audio, sequential_first_audio),
        "floor_s": floor,
        "overhead_vs_floor": _ratio(first_audio, floor),
        "idle_cpu_percent": idle_cpu,
        "talk_cpu_percent": talk_cpu,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "startup_s": round(startup_s, 3),
        "barge_in_reaction_s": None,
        "stages": _summaries(streaming_stages),
        "sequential_stages": _summaries(sequential_stages),
        "streaming_only_stages": _summaries(streaming_only_stages),
        "floor_stages": _summaries(floors),
        "questions": [turn.question for turn in turns],
        "answers": [" ".join(e["text"] for e in events if e["event"] == "sentence") for events in streaming],
        "machine": _machine(),
        "config": {
            "vad.hangover_s": config.vad.hangover_s,
            "llm.cores": list(engines.llm_worker.cores) if engines.llm_worker else None,
            "tts.cores": list(engines.tts_worker.cores) if engines.tts_worker else None,
            "llm.max_reply_tokens": config.llm.max_reply_tokens,
        },
    }
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if options.plot:
        # The turn with the longest answer shows best what overlapping the stages buys.
        longest = max(range(len(turns)), key=lambda i: sum(e["event"] == "sentence" for e in streaming[i]))
        plot_turn(turns[longest], streaming[longest], sequential[longest], options.plot)
    return results


def _reference_turns(engines: Engines, config: Config, count: int) -> list[ReferenceTurn]:
    wake_phrase = Path(config.wake.models[0]).stem.rsplit("_v", 1)[0].replace("_", " ").title() + "."
    wake = _speak(engines, wake_phrase)
    turns = []
    for index in range(count):
        question = QUESTIONS[index % len(QUESTIONS)]
        asked = _speak(engines, question)
        parts = [_silence(LEAD_IN_S), wake, _silence(GAP_AFTER_WAKE_S), asked, _silence(TRAILING_SILENCE_S)]
        wake_end = LEAD_IN_S + _speech_span(wake)[1]
        question_at = LEAD_IN_S + len(wake) / INPUT_RATE_HZ + GAP_AFTER_WAKE_S
        start, end = _speech_span(asked)
        audio = AudioChunk(np.concatenate(parts), INPUT_RATE_HZ)
        turns.append(ReferenceTurn(question, audio, wake_end, question_at + start, question_at + end))
    return turns


def _speak(engines: Engines, text: str) -> np.ndarray:
    assert engines.synthesizer is not None and engines.tts_worker is not None
    chunks = engines.tts_worker.call(lambda: list(engines.synthesizer.synthesize(text)))
    return AudioChunk(np.concatenate([c.samples for c in chunks]), chunks[0].rate_hz).resampled(INPUT_RATE_HZ).samples


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * INPUT_RATE_HZ), np.float32)


def _speech_span(samples: np.ndarray) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(samples) > SPEECH_LEVEL)
    return loud[0] / INPUT_RATE_HZ, (loud[-1] + 1) / INPUT_RATE_HZ


def _talk(engines: Engines, seconds: float) -> AudioChunk:
    talk = _speak(engines, TALK)
    repeats = int(np.ceil(seconds * INPUT_RATE_HZ / len(talk)))
    return AudioChunk(np.tile(talk, repeats)[: int(seconds * INPUT_RATE_HZ)], INPUT_RATE_HZ)


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


async def _run_turn(engines: Engines, turn: ReferenceTurn, design: Design) -> list[dict[str, Any]]:
    # Every turn starts from the same LLM cache: the system prompt evaluated, the question not.
    engines.warm_up_llm()
    return await _hear_in_real_time(engines, turn.audio, design)


async def _hear_in_real_time(engines: Engines, audio: AudioChunk, design: Design) -> list[dict[str, Any]]:
    """Run the real pipeline on `audio`, fed and played at real-time pace; returns its trace."""
    assert engines.synthesizer is not None
    clock = Clock()
    tracer = Tracer(clock, keep=True)
    with tempfile.TemporaryDirectory() as folder:
        sink = WavSink(Path(folder) / "reply.wav", clock, realtime=True, rate_hz=engines.synthesizer.rate_hz)
        try:
            source = WavSource(audio, clock)
            await Pipeline(engines, source, sink, tracer, design.streaming, design.early_start).run()
        finally:
            sink.close()
    return tracer.events


def _first(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for event in events:
        if event["event"] == name:
            return event
    raise VoicebotError(f"benchmark turn has no {name!r} event; events: {[e['event'] for e in events]}")


def _stage_times(turn: ReferenceTurn, events: list[dict[str, Any]]) -> dict[str, float]:
    speech_end = _first(events, "speech_end")
    decided_at = speech_end["t"] + speech_end["endpoint_delay_s"]
    transcript = _first(events, "transcript")
    transcript_at = transcript["t"]
    first_sentence_at = _first(events, "sentence")["t"]
    return {
        "wake_delay_s": _first(events, "wake")["t"] - turn.wake_end_s,
        "endpoint_delay_s": decided_at - turn.speech_end_s,
        "asr_s": transcript["asr_s"],
        "llm_first_token_s": _first(events, "llm_first_token")["t"] - transcript_at,
        "llm_first_sentence_s": first_sentence_at - transcript_at,
        "tts_first_audio_s": _first(events, "tts_first_audio")["t"] - first_sentence_at,
        "first_audio_s": _first(events, "playback_start")["t"] - turn.speech_end_s,
        "traced_latency_s": _first(events, "playback_start")["t"] - speech_end["t"],
        "answer_spoken_s": _first(events, "playback_end")["t"] - turn.speech_end_s,
    }


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


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator > 0 else None


def _summaries(rows: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "median": _median([row[name] for row in rows]),
            "min": round(min(row[name] for row in rows), 4),
            "max": round(max(row[name] for row in rows), 4),
            "values": [round(row[name], 4) for row in rows],
        }
        for name in rows[0]
    }


def _machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("model name", "Model")):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}


def format_table(results: dict[str, Any]) -> str:
    """The results for people."""
    lines = [
        f"voicebot bench: profile {results['profile']}, {results['turns']} turns, medians (min–max)",
        "",
        f"{'stage':40} {'voicebot':>22} {'streaming only':>22} {'sequential':>22}",
    ]
    for name, label in STAGES.items():
        cells = [_cell(results[key][name]) for key in ("stages", "streaming_only_stages", "sequential_stages")]
        lines.append(f"{label:40} " + " ".join(f"{cell:>22}" for cell in cells))
    floor = results["floor_stages"]
    lines += [
        "",
        "floor (each stage alone): "
        + ", ".join(f"{k.removesuffix('_s')} {v['median']:.3f} s" for k, v in floor.items() if k != "total_s")
        + f" = {results['floor_s']:.3f} s",
        "",
        f"first reply audio after end of speech  {results['first_audio_s']:.3f} s",
        f"streaming / sequential first audio     {results['streaming_over_sequential']}"
        f" (streaming without early start: {results['streaming_only_over_sequential']})",
        f"overhead against the floor             {results['overhead_vs_floor']}",
        f"CPU while listening: silence {results['idle_cpu_percent']}%, talk {results['talk_cpu_percent']}% of one core",
        f"peak RSS {results['peak_rss_mb']} MB, start to listening {results['startup_s']} s",
    ]
    return "\n".join(lines)


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
    rows = [
        "| stage | voicebot | streaming only | sequential |",
        "|---|---|---|---|",
    ]
    for name, label in STAGES.items():
        cells = [_cell(results[key][name]) for key in ("stages", "streaming_only_stages", "sequential_stages")]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    floor = results["floor_stages"]
    floor_parts = " + ".join(f"{k.removesuffix('_s')} {v['median']:.3f}" for k, v in floor.items() if k != "total_s")
    return "\n".join(
        [
            f"Measured on {machine['cpu']} ({machine['cores']} cores, {machine['machine']}, "
            f"Python {machine['python']}), "
            f"profile `{results['profile']}`, {results['turns']} turns, LLM on cores {results['config']['llm.cores']}, "
            f"TTS on cores {results['config']['tts.cores']}. Seconds, median (min–max).",
            "",
            "    " + command,
            "",
            "| headline | value |",
            "|---|---|",
            f"| end of speech → first reply audio | **{results['first_audio_s']:.3f} s** |",
            f"| streaming over sequential, first audio | **{results['streaming_over_sequential']}** "
            f"(streaming without early start: {results['streaming_only_over_sequential']}) |",
            f"| overhead against the floor | **{results['overhead_vs_floor']}** (floor {results['floor_s']:.3f} s) |",
            f"| CPU while listening to silence / to talk | **{results['idle_cpu_percent']} %** / "
            f"{results['talk_cpu_percent']} % of one core |",
            f"| peak RSS | {results['peak_rss_mb']} MB |",
            f"| start to listening | {results['startup_s']} s |",
            "| barge-in reaction | not built yet |",
            "",
            *rows,
            "",
            f"Floor, each stage alone: {floor_parts} = {results['floor_s']:.3f} s.",
        ]
    )


def _cell(summary: dict[str, Any]) -> str:
    return f"{summary['median']:.3f} ({summary['min']:.2f}–{summary['max']:.2f})"


def plot_turn(
    turn: ReferenceTurn, streaming: list[dict[str, Any]], sequential: list[dict[str, Any]], path: Path
) -> None:
    """A timeline of one turn, streaming above sequential: each stage's span and where audio started."""
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
        (axes[1], sequential, "sequential baseline"),
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
    return dataclasses.replace(options, turns=1, idle_seconds=3.0) if short else options
