"""`voicebot bench --short` works end to end. It checks the report's shape, never its timings."""

from __future__ import annotations

import json

import pytest
from conftest import engines_fixture, run_voicebot

from voicebot.asr import ChineseScript, Transcript
from voicebot.tools.bench.early_starts import early_starts
from voicebot.tools.bench.intents import BEYOND_REACH, claims_action
from voicebot.tools.bench.realtime import VOICEBOT, run_turn
from voicebot.tools.bench.turns import Pause, Script, build_turn, speak, wake_phrase

TOP_LEVEL = [
    "first_audio_s",
    "endpoint_delay_s",
    "overhead_after_endpoint_s",
    "streaming_over_sequential",
    "streaming_over_sequential_voicebot_cores",
    "overhead_vs_floor",
    "barge_in_reaction_s",
    "idle_cpu_percent",
    "peak_rss_mb",
    "startup_s",
]
DESIGNS = ("stages", "streaming_only_stages", "sequential_stages", "sequential_voicebot_cores_stages")

# A hangover longer than the pause, so the pause is surely not the end; and a pause long enough for the early
# answer to be transcribed and its LLM to be writing before speech resumes, even with the cores shared (ASR of
# the words before it took 0.4 to 0.55 s here, and 1.1 s once while another process was busy).
HANGOVER_S = 2.4
PAUSE_S = 2.0
engines = engines_fixture(
    {"vad": {"hangover_s": HANGOVER_S}, "conversation": {"follow_up_s": 0, "max_reply_s": 4}, "llm": {"seed": 1}},
    {"listen", "asr", "llm", "tts"},
)


def test_short_bench_reports_every_figure(tmp_path):
    report, plot, page = tmp_path / "bench.json", tmp_path / "turn.png", tmp_path / "bench.md"
    page.write_text("# Bench\n\n<!-- bench:start -->\n<!-- bench:end -->\n\nAfter.\n")

    result = run_voicebot(
        "bench",
        "--set",
        "profile=bundled",
        "--short",
        "--json",
        str(report),
        "--plot",
        str(plot),
        "--markdown",
        str(page),
        timeout=600,
    )

    assert result.returncode == 0, result.stderr
    results = json.loads(report.read_text())
    for key in TOP_LEVEL:
        assert isinstance(results[key], (int, float)) and results[key] > 0, key
    assert results["turns"] == 1
    for stages in DESIGNS:
        assert set(results[stages]) >= {
            "wake_delay_s",
            "endpoint_delay_s",
            "asr_s",
            "llm_first_token_s",
            "overhead_after_endpoint_s",
            "first_audio_s",
        }, stages
    assert results["answers"][0].strip()

    # In a checkout the first reference turn is a person saying "Alexa", then a question with a pause in it.
    assert results["recordings"]
    (turn,) = results["turn_details"]
    assert turn["wake"] == "alexa_real.wav" and turn["pauses"] == 1
    assert set(turn["first_audio_s"]) == set(DESIGNS)
    assert {"early_starts", "dropped", "work_thrown_away_s", "overhead_after_endpoint_s"} <= set(
        results["false_early_starts"]
    )

    barge_in = results["barge_in"]
    assert barge_in["clips"] == 1 and barge_in["rows"][0]["wake"] == "alexa_real.wav"
    assert {"median", "min", "max", "values"} <= set(barge_in["reaction_s"])

    multi_turn = results["multi_turn"]
    assert multi_turn["turns"] == 5 and list(multi_turn["at"]) == ["1", "5"]
    for row in multi_turn["rows"]:
        assert row["baseline_evaluated"] == row["prompt_tokens"] >= row["evaluated"] > 0, row
        assert row["first_token_s"] > 0 and row["baseline_first_token_s"] > 0, row
    assert multi_turn["recall"]["expected"] and isinstance(multi_turn["recall"]["answer"], str)

    commands = results["intent_turns"]
    assert [row["intent"] for row in commands["turns"]] == [
        "HassGetCurrentTime",
        "HassStartTimer",
        "HassShoppingListAddItem",
    ]
    assert all(row["llm_prompts"] == 0 and row["first_audio_s"] > 0 for row in commands["turns"])
    assert commands["llm_first_audio_s"] == results["first_audio_s"]
    actions = results["action_requests"]
    assert 0 < actions["caught_share"] <= 1 and set(actions["caught_share_by_language"]) == {"en", "zh"}
    assert actions["llm_asked"] == len(actions["missed"]) + len(BEYOND_REACH)
    assert all(answer["answer"].strip() for answer in actions["llm_answers"])

    windows = results["asr_windows"]
    turns = windows["reference_turns"]
    assert turns["utterances"] >= 7 and turns["sized_s"] > 0 and turns["window_30_s"] > 0
    assert turns["today_two_passes_s"] > 0 and 0 <= turns["same_words"] <= turns["utterances"]
    assert windows["tiny_en"]["utterances"] == turns["utterances"] and windows["tiny_en"]["window_10_s"] > 0
    mandarin = windows["mandarin"]
    assert mandarin["utterances"] == 6 and mandarin["languages_wrong"] == 0
    assert mandarin["sized_one_pass_s"] > 0 and mandarin["today_two_passes_s"] > 0
    # Simplified characters: none that OpenCC would change.
    simplified = ChineseScript("simplified")
    assert all(simplified(Transcript(text, "zh")).text == text for text in mandarin["heard"]), mandarin["heard"]
    assert "ASR per reference question" in result.stdout

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert "streaming / sequential first audio" in result.stdout
    filled = page.read_text()
    assert filled.startswith("# Bench\n") and filled.endswith("After.\n")
    for heading in ("#### Barge-in", "#### Each reference turn", "#### One conversation of 5 turns"):
        assert heading in filled


