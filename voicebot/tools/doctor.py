"""`voicebot check`: is this machine ready to run the assistant? One line per finding, and a fix per problem."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import glob
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from voicebot.config import Config, load_config
from voicebot.errors import VoicebotError, describe_os_error

# llama.cpp's names for the instruction sets it was built with, and the /proc/cpuinfo flag that says a
# CPU has each. A library built for a newer CPU dies with "Illegal instruction" at its first model call.
LLAMA_FEATURE_FLAGS = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "NEON": "asimd",
    "ARM_FMA": "asimd",
    "FP16_VA": "asimdhp",
    "DOTPROD": "asimddp",
    "MATMUL_INT8": "i8mm",
    "SVE": "sve",
    "SME": "sme",
}
# Resident memory: the runtimes' fixed share plus a share per byte of model file. Measured on x86_64 with the
# bundled models (229 MB of files: 861 MB peak; 297 MB with the multilingual Whisper base: 949 MB peak).
MEMORY_PER_MODEL_BYTE = 1.3
BASE_MEMORY_BYTES = 560 * 2**20
REBUILD_LLAMA = (
    'rebuild llama-cpp-python for this CPU: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --force-reinstall '
    "--no-cache-dir --no-binary llama-cpp-python llama-cpp-python (or run install.sh --rebuild-llama)"
)


class Status(enum.Enum):
    OK = "ok"
    WARN = "warning"
    FAIL = "problem"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, what was found, and for a problem, the fix."""

    area: str
    status: Status
    found: str
    fix: str = ""

    def line(self) -> str:
        mark = {Status.OK: "ok  ", Status.WARN: "warn", Status.FAIL: "FAIL"}[self.status]
        text = f"[{mark}] {self.area}: {self.found}"
        return f"{text}\n       fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class CheckOptions:
    config_path: str | None = None
    overrides: tuple[str, ...] = ()
    audio: bool = True
    """Open the sound devices for a moment (off where a running assistant holds them)."""


def run_checks(options: CheckOptions) -> list[Finding]:
    """Every check, in the order a person would fix things."""
    findings = [*check_platform()]
    try:
        config = load_config(options.config_path, options.overrides)
    except VoicebotError as error:
        return [*findings, Finding("config", Status.FAIL, str(error), "correct the file, then run voicebot check")]
    findings.append(Finding("config", Status.OK, f"{config.source} (profile {config.profile})"))
    findings += check_config_secrets(config)
    findings += check_llama_build()
    findings += check_models(config)
    findings += check_pinning(config)
    findings += check_memory(config)
    findings += check_sound_server()
    findings += check_http(config)
    findings += check_remote_engines(config)
    findings += check_satellite_exposure(config)
    if options.audio:
        findings += check_audio_devices(config)
    return findings


def check_remote_engines(config: Config, timeout_s: float = 3.0) -> list[Finding]:
    """Each remote engine answers: a Wyoming server its describe, an OpenAI-compatible one its model list."""
    findings = []
    for stage, section in (("asr", config.asr), ("tts", config.tts), ("llm", config.llm)):
        if section.backend == "local":
            continue
        try:
            found = asyncio.run(_probe_remote(section.backend, section, timeout_s))
        except VoicebotError as error:
            fallback = "the local model answers meanwhile" if section.fallback else f"{stage}.fallback is off"
            status = Status.WARN if section.fallback else Status.FAIL
            findings.append(
                Finding(stage, status, f"{error}; {fallback}", f"start the server at {stage}.url, or correct it")
            )
            continue
        findings.append(Finding(stage, Status.OK, found))
    return findings


