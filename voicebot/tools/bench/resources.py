"""What voicebot costs the machine: CPU while it listens, peak memory, time to start; and which machine it was."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path

from voicebot.audio import AudioChunk
from voicebot.engines import Engines
from voicebot.tools.bench.realtime import VOICEBOT, hear_in_real_time


def listening_cpu_percent(engines: Engines, audio: AudioChunk) -> float:
    """CPU used by the whole process while it listens to `audio` in real time, as % of one core."""
    cpu_before, wall_before = time.process_time(), time.monotonic()
    asyncio.run(hear_in_real_time(engines, audio, VOICEBOT))
    return round(100 * (time.process_time() - cpu_before) / (time.monotonic() - wall_before), 2)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def seconds_since_process_start() -> float:
    """How long ago this process started, by the kernel's count."""
    ticks = os.sysconf("SC_CLK_TCK")
    started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    return uptime_s - started_ticks / ticks
