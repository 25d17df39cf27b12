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
    server = _start_server(log_dir, f"http.max_prompt_tokens={MAX_PROMPT_TOKENS}")
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
    page.on("console", lambda message: message.type == "error" and chat.console_errors.append(message.text))
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


def test_a_server_with_a_token_makes_the_page_ask_for_it(log_dir: Path, browser: sync_api.Browser) -> None:
    server = _start_server(log_dir, "http.host=127.0.0.1", f"http.token={TOKEN}")
    context = browser.new_context()
    try:
        chat = _open(context, server.url)
        form = chat.page.locator("#token-form")
        sync_api.expect(form).to_be_visible()

        chat.page.fill("#token", "wrong")
        chat.page.press("#token", "Enter")
        sync_api.expect(chat.page.locator("#error")).to_contain_text("refused")
        sync_api.expect(form).to_be_visible()

        chat.page.fill("#token", TOKEN)
        chat.page.press("#token", "Enter")
        sync_api.expect(form).to_be_hidden()
        sync_api.expect(chat.page.locator("#error")).to_be_hidden()
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
def test_the_layout_fits_desktop_and_phone(server: Server, browser: sync_api.Browser, name: str, options: dict) -> None:
    context = browser.new_context(**options)
    try:
        chat = _open(context, server.url, max_tokens=120)
        chat.ask("What is Python?")
        chat.ask("Write a Python function that adds two numbers.")
        page = chat.page
        assert page.locator(".message.assistant pre code.hljs").count() >= 1, "no highlighted code block"
        width = options["viewport"]["width"]
        assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"
        box = page.locator("#question").bounding_box()
        assert box and box["y"] + box["height"] <= options["viewport"]["height"], "the question box is off screen"
        assert page.locator("#send").is_visible()
        if os.environ.get("VOICEBOT_SCREENSHOTS") == "1":
            page.screenshot(path=DOCS / f"web-{name}.png")
    finally:
        context.close()
