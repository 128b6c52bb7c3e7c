// kiln chat page: talks only to the kiln server that served it (/v1/models, /v1/chat/completions).
// Chats live in this browser's localStorage; nothing is sent anywhere else.
"use strict";

const KEYS = { chats: "kiln.chats", current: "kiln.current", model: "kiln.model", apiKey: "kiln.apiKey" };
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const state = {
  chats: [],          // newest first: {id, title, model, system, created, updated, messages}
  current: null,      // the chat on screen (not saved until its first message)
  models: [],         // from /v1/models
  busy: null,         // {controller, msg} while an answer streams
};

// ---- storage ------------------------------------------------------------------------------------
function loadChats() {
  try {
    const chats = JSON.parse(localStorage.getItem(KEYS.chats) || "[]");
    return Array.isArray(chats) ? chats.filter((c) => c && Array.isArray(c.messages)) : [];
  } catch {
    return [];
  }
}

function saveChats() {
  const c = state.current;
  if (c && c.messages.length && !state.chats.includes(c)) state.chats.unshift(c);
  state.chats.sort((a, b) => b.updated - a.updated);
  try {
    localStorage.setItem(KEYS.chats, JSON.stringify(state.chats));
    if (c) localStorage.setItem(KEYS.current, c.id);
  } catch (err) {
    showBanner(`Could not save the chats in this browser (${err.name}): the browser's storage may be full. Export and delete old chats.`);
  }
  renderChatList();
}

function newChat() {
  const now = Date.now();
  return { id: `${now.toString(36)}-${Math.random().toString(36).slice(2, 8)}`, title: "",
           model: selectedModel(), system: $("system").value, created: now, updated: now,
           messages: [] };
}

