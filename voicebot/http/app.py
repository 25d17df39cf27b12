"""The HTTP server: OpenAI's chat completions, the model list, health and the chat page, on Starlette.

Every request for the model goes through the LLM service, behind any voice turn; a client that
leaves stops its generation. Requests are bounded (body, messages, prompt tokens, queue), and
any bind but loopback needs a bearer token. Connections are bounded too (a cap, and deadlines for
headers, body and idleness), and only requests for this machine's own names are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from voicebot.config import Config, HttpConfig, LlmConfig
from voicebot.errors import ConfigError, RequestTooLargeError, VoicebotError
from voicebot.http.completions import (
    ApiError,
    ChatRequest,
    Completion,
    Limits,
    StopMatcher,
    conversation_key,
    parse_chat_request,
    parse_json,
    sse,
    usage,
)
from voicebot.intents.service import Handled, IntentService
from voicebot.llm import ChatModel, Sampling
from voicebot.llm_service import Generation, LlmBusyError, LlmService, LlmStoppedError, Priority
from voicebot.runtime.net import Connections, RateLimitedLog, descriptor_budget, excerpt, is_loopback
from voicebot.tts import language_of

log = logging.getLogger(__name__)
peers = RateLimitedLog(log)
"""Refusals, drops and departures of HTTP peers: one line each, rate-limited."""

STATIC_DIR = Path(__file__).parent / "static"
# A queue full of typed requests drains in a few seconds on a Pi: each answer is a few hundred tokens.
RETRY_AFTER_S = 5
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
MAX_HEADER_BYTES = 16 * 1024
"""A request's line and headers (h11's own default, made explicit); a longer one gets 400."""
MESSAGE_MARKUP_TOKENS = 4
"""The chat template's tokens around each message's text (ChatML: <|im_start|>, the role, newlines, <|im_end|>),
a little under, for cutting a long history in one pass; the exact prompt is counted after the cut."""
CONNECTION = "voicebot.connection"
"""The scope key under which a request finds its connection (_GuardedH11), to mark it trusted."""


def check_http_config(config: HttpConfig, llm: LlmConfig | None = None) -> None:
    """Refuse settings that would open the model to the network without a token, or serve no model."""
    if llm is not None and llm.backend != "local" and not llm.fallback:
        raise ConfigError(
            "config error: http serves the local LLM, but llm.backend is openai with llm.fallback off; "
            "set llm.fallback: true to load the local model too, or http.enabled: false"
        )
    if not is_loopback(config.host) and not config.token:
        raise ConfigError(
            f"config error: http.host is {config.host}, which other machines can reach, but http.token is not set; "
            "set http.token (make one with: openssl rand -hex 16), or use http.host: 127.0.0.1"
        )


@dataclass
class VoiceLink:
    """What the voice loop offers typed chats: its state, and its speaker for answers asked to be spoken."""

    state: Callable[[], str]
    speak: Callable[[AsyncIterator[str], str], bool] | None = None
    """Say text (in a language) as it arrives; False when the voice loop is busy with a turn of its own."""


class ChatApi:
    """The endpoints, over the engines' LLM service."""

    def __init__(
        self,
        llm: LlmService,
        config: Config,
        models: dict[str, Any],
        voice: VoiceLink | None = None,
        intents: IntentService | None = None,
    ) -> None:
        self.llm = llm
        self.intents = intents
        self.chat: ChatModel = llm.chat
        self.models_loaded = models
        self.config = config
        self.http = config.http
        self.voice = voice
        self.model_id = self.chat.model_path.stem
        self.started = time.monotonic()
        self.limits = Limits(max_messages=self.http.max_messages, max_reply_tokens=self.http.max_reply_tokens)
        self._preparing = 0
        """Requests whose prompt is being made: they count against http.max_queued, as the waiting ones do."""
        self._tokenizer = asyncio.Lock()
        """One prompt is tokenized at a time, on one core: a flood of long requests cannot take both."""

    # Endpoints.

    async def health(self, request: Request) -> Response:
        llm = self.llm
        state = "thinking" if llm.running is not None else "idle"
        if self.voice is not None:
            state = self.voice.state()
        return JSONResponse(
            {
                "status": "ok",
                "state": state,
                "model": self.model_id,
                "models": self.models_loaded,
                "queue_length": llm.queue_length,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "auth_required": bool(self.http.token),
                "can_speak": self.voice is not None and self.voice.speak is not None,
                "intents": self.intents is not None and self.intents.config.enabled,
                "kv_cache": {"saves": llm.kv_saves, "restores": llm.kv_restores, "slots": llm.kv_slots},
            }
        )

    async def models(self, request: Request) -> Response:
        self._authorise(request)
        created = int(self.chat.model_path.stat().st_mtime)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.model_id, "object": "model", "created": created, "owned_by": "local"}],
            }
        )

    async def chat_completions(self, request: Request) -> Response:
        self._authorise(request)
        body = parse_json(await self._read_body(request))
        chat_request = parse_chat_request(body, self.limits)
        handled = self._intent(chat_request)
        if handled is not None:
            return self._intent_reply(handled, chat_request)
        messages = self._with_system_prompt(chat_request.messages)
        async with self._queued():
            tokens = await asyncio.to_thread(self._prompt_tokens, messages, chat_request.truncate)
            sampling = self._sampling(chat_request, len(tokens))
            try:
                generation = self.llm.generate(
                    conversation_key(messages), lambda chat: tokens, sampling, Priority.TYPED
                )
            except LlmBusyError as error:
                raise _queue_full(str(error)) from None
        completion = Completion(self.model_id)
        spoken = self._speak_pieces(chat_request)
        if chat_request.stream:
            return StreamingResponse(
                self._stream(generation, chat_request, completion, spoken),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._whole(request, generation, chat_request, completion, spoken)

    async def timers(self, request: Request) -> Response:
        """The running timers and alarms, with the server's clock, for the page's countdown."""
        self._authorise(request)
        intents = self._require_intents()
        return JSONResponse(
            {"now": time.time(), "timers": intents.timers_view()}, headers={"Cache-Control": "no-store"}
        )

    async def lists(self, request: Request) -> Response:
        """Every list and its items."""
        self._authorise(request)
        intents = self._require_intents()
        return JSONResponse({"lists": intents.lists_view()}, headers={"Cache-Control": "no-store"})

    def _require_intents(self) -> IntentService:
        # With intents.enabled false the stage may still be loaded (it matches nothing): the endpoints are off too,
        # so the page hides its panel rather than show timers nothing can set.
        if self.intents is None or not self.intents.config.enabled:
            raise ApiError(404, "timers and lists are off here (intents.enabled: false)", code="not_found")
        return self.intents

    def _intent(self, chat_request: ChatRequest) -> Handled | None:
        """The last message answered by the intent stage (a timer, the time, a list), if it is one."""
        last = chat_request.messages[-1] if chat_request.messages else None
        if self.intents is None or last is None or last["role"] != "user":
            return None
        handled = self.intents.handle(last["content"], language_of(last["content"]))
        if handled is not None:
            match = handled.match
            log.info("typed: intent %s (%.1f ms): %s", match.intent, match.match_ms, handled.text)
        return handled

    def _intent_reply(self, handled: Handled, chat_request: ChatRequest) -> Response:
        """An intent's answer in the shape of a completion, streamed or whole, and said aloud if asked."""
        completion = Completion(self.model_id)
        text = handled.text
        spoken = self._speak_pieces(chat_request) if text else None
        if spoken is not None:
            spoken.put_nowait(text)
            spoken.put_nowait(None)
        answered = usage(0, 0, 0) | {"intent": handled.match.intent}
        if not chat_request.stream:
            return JSONResponse(completion.whole(text, "stop", answered))

        async def chunks() -> AsyncIterator[bytes]:
            yield sse(completion.chunk({"role": "assistant", "content": ""}))
            if text:
                yield sse(completion.chunk({"content": text}))
            yield sse(completion.chunk({}, "stop"))
            if chat_request.include_usage:
                yield sse(completion.usage_chunk(answered))
            yield sse("[DONE]")

        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    # The parts.

    def _authorise(self, request: Request) -> None:
        token = self.http.token
        if not token:
            _trust(request)
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(
                401,
                "this server needs a bearer token: send the header Authorization: Bearer <http.token>",
                kind="authentication_error",
                code="missing_api_key",
            )
        if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
            raise ApiError(401, "the bearer token is wrong", kind="authentication_error", code="invalid_api_key")
        _trust(request)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.http.max_body_bytes
        too_large = ApiError(
            413,
            f"the request body is over {limit} bytes (http.max_body_bytes); send a shorter history",
            code="request_too_large",
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            raise too_large
        body = bytearray()
        timeout_s = self.http.body_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                async for part in request.stream():
                    body += part
                    if len(body) > limit:
                        raise too_large
        except TimeoutError:
            peers.warning(
                "body-timeout",
                "http: %s: refused: its request body did not arrive within %g s (%d bytes came; http.body_timeout_s)",
                _client(request),
                timeout_s,
                len(body),
            )
            raise ApiError(
                408,
                f"the request body did not arrive within {timeout_s:g} s (http.body_timeout_s); send it at once",
                code="request_timeout",
                headers={"Connection": "close"},
            ) from None
        except ClientDisconnect:
            connection = request.scope.get(CONNECTION)
            if connection is None or not connection.dropped:  # A dropped one was logged as it was dropped.
                peers.info(
                    "left-mid-body",
                    "http: %s left in the middle of sending its request (%d bytes came)",
                    _client(request),
                    len(body),
                )
            raise _ClientLeft from None
        return bytes(body)

    def _with_system_prompt(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if any(message["role"] == "system" for message in messages):
            return messages
        return [{"role": "system", "content": self.http.system_prompt}, *messages]

    @contextlib.asynccontextmanager
    async def _queued(self) -> AsyncIterator[None]:
        """A place in the queue while the prompt is made: tokenizing counts against http.max_queued, as waiting
        for the model does (the request about to run is not waiting), and runs one request at a time."""
        if self.llm.queue_length + self._preparing > self.http.max_queued:
            raise _queue_full(f"{self.http.max_queued} requests are already waiting for the LLM; try again shortly")
        self._preparing += 1
        try:
            async with self._tokenizer:
                yield
        finally:
            self._preparing -= 1

    def _prompt_tokens(self, messages: list[dict[str, str]], truncate: bool) -> list[int]:
        """The prompt's tokens within http.max_prompt_tokens, dropping the oldest turns if asked to; in a thread
        (tokenizing does not touch llama.cpp's context, so it runs beside a generation)."""
        limit = min(self.http.max_prompt_tokens, self.chat.context_tokens - 1)
        try:
            if truncate:
                messages = self._newest_that_fit(messages, limit)
            tokens = self.chat.prompt_tokens(messages)
            # The cut was by estimate; any turn still too many costs one tokenization of a prompt near the limit.
            while truncate and len(tokens) > limit and _drop_oldest_turn(messages):
                tokens = self.chat.prompt_tokens(messages)
        except Exception as error:  # noqa: BLE001 - the model's own template refusing these messages
            raise ApiError(400, f"messages: the model's chat template refused them: {error}") from None
        if len(tokens) > limit:
            raise ApiError(
                400,
                f"the prompt is {len(tokens)} tokens, more than the {limit} allowed "
                f'(http.max_prompt_tokens, llm.context_tokens); shorten the history, or send "truncation": "auto"',
                code="context_length_exceeded",
                param="messages",
            )
        return tokens

    def _newest_that_fit(self, messages: list[dict[str, str]], limit: int) -> list[dict[str, str]]:
        """The system messages and the newest others that fit `limit` together, in order, the last one always:
        each message is tokenized once, newest first, until the budget is spent, so the cost is that of the text
        kept, however long the history sent."""

        def cost(message: dict[str, str]) -> int:
            return self.chat.count_tokens(message["content"]) + MESSAGE_MARKUP_TOKENS

        budget = limit - sum(cost(message) for message in messages if message["role"] == "system")
        kept: set[int] = set()
        for index in reversed(range(len(messages))):
            if messages[index]["role"] == "system":
                continue
            budget -= cost(messages[index])
            if budget < 0 and kept:
                break
            kept.add(index)
        return [message for index, message in enumerate(messages) if index in kept or message["role"] == "system"]

    def _sampling(self, chat_request: ChatRequest, prompt_tokens: int) -> Sampling:
        defaults = Sampling.from_config(self.config.llm)
        room = self.chat.context_tokens - prompt_tokens
        wanted = chat_request.max_tokens or self.http.max_reply_tokens
        return Sampling(
            max_tokens=max(1, min(wanted, self.http.max_reply_tokens, room)),
            temperature=chat_request.temperature if chat_request.temperature is not None else defaults.temperature,
            top_k=defaults.top_k,
            top_p=chat_request.top_p if chat_request.top_p is not None else defaults.top_p,
            repeat_penalty=defaults.repeat_penalty,
            seed=chat_request.seed % 2**32 if chat_request.seed is not None else defaults.seed,
        )

    def _speak_pieces(self, chat_request: ChatRequest) -> asyncio.Queue[str | None] | None:
        """A queue the answer is copied into, for the voice loop to say; None unless asked and possible."""
        if not chat_request.speak or self.voice is None or self.voice.speak is None:
            return None
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        async def text() -> AsyncIterator[str]:
            while (piece := await pieces.get()) is not None:
                yield piece

        question = next((m["content"] for m in reversed(chat_request.messages) if m["role"] == "user"), "")
        if not self.voice.speak(text(), language_of(question)):
            log.info("a typed answer was not spoken: the voice loop is busy with a turn")
            return None
        return pieces

    async def _stream(
        self,
        generation: Generation,
        chat_request: ChatRequest,
        completion: Completion,
        spoken: asyncio.Queue[str | None] | None,
    ) -> AsyncIterator[bytes]:
        stop = StopMatcher(chat_request.stop)
        started = time.monotonic()
        finish_reason = "client_left"
        pieces = 0
        try:
            async with generation:
                yield sse(completion.chunk({"role": "assistant", "content": ""}))
                async for piece in generation:
                    pieces += 1
                    text = stop.feed(piece)
                    if text:
                        yield sse(completion.chunk({"content": text}))
                        if spoken is not None:
                            spoken.put_nowait(text)
                    if stop.stopped:
                        break
                rest = stop.flush()
                if rest:
                    yield sse(completion.chunk({"content": rest}))
                    if spoken is not None:
                        spoken.put_nowait(rest)
                finish_reason = self._finish_reason(generation, stop)
                yield sse(completion.chunk({}, finish_reason))
                if chat_request.include_usage:
                    yield sse(completion.usage_chunk(self._usage(generation)))
                yield sse("[DONE]")
        except (VoicebotError, ApiError) as error:
            finish_reason = "error"
            api_error = _as_api_error(error)
            log.warning("a streamed answer failed: %s", api_error.message)
            yield sse(api_error.body())
        finally:
            if spoken is not None:
                spoken.put_nowait(None)
            if finish_reason == "client_left":
                log.info("the client left after %d pieces of a streamed answer; stopped generating it", pieces)
            else:
                self._log_answer(generation, started, finish_reason)

    async def _whole(
        self,
        request: Request,
        generation: Generation,
        chat_request: ChatRequest,
        completion: Completion,
        spoken: asyncio.Queue[str | None] | None,
    ) -> Response:
        stop = StopMatcher(chat_request.stop)
        started = time.monotonic()

        async def collect() -> str:
            text = ""
            async with generation:
                async for piece in generation:
                    part = stop.feed(piece)
                    text += part
                    if spoken is not None and part:
                        spoken.put_nowait(part)
                    if stop.stopped:
                        break
            rest = stop.flush()
            if spoken is not None and rest:
                spoken.put_nowait(rest)
            return text + rest

        collecting = asyncio.create_task(collect())
        client_gone = asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait({collecting, client_gone}, return_when=asyncio.FIRST_COMPLETED)
            if not collecting.done():
                log.info("a client left before its answer was written; stopped generating it")
                collecting.cancel()
                await asyncio.gather(collecting, return_exceptions=True)
                return Response(status_code=499)
            try:
                text = collecting.result()
            except (VoicebotError, ApiError) as error:
                raise _as_api_error(error) from None
        finally:
            client_gone.cancel()
            await asyncio.gather(client_gone, return_exceptions=True)
            if spoken is not None:
                spoken.put_nowait(None)
        finish_reason = self._finish_reason(generation, stop)
        self._log_answer(generation, started, finish_reason)
        return JSONResponse(completion.whole(text, finish_reason, self._usage(generation)))

    @staticmethod
    def _finish_reason(generation: Generation, stop: StopMatcher) -> str:
        if stop.stopped or generation.finished is None:
            return "stop"
        return "length" if generation.finished.reason == "length" else "stop"

    @staticmethod
    def _usage(generation: Generation) -> dict[str, Any]:
        cost, finished = generation.prompt_cost, generation.finished
        return usage(
            cost.tokens if cost else 0,
            cost.cached if cost else 0,
            finished.completion_tokens if finished else 0,
        )

    def _log_answer(self, generation: Generation, started: float, finish_reason: str) -> None:
        cost = generation.prompt_cost
        log.info(
            "typed answer: %s after %.2f s; prompt %s tokens, %s from the KV cache; %d pre-emptions",
            finish_reason,
            time.monotonic() - started,
            cost.tokens if cost else "?",
            cost.cached if cost else "?",
            generation.preemptions,
        )


class _ClientLeft(Exception):
    """The client closed its connection before its request was read; logged once where it was noticed."""


def _queue_full(message: str) -> ApiError:
    return ApiError(
        429, message, kind="rate_limit_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _client(request: Request) -> str:
    """The peer, as log lines name it: "127.0.0.1:50312"."""
    client = request.client
    return f"{client.host}:{client.port}" if client else "a client"


def _trust(request: Request) -> None:
    """Mark the request's connection as a real client's (authorised), which keeps it from being the first dropped."""
    connection = request.scope.get(CONNECTION)
    if connection is not None:
        connection.trusted = True


def _drop_oldest_turn(messages: list[dict[str, str]]) -> bool:
    """Remove the oldest message after the system prompt, keeping the last one; False when nothing is left."""
    first = next((i for i, message in enumerate(messages) if message["role"] != "system"), None)
    if first is None or first == len(messages) - 1:
        return False
    del messages[first]
    return True


def _as_api_error(error: Exception) -> ApiError:
    if isinstance(error, ApiError):
        return error
    if isinstance(error, RequestTooLargeError):
        return ApiError(400, str(error), code="context_length_exceeded")
    if isinstance(error, LlmStoppedError):
        return ApiError(503, str(error), kind="server_error", code="shutting_down")
    return ApiError(500, str(error), kind="server_error", code="llm_failed")


async def _disconnected(request: Request) -> None:
    """Return when the client closes its connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class GuardMiddleware:
    """Refuses requests for a host name that is not this machine's, and browsers on other origins (unless
    allowed); answers their CORS preflight; sets safety headers.

    A web page can reach a loopback server by DNS rebinding: its own name, resolved again to 127.0.0.1, makes the
    browser treat the server as the page's own origin. Only the Host header shows it: answering only loopback
    names and http.allowed_hosts stops it. A cross-origin form or fetch with a simple content type is sent by
    the browser without a preflight: refusing it here, not just withholding CORS headers, keeps a web page on
    the LAN from using the model.
    """

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...], allowed_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/") for origin in allowed_origins}
        self.hosts = {name for host in allowed_hosts if (name := host_name(host))}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        host = headers.get("host", "")
        name = host_name(host)
        if name is None or not (is_loopback(name) or name in self.hosts):
            client = scope.get("client")
            peers.warning(
                "host",
                "http: %s: refused a request for the host %s: not loopback, nor in http.allowed_hosts",
                f"{client[0]}:{client[1]}" if client else "a client",
                excerpt(host, 60),
            )
            error = ApiError(
                421,
                f"this server does not answer to the name {excerpt(host, 60)}; if it is this machine's, "
                "add it to http.allowed_hosts",
                kind="permission_error",
                code="host_not_allowed",
            )
            await JSONResponse(error.body(), status_code=421)(scope, receive, send)
            return
        origin = headers.get("origin")
        cross = origin is not None and not _same_origin(origin, headers.get("host", ""))
        if cross and origin not in self.allowed:
            error = ApiError(
                403,
                f"requests from the web page at {origin} are not allowed; add it to http.allowed_origins",
                kind="permission_error",
                code="origin_not_allowed",
            )
            await JSONResponse(error.body(), status_code=403)(scope, receive, send)
            return
        if cross and scope["method"] == "OPTIONS":
            await Response(status_code=204, headers=_cors_headers(origin, preflight=True))(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = {
                    "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                }
                if cross:
                    extra |= _cors_headers(origin, preflight=False)
                message["headers"] = list(message.get("headers", [])) + [
                    (key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in extra.items()
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def host_name(host: str) -> str | None:
    """The name or address in a Host header or an http.allowed_hosts entry, without its port or IPv6 brackets,
    in lower case ("[::1]:8080" -> "::1", "Voicebot.Local." -> "voicebot.local"); None if it is not one."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
    elif host.count(":") > 1:
        name = host  # An IPv6 address without brackets (as an http.allowed_hosts entry may be written).
    else:
        name, colon, port = host.rpartition(":")
        if not colon:
            name = port
        elif not port.isdigit():
            return None
    name = name.rstrip(".")
    return name if name and len(name) <= 253 and " " not in name else None


def _same_origin(origin: str, host: str) -> bool:
    scheme, _, rest = origin.partition("://")
    return scheme in ("http", "https") and rest.rstrip("/") == host


def _cors_headers(origin: str, preflight: bool) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers |= {
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        }
    return headers


def create_app(
    llm: LlmService,
    config: Config,
    models: dict[str, Any] | None = None,
    voice: VoiceLink | None = None,
    intents: IntentService | None = None,
) -> Starlette:
    """The Starlette app: /v1/chat/completions, /v1/models, /v1/timers, /v1/lists, /health, and the chat page at /,
    over `llm`'s local model and, when given, the intent stage; `models` names the model files loaded."""
    check_http_config(config.http, config.llm)
    api = ChatApi(llm, config, models or {"llm": llm.chat.model_path.name}, voice, intents)

    async def api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def not_found(request: Request, error: Exception) -> Response:
        body = ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found").body()
        return JSONResponse(body, status_code=404)

    async def wrong_method(request: Request, error: Exception) -> Response:
        body = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return JSONResponse(body.body(), status_code=405)

    async def client_left(request: Request, error: Exception) -> Response:
        return Response(status_code=499)  # Nobody reads it: the client has gone.

    async def server_error(request: Request, error: Exception) -> Response:
        log.error("request %s %s failed: %s: %s", request.method, request.url.path, type(error).__name__, error)
        body = ApiError(500, f"the server failed: {type(error).__name__}", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    return Starlette(
        routes=[
            Route("/", api.page, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
            Route("/v1/timers", api.timers, methods=["GET"]),
            Route("/v1/lists", api.lists, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[
            Middleware(
                GuardMiddleware,
                allowed_origins=config.http.allowed_origins or (),
                allowed_hosts=config.http.allowed_hosts or (),
            ),
            Middleware(GZipMiddleware, minimum_size=512),
        ],
        exception_handlers={
            ApiError: api_error,
            _ClientLeft: client_left,
            404: not_found,
            405: wrong_method,
            Exception: server_error,
        },
    )


class _Guard:
    """What every connection of one HTTP server shares: the registry within the cap, and the deadlines."""

    def __init__(self, config: HttpConfig) -> None:
        cap = descriptor_budget(config.max_connections)
        if cap < config.max_connections:
            log.warning(
                "http: serving at most %d connections at once, not %d (http.max_connections): the descriptor limit "
                "leaves room for no more; raise it (ulimit -n, or LimitNOFILE= in the unit)",
                cap,
                config.max_connections,
            )
        self.connections: Connections[Any] = Connections(cap)
        self.header_timeout_s = config.header_timeout_s
        self.idle_timeout_s = config.idle_timeout_s


class _PeerWarnings:
    """uvicorn's logger for one connection, with its warnings about what the peer sent ("Invalid HTTP request
    received.") in one rate-limited line that names the peer."""

    def __init__(self, logger: logging.Logger, peer: str) -> None:
        self._logger = logger
        self._peer = peer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def warning(self, message: str, *args: object) -> None:
        peers.warning("invalid", "http: %s: refused: %s", self._peer, message % args if args else message)


def _guarded_h11() -> type:
    """uvicorn's HTTP/1.1 protocol within the server's caps (imported here: uvicorn loads only with a server)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        """A connection admitted by the registry (at the cap, the one waiting longest untrusted or idle makes room,
        or this one gets 503), whose request headers must arrive within http.header_timeout_s of their first byte
        and which is closed after http.idle_timeout_s with no request under way."""

        def __init__(self, *args: Any, guard: _Guard, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.guard = guard
            self.trusted = False
            self.dropped = False
            self.label = "a client"
            self._admitted = False
            self._since = time.monotonic()
            self._deadline: asyncio.TimerHandle | None = None
            self._deadline_kind = ""

        @property
        def idle_since(self) -> float | None:
            """When it last finished a request or connected; None while a request it has sent whole is served."""
            cycle = self.cycle
            serving = cycle is not None and not cycle.response_complete and self.conn.their_state is not h11.SEND_BODY
            return None if serving else self._since

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.client:
                self.label = f"{self.client[0]}:{self.client[1]}"
            self.logger = _PeerWarnings(self.logger, self.label)  # type: ignore[assignment]
            admission = self.guard.connections.admit(self)
            if not admission.admitted:
                cap = self.guard.connections.cap
                peers.warning(
                    "busy",
                    "http: %s refused: %d connections are open, none idle (http.max_connections)",
                    self.label,
                    cap,
                )
                body = ApiError(
                    503,
                    f"{cap} connections are open, every one busy; try again shortly",
                    kind="server_error",
                    code="too_many_connections",
                ).body()
                content = json.dumps(body).encode()
                transport.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(content)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n".encode()
                    + content
                )
                transport.close()
                return
            self._admitted = True
            if admission.dropped is not None:
                dropped = admission.dropped
                peers.warning(
                    "dropped",
                    "http: at the cap of %d connections: dropped %s (%s for %.1f s) to let %s in",
                    self.guard.connections.cap,
                    dropped.label,
                    "idle" if dropped.trusted else "unauthorised, no request served",
                    time.monotonic() - (dropped.idle_since or time.monotonic()),
                    self.label,
                )
            self._arm(self.guard.idle_timeout_s, "idle")

        def data_received(self, data: bytes) -> None:
            if not self._admitted:
                return
            if not self._in_request() and self._deadline_kind != "headers":
                self._arm(self.guard.header_timeout_s, "headers")  # The first byte of a request: its headers' clock.
            super().data_received(data)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before and self.cycle is not None:  # A request's headers have all arrived.
                self.cycle.scope[CONNECTION] = self  # type: ignore[literal-required]
                self._disarm()

        def on_response_complete(self) -> None:
            self._since = time.monotonic()
            super().on_response_complete()  # uvicorn's keep-alive timer (http.idle_timeout_s) takes over.

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._admitted:
                self.guard.connections.discard(self)
            super().connection_lost(exc)

        def drop(self) -> None:
            """Close it at once (to make room at the cap); the registry's caller logged it."""
            self.dropped = True
            self._disarm()
            self.transport.abort()

        def _arm(self, timeout_s: float, kind: str) -> None:
            self._disarm()
            self._deadline_kind = kind
            self._deadline = self.loop.call_later(timeout_s, self._expired, timeout_s, kind)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self._deadline_kind = None, ""

        def _expired(self, timeout_s: float, kind: str) -> None:
            self._deadline, self._deadline_kind = None, ""
            if self.transport.is_closing():
                return
            if kind == "headers":
                peers.warning(
                    "header-timeout",
                    "http: %s: closed: its request headers did not arrive within %g s (http.header_timeout_s)",
                    self.label,
                    timeout_s,
                )
            else:
                peers.info(
                    "idle", "http: %s: closed: no request within %g s (http.idle_timeout_s)", self.label, timeout_s
                )
            self.transport.abort()

    return GuardedH11


class HttpServer:
    """uvicorn serving the app inside the assistant's event loop, leaving signals to the assistant."""

    def __init__(
        self, app: Starlette, config: HttpConfig, on_started: Callable[[str], None] = lambda url: None
    ) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # The assistant owns SIGTERM, SIGINT and SIGHUP.
                yield

            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                if self.started:
                    on_started(url)

        host = f"[{config.host}]" if ":" in config.host else config.host
        url = f"http://{host}:{config.port}/"
        self.url = url
        self._server = Server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                http=functools.partial(_guarded_h11(), guard=_Guard(config)),
                h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                timeout_keep_alive=config.idle_timeout_s,  # type: ignore[arg-type]
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=3,
            )
        )

    async def serve(self) -> None:
        """Listen until stop(); an address that cannot be listened on is a one-line error."""
        cannot = VoicebotError(
            f"cannot listen on {self.url}: the port is in use, or the address is not this machine's; "
            "set http.host and http.port"
        )
        try:
            await self._server.serve()
        except SystemExit:
            raise cannot from None
        if not self._server.started:
            raise cannot

    def stop(self) -> None:
        """Finish open requests (for up to 3 s) and stop."""
        self._server.should_exit = True
