// Prism's upload page: plain JavaScript, no build step, no inline script (the page's
// Content-Security-Policy forbids it). Talks to the same API as any client: GET /v1/recipes,
// POST /v1/images, and shows problem+json answers as sentences.
"use strict";

const KEY_STORAGE = "prism.apiKey";
const $ = (id) => document.getElementById(id);

const els = {
  form: $("upload"), drop: $("drop"), dropTitle: $("drop-title"), file: $("file"), fileName: $("file-name"),
  recipe: $("recipe"), recipeDescription: $("recipe-description"),
  keyField: $("key-field"), key: $("api-key"), submit: $("submit"),
  progressBox: $("progress-box"), progress: $("progress"), progressLabel: $("progress-label"),
  error: $("error"), result: $("result"), summary: $("summary"), variants: $("variants"), manifest: $("manifest"),
};

let chosen = null;
let recipes = [];

function authHeaders() {
  const key = els.key.value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function formatBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
  return (n / (1024 * 1024)).toFixed(1) + " MB";
}

function sentence(text) {
  const t = String(text || "").trim();
  return t === "" || /[.!?]$/.test(t) ? t : t + ".";
}

// A problem+json answer (or anything else that went wrong) as one or two sentences.
function showError(title, detail, extra) {
  els.error.replaceChildren();
  const p = document.createElement("p");
  const strong = document.createElement("strong");
  strong.textContent = sentence(title);
  p.append(strong);
  if (detail) p.append(" " + sentence(detail));
  els.error.append(p);
  if (extra) {
    const small = document.createElement("p");
    small.className = "error-meta";
    small.textContent = extra;
    els.error.append(small);
  }
  els.error.hidden = false;
}

function clearError() {
  els.error.hidden = true;
  els.error.replaceChildren();
}

// Reads an error answer: RFC 9457 problem+json when the gateway sent one.
function problemFrom(status, contentType, text, requestId) {
  const meta = "HTTP " + status + (requestId ? " · request " + requestId : "");
  if ((contentType || "").includes("json")) {
    try {
      const problem = JSON.parse(text);
      if (problem && problem.title) return { title: problem.title, detail: problem.detail, meta };
    } catch (_) { /* not JSON after all */ }
  }
  return { title: "The gateway answered HTTP " + status, detail: "Try again; if it persists, check the gateway's log.", meta };
}

async function loadRecipes() {
  let response;
  try {
    response = await fetch("/v1/recipes", { headers: authHeaders() });
  } catch (_) {
    showError("The gateway cannot be reached", "Check that it is running, then reload this page.");
    return;
  }
  if (response.status === 401) {
    els.keyField.hidden = false;
    if (els.key.value.trim() !== "") {
      showError("The API key was refused", "Enter one of the gateway's API keys.");
    }
    els.recipeDescription.textContent = "Enter the API key to list the recipes.";
    return;
  }
  if (!response.ok) {
    const p = problemFrom(response.status, response.headers.get("Content-Type"), await response.text(), response.headers.get("X-Request-Id"));
    showError(p.title, p.detail, p.meta);
    return;
  }
  clearError();
  recipes = (await response.json()).recipes || [];
  const selected = els.recipe.value || "default";
  els.recipe.replaceChildren(...recipes.map((r) => {
    const option = document.createElement("option");
    option.value = r.name;
    option.textContent = r.name + " (" + r.variants.length + " variant" + (r.variants.length === 1 ? "" : "s") + ")";
    return option;
  }));
  els.recipe.value = recipes.some((r) => r.name === selected) ? selected : (recipes.some((r) => r.name === "default") ? "default" : (recipes[0] || {}).name);
  describeRecipe();
}

function describeRecipe() {
  const recipe = recipes.find((r) => r.name === els.recipe.value);
  els.recipeDescription.textContent = recipe ? recipe.description || recipe.variants.map((v) => v.name).join(", ") : "";
}

function choose(file) {
  chosen = file || null;
  els.fileName.textContent = chosen ? chosen.name + " · " + formatBytes(chosen.size) : "";
  els.drop.classList.toggle("has-file", !!chosen);
  els.dropTitle.textContent = chosen ? "Choose another image" : "Choose an image";
}

