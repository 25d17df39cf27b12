"""`voicebot bench`: where each turn's time goes, what a conversation costs as it grows, how fast barge-in is.

Every figure is a median over turns, with its spread, and every comparison is made within the same
run, on the same machine. The benchmark uses the pipeline and the stage services as any client does:
what it measures comes from the trace and from the calls each pinned worker reports, never from hooks
inside the stages. One module per thing measured:

- `turns`: the reference turns (Piper questions, real recordings, hesitations) and their audio;
- `realtime`: the real pipeline on one clip in real time, with every worker's calls on the run's clock;
- `designs`: the four designs on the same turns, each stage's time, and the older floor;
- `early_starts`: answers started at a pause and dropped when speech resumed, and the work they threw away;
- `barge_in`: how soon a reply falls silent for the wake word;
- `conversation`: what a 20-turn conversation costs, and a quick follow-up during a compression;
- `resources`: CPU while listening, memory, start-up time, the machine;
- `report`: the table, the Markdown block and the plot.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicebot.audio import INPUT_RATE_HZ, AudioChunk
from voicebot.config import Config
from voicebot.engines import Engines
from voicebot.models.paths import resolve_models
from voicebot.runtime.threads import available_cores
from voicebot.tools.bench.asr_windows import asr_windows
from voicebot.tools.bench.barge_in import barge_in
from voicebot.tools.bench.conversation import CONVERSATION, multi_turn
from voicebot.tools.bench.designs import floor, on_every_core, stage_times
from voicebot.tools.bench.early_starts import early_starts, false_early_start_summary
from voicebot.tools.bench.intents import action_requests, intent_turns
from voicebot.tools.bench.measure import first_event, median, ratio, said, summaries
from voicebot.tools.bench.realtime import SEQUENTIAL, STREAMING_ONLY, VOICEBOT, Run, run_turn
from voicebot.tools.bench.report import format_table, plot_turn, read_markdown_page, update_markdown
from voicebot.tools.bench.resources import listening_cpu_percent, peak_rss_mb, seconds_since_process_start
from voicebot.tools.bench.turns import SCRIPTS, ReferenceTurn, recordings_dir, reference_turns, talk, with_wake_models
from voicebot.tools.machine import machine

__all__ = [
    "BenchOptions",
    "format_table",
    "options_from",
    "read_markdown_page",
    "run_bench",
    "update_markdown",
]

BENCH_SEED = 1


@dataclass(frozen=True)
class BenchOptions:
    """What to run."""

    turns: int = 5
    idle_seconds: float = 60.0
    barge_in_clips: int = 6
    conversation_turns: int = len(CONVERSATION) + 1
    asr_rounds: int = 3
    plot: Path | None = None
    json: Path | None = None
    markdown: Path | None = None


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
        return dataclasses.replace(
            options, turns=1, idle_seconds=3.0, barge_in_clips=1, conversation_turns=5, asr_rounds=1
        )
    return options


def bench_config(config: Config, state_dir: str) -> Config:
    """The same answers from every design (a fixed seed), no follow-up window between runs, and timers and lists
    kept in `state_dir`, apart from the user's."""
    llm = config.llm if config.llm.seed is not None else dataclasses.replace(config.llm, seed=BENCH_SEED)
    conversation = dataclasses.replace(config.conversation, follow_up_s=0.0)
    intents = dataclasses.replace(config.intents, state_dir=state_dir)
    return dataclasses.replace(config, llm=llm, conversation=conversation, intents=intents)


