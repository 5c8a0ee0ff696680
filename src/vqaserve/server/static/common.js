// What both pages (/ and /review) share: the API key on every call, the server's error messages,
// what the server says about itself (/static/page.json), and posting a rating.
"use strict";

const $ = (id) => document.getElementById(id);

function apiHeaders(key, json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON: fall through */ }
  return "HTTP " + response.status;
}

// null when the server cannot say (the pages work without it).
async function pageInfo() {
  try {
    const response = await fetch("/static/page.json", { cache: "no-store" });
    return response.ok ? await response.json() : null;
  } catch (e) {
    return null;
  }
}

// POST /v1/feedback: {id, rating: "up"|"down", correction?}. Resolves to null when saved, else the
// server's message (a second rating replaces the first).
async function postFeedback(key, id, rating, correction) {
  const body = { id: id, rating: rating };
  if (correction) body.correction = correction;
  try {
    const response = await fetch("/v1/feedback", {
      method: "POST", headers: apiHeaders(key, true), body: JSON.stringify(body),
    });
    return response.ok ? null : await errorMessage(response);
  } catch (e) {
    return "cannot reach the server: " + e.message;
  }
}

function confidenceText(confidence) {
  return "confidence " + confidence.toFixed(2);
}