// ---- the server ---------------------------------------------------------------------------------
function headers(extra) {
  const h = { ...extra };
  const key = localStorage.getItem(KEYS.apiKey);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(resp) {
  let message = resp.statusText || `HTTP ${resp.status}`;
  let code = "";
  try {
    const body = await resp.json();
    const e = body.error ?? body.detail ?? body;
    if (typeof e === "string") message = e;
    else if (e && typeof e === "object") {
      message = e.message || JSON.stringify(e);
      code = e.code || e.type || "";
    }
  } catch { /* not JSON */ }
  return { status: resp.status, message, code: String(code) };
}

// Fetch with the API key; a 401 asks for the key (once per refusal) and tries again.
async function api(path, opts = {}) {
  let refused = false;
  for (;;) {
    const resp = await fetch(path, { ...opts, headers: headers(opts.headers) });
    if (resp.status !== 401) return resp;
    await askKey(refused || !!localStorage.getItem(KEYS.apiKey));
    refused = true;
  }
}

let keyWaiters = null;
function askKey(wasRefused) {
  if (!keyWaiters) {
    keyWaiters = [];
    $("key-error").textContent = wasRefused ? "The server refused that key; check it and try again." : "";
    $("key-dialog").hidden = false;
    $("key-input").value = "";
    $("key-input").focus();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  localStorage.setItem(KEYS.apiKey, key);
  $("key-dialog").hidden = true;
  const waiters = keyWaiters || [];
  keyWaiters = null;
  waiters.forEach((resolve) => resolve());
});

// ---- models -------------------------------------------------------------------------------------
function fmtSize(n) {
  if (!n) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
}

function modelFacts(m) {
  const k = m.kiln || m.details || m.meta || {};
  const family = m.family || k.family || "";
  const quant = m.quant || m.quantization || k.quant || k.quantization || k.quantization_level || "";
  const size = fmtSize(m.size || k.size || 0);
  return [family, quant && String(quant).toUpperCase(), size].filter(Boolean);
}

// Family, quantization and size, from kiln's Ollama-style listing when /v1/models lacks them.
async function addDetails(models) {
  try {
    const resp = await api("/api/tags");
    if (!resp.ok) return;
    const byName = new Map(((await resp.json()).models || []).map((t) => [t.name, t]));
    for (const m of models) {
      const t = byName.get(m.id) || byName.get(`${m.id}:latest`);
      if (t) m.kiln = { family: t.details?.family, quant: t.details?.quantization_level, size: t.size };
    }
  } catch { /* the picker then shows names only */ }
}

async function loadModels() {
  try {
    const resp = await api("/v1/models");
    if (!resp.ok) {
      const e = await errorOf(resp);
      throw new Error(`the server answered ${e.status}: ${e.message}`);
    }
    state.models = (await resp.json()).data || [];
  } catch (err) {
    showBanner(err instanceof TypeError ? unreachable() : `Could not list the models: ${err.message}`);
    return;
  }
  fillPicker();
  pickModel(state.current?.messages.length ? state.current.model
            : modelFromHash() || localStorage.getItem(KEYS.model));
  if (!state.models.length) {
    showBanner("The model store is empty. Add a model with `kiln pull REPO_ID` or " +
               "`kiln import FILE.gguf`, then reload this page.");
  } else if (state.models.some((m) => !(m.kiln || {}).family)) {
    await addDetails(state.models);
    fillPicker();
  }
}

function fillPicker() {
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren();
  for (const m of state.models) {
    const facts = modelFacts(m);
    const opt = el("option", "", facts.length ? `${m.id} (${facts.join(", ")})` : m.id);
    opt.value = m.id;
    select.append(opt);
  }
  if (!state.models.length) {
    const opt = el("option", "", "no models in the store");
    opt.value = "";
    select.append(opt);
  }
  pickModel(chosen);
}

// `kiln chat MODEL --web` opens the page as /#model=MODEL (a store name, NAME:QUANT or a path).
function modelFromHash() {
  const spec = new URLSearchParams(location.hash.slice(1)).get("model");
  if (!spec || !state.models.length) return null;
  const stem = spec.split(/[\\/]/).pop().replace(/\.gguf$/i, "");
  const m = state.models.find((x) => x.id === spec) ||
    state.models.find((x) => x.id.startsWith(`${spec}:`) || x.id.startsWith(`${stem}:`)) ||
    state.models.find((x) => x.id === stem || x.id.endsWith(`/${stem}`));
  return (m || state.models[0]).id;   // kiln serve lists the models it was given first
}

function pickModel(id) {
  const select = $("model");
  if (id && state.models.some((m) => m.id === id)) select.value = id;
  const m = state.models.find((x) => x.id === select.value);
  $("model-info").textContent = m ? modelFacts(m).join(" · ") : "";
}

const selectedModel = () => $("model").value;

$("model").addEventListener("change", () => {
  localStorage.setItem(KEYS.model, selectedModel());
  pickModel(selectedModel());
  if (state.current) {
    state.current.model = selectedModel();
    if (state.current.messages.length) saveChats();
  }
});

// ---- rendering ----------------------------------------------------------------------------------
function showBanner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

const unreachable = () =>
  `Cannot reach the kiln server at ${location.origin}. Is \`kiln serve\` still running?`;

function renderChatList() {
  const list = $("chat-list");
  list.replaceChildren();
  for (const chat of state.chats) {
    const li = el("li", chat === state.current ? "current" : "");
    const open = el("button", "open", chat.title || "New chat");
    open.type = "button";
    open.dir = "auto";
    open.title = chat.title;
    open.addEventListener("click", () => openChat(chat));
    const del = el("button", "delete", "×");
    del.type = "button";
    del.title = "Delete this chat";
    del.setAttribute("aria-label", `Delete chat ${chat.title}`);
    del.addEventListener("click", () => deleteChat(chat));
    li.append(open, del);
    list.append(li);
  }
}

function statsText(s) {
  if (!s) return "";
  const parts = [];
  if (s.completion_tokens != null) parts.push(`${s.approx ? "~" : ""}${s.completion_tokens} tokens`);
  if (s.tokens_per_second) parts.push(`${s.tokens_per_second.toFixed(1)} tok/s`);
  if (s.prompt_tokens != null) parts.push(`prompt ${s.prompt_tokens} tokens`);
  return parts.join(" · ");
}

function noteFor(msg) {
  const notes = [];
  const s = msg.stats || {};
  if (s.trimmed_turns) {
    notes.push(`Context full: the oldest ${s.trimmed_turns} message${s.trimmed_turns === 1 ? " was" : "s were"} ` +
               "dropped from what the model saw, so it may have forgotten them. Start a new chat to begin afresh.");
  }
  if (msg.stopped) notes.push("Stopped.");
  else if (s.finish_reason === "length") notes.push("The answer reached its length limit.");
  return notes.join(" ");
}

function renderContent(msg, node) {
  if (msg.role === "assistant") node.innerHTML = KilnMarkdown.render(msg.content);
  else node.textContent = msg.content;
}

function messageNode(msg, index, isLast) {
  const node = el("div", `msg ${msg.role}`);
  node.dataset.index = index;
  node.append(el("div", "role", msg.role === "user" ? "You" : (msg.model || "assistant")));
  if (msg.error) {
    node.append(el("div", "error", msg.error));
  } else {
    const content = el("div", "content");
    content.dir = "auto";
    renderContent(msg, content);
    node.append(content);
  }
  const meta = el("div", "meta");
  if (msg.role === "assistant") meta.append(el("span", "stats", statsText(msg.stats)));
  if (msg.content) meta.append(button("Copy", "copy", () => copy(msg.content, meta.querySelector(".copy"))));
  if (msg.role === "assistant" && isLast) meta.append(button(msg.error ? "Retry" : "Regenerate", "regenerate", regenerate));
  node.append(meta);
  const note = noteFor(msg);
  if (note) node.append(el("div", "note", note));
  return node;
}

function button(label, cls, onClick) {
  const b = el("button", cls, label);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  const msgs = state.current?.messages || [];
  if (!msgs.length) {
    const empty = el("div", "empty", "Answers are generated on this machine; nothing leaves it.");
    empty.append(el("br"), el("small", "", "Enter sends · Shift+Enter starts a new line"));
    box.append(empty);
  }
  msgs.forEach((m, i) => {
    const node = messageNode(m, i, i === msgs.length - 1 && !state.busy);
    if (state.busy?.msg === m) node.classList.add("streaming");
    box.append(node);
  });
  box.scrollTop = box.scrollHeight;
}

function render() {
  renderChatList();
  renderMessages();
  $("system").value = state.current?.system || "";
  $("send").hidden = !!state.busy;
  $("stop").hidden = !state.busy;
}

async function copy(text, btn) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const t = el("textarea");
    t.value = text;
    document.body.append(t);
    t.select();
    document.execCommand("copy");
    t.remove();
  }
  if (btn) {
    const old = btn.textContent;
    btn.textContent = "Copied";
    setTimeout(() => { btn.textContent = old; }, 1200);
  }
}