async def _probe_remote(backend: str, section, timeout_s: float) -> str:
    import httpx

    from voicebot.wyoming.client import tcp_address

    if backend == "wyoming":
        from wyoming.client import AsyncTcpClient
        from wyoming.info import Describe, Info

        host, port = tcp_address(section.url, "url")
        try:
            async with asyncio.timeout(timeout_s), AsyncTcpClient(host, port) as client:
                await client.write_event(Describe().event())
                while (event := await client.read_event()) is not None:
                    if Info.is_type(event.type):
                        info = Info.from_event(event)
                        programs = [p.name for p in (info.asr or []) + (info.tts or [])] or ["a Wyoming server"]
                        return f"{section.url} answers: {', '.join(programs)}"
        except (OSError, TimeoutError) as error:
            reason = str(error) or "timed out"
            raise VoicebotError(f"the Wyoming server at {section.url} does not answer ({reason})") from None
        raise VoicebotError(f"the Wyoming server at {section.url} closed the connection without describing itself")
    headers = {"Authorization": f"Bearer {section.api_key}"} if section.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s, headers=headers) as client:
            response = await client.get(f"{section.url.rstrip('/')}/models")
    except httpx.HTTPError as error:
        raise VoicebotError(f"the LLM server at {section.url} does not answer ({error or 'timed out'})") from None
    if response.status_code != 200:
        raise VoicebotError(f"the LLM server at {section.url} answered {response.status_code} to GET /models")
    models = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
    return f"{section.url} answers, serving {', '.join(map(str, models)) or 'no model it names'}"


def check_satellite_exposure(config: Config) -> list[Finding]:
    """A satellite streams a microphone: warn of a LAN bind without the ESPHome API's encryption."""
    if not config.satellite.enabled:
        return []
    from voicebot.satellite.device import check_satellite

    warnings = check_satellite(config)
    fix = "set satellite.encryption_key (openssl rand -base64 32) and give Home Assistant the same key"
    if warnings:
        return [Finding("satellite", Status.WARN, warning, fix) for warning in warnings]
    where = f"{config.satellite.host}:{config.satellite.port}"
    encrypted = "encrypted" if config.satellite.encryption_key else "loopback only"
    return [Finding("satellite", Status.OK, f"Home Assistant satellite on {where} ({encrypted})")]


SYSTEM_UNIT = Path("/etc/systemd/system/voicebot.service")
SECRETS = (("http", "token"), ("satellite", "encryption_key"), ("llm", "api_key"))
"""The settings that are secrets: whoever reads them can use the API, join the satellite, spend the LLM key."""


def check_config_secrets(config: Config) -> list[Finding]:
    """A config file that holds a secret must not be readable by every user of the machine."""
    path = Path(config.source)
    held = [f"{section}.{key}" for section, key in SECRETS if getattr(getattr(config, section), key)]
    if not held or not path.is_file():
        return []
    mode = path.stat().st_mode & 0o777
    if not mode & 0o004:
        return []
    return [
        Finding(
            "config",
            Status.WARN,
            f"{path} holds {', '.join(held)} and every user of this machine can read it (mode {mode:04o})",
            f"sudo chown root:voicebot {path} && sudo chmod 0640 {path} (install.sh does this; for a file of "
            f"your own: chmod 0600 {path})",
        )
    ]


def check_http(config: Config, unit: Path = SYSTEM_UNIT) -> list[Finding]:
    """The chat page and API: a safe address, a free port, and a unit that lets the LAN in when asked to."""
    from voicebot.http.app import check_http_config
    from voicebot.runtime.net import is_loopback

    http = config.http
    if not http.enabled:
        return [Finding("http", Status.OK, "off (http.enabled: false); voicebot serve serves the chat page alone")]
    try:
        check_http_config(http)
    except VoicebotError as error:
        return [Finding("http", Status.FAIL, str(error).removeprefix("config error: "), "set http.token")]
    url = f"http://{http.host if ':' not in http.host else f'[{http.host}]'}:{http.port}/"
    findings = [_port_finding(http.host, http.port, url)]
    if not is_loopback(http.host) and not http.allowed_hosts:
        findings.append(
            Finding(
                "http",
                Status.WARN,
                f"http.host is {http.host}, but http.allowed_hosts is empty: only requests for localhost and "
                "127.0.0.1 are answered, so the chat page cannot be opened by this machine's name or address",
                f"set http.allowed_hosts to the names the LAN reaches it by, such as [{_lan_names()}]",
            )
        )
    if not is_loopback(http.host) and unit.exists():
        drop_ins = unit.parent / f"{unit.name}.d"
        allowed = any("IPAddressAllow=" in p.read_text(errors="replace") for p in sorted(drop_ins.glob("*.conf")))
        if not allowed:
            findings.append(
                Finding(
                    "http",
                    Status.WARN,
                    f"http.host is {http.host}, but {unit} lets only loopback through (IPAddressAllow=localhost)",
                    f"install the drop-in: sudo install -D -m 0644 voicebot-lan.conf {drop_ins}/lan.conf "
                    "(it is beside the docs), then systemctl daemon-reload and restart voicebot",
                )
            )
    return findings


