// bt's search page: plain JavaScript over bt's own endpoints (no library, nothing from elsewhere).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 24; // results per scroll step
const state = { library: null, folder: null, request: null, records: [], topK: PAGE, busy: false, open: null };

function headers(extra = {}) {
  const key = sessionStorage.getItem("bt-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function say(text) {
  $("message").textContent = text || "";
}

async function api(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    askForKey();
    throw new Error("this server needs its API key");
  }
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error + (answer.hint ? ` (${answer.hint})` : ""));
  return answer;
}

function askForKey() {
  $("key").hidden = false;
  $("key-value").focus();
}

async function thumbnail(path, side) {
  const response = await fetch(`/v1/thumbnail?side=${side}&path=${encodeURIComponent(path)}`, { headers: headers() });
  if (!response.ok) return "";
  return URL.createObjectURL(await response.blob());
}

function fileName(path) {
  return path.split("/").pop();
}

// -- the library: folders and their indexes --------------------------------------------------------------------

async function loadLibrary() {
  state.library = await api("/v1/library");
  const select = $("folder");
  select.replaceChildren(...state.library.folders.map((f, k) => new Option(f.root, k)));
  if (!state.library.folders.length) say("This server searches no folders: start it with --allow-path DIR.");
  choose(0);
}

function choose(k) {
  state.folder = state.library.folders[k];
  if (!state.folder) return;
  const f = state.folder;
  $("status").textContent = `${f.images} images · ${f.last_refresh ? `refreshed ${f.last_refresh}` : "not indexed yet"}`;
}

async function refreshIndex() {
  const f = state.folder;
  const bar = $("progress");
  bar.hidden = false;
  bar.removeAttribute("value");
  $("refresh").disabled = true;
  try {
    const response = await fetch("/v1/index", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "application/x-ndjson" }),
      body: JSON.stringify({ model: state.library.model, sources: [f.root], index: f.index }),
    });
    if (response.status === 401) return askForKey();
    if (!response.ok) throw new Error((await response.json()).error);
    for await (const event of events(response)) {
      if (event.event === "progress") bar.max = Math.max(1, event.total);
      else if (event.event === "advance") bar.value = event.done;
      else if (event.event === "info") say(event.message);
      else if (event.event === "error") throw new Error(event.error);
    }
  } catch (error) {
    say(error.message);
  } finally {
    bar.hidden = true;
    $("refresh").disabled = false;
    const k = $("folder").value;
    state.library = await api("/v1/library");
    choose(Number(k));
  }
}

async function* events(response) {
  // One JSON event per line, as the server sends them while it works.
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
  }
}

// -- search ----------------------------------------------------------------------------------------------------

async function search(request) {
  if (!state.folder) return;
  if (!state.folder.images) await refreshIndex(); // (the first search builds the index)
  state.request = request;
  state.topK = PAGE;
  await run();
}

async function run() {
  if (state.busy) return;
  state.busy = true;
  const f = state.folder;
  $("results").setAttribute("aria-busy", "true");
  say("searching…");
  try {
    const body = { model: state.library.model, sources: [f.root], index: f.index, refresh: false, top_k: state.topK, rerank_k: 5 };
    const answer = await api("/v1/retrieve", { ...body, ...state.request });
    const known = state.records.length && state.topK > PAGE ? state.records.length : 0;
    state.records = answer.records;
    render(known);
    say(answer.records.length ? "" : "no images found");
  } catch (error) {
    say(error.message);
  } finally {
    state.busy = false;
    $("results").setAttribute("aria-busy", "false");
  }
}

function render(from) {
  const grid = $("results");
  if (!from) grid.replaceChildren();
  for (const record of state.records.slice(from)) grid.append(card(record));
}

function card(record) {
  const button = document.createElement("button");
  button.className = "card";
  button.type = "button";
  button.setAttribute("role", "listitem");
  button.dataset.path = record.image;
  const image = document.createElement("img");
  image.alt = fileName(record.image);
  thumbnail(record.image, 256).then((url) => { if (url) image.src = url; });
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = `#${record.rank} ${fileName(record.image)}`;
  const numbers = document.createElement("span");
  numbers.className = "numbers";
  numbers.textContent = `similarity ${record.similarity === null ? "–" : record.similarity.toFixed(3)}`;
  if (record.probability !== null && record.probability !== undefined) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.title = "reranked by the ITM head";
    badge.textContent = `match ${record.probability.toFixed(3)}`;
    numbers.append(" ", badge);
  }
  button.append(image, name, numbers);
  button.addEventListener("click", () => openViewer(record));
  return button;
}