function setBusy(busy) {
  els.submit.disabled = busy;
  els.form.setAttribute("aria-busy", busy ? "true" : "false");
  els.progressBox.hidden = !busy;
}

function upload(event) {
  event.preventDefault();
  clearError();
  if (!chosen) {
    showError("No image chosen", "Choose an image or drop one on the box first.");
    els.file.focus();
    return;
  }
  els.result.hidden = true; // what is shown must belong to this upload
  setBusy(true);
  els.progress.value = 0;
  els.progressLabel.textContent = "Uploading… 0%";

  const body = new FormData();
  body.append("file", chosen, chosen.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/images?recipe=" + encodeURIComponent(els.recipe.value || "default"));
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    const percent = Math.round((e.loaded / e.total) * 100);
    els.progress.value = percent;
    els.progressLabel.textContent = "Uploading… " + percent + "%";
  });
  xhr.upload.addEventListener("load", () => {
    els.progress.value = 100;
    els.progress.removeAttribute("value"); // indeterminate while the variants are made
    els.progressLabel.textContent = "Making the variants…";
  });
  xhr.addEventListener("load", () => {
    setBusy(false);
    els.progress.value = 0;
    if (xhr.status === 201) {
      try {
        showManifest(JSON.parse(xhr.responseText));
      } catch (_) {
        showError("The answer could not be read", "The gateway sent a manifest that is not JSON.");
      }
      return;
    }
    if (xhr.status === 401) els.keyField.hidden = false;
    const p = problemFrom(xhr.status, xhr.getResponseHeader("Content-Type"), xhr.responseText, xhr.getResponseHeader("X-Request-Id"));
    showError(p.title, p.detail, p.meta);
  });
  xhr.addEventListener("error", () => {
    setBusy(false);
    showError("The upload did not reach the gateway", "Check your connection and that the gateway is running, then try again.");
  });
  xhr.send(body);
}

function showManifest(manifest) {
  const o = manifest.original;
  els.summary.textContent = "Image " + manifest.id + ", recipe " + manifest.recipe + ". Original: "
    + o.width + "×" + o.height + " " + o.format.toUpperCase() + ", " + formatBytes(o.bytes) + ".";
  els.variants.replaceChildren(...manifest.variants.map((v) => {
    const item = document.createElement("li");
    item.className = "variant";
    const frame = document.createElement("a");
    frame.className = "frame";
    frame.href = v.url;
    const img = document.createElement("img");
    img.src = v.url;
    img.alt = v.name + " variant, " + v.width + " by " + v.height + " pixels";
    img.width = v.width;
    img.height = v.height;
    img.dataset.name = v.name;
    img.decoding = "async";
    frame.append(img);
    const caption = document.createElement("div");
    caption.className = "caption";
    const name = document.createElement("strong");
    name.textContent = v.name;
    const facts = document.createElement("span");
    facts.textContent = v.width + "×" + v.height + " · " + v.format.toUpperCase() + " · " + formatBytes(v.bytes);
    facts.title = v.bytes.toLocaleString() + " bytes";
    caption.append(name, facts);
    item.append(frame, caption);
    return item;
  }));
  els.manifest.textContent = JSON.stringify(manifest, null, 2);
  els.result.hidden = false;
  els.result.scrollIntoView({ behavior: "smooth", block: "start" });
}

// Drag and drop onto the box; the file input covers choosing and keyboard use.
for (const type of ["dragenter", "dragover"]) {
  els.drop.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.add("dragging"); });
}
for (const type of ["dragleave", "drop"]) {
  els.drop.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.remove("dragging"); });
}
els.drop.addEventListener("drop", (e) => {
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (file) choose(file);
});
els.file.addEventListener("change", () => choose(els.file.files[0]));
els.recipe.addEventListener("change", describeRecipe);
els.form.addEventListener("submit", upload);
els.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
els.key.addEventListener("change", () => {
  const key = els.key.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
  loadRecipes();
});
loadRecipes();
