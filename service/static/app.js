// The page's behaviour: pick or drop an image, POST it to the public /classify API, show the answer.
// Plain browser JavaScript, no build step and no external URL. URLs are relative so the page also
// works behind a path prefix.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOP_K = 5;
  // Where the API key lives once given: this tab's sessionStorage (gone with the tab; never a URL,
  // never localStorage), or this variable where storage is refused.
  const KEY_STORAGE = "alexnet-serve.api-key";
  let sequence = 0;       // each upload's number: answers to a superseded upload are dropped
  let previewUrl = null;
  let modelEntry = {};    // the last GET /v1/models answer for this model
  let memoryKey = "";
  let waitingForKey = null;  // the file to classify again once a key is given

  // ---- the API key (ALEXNET_API_KEY) ----------------------------------------------------------------

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (err) {
      return memoryKey;
    }
  }

  function setApiKey(key) {
    memoryKey = key;
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (err) {
      // storage refused (a privacy setting): the variable holds it for this page
    }
  }

  // Every call to the service: the key, when there is one, goes in the Authorization header only.
  function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = apiKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    return fetch(path, {...options, headers});
  }

  // A 401: the key is missing or wrong. A wrong one is forgotten, and the page asks for one.
  function askForKey() {
    if (apiKey()) setApiKey("");
    $("key-form").hidden = false;
    $("key-input").focus();
  }

  function setState(state, message) {
    document.body.dataset.state = state;  // idle | busy | done | error (tests wait on it)
    $("status").textContent = message;
  }

  function percent(p) {
    const pct = p * 100;
    if (pct >= 10) return pct.toFixed(1) + " %";
    if (pct >= 0.01) return pct.toPrecision(3) + " %";  // 3 digits: an untrained model's 0.1 % still differ
    return pct.toExponential(1) + " %";
  }

  function size(bytes) {
    if (bytes < 1024) return `${bytes} bytes`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  }

  function ms(value) {
    return typeof value === "number" ? value.toFixed(1) + " ms" : "-";
  }

  function fillFacts(dl, facts) {
    dl.replaceChildren();
    for (const [term, value, field] of facts) {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = term;
      dd.textContent = value;
      if (field) dd.dataset.field = field;
      dl.append(dt, dd);
    }
  }

  // ---- model metadata -----------------------------------------------------------------------------

  function showModel(model) {
    const facts = [
      ["Model", `${model.name} v${model.version}`, "name"],
      ["Architecture", model.arch ?? "-", "arch"],
      ["Weights", model.weights ?? "-", "weights"],
    ];
    if (model.weights_sha256) facts.push(["Weights SHA-256", model.weights_sha256.slice(0, 16) + "...", "sha256"]);
    if (model.backend) {
      facts.push(["Backend", `${model.backend.name} on ${model.backend.device}`, "backend"]);
      facts.push(["Precision", model.backend.precision, "precision"]);
    }
    if (model.batching) {
      const b = model.batching;
      const wait = b.batches_overlap
        ? `a batch forming while another runs waits at most ${b.max_delay_ms} ms`
        : "images that arrive during a batch go in the next one";
      facts.push(["Batching", `up to ${b.max_batch_size} images; ${wait}`, "batching"]);
    }
    if (model.ready !== undefined) facts.push(["Status", model.ready ? "ready" : "not ready", "ready"]);
    fillFacts($("model"), facts);
    $("untrained-banner").hidden = !(model.untrained ?? model.weights === "untrained");
  }

  async function loadModel() {
    let entry = null;
    try {
      const response = await api("v1/models");
      if (response.status === 401) {
        fillFacts($("model"), [["Status", "the service needs an API key to describe its model (HTTP 401)", "ready"]]);
        askForKey();
        return;  // loaded again once a key is given
      }
      if (response.ok) entry = (await response.json()).models[0];
    } catch (err) {
      // shown below and tried again; the page still lets the user try /classify
    }
    if (!entry) {
      fillFacts($("model"), [["Status", "the service did not describe its model (GET /v1/models failed)", "ready"]]);
      setTimeout(loadModel, 5000);
      return;
    }
    modelEntry = entry;
    showModel(entry);
    if (!entry.ready) setTimeout(loadModel, 2000);  // loading or warming up: look again
  }

  // ---- one classification -------------------------------------------------------------------------

  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    const img = $("preview");
    img.onload = () => { img.hidden = false; $("drop-hint").hidden = true; };
    img.onerror = () => { img.hidden = true; $("drop-hint").hidden = false; };
    img.src = previewUrl;
    $("file-name").textContent = `${file.name || "(unnamed)"}, ${size(file.size)}`;
  }

  function clearResults() {
    $("error").hidden = true;
    $("error").textContent = "";
    $("predictions").hidden = true;
    $("predictions").tBodies[0].replaceChildren();
    $("timings").hidden = true;
  }

  function showError(message) {
    clearResults();
    $("error").textContent = message;
    $("error").hidden = false;
    setState("error", "Failed.");
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error) return `${body.error} (${body.kind}, HTTP ${response.status})`;
    } catch (err) {
      // not our JSON error (a proxy's page, say): fall through to the status line
    }
    return `HTTP ${response.status} ${response.statusText}`.trim();
  }

  function showResults(file, body, roundTripMs) {
    const result = body.results[0];
    const rows = result.predictions.map((p, i) => {
      const tr = document.createElement("tr");
      tr.className = "prediction";
      tr.dataset.index = p.index;
      tr.dataset.probability = p.probability;
      const rank = document.createElement("td");
      rank.className = "rank";
      rank.textContent = i + 1;
      const label = document.createElement("td");
      label.className = "label";
      label.textContent = p.label;
      label.title = `ImageNet class ${p.index}`;
      const prob = document.createElement("td");
      prob.className = "probability";
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = Math.max(0, Math.min(100, p.probability * 100)) + "%";
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = percent(p.probability);
      prob.append(bar, value);
      tr.append(rank, label, prob);
      return tr;
    });
    const table = $("predictions");
    table.tBodies[0].replaceChildren(...rows);
    table.dataset.filename = file.name;
    table.hidden = false;
    const t = result.timings_ms;
    fillFacts($("timings"), [
      ["Decode + resize", ms(t.preprocess), "preprocess"],
      ["Queue", ms(t.queue), "queue"],
      ["Inference", ms(t.inference), "inference"],
      ["Batch size", String(t.batch_size), "batch_size"],
      ["Server total", ms(body.timings_ms.total), "total"],
      ["Round trip (browser)", ms(roundTripMs), "round_trip"],
    ]);
    $("timings").hidden = false;
    // The answer names the model and backend that produced it; /v1/models adds what it alone knows.
    showModel({...modelEntry, ...body.model, backend: {...modelEntry.backend, ...body.backend}});
    setState("done", `${file.name}: done.`);
  }

  async function classify(file) {
    const mine = ++sequence;
    clearResults();
    showPreview(file);
    setState("busy", `Classifying ${file.name}...`);
    const form = new FormData();
    form.append("file", file, file.name);
    const started = performance.now();
    let response;
    try {
      response = await api(`classify?top_k=${TOP_K}`, {method: "POST", body: form});
    } catch (err) {
      if (mine === sequence) showError(`The service did not answer (${err.message}). Is it still running?`);
      return;
    }
    if (!response.ok) {
      const message = await errorMessage(response);
      if (mine !== sequence) return;
      if (response.status === 401) {
        showError(`Could not classify ${file.name}: ${message}. Enter the service's API key; the image is sent again with it.`);
        waitingForKey = file;
        askForKey();
        return;
      }
      showError(`Could not classify ${file.name}: ${message}`);
      return;
    }
    let body;
    try {
      body = await response.json();
    } catch (err) {
      if (mine === sequence) showError(`The service's answer for ${file.name} was not JSON (${err.message}).`);
      return;
    }
    if (mine === sequence) showResults(file, body, performance.now() - started);
  }

  // ---- wiring -------------------------------------------------------------------------------------

  function start() {
    const input = $("file-input");
    const zone = $("drop-zone");
    input.addEventListener("change", () => {
      if (input.files.length) classify(input.files[0]);
      input.value = "";  // choosing the same file again still classifies it
    });
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) classify(files[0]);
    });
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();  // never a form submission: the key must not reach a URL
      const key = $("key-input").value.trim();
      if (!key) return;
      setApiKey(key);
      $("key-input").value = "";
      $("key-form").hidden = true;
      loadModel();
      const file = waitingForKey;
      waitingForKey = null;
      if (file) classify(file);
    });
    // A file dropped beside the zone would make the browser navigate away from the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    loadModel();
  }

  start();
})();
