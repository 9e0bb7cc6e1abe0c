// bt's search page: plain JavaScript over bt's own endpoints (no library, nothing from elsewhere).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 24; // results per scroll step
const UNREACHABLE = "The server is not reachable — is `bt serve` still running?";
const state = {
  library: null, folder: null, query: null, list: null, shown: 0, loading: false,
  view: null, // the current query's or browse's generation: its requests, their abort, its blob URLs
  open: null, openUrls: [],
};

class Shown extends Error { // an error whose message is for the page as it is (and the server's status, if any)
  constructor(message, status = 0) { super(message); this.status = status; }
}

// -- talking to the server --------------------------------------------------------------------------------------

function headers(extra = {}) {
  const key = sessionStorage.getItem("bt-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function request(path, { body, signal, accept } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers: headers({ ...(body === undefined ? {} : { "Content-Type": "application/json" }), ...(accept ? { Accept: accept } : {}) }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Shown(UNREACHABLE);
  }
  if (response.status === 401) {
    const wrong = Boolean(sessionStorage.getItem("bt-key"));
    askForKey(wrong ? "That key is not right." : "");
    throw new Shown(wrong ? "That key is not right." : "This server needs its API key: enter it above.");
  }
  if (!response.ok) {
    let answer = {};
    try { answer = await response.json(); } catch (_) { /* not bt's JSON */ }
    throw new Shown(answer.error ? sentence(answer.error) : `The server answered ${response.status}.`, response.status);
  }
  return response;
}

async function api(path, body, signal) {
  const response = await request(path, { body, signal });
  try {
    return await response.json();
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Shown(UNREACHABLE);
  }
}

