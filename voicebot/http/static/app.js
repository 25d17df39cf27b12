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
  panel: byId("panel"),
  timers: byId("timers"),
  noTimers: byId("no-timers"),
  lists: byId("lists"),
  panelNote: byId("panel-note"),
  timerNews: byId("timer-news"),
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
  refreshPanel();
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
    refreshPanel(); // The answer may have set a timer or changed a list.
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
    if (health.intents === false) panel.off = true; // No timers or lists kept here: the panel is not shown.
    const token = localStorage.getItem(TOKEN_KEY);
    if (health.auth_required && !(token && (await tokenAccepted(token)))) askForToken();
  } catch (error) {
    showError(describe(error, false));
  }
}

// The panel: the running timers and alarms with a live countdown, and the lists, from /v1/timers and /v1/lists.
// It is read on load, after each answer and every few seconds while the page is visible (timers set by voice
// appear too). The countdown runs on the server's clock: its `now`, carried forward by this page's monotonic
// clock, so a browser whose clock is wrong still counts down to the right moment.

const PANEL_POLL_MS = 5000;
const DONE_SHOWN_S = 60; // A timer that ended stays, as "done", this long; the server forgets it when it rings.
const DONE_ITEMS_SHOWN = 5;
const LIST_TITLES = { shopping: "Shopping list", todo: "To-do list" };

const panel = {
  off: false, // The server keeps no timers or lists (404): the panel stays hidden.
  clock: null, // { now, at }: the server's time, and performance.now() when it was read.
  timers: [],
  shownTimers: "",
  shownLists: "",
  poll: 0,
  tick: 0,
  loading: false,
  again: false,
};

function serverNow() {
  return panel.clock.now + (performance.now() - panel.clock.at) / 1000;
}

async function panelGet(path) {
  const sent = performance.now();
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  const at = (sent + performance.now()) / 2; // The server read its clock about halfway.
  if (!response.ok) throw await serverError(response);
  return { body: await response.json(), at };
}

async function refreshPanel() {
  if (panel.off) return;
  if (panel.loading) {
    panel.again = true; // One more read when this one ends, so a change just made is never missed.
    return;
  }
  panel.loading = true;
  clearTimeout(panel.poll);
  try {
    const [timers, lists] = await Promise.all([panelGet("/v1/timers"), panelGet("/v1/lists")]);
    if (typeof timers.body?.now !== "number" || !Array.isArray(timers.body.timers) || !isObject(lists.body?.lists)) {
      throw new SyntaxError("not timers and lists");
    }
    panel.clock = { now: timers.body.now, at: timers.at };
    showTimers(timers.body.timers.filter(isTimer));
    showLists(lists.body.lists);
    ui.panelNote.hidden = true;
    // On a phone an empty panel is not shown: the conversation has the room.
    ui.panel.toggleAttribute("data-empty", !ui.timers.children.length && !ui.lists.querySelector("li.open"));
    ui.panel.hidden = false;
  } catch (error) {
    if (error.status === 404) {
      panel.off = true; // An older voicebot, or intents.enabled: false.
      ui.panel.hidden = true;
      clearTimeout(panel.tick);
    } else if (error.status === 401) {
      // The chat asks for the token; the panel reads again once one is given (useToken).
      panel.again = false;
      return;
    } else {
      // fetch fails with a TypeError when the server cannot be reached; a body that is not theirs is a SyntaxError.
      ui.panelNote.textContent =
        error instanceof ServerError
          ? `Timers and lists not updated (error ${error.status}).`
          : error instanceof TypeError
            ? "Timers and lists not updated: voicebot cannot be reached."
            : "Timers and lists not updated.";
      ui.panelNote.hidden = false;
    }
  } finally {
    panel.loading = false;
  }
  if (panel.again) {
    panel.again = false;
    return refreshPanel();
  }
  schedulePanel();
}

