"""`voicebot bench --short` works end to end. It checks the report's shape, never its timings."""

from __future__ import annotations

import json

from conftest import run_voicebot

TOP_LEVEL = [
    "first_audio_s",
    "streaming_over_sequential",
    "overhead_vs_floor",
    "idle_cpu_percent",
    "peak_rss_mb",
    "startup_s",
]


def test_short_bench_reports_every_figure(tmp_path):
    report, plot = tmp_path / "bench.json", tmp_path / "turn.png"

    result = run_voicebot(
        "bench", "--set", "profile=bundled", "--short", "--json", str(report), "--plot", str(plot), timeout=600
    )

    assert result.returncode == 0, result.stderr
    results = json.loads(report.read_text())
    for key in TOP_LEVEL:
        assert isinstance(results[key], (int, float)) and results[key] > 0, key
    assert results["turns"] == 1
    for stages in ("stages", "sequential_stages"):
        assert set(results[stages]) >= {
            "wake_delay_s",
            "endpoint_delay_s",
            "asr_s",
            "llm_first_token_s",
            "first_audio_s",
        }
    assert results["answers"][0].strip()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert "streaming / sequential first audio" in result.stdout
