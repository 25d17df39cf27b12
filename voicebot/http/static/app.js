// voicebot's chat page: streams answers from /v1/chat/completions, renders them as sanitised markdown,
// and keeps the conversation in localStorage. Plain JS, no build step; the libraries are in vendor/.
"use strict";

const HISTORY_KEY = "voicebot.history";
const TOKEN_KEY = "voicebot.token";
const SPEAK_KEY = "voicebot.speak";
const ROLES = new Set(["system", "user", "assistant"]);

const byId = (id) => document.getElementById(id);
const ui = {
  messages: byId("messages"),
  empty: byId("empty"),
  model: byId("model"),
  speakOption: byId("speak-option"),
  speak: byId("speak"),
  clear: byId("clear"),
  tokenForm: byId("token-form"),
  token: byId("token"),
  error: byId("error"),
  ask: byId("ask"),
  question: byId("question"),
  send: byId("send"),
  stop: byId("stop"),
};

let history = loadHistory();
let model = "voicebot";
let running = null; // The AbortController of the answer being streamed.
let conversation = 0; // Counts clears, so an answer that ends after one is not kept.

// Markdown from the model: raw HTML in it is shown as text and never parsed, images become links (so the
// model cannot make the browser fetch anything), and DOMPurify cleans the result as a second wall.
const markdown = new marked.Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html: ({ text }) => escapeHtml(text),
    image: ({ href, text }) => `<a href="${escapeHtml(href ?? "")}">${escapeHtml(text || href || "image")}</a>`,
  },
});
const PURIFY = { FORBID_TAGS: ["style", "img", "svg", "math", "form"], FORBID_ATTR: ["style"] };
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

function escapeHtml(text) {
  const map = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  return String(text).replace(/[&<>"']/g, (c) => map[c]);
}

function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(markdown.parse(text), PURIFY);
  for (const block of element.querySelectorAll("pre code")) {
    const language = [...block.classList].find((c) => c.startsWith("language-"))?.slice(9);
    if (language && !hljs.getLanguage(language)) block.className = "language-plaintext";
    hljs.highlightElement(block);
  }
}

// History: the OpenAI messages, kept in localStorage so a reload keeps the conversation.

function loadHistory() {
  try {
    const stored = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    if (Array.isArray(stored)) {
      return stored.filter((m) => m && ROLES.has(m.role) && typeof m.content === "string");
    }
  } catch {
    // A history this page cannot read is dropped, not fatal.
  }
  return [];
}

function saveHistory() {
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(history));
  } catch (error) {
    showError(`The conversation could not be saved in this browser: ${error.message}`);
  }
}

function clearHistory() {
  running?.abort();
  conversation += 1;
  history = [];
  localStorage.removeItem(HISTORY_KEY);
  for (const message of ui.messages.querySelectorAll(".message")) message.remove();
  ui.empty.hidden = false;
  hideError();
  ui.question.focus();
}

// Messages on the page.

function addMessage(role) {
  ui.empty.hidden = true;
  const article = document.createElement("article");
  article.className = `message ${role}`;
  const body = document.createElement("div");
  body.className = "body";
  article.append(body);
  ui.messages.append(article);
  return article;
}

function showUserMessage(text) {
  const article = addMessage("user");
  article.querySelector(".body").textContent = text;
  return article;
}

function showAnswer(text, state) {
  const article = addMessage("assistant");
  article.dataset.state = state;
  const actions = document.createElement("div");
  actions.className = "actions";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy quiet";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => copyAnswer(copy, article.answerText));
  actions.append(copy);
  article.append(actions);
  article.answerText = text;
  if (state === "thinking") {
    const thinking = document.createElement("div");
    thinking.className = "thinking";
    thinking.textContent = "Thinking";
    article.querySelector(".body").append(thinking);
  } else {
    renderMarkdown(article.querySelector(".body"), text);
  }
  return article;
}

function showHistory() {
  for (const message of history) {
    if (message.role === "user") showUserMessage(message.content);
    else if (message.role === "assistant") showAnswer(message.content, "done");
  }
  scrollDown(true);
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollDown(force) {
  if (force || nearBottom()) ui.messages.scrollTop = ui.messages.scrollHeight;
}

async function copyAnswer(button, text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {
      copyWithSelection(text); // Plain http on the local network is not a secure context.
    }
    button.textContent = "Copied";
  } catch (error) {
    button.textContent = "Copy failed";
    showError(`Could not copy: ${error.message}`);
  }
  setTimeout(() => (button.textContent = "Copy"), 2000);
}

function copyWithSelection(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.className = "clipboard-helper";
  area.setAttribute("readonly", "");
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused");
}

// Errors: one readable line, never dropped.

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function hideError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

class ServerError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function serverError(response) {
  let message = response.statusText || "no details";
  try {
    const body = await response.json();
    message = body?.error?.message || message;
  } catch {
    // Not OpenAI error JSON (a proxy's page, say): the status line is all there is.
  }
  return new ServerError(response.status, message, response.headers.get("Retry-After"));
}

function describe(error, partial) {
  if (error instanceof ServerError) {
    if (error.status === 401) return "voicebot refused the token. Enter it again.";
    if (error.status === 429) {
      const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : " Try again in a moment.";
      return `voicebot is busy: ${error.message}${wait}`;
    }
    if (error.status === 0) return `The answer broke off: ${error.message}`;
    return `Error ${error.status}: ${error.message}`;
  }
  if (partial) return `The connection to voicebot was lost mid-answer (${error.message}).`;
  return `Cannot reach voicebot (${error.message}).`;
}

