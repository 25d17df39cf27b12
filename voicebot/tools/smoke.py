"""The smoke test install.sh ends with: every model of the configured profile loads and does one small piece of work.

    python -m voicebot.tools.smoke [--config PATH] [--set SECTION.KEY=VALUE ...]

One line per stage, `ok STAGE (SECONDS s): what it did` or `FAILED STAGE: reason`, and a non-zero exit at the first
failure. The LLM writes one token, Piper says one word, Whisper must hear that word again, and the wake word model
scores a frame of it. The stages run in a child process, so that native code dying on a signal (llama.cpp built for
another CPU dies with SIGILL, "Illegal instruction"; the OOM killer sends SIGKILL) is still reported with the stage
it died in.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Callable

import numpy as np

from voicebot.audio import FRAME_SAMPLES, INPUT_RATE_HZ, AudioChunk
from voicebot.config import Config, load_config
from voicebot.errors import EX_SOFTWARE, VoicebotError

if TYPE_CHECKING:
    from voicebot.engines import Engines
    from voicebot.models.paths import ModelPaths

STAGES = ("models", "llm", "tts", "asr", "wake")
WORD = "testing"
# Whisper may hear a near miss ("tasting", "test in"): the point is that speech went in and the word came back.
NEAR_MATCH = 0.75
STAGE_TIMEOUT_S = 300.0
SILENCE_AROUND_WORD_S = 0.4
REBUILD_LLAMA = "llama.cpp was built for instructions this CPU lacks; rebuild it here with: install.sh --rebuild-llama"


class SmokeFailure(VoicebotError):
    """A model loaded but did not do its one piece of work."""

    exit_code = EX_SOFTWARE


def heard_word(transcript: str, word: str = WORD) -> bool:
    """Whether `word`, or a near match of it, is among the words of `transcript` (case-insensitive)."""
    words = re.findall(r"[^\W\d_]+", transcript.lower())
    joined = "".join(words)
    candidates = [*words, *(a + b for a, b in zip(words, words[1:], strict=False))]
    return word in joined or any(difflib.SequenceMatcher(None, word, c).ratio() >= NEAR_MATCH for c in candidates)


@dataclass
class SmokeTest:
    """The stages, in order, in one process; each loads its models as the assistant does and returns what it did."""

    config: Config
    paths: ModelPaths | None = None
    speech: AudioChunk | None = None
    stages: dict[str, Callable[[], str]] = field(init=False)

    def __post_init__(self) -> None:
        self.stages = {
            "models": self.models,
            "llm": self.llm,
            "tts": self.tts,
            "asr": self.asr,
            "wake": self.wake,
        }

    def models(self) -> str:
        """Every model file of the profile is where the config says."""
        from voicebot.models.paths import resolve_models

        self.paths = resolve_models(self.config)
        names = [self.paths.llm.name, self.paths.asr.name, *(p.name for p in self.paths.voices.values())]
        return f"profile {self.config.profile}: {', '.join(names)}"

    def llm(self) -> str:
        """The chat model loads on its pinned worker and writes one token."""
        from voicebot.llm import Sampling

        engines = self._load("llm")
        try:
            chat = engines.llm.chat
            question = [{"role": "user", "content": "Say hello."}]
            one_token = Sampling(max_tokens=1, temperature=0.0)
            text = engines.llm.worker.call(lambda: chat.complete(chat.prompt_tokens(question), one_token))
        finally:
            engines.close()
        return f"one token {text!r} from {self.paths.llm.name}"

    def tts(self) -> str:
        """Piper says one word."""
        engines = self._load("tts")
        try:
            spoken = asyncio.run(engines.tts.speak(WORD, language="en"))
        finally:
            engines.close()
        if spoken is None:
            raise SmokeFailure(f"Piper made no audio for {WORD!r}")
        if spoken.seconds < 0.2 or float(np.abs(spoken.samples).max()) < 0.01:
            raise SmokeFailure(f"Piper made {spoken.seconds:.2f} s of near-silence for {WORD!r}")
        silence = np.zeros(int(SILENCE_AROUND_WORD_S * INPUT_RATE_HZ), np.float32)
        at_16k = spoken.resampled(INPUT_RATE_HZ).samples
        self.speech = AudioChunk(np.concatenate([silence, at_16k, silence]), INPUT_RATE_HZ)
        voices = ", ".join(self.paths.voices)
        return f"{WORD!r} as {spoken.seconds:.2f} s of speech at {spoken.rate_hz} Hz (voices: {voices})"

    def asr(self) -> str:
        """Whisper hears the word Piper said."""
        engines = self._load("asr")
        try:
            transcript = asyncio.run(engines.asr.transcribe(self.speech.samples))
        finally:
            engines.close()
        if not heard_word(transcript.text):
            raise SmokeFailure(f"Piper said {WORD!r} but Whisper heard {transcript.text!r}")
        return f"heard {transcript.text!r} ({transcript.language})"

    def wake(self) -> str:
        """The wake word model loads, with the VAD and echo canceller beside it, and scores a frame."""
        engines = self._load("listen")
        try:
            frame = AudioChunk(self.speech.samples[-FRAME_SAMPLES:], INPUT_RATE_HZ)
            listener = engines.listener
            name, score = listener.worker.call(listener.wake.score, frame)
        finally:
            engines.close()
        if not 0.0 <= score <= 1.0:
            raise SmokeFailure(f"wake word model {name} scored {score} on a frame, not a value from 0 to 1")
        canceller = self.config.audio.echo_canceller
        return f"{name} scored {score:.2f} on a frame; VAD and echo canceller ({canceller}) loaded"

    def _load(self, stage: str) -> Engines:
        from voicebot.engines import Engines

        return Engines.load(self.config, self.paths, frozenset({stage}))

    def run(self, out: IO[str]) -> int:
        """Run every stage, one line each; stop at the first failure and return its exit code."""
        for stage, work in self.stages.items():
            started = time.monotonic()
            try:
                what = work()
            except VoicebotError as error:
                print(f"FAILED {stage}: {_one_line(str(error))}", file=out, flush=True)
                return error.exit_code
            except Exception as error:  # noqa: BLE001 - a model library's own error: still one line, named by its stage
                print(f"FAILED {stage}: {type(error).__name__}: {_one_line(str(error))}", file=out, flush=True)
                return EX_SOFTWARE
            print(f"ok {stage} ({time.monotonic() - started:.1f} s): {what}", file=out, flush=True)
        return 0


def supervise(command: list[str], out: IO[str], timeout_s: float = STAGE_TIMEOUT_S) -> int:
    """Run the stages in a child process, pass its lines on, and name the stage it died or hung in."""
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as child_stderr:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=child_stderr, text=True)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True)
        reader.start()
        reported: list[str] = []
        failed = False
        while True:
            try:
                line = lines.get(timeout=timeout_s)
            except queue.Empty:
                child.kill()
                child.wait()
                stage = _next_stage(reported)
                print(f"FAILED {stage}: no result after {timeout_s:.0f} s; stopped it", file=out, flush=True)
                return EX_SOFTWARE
            if line is None:
                break
            print(line, file=out, flush=True)
            status, _, rest = line.partition(" ")
            if status == "ok":
                reported.append(rest.split(" ", 1)[0])
            failed = failed or status == "FAILED"
        code = child.wait()
        reader.join()
        if failed:
            return code or EX_SOFTWARE
        if code == 0 and _next_stage(reported) is None:
            return 0
        stage = _next_stage(reported) or STAGES[-1]
        child_stderr.seek(0)
        print(f"FAILED {stage}: {_death(code, stage, child_stderr.read())}", file=out, flush=True)
        return EX_SOFTWARE


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _next_stage(reported: list[str]) -> str | None:
    return next((stage for stage in STAGES if stage not in reported), None)


def _death(code: int, stage: str, stderr: str) -> str:
    """Why the child ended without reporting every stage, in one line."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = f"killed by {name} ({signal.strsignal(-code) or 'unknown signal'})"
        if -code == signal.SIGILL:
            hint = REBUILD_LLAMA if stage == "llm" else "a native library was built for instructions this CPU lacks"
            return f"{why}: {hint}"
        if -code == signal.SIGKILL:
            return f"{why}: out of memory? close other programs or use smaller models"
        return why
    last = [line for line in stderr.splitlines() if line.strip()]
    return f"exited with code {code}" + (f": {_one_line(last[-1])}" if last else " without a word")


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def build_parser() -> argparse.ArgumentParser:
    """--config and --set, as the voicebot command has them."""
    parser = argparse.ArgumentParser(
        prog="python -m voicebot.tools.smoke",
        description="Load every model of the configured profile and have each do one small piece of work: the LLM "
        f"writes one token, Piper says {WORD!r}, Whisper hears it, the wake word model scores a frame. One line per "
        "stage; exits non-zero at the first failure.",
    )
    parser.add_argument("--config", metavar="PATH", help="YAML config file (default: as the voicebot command finds it)")
    parser.add_argument(
        "--set", metavar="SECTION.KEY=VALUE", action="append", default=[], help="override one config key; repeatable"
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=STAGE_TIMEOUT_S,
        help=f"give up on a stage that reports nothing for this long (default {STAGE_TIMEOUT_S:.0f})",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load the config here, then run the stages in a child process (or, as that child, run them)."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        config = load_config(args.config, args.set)
    except VoicebotError as error:
        print(f"FAILED config: {_one_line(str(error))}", flush=True)
        return error.exit_code
    if args.child:
        return _run_as_child(config)
    print(f"ok config ({time.monotonic() - started:.1f} s): {config.source} (profile {config.profile})", flush=True)
    options = [*(["--config", args.config] if args.config else []), *(f"--set={item}" for item in args.set)]
    command = [sys.executable, "-m", "voicebot.tools.smoke", "--child", *options]
    code = supervise(command, sys.stdout, args.timeout_s)
    if code == 0:
        print(f"smoke test passed in {time.monotonic() - started:.1f} s", flush=True)
    return code


def _run_as_child(config: Config) -> int:
    """Report on a copy of stdout, and send fd 1 to stderr, so native libraries that print cannot garble a line."""
    report = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with report:
        return SmokeTest(config).run(report)


if __name__ == "__main__":
    sys.exit(main())
