// The vqaserve page: pick a photo (drop, paste or file), ask, and watch the answer stream in; when
// the server captures answers, rate it or type the right one. (common.js is loaded first.)
// Model output is only ever written with textContent: an answer containing HTML stays text.
"use strict";

// answerId: the id of the answer on screen (what a rating names); capture: the server keeps answers.
const state = { imageUrl: null, busy: false, answerId: null, capture: false };

function apiKey() {
  return $("api-key").value.trim();
}

function headers(json) {
  return apiHeaders(apiKey(), json);
}

function showError(message) {
  $("error").textContent = message || "";
}

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: headers(false) });
    if (!response.ok) { showError(await errorMessage(response)); return; }
    const body = await response.json();
    const chosen = select.value;
    select.replaceChildren();
    for (const model of body.data) {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = model.parent ? model.id + " (adapter)" : model.id;
      select.appendChild(option);
    }
    if (chosen) select.value = chosen;
    showError("");
  } catch (e) {
    showError("cannot reach the server: " + e.message);
  }
}

function useFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { showError("that is not an image file"); return; }
  const reader = new FileReader();
  reader.onload = () => {
    state.imageUrl = reader.result;  // a data: URI, sent as an OpenAI image_url part
    const preview = $("preview");
    preview.src = state.imageUrl;
    preview.hidden = false;
    $("drop").classList.add("has-image");
    showError("");
  };
  reader.onerror = () => showError("could not read the file");
  reader.readAsDataURL(file);
}

// The bundled demo model knows only the synthetic catalogue: the server says so in /static/page.json,
// and the page then says it to the user and offers catalogue pictures to try. A model of the user's
// own gets neither. page.json also says whether answers are captured: only then can they be rated.
async function loadPageInfo() {
  const info = await pageInfo();
  if (!info) return;  // the page works without the hints; loadModels reports an unreachable server
  state.capture = info.capture === true;
  if (!info.bundled_demo) return;
  const row = $("samples");
  row.replaceChildren();
  for (const sample of info.samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.title = sample.alt;
    const img = document.createElement("img");
    img.src = sample.url;
    img.alt = sample.alt;
    button.appendChild(img);
    button.addEventListener("click", () => useSample(sample));
    row.appendChild(button);
  }
  $("demo-note").hidden = false;
  row.hidden = info.samples.length === 0;
}

// A sample is loaded exactly like a dropped file, so what is asked is the same picture a user could send.
async function useSample(sample) {
  try {
    const response = await fetch(sample.url);
    if (!response.ok) { showError("could not load the sample picture (HTTP " + response.status + ")"); return; }
    const blob = await response.blob();
    useFile(new File([blob], sample.url.split("/").pop(), { type: blob.type || "image/png" }));
  } catch (e) {
    showError("could not load the sample picture: " + e.message);
  }
}

// Server-sent events arrive in arbitrary network pieces: keep the unfinished tail between reads.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function ask(event) {
  event.preventDefault();
  if (state.busy) return;
  const question = $("question").value.trim();
  if (!state.imageUrl) { showError("add a photo first: drop, paste or choose a file"); return; }
  if (!question) { showError("type a question"); return; }
  const answer = $("answer");
  answer.textContent = "";
  showError("");
  resetFeedback();
  $("stats").textContent = "…";
  state.busy = true;
  $("ask").disabled = true;
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  let finish = null;
  let id = null;
  let confidence = null;  // the final chunk's `confidence` and `review`, when the server sends them
  let review = false;
  let failed = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify({
        model: $("model").value || undefined,
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: "user", content: [
          { type: "image_url", image_url: { url: state.imageUrl } },
          { type: "text", text: question },
        ] }],
      }),
    });
    if (!response.ok) { showError(await errorMessage(response)); $("stats").textContent = ""; return; }
    const cache = response.headers.get("x-vqa-cache") || "?";
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) { showError(chunk.error.message); failed = true; break; }
      if (chunk.id) id = chunk.id;
      if (typeof chunk.confidence === "number") confidence = chunk.confidence;
      if (chunk.review === true) review = true;
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        if (firstToken === null) firstToken = performance.now() - started;
        answer.textContent += choice.delta.content;  // text, never HTML
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    const total = performance.now() - started;
    const parts = [
      "latency " + Math.round(total) + " ms",
      firstToken === null ? null : "first token " + Math.round(firstToken) + " ms",
      cache === "hit" ? "cached" : "not cached (" + cache + ")",
      usage ? usage.completion_tokens + " tokens" : null,
      confidence === null ? null : confidenceText(confidence),
      finish === "content_filter" ? "filtered" : null,
    ];
    $("stats").textContent = parts.filter(Boolean).join(" · ");
    $("stats").dataset.cache = cache;
    $("review-note").hidden = !review;
    // A refused answer is never captured, so there is nothing to rate.
    if (!failed && id && finish !== "content_filter") offerFeedback(id);
  } catch (e) {
    showError("request failed: " + e.message);
  } finally {
    state.busy = false;
    $("ask").disabled = false;
  }
}

function resetFeedback() {
  state.answerId = null;
  $("feedback").hidden = true;
  $("review-note").hidden = true;
  $("correction").value = "";
  $("feedback-status").textContent = "";
  for (const b of document.querySelectorAll("#feedback button")) b.disabled = false;
}

function offerFeedback(id) {
  if (!state.capture) return;
  state.answerId = id;
  $("feedback").hidden = false;
}

async function rate(rating, correction) {
  if (!state.answerId) return;
  const status = $("feedback-status");
  status.textContent = "saving…";
  const problem = await postFeedback(apiKey(), state.answerId, rating, correction);
  status.textContent = problem === null
    ? (correction ? "Thanks: the right answer is saved." : "Thanks: your rating is saved.")
    : "not saved: " + problem;
  status.dataset.saved = problem === null ? rating : "";
}

function init() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => useFile(e.target.files[0]));
  document.addEventListener("paste", (e) => {
    for (const item of e.clipboardData.items) {
      if (item.kind === "file" && item.type.startsWith("image/")) { useFile(item.getAsFile()); return; }
    }
  });
  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", () => { $("question").value = button.textContent; });
  }
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask-form").requestSubmit(); }
  });
  $("thumb-up").addEventListener("click", () => rate("up"));
  $("thumb-down").addEventListener("click", () => rate("down"));
  $("correction-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("correction").value.trim();
    if (!text) { $("feedback-status").textContent = "type the right answer first"; return; }
    rate("down", text);
  });
  $("api-key").addEventListener("change", loadModels);
  loadModels();
  loadPageInfo();
}

document.addEventListener("DOMContentLoaded", init);