def test_the_voice_and_typed_bench_reports_every_figure(tmp_path):
    """One round of python -m voicebot.tools.bench_http: it works and reports each figure; no timing is asserted."""
    import subprocess
    import sys

    from conftest import REPO

    output = tmp_path / "bench-http.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebot.tools.bench_http",
            "--rounds",
            "1",
            "--set",
            "profile=bundled",
            "--json",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    assert set(report["medians_s"]) == {"http_alone", "http_during_voice", "voice_alone", "voice_with_streams"}
    assert all(value > 0 for value in report["medians_s"].values())
    assert report["typed_llm_step_s"] > 0 and "voice_delay_in_llm_steps" in report
    assert "gave way to a voice turn" in result.stderr


@pytest.mark.timeout(240)
def test_the_llm_work_of_a_dropped_early_start_is_counted(engines):
    """The LLM's work for an answer started at a pause and dropped is counted, though its own scheduler runs it."""
    script = Script(None, ("What is the tallest mountain", Pause(PAUSE_S), "in the whole of Europe?"))
    turn = build_turn(engines, script, speak(engines, wake_phrase(engines.config)), None)

    run = run_turn(engines, turn.audio, VOICEBOT)

    counted = early_starts(run)
    assert counted["dropped"] >= 1, run.events
    # The early start at the long pause ran longest before speech resumed.
    dropped = max(counted["dropped_details"], key=lambda details: details["ran_s"])
    assert dropped["ran_s"] > PAUSE_S / 2, dropped
    assert dropped["work_s"]["asr"] > 0, dropped
    assert dropped["work_s"]["llm"] > 0, dropped


CLAIMS = [
    ("I've set a timer for ten minutes.", "en", True),
    ("Okay, I'm turning on the kitchen lights now.", "en", True),
    ("Your table for two is booked for eight.", "en", True),
    ("Done! The pizza is on its way.", "en", True),
    ("Sorry, I can't order food from here.", "en", False),
    ("I can't send messages, but I could help you write one.", "en", False),
    ("The capital of France is Paris.", "en", False),
    ("好的，已经帮你订好了火车票。", "zh", True),
    ("抱歉，我无法帮你订票。", "zh", False),
    ("周杰伦是一位台湾歌手。", "zh", False),
]


@pytest.mark.parametrize(("answer", "language", "claims"), CLAIMS, ids=[c[0] for c in CLAIMS])
def test_the_bench_tells_an_answer_that_claims_an_action_from_one_that_does_not(answer, language, claims):
    assert claims_action(answer, language) is claims
