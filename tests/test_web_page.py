"""The web chat page in Debian's Chromium (Playwright), against the real server: voicebot serve with the bundled models."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "the web page tests need Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the web page tests need Python Playwright")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parent.parent / "docs"
START_TIMEOUT_S = 60
ANSWER_TIMEOUT_MS = 30_000
WAIT_MS = 5_000
TOKEN = "s3cret"
MAX_PROMPT_TOKENS = 512  # Small, so a history that outgrows it is quick to build and to evaluate.

# Records every change of the newest answer: its state, whether the thinking indicator is in it, and its text.
OBSERVE_ANSWERS = """
window.__answers = [];
new MutationObserver(() => {
  const answer = [...document.querySelectorAll(".message.assistant")].pop();
  if (!answer) return;
  window.__answers.push({state: answer.dataset.state, thinking: answer.querySelector(".thinking") !== null,
                         text: answer.querySelector(".body").innerText});
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""

PANEL_WAIT_MS = 2_000  # What an answer changed shows this soon: sooner than the page's own poll.
PANEL_POLL_MS = 5_000  # The page's poll, while it is visible (PANEL_POLL_MS in app.js).
# The browser's clock an hour behind the server's: the countdown must run on the server's clock, not this one.
SKEWED_CLOCK = """
(() => {
  const RealDate = Date;
  const SKEW_MS = -3600 * 1000;
  class SkewedDate extends RealDate {
    constructor(...args) { super(...(args.length ? args : [RealDate.now() + SKEW_MS])); }
    static now() { return RealDate.now() + SKEW_MS; }
  }
  window.Date = SkewedDate;
})();
"""
# Hides or shows the page as a switch of tabs does.
SET_HIDDEN = """hidden => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => hidden ? "hidden" : "visible"});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


@dataclass
class Server:
    """A voicebot serve process and its base URL."""

    url: str
    process: subprocess.Popen
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _start_server(log_dir: Path, *settings: str) -> Server:
    port = _free_port()
    log = log_dir / f"serve-{port}.log"
    command = [
        sys.executable,
        "-m",
        "voicebot",
        "serve",
        "--set",
        "profile=bundled",
        "--set",
        f"http.port={port}",
        *[arg for setting in settings for arg in ("--set", setting)],
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while _health(server.url) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_server(server)
            pytest.fail(f"voicebot serve did not answer /health within {START_TIMEOUT_S} s:\n{log.read_text()}")
        time.sleep(0.2)
    return server


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """GET a JSON endpoint: its status and body."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _say(server: Server, text: str) -> str:
    """Send `text` to the API as another client would (voice on the Pi, say); the answer."""
    body = json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 16}).encode()
    request = urllib.request.Request(
        f"{server.url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def _seconds(clock: str) -> int:
    """The panel's "04:58" or "1:02:03" in seconds."""
    assert re.fullmatch(r"(\d+:)?\d\d:\d\d", clock), f"not a countdown: {clock!r}"
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def _stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="voicebot-web-") as directory:
        yield Path(directory)


@pytest.fixture(scope="module")
def server(log_dir: Path) -> Iterator[Server]:
    server = _start_server(
        log_dir, f"http.max_prompt_tokens={MAX_PROMPT_TOKENS}", f"intents.state_dir={log_dir / 'state'}"
    )
    yield server
    _stop_server(server)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, whose timers and lists start empty and leak into no other test."""
    server = _start_server(tmp_path, f"intents.state_dir={tmp_path / 'state'}")
    yield server
    _stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Page:
    """A page of the chat, with what it logged, asked for and popped up."""

    page: sync_api.Page
    url: str
    console_errors: list[str] = field(default_factory=list)
    console_error_urls: list[str] = field(default_factory=list)
    """Where each console error came from: a script, or the resource Chromium logged a failed load of."""
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def ask(self, question: str) -> sync_api.Locator:
        """Send a question and wait for its answer to end; the answer's element."""
        count = self.page.locator(".message.assistant").count()
        self.page.fill("#question", question)
        self.page.press("#question", "Enter")
        answer = self.page.locator(".message.assistant").nth(count)
        ended = answer.and_(self.page.locator("[data-state=done], [data-state=cut]"))
        error = self.page.locator("#error")
        ended.or_(error).first.wait_for(timeout=ANSWER_TIMEOUT_MS)
        assert error.is_hidden(), f"the page showed an error: {error.inner_text()}"
        return answer

    def history(self) -> list[dict]:
        """The conversation as the page stored it."""
        return json.loads(self.page.evaluate("localStorage.getItem('voicebot.history')") or "[]")


