"""`voicebot check`: the real report on this machine, and each check's verdict on the cases it must tell apart."""

from __future__ import annotations

from conftest import run_voicebot

from voicebot.config import config_from_dict
from voicebot.tools.doctor import (
    SoundServer,
    Status,
    check_llama_build,
    check_memory,
    check_sound_server,
    find_sound_servers,
)

# As llama.cpp prints it for a build with GGML_NATIVE on a Raspberry Pi 5 (Cortex-A76).
PI5_BUILD = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
# /proc/cpuinfo "Features" of a Pi 4 (Cortex-A72) and a Pi 5.
PI4_FEATURES = set(["fp", "asimd", "evtstrm", "crc32", "cpuid"])
PI5_FEATURES = set(
    [
        "fp",
        "asimd",
        "evtstrm",
        "aes",
        "pmull",
        "sha1",
        "sha2",
        "crc32",
        "atomics",
        "fphp",
        "asimdhp",
        "cpuid",
        "asimdrdm",
        "lrcpc",
        "dcpop",
        "asimddp",
    ]
)


def lines_marked(output: str, mark: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"[{mark}")]


def test_on_this_machine_only_the_missing_sound_card_is_a_problem():
    result = run_voicebot("check", "--set", "profile=bundled")

    assert result.returncode == 1, result.stdout + result.stderr
    problems = lines_marked(result.stdout, "FAIL")
    assert [line.split(":")[0] for line in problems] == ["[FAIL] microphone", "[FAIL] speaker"], result.stdout
    areas = [line.split("]")[1].split(":")[0].strip() for line in lines_marked(result.stdout, "ok")]
    assert areas == ["platform", "config", "llama.cpp", "models", "cores", "memory", "sound server", "http"], (
        result.stdout
    )
    assert result.stdout.rstrip().endswith("voicebot check: 2 problem(s), 0 warning(s)")
    assert "Traceback" not in result.stderr


def test_without_opening_the_devices_all_is_well():
    result = run_voicebot("check", "--no-audio", "--set", "profile=bundled")

    assert result.returncode == 0, result.stdout
    assert result.stdout.rstrip().endswith("voicebot check: all good")


def test_missing_pi_models_are_named_together_with_the_one_command_that_fetches_them(tmp_path):
    result = run_voicebot("check", "--no-audio", "--set", f"models.dir={tmp_path}")

    assert result.returncode == 1
    [models] = [line for line in lines_marked(result.stdout, "FAIL")]
    for name in ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "faster-whisper-base", "en_US-lessac-medium", "zh_CN-huayan"):
        assert name in models, models
    fix = result.stdout.split(models)[1].splitlines()[1]
    assert "voicebot models fetch" in fix, fix


def test_a_broken_config_is_one_problem_with_where_it_is(tmp_path):
    config = tmp_path / "voicebot.yaml"
    config.write_text("vad:\n  hangover_s: [0.6\n", encoding="utf-8")

    result = run_voicebot("check", "--no-audio", "--config", str(config))

    assert result.returncode == 1
    [problem] = lines_marked(result.stdout, "FAIL")
    assert f"{config}, line 3" in problem and "invalid YAML" in problem, problem
    assert "Traceback" not in result.stdout + result.stderr


def test_llama_cpp_built_for_a_pi_5_is_refused_on_a_pi_4():
    [on_pi4] = check_llama_build(PI4_FEATURES, PI5_BUILD)
    [on_pi5] = check_llama_build(PI5_FEATURES, PI5_BUILD)

    assert on_pi4.status is Status.FAIL
    assert "DOTPROD, FP16_VA" in on_pi4.found and "Illegal instruction" in on_pi4.found
    assert "GGML_NATIVE=ON" in on_pi4.fix
    assert on_pi5.status is Status.OK and "DOTPROD" in on_pi5.found


def test_this_machines_llama_cpp_build_is_checked_against_its_own_cpu():
    [finding] = check_llama_build()

    assert finding.status is Status.OK, finding
    assert "AVX" in finding.found or "NEON" in finding.found


def test_too_little_memory_for_the_models_is_a_problem():
    config = config_from_dict({"profile": "bundled"})

    [short] = check_memory(config, available_bytes=100 * 2**20)
    [plenty] = check_memory(config, available_bytes=8 * 2**30)

    assert short.status is Status.FAIL and "100 MB available" in short.found
    assert plenty.status is Status.OK


def test_which_sound_setup_this_is(tmp_path):
    other_user = tmp_path / "1000"
    (other_user / "pulse").mkdir(parents=True)
    (other_user / "pulse" / "native").touch()
    (other_user / "pipewire-0").touch()

    servers = find_sound_servers([str(other_user)])
    [alsa] = check_sound_server([], under_systemd=True, uid=999)
    [someone_elses] = check_sound_server(servers, under_systemd=True, uid=999)
    [own] = check_sound_server([SoundServer("PipeWire", "/run/user/999/pipewire-0")], under_systemd=False, uid=999)

    assert [s.name for s in servers] == ["PipeWire", "PulseAudio (or pipewire-pulse)"]
    assert alsa.status is Status.OK and "ALSA directly" in alsa.found
    assert someone_elses.status is Status.WARN and "another user's session" in someone_elses.found
    assert "--user-session" in someone_elses.fix
    assert own.status is Status.OK and "this user's session" in own.found


