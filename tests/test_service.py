"""voicebot under systemd: the sd_notify protocol on a real socket, SIGTERM, and SIGHUP reloads.

The notify socket is a real unix datagram socket, as systemd makes one; the service is the real
`voicebot run` in a subprocess, hearing a WAV file in real time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, build_wav, espeak

from voicebot.runtime.systemd import SystemdNotifier

CONFIG = REPO / "config" / "voicebot.yaml"


class NotifySocket:
    """A unix datagram socket that records each notice with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notices: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            self.notices.append((time.monotonic(), data.decode()))

    def times_of(self, field: str) -> list[float]:
        return [at for at, notice in self.notices if field in notice.split("\n")]

    def wait_for(self, field: str, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            times = self.times_of(field)
            if times:
                return times[0]
            time.sleep(0.02)
        raise AssertionError(f"no {field} within {timeout_s} s; got {[n for _, n in self.notices]}")

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self._socket.close()


@pytest.fixture
def notify_socket(tmp_path):
    receiver = NotifySocket(tmp_path / "notify")
    yield receiver
    receiver.close()


def test_watchdog_pings_come_from_the_event_loop_and_stop_while_it_is_blocked(notify_socket):
    notifier = SystemdNotifier(str(notify_socket.path), watchdog_interval_s=0.05)

    async def scenario() -> tuple[float, float]:
        pinging = asyncio.create_task(notifier.keep_alive())
        await asyncio.sleep(0.5)
        blocked_at = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 - a hung event loop, on purpose
        unblocked_at = time.monotonic()
        await asyncio.sleep(0.5)
        pinging.cancel()
        return blocked_at, unblocked_at

    blocked_at, unblocked_at = asyncio.run(scenario())
    notifier.close()
    time.sleep(0.1)

    pings = notify_socket.times_of("WATCHDOG=1")
    healthy_before = [t for t in pings if t < blocked_at]
    while_blocked = [t for t in pings if blocked_at + 0.01 < t < unblocked_at]
    after = [t for t in pings if t > unblocked_at]
    assert len(healthy_before) >= 8, pings
    assert while_blocked == []
    assert len(after) >= 8


def test_an_abstract_notify_socket_is_reached_by_its_at_sign_name():
    name = f"voicebot-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    try:
        notifier = SystemdNotifier(f"@{name}")
        notifier.ready("listening")
        assert receiver.recv(4096).decode().split("\n") == ["READY=1", "STATUS=listening"]
        notifier.close()
    finally:
        receiver.close()


def test_outside_systemd_notices_do_nothing():
    notifier = SystemdNotifier.from_environment() if "NOTIFY_SOCKET" not in os.environ else SystemdNotifier(None)
    assert not notifier.active
    notifier.ready("listening")  # no socket, no error


# The real service.


def service_config(tmp_path: Path, **changes: str) -> Path:
    """The shipped config file with the bundled models, a fixed seed and any `section.key: value` edits."""
    text = CONFIG.read_text(encoding="utf-8").replace("profile: pi", "profile: bundled", 1)
    text = text.replace("  seed: null", "  seed: 3", 1)
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "voicebot.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Service:
    """`voicebot run` as systemd would start it, hearing a WAV in real time."""

    def __init__(self, tmp_path: Path, config: Path, wav: Path, notify: NotifySocket, watchdog_s: float = 1.0) -> None:
        self.trace_path = tmp_path / "trace.jsonl"
        self.stderr_path = tmp_path / "stderr.log"
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": str(int(watchdog_s * 1e6)),
            "JOURNAL_STREAM": "8:1234",
        }
        env.pop("WATCHDOG_PID", None)
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in wait()
        command = [sys.executable, "-m", "voicebot", "run", "--config", str(config), "--input", str(wav)]
        command += ["--output", str(tmp_path / "reply.wav"), "--trace", str(self.trace_path)]
        self.process = subprocess.Popen(command, stderr=self._stderr, stdout=subprocess.DEVNULL, env=env, cwd=REPO)

    def events(self) -> list[dict]:
        if not self.trace_path.exists():
            return []
        lines = self.trace_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_for_event(self, name: str, timeout_s: float, after: int = 0) -> int:
        """Wait for the next `name` event after the first `after` events; returns how many events there are then."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self.events()
            if any(e["event"] == name for e in events[after:]):
                return len(events)
            if self.process.poll() is not None:
                raise AssertionError(f"voicebot exited with {self.process.returncode}: {self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"no {name} event within {timeout_s} s; stderr: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._stderr.close()


@pytest.fixture
def long_question(tmp_path, speech_dir):
    return build_wav(
        tmp_path / "input.wav",
        [
            1.0,
            espeak("hey jarvis", speech_dir),
            0.3,
            espeak("Tell me a long story about a lighthouse.", speech_dir),
            30.0,
        ],
    )


def test_the_service_is_ready_when_listening_feeds_the_watchdog_and_stops_within_2_s_of_sigterm(
    tmp_path, notify_socket, long_question
):
    config = service_config(tmp_path, **{"  max_reply_tokens: 200": "  max_reply_tokens: 400"})
    service = Service(tmp_path, config, long_question, notify_socket, watchdog_s=1.0)

    ready_at = notify_socket.wait_for("READY=1", timeout_s=120)
    service.wait_for_event("playback_start", timeout_s=60)
    assert service.process.poll() is None
    service.process.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    code = service.wait(10)
    stopped_s = time.monotonic() - signalled_at

    assert code == 0, service.stderr()
    assert stopped_s < 2.0, stopped_s
    pings = [t for t in notify_socket.times_of("WATCHDOG=1") if ready_at <= t <= signalled_at]
    assert len(pings) >= 2 * (signalled_at - ready_at) - 2, (len(pings), signalled_at - ready_at)
    assert notify_socket.times_of("STOPPING=1")
    # Mid-reply: the turn was cut, and the trace file was closed whole.
    events = service.events()
    assert [e for e in events if e["event"] == "wake"] and not [e for e in events if e["event"] == "playback_end"]
    assert service.trace_path.read_text(encoding="utf-8").endswith("}\n")
    # One line per event for journald, each with its priority.
    lines = service.stderr().splitlines()
    assert lines and all(line.startswith(("<3>", "<4>", "<6>", "<7>")) for line in lines), lines[:5]
    assert any("stopped by signal" in line for line in lines)


def test_sighup_reloads_the_config_and_refuses_a_bad_one_keeping_the_old(tmp_path, notify_socket, speech_dir):
    wake, question = espeak("hey jarvis", speech_dir), espeak("What colour is the sky?", speech_dir)
    wav = build_wav(tmp_path / "input.wav", [1.0, wake, 0.3, question, 14.0, wake, 0.3, question, 8.0])
    config = service_config(tmp_path)
    service = Service(tmp_path, config, wav, notify_socket)
    notify_socket.wait_for("READY=1", timeout_s=120)
    seen = service.wait_for_event("turn_end", timeout_s=60)

    good_text = config.read_text(encoding="utf-8")
    config.write_text(good_text.replace("  hangover_s: 0.6", "  hangover_s: [0.6"), encoding="utf-8")
    service.process.send_signal(signal.SIGHUP)
    seen = service.wait_for_event("config_reload_refused", timeout_s=20, after=seen)

    config.write_text(good_text.replace("  wake: true", "  wake: false", 1), encoding="utf-8")
    service.process.send_signal(signal.SIGHUP)
    seen = service.wait_for_event("config_reloaded", timeout_s=60, after=seen)
    code = service.wait(60)

    assert code == 0, service.stderr()
    events = service.events()
    names = [e["event"] for e in events]
    refused = next(e for e in events if e["event"] == "config_reload_refused")
    assert "invalid YAML" in refused["error"] and str(config) in refused["error"]
    assert any(
        "config reload refused, the old config stays in effect" in line for line in service.stderr().splitlines()
    )
    # Both questions were answered: the first under the old config (with its wake earcon), the second under
    # the new one, without it.
    reloaded = names.index("config_reloaded")
    turns = [i for i, name in enumerate(names) if name == "turn_end"]
    assert len(turns) == 2 and turns[0] < reloaded < turns[1]
    assert all(e["reason"] == "answered" for e in events if e["event"] == "turn_end")
    wake_earcons = [i for i, e in enumerate(events) if e["event"] == "earcon" and e["name"] == "wake"]
    assert wake_earcons and all(i < reloaded for i in wake_earcons)
    assert len(notify_socket.times_of("RELOADING=1")) == 2 and len(notify_socket.times_of("READY=1")) == 3


def test_the_unit_file_verifies_and_is_hardened(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd); .ci/run installs it")
    # As install.sh installs it: ExecStart pointing at the venv's voicebot.
    unit = (REPO / "systemd" / "voicebot.service").read_text(encoding="utf-8")
    installed = tmp_path / "voicebot.service"
    installed.write_text(unit.replace("/opt/voicebot/bin/voicebot", str(Path(sys.executable).parent / "voicebot")))

    verify = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True)
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(installed)], capture_output=True, text=True
    )

    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    exposure = float(security.stdout.split("Overall exposure level for voicebot.service:")[1].split()[0])
    assert exposure <= 2.5, security.stdout
    # Sound devices stay reachable, and the cffi callbacks sounddevice uses keep working.
    assert "DeviceAllow=char-alsa rw" in unit and "PrivateDevices=yes" not in unit
    assert "MemoryDenyWriteExecute=yes" not in unit
    # CPU pinning is a @resources system call (sched_setaffinity): it must not be filtered.
    assert "@resources" not in unit
    # A model or config that cannot load is not restarted in a loop.
    from voicebot.errors import ConfigError, ModelLoadError, ModelNotFoundError

    prevented = unit.split("RestartPreventExitStatus=")[1].split("\n")[0].split()
    assert {str(e.exit_code) for e in (ConfigError, ModelLoadError, ModelNotFoundError)} <= set(prevented)
