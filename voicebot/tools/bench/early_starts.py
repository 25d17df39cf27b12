"""False early starts: answers started at a pause and dropped when speech resumed, and the work they threw away.

The decisions come from the run's trace (`early_start`, `early_start_dropped`, `speech_end`), and the
work from the calls every stage's worker reported during the run, the LLM's scheduler's included.
"""

from __future__ import annotations

from typing import Any

from voicebot.tools.bench.measure import median
from voicebot.tools.bench.realtime import Run
from voicebot.tools.bench.turns import ReferenceTurn

# The workers that answer a question; the listener's runs on every frame, early start or not.
ANSWER_STAGES = ("asr", "llm", "tts")
DECISIONS = frozenset({"early_start", "early_start_dropped", "speech_end"})


def _decisions(run: Run) -> list[tuple[str, float, dict[str, Any]]]:
    """(event, clock time it was decided, the event), in the order the pipeline decided them."""
    decided = []
    for event in run.events:
        if event["event"] in DECISIONS:
            # speech_end is stamped with where speech ended; it was decided endpoint_delay_s later.
            at = event["t"] + event.get("endpoint_delay_s", 0.0)
            decided.append((event["event"], at, event))
    return decided


def early_starts(run: Run) -> dict[str, Any]:
    """Early starts in one run, and the model work started by those dropped when speech resumed.

    A dropped early start owns every call on the asr, llm and tts workers that started from its
    `early_start` decision until the next decision that starts an answer (the next early start, or the
    end of the question).
    """
    decisions = _decisions(run)
    calls = [span for span in run.work if span.worker in ANSWER_STAGES]
    started = sum(name == "early_start" for name, _, _ in decisions)
    dropped = []
    for index, (name, decided_at, event) in enumerate(decisions):
        if name != "early_start":
            continue
        later = decisions[index + 1 :]
        if not later or later[0][0] != "early_start_dropped":
            continue
        resumed_at = later[0][1]
        until = next((at for kind, at, _ in later[1:] if kind != "early_start_dropped"), float("inf"))
        owned = [span for span in calls if decided_at <= span.started < until]
        work_s = dict.fromkeys(ANSWER_STAGES, 0.0)
        for span in owned:
            work_s[span.worker] += span.ended - span.started
        dropped.append(
            {
                "paused_at": round(event["paused_at"], 3),
                "ran_s": round(resumed_at - decided_at, 4),
                "work_s": {stage: round(seconds, 4) for stage, seconds in work_s.items()},
                "busy_after_drop_s": round(max([span.ended - resumed_at for span in owned] + [0.0]), 4),
            }
        )
    return {"started": started, "dropped": len(dropped), "dropped_details": dropped}


def false_early_start_summary(
    per_turn: list[dict[str, Any]], stages: list[dict[str, float]], turns: list[ReferenceTurn]
) -> dict[str, Any]:
    """How many early starts were dropped, the work they threw away, and the latency of the turns that had one."""
    details = [d for turn in per_turn for d in turn["dropped_details"]]
    with_drop = [i for i, turn in enumerate(per_turn) if turn["dropped"]]
    without = [i for i, turn in enumerate(per_turn) if not turn["dropped"]]

    def overhead(indices: list[int]) -> float | None:
        return median([stages[i]["overhead_after_endpoint_s"] for i in indices]) if indices else None

    return {
        "early_starts": sum(turn["started"] for turn in per_turn),
        "dropped": len(details),
        "turns_with_a_drop": len(with_drop),
        "paused_turns": sum(turn.pauses > 0 or turn.speaker != "piper" for turn in turns),
        "work_thrown_away_s": {
            stage: median([d["work_s"][stage] for d in details]) if details else None for stage in ANSWER_STAGES
        },
        "ran_before_drop_s": median([d["ran_s"] for d in details]) if details else None,
        "busy_after_drop_s": median([d["busy_after_drop_s"] for d in details]) if details else None,
        "overhead_after_endpoint_s": {"with_a_drop": overhead(with_drop), "without": overhead(without)},
    }
