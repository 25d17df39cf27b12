"""Model downloads against a real HTTP server on 127.0.0.1: resume, cut and corrupt downloads, verify, list."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import openwakeword
import pytest

from voicebot.config import config_from_dict
from voicebot.errors import ModelNotFoundError
from voicebot.models.fetch import (
    MIRROR_ENV,
    ChecksumError,
    DownloadError,
    DownloadStopped,
    FileState,
    UnknownModelError,
    UnverifiableModelError,
    add_models_parser,
    fetch_model,
    models_command,
    run_models_command,
    verify_model,
)
from voicebot.models.paths import resolve_models
from voicebot.models.registry import REGISTRY, ModelEntry, ModelFile

pytestmark = pytest.mark.timeout(60)

SIZE = 3 * 1024 * 1024 + 123  # Several of the fetcher's 1 MiB chunks, and not a multiple of them.
WHEEL_MODELS = Path(openwakeword.__file__).parent / "resources" / "models"
SLOW_PIECE_BYTES, SLOW_PIECE_PAUSE_S = 16 * 1024, 0.03  # 1.3 MB in about 2.5 s


@dataclass
class Request:
    """What the test server saw of one request."""

    path: str
    range: str | None
    status: int
    body_bytes: int


@dataclass
class ModelServer:
    """Files by URL path, served with Range support, or cut, truncated or Range-deaf on purpose."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, list[str]] = field(default_factory=dict)
    """Per path, how to serve the next requests, one mode each; 'good' once the list runs out."""
    requests: list[Request] = field(default_factory=list)
    slow: bool = False
    """Send bodies in small pieces with pauses, as a slow link does."""

    def serve(self, path: str, data: bytes, *modes: str) -> str:
        """Serve data at path (the first requests in these modes); return its URL."""
        self.files[path] = data
        self.modes[path] = list(modes)
        return self.url + path


