"""The real `voicebot run` on live devices: microphone and speaker through PortAudio into a private PulseAudio.

The assistant runs as a subprocess with `audio.input_device=pulse` and `audio.output_device=pulse` (no --input or
--output). A WAV of a real "Alexa" and a spoken question is played into the null sink `vmic`; the assistant's
microphone is the sink's monitor, so it hears it. Its reply also goes into `vmic` and so back into its own
microphone, as a speaker next to a microphone would; the wake word is ignored while a turn runs. Once the turn has
ended the process is stopped with SIGTERM, as systemd stops it, and must exit 0 without a traceback. Skipped, with
the reason, only where PulseAudio cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, build_wav, data_clip, espeak

try:
    from .pulse import SINK, PulseDaemon, PulseStartError
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path.
    from pulse import SINK, PulseDaemon, PulseStartError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ARGS = [
    "run",
    "--set", "profile=bundled",
    "--set", "llm.seed=3",
    "--set", "llm.temperature=0.2",
    "--set", "llm.max_reply_tokens=40",
    "--set", "audio.input_device=pulse",
    "--set", "audio.output_device=pulse",
    "--set", "wake.models=[alexa]",
]  # fmt: skip
READY_TIMEOUT_S = 150.0  # Loading and warming up four models on two shared cores.
SETTLE_S = 1.0  # After "ready in": the microphone stream opens just after that line.
TURN_TIMEOUT_S = 90.0
EXIT_TIMEOUT_S = 10.0


@pytest.fixture
def pulse():
    """A PulseAudio daemon of our own with the null sink `vmic`; stopped by its PID afterwards."""
    daemon = PulseDaemon()
    try:
        daemon.start()
    except PulseStartError as error:
        daemon.cleanup()
        pytest.skip(f"PulseAudio could not start: {error}")
    try:
        yield daemon
    finally:
        daemon.cleanup()


class Voicebot:
    """`python -m voicebot` under Popen, with stderr read line by line on a thread so the pipe never fills."""

    def __init__(self, args: list[str], env: dict[str, str], stdout_path: Path) -> None:
        self._stdout = open(stdout_path, "wb")  # noqa: SIM115 - closed in close()
        self.stdout_path = stdout_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "voicebot", *args],
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError(f"voicebot exited with {self.process.returncode} before {text!r}:\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} on stderr within {timeout:.0f} s:\n{self.stderr}")
            time.sleep(0.1)

    def close(self) -> None:
        """Kill the process by its PID if it is still running, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        self._stdout.close()


def read_trace(path: Path) -> list[dict]:
    if not path.exists():
        return []
    # Only whole lines: the process may be half-way through writing one.
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def names(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def test_live_microphone_and_speaker_answer_a_spoken_question(tmp_path, speech_dir, pulse):
    wav = build_wav(
        tmp_path / "room.wav",
        [0.5, data_clip("alexa_real.wav"), 0.3, espeak("What is the capital of France?", speech_dir), 2.0],
    )
    trace_path = tmp_path / "trace.jsonl"
    env = {**os.environ, **pulse.client_env}
    env.pop("PULSE_SERVER", None)

    started = time.monotonic()
    bot = Voicebot([*ARGS, "--trace", str(trace_path)], env, tmp_path / "stdout.txt")
    try:
        ready_line = bot.wait_for_line("ready in", READY_TIMEOUT_S)
        ready_s = time.monotonic() - started
        wait_for_event(trace_path, bot, "listening", timeout=10)  # its microphone has begun to deliver audio
        time.sleep(SETTLE_S)
        assert bot.process.poll() is None, f"voicebot exited with {bot.process.returncode}:\n{bot.stderr}"

        played_at = time.monotonic()
        subprocess.run(["paplay", f"--device={SINK}", str(wav)], env=env, check=True, timeout=30, capture_output=True)

        deadline = played_at + TURN_TIMEOUT_S
        while "turn_end" not in names(events := read_trace(trace_path)):
            assert bot.process.poll() is None, (
                f"voicebot exited with {bot.process.returncode} before a turn ended; "
                f"trace {names(events)}:\n{bot.stderr}"
            )
            assert time.monotonic() < deadline, (
                f"no turn_end within {TURN_TIMEOUT_S:.0f} s of playing the question; "
                f"trace {names(events)}:\n{bot.stderr}"
            )
            time.sleep(0.2)
        turn_s = time.monotonic() - played_at

        stopping_at = time.monotonic()
        bot.process.send_signal(signal.SIGTERM)
        try:
            code = bot.process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"voicebot still running {EXIT_TIMEOUT_S:.0f} s after SIGTERM:\n{bot.stderr}"
            ) from None
        stop_s = time.monotonic() - stopping_at
    finally:
        bot.close()

    stderr, stdout = bot.stderr, bot.stdout()
    print(
        f"live: {ready_line.strip()!r} after {ready_s:.1f} s wall; turn ended {turn_s:.1f} s after paplay began; "
        f"exited {stop_s:.2f} s after SIGTERM"
    )
    assert code == 0, f"exit code {code} after SIGTERM:\n{stderr}"
    assert "Traceback" not in stderr + stdout, stderr + stdout

    events = read_trace(trace_path)
    wakes = [e for e in events if e["event"] == "wake"]
    assert wakes, f"no wake event: {names(events)}\n{stderr}"
    assert wakes[0]["model"].startswith("alexa"), wakes[0]
    transcripts = [e["text"] for e in events if e["event"] == "transcript"]
    assert transcripts, f"no transcript event: {names(events)}\n{stderr}"
    # Through the null sink tiny.en now and then hears espeak's "of France" as "and friends" (seen in 1 run of
    # about 4); the question is still the one asked, and this test is about the devices, not about Whisper.
    assert "capital" in transcripts[0].lower(), (
        transcripts[0],
        [(e["t"], e["event"]) for e in events],
        stderr,
    )
    sentences = [e["text"] for e in events if e["event"] == "sentence"]
    assert sentences, f"no sentence event: {names(events)}\n{stderr}"
    assert "playback_start" in names(events), f"the reply never reached the speaker: {names(events)}\n{stderr}"
    turn_end = next(e for e in events if e["event"] == "turn_end")
    assert turn_end["reason"] == "answered", (turn_end, stderr)
    print(f"live: heard {transcripts[0]!r}; said {' '.join(sentences)!r}")
    print(f"live: trace {[(e['t'], e['event']) for e in events]}\nlive: stderr\n{stderr}")


