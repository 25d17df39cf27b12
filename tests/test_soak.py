"""The soak script in its short mode: 40 spoken turns in one process, memory, descriptors and threads flat."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

from voicebot.tools.soak import SETTLED_AFTER_TURNS, Sample, verdict


def test_forty_turns_in_one_process_leave_memory_files_and_threads_flat(tmp_path):
    figures = tmp_path / "soak.json"

    result = subprocess.run(
        [sys.executable, "-m", "voicebot.tools.soak", "--turns", "40", "--set", "profile=bundled", "--json", str(figures)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    soak = json.loads(figures.read_text())
    print(result.stdout)
    assert soak["turns_ended"] == 40 and soak["turn_end_reasons"] == {"answered": 40}
    assert soak["rss_growth_after_settling"] < 0.05
    assert soak["fds"]["last"] == soak["fds"][f"turn_{SETTLED_AFTER_TURNS}"]
    assert soak["threads"]["last"] == soak["threads"][f"turn_{SETTLED_AFTER_TURNS}"]
    assert len(soak["samples"]) == 40 and soak["passed"]


def steady(turns: int, rss_mb=900.0, fds=15, threads=11, leak_mb=0.0, leak_fd_at=None) -> list[Sample]:
    return [
        Sample(turn, rss_mb + leak_mb * turn, fds + (1 if leak_fd_at and turn >= leak_fd_at else 0), threads)
        for turn in range(1, turns + 1)
    ]


def test_the_verdict_fails_a_leak_of_memory_or_descriptors():
    assert verdict(steady(60), 60, {"answered": 60})["passed"]
    assert not verdict(steady(60, leak_mb=2.0), 60, {"answered": 60})["passed"]  # 80 MB over 40 turns: 8.7 %
    assert not verdict(steady(60, leak_fd_at=50), 60, {"answered": 60})["passed"]
    assert not verdict(steady(60), 60, {"answered": 40, "error": 20})["passed"]