$("messages").addEventListener("click", (ev) => {
  const b = ev.target.closest(".copy-code");
  if (b) copy(b.closest(".code").querySelector("code").textContent, b);
});

// ---- chats --------------------------------------------------------------------------------------
function openChat(chat) {
  if (state.busy) stop();
  state.current = chat;
  localStorage.setItem(KEYS.current, chat.id);
  pickModel(chat.model);
  $("app").classList.remove("drawer-open");
  showBanner("");
  render();
}

function deleteChat(chat) {
  if (state.busy && chat === state.current) stop();
  state.chats = state.chats.filter((c) => c !== chat);
  if (chat === state.current) state.current = newChat();
  saveChats();
  render();
}

$("new-chat").addEventListener("click", () => openChat(newChat()));
$("toggle-sidebar").addEventListener("click", () => $("app").classList.toggle("drawer-open"));
$("toggle-system").addEventListener("click", () => {
  const box = $("system-box");
  box.hidden = !box.hidden;
  $("toggle-system").setAttribute("aria-expanded", String(!box.hidden));
  if (!box.hidden) $("system").focus();
});
$("system").addEventListener("input", () => {
  if (!state.current) state.current = newChat();
  state.current.system = $("system").value;
  if (state.current.messages.length) saveChats();
});

// ---- sending and streaming ----------------------------------------------------------------------
const input = $("input");
let composing = false;
input.addEventListener("compositionstart", () => { composing = true; });
input.addEventListener("compositionend", () => { setTimeout(() => { composing = false; }, 0); });
input.addEventListener("keydown", (ev) => {
  if (ev.key !== "Enter" || ev.shiftKey) return;
  // The Enter that confirms an IME composition (Japanese, Chinese, Korean) must not send.
  if (ev.isComposing || ev.keyCode === 229 || composing) return;
  ev.preventDefault();
  send();
});
input.addEventListener("input", autosize);
function autosize() {
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight + 2}px`;
}

$("composer").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
$("stop").addEventListener("click", () => stop());
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && state.busy && !ev.isComposing) stop();
});

function send() {
  const text = input.value.replace(/\s+$/, "");
  if (!text.trim() || state.busy) return;
  if (!selectedModel()) {
    showBanner("No model to answer with: the model store is empty.");
    return;
  }
  if (!state.current) state.current = newChat();
  const chat = state.current;
  // a failed answer is replaced by the new question's answer
  if (chat.messages.length && chat.messages[chat.messages.length - 1].error) chat.messages.pop();
  chat.messages.push({ role: "user", content: text });
  if (!chat.title) chat.title = text.trim().split("\n")[0].slice(0, 80);
  input.value = "";
  autosize();
  generate(chat);
}

function regenerate() {
  const chat = state.current;
  if (state.busy || !chat) return;
  while (chat.messages.length && chat.messages[chat.messages.length - 1].role === "assistant") {
    chat.messages.pop();
  }
  if (chat.messages.length) generate(chat);
}

function stop() {
  if (state.busy) state.busy.controller.abort();
}

function payload(chat) {
  const msgs = [];
  if (chat.system && chat.system.trim()) msgs.push({ role: "system", content: chat.system });
  for (const m of chat.messages) {
    if (m.error || (m.role === "assistant" && !m.content)) continue;
    msgs.push({ role: m.role, content: m.content });
  }
  return { model: chat.model, messages: msgs, stream: true, stream_options: { include_usage: true } };
}

function errorMessage(e, model) {
  const m = e.message;
  if (e.code === "context_length_exceeded") {
    return `Context full: your message alone does not fit in the model's context, even with ` +
           `all earlier turns dropped: ${m}`;
  }
  if (e.code === "model_not_found") {
    return `The model "${model}" is not on this server any more (removed from the store?). ` +
           "Pick another one above, or reload the page to refresh the list.";
  }
  if (e.code === "model_load_failed" || /could not load/i.test(m)) {
    return `The model "${model}" failed to load. The server said: ${m}`;
  }
  if (e.status === 503) return `The server is busy: ${m}. Try again in a moment.`;
  return `The server answered ${e.status}: ${m}`;
}