function sentence(text) {
  // A server's words as the page says them: a sentence, and no path of the server's own (its index folder, its
  // checkpoints) — the page names only the photos under the folders it lists.
  const roots = state.library ? state.library.folders.map((f) => f.root) : [];
  const ours = (path) => roots.some((root) => path === root || path.startsWith(`${root}/`));
  const plain = text.replace(/(^|[\s'"(])(\/[^\s,;:()'"]+)/g, (_, lead, path) => lead + (ours(path) ? path : "(on the server)"));
  return plain.charAt(0).toUpperCase() + plain.slice(1) + (/[.!?]$/.test(plain) ? "" : ".");
}

function show(where, error) {
  if (error && error.name === "AbortError") return; // (a request this page replaced: nobody waits for it)
  if (error && !(error instanceof Shown)) console.error(error);
  where.textContent = error ? (error instanceof Shown ? error.message : "Something went wrong in this page: reload it.") : "";
}

function askForKey(message) {
  $("key").hidden = false;
  $("key-message").textContent = message || "";
  $("key-value").focus();
}

async function thumbnail(path, side, signal) {
  const response = await fetch(`/v1/thumbnail?side=${side}&path=${encodeURIComponent(path)}`, { headers: headers(), signal });
  if (!response.ok) return "";
  return URL.createObjectURL(await response.blob());
}

function fileName(path) {
  return path.split("/").pop();
}

function plural(n, word) {
  return `${n.toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;
}

function ago(when) {
  const seconds = (Date.now() - new Date(when.endsWith("Z") || when.includes("+") ? when : `${when}Z`)) / 1000;
  if (!(seconds >= 0)) return "";
  for (const [size, unit] of [[86400, "day"], [3600, "hour"], [60, "minute"]]) {
    if (seconds >= size) return `${plural(Math.floor(seconds / size), unit)} ago`;
  }
  return "just now";
}

// -- the library: folders and their indexes --------------------------------------------------------------------

async function loadLibrary() {
  show($("message"));
  try {
    state.library = await api("/v1/library");
  } catch (error) {
    return show($("message"), error);
  }
  $("key").hidden = true;
  const select = $("folder");
  const was = select.value;
  select.replaceChildren(...state.library.folders.map((f, k) => new Option(f.root, k)));
  if (!state.library.folders.length) return show($("message"), new Shown("This server searches no folders."));
  select.value = was && Number(was) < state.library.folders.length ? was : "0";
  choose(Number(select.value));
}

function choose(k) {
  state.folder = state.library.folders[k];
  const f = state.folder;
  const indexed = f.images > 0;
  $("status").textContent = indexed ? `${plural(f.images, "photo")} · indexed ${ago(f.last_refresh)}` : "";
  $("refresh").textContent = indexed ? "Refresh index" : "Build index";
  $("empty").hidden = indexed;
  $("empty-text").textContent = "This folder has no index yet.";
  $("build").textContent = `Build it (${plural(f.photos, "photo")})`;
  $("showing").hidden = !indexed;
  if (indexed) rerun();
  else begin();
}

function progressText(bar, started) {
  const text = `${bar.description}: ${bar.done.toLocaleString("en")} of ${bar.total.toLocaleString("en")}`;
  const seconds = (performance.now() - started) / 1000;
  if (bar.done < 2 || seconds < 2 || bar.done >= bar.total) return text;
  const left = Math.round(((bar.total - bar.done) * seconds) / bar.done);
  return `${text} · about ${left < 90 ? plural(left, "second") : plural(Math.round(left / 60), "minute")} left`;
}

async function refreshIndex() {
  const f = state.folder;
  const bar = $("progress");
  $("work").hidden = false;
  bar.removeAttribute("value");
  $("progress-text").textContent = "starting…";
  for (const button of [$("refresh"), $("build")]) button.disabled = true;
  show($("library-message"));
  try {
    const response = await request("/v1/index", {
      body: { model: state.library.model, sources: [f.root], index: f.index },
      accept: "application/x-ndjson",
    });
    const bars = {};
    let started = performance.now();
    for await (const event of events(response)) {
      if (event.event === "progress") {
        bars[event.id] = { description: event.description, total: event.total, done: 0 };
        started = performance.now();
        bar.max = Math.max(1, event.total);
        bar.value = 0;
      } else if (event.event === "advance" && bars[event.id]) {
        bars[event.id].done = event.done;
        bar.value = event.done;
        $("progress-text").textContent = progressText(bars[event.id], started);
      } else if (event.event === "error") {
        throw new Shown(sentence(event.error));
      }
    }
  } catch (error) {
    show($("library-message"), error);
  } finally {
    $("work").hidden = true;
    for (const button of [$("refresh"), $("build")]) button.disabled = false;
    await loadLibrary();
  }
}

async function* events(response) {
  // One JSON event per line, as the server sends them while it works.
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (_) {
      throw new Shown(UNREACHABLE);
    }
    if (chunk.done) break;
    pending += decoder.decode(chunk.value, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
  }
}

// -- what the grid shows: one query (or the browse) at a time ---------------------------------------------------

function begin() {
  // A new query, browse or folder: the previous one's requests are aborted, its answers ignored, its grid cleared.
  if (state.view) {
    state.view.controller.abort();
    state.view.urls.forEach((url) => URL.revokeObjectURL(url));
  }
  state.view = { controller: new AbortController(), urls: [] };
  state.list = null;
  state.shown = 0;
  state.loading = false;
  $("results").replaceChildren();
  $("end").hidden = true;
  $("count").textContent = "";
  show($("message"));
  return state.view;
}

function showQuery() {
  const q = state.query;
  $("chip").hidden = !q;
  $("browse").hidden = Boolean(q);
  if (!q) return;
  $("chip-text").textContent = q.query !== undefined ? `“${q.query}”` : `like ${q.like.name}`;
  $("chip-image").hidden = !q.preview;
  if (q.preview) $("chip-image").src = q.preview;
}

function search(query) {
  if (state.query && state.query.preview) URL.revokeObjectURL(state.query.preview);
  state.query = query;
  if (query && query.query === undefined) $("query").value = "";
  rerun();
}

function rerun() {
  showQuery();
  if (!state.folder) return;
  if (!state.folder.images) {
    begin();
    $("empty").hidden = false;
    return;
  }
  const f = state.folder;
  if (state.query) {
    const body = { model: state.library.model, sources: [f.root], index: f.index, refresh: false, top_k: PAGE, rerank_k: 5, keep: true };
    const { like, query } = state.query;
    first("/v1/retrieve", { ...body, ...(like ? { like: { name: like.name, data: like.data } } : { query }) });
  } else {
    first("/v1/browse", { root: f.root, order: $("order").value, top_k: PAGE });
  }
}

async function first(path, body) {
  const view = begin();
  view.asked = { path, body };
  state.loading = true;
  busy($("results"), true); // (Search stays enabled: a new query replaces this one)
  try {
    const answer = await api(path, body, view.controller.signal);
    if (view !== state.view) return;
    state.list = answer.meta || { total: answer.records.length };
    append(answer.records, view);
  } catch (error) {
    if (view === state.view) show($("message"), error);
  } finally {
    if (view === state.view) {
      state.loading = false;
      busy($("results"), false);
    }
  }
}

async function more() {
  const view = state.view;
  if (!view || state.loading || !state.list || !state.list.hits || state.shown >= state.list.total) return;
  state.loading = true;
  try {
    const answer = await slice(view);
    if (view !== state.view) return;
    show($("message"));
    if (!answer.records.length) state.list.total = state.shown; // (nothing more kept: the end, never a loop)
    append(answer.records, view);
  } catch (error) {
    if (view === state.view) show($("message"), error);
  } finally {
    if (view === state.view) state.loading = false;
  }
}

async function slice(view) {
  // The next page of the kept hits; if the server no longer keeps them (restarted, or ten minutes unused), the
  // query is asked once more for a new id and the page is cut from that.
  const next = () => api(`/v1/hits/${encodeURIComponent(state.list.hits)}?offset=${state.shown}&limit=${PAGE}`, undefined, view.controller.signal);
  try {
    return await next();
  } catch (error) {
    if (!(error instanceof Shown) || error.status !== 404) throw error;
  }
  const again = await api(view.asked.path, view.asked.body, view.controller.signal);
  if (view !== state.view || !again.meta) return { records: [] };
  state.list = again.meta;
  return next();
}

function append(records, view) {
  const grid = $("results");
  for (const record of records) grid.append(card(record, view));
  state.shown += records.length;
  const total = state.list.total;
  $("count").textContent = total ? `${plural(total, state.query ? "hit" : "photo")}` : "";
  if (!total) show($("message"), new Shown(state.query ? "No photos found." : "No photos in this index yet."));
  $("end").hidden = !total || state.shown < total;
  $("end").textContent = `That is all ${plural(total, state.query ? "hit" : "photo")}.`;
  requestAnimationFrame(() => { if (nearEnd()) more(); });
}

function nearEnd() {
  return $("more").getBoundingClientRect().top < window.innerHeight + 200;
}

function busy(element, on) {
  element.setAttribute("aria-busy", on ? "true" : "false");
  element.classList.toggle("busy", on);
}

function card(record, view) {
  const button = document.createElement("button");
  button.className = "card";
  button.type = "button";
  button.setAttribute("role", "listitem");
  button.dataset.path = record.image;
  button.title = record.image;
  const image = document.createElement("img");
  image.alt = fileName(record.image);
  thumbnail(record.image, 256, view.controller.signal).then((url) => {
    if (!url) return;
    view.urls.push(url);
    image.src = url;
  }).catch(() => {});
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = `#${record.rank} ${fileName(record.image)}`;
  const numbers = document.createElement("span");
  numbers.className = "numbers";
  const value = document.createElement("span");
  if (record.modified !== undefined) { // (browsing: when taken, as the camera's clock said; else when modified)
    const taken = record.taken !== null;
    const when = new Date((taken ? record.taken : record.modified) * 1000);
    value.textContent = when.toLocaleDateString("en", { dateStyle: "medium", ...(taken ? { timeZone: "UTC" } : {}) });
    value.title = taken ? "taken (EXIF)" : "modified (no date taken in the photo)";
  } else {
    value.textContent = `similarity ${record.similarity === null ? "–" : record.similarity.toFixed(3)}`;
  }
  numbers.append(value);
  if (record.probability !== null && record.probability !== undefined) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.title = "reranked by the ITM head";
    badge.textContent = `match ${record.probability.toFixed(3)}`;
    numbers.append(badge);
  }
  button.append(image, name, numbers);
  button.addEventListener("click", () => openViewer(record));
  return button;
}

// -- one photo: the large view and its tools --------------------------------------------------------------------

async function openViewer(record) {
  state.open = record;
  closeUrls();
  $("viewer-path").textContent = record.image;
  $("large").alt = fileName(record.image);
  $("large").removeAttribute("src");
  for (const table of [$("scores"), $("masks"), $("word-maps")]) table.replaceChildren();
  for (const error of document.querySelectorAll("#viewer .error")) error.textContent = "";
  $("overlay").hidden = true;
  $("show-map").hidden = true;
  $("copy").textContent = "Copy path";
  if (state.query && state.query.query) {
    $("explain-text").value = state.query.query;
    $("captions").value = state.query.query;
  }
  $("viewer").showModal();
  const url = await thumbnail(record.image, 1600).catch(() => "");
  if (url && state.open === record) {
    state.openUrls.push(url);
    $("large").src = url;
  }
}

function closeUrls() {
  state.openUrls.forEach((url) => URL.revokeObjectURL(url));
  state.openUrls = [];
}

function used(answer) {
  // A tool's answer: its records, or why the server could not use the photo (moved, deleted, unreadable).
  const skipped = answer.skipped || [];
  if (!answer.records.length && skipped.length) throw new Shown(sentence(`cannot use ${fileName(skipped[0].name)}: ${skipped[0].reason}`));
  return answer.records;
}

function photo() {
  return [{ name: state.open.image, path: state.open.image }];
}

function rows(table, heading, items) {
  const head = document.createElement("thead");
  const titles = document.createElement("tr");
  for (const title of heading) {
    const th = document.createElement("th");
    th.textContent = title;
    titles.append(th);
  }
  head.append(titles);
  const body = document.createElement("tbody");
  body.append(...items.map((cells) => {
    const row = document.createElement("tr");
    cells.forEach((cell, k) => {
      const td = document.createElement("td");
      td.textContent = cell;
      if (k) td.className = "num";
      row.append(td);
    });
    return row;
  }));
  table.replaceChildren(head, body);
}

function tool(form, work) {
  // A viewer tool: its button busy while it works, its answer or its error shown beside it, never behind.
  const button = form.querySelector("button");
  const error = form.nextElementSibling;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const record = state.open;
    button.disabled = true;
    busy(form, true);
    error.textContent = "";
    try {
      await work(record);
    } catch (failure) {
      if (state.open === record) show(error, failure);
    } finally {
      button.disabled = false;
      busy(form, false);
    }
  });
}

