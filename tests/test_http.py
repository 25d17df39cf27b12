"""The OpenAI-compatible API of `voicebot serve`, on the real model, through the official `openai` client and raw HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from http_server import ServerProcess

BUNDLED = ["--set", "profile=bundled", "--set", "llm.seed=1"]
TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process = ServerProcess("serve", [*BUNDLED, "--set", "http.max_queued=3"], log).wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}v1", api_key="not-needed-on-loopback", timeout=60, max_retries=0)


def ask(question: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": question}]


def test_the_openai_client_gets_the_same_answer_whole_and_streamed(client):
    model = client.models.list().data[0].id
    assert model == "SmolLM2-135M-Instruct.Q4_1"
    messages = ask("Name three colours of the rainbow.")

    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=30, temperature=0, seed=7)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=30,
            temperature=0,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    answer = whole.choices[0].message.content
    assert answer and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 10 and 0 < whole.usage.completion_tokens <= 30
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) >= 3, "the answer came in one piece, not streamed"
    assert "".join(contents) == answer  # greedy decoding: the same tokens either way
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_ends_with_length_and_stop_sequences_cut_the_answer(client):
    counted = client.chat.completions.create(
        model="any",
        messages=ask("Count from one to twenty in words, separated by commas."),
        max_tokens=5,
        temperature=0,
    )
    assert counted.choices[0].finish_reason == "length" and counted.usage.completion_tokens == 5

    question = ask("Write one sentence about the sea.")
    full = client.chat.completions.create(model="any", messages=question, max_tokens=40, temperature=0)
    text = full.choices[0].message.content
    assert len(text) > 12, text
    stop = text[8:11]
    cut = client.chat.completions.create(model="any", messages=question, max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_seed_repeats_an_answer_at_temperature(client):
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model="any", messages=ask("Invent a name for a cat."), max_tokens=12, temperature=1.2, seed=seed
        )
        return reply.choices[0].message.content

    assert sample(11) == sample(11)
    assert len({sample(11), sample(12), sample(13)}) > 1


def test_a_second_turn_reuses_the_first_ones_kv_cache_even_after_another_chat(client):
    system = "You are a patient tutor. " + "Explain things simply, with one example each time. " * 12
    first = ask("What is a noun?", system)
    one = client.chat.completions.create(model="any", messages=first, max_tokens=24, temperature=0)
    second = [*first, {"role": "assistant", "content": one.choices[0].message.content}, ask("And a verb?")[0]]

    two = client.chat.completions.create(model="any", messages=second, max_tokens=24, temperature=0)
    # Another chat with a different opening takes the model, then the first chat goes on.
    other = ask("Write a haiku about rain.", "You are a poet who writes only haiku, never anything else at all.")
    client.chat.completions.create(model="any", messages=other, max_tokens=24, temperature=0)
    third = [*second, {"role": "assistant", "content": two.choices[0].message.content}, ask("And an adverb?")[0]]
    three = client.chat.completions.create(model="any", messages=third, max_tokens=24, temperature=0)

    cached_two = two.usage.prompt_tokens_details.cached_tokens
    cached_three = three.usage.prompt_tokens_details.cached_tokens
    print(
        f"KV reuse: turn 2 {cached_two}/{two.usage.prompt_tokens} prompt tokens cached; "
        f"turn 3, after another chat, {cached_three}/{three.usage.prompt_tokens}"
    )
    # Turn 2 found all of turn 1's prompt in the cache; only its answer and the new question were evaluated.
    assert cached_two >= one.usage.prompt_tokens - 1
    assert two.usage.prompt_tokens - cached_two < 40
    # Turn 3 found turn 2's prompt too, though the other chat's prompt had replaced it in llama.cpp's cache:
    # the saved KV state was put back (the other chat shares only the template's first tokens).
    assert cached_three >= two.usage.prompt_tokens - 1
    assert three.usage.prompt_tokens - cached_three < 40


def post(server, body: bytes | str | dict, headers: dict | None = None) -> httpx.Response:
    content = json.dumps(body) if isinstance(body, dict) else body
    return httpx.post(
        f"{server.url}v1/chat/completions",
        content=content,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=TIMEOUT,
    )


GOOD = [{"role": "user", "content": "Hi"}]
BAD_REQUESTS = [
    ("malformed JSON", '{"messages": [', 400, "invalid_json", "not valid JSON"),
    ("not UTF-8", b'{"messages": "\xff\xfe"}', 400, "invalid_json", "not UTF-8"),
    ("a JSON list", "[1, 2]", 400, "invalid_json", "must be a JSON object"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, 400, "invalid_json", "nested too deeply"),
    ("no messages", {"model": "x"}, 400, "missing_required_parameter", "messages: required"),
    ("messages a string", {"messages": "hello"}, 400, "invalid_value", "messages: expected a list"),
    ("empty messages", {"messages": []}, 400, "invalid_value", "messages: the list is empty"),
    ("a message a number", {"messages": [5]}, 400, "invalid_value", "messages[0]: expected an object"),
    ("unknown role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_value", "messages[0].content"),
    (
        "an image part",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "invalid_value",
        "only text parts",
    ),
    ("tool message", {"messages": [{"role": "tool", "content": "x"}]}, 400, "unsupported", "tool messages"),
    ("temperature text", {"messages": GOOD, "temperature": "hot"}, 400, "invalid_value", "temperature"),
    ("temperature 5", {"messages": GOOD, "temperature": 5}, 400, "invalid_value", "outside 0 to 2"),
    ("max_tokens 0", {"messages": GOOD, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("max_tokens 1.5", {"messages": GOOD, "max_tokens": 1.5}, 400, "invalid_value", "whole number"),
    ("stream yes", {"messages": GOOD, "stream": "yes"}, 400, "invalid_value", "stream: expected true or false"),
    ("seed text", {"messages": GOOD, "seed": "abc"}, 400, "invalid_value", "seed"),
    ("stop number", {"messages": GOOD, "stop": 3}, 400, "invalid_value", "stop"),
    ("five stops", {"messages": GOOD, "stop": list("abcde")}, 400, "invalid_value", "at most 4"),
    ("n 2", {"messages": GOOD, "n": 2}, 400, "invalid_value", "n="),
    ("tools", {"messages": GOOD, "tools": [{"type": "function"}]}, 400, "unsupported", "tools"),
    (
        "10,000 messages",
        {"messages": [{"role": "user", "content": "hi"}] * 10_000},
        400,
        "too_many_messages",
        "10000 messages, more than the 200 allowed",
    ),
    ("a 10 MB body", {"messages": [{"role": "user", "content": "a" * 10_000_000}]}, 413, "request_too_large", "over"),
    (
        "a prompt over the token cap",
        {"messages": [{"role": "user", "content": "word " * 3000}]},
        400,
        "context_length_exceeded",
        "more than the 1536 allowed",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"), [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_requests_get_a_clear_4xx_in_openais_shape(server, body, status, code, message):
    response = post(server, body)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], error
    assert "\n" not in error["message"] and "Traceback" not in error["message"]


def test_the_official_client_raises_its_own_error_types(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="any", messages=GOOD, temperature=9)


def test_wrong_paths_and_methods_answer_in_json(server):
    missing = httpx.get(f"{server.url}v1/engines", timeout=TIMEOUT)
    wrong_method = httpx.get(f"{server.url}v1/chat/completions", timeout=TIMEOUT)

    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405 and "GET is not allowed" in wrong_method.json()["error"]["message"]


def test_a_long_history_is_cut_to_fit_when_the_client_asks(client):
    history = []
    for n in range(60):
        history += [
            {"role": "user", "content": f"Remember the number {n} and the word apple{n}."},
            {"role": "assistant", "content": f"I will remember {n} and apple{n}."},
        ]
    messages = [*history, {"role": "user", "content": "Say OK."}]

    with pytest.raises(openai.BadRequestError, match="truncation"):
        client.chat.completions.create(model="any", messages=messages, max_tokens=4)
    reply = client.chat.completions.create(
        model="any", messages=messages, max_tokens=4, extra_body={"truncation": "auto"}
    )
    assert reply.choices[0].message.content
    assert 1000 < reply.usage.prompt_tokens <= 1536

    many = [{"role": "system", "content": "Be brief."}, *history * 3, {"role": "user", "content": "Say OK."}]
    with pytest.raises(openai.BadRequestError, match="362 messages, more than the 200 allowed"):
        client.chat.completions.create(model="any", messages=many, max_tokens=4)
    kept = client.chat.completions.create(model="any", messages=many, max_tokens=4, extra_body={"truncation": "auto"})
    assert kept.choices[0].message.content


def test_a_client_that_leaves_mid_stream_stops_its_generation_at_once(server):
    body = {"messages": ask("Write a very long story about a dragon."), "stream": True, "max_tokens": 2000}
    with httpx.stream("POST", f"{server.url}v1/chat/completions", json=body, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
    assert len(received) >= 3
    # The server notices, stops generating, and says how far it got: a few pieces, not 2000 tokens.
    deadline = time.monotonic() + 10
    while "the client left after" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in server.log().splitlines() if "the client left after" in line)
    pieces = int(line.split("the client left after ")[1].split()[0])
    assert pieces < 50, line
    health = httpx.get(f"{server.url}health", timeout=TIMEOUT).json()
    assert health["state"] == "idle" and health["queue_length"] == 0


def test_a_client_that_gives_up_on_a_whole_answer_stops_it_too(server):
    body = {"messages": ask("Write a very long story about a castle."), "max_tokens": 2000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
    deadline = time.monotonic() + 10
    while "a client left before its answer was written" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "a client left before its answer was written" in server.log()


def test_a_full_queue_gets_429_with_retry_after_and_the_rest_complete(server):
    """max_queued=3: one request generates, three wait, the fifth and sixth are turned away."""
    results: dict[int, tuple[int, str]] = {}
    body = {"messages": ask("Write a very long story about a dragon."), "stream": True, "max_tokens": 400}

    def stream(index: int) -> None:
        with httpx.stream("POST", f"{server.url}v1/chat/completions", json=body, timeout=TIMEOUT) as response:
            results[index] = (response.status_code, "".join(response.iter_lines()))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}health", timeout=TIMEOUT).json()["queue_length"] < 3:
        assert time.monotonic() < deadline, "the three requests never queued"
    refused = [post(server, {**body, "stream": False}) for _ in range(2)]
    for thread in threads:
        thread.join(60)

    assert all(r.status_code == 429 for r in refused), [r.text for r in refused]
    assert refused[0].headers["Retry-After"].isdigit()
    assert refused[0].json()["error"]["type"] == "rate_limit_error"
    assert sorted(results) == [0, 1, 2, 3]
    assert all(status == 200 and text.endswith("data: [DONE]") for status, text in results.values())


def test_a_web_page_on_another_origin_is_refused(server):
    response = httpx.post(
        f"{server.url}v1/chat/completions",
        content=json.dumps({"messages": GOOD}),
        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        timeout=TIMEOUT,
    )
    same_origin = httpx.get(f"{server.url}v1/models", headers={"Origin": server.url.rstrip("/")}, timeout=TIMEOUT)

    assert response.status_code == 403 and "http.allowed_origins" in response.json()["error"]["message"]
    assert same_origin.status_code == 200


def test_health_says_what_is_loaded(server):
    health = httpx.get(f"{server.url}health", timeout=TIMEOUT).json()

    assert health["status"] == "ok" and health["state"] == "idle"
    assert health["models"]["llm"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert health["auth_required"] is False and health["can_speak"] is False
    assert health["uptime_s"] > 0 and health["queue_length"] == 0
    assert health["intents"] is True  # voicebot serve keeps timers and lists; the page shows them.


def test_the_page_and_its_files_are_served_compressed_with_a_strict_policy(server):
    page = httpx.get(server.url, headers={"Accept-Encoding": "gzip"}, timeout=TIMEOUT)

    assert page.status_code == 200 and page.headers["content-encoding"] == "gzip"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<html" in page.text


@pytest.fixture(scope="module")
def lan_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("lan") / "serve.log"
    options = [
        *BUNDLED,
        "--set",
        "http.host=0.0.0.0",
        "--set",
        "http.token=s3cret-token",
        "--set",
        "http.allowed_origins=[http://homeassistant.local:8123]",
    ]
    process = ServerProcess("serve", options, log).wait_ready()
    yield process
    assert process.stop() == 0, process.log()


def test_a_lan_bind_needs_the_token(lan_server):
    models = f"{lan_server.url}v1/models"
    missing = httpx.get(models, timeout=TIMEOUT)
    wrong = httpx.get(models, headers={"Authorization": "Bearer s3cret-tokeN"}, timeout=TIMEOUT)
    wrong_scheme = httpx.get(models, headers={"Authorization": "Basic s3cret-token"}, timeout=TIMEOUT)
    right = httpx.get(models, headers={"Authorization": "Bearer s3cret-token"}, timeout=TIMEOUT)
    chat_without = post(lan_server, {"messages": GOOD})

    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert wrong_scheme.status_code == 401
    assert chat_without.status_code == 401
    assert right.status_code == 200
    assert httpx.get(f"{lan_server.url}health", timeout=TIMEOUT).json()["auth_required"] is True
    client = openai.OpenAI(base_url=f"{lan_server.url}v1", api_key="s3cret-token", timeout=60, max_retries=0)
    assert client.chat.completions.create(model="any", messages=GOOD, max_tokens=3).choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{lan_server.url}v1", api_key="guess", max_retries=0).models.list()


def test_an_allowed_origin_gets_cors_headers_and_its_preflight_answered(lan_server):
    origin = "http://homeassistant.local:8123"
    preflight = httpx.options(
        f"{lan_server.url}v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=TIMEOUT,
    )
    actual = httpx.get(
        f"{lan_server.url}v1/models",
        headers={"Origin": origin, "Authorization": "Bearer s3cret-token"},
        timeout=TIMEOUT,
    )
    other = httpx.get(
        f"{lan_server.url}v1/models",
        headers={"Origin": "http://homeassistant.local:9999", "Authorization": "Bearer s3cret-token"},
        timeout=TIMEOUT,
    )

    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert actual.status_code == 200 and actual.headers["access-control-allow-origin"] == origin
    assert other.status_code == 403


def test_a_lan_bind_without_a_token_refuses_to_start(tmp_path):
    process = ServerProcess("serve", [*BUNDLED, "--set", "http.host=0.0.0.0"], tmp_path / "serve.log")
    code = process.process.wait(timeout=60)
    log = process.log()
    process.stop()

    assert code == 78, log
    assert "http.host is 0.0.0.0" in log and "set http.token" in log and "Traceback" not in log
    assert len([line for line in log.splitlines() if line.startswith("voicebot:")]) == 1


def test_a_port_in_use_is_a_one_line_error(server, tmp_path):
    process = ServerProcess("serve", BUNDLED, tmp_path / "serve.log", port=server.port)
    code = process.process.wait(timeout=60)
    log = process.log()
    process.stop()

    assert code != 0 and f"cannot listen on http://127.0.0.1:{server.port}/" in log, log
    assert "Traceback" not in log


@pytest.fixture
def intents_server(tmp_path):
    """A server of the test's own, with a token (checked on loopback too) and its own timers and lists."""
    options = [*BUNDLED, "--set", "http.token=s3cret-token", "--set", f"intents.state_dir={tmp_path / 'state'}"]
    process = ServerProcess("serve", options, tmp_path / "serve.log").wait_ready()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