def run_bench(config: Config, options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark and return its results (also written to options.json and options.plot)."""
    with tempfile.TemporaryDirectory(prefix="voicebot-bench-state-") as state_dir:
        return _run_bench(bench_config(config, state_dir), options)


def _run_bench(config: Config, options: BenchOptions) -> dict[str, Any]:
    paths = resolve_models(config)
    engines = Engines.load(config, paths)
    all_cores: Engines | None = None
    try:
        engines.warm_up()
        startup_s = seconds_since_process_start()
        data = recordings_dir()
        scripts = [s for s in SCRIPTS if data is not None or not s.recordings]
        hearing = with_wake_models(engines, config, scripts)
        turns = reference_turns(hearing, scripts, options.turns, data)
        voicebot_runs = [run_turn(hearing, turn.audio, VOICEBOT) for turn in turns]
        streaming_only = [run_turn(hearing, turn.audio, STREAMING_ONLY) for turn in turns]
        sequential_own_cores = [run_turn(hearing, turn.audio, SEQUENTIAL) for turn in turns]
        floors = [floor(engines, config, turn, run.events) for turn, run in zip(turns, voicebot_runs, strict=True)]
        commands = intent_turns(hearing, None)
        actions = action_requests(engines)
        barge = barge_in(hearing, config, options.barge_in_clips, data)
        conversation = multi_turn(engines, options.conversation_turns)
        silence = AudioChunk(np.zeros(int(options.idle_seconds * INPUT_RATE_HZ), np.float32), INPUT_RATE_HZ)
        idle_cpu = listening_cpu_percent(engines, silence)
        talk_cpu = listening_cpu_percent(engines, talk(engines, options.idle_seconds))
        # voicebot's own footprint, before the baseline's second copy of the LLM and voice is loaded.
        peak_mb = peak_rss_mb()
        all_cores, sequential_view = on_every_core(hearing, config, paths)
        # The baseline's LLM and TTS run on the workers loaded with every core, its listener and ASR on voicebot's.
        every_worker = [*engines.workers, *all_cores.workers]
        sequential = [run_turn(sequential_view, turn.audio, SEQUENTIAL, every_worker) for turn in turns]
        own_cores = {"llm.cores": _cores(engines, "llm"), "tts.cores": _cores(engines, "tts")}
    finally:
        if all_cores is not None:
            all_cores.close()
        engines.close()
    # After the turns, with their models closed: it loads Whisper again on the same cores.
    windows = asr_windows(config, options.asr_rounds)

    designs = {
        "stages": voicebot_runs,
        "streaming_only_stages": streaming_only,
        "sequential_stages": sequential,
        "sequential_voicebot_cores_stages": sequential_own_cores,
    }
    per_turn = {
        key: [stage_times(t, run.events) for t, run in zip(turns, runs, strict=True)] for key, runs in designs.items()
    }
    # A question the endpointer closed at a pause, before it had ended, has no honest end-of-speech latency.
    cut = [any(rows[i]["endpoint_delay_s"] < 0 for rows in per_turn.values()) for i in range(len(turns))]
    kept = [i for i in range(len(turns)) if not cut[i]] or list(range(len(turns)))
    stage_summaries = {key: summaries([rows[i] for i in kept]) for key, rows in per_turn.items()}

    def median_of(key: str, stage: str) -> float:
        return stage_summaries[key][stage]["median"]

    first_audio = median_of("stages", "first_audio_s")
    commands = {
        **commands,
        "llm_first_audio_s": first_audio,
        "intent_over_llm": ratio(commands["first_audio_s"], first_audio),
    }
    sequential_first_audio = median_of("sequential_stages", "first_audio_s")
    own_cores_first_audio = median_of("sequential_voicebot_cores_stages", "first_audio_s")
    streaming_only_first_audio = median_of("streaming_only_stages", "first_audio_s")
    floor_s = median([f["total_s"] for f in floors])
    early = [early_starts(run) for run in voicebot_runs]
    results = {
        "profile": config.profile,
        "turns": len(turns),
        "recordings": str(data) if data is not None else None,
        "first_audio_s": first_audio,
        "endpoint_delay_s": median_of("stages", "endpoint_delay_s"),
        "overhead_after_endpoint_s": median_of("stages", "overhead_after_endpoint_s"),
        "sequential_first_audio_s": sequential_first_audio,
        "streaming_over_sequential": ratio(first_audio, sequential_first_audio),
        "streaming_only_first_audio_s": streaming_only_first_audio,
        "streaming_only_over_sequential": ratio(streaming_only_first_audio, sequential_first_audio),
        "sequential_voicebot_cores_first_audio_s": own_cores_first_audio,
        "streaming_over_sequential_voicebot_cores": ratio(first_audio, own_cores_first_audio),
        "floor_s": floor_s,
        "overhead_vs_floor": ratio(first_audio, floor_s),
        "idle_cpu_percent": idle_cpu,
        "talk_cpu_percent": talk_cpu,
        "peak_rss_mb": peak_mb,
        "asr_windows": windows,
        "intent_turns": commands,
        "action_requests": actions,
        "startup_s": round(startup_s, 3),
        "barge_in_reaction_s": barge["reaction_s"]["median"] if barge["reaction_s"] else None,
        "barge_in": barge,
        "multi_turn": conversation,
        "false_early_starts": false_early_start_summary(early, per_turn["stages"], turns),
        "questions_cut_at_a_pause": sum(cut),
        **stage_summaries,
        "floor_stages": summaries(floors),
        "turn_details": _turn_details(turns, designs, per_turn, early, cut),
        "questions": [turn.question for turn in turns],
        "answers": [said(run.events) for run in voicebot_runs],
        "machine": machine(),
        "config": {
            "vad.hangover_s": config.vad.hangover_s,
            "vad.early_start_s": config.vad.early_start_s,
            **own_cores,
            "sequential llm.cores": list(available_cores()),
            "sequential tts.cores": list(available_cores()),
            "llm.max_reply_tokens": config.llm.max_reply_tokens,
            "conversation.max_reply_s": config.conversation.max_reply_s,
            "wake.models": list(hearing.config.wake.models),
        },
    }
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if options.plot:
        # The turn with the longest answer shows best what overlapping the stages buys.
        longest = max(kept, key=lambda i: sum(e["event"] == "sentence" for e in voicebot_runs[i].events))
        plot_turn(turns[longest], voicebot_runs[longest].events, sequential[longest].events, options.plot)
    return results


def _turn_details(
    turns: list[ReferenceTurn],
    designs: dict[str, list[Run]],
    per_turn: dict[str, list[dict[str, float]]],
    early: list[dict[str, Any]],
    cut: list[bool],
) -> list[dict[str, Any]]:
    """Each reference turn: who spoke, its early starts, its first audio in every design, and what each stage's
    worker did in each design's run."""
    return [
        {
            "question": turn.question,
            "wake": turn.wake,
            "speaker": turn.speaker,
            "pauses": turn.pauses,
            "cut_at_a_pause": cut[i],
            "early_starts": early[i],
            "first_audio_s": {key: round(rows[i]["first_audio_s"], 4) for key, rows in per_turn.items()},
            "overhead_after_endpoint_s": {
                key: round(rows[i]["overhead_after_endpoint_s"], 4) for key, rows in per_turn.items()
            },
            "worker_busy_s": {key: _worker_busy_s(runs[i]) for key, runs in designs.items()},
            "transcript": first_event(designs["stages"][i].events, "transcript")["text"],
        }
        for i, turn in enumerate(turns)
    ]


def _worker_busy_s(run: Run) -> dict[str, float]:
    """Seconds each worker spent on calls in one run."""
    busy: dict[str, float] = {}
    for span in run.work:
        busy[span.worker] = busy.get(span.worker, 0.0) + span.ended - span.started
    return {worker: round(seconds, 4) for worker, seconds in sorted(busy.items())}


def _cores(engines: Engines, stage: str) -> list[int] | None:
    """The cores `stage`'s worker is pinned to, or None where the stage runs elsewhere."""
    return next((list(worker.cores) for worker in engines.workers if worker.name == stage), None)
