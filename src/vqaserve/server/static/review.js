// The review page: captured answers that need a look (flagged, thumbs-down, low confidence), with
// their photos, filters, paging, and a box per answer for the right one. (common.js is loaded first.)
// Every call carries the API key, kept for this tab in sessionStorage; pictures are fetched with it
// and shown as blob: URLs. Captured text is only ever written with textContent.
"use strict";

const PAGE = 20;
const KEY_STORE = "vqa-api-key";
// pictures: blob URLs to revoke on the next page; loads: the latest load's number (an older one's
// answer, arriving late, is dropped rather than shown over it)
const view = { offset: 0, total: 0, pictures: [], loads: 0 };

function apiKey() {
  return $("api-key").value.trim();
}

function showError(message) {
  $("error").textContent = message || "";
}

function query() {
  const params = new URLSearchParams({ view: $("view").value, limit: PAGE, offset: view.offset });
  for (const name of ["model", "adapter", "since", "until"]) {
    const value = $(name).value.trim();
    if (value) params.set(name, value);
  }
  if ($("view").value === "low") params.set("below", $("below").value);
  return params;
}

async function load() {
  const mine = ++view.loads;
  let response;
  try {
    response = await fetch("/v1/captures?" + query(), { headers: apiHeaders(apiKey(), false) });
  } catch (e) {
    if (mine === view.loads) showError("cannot reach the server: " + e.message);
    return;
  }
  if (mine !== view.loads) return;
  showError("");
  if (response.status === 409) { $("capture-off").hidden = false; render(null); return; }
  if (!response.ok) {
    const message = await errorMessage(response);
    showError(response.status === 401 ? message + " (type the API key above)" : message);
    render(null);
    return;
  }
  const list = await response.json();
  if (mine === view.loads) render(list);
}

function render(list) {
  for (const url of view.pictures) URL.revokeObjectURL(url);
  view.pictures = [];
  const items = $("items");
  items.replaceChildren();
  view.total = list ? list.total : 0;
  if (list) {
    if (!$("below").dataset.set) $("below").value = list.review_below;
    for (const answer of list.data) items.appendChild(card(answer, list.review_below));
  }
  const first = list && list.data.length ? view.offset + 1 : 0;
  const last = list ? view.offset + list.data.length : 0;
  $("summary").textContent = list ? (view.total ? `${first}–${last} of ${view.total}` : "nothing to review here") : "";
  $("newer").disabled = view.offset === 0;
  $("older").disabled = last >= view.total;
}

function text(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.textContent = content;
  return node;
}

function card(answer, reviewBelow) {
  const li = document.createElement("li");
  li.className = "item";
  li.dataset.id = answer.id;
  const photos = document.createElement("div");
  photos.className = "photos";
  for (const hash of answer.images) photos.appendChild(picture(answer.id, hash));
  if (!answer.images.length) photos.appendChild(text("p", "no-photo", "no photo"));
  li.appendChild(photos);

  const body = document.createElement("div");
  body.className = "item-body";
  const meta = [new Date(answer.created).toLocaleString(), answer.model + (answer.adapter ? " + " + answer.adapter : ""),
    answer.confidence === null ? "confidence unknown" : confidenceText(answer.confidence), answer.id];
  body.appendChild(text("p", "meta", meta.join(" · ")));
  const badges = document.createElement("p");
  badges.className = "badges";
  if (answer.flagged) badges.appendChild(text("span", "badge flagged", "flagged: under " + reviewBelow));
  if (answer.feedback) badges.appendChild(text("span", "badge rated-" + answer.feedback.rating,
    answer.feedback.rating === "up" ? "rated right" : "rated wrong"));
  body.appendChild(badges);
  body.appendChild(text("p", "question", answer.question));
  body.appendChild(text("p", "given", answer.answer));

  const form = document.createElement("form");
  form.className = "correction";
  const label = text("label", "", "The right answer is…");
  const input = document.createElement("input");
  input.type = "text";
  input.maxLength = 2000;
  input.className = "correction-input";
  input.value = answer.feedback && answer.feedback.correction ? answer.feedback.correction : "";
  input.id = "correction-" + answer.id;
  label.htmlFor = input.id;
  const save = text("button", "save", "Save correction");
  save.type = "submit";
  const right = text("button", "right", "Answer is right");
  right.type = "button";
  const status = text("span", "item-status", "");
  status.setAttribute("role", "status");
  form.append(label, input, save, right, status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const correction = input.value.trim();
    if (!correction) { status.textContent = "type the right answer first"; return; }
    await saveRating(li, status, "down", correction);
  });
  right.addEventListener("click", () => saveRating(li, status, "up", null));
  body.appendChild(form);
  li.appendChild(body);
  return li;
}

async function saveRating(li, status, rating, correction) {
  status.textContent = "saving…";
  const problem = await postFeedback(apiKey(), li.dataset.id, rating, correction);
  status.textContent = problem === null ? "saved" : "not saved: " + problem;
  li.dataset.saved = problem === null ? rating : "";
}

// A picture needs the API key, which an <img src> cannot send: fetch it, show it as a blob: URL.
function picture(id, hash) {
  const img = document.createElement("img");
  img.alt = "the photo the model saw";
  img.dataset.hash = hash;
  fetch(`/v1/captures/${encodeURIComponent(id)}/pictures/${hash}`, { headers: apiHeaders(apiKey(), false) })
    .then(async (response) => {
      if (!response.ok) { img.alt = "photo not kept (" + await errorMessage(response) + ")"; return; }
      const url = URL.createObjectURL(await response.blob());
      view.pictures.push(url);
      img.src = url;
    })
    .catch((e) => { img.alt = "photo not loaded: " + e.message; });
  return img;
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: apiHeaders(apiKey(), false) });
    if (!response.ok) return;  // load() reports the key problem
    const body = await response.json();
    const models = $("models");
    const adapters = $("adapters");
    models.replaceChildren();
    adapters.replaceChildren();
    for (const model of body.data) {
      const option = document.createElement("option");
      option.value = model.id;
      (model.parent ? adapters : models).appendChild(option);
    }
  } catch (e) { /* load() reports an unreachable server */ }
}

function restart() {
  view.offset = 0;
  load();
}

async function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => {
    if (apiKey() === (sessionStorage.getItem(KEY_STORE) || "")) return;  // a blur after the same key
    sessionStorage.setItem(KEY_STORE, apiKey());
    loadModels();
    restart();
  });
  $("view").addEventListener("change", () => { $("below-label").hidden = $("view").value !== "low"; });
  $("below").addEventListener("change", () => { $("below").dataset.set = "1"; });
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); restart(); });
  $("newer").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); load(); });
  $("older").addEventListener("click", () => { view.offset += PAGE; load(); });
  const info = await pageInfo();
  if (info && info.capture === false) { $("capture-off").hidden = false; return; }
  loadModels();
  load();
}

document.addEventListener("DOMContentLoaded", init);