async function scoreCaptions(record) {
  const texts = $("captions").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const answer = await api("/v1/score", { model: state.library.model, images: photo(), texts });
  if (state.open !== record) return;
  const scored = used(answer).map((r) => [r.text, r.probability.toFixed(4), r.logit.toFixed(4)]);
  rows($("scores"), ["", "match probability", "logit"], scored);
}

async function explain(record) {
  const body = { model: state.library.model, images: photo(), texts: [$("explain-text").value] };
  const answer = await api("/v1/explain", { ...body, pictures: true, words: $("words").checked });
  if (state.open !== record) return;
  const explained = used(answer)[0];
  $("overlay").src = explained.picture;
  $("overlay").alt = `where the model looks for “${explained.text}”`;
  $("overlay").hidden = !$("map-toggle").checked;
  $("show-map").hidden = false;
  $("word-maps").replaceChildren(...explained.tokens.filter((t) => t.picture).map((token) => {
    const item = document.createElement("li");
    const image = document.createElement("img");
    image.src = token.picture;
    image.alt = `where the model looks for “${token.token}”`;
    const word = document.createElement("span");
    word.textContent = token.token;
    item.append(word, image);
    return item;
  }));
}

async function fillMask(record) {
  const text = $("mask-text").value;
  const answer = await api("/v1/fill-mask", { model: state.library.model, images: photo(), texts: [text], top_k: 5 });
  if (state.open !== record) return;
  const masks = used(answer).length ? answer.records[0].masks : [];
  const words = masks.flatMap((mask, m) => mask.map((c) => [`<mask> ${m + 1}: ${c.token_str}`, c.score.toFixed(4)]));
  rows($("masks"), ["", "probability"], words);
}