def _open(context: sync_api.BrowserContext, url: str, max_tokens: int = 48) -> Page:
    """Open the chat; every question it sends is answered greedily (temperature 0) in at most max_tokens."""
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    chat = Page(page, url)

    def on_console(message: sync_api.ConsoleMessage) -> None:
        if message.type == "error":
            chat.console_errors.append(message.text)
            chat.console_error_urls.append(message.location.get("url", ""))

    page.on("console", on_console)
    page.on("pageerror", lambda error: chat.console_errors.append(str(error)))
    page.on("request", lambda request: chat.requests.append(request.url))
    page.on("dialog", lambda dialog: (chat.dialogs.append(dialog.message), dialog.dismiss()))

    def sample_greedily(route: sync_api.Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        body.update(temperature=0, max_tokens=max_tokens)
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", sample_greedily)
    page.goto(url)
    page.wait_for_load_state("networkidle")
    return chat


@pytest.fixture
def context(browser: sync_api.Browser) -> Iterator[sync_api.BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(OBSERVE_ANSWERS)
    yield context
    context.close()


def test_an_answer_streams_in_after_the_thinking_indicator(server: Server, context: sync_api.BrowserContext) -> None:
    chat = _open(context, server.url)
    answer = chat.ask("Tell me about the moon.")

    seen = chat.page.evaluate("window.__answers")
    assert seen[0]["thinking"], "the thinking indicator was not the first thing in the answer"
    first_text = next(i for i, s in enumerate(seen) if s["text"].strip() and not s["thinking"])
    assert all(s["thinking"] for s in seen[:first_text]), "the indicator went before the first token"
    streamed = {s["text"] for s in seen if s["state"] == "streaming" and s["text"].strip()}
    assert len(streamed) >= 2, f"the answer did not grow while it streamed: {streamed}"
    final = answer.locator(".body").inner_text()
    assert min(len(text) for text in streamed) < len(final)
    assert final.strip() and answer.locator(".thinking").count() == 0
    assert chat.page.locator("#send").is_visible() and chat.page.locator("#stop").is_hidden()
    question, reply = chat.history()
    assert question == {"role": "user", "content": "Tell me about the moon."}
    assert reply["role"] == "assistant" and reply["content"].strip()
    assert chat.page.locator("#error").is_hidden()
    assert chat.console_errors == []
    assert chat.requests and all(url.startswith(f"{server.url}/") for url in chat.requests), chat.requests


def test_the_history_survives_a_reload_until_cleared(server: Server, context: sync_api.BrowserContext) -> None:
    chat = _open(context, server.url)
    chat.ask("What is the capital of France?")
    chat.ask("And of Italy?")
    texts = chat.page.locator(".message .body").all_inner_texts()
    history = chat.history()
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]

    chat.page.reload()
    assert chat.page.locator(".message .body").all_inner_texts() == texts
    assert chat.history() == history

    chat.page.click("#clear")
    assert chat.page.locator(".message").count() == 0
    assert chat.page.evaluate("localStorage.getItem('voicebot.history')") is None
    chat.page.reload()
    assert chat.page.locator(".message").count() == 0
    assert chat.page.locator("#empty").is_visible()
    assert chat.history() == []


def test_stop_ends_the_answer_and_keeps_what_was_written(server: Server, context: sync_api.BrowserContext) -> None:
    chat = _open(context, server.url, max_tokens=400)
    chat.page.fill("#question", "Tell me a long story about a dragon.")
    chat.page.press("#question", "Enter")
    answer = chat.page.locator(".message.assistant[data-state=streaming]")
    answer.wait_for(timeout=ANSWER_TIMEOUT_MS)
    chat.page.click("#stop")
    sync_api.expect(chat.page.locator(".message.assistant")).to_have_attribute("data-state", "stopped")
    sync_api.expect(chat.page.locator("#send")).to_be_visible()
    written = chat.history()[-1]["content"]
    assert chat.history()[-1]["role"] == "assistant" and written.strip()
    # 400 tokens take SmolLM2 several seconds: idle at once means the server stopped when the page hung up.
    deadline = time.monotonic() + 2
    while (_health(server.url) or {}).get("state") != "idle":
        assert time.monotonic() < deadline, "the server went on generating after Stop"
        time.sleep(0.05)
    chat.page.wait_for_timeout(300)
    assert chat.history()[-1]["content"] == written, "the answer went on after Stop"
    assert chat.page.locator("#error").is_hidden()


def test_errors_are_shown_in_one_line_and_the_question_is_kept(
    server: Server, context: sync_api.BrowserContext
) -> None:
    chat = _open(context, server.url)
    error = chat.page.locator("#error")

    def empty_messages(route: sync_api.Route) -> None:
        route.continue_(post_data=json.dumps({"model": "voicebot", "messages": [], "stream": True}))

    chat.page.route("**/v1/chat/completions", empty_messages)
    chat.page.fill("#question", "Hello?")
    chat.page.press("#question", "Enter")
    sync_api.expect(error).to_have_text(re.compile(r"^Error 4\d\d: \S.*"))
    assert chat.page.input_value("#question") == "Hello?" and chat.history() == []
    assert chat.page.locator(".message").count() == 0

    chat.page.unroute("**/v1/chat/completions", empty_messages)
    chat.page.route("**/v1/chat/completions", lambda route: route.abort("internetdisconnected"))
    chat.page.press("#question", "Enter")
    sync_api.expect(error).to_have_text(re.compile(r"^Cannot reach voicebot \(.+\)\.$"))
    assert chat.page.input_value("#question") == "Hello?" and chat.history() == []


def test_a_history_longer_than_the_context_still_gets_answers(server: Server, context: sync_api.BrowserContext) -> None:
    chat = _open(context, server.url)
    turn = "Tell me more about the weather in spring, in the hills, near the river. " * 4
    stored = [{"role": role, "content": turn} for _ in range(6) for role in ("user", "assistant")]
    chat.page.evaluate("h => localStorage.setItem('voicebot.history', JSON.stringify(h))", stored)
    chat.page.reload()
    assert chat.ask("What is the capital of France?").locator(".body").inner_text().strip()
    assert chat.history()[:-2] == stored, "the page's own history lost turns"
    assert chat.page.locator("#error").is_hidden()


# SmolLM2-135M does not repeat HTML on a bare instruction (it explains it instead); after three examples of
# repeating, from an earlier session's stored history, it repeats the payload exactly at temperature 0.
REPEAT = "Repeat the user's text exactly, with nothing else."
STORED_PAYLOAD = '<img src=y onerror="window.__xss=3;alert(3)">'
PAYLOAD = '<img src=x onerror="window.__xss=1;alert(1)"> <script>window.__xss=2;alert(2)</script>'
EXAMPLES = ["Hello there, friend.", "<b>bold</b> and <i>x</i>", STORED_PAYLOAD]


def test_html_from_the_model_is_shown_as_text_and_never_runs(server: Server, browser: sync_api.Browser) -> None:
    # The CSP would stop the inline handlers on its own; bypass it, so this shows that the sanitising holds.
    context = browser.new_context(bypass_csp=True)
    try:
        chat = _open(context, server.url)
        stored = [{"role": "system", "content": REPEAT}]
        stored += [{"role": role, "content": text} for text in EXAMPLES for role in ("user", "assistant")]
        chat.page.evaluate("h => localStorage.setItem('voicebot.history', JSON.stringify(h))", stored)
        chat.page.reload()
        answer = chat.ask(PAYLOAD)
        chat.page.wait_for_timeout(500)  # Long enough for an <img src=x> to fail and fire onerror.

        written = chat.history()[-1]["content"]
        assert "<img src=x onerror=" in written and "<script>" in written, f"the model did not repeat it: {written!r}"
        assert "<img src=x onerror=" in answer.inner_text() and "<script>" in answer.inner_text()
        assert STORED_PAYLOAD in chat.page.locator(".message.assistant").nth(2).inner_text()
        assert chat.page.locator("#messages img, #messages script").count() == 0
        assert chat.page.evaluate("window.__xss") is None
        assert chat.dialogs == []
    finally:
        context.close()


def test_the_copy_button_copies_the_answer(server: Server, context: sync_api.BrowserContext) -> None:
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    chat = _open(context, server.url)
    answer = chat.ask("Write a haiku about the sea.")
    button = answer.locator("button.copy")

    button.click()
    sync_api.expect(button).to_have_text("Copied")
    assert chat.page.evaluate("navigator.clipboard.readText()") == chat.history()[-1]["content"]

    # Over plain http on the local network the page is not a secure context and has no navigator.clipboard.
    chat.page.evaluate("navigator.clipboard.writeText('something else')")
    chat.page.evaluate(
        "window.__clipboard = navigator.clipboard;Object.defineProperty(navigator, 'clipboard', {value: undefined})"
    )
    sync_api.expect(button).to_have_text("Copy")
    button.click()
    sync_api.expect(button).to_have_text("Copied")
    assert chat.page.evaluate("window.__clipboard.readText()") == chat.history()[-1]["content"]


def test_a_server_with_a_token_makes_the_page_ask_for_it(tmp_path: Path, browser: sync_api.Browser) -> None:
    server = _start_server(
        tmp_path, "http.host=127.0.0.1", f"http.token={TOKEN}", f"intents.state_dir={tmp_path / 'state'}"
    )
    context = browser.new_context()
    try:
        chat = _open(context, server.url)
        form = chat.page.locator("#token-form")
        sync_api.expect(form).to_be_visible()
        assert chat.page.locator("#panel").is_hidden(), "the timers and lists showed before the token was given"

        chat.page.fill("#token", "wrong")
        chat.page.press("#token", "Enter")
        sync_api.expect(chat.page.locator("#error")).to_contain_text("refused")
        sync_api.expect(form).to_be_visible()

        chat.page.fill("#token", TOKEN)
        chat.page.press("#token", "Enter")
        sync_api.expect(form).to_be_hidden()
        sync_api.expect(chat.page.locator("#error")).to_be_hidden()
        sync_api.expect(chat.page.locator("#panel")).to_be_visible(timeout=PANEL_WAIT_MS)  # read with the token
        assert chat.ask("Hello!").locator(".body").inner_text().strip()

        chat.page.reload()
        chat.page.wait_for_load_state("networkidle")
        sync_api.expect(form).to_be_hidden()
        assert chat.ask("How are you?").locator(".body").inner_text().strip()

        # A token the server no longer takes is dropped, and the person asked again.
        chat.page.evaluate("localStorage.setItem('voicebot.token', 'stale')")
        chat.page.fill("#question", "Are you there?")
        chat.page.press("#question", "Enter")
        sync_api.expect(form).to_be_visible()
        sync_api.expect(chat.page.locator("#error")).to_contain_text("refused")
        assert chat.page.evaluate("localStorage.getItem('voicebot.token')") is None
        assert chat.page.input_value("#question") == "Are you there?"
    finally:
        context.close()
        _stop_server(server)


def test_a_timer_typed_in_the_chat_counts_down_in_the_panel(fresh_server: Server, browser: sync_api.Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(SKEWED_CLOCK)
    try:
        chat = _open(context, fresh_server.url)
        assert chat.page.evaluate("Date.now() / 1000") < time.time() - 3500, "the browser's clock was not set back"
        sync_api.expect(chat.page.locator("#panel")).to_be_visible()
        sync_api.expect(chat.page.locator("#no-timers")).to_be_visible()

        answer = chat.ask("set a timer for 5 minutes")
        assert answer.locator(".body").inner_text().strip() == "Timer set for 5 minutes."
        assert "typed: intent HassStartTimer" in fresh_server.log.read_text(), "the LLM answered, not the intent stage"
        timer = chat.page.locator("#timers .timer")
        sync_api.expect(timer).to_have_count(1, timeout=PANEL_WAIT_MS)
        sync_api.expect(timer.locator(".timer-name")).to_have_text("5 min timer")
        assert chat.page.locator("#no-timers").is_hidden()
        left = timer.filter(has_text="5 min timer").locator(".timer-left")
        assert left.get_attribute("role") == "timer"  # Never announced as it ticks.
        assert chat.page.locator("#timers").get_attribute("aria-live") == "off"

        first, read_at = _seconds(left.inner_text()), time.monotonic()
        status, timers = _get(f"{fresh_server.url}/v1/timers")
        chat.page.wait_for_timeout(2_000)
        second, elapsed = _seconds(left.inner_text()), time.monotonic() - read_at
        print(f"countdown: {first} s, then {second} s after {elapsed:.2f} s; the server said {timers['timers']}")
        assert status == 200 and len(timers["timers"]) == 1
        assert 295 <= first <= 300, f"a 5-minute timer showed {first} s left"
        assert abs(first - timers["timers"][0]["left_s"]) <= 2, "the page and the server disagree on the time left"
        assert second < first, "the countdown did not go down"
        assert abs((first - second) - elapsed) <= 1.2, f"{first - second} s counted down in {elapsed:.2f} s"

        # One that reaches zero shows "done", and says so once to a screen reader.
        chat.ask("set a timer for 3 seconds")
        short = timer.filter(has_text="3 s timer")
        sync_api.expect(short).to_have_count(1, timeout=PANEL_WAIT_MS)
        sync_api.expect(short.locator(".timer-left")).to_have_text("done", timeout=6_000)
        sync_api.expect(chat.page.locator("#timer-news")).to_have_text("3 s timer is done.")
        assert _seconds(left.inner_text()) < second, "the first timer stopped counting"
        assert chat.console_errors == []
        assert all(url.startswith(f"{fresh_server.url}/") for url in chat.requests), chat.requests
    finally:
        context.close()


def test_the_shopping_list_shows_what_the_chat_and_others_add(
    fresh_server: Server, context: sync_api.BrowserContext
) -> None:
    chat = _open(context, fresh_server.url)
    shopping = chat.page.locator("#panel .list[data-list=shopping]")
    sync_api.expect(shopping.locator(".panel-empty")).to_be_visible()
    assert chat.page.locator("#panel .list[data-list=todo]").count() == 0, "an empty to-do list was shown"

    answer = chat.ask("add milk to my shopping list")
    assert answer.locator(".body").inner_text().strip() == "Added milk to your shopping list."
    assert "typed: intent HassShoppingListAddItem" in fresh_server.log.read_text()
    items = shopping.locator("li.open")
    sync_api.expect(items).to_have_text(["milk"], timeout=PANEL_WAIT_MS)

    # Added elsewhere (by voice on the Pi; here by another client of the API): the page's poll finds it, as text.
    markup = "<img src=x onerror=window.__xss=1>"
    assert _say(fresh_server, f"add {markup} to my shopping list") == f"Added {markup} to your shopping list."
    sync_api.expect(items).to_have_text(["milk", markup], timeout=PANEL_POLL_MS + 3_000)
    assert chat.page.locator("#panel img").count() == 0 and chat.page.evaluate("window.__xss") is None

    # A hidden page does not poll; shown again, it reads at once.
    chat.page.evaluate(SET_HIDDEN, True)
    asked = len(chat.requests)
    _say(fresh_server, "add bread to my shopping list")
    chat.page.wait_for_timeout(PANEL_POLL_MS + 1_500)
    assert [url for url in chat.requests[asked:] if "/v1/" in url] == [], "the hidden page went on polling"
    chat.page.evaluate(SET_HIDDEN, False)
    sync_api.expect(items).to_have_text(["milk", markup, "bread"], timeout=PANEL_WAIT_MS)

    chat.ask("check off milk on my shopping list")
    sync_api.expect(shopping.locator("li.done")).to_have_text(["milk (done)"], timeout=PANEL_WAIT_MS)
    sync_api.expect(items).to_have_text([markup, "bread"])
    assert shopping.locator("li.done").evaluate("e => getComputedStyle(e).textDecorationLine") == "line-through"
    assert chat.page.locator("#panel-note").is_hidden() and chat.page.locator("#error").is_hidden()
    assert chat.console_errors == []


def test_the_panel_shows_alarms_paused_timers_and_a_to_do_list_with_items(
    tmp_path: Path, browser: sync_api.Browser
) -> None:
    # English sentences cannot add to the to-do list yet (Home Assistant's need a to-do entity): start with one.
    state = tmp_path / "state"
    state.mkdir()
    todo = [{"text": "call the plumber", "done": False}, {"text": "water the plants", "done": True}]
    (state / "state.json").write_text(json.dumps({"version": 1, "lists": {"todo": todo}}))
    server = _start_server(tmp_path, f"intents.state_dir={state}")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        assert _say(server, "set an alarm for 7:30 am").startswith("Alarm set for 7:30 AM")
        assert _say(server, "set a 10 minute pasta timer") == "Pasta timer set for 10 minutes."
        assert "paused" in _say(server, "pause the pasta timer").lower()
        chat = _open(context, server.url)
        timers = chat.page.locator("#timers .timer")
        sync_api.expect(timers).to_have_count(2)
        alarm, pasta = timers.filter(has_text="Alarm 07:30"), timers.filter(has_text="pasta")
        sync_api.expect(pasta.locator(".timer-for")).to_have_text("10 min timer")
        sync_api.expect(pasta.locator(".timer-tag")).to_have_text("paused")
        paused_left = pasta.locator(".timer-left").inner_text()
        assert 590 <= _seconds(paused_left) <= 600, paused_left
        _, view = _get(f"{server.url}/v1/timers")
        alarm_left = next(t["left_s"] for t in view["timers"] if t["kind"] == "alarm")
        assert abs(_seconds(alarm.locator(".timer-left").inner_text()) - alarm_left) <= 2
        assert timers.nth(0).inner_text().startswith("Alarm 07:30"), "the running alarm is not above the paused timer"
        chat.page.wait_for_timeout(1_500)
        assert pasta.locator(".timer-left").inner_text() == paused_left, "a paused timer counted down"

        to_do = chat.page.locator("#panel .list[data-list=todo]")
        sync_api.expect(to_do.locator("h3")).to_have_text("To-do list")
        assert to_do.locator("li.open").all_inner_texts() == ["call the plumber"]
        sync_api.expect(to_do.locator("li.done")).to_have_text(["water the plants (done)"])
        assert chat.console_errors == []
    finally:
        context.close()
        _stop_server(server)


def test_a_panel_that_cannot_be_read_says_so_quietly_and_the_chat_goes_on(
    server: Server, context: sync_api.BrowserContext
) -> None:
    chat = _open(context, server.url)
    note = chat.page.locator("#panel-note")
    sync_api.expect(chat.page.locator("#panel")).to_be_visible()
    assert note.is_hidden()

    def failing(route: sync_api.Route) -> None:
        route.fulfill(status=500, json={"error": {"message": "broken", "type": "server_error"}})

    chat.page.route("**/v1/timers", failing)
    assert chat.ask("what time is it").locator(".body").inner_text().startswith("It's ")
    sync_api.expect(note).to_have_text("Timers and lists not updated (error 500).", timeout=PANEL_WAIT_MS)
    chat.page.unroute("**/v1/timers", failing)
    chat.page.route("**/v1/lists", lambda route: route.abort("internetdisconnected"))
    chat.ask("what time is it")
    sync_api.expect(note).to_have_text("Timers and lists not updated: voicebot cannot be reached.")
    assert chat.page.locator("#error").is_hidden(), "a failed read of the panel showed in the chat"
    chat.page.unroute("**/v1/lists")
    chat.ask("what time is it")
    sync_api.expect(note).to_be_hidden(timeout=PANEL_WAIT_MS)
    assert chat.page.locator("#panel").is_visible() and chat.page.locator("#error").is_hidden()


def test_the_panel_stays_hidden_when_intents_are_off(tmp_path: Path, browser: sync_api.Browser) -> None:
    server = _start_server(tmp_path, "intents.enabled=false", f"intents.state_dir={tmp_path / 'state'}")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        for path in ("/v1/timers", "/v1/lists"):
            status, body = _get(f"{server.url}{path}")
            assert status == 404 and "intents.enabled" in body["error"]["message"], (path, status, body)
        chat = _open(context, server.url)
        assert chat.ask("set a timer for 5 minutes").locator(".body").inner_text().strip()
        assert "typed: intent" not in server.log.read_text(), "the intent stage answered with intents off"
        chat.page.wait_for_timeout(500)  # Time for a read of the panel after the answer, had there been one.
        assert chat.page.locator("#panel").is_hidden()
        # /health says intents are off, so the page never asks for what is not there.
        assert _get(f"{server.url}/health")[1]["intents"] is False
        asked = [url for url in chat.requests if "/v1/timers" in url or "/v1/lists" in url]
        assert asked == [], asked
        assert chat.page.locator("#error").is_hidden()
        assert chat.console_errors == []
    finally:
        context.close()
        _stop_server(server)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("desktop", {"viewport": {"width": 1280, "height": 800}}),
        (
            "phone",
            {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2},
        ),
    ],
)
def test_the_layout_fits_desktop_and_phone(
    fresh_server: Server, browser: sync_api.Browser, name: str, options: dict
) -> None:
    context = browser.new_context(**options)
    try:
        chat = _open(context, fresh_server.url, max_tokens=120)
        chat.ask("What is Python?")
        chat.ask("Write a Python function that adds two numbers.")
        chat.ask("set a 10 minute pasta timer")
        chat.ask("add milk to my shopping list")
        chat.ask("add fresh basil to my shopping list")
        page = chat.page
        assert page.locator(".message.assistant pre code.hljs").count() >= 1, "no highlighted code block"
        sync_api.expect(page.locator("#timers .timer")).to_have_count(1, timeout=PANEL_WAIT_MS)
        sync_api.expect(page.locator("#panel li.open")).to_have_count(2, timeout=PANEL_WAIT_MS)
        width, height = options["viewport"]["width"], options["viewport"]["height"]
        assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"
        box = page.locator("#question").bounding_box()
        assert box and box["y"] + box["height"] <= height, "the question box is off screen"
        assert page.locator("#send").is_visible()
        panel, messages = page.locator("#panel").bounding_box(), page.locator("#messages").bounding_box()
        assert panel and messages and panel["x"] + panel["width"] <= width, "the panel is off screen"
        if name == "desktop":
            assert panel["x"] >= messages["x"] + messages["width"] - 1, "the panel is not beside the conversation"
            assert panel["x"] >= box["x"] + box["width"], "the panel covers the question box"
        else:
            assert panel["y"] + panel["height"] <= messages["y"] + 1, "the panel is not above the conversation"
            assert messages["height"] >= height / 3, "the panel leaves the conversation too little room"
        if os.environ.get("VOICEBOT_SCREENSHOTS") == "1":
            page.wait_for_timeout(2_500)  # The timer shown counting, not at its full 10:00.
            page.screenshot(path=DOCS / f"web-{name}.png")
    finally:
        context.close()


