"""Shared fixtures: real recordings, synthesised speech, and test WAVs built from them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voicebot.audio import INPUT_RATE_HZ, AudioChunk, read_wav, write_wav

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
TIMEOUT_S = 180


def data_clip(name: str) -> Path:
    """A real recording kept in tests/data (its README gives each one's source, licence and transcript)."""
    path = DATA / name
    if not path.is_file():
        kept = ", ".join(sorted(p.name for p in DATA.iterdir() if p.suffix != ".md"))
        pytest.fail(f"no recording {name} in {DATA}; the recordings kept there are: {kept}")
    return path


def espeak(text: str, folder: Path, voice: str = "en-us", speed: int = 160) -> Path:
    """Speech synthesised by espeak-ng, as a WAV file."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng); .ci/run installs it")
    path = folder / f"espeak_{abs(hash((text, voice, speed)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, timeout=60)
    return path


def build_wav(path: Path, parts: list[Path | float]) -> Path:
    """Join WAV files and silences (given in seconds) into one 16 kHz mono WAV."""
    pieces = []
    for part in parts:
        if isinstance(part, (int, float)):
            pieces.append(np.zeros(int(part * INPUT_RATE_HZ), np.float32))
        else:
            pieces.append(read_wav(part).resampled(INPUT_RATE_HZ).samples)
    write_wav(path, AudioChunk(np.concatenate(pieces), INPUT_RATE_HZ))
    return path


def run_voicebot(*args: str, timeout: float = TIMEOUT_S, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `voicebot` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def trace_events(path: Path) -> list[dict]:
    """The events a running voicebot has written to its --trace file so far (a line still being written is left out)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def named(events: list[dict], name: str) -> list[dict]:
    """The events called `name`, in order."""
    return [event for event in events if event["event"] == name]


def speech_span(path: Path, level: float = 0.02) -> tuple[float, float]:
    """Seconds from the start of the file to the first and last sample louder than `level`."""
    audio = read_wav(path)
    loud = np.flatnonzero(np.abs(audio.samples) > level)
    return loud[0] / audio.rate_hz, (loud[-1] + 1) / audio.rate_hz


@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory):
    """Timers, lists and the volume that tests set are kept in a folder of the test run's (for every voicebot the
    tests start, too), never in the home of whoever runs them. Tests of that state pass intents.state_dir."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    os.environ.pop("STATE_DIRECTORY", None)


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    """A folder for synthesised test speech."""
    return tmp_path_factory.mktemp("speech")


def engines_fixture(settings: dict, stages: set[str], params: list | None = None, ids=None):
    """A module-scoped fixture of Engines loaded from the bundled profile with `settings`, for `stages`.

    With `params`, `settings` is a function of the param, and the fixture yields (param, engines).
    """
    from voicebot.config import config_from_dict
    from voicebot.engines import Engines
    from voicebot.models.paths import resolve_models

    @pytest.fixture(scope="module", params=params, ids=ids)
    def engines(request):
        param = getattr(request, "param", None)
        chosen = settings(param) if params is not None else settings
        config = config_from_dict({"profile": "bundled", **chosen})
        wanted = frozenset(stages)
        loaded = Engines.load(config, resolve_models(config, wanted), wanted)
        yield (param, loaded) if params is not None else loaded
        loaded.close()

    return engines


@pytest.fixture(scope="module")
def llm_worker():
    """A worker thread for a test's own ChatModel, pinned to the last core as llm.cores: auto would be."""
    from voicebot.runtime.threads import PinnedWorker, available_cores

    worker = PinnedWorker("llm-test", available_cores()[-1:])
    yield worker
    worker.close()


def bundled_chat(worker, **llm_settings):
    """The bundled SmolLM2 as a ChatModel on `worker`, greedy and seeded unless `llm_settings` say otherwise."""
    from voicebot.config import LlmConfig, config_from_dict
    from voicebot.llm import ChatModel
    from voicebot.models.paths import resolve_llm

    config = LlmConfig(**{"seed": 1, "temperature": 0.0, **llm_settings})
    return ChatModel(resolve_llm(config_from_dict({"profile": "bundled"})), config, worker)