def _lan_names() -> str:
    """This machine's name and address, as an http.allowed_hosts example."""
    import socket

    name = socket.gethostname()
    names = [f"{name}.local"]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # No packet is sent: this only picks the address a LAN route uses.
            names.append(probe.getsockname()[0])
    except OSError:
        pass
    return ", ".join(names)


def _port_finding(host: str, port: int, url: str) -> Finding:
    import json
    import socket
    import urllib.request

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            bind_error = error
        else:
            return Finding("http", Status.OK, f"{url} is free to serve the chat page and the API")
    try:
        with urllib.request.urlopen(f"{url}health", timeout=2) as response:
            health = json.loads(response.read())
        if isinstance(health, dict) and health.get("status") == "ok" and "model" in health:
            return Finding("http", Status.OK, f"a voicebot is serving {url} (state {health.get('state')})")
    except (OSError, ValueError):
        pass
    return Finding(
        "http",
        Status.FAIL,
        f"cannot listen on {url}: {bind_error.strerror or bind_error}",
        "another program holds the port, or the address is not this machine's: set http.port or http.host",
    )


def report(findings: list[Finding]) -> str:
    problems = sum(f.status is Status.FAIL for f in findings)
    warnings = sum(f.status is Status.WARN for f in findings)
    summary = "all good" if not problems and not warnings else f"{problems} problem(s), {warnings} warning(s)"
    return "\n".join([*(f.line() for f in findings), f"voicebot check: {summary}"])


# Python, the platform, and the llama.cpp build.


def check_platform() -> list[Finding]:
    python = ".".join(map(str, sys.version_info[:3]))
    found = f"Python {python} on {platform.machine()} ({_os_name()})"
    if sys.version_info < (3, 11):
        return [Finding("platform", Status.FAIL, found, "use Python 3.11 or newer (Raspberry Pi OS Bookworm or later)")]
    if platform.machine() not in ("aarch64", "x86_64", "arm64", "AMD64"):
        return [Finding("platform", Status.WARN, found, "voicebot is tested on 64-bit Pi OS (aarch64) and x86_64")]
    return [Finding("platform", Status.OK, found)]


