"""python -m llama_cpp.server (llama-cpp-python's own OpenAI-compatible server) running the bundled model: a real
remote LLM for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from http_server import REPO, free_port

from voicebot.config import config_from_dict
from voicebot.models.paths import resolve_llm


class LlamaServer:
    """python -m llama_cpp.server running the bundled model."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        model = resolve_llm(config_from_dict({"profile": "bundled"}))
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(self.port)]
            + ["--n_ctx", "2048", "--n_threads", "1", "--model_alias", "smollm2"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"llama_cpp.server did not start:\n{self.log()}"
            time.sleep(0.2)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def requests(self) -> int:
        return self.log().count("POST /v1/chat/completions")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)
        self._log.close()
