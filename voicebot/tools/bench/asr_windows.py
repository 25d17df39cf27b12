"""Whisper's window in the same run as the turns. The multilingual base with asr.language auto (the pi profile's
set-up) hears the reference turns' questions and real Mandarin as voicebot heard them before (faster-whisper's
transcribe: a 30-s pass to detect the language, another to decode), in one 30-s pass, and in one pass of the
window sized to the question; the bundled tiny.en hears the questions in its 30-s window (its `auto`) and in the
10-s floor it leaves alone. python -m voicebot.tools.bench_asr measures more sets, models and memory
(docs/models.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

from voicebot.asr import ChineseScript, Transcript
from voicebot.config import Config
from voicebot.models.paths import resolve_asr
from voicebot.tools.bench_asr import TODAY, ModelUnderTest, error_rate, measure_model, utterance_sets


def asr_windows(config: Config, rounds: int) -> dict[str, Any]:
    """Median ASR time per utterance, error rate and agreement, each way, `rounds` times interleaved."""
    sets = utterance_sets(config, espeak=False)
    bundled = dataclasses.replace(config, profile="bundled", models=dataclasses.replace(config.models, asr=None))
    base_config = dataclasses.replace(bundled, asr=dataclasses.replace(config.asr, language="auto"))
    tiny_config = dataclasses.replace(bundled, asr=dataclasses.replace(config.asr, language="en"))
    base = ModelUnderTest("base", resolve_asr(base_config), "auto")
    tiny = ModelUnderTest("tiny.en", resolve_asr(tiny_config), "en")
    heard = {name: sets[name] for name in ("en-turns", "zh-real") if name in sets}
    base_rows = _rows(measure_model(base, base_config, heard, ["auto", 30], rounds, memory=False))
    tiny_rows = _rows(measure_model(tiny, tiny_config, {"en-turns": sets["en-turns"]}, [10, 30], rounds, memory=False))
    turns = base_rows["en-turns"]
    results: dict[str, Any] = {
        "rounds": rounds,
        "reference_turns": {
            "model": "base, asr.language auto",
            "utterances": turns["auto"]["utterances"],
            "sized_s": turns["auto"]["median_s"],
            "window_30_s": turns["30"]["median_s"],
            "today_two_passes_s": turns[TODAY]["median_s"],
            "sized_over_30": turns["auto"]["ratio_to_30s"],
            "sized_over_today": turns["auto"]["ratio_to_today"],
            "same_words": turns["auto"]["same_words_as_30s"],
            "wer_sized": turns["auto"]["error_rate"],
            "wer_30": turns["30"]["error_rate"],
        },
        "tiny_en": {
            "utterances": tiny_rows["en-turns"]["10"]["utterances"],
            "window_10_s": tiny_rows["en-turns"]["10"]["median_s"],
            "window_30_s": tiny_rows["en-turns"]["30"]["median_s"],
            "same_words_in_10": tiny_rows["en-turns"]["10"]["same_words_as_30s"],
        },
        "mandarin": None,
    }
    if "zh-real" in base_rows:
        sized, today = base_rows["zh-real"]["auto"], base_rows["zh-real"][TODAY]
        # The fair baseline: today's transcripts converted to Simplified as well, so the script is not counted.
        simplified = ChineseScript("simplified")
        today_simplified = [
            (t["said"], simplified(Transcript(t["heard"], t["language"])).text) for t in today["transcripts"]
        ]
        results["mandarin"] = {
            "model": "base, asr.language auto",
            "utterances": sized["utterances"],
            "sized_one_pass_s": sized["median_s"],
            "today_two_passes_s": today["median_s"],
            "sized_over_today": sized["ratio_to_today"],
            "cer_sized": sized["error_rate"],
            "cer_today": today["error_rate"],
            "cer_today_simplified": round(error_rate(today_simplified, "zh"), 1),
            "languages_wrong": sized["languages_wrong"],
            "heard": [t["heard"] for t in sized["transcripts"]],
        }
    return results


def _rows(measured: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The measurement's rows by set, then by way."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for row in measured["rows"]:
        rows.setdefault(row["set"], {})[row["way"]] = row
    return rows