async function generate(chat) {
  chat.model = selectedModel();
  chat.system = $("system").value;
  chat.updated = Date.now();
  const msg = { role: "assistant", content: "", model: chat.model };
  chat.messages.push(msg);
  const controller = new AbortController();
  state.busy = { controller, msg };
  showBanner("");
  saveChats();
  render();
  input.focus();

  const body = JSON.stringify(payload({ ...chat, messages: chat.messages.slice(0, -1) }));
  const t0 = performance.now();
  let tFirst = 0;
  let pieces = 0;
  let usage = null;
  let extra = {};
  let finish = null;
  try {
    const resp = await api("/v1/chat/completions", {
      method: "POST", body, signal: controller.signal, headers: { "Content-Type": "application/json" },
    });
    if (!resp.ok) {
      msg.error = errorMessage(await errorOf(resp), chat.model);
    } else {
      extra.trimmed_turns = parseInt(resp.headers.get("X-Kiln-Trimmed-Messages") || "0", 10);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut).replace(/^\r?\n\r?\n/, "");
          const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (!data || data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw Object.assign(new Error(chunk.error.message || String(chunk.error)),
                                               { server: chunk.error });
          if (chunk.usage) usage = chunk.usage;
          if (chunk.kiln) extra = { ...extra, ...chunk.kiln };
          const choice = (chunk.choices || [])[0];
          if (choice?.finish_reason) finish = choice.finish_reason;
          const piece = choice?.delta?.content;
          if (piece) {
            if (!tFirst) tFirst = performance.now();
            pieces++;
            msg.content += piece;
            paint(msg);
          }
        }
      }
    }
  } catch (err) {
    if (err.name === "AbortError") msg.stopped = true;
    else if (err.server) msg.error = `The model stopped with an error: ${err.message}`;
    else if (err instanceof TypeError) msg.error = unreachable();
    else msg.error = `Something went wrong reading the answer: ${err.message}`;
  }
  const tEnd = performance.now();
  const tokens = usage?.completion_tokens ?? pieces;
  const genSeconds = tFirst ? (tEnd - tFirst) / 1000 : 0;
  msg.stats = {
    completion_tokens: tokens,
    approx: !usage,
    prompt_tokens: usage?.prompt_tokens ?? null,
    tokens_per_second: extra.tokens_per_second ?? usage?.tokens_per_second ??
      (genSeconds > 0 && tokens > 1 ? (tokens - 1) / genSeconds : 0),
    trimmed_turns: extra.trimmed_turns ?? usage?.trimmed_turns ?? 0,
    finish_reason: msg.stopped ? "cancelled" : finish,
    seconds: (tEnd - t0) / 1000,
  };
  if (msg.error && !msg.content) delete msg.stats;
  state.busy = null;
  chat.updated = Date.now();
  saveChats();
  render();
}