def _os_name() -> str:
    try:
        release = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError as error:
        return f"{platform.system()}; its name unknown: /etc/os-release {describe_os_error(error)}"
    for line in release.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def check_llama_build(cpu_flags: set[str] | None = None, system_info: str | None = None) -> list[Finding]:
    """Whether llama.cpp was built for instruction sets this CPU has (asked in a child process, which an
    "Illegal instruction" would kill instead of this one)."""
    if system_info is None:
        probe = subprocess.run(
            [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode != 0:
            reason = (
                "Illegal instruction" if probe.returncode == -4 else (probe.stderr.strip().splitlines() or ["?"])[-1]
            )
            return [Finding("llama.cpp", Status.FAIL, f"cannot load llama-cpp-python: {reason}", REBUILD_LLAMA)]
        system_info = probe.stdout
    flags = cpu_flags if cpu_flags is not None else _cpu_flags()
    if flags is None:
        return [
            Finding(
                "llama.cpp",
                Status.WARN,
                "not checked against this CPU: /proc/cpuinfo cannot be read",
                "run voicebot check where /proc is mounted",
            )
        ]
    built = [
        name
        for part in system_info.replace("\n", "|").split("|")
        if "= 1" in part
        for name in [part.split("=")[0].strip().split(":")[-1].strip()]
        if name in LLAMA_FEATURE_FLAGS
    ]
    missing = sorted({name for name in built if LLAMA_FEATURE_FLAGS[name] not in flags})
    if missing:
        return [
            Finding(
                "llama.cpp",
                Status.FAIL,
                f"built for {', '.join(missing)}, which this CPU lacks: it would die with 'Illegal instruction'",
                REBUILD_LLAMA,
            )
        ]
    return [Finding("llama.cpp", Status.OK, f"built for this CPU ({', '.join(built) or 'generic'})")]


def _cpu_flags() -> set[str] | None:
    """The CPU's instruction set flags, or None if /proc/cpuinfo cannot be read."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return flags


# Models, cores and memory.


def check_models(config: Config) -> list[Finding]:
    from voicebot.models.paths import resolve_models

    try:
        paths = resolve_models(config)
    except VoicebotError as error:
        return [Finding("models", Status.FAIL, str(error).split("; ")[0], "; ".join(str(error).split("; ")[1:]))]
    files = [paths.llm, paths.asr, *paths.voices.values()]
    found = f"{len(files)} found: " + ", ".join(p.name for p in files)
    if config.profile != "pi":
        return [Finding("models", Status.OK, found + " (pip installed them)")]
    return [Finding("models", Status.OK, found), *_check_hashes(config)]


def _check_hashes(config: Config) -> list[Finding]:
    """Re-hash the registry's models as installed, as `voicebot models verify` does."""
    from voicebot.models.fetch import FileState, configured_entries, verify_model

    models_dir = Path(config.models.dir).expanduser()
    checks = [check for entry in configured_entries(config) for check in verify_model(entry, models_dir)]
    bad = [c for c in checks if c.state not in (FileState.OK, FileState.MISSING)]
    if not bad:
        verified = sum(c.state is FileState.OK for c in checks)
        return [Finding("model hashes", Status.OK, f"{verified} files match their published SHA-256")]
    return [
        Finding(
            "model hashes",
            Status.FAIL,
            "; ".join(f"{c.path}: {c.state.value}" + (f" ({c.detail})" if c.detail else "") for c in bad),
            "fetch them again: voicebot models fetch",
        )
    ]


def check_pinning(config: Config) -> list[Finding]:
    from voicebot.runtime.threads import available_cores, resolve_cores

    plan = []
    try:
        for role, section in (("llm", config.llm), ("asr", config.asr), ("tts", config.tts)):
            plan.append(f"{role} on {_cores(resolve_cores(section.cores, role))}")
    except VoicebotError as error:
        return [Finding("cores", Status.FAIL, str(error), "set the section's cores to cores that exist, or auto")]
    found = f"{len(available_cores())} cores: " + ", ".join(plan) + f", listening on {plan[-1].split(' on ')[1]}"
    return [Finding("cores", Status.OK, found)]


def _cores(cores: tuple[int, ...]) -> str:
    return "core " + ",".join(map(str, cores)) if len(cores) == 1 else "cores " + ",".join(map(str, cores))


def check_memory(config: Config, available_bytes: int | None = None) -> list[Finding]:
    from voicebot.models.paths import resolve_models

    try:
        paths = resolve_models(config)
    except VoicebotError:
        return []  # Reported with the models.
    model_bytes = sum(_size(path) for path in (paths.llm, paths.asr, *paths.voices.values()))
    needed = int(BASE_MEMORY_BYTES + MEMORY_PER_MODEL_BYTE * model_bytes)
    available = available_bytes if available_bytes is not None else _available_memory()
    found = f"about {needed / 2**20:.0f} MB needed, {available / 2**20:.0f} MB available"
    if available < needed:
        return [
            Finding(
                "memory",
                Status.FAIL,
                found,
                "close other programs, use smaller models (models.llm, models.asr), or add swap",
            )
        ]
    return [Finding("memory", Status.OK, found)]


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size if path.is_file() else 0


def _available_memory() -> int:
    for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# Sound.


@dataclasses.dataclass(frozen=True)
class SoundServer:
    name: str
    socket: str


def find_sound_servers(runtime_dirs: list[str] | None = None) -> list[SoundServer]:
    """The PipeWire and PulseAudio servers whose sockets this process can see."""
    if runtime_dirs is None:
        runtime_dirs = sorted({*glob.glob("/run/user/*"), os.environ.get("XDG_RUNTIME_DIR", "")} - {""})
    pulse_runtime = os.environ.get("PULSE_RUNTIME_PATH")
    servers = []
    for directory in runtime_dirs:
        if os.path.exists(os.path.join(directory, "pipewire-0")):
            servers.append(SoundServer("PipeWire", os.path.join(directory, "pipewire-0")))
        if os.path.exists(os.path.join(directory, "pulse", "native")):
            servers.append(SoundServer("PulseAudio (or pipewire-pulse)", os.path.join(directory, "pulse", "native")))
    if pulse_runtime and os.path.exists(os.path.join(pulse_runtime, "native")):
        servers.append(SoundServer("PulseAudio", os.path.join(pulse_runtime, "native")))
    return servers


def check_sound_server(
    servers: list[SoundServer] | None = None, under_systemd: bool | None = None, uid: int | None = None
) -> list[Finding]:
    """Which of the two set-ups this is: ALSA directly, or a user session's sound server."""
    servers = find_sound_servers() if servers is None else servers
    under_systemd = bool(os.environ.get("INVOCATION_ID")) if under_systemd is None else under_systemd
    uid = os.getuid() if uid is None else uid
    if not servers:
        return [
            Finding(
                "sound server",
                Status.OK,
                "none: voicebot uses ALSA directly (as on Pi OS Lite); the system service fits",
            )
        ]
    names = "; ".join(f"{s.name} at {s.socket}" for s in servers)
    own = [s for s in servers if f"/run/user/{uid}/" in s.socket or "PULSE_RUNTIME_PATH" in os.environ]
    if own:
        return [Finding("sound server", Status.OK, f"{names}: voicebot reaches it in this user's session")]
    return [
        Finding(
            "sound server",
            Status.WARN,
            f"{names}, owned by another user's session: it may hold the sound card, so "
            f"{'this service' if under_systemd else 'a system service'} can find it busy or missing",
            "run voicebot in that user's session: install.sh --user-session USER (a user unit with lingering); "
            "see docs/service.md",
        )
    ]


def check_audio_devices(config: Config) -> list[Finding]:
    try:
        import sounddevice as sd
    except OSError as error:
        return [Finding("audio", Status.FAIL, f"PortAudio is missing: {error}", "apt-get install libportaudio2")]
    findings = []
    for kind, device in (("input", config.audio.input_device), ("output", config.audio.output_device)):
        findings.append(_try_device(sd, kind, device))
    return findings


def _try_device(sd, kind: str, device) -> Finding:
    area = "microphone" if kind == "input" else "speaker"
    key = f"audio.{kind}_device"
    try:
        info = sd.query_devices(device, kind)
    except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
        choices = _device_names(sd, kind)
        return Finding(
            area,
            Status.FAIL,
            f"{key} = {device!r}: {error}" if device is not None else f"no default {area}: {error}",
            f"connect one and set {key} to one of: {choices}" if choices else f"connect a {area}; see voicebot devices",
        )
    name = info["name"]
    rate = int(info["default_samplerate"])
    try:
        if kind == "input":
            sd.rec(int(0.2 * rate), samplerate=rate, channels=1, device=device, blocking=True)
        else:
            import numpy as np

            sd.play(np.zeros(int(0.1 * rate), np.float32), samplerate=rate, device=device, blocking=True)
    except Exception as error:  # noqa: BLE001 - PortAudio raises its own error types
        return Finding(
            area,
            Status.FAIL,
            f"{name!r} is listed but cannot be opened: {error}",
            "it may be busy (held by a sound server or another program); see the sound server line above",
        )
    return Finding(area, Status.OK, f"{name!r} opened at {rate} Hz")


def _device_names(sd, kind: str) -> str:
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    try:
        return ", ".join(repr(d["name"]) for d in sd.query_devices() if d[channels] > 0)
    except Exception:  # noqa: BLE001 - PortAudio raises its own error types
        return ""