def test_commands_are_answered_by_the_intent_stage_and_shown_by_their_endpoints(intents_server):
    client = openai.OpenAI(base_url=f"{intents_server.url}v1", api_key="s3cret-token", timeout=60, max_retries=0)
    token = {"Authorization": "Bearer s3cret-token"}

    added = client.chat.completions.create(model="any", messages=ask("add milk to my shopping list"))
    timer = client.chat.completions.create(model="any", messages=ask("set a timer for 5 minutes"), stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in timer if c.choices)
    lists = httpx.get(f"{intents_server.url}v1/lists", headers=token, timeout=TIMEOUT)
    timers = httpx.get(f"{intents_server.url}v1/timers", headers=token, timeout=TIMEOUT)

    assert added.choices[0].message.content == "Added milk to your shopping list."
    assert added.usage.completion_tokens == 0, "the LLM wrote the answer"
    assert streamed == "Timer set for 5 minutes."
    assert lists.status_code == 200 and lists.json()["lists"]["shopping"] == [{"text": "milk", "done": False}]
    assert lists.headers["cache-control"] == "no-store"
    body = timers.json()
    assert timers.status_code == 200 and abs(body["now"] - time.time()) < 5
    (only,) = body["timers"]
    assert only["kind"] == "timer" and only["name"] is None and only["duration_s"] == 300 and not only["paused"]
    assert 290 < only["left_s"] <= 300 and abs(only["ends_at"] - body["now"] - only["left_s"]) < 0.5
    assert only["alarm_at"] is None


def test_the_timers_and_lists_need_the_token_and_the_same_origin(intents_server):
    token = {"Authorization": "Bearer s3cret-token"}
    for path in ("v1/timers", "v1/lists"):
        url = f"{intents_server.url}{path}"
        missing = httpx.get(url, timeout=TIMEOUT)
        wrong = httpx.get(url, headers={"Authorization": "Bearer s3cret-tokeN"}, timeout=TIMEOUT)
        foreign = httpx.get(url, headers={**token, "Origin": "http://evil.example"}, timeout=TIMEOUT)
        same_origin = httpx.get(url, headers={**token, "Origin": intents_server.url.rstrip("/")}, timeout=TIMEOUT)

        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key", path
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key", path
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed", path
        assert same_origin.status_code == 200, path