function schedulePanel() {
  clearTimeout(panel.poll);
  if (!panel.off && !document.hidden) panel.poll = setTimeout(refreshPanel, PANEL_POLL_MS);
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function isTimer(timer) {
  return (
    isObject(timer) &&
    (typeof timer.ends_at === "number" || timer.ends_at === null) &&
    typeof timer.left_s === "number" &&
    typeof timer.duration_s === "number"
  );
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// 3725 s: "1:02:05"; 299 s: "04:59". Rounded up, as a kitchen timer shows it: 0.3 s left is still "00:01".
function clockText(seconds) {
  const whole = Math.max(0, Math.ceil(seconds - 1e-3));
  const two = (n) => String(n).padStart(2, "0");
  const hours = Math.floor(whole / 3600);
  const rest = `${two(Math.floor((whole % 3600) / 60))}:${two(whole % 60)}`;
  return hours ? `${hours}:${rest}` : rest;
}

// 300 s: "5 min"; 5400 s: "1 h 30 min".
function durationText(seconds) {
  const whole = Math.round(seconds);
  const parts = [[Math.floor(whole / 3600), "h"], [Math.floor((whole % 3600) / 60), "min"], [whole % 60, "s"]];
  return parts.filter(([n]) => n).map(([n, unit]) => `${n} ${unit}`).join(" ") || "0 s";
}

// What a timer is called on the page, and what it was set for when it has a name of its own.
function timerTitle(timer) {
  const setFor =
    timer.kind === "alarm" ? `Alarm ${timer.alarm_at ?? ""}`.trim() : `${durationText(timer.duration_s)} timer`;
  return typeof timer.name === "string" && timer.name ? [timer.name, setFor] : [setFor, ""];
}

function showTimers(fresh) {
  // The server forgets a timer once it rings: keep it here as "done" for a while. One gone before its end
  // was cancelled, and goes at once.
  const now = serverNow();
  const ids = new Set(fresh.map((timer) => timer.id));
  const ended = panel.timers.filter(
    (t) => !ids.has(t.id) && t.ends_at !== null && t.ends_at <= now + 1 && now - t.ends_at < DONE_SHOWN_S,
  );
  const soonest = (a, b) => (a.ends_at ?? Infinity) - (b.ends_at ?? Infinity) || a.id - b.id;
  panel.timers = [...fresh, ...ended].sort(soonest);
  // What the rows show; a running timer's left_s changes with every read and is not drawn from.
  const shown = JSON.stringify(panel.timers.map(({ left_s, ...t }) => (t.paused ? { ...t, left_s } : t)));
  if (shown !== panel.shownTimers) {
    panel.shownTimers = shown;
    const states = new Map([...ui.timers.children].map((row) => [row.timer.id, row.dataset.state]));
    ui.timers.replaceChildren(...panel.timers.map((timer) => timerRow(timer, states.get(timer.id))));
    ui.noTimers.hidden = panel.timers.length > 0;
  }
  tick();
}

function timerRow(timer, state) {
  const row = element("li", "timer");
  const [title, setFor] = timerTitle(timer);
  const name = element("span", "timer-name", title);
  if (setFor) name.append(element("span", "timer-for", setFor));
  const left = element("span", "timer-left");
  left.setAttribute("role", "timer"); // Implicitly aria-live off: read when visited, never every second.
  const tag = element("span", "timer-tag");
  row.append(name, left, tag);
  row.timer = timer;
  if (state) row.dataset.state = state;
  return row;
}

// Updates each countdown, and sleeps until the next one changes its second.
function tick() {
  clearTimeout(panel.tick);
  if (!panel.clock) return;
  const now = serverNow();
  let next = Infinity;
  for (const row of ui.timers.children) {
    const timer = row.timer;
    let state, text;
    if (timer.ends_at === null) {
      [state, text] = ["paused", clockText(timer.left_s)];
    } else if (timer.ends_at - now > 1e-3) {
      const left = timer.ends_at - now;
      [state, text] = ["running", clockText(left)];
      next = Math.min(next, left - Math.ceil(left - 1e-3) + 1);
    } else {
      [state, text] = ["done", "done"];
      if (row.dataset.state === "running") ui.timerNews.textContent = `${timerTitle(timer)[0]} is done.`;
    }
    row.dataset.state = state;
    const left = row.querySelector(".timer-left");
    if (left.textContent !== text) left.textContent = text;
    const tag = row.querySelector(".timer-tag");
    const tagText = state === "paused" ? "paused" : "";
    if (tag.textContent !== tagText) tag.textContent = tagText;
  }
  if (next !== Infinity && !document.hidden) panel.tick = setTimeout(tick, next * 1000 + 20);
}

function showLists(lists) {
  const shown = JSON.stringify(lists);
  if (shown === panel.shownLists) return;
  panel.shownLists = shown;
  // The shopping list always; any other list while it has something to do.
  const keys = Object.keys(lists).filter(
    (key) => Array.isArray(lists[key]) && (key === "shopping" || lists[key].some((item) => item && !item.done)),
  );
  keys.sort((a, b) => (a === "shopping" ? -1 : b === "shopping" ? 1 : a === "todo" ? -1 : b === "todo" ? 1 : 0));
  ui.lists.replaceChildren(...keys.map((key, index) => listPart(key, lists[key], index)));
}

function listPart(key, items, index) {
  const part = element("section", "panel-part list");
  part.dataset.list = key;
  const title = element("h3", "", LIST_TITLES[key] ?? `${key.charAt(0).toUpperCase()}${key.slice(1)} list`);
  title.id = `list-title-${index}`;
  part.setAttribute("aria-labelledby", title.id);
  const valid = items.filter((item) => isObject(item) && typeof item.text === "string");
  const open = valid.filter((item) => !item.done);
  const done = valid.filter((item) => item.done).slice(-DONE_ITEMS_SHOWN);
  part.append(title);
  if (!open.length && !done.length) {
    part.append(element("p", "panel-empty", "Nothing on it."));
    return part;
  }
  const list = element("ul", "items");
  for (const item of open) list.append(element("li", "open", item.text));
  for (const item of done) {
    const entry = element("li", "done", item.text);
    entry.append(element("span", "visually-hidden", " (done)"));
    list.append(entry);
  }
  part.append(list);
  return part;
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    clearTimeout(panel.poll);
    clearTimeout(panel.tick);
  } else {
    tick();
    refreshPanel();
  }
});

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
checkHealth().then(refreshPanel); // Health first: it says whether there are timers and lists to show.
ui.question.focus();