def null_sink_module(pulse: PulseDaemon) -> str:
    modules = pulse.pactl("list", "short", "modules").stdout.splitlines()
    return next(line.split()[0] for line in modules if "module-null-sink" in line and f"sink_name={SINK}" in line)


def wait_for_event(trace_path: Path, bot: Voicebot, name: str, timeout: float, after: int = 0) -> int:
    """Wait for a `name` event past the first `after` events; returns the index of the first one."""
    deadline = time.monotonic() + timeout
    while True:
        events = read_trace(trace_path)
        for index, event in enumerate(events[after:], start=after):
            if event["event"] == name:
                return index
        assert bot.process.poll() is None, (
            f"voicebot exited with {bot.process.returncode}; {names(events)}\n{bot.stderr}"
        )
        assert time.monotonic() < deadline, f"no {name} within {timeout:.0f} s; trace {names(events)}\n{bot.stderr}"
        time.sleep(0.1)


@pytest.mark.parametrize("fault", ["unloaded", "suspended"])
def test_the_assistant_recovers_when_its_devices_vanish_or_stall_and_come_back(tmp_path, speech_dir, pulse, fault):
    """`unloaded`: the null sink and its monitor vanish under both streams, which fail; `suspended`: the sink is
    suspended, so both streams stall without any error. Then the devices come back."""
    wav = build_wav(
        tmp_path / "room.wav",
        [0.5, data_clip("alexa_real.wav"), 0.3, espeak("What is the capital of France?", speech_dir), 2.0],
    )
    trace_path = tmp_path / "trace.jsonl"
    env = {**os.environ, **pulse.client_env}
    env.pop("PULSE_SERVER", None)
    # The null sink's silence is exact zeros, which a real microphone never gives: that check stays off here.
    args = [*ARGS, "--set", "audio.on_device_loss=retry", "--set", "audio.zero_input_stall_s=0"]
    bot = Voicebot([*args, "--trace", str(trace_path)], env, tmp_path / "stdout.txt")
    try:
        bot.wait_for_line("ready in", READY_TIMEOUT_S)
        wait_for_event(trace_path, bot, "listening", timeout=10)  # its microphone has begun to deliver audio
        if fault == "unloaded":
            pulse.pactl("unload-module", null_sink_module(pulse))
        else:
            pulse.pactl("suspend-sink", SINK, "1")
        broke_at = time.monotonic()
        lost = wait_for_event(trace_path, bot, "device_lost", timeout=10)
        detected_s = time.monotonic() - broke_at
        time.sleep(3.0)  # Gone for a while: retries fail, and are spaced out.
        if fault == "unloaded":
            pulse.pactl("load-module", "module-null-sink", f"sink_name={SINK}", "rate=16000", "channels=1")
        else:
            pulse.pactl("suspend-sink", SINK, "0")
        back = wait_for_event(trace_path, bot, "device_back", timeout=30, after=lost)
        time.sleep(SETTLE_S)
        subprocess.run(["paplay", f"--device={SINK}", str(wav)], env=env, check=True, timeout=30, capture_output=True)
        answered = wait_for_event(trace_path, bot, "turn_end", timeout=TURN_TIMEOUT_S, after=back)
        bot.process.send_signal(signal.SIGTERM)
        code = bot.process.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        bot.close()

    events = read_trace(trace_path)
    print(
        f"{fault}: lost after {detected_s:.1f} s: {events[lost]}; then {[(e['t'], e['event']) for e in events[lost:]]}"
    )
    assert code == 0, bot.stderr
    assert "Traceback" not in bot.stderr
    # The loss was logged once, however many times it was retried meanwhile.
    assert names(events).count("device_lost") == 1, names(events)
    assert bot.stderr.count("listening again once it is back") == 1, bot.stderr
    if fault == "suspended":
        assert "stalled" in events[lost]["error"], events[lost]
    # Back to waiting for the wake word, then a whole turn, spoken through the speaker that had also gone.
    assert [e["state"] for e in events[lost:back] if e["event"] == "state"][-1:] in ([], ["idle"])
    turn = events[back : answered + 1]
    assert {"wake", "transcript", "playback_start", "playback_end"} <= set(names(turn)), names(turn)
    assert events[answered]["reason"] == "answered", (events[answered], bot.stderr)
    # Audio flows again: the question is heard (whether tiny.en hears "France" or, now and then on this
    # loopback, "friends" is the first test's business, not recovery's).
    transcript = next(e["text"] for e in turn if e["event"] == "transcript").lower()
    assert "capital" in transcript, transcript