// The token, for a voicebot started with http.token.

function authHeaders(headers = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { ...headers, Authorization: `Bearer ${token}` } : headers;
}

function askForToken() {
  localStorage.removeItem(TOKEN_KEY);
  ui.tokenForm.hidden = false;
  ui.token.value = "";
  ui.token.focus();
}

async function tokenAccepted(token) {
  const response = await fetch("/v1/models", { headers: { Authorization: `Bearer ${token}` } });
  if (response.status === 401) return false;
  if (!response.ok) throw await serverError(response);
  return true;
}

async function useToken(event) {
  event.preventDefault();
  const token = ui.token.value.trim();
  if (!token) return;
  try {
    if (!(await tokenAccepted(token))) {
      showError("That token was refused. Check it and try again.");
      ui.token.select();
      return;
    }
  } catch (error) {
    showError(describe(error, false));
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  ui.tokenForm.hidden = true;
  hideError();
  ui.question.focus();
}

// Asking: the whole history goes with each question; the answer streams back as server-sent events.

// Calls onEvent with each event's JSON; returns true if the stream ended with [DONE].
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      const lines = buffer.split(/\r?\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } else if (line === "" && data.length) {
          const payload = data.join("\n");
          data = [];
          if (payload === "[DONE]") return true;
          onEvent(JSON.parse(payload));
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // Closes the connection, so the server stops generating.
  }
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  if (!busy) ui.question.focus();
}

async function ask(text) {
  hideError();
  const question = { role: "user", content: text };
  history.push(question);
  saveHistory();
  const shown = showUserMessage(text);
  const answer = showAnswer("", "thinking");
  answer.setAttribute("aria-busy", "true");
  scrollDown(true);

  // voicebot drops the oldest turns that no longer fit its context, rather than refusing the question.
  const body = { model, messages: history, stream: true, truncation: "auto" };
  if (!ui.speakOption.hidden && ui.speak.checked) body.speak = true;
  const asked = conversation;
  running = new AbortController();
  setBusy(true);

  let written = "";
  let finish = null;
  let frame = 0;
  const render = () => {
    frame = 0;
    const follow = nearBottom();
    renderMarkdown(answer.querySelector(".body"), written);
    scrollDown(follow);
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal: running.signal,
    });
    if (!response.ok) throw await serverError(response);
    const ended = await readEvents(response, (event) => {
      if (event.error) throw new ServerError(0, event.error.message || "the server gave no reason");
      const choice = event.choices?.[0];
      if (choice?.delta?.content) {
        written += choice.delta.content;
        answer.answerText = written;
        answer.dataset.state = "streaming";
        frame ||= requestAnimationFrame(render);
      }
      finish = choice?.finish_reason || finish;
    });
    if (!finish && !ended) throw new TypeError("the stream ended before the answer did");
    answer.dataset.state = finish === "length" ? "cut" : "done";
  } catch (error) {
    if (error.name === "AbortError") {
      answer.dataset.state = "stopped";
    } else {
      answer.dataset.state = "failed";
      showError(describe(error, written !== ""));
      if (error.status === 401) askForToken();
    }
  } finally {
    cancelAnimationFrame(frame);
    answer.removeAttribute("aria-busy");
    running = null;
    setBusy(false);
  }
  if (asked !== conversation) return;

  if (written) {
    render();
    history.push({ role: "assistant", content: written });
  } else {
    // Nothing came back: take the question back too, so it can be sent again as it was.
    history.pop();
    shown.remove();
    answer.remove();
    ui.empty.hidden = ui.messages.querySelector(".message") !== null;
    if (!ui.question.value) ui.question.value = text;
  }
  saveHistory();
}

async function checkHealth() {
  try {
    const response = await fetch("/health", { headers: authHeaders() });
    if (response.status === 401) return askForToken();
    if (!response.ok) throw await serverError(response);
    const health = await response.json();
    model = health.model || model;
    ui.model.textContent = health.model || "";
    ui.speakOption.hidden = !health.can_speak;
    const token = localStorage.getItem(TOKEN_KEY);
    if (health.auth_required && !(token && (await tokenAccepted(token)))) askForToken();
  } catch (error) {
    showError(describe(error, false));
  }
}

function growQuestion() {
  ui.question.style.height = "auto";
  ui.question.style.height = `${Math.min(ui.question.scrollHeight, 200)}px`;
}

ui.ask.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.question.value.trim();
  if (!text || running) return;
  ui.question.value = "";
  growQuestion();
  ask(text);
});
ui.question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.ask.requestSubmit();
  }
});
ui.question.addEventListener("input", growQuestion);
ui.stop.addEventListener("click", () => running?.abort());
ui.clear.addEventListener("click", clearHistory);
ui.tokenForm.addEventListener("submit", useToken);
ui.speak.checked = localStorage.getItem(SPEAK_KEY) === "1";
ui.speak.addEventListener("change", () => localStorage.setItem(SPEAK_KEY, ui.speak.checked ? "1" : "0"));

showHistory();
checkHealth();
ui.question.focus();
