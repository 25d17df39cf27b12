"""The HTTP server: OpenAI's chat completions, the model list, health and the chat page, on Starlette.

Every request for the model goes through the LLM service, behind any voice turn; a client that
leaves stops its generation. Requests are bounded (body, messages, prompt tokens, queue), and
any bind but loopback needs a bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
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
from voicebot.runtime.net import is_loopback
from voicebot.tts import language_of

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# A queue full of typed requests drains in a few seconds on a Pi: each answer is a few hundred tokens.
RETRY_AFTER_S = 5
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


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
        tokens = await asyncio.to_thread(self._prompt_tokens, messages, chat_request.truncate)
        sampling = self._sampling(chat_request, len(tokens))
        try:
            generation = self.llm.generate(conversation_key(messages), lambda chat: tokens, sampling, Priority.TYPED)
        except LlmBusyError as error:
            raise ApiError(
                429, str(error), kind="rate_limit_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}
            ) from None
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

    async def _read_body(self, request: Request) -> bytes:
        limit = self.http.max_body_bytes
        too_large = ApiError(
            413,
            f"the request body is over {limit} bytes (http.max_body_bytes); send a shorter history",
            code="request_too_large",
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_large
        return bytes(body)

    def _with_system_prompt(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if any(message["role"] == "system" for message in messages):
            return messages
        return [{"role": "system", "content": self.http.system_prompt}, *messages]

    def _prompt_tokens(self, messages: list[dict[str, str]], truncate: bool) -> list[int]:
        """The prompt's tokens within http.max_prompt_tokens, dropping the oldest turns if asked to; in a thread
        (tokenizing does not touch llama.cpp's context, so it runs beside a generation)."""
        limit = min(self.http.max_prompt_tokens, self.chat.context_tokens - 1)
        try:
            tokens = self.chat.prompt_tokens(messages)
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
    """Refuses browsers on other origins (unless allowed) and answers their CORS preflight; sets safety headers.

    A cross-origin form or fetch with a simple content type is sent by the browser without a preflight:
    refusing it here, not just withholding CORS headers, keeps a web page on the LAN from using the model.
    """

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/") for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
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
            Middleware(GuardMiddleware, allowed_origins=config.http.allowed_origins or ()),
            Middleware(GZipMiddleware, minimum_size=512),
        ],
        exception_handlers={ApiError: api_error, 404: not_found, 405: wrong_method, Exception: server_error},
    )


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