async function copyPath() {
  try {
    await navigator.clipboard.writeText(state.open.image);
    $("copy").textContent = "Copied";
  } catch (_) {
    $("copy").textContent = "Select the path to copy it";
  }
  setTimeout(() => { $("copy").textContent = "Copy path"; }, 2000);
}

// -- image queries, keys, keyboard -----------------------------------------------------------------------------

function likeFile(file) {
  if (!file || !file.type.startsWith("image/")) {
    if (file) show($("message"), new Shown(`${file.name} is not a photo.`));
    return;
  }
  const reader = new FileReader();
  reader.onload = () => search({ like: { name: file.name, data: reader.result }, preview: URL.createObjectURL(file) });
  reader.readAsDataURL(file);
  $("picker").value = ""; // (the same file picked again is a new query)
}

function moveFocus(key) {
  const cards = [...document.querySelectorAll(".card")];
  if (!cards.length) return false;
  if (document.activeElement === $("query")) {
    if (key !== "ArrowDown") return false;
    cards[0].focus();
    return true;
  }
  const at = cards.indexOf(document.activeElement);
  if (at < 0) return false;
  const columns = getComputedStyle($("results")).gridTemplateColumns.split(" ").length;
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns }[key];
  if (at + step < 0 && key === "ArrowUp") {
    $("query").focus();
    return true;
  }
  cards[Math.min(cards.length - 1, Math.max(0, at + step))].focus();
  return true;
}

