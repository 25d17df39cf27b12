"""OpenAI's chat completions, as data: the request checked field by field, the reply and its chunks, errors.

Nothing here touches the network or the model, so every rule about what a client may send is in one
place and reads as a table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_SEQUENCES = 4
MAX_INTEGER_DIGITS = 40
"""A whole number in a request may have this many digits; every field's range fits, and Python refuses to read
one of more than 4300 digits at all."""


class ApiError(Exception):
    """A request the API refuses, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """{"error": {...}} as OpenAI sends it."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", code="invalid_value", param=param)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; from the http section of the config."""

    max_messages: int
    max_reply_tokens: int


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat completion request."""

    messages: list[dict[str, str]]
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    include_usage: bool = False
    speak: bool = False
    """voicebot's own: also say the answer through the voice loop's speaker."""
    truncate: bool = False
    """voicebot's own ("truncation": "auto", as in OpenAI's Responses API): drop the oldest turns
    until the prompt fits, instead of refusing it."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LongNumber:
    """A whole number in the request too long to be a value of any field, kept unread; a field that finds one
    refuses it by name."""

    digits: int


def _read_integer(text: str) -> int | LongNumber:
    return int(text) if len(text.lstrip("-")) <= MAX_INTEGER_DIGITS else LongNumber(len(text.lstrip("-")))


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        value = json.loads(body, parse_int=_read_integer)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
            code="invalid_json",
        ) from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {_json_type(value)}", code="invalid_json")
    return value


def parse_chat_request(body: dict[str, Any], limits: Limits) -> ChatRequest:
    """Check every field a chat completion request may carry; raises ApiError naming the first bad one."""
    truncation = body.get("truncation", "disabled")
    if truncation not in ("auto", "disabled"):
        raise invalid("truncation", f"expected 'auto' or 'disabled', got {_shown(truncation)}")
    messages = _messages(body.get("messages"), limits, truncate=truncation == "auto")
    if _integer(body, "n", 1, None) not in (None, 1):
        raise invalid("n", "only one choice (n=1) is generated")
    max_tokens = _integer(body, "max_completion_tokens", 1, None)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, None)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise invalid("stream_options", f"expected an object, got {_json_type(stream_options)}")
    for unsupported in ("tools", "functions", "tool_choice", "response_format", "logprobs"):
        if body.get(unsupported) not in (None, False, [], {"type": "text"}):
            raise ApiError(400, f"{unsupported} is not supported by this server", code="unsupported", param=unsupported)
    return ChatRequest(
        messages=messages,
        stream=_boolean(body, "stream"),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        stop=_stop(body.get("stop")),
        seed=_integer(body, "seed", -(2**63), 2**63 - 1),
        include_usage=bool(stream_options and _boolean(stream_options, "include_usage", "stream_options.")),
        speak=_boolean(body, "speak"),
        truncate=truncation == "auto",
    )