def test_models_that_are_present_but_not_what_was_published_are_caught(tmp_path):
    for name in (
        "qwen2.5-0.5b-instruct-q4_k_m.gguf",
        "faster-whisper-base/model.bin",
        "en_US-lessac-medium.onnx",
        "en_US-lessac-medium.onnx.json",
        "zh_CN-huayan-medium.onnx",
        "zh_CN-huayan-medium.onnx.json",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not the model")

    result = run_voicebot("check", "--no-audio", "--set", f"models.dir={tmp_path}")

    assert result.returncode == 1
    assert lines_marked(result.stdout, "ok")[3].startswith("[ok  ] models: 4 found"), result.stdout
    [hashes] = lines_marked(result.stdout, "FAIL")
    assert hashes.startswith("[FAIL] model hashes:") and "qwen2.5-0.5b-instruct-q4_k_m.gguf: wrong size" in hashes
    assert "fix: fetch them again: voicebot models fetch" in result.stdout


def http_config(**http) -> object:
    return config_from_dict({"profile": "bundled", "http": {"enabled": True, **http}})


def test_http_off_enabled_free_unsafe_or_taken_are_told_apart(tmp_path):
    import socket

    from voicebot.runtime.net import is_loopback
    from voicebot.tools.doctor import check_http

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    [off] = check_http(config_from_dict({"profile": "bundled"}))
    [free] = check_http(http_config(port=free_port))
    [unsafe] = check_http(http_config(host="0.0.0.0", port=free_port))
    with socket.socket() as holder:  # another program on the port, one that is not a voicebot
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        [taken] = check_http(http_config(port=holder.getsockname()[1]))

    assert off.status is Status.OK and "off" in off.found
    assert free.status is Status.OK and f"127.0.0.1:{free_port}/ is free" in free.found
    assert unsafe.status is Status.FAIL and "http.token is not set" in unsafe.found and "http.token" in unsafe.fix
    assert taken.status is Status.FAIL and "cannot listen" in taken.found and "http.port" in taken.fix
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_a_lan_address_under_the_system_unit_needs_the_drop_in(tmp_path):
    from voicebot.tools.doctor import check_http

    unit = tmp_path / "voicebot.service"
    unit.write_text("[Service]\nIPAddressDeny=any\nIPAddressAllow=localhost\n")
    config = http_config(host="0.0.0.0", token="s3cret", port=1)  # port 1: not bindable, not the point here

    without = check_http(config, unit)
    (tmp_path / "voicebot.service.d").mkdir()
    (tmp_path / "voicebot.service.d" / "lan.conf").write_text("[Service]\nIPAddressAllow=192.168.0.0/16\n")
    with_drop_in = check_http(config, unit)

    assert [f.status for f in without if "IPAddressAllow" in f.found] == [Status.WARN]
    assert "voicebot-lan.conf" in without[-1].fix
    assert not [f for f in with_drop_in if "IPAddressAllow" in f.found]


def test_a_satellite_on_the_lan_without_encryption_is_a_warning():
    from voicebot.tools.doctor import check_satellite_exposure

    def satellite(**settings):
        return config_from_dict({"profile": "bundled", "satellite": {"enabled": True, **settings}})

    [open_lan] = check_satellite_exposure(satellite(host="0.0.0.0"))
    [encrypted] = check_satellite_exposure(satellite(host="0.0.0.0", encryption_key="A" * 43 + "="))
    [loopback] = check_satellite_exposure(satellite())

    assert open_lan.status is Status.WARN and "hear its microphone" in open_lan.found
    assert encrypted.status is Status.OK and "encrypted" in encrypted.found
    assert loopback.status is Status.OK and "loopback only" in loopback.found
    assert check_satellite_exposure(config_from_dict({"profile": "bundled"})) == []


def test_a_lan_address_without_allowed_hosts_is_a_warning(tmp_path):
    from voicebot.tools.doctor import check_http

    without = check_http(http_config(host="0.0.0.0", token="s3cret", port=1), tmp_path / "no.service")
    named = check_http(
        http_config(host="0.0.0.0", token="s3cret", port=1, allowed_hosts=["voicebot.local"]), tmp_path / "no.service"
    )

    [warning] = [f for f in without if "allowed_hosts" in f.found]
    assert warning.status is Status.WARN and "http.allowed_hosts is empty" in warning.found
    assert "set http.allowed_hosts" in warning.fix
    assert not [f for f in named if "allowed_hosts" in f.found]


def test_a_config_every_user_can_read_is_a_warning_when_it_holds_a_secret(tmp_path):
    from voicebot.config import load_config
    from voicebot.tools.doctor import check_config_secrets

    secret = tmp_path / "secret.yaml"
    secret.write_text("profile: bundled\nsatellite:\n  encryption_key: " + "A" * 43 + "=\n", encoding="utf-8")
    plain = tmp_path / "plain.yaml"
    plain.write_text("profile: bundled\n", encoding="utf-8")
    secret.chmod(0o644)
    plain.chmod(0o644)

    [readable] = check_config_secrets(load_config(secret))
    plain_readable = check_config_secrets(load_config(plain))
    secret.chmod(0o640)
    protected = check_config_secrets(load_config(secret))

    assert readable.status is Status.WARN and "satellite.encryption_key" in readable.found
    assert "mode 0644" in readable.found and "chmod 0640" in readable.fix
    assert plain_readable == [] and protected == []