// -- one photo: the large view and its tools --------------------------------------------------------------------

async function openViewer(record) {
  state.open = record;
  $("viewer-path").textContent = record.image;
  $("large").alt = fileName(record.image);
  $("large").removeAttribute("src");
  $("scores").replaceChildren();
  $("masks").replaceChildren();
  $("overlay").hidden = true;
  if (state.request && state.request.query) {
    $("explain-text").value = state.request.query;
    $("captions").value = state.request.query;
  }
  $("viewer").showModal();
  const url = await thumbnail(record.image, 1280);
  if (url) $("large").src = url;
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

async function scoreCaptions(event) {
  event.preventDefault();
  const texts = $("captions").value.split("\n").map((t) => t.trim()).filter(Boolean);
  try {
    const answer = await api("/v1/score", { model: state.library.model, images: photo(), texts });
    const scored = answer.records.map((r) => [r.text, r.probability.toFixed(4), r.logit.toFixed(4)]);
    rows($("scores"), ["", "match probability", "logit"], scored);
  } catch (error) {
    say(error.message);
  }
}

async function explain(event) {
  event.preventDefault();
  const body = { model: state.library.model, images: photo(), texts: [$("explain-text").value] };
  try {
    const answer = await api("/v1/explain", { ...body, pictures: true, words: $("words").checked });
    $("overlay").src = answer.records[0].picture;
    $("overlay").alt = `where the model looks for “${answer.records[0].text}”`;
    $("overlay").hidden = false;
  } catch (error) {
    say(error.message);
  }
}

async function fillMask(event) {
  event.preventDefault();
  const body = { model: state.library.model, images: photo(), texts: [$("mask-text").value], top_k: 5 };
  try {
    const answer = await api("/v1/fill-mask", body);
    const masks = answer.records.length ? answer.records[0].masks : [];
    const words = masks.flatMap((mask, m) => mask.map((c) => [`<mask> ${m + 1}: ${c.token_str}`, c.score.toFixed(4)]));
    rows($("masks"), ["", "probability"], words);
  } catch (error) {
    say(error.message);
  }
}

// -- image queries, keys, keyboard -----------------------------------------------------------------------------

function likeFile(file) {
  if (!file) return;
  say(`reading ${file.name}…`); // (at once: until the new results come, the old ones are not this query's)
  const reader = new FileReader();
  reader.onload = () => search({ like: { name: file.name, data: reader.result } });
  reader.readAsDataURL(file);
}

function moveFocus(key) {
  const cards = [...document.querySelectorAll(".card")];
  const at = cards.indexOf(document.activeElement);
  if (at < 0) return false;
  const columns = getComputedStyle($("results")).gridTemplateColumns.split(" ").length;
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns }[key];
  const next = cards[Math.min(cards.length - 1, Math.max(0, at + step))];
  next.focus();
  return true;
}

function start() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    search({ query: $("query").value });
  });
  $("picker").addEventListener("change", () => likeFile($("picker").files[0]));
  const drop = $("drop");
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("picker").click(); });
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    likeFile(event.dataTransfer.files[0]);
  });
  $("folder").addEventListener("change", () => choose(Number($("folder").value)));
  $("refresh").addEventListener("click", refreshIndex);
  $("score-form").addEventListener("submit", scoreCaptions);
  $("explain-form").addEventListener("submit", explain);
  $("mask-form").addEventListener("submit", fillMask);
  $("close").addEventListener("click", () => $("viewer").close());
  $("copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(state.open.image));
  $("key").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("bt-key", $("key-value").value);
    $("key").hidden = true;
    loadLibrary().catch((error) => say(error.message));
  });
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (event.key === "/" && !typing && !$("viewer").open) {
      event.preventDefault();
      $("query").focus();
    } else if (event.key.startsWith("Arrow") && !typing && !$("viewer").open && moveFocus(event.key)) {
      event.preventDefault();
    }
  });
  new IntersectionObserver((seen) => {
    if (seen[0].isIntersecting && state.request && state.records.length === state.topK) {
      state.topK += PAGE;
      run();
    }
  }).observe($("more"));
  loadLibrary().catch((error) => say(error.message));
}

start();
