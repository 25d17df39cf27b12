"""A private PulseAudio daemon with a null sink, so PortAudio has real devices on a machine with no sound card.

How: `pulseaudio -n` with the native unix protocol and a null sink `vmic`
(16 kHz, mono), clients pointed at it with PULSE_SINK=vmic and PULSE_SOURCE=vmic.monitor. The daemon runs in
the foreground (--daemonize=no) under subprocess.Popen, so it is stopped by the PID this module started, and it
keeps its socket, pid file and cookie in a temporary directory (PULSE_RUNTIME_PATH, HOME), so it never touches or
collides with another PulseAudio on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINK = "vmic"
RATE_HZ = 16000
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class PulseStartError(RuntimeError):
    """The daemon could not be started; the message says why."""


class PulseDaemon:
    """One pulseaudio process; `start()`, `kill()` and `stop()` act on the PID it started and nothing else."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="voicebot-pulse-"))
        self.log_path = self.dir / "pulseaudio.log"
        self.process: subprocess.Popen | None = None

    @property
    def client_env(self) -> dict[str, str]:
        """What a client (PortAudio's ALSA pulse plugin, pactl) needs to reach this daemon and its null sink."""
        return {
            "PULSE_RUNTIME_PATH": str(self.dir),
            "PULSE_COOKIE": str(self.dir / ".config" / "pulse" / "cookie"),
            "PULSE_SINK": SINK,
            "PULSE_SOURCE": f"{SINK}.monitor",
        }

    def start(self) -> None:
        """Start the daemon and wait until `pactl info` answers; raise PulseStartError if it cannot."""
        binary = shutil.which("pulseaudio")
        if binary is None:
            raise PulseStartError("pulseaudio is not installed (apt-get install -y pulseaudio libportaudio2)")
        if shutil.which("pactl") is None:
            raise PulseStartError("pactl is not installed (it comes with pulseaudio-utils)")
        env = {**os.environ, "HOME": str(self.dir), "PULSE_RUNTIME_PATH": str(self.dir)}
        env.pop("PULSE_SERVER", None)
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    [
                        binary,
                        "-n",
                        "--daemonize=no",
                        "--exit-idle-time=-1",
                        "-L",
                        "module-native-protocol-unix",
                        "-L",
                        f"module-null-sink sink_name={SINK} rate={RATE_HZ} channels=1",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            except OSError as error:
                raise PulseStartError(f"cannot run {binary}: {error}") from None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise PulseStartError(f"pulseaudio exited with status {code}: {self.log_tail()}")
            if self.pactl("info", check=False).returncode == 0 and SINK in self.pactl("list", "short", "sinks").stdout:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise PulseStartError(f"pactl info got no answer within {START_TIMEOUT_S:.0f} s: {self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would, and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None

    def stop(self) -> None:
        """SIGTERM the daemon (SIGKILL if it lingers) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.client_env}
        env.pop("PULSE_SERVER", None)
        result = subprocess.run(["pactl", *args], env=env, capture_output=True, text=True, timeout=5, check=False)
        if check and result.returncode != 0:
            raise PulseStartError(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        # Skip the warnings every root start prints; keep what explains a failure.
        useful = [line for line in text if "cookie" not in line and "D-Bus" not in line and "as root" not in line]
        if not text:
            return "(it printed nothing)"
        return " | ".join(useful[-lines:]) or "(it printed only the usual warnings for root)"


def rescan_portaudio() -> None:
    """PortAudio lists devices when it initialises; make an already imported sounddevice look again."""
    sd = sys.modules.get("sounddevice")
    if sd is not None:
        sd._terminate()
        sd._initialize()