function keyboard(event) {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (event.key === "/" && !typing && !$("viewer").open) {
    event.preventDefault();
    $("query").focus();
  } else if (event.key.startsWith("Arrow") && (!typing || document.activeElement === $("query")) && !$("viewer").open && moveFocus(event.key)) {
    event.preventDefault();
  }
}

function dropping() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("picker").click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("picker").click();
    }
  });
  $("picker").addEventListener("change", () => likeFile($("picker").files[0]));
  // Anywhere on the page: a photo dropped is a query (never opened in place of the page).
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    likeFile(event.dataTransfer.files[0]);
  });
}

function start() {
  if (matchMedia("(pointer: fine)").matches) $("query").placeholder = "Search photos (press /)";
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.library) return show($("message"), new Shown("Enter the server's API key first."));
    const text = $("query").value.trim();
    search(text ? { query: text } : null);
  });
  $("clear").addEventListener("click", () => { $("query").value = ""; search(null); $("query").focus(); });
  $("order").addEventListener("change", rerun);
  dropping();
  $("folder").addEventListener("change", () => choose(Number($("folder").value)));
  $("refresh").addEventListener("click", refreshIndex);
  $("build").addEventListener("click", refreshIndex);
  tool($("score-form"), scoreCaptions);
  tool($("explain-form"), explain);
  tool($("mask-form"), fillMask);
  $("captions").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("score-form").requestSubmit();
    }
  });
  $("map-toggle").addEventListener("change", () => { $("overlay").hidden = !$("map-toggle").checked; });
  $("close").addEventListener("click", () => $("viewer").close());
  $("viewer").addEventListener("close", () => { state.open = null; closeUrls(); });
  $("copy").addEventListener("click", copyPath);
  $("key").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("bt-key", $("key-value").value);
    $("key-message").textContent = "";
    loadLibrary();
  });
  document.addEventListener("keydown", keyboard);
  new IntersectionObserver((seen) => { if (seen[0].isIntersecting) more(); }).observe($("more"));
  loadLibrary();
}

start();