def test_the_page_works_by_every_name_it_answers_to_and_a_rebound_name_is_refused(
    tmp_path: Path, browser: sync_api.Browser
) -> None:
    """Issue 17: the server answers only loopback names and http.allowed_hosts, so a page whose own name is rebound
    to 127.0.0.1 (DNS rebinding) cannot use it; the page itself still works from localhost, 127.0.0.1, [::1] and a
    LAN name that is configured. Chromium's resolver maps the made-up names to 127.0.0.1."""
    ipv4 = _start_server(tmp_path, "http.allowed_hosts=[voicebot.lan]", f"intents.state_dir={tmp_path / 'state'}")
    ipv6_port = _free_port()
    ipv6_log = tmp_path / "serve-ipv6.log"
    with ipv6_log.open("w") as out:
        ipv6_process = subprocess.Popen(
            [sys.executable, "-m", "voicebot", "serve", "--set", "profile=bundled", "--set", "http.host=::1"]
            + ["--set", f"http.port={ipv6_port}", "--set", f"intents.state_dir={tmp_path / 'state6'}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ipv6 = Server(f"http://[::1]:{ipv6_port}", ipv6_process, ipv6_log)
    resolving = browser.browser_type.launch(
        executable_path=str(CHROMIUM),
        args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP voicebot.lan 127.0.0.1, MAP rebound.example 127.0.0.1"],
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while _health(ipv6.url) is None:
            assert ipv6_process.poll() is None and time.monotonic() < deadline, ipv6_log.read_text()
            time.sleep(0.2)
        port = ipv4.url.rsplit(":", 1)[1]
        for url in (f"http://localhost:{port}", ipv4.url, f"http://voicebot.lan:{port}", ipv6.url):
            context = resolving.new_context()
            context.add_init_script(OBSERVE_ANSWERS)
            try:
                chat = _open(context, url)
                assert chat.ask("Hello!").locator(".body").inner_text().strip(), url
                assert chat.console_errors == [], (url, chat.console_errors)
                assert chat.requests and all(r.startswith(f"{url}/") for r in chat.requests), chat.requests
            finally:
                context.close()

        context = resolving.new_context()
        try:
            page = context.new_page()
            response = page.goto(f"http://rebound.example:{port}/")
            assert response is not None and response.status == 421
            assert "http.allowed_hosts" in page.content()
            refused = page.evaluate(
                """async () => {
                     const reply = await fetch("/v1/chat/completions", {method: "POST",
                       body: JSON.stringify({messages: [{role: "user", content: "Hi"}], speak: true})});
                     return reply.status;
                   }"""
            )
            assert refused == 421
        finally:
            context.close()
        assert "refused a request for the host 'rebound.example" in ipv4.log.read_text()
    finally:
        resolving.close()
        _stop_server(ipv4)
        _stop_server(ipv6)