def make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            path = urlsplit(self.path).path
            data = server.files.get(path)
            asked_range = self.headers.get("Range")
            if data is None:
                self._respond(path, asked_range, 404, b"not found")
                return
            modes = server.modes[path]
            mode = modes.pop(0) if modes else "good"
            start = int(asked_range.removeprefix("bytes=").split("-")[0]) if asked_range else 0
            if mode == "corrupt":
                flipped = bytearray(data)
                flipped[len(data) // 2] ^= 0xFF
                data = bytes(flipped)
            if mode == "short":
                data = data[: len(data) // 2]
            if asked_range and mode != "ignore-range":
                if start >= len(data):
                    self._respond(path, asked_range, 416, b"")
                    return
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                self._respond(path, asked_range, 206, data[start:], headers, cut=mode == "cut")
            else:
                self._respond(path, asked_range, 200, data, cut=mode == "cut")

        def _respond(self, path, asked_range, status, body, headers=None, cut=False):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            # A cut connection promises the whole body and drops the connection halfway through it.
            sent = body[: len(body) // 2] if cut else body
            piece = SLOW_PIECE_BYTES if server.slow else len(sent) or 1
            for start in range(0, len(sent), piece):
                self.wfile.write(sent[start : start + piece])
                self.wfile.flush()
                if server.slow:
                    time.sleep(SLOW_PIECE_PAUSE_S)
            if cut:
                self.close_connection = True
            server.requests.append(Request(path, asked_range, status, len(sent)))

    return Handler


class QuietServer(ThreadingHTTPServer):
    """A test server that does not print the broken pipes of the downloads the tests cut short."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    """A real HTTP server on 127.0.0.1, in a thread."""
    server = ModelServer()
    httpd = QuietServer(("127.0.0.1", 0), make_handler(server))
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, name="model-server", daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def random_bytes(size: int = SIZE, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def one_file_model(url: str, data: bytes, path: str = "test-model.gguf") -> ModelEntry:
    """A registry entry for one file, as the tests' own registry."""
    return ModelEntry(
        name="test-model",
        kind="llm",
        location=path,
        files=(ModelFile(path, url, len(data), hashlib.sha256(data).hexdigest()),),
        licence="test",
        description="generated bytes",
    )


def files_in(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_size for path in folder.rglob("*") if path.is_file()}


def test_a_good_file_is_downloaded_checked_and_renamed(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/good.gguf", data), data)

    downloaded = fetch_model(entry, tmp_path)

    assert downloaded == [tmp_path / "test-model.gguf"]
    assert (tmp_path / "test-model.gguf").read_bytes() == data
    assert files_in(tmp_path) == {"test-model.gguf": SIZE}


def test_a_model_already_installed_with_the_right_hash_is_not_downloaded_again(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/good.gguf", data), data)
    fetch_model(entry, tmp_path)
    requests_before = len(model_server.requests)

    assert fetch_model(entry, tmp_path) == []
    assert len(model_server.requests) == requests_before == 1


def test_an_installed_file_with_the_wrong_hash_is_downloaded_again(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/good.gguf", data), data)
    (tmp_path / "test-model.gguf").write_bytes(random_bytes(seed=2))

    assert fetch_model(entry, tmp_path) == [tmp_path / "test-model.gguf"]
    assert (tmp_path / "test-model.gguf").read_bytes() == data


def test_a_connection_dropped_halfway_leaves_only_the_part_file(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/cut.gguf", data, "cut"), data)

    with pytest.raises(DownloadError) as raised:
        fetch_model(entry, tmp_path)

    message = str(raised.value)
    assert "\n" not in message and "test-model.gguf" in message and "/models/cut.gguf" in message
    assert "voicebot models fetch" in message and "resume" in message
    assert not (tmp_path / "test-model.gguf").exists()
    assert files_in(tmp_path) == {"test-model.gguf.part": SIZE // 2}


def test_a_truncated_file_on_the_server_is_never_installed(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/short.gguf", data, "short"), data)

    with pytest.raises(DownloadError, match=rf"sent {SIZE // 2} of {SIZE} bytes"):
        fetch_model(entry, tmp_path)

    assert not (tmp_path / "test-model.gguf").exists()
    assert list(files_in(tmp_path)) == ["test-model.gguf.part"]


def test_a_download_with_the_wrong_hash_is_deleted(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/corrupt.gguf", data, "corrupt"), data)

    with pytest.raises(ChecksumError) as raised:
        fetch_model(entry, tmp_path)

    message = str(raised.value)
    assert "\n" not in message and "test-model.gguf" in message and hashlib.sha256(data).hexdigest() in message
    assert files_in(tmp_path) == {}, "neither the final file nor a .part may be left"


def test_an_interrupted_download_resumes_with_a_range_request(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/flaky.gguf", data, "cut"), data)
    with pytest.raises(DownloadError):
        fetch_model(entry, tmp_path)

    fetch_model(entry, tmp_path)

    first, second = model_server.requests
    assert (first.range, first.status, first.body_bytes) == (None, 200, SIZE // 2)
    assert (second.range, second.status, second.body_bytes) == (f"bytes={SIZE // 2}-", 206, SIZE - SIZE // 2)
    assert (tmp_path / "test-model.gguf").read_bytes() == data
    assert files_in(tmp_path) == {"test-model.gguf": SIZE}


def test_a_server_that_ignores_range_makes_the_download_start_over(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/no-range.gguf", data, "ignore-range"), data)
    (tmp_path / "test-model.gguf.part").write_bytes(data[:1000])

    fetch_model(entry, tmp_path)

    (request,) = model_server.requests
    assert (request.range, request.status, request.body_bytes) == ("bytes=1000-", 200, SIZE)
    assert (tmp_path / "test-model.gguf").read_bytes() == data


def test_a_stale_part_of_another_file_is_deleted_and_the_download_starts_over(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/good.gguf", data), data)
    (tmp_path / "test-model.gguf.part").write_bytes(random_bytes(SIZE // 3, seed=7))

    fetch_model(entry, tmp_path)

    assert [(r.range, r.status) for r in model_server.requests] == [(f"bytes={SIZE // 3}-", 206), (None, 200)]
    assert (tmp_path / "test-model.gguf").read_bytes() == data
    assert files_in(tmp_path) == {"test-model.gguf": SIZE}


def test_a_missing_file_on_the_server_is_one_line_naming_the_url(model_server, tmp_path):
    entry = one_file_model(f"{model_server.url}/models/absent.gguf", b"x")

    with pytest.raises(DownloadError, match=r"/models/absent.gguf answered HTTP 404 Not Found; check the URL"):
        fetch_model(entry, tmp_path)

    assert files_in(tmp_path) == {}


def test_a_stopped_download_keeps_its_part_for_later(model_server, tmp_path):
    data = random_bytes()
    entry = one_file_model(model_server.serve("/models/good.gguf", data), data)
    stop = threading.Event()
    stop.set()

    with pytest.raises(DownloadStopped, match="voicebot models fetch"):
        fetch_model(entry, tmp_path, stop=stop)

    assert not (tmp_path / "test-model.gguf").exists()


def test_cancelling_the_models_command_stops_the_download_at_once_and_keeps_its_part(
    model_server, tmp_path, monkeypatch
):
    # A real registry model through the mirror, sent slowly enough to be caught mid-download.
    model_server.slow = True
    data = wheel_file("hey_jarvis_v0.1.onnx")
    model_server.serve("/dscripka/openWakeWord/releases/download/v0.5.1/hey_jarvis_v0.1.onnx", data)
    monkeypatch.setenv(MIRROR_ENV, model_server.url)
    args = models_args("fetch", "hey_jarvis")
    part = tmp_path / "openwakeword" / "hey_jarvis_v0.1.onnx.part"

    async def cancel_mid_download() -> float:
        command = asyncio.create_task(models_command(args, pi_config(tmp_path)))
        while not (part.is_file() and part.stat().st_size > 0):
            assert not command.done(), "the download finished before it could be cancelled"
            await asyncio.sleep(0.01)
        command.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(command, timeout=10)
        return time.monotonic() - cancelled_at

    stopped_in_s = asyncio.run(cancel_mid_download())

    assert stopped_in_s < 0.5
    assert not (tmp_path / "openwakeword" / "hey_jarvis_v0.1.onnx").exists()
    assert 0 < part.stat().st_size < len(data)


def test_a_file_without_a_published_hash_is_refused_before_any_request(model_server, tmp_path):
    url = model_server.serve("/models/unknown.gguf", b"weights")
    entry = ModelEntry("unpinned", "llm", "unpinned.gguf", (ModelFile("unpinned.gguf", url, None, None),), "?", "?")

    with pytest.raises(UnverifiableModelError) as raised:
        fetch_model(entry, tmp_path)

    assert "unpinned: no published SHA-256 for unpinned.gguf is known" in str(raised.value)
    assert f"download {url} yourself into {tmp_path}" in str(raised.value)

    assert model_server.requests == [] and files_in(tmp_path) == {}


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_mirror_serves_the_same_paths(model_server, tmp_path, monkeypatch, how):
    data = random_bytes()
    path = "/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/abc/test-model.gguf"
    model_server.serve(f"/mirror{path}", data)
    entry = one_file_model(f"https://huggingface.co{path}", data)
    if how == "environment":
        monkeypatch.setenv(MIRROR_ENV, f"{model_server.url}/mirror/")
    mirror = f"{model_server.url}/mirror" if how == "argument" else None

    fetch_model(entry, tmp_path, mirror=mirror)

    assert [r.path for r in model_server.requests] == [f"/mirror{path}"]
    assert (tmp_path / "test-model.gguf").read_bytes() == data


def test_verify_reports_ok_missing_wrong_size_and_wrong_hash(tmp_path):
    files = {name: random_bytes(1000 + index, seed=index) for index, name in enumerate("abcd")}
    entry = ModelEntry(
        "four",
        "asr",
        "four",
        tuple(
            ModelFile(f"four/{name}", f"http://127.0.0.1:9/{name}", len(data), hashlib.sha256(data).hexdigest())
            for name, data in files.items()
        ),
        "test",
        "test",
    )
    (tmp_path / "four").mkdir()
    for name in "abc":
        (tmp_path / "four" / name).write_bytes(files[name])
    flipped = bytearray(files["b"])
    flipped[500] ^= 0x01
    (tmp_path / "four" / "b").write_bytes(bytes(flipped))
    (tmp_path / "four" / "c").write_bytes(files["c"][:-1])

    checks = verify_model(entry, tmp_path)

    assert [(check.path.name, check.state) for check in checks] == [
        ("a", FileState.OK),
        ("b", FileState.WRONG_HASH),
        ("c", FileState.WRONG_SIZE),
        ("d", FileState.MISSING),
    ]


# The command line, on the real registry.


def models_args(*argv: str) -> argparse.Namespace:
    """`voicebot models ...` parsed as cli.py will parse it."""
    parser = argparse.ArgumentParser(prog="voicebot")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--set", action="append", default=[])
    add_models_parser(parser.add_subparsers(dest="command", required=True), common)
    return parser.parse_args(["models", *argv])


def pi_config(models_dir: Path):
    return config_from_dict({"profile": "pi", "models": {"dir": str(models_dir)}})


def models_cli(tmp_path: Path, *argv: str) -> int:
    """Run `voicebot models ...` with models.dir in tmp_path."""
    return run_models_command(models_args(*argv), pi_config(tmp_path))


def wheel_file(name: str) -> bytes:
    """A model file as openwakeword 0.4.0's wheel carries it."""
    return (WHEEL_MODELS / name).read_bytes()


def test_list_shows_each_model_with_its_size_licence_and_whether_it_is_installed(tmp_path, capsys):
    (tmp_path / "openwakeword").mkdir()
    (tmp_path / "openwakeword" / "hey_jarvis_v0.1.onnx").write_bytes(wheel_file("hey_jarvis_v0.1.onnx"))

    assert models_cli(tmp_path, "list") == 0

    lines = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line
        for line in capsys.readouterr().out.splitlines()
    }
    assert set(REGISTRY) <= set(lines)
    qwen = lines["qwen2.5-0.5b-instruct-q4_k_m"]
    assert qwen.startswith("*") and "491 MB" in qwen and "Apache-2.0" in qwen and " no " in qwen
    assert not lines["qwen2.5-0.5b-instruct-q8_0"].startswith("*") and "676 MB" in lines["qwen2.5-0.5b-instruct-q8_0"]
    assert " ? " in lines["qwen2.5-0.5b-instruct-q4_0"]
    assert " yes " in lines["hey_jarvis"] and "CC BY-NC-SA 4.0" in lines["hey_jarvis"]
    assert lines["faster-whisper-base"].startswith("*") and "MIT" in lines["faster-whisper-base"]
    assert "research licence (dataset)  Piper voice for English" in lines["en_US-lessac-medium"]
    assert f"models.dir: {tmp_path}" in lines.values()


def test_fetch_and_verify_a_real_registry_model_through_a_mirror(model_server, tmp_path, monkeypatch, capsys):
    # openwakeword 0.4.0's wheel carries the very bytes of the v0.5.1 release's hey_jarvis: the real hash checks them.
    model_server.serve(
        "/dscripka/openWakeWord/releases/download/v0.5.1/hey_jarvis_v0.1.onnx", wheel_file("hey_jarvis_v0.1.onnx")
    )
    monkeypatch.setenv(MIRROR_ENV, model_server.url)

    assert models_cli(tmp_path, "fetch", "hey_jarvis") == 0
    assert models_cli(tmp_path, "verify", "hey_jarvis") == 0

    out = capsys.readouterr().out
    assert "hey_jarvis: downloaded 1 file(s), checked" in out
    assert f"ok           hey_jarvis: {tmp_path}/openwakeword/hey_jarvis_v0.1.onnx" in out
    assert files_in(tmp_path) == {"openwakeword/hey_jarvis_v0.1.onnx": 1271370}


def test_verify_without_names_checks_the_pi_models_and_says_how_to_get_them(tmp_path, capsys):
    (tmp_path / "openwakeword").mkdir()
    shutil.copyfile(WHEEL_MODELS / "alexa_v0.1.onnx", tmp_path / "openwakeword" / "alexa_v0.1.onnx")

    assert models_cli(tmp_path, "verify") == 66

    out = capsys.readouterr().out
    assert f"missing      qwen2.5-0.5b-instruct-q4_k_m: {tmp_path}/qwen2.5-0.5b-instruct-q4_k_m.gguf" in out
    assert f"missing      faster-whisper-base: {tmp_path}/faster-whisper-base/vocabulary.txt" in out
    assert f"missing      zh_CN-huayan-medium: {tmp_path}/zh_CN-huayan-medium.onnx.json" in out
    assert f"ok           alexa: {tmp_path}/openwakeword/alexa_v0.1.onnx" in out
    assert "voicebot models fetch qwen2.5-0.5b-instruct-q4_k_m faster-whisper-base en_US-lessac-medium" in out


def test_verify_reports_a_corrupted_model_with_the_data_error_exit_code(tmp_path, capsys):
    (tmp_path / "openwakeword").mkdir()
    corrupted = bytearray(wheel_file("hey_jarvis_v0.1.onnx"))
    corrupted[1000] ^= 0x01
    (tmp_path / "openwakeword" / "hey_jarvis_v0.1.onnx").write_bytes(bytes(corrupted))

    assert models_cli(tmp_path, "verify", "hey_jarvis") == 65
    assert "wrong hash   hey_jarvis:" in capsys.readouterr().out


def test_fetch_refuses_the_model_without_a_published_hash(tmp_path):
    with pytest.raises(UnverifiableModelError, match=r"qwen2.5-0.5b-instruct-q4_0: no published SHA-256"):
        models_cli(tmp_path, "fetch", "qwen2.5-0.5b-instruct-q4_0")


def test_fetch_names_an_unknown_model_and_the_known_ones(tmp_path):
    with pytest.raises(UnknownModelError, match=r"unknown model qwen9; known models: qwen2.5-0.5b-instruct-q4_k_m, "):
        models_cli(tmp_path, "fetch", "qwen9")


# models.py: the pi profile's missing models, all in one line.


def test_all_missing_pi_models_are_named_in_one_line_with_the_command_that_gets_them(tmp_path):
    config = config_from_dict({"profile": "pi", "models": {"dir": str(tmp_path)}})

    with pytest.raises(ModelNotFoundError) as raised:
        resolve_models(config)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("4 model files not found (profile pi): ")
    for missing, key in [
        ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "llm"),
        ("faster-whisper-base/model.bin", "asr"),
        ("en_US-lessac-medium.onnx", "voice_en"),
        ("zh_CN-huayan-medium.onnx", "voice_zh"),
    ]:
        assert f"{tmp_path}/{missing} (models.{key})" in message
    assert "get them all with: voicebot models fetch;" in message
    assert message.endswith("or try the small bundled models with --set profile=bundled")


def test_a_missing_voice_config_and_a_custom_model_get_their_own_hints(tmp_path):
    (tmp_path / "en_US-lessac-medium.onnx").write_bytes(b"voice")
    config = config_from_dict(
        {"profile": "pi", "models": {"dir": str(tmp_path), "llm": "mine.gguf", "voice_zh": "mine-zh.onnx"}}
    )

    with pytest.raises(ModelNotFoundError) as raised:
        resolve_models(config, frozenset({"llm", "tts"}))

    message = str(raised.value)
    assert f"Piper voice config {tmp_path}/en_US-lessac-medium.onnx.json (models.voice_en)" in message
    assert f"LLM {tmp_path}/mine.gguf (models.llm)" in message
    assert "get it with: voicebot models fetch; check models.llm, models.voice_zh;" in message
    assert "every voice .onnx needs its .onnx.json beside it" in message
