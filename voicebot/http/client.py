"""An OpenAI-compatible server's chat completions, as the LLM on another machine (llm.backend: openai).

The client has explicit time-outs and raises RemoteEngineError, one line naming the server and what
went wrong, for the LLM service to hand the answer to the local model or give up.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator
from urllib.parse import urlparse

import httpx

from voicebot.config import LlmConfig
from voicebot.errors import ConfigError, RemoteEngineError
from voicebot.llm import Message, Sampling


class RemoteChat:
    """An OpenAI-compatible server's chat completions, streamed (llm.backend: openai)."""

    def __init__(self, config: LlmConfig) -> None:
        parsed = urlparse(config.url or "")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(
                f"config error: llm.url is {config.url!r}; give the API base, such as http://host:8080/v1"
            )
        self.url = config.url.rstrip("/")
        self.model = config.model
        self.timeout_s = config.timeout_s
        self.headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    async def stream(self, messages: list[Message], sampling: Sampling) -> AsyncIterator[str]:
        """The answer's text as the server writes it. RemoteEngineError if the server cannot be reached,
        refuses, or sends nothing for llm.timeout_s (before the first token or between two)."""
        body: dict[str, Any] = {
            "model": self.model or "default",
            "messages": messages,
            "stream": True,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        started = time.monotonic()
        client = httpx.AsyncClient(base_url=self.url + "/", headers=self.headers, timeout=self.timeout_s)
        try:
            async with client, client.stream("POST", "chat/completions", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:200]
                    raise RemoteEngineError(f"the LLM server at {self.url} answered {response.status_code}: {detail}")
                lines = response.aiter_lines()
                while True:
                    try:
                        async with asyncio.timeout(self.timeout_s):
                            line = await anext(lines)
                    except StopAsyncIteration:
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    text = _delta_text(data, self.url)
                    if text:
                        yield text
        except TimeoutError:
            waited = time.monotonic() - started
            raise RemoteEngineError(
                f"the LLM server at {self.url} sent nothing for {self.timeout_s:g} s (llm.timeout_s), "
                f"{waited:.1f} s into the answer"
            ) from None
        except httpx.TimeoutException:
            raise RemoteEngineError(
                f"the LLM server at {self.url} did not answer within {self.timeout_s:g} s (llm.timeout_s)"
            ) from None
        except httpx.HTTPError as error:
            raise RemoteEngineError(f"cannot reach the LLM server at {self.url}: {error}") from None


def _delta_text(data: str, url: str) -> str:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise RemoteEngineError(f"the LLM server at {url} sent a chunk that is not JSON: {data[:80]!r}") from None
    if "error" in chunk:
        message = chunk["error"].get("message") if isinstance(chunk["error"], dict) else chunk["error"]
        raise RemoteEngineError(f"the LLM server at {url} failed mid-answer: {message}")
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    return (choices[0].get("delta") or {}).get("content") or ""