let paintQueued = null;
function paint(msg) {
  if (paintQueued) return;
  paintQueued = requestAnimationFrame(() => {
    paintQueued = null;
    const nodes = $("messages").querySelectorAll(".msg.streaming .content");
    const node = nodes[nodes.length - 1];
    if (!node) return;
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    renderContent(msg, node);
    if (atBottom) box.scrollTop = box.scrollHeight;
  });
}

// ---- export -------------------------------------------------------------------------------------
function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function exportName(chat, ext) {
  const day = new Date(chat.created).toISOString().slice(0, 10);
  const slug = (chat.title || "chat").replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-|-$/g, "").slice(0, 40);
  return `kiln-${day}-${slug || "chat"}.${ext}`;
}

function toMarkdown(chat) {
  const lines = [`# ${chat.title || "Chat"}`, "", `Model: ${chat.model}`, ""];
  if (chat.system) lines.push("## System", "", chat.system, "");
  for (const m of chat.messages) {
    if (m.error) continue;
    lines.push(m.role === "user" ? "## User" : "## Assistant", "", m.content, "");
  }
  return lines.join("\n");
}

function exportChat(kind) {
  const chat = state.current;
  if (!chat || !chat.messages.length) {
    showBanner("Nothing to export yet: this chat is empty.");
    return;
  }
  if (kind === "json") {
    const data = { title: chat.title, model: chat.model, system: chat.system || "",
                   created: new Date(chat.created).toISOString(),
                   messages: chat.messages.filter((m) => !m.error)
                     .map(({ role, content, stats }) => (stats ? { role, content, stats } : { role, content })) };
    download(exportName(chat, "json"), "application/json", JSON.stringify(data, null, 2));
  } else {
    download(exportName(chat, "md"), "text/markdown", toMarkdown(chat));
  }
}
$("export-json").addEventListener("click", () => exportChat("json"));
$("export-md").addEventListener("click", () => exportChat("md"));

// ---- start --------------------------------------------------------------------------------------
window.addEventListener("storage", (ev) => {
  if (ev.key === KEYS.chats && !state.busy) {
    const id = state.current?.id;
    state.chats = loadChats();
    state.current = state.chats.find((c) => c.id === id) || state.current;
    render();
  }
});

state.chats = loadChats();
state.chats.sort((a, b) => b.updated - a.updated);
const lastId = localStorage.getItem(KEYS.current);
state.current = state.chats.find((c) => c.id === lastId) || null;
for (const chat of state.chats) {  // an answer cut off by a reload
  const last = chat.messages[chat.messages.length - 1];
  if (last && last.role === "assistant" && !last.stats && !last.error) last.stopped = true;
}
render();
if (!state.current) state.current = newChat();
loadModels();
input.focus();