def _messages(value: Any, limits: Limits, truncate: bool) -> list[dict[str, str]]:
    if value is None:
        raise ApiError(
            400,
            "messages: required; send a list of {role, content} objects",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(value, list):
        raise invalid("messages", f"expected a list of {{role, content}} objects, got {_json_type(value)}")
    if not value:
        raise invalid("messages", "the list is empty; send at least one user message")
    if len(value) > limits.max_messages and truncate:
        value = _latest(value, limits.max_messages)
    if len(value) > limits.max_messages:
        raise ApiError(
            400,
            f"messages: {len(value)} messages, more than the {limits.max_messages} allowed (http.max_messages); "
            "send only the recent ones",
            code="too_many_messages",
            param="messages",
        )
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(where, f"expected an object with role and content, got {_json_type(message)}")
        role = message.get("role")
        if role == "tool" or role == "function":
            raise ApiError(
                400, f"{where}.role: tool messages are not supported", code="unsupported", param=f"{where}.role"
            )
        if role not in ROLES:
            raise invalid(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {_shown(role)}")
        content = _content(message.get("content"), f"{where}.content")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def _latest(messages: list[Any], cap: int) -> list[Any]:
    """The system messages at the start, then the latest messages: `cap` in all."""

    def is_system(message: Any) -> bool:
        return isinstance(message, dict) and message.get("role") in ("system", "developer")

    leading = list(itertools.takewhile(is_system, messages))[: cap - 1]
    return leading + messages[len(messages) - (cap - len(leading)) :]


def _content(value: Any, where: str) -> str:
    """Text content: a string, or a list of text parts (images and audio are refused)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _json_type(part)
                raise invalid(f"{where}[{index}]", f"only text parts are supported, got {_shown(kind)}")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(where, f"expected a string, got {_json_type(value)}")


def _boolean(body: dict[str, Any], name: str, prefix: str = "") -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(prefix + name, f"expected true or false, got {_shown(value)}")
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, LongNumber):
        raise invalid(name, f"a number of {value.digits} digits is outside {low:g} to {high:g}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(name, f"expected a number from {low:g} to {high:g}, got {_shown(value)}")
    if not low <= value <= high:
        raise invalid(name, f"{value:g} is outside {low:g} to {high:g}")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if isinstance(value, LongNumber):
        raise invalid(name, f"a number of {value.digits} digits is out of range; expected a number {bound}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"expected a whole number, got {_shown(value)}")
    if value < low or (high is not None and value > high):
        raise invalid(name, f"{value} is out of range; expected a number {bound}")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    sequences = [value] if isinstance(value, str) else value
    if not isinstance(sequences, list) or not all(isinstance(s, str) and s for s in sequences):
        raise invalid("stop", "expected a non-empty string or a list of them")
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise invalid("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(sequences)}")
    return tuple(sequences)


def _shown(value: Any) -> str:
    """A value as JSON, cut to 40 characters; a number too long to read, by its length."""
    if isinstance(value, LongNumber):
        return f"a number of {value.digits} digits"
    try:
        return json.dumps(value)[:40]
    except (TypeError, ValueError):  # A LongNumber inside a list or an object.
        return _json_type(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, LongNumber):
        return "a number"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def conversation_key(messages: list[dict[str, str]]) -> str:
    """Which conversation a stateless request continues, for its KV cache: how it began.

    A client sends the whole history each time; the first system and user messages stay the same
    from turn to turn, so they pick out the saved cache to restore (the cache's own prefix match
    then decides how much of it is used, so a wrong guess only costs time).
    """
    opening = [message for message in messages if message["role"] == "system"][:1]
    opening += [message for message in messages if message["role"] == "user"][:1]
    digest = hashlib.sha256(json.dumps(opening, sort_keys=True).encode("utf-8")).hexdigest()
    return f"http-{digest[:16]}"


class StopMatcher:
    """Ends a streamed reply at the first stop sequence, holding back text that may be the start of one."""

    def __init__(self, sequences: tuple[str, ...]) -> None:
        self.sequences = sequences
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of the text so far that is surely before any stop sequence."""
        if self.stopped:
            return ""
        self._held += text
        if not self.sequences:
            out, self._held = self._held, ""
            return out
        cut = min((i for i in (self._held.find(s) for s in self.sequences) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = max((self._partial(s) for s in self.sequences), default=0)
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return out

    def _partial(self, sequence: str) -> int:
        """The length of the longest end of the held text that starts `sequence`."""
        for length in range(min(len(sequence) - 1, len(self._held)), 0, -1):
            if self._held.endswith(sequence[:length]):
                return length
        return 0

    def flush(self) -> str:
        """What is left when the reply ends without a stop sequence."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out


@dataclass
class Completion:
    """One answer's identity, for every chunk of it."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        """A streamed chunk."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The last chunk when the client asked for usage (stream_options.include_usage)."""
        return {**self.chunk({}), "choices": [], "usage": usage}

    def whole(self, text: str, finish_reason: str, usage: dict[str, Any]) -> dict[str, Any]:
        """The non-streamed reply."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }


def usage(prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """OpenAI's usage object; cached_tokens is the part of the prompt found in the KV cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
