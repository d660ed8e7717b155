// The gateway's page: draw or upload a digit, show the answer, send feedback, list recent predictions.
// Plain JS, no dependencies; everything goes through the gateway's own JSON API.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  // drawing: bumped by every stroke and every clear; reading: the drawing being read (one read at a time);
  // recent: bumped by every load of the recent table, so an older load's answer is dropped.
  const state = {
    drawn: false, drawing: 0, reading: null, current: null, seq: 0, cursor: null, autoTimer: 0, recent: 0,
  };

  // ---- drawing -------------------------------------------------------------------------------------------------
  function clearPad() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    state.drawn = false;
    state.drawing++;
    $("canvas-hint").classList.remove("gone");
  }

  function point(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
  }

  // One pointer draws: the first finger, pen or mouse (its main button). A second finger (a pinch) or a right
  // click ("Save image as...") draws nothing.
  let last = null;
  let drawer = null;
  pad.addEventListener("pointerdown", (event) => {
    if (!event.isPrimary || event.button !== 0 || drawer !== null) return;
    event.preventDefault();
    drawer = event.pointerId;
    pad.setPointerCapture(event.pointerId);
    clearTimeout(state.autoTimer);
    state.drawing++;
    last = point(event);
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = pad.width / 12;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, Math.PI * 2);
    ctx.fill();
    state.drawn = true;
    $("canvas-hint").classList.add("gone");
  });
  pad.addEventListener("pointermove", (event) => {
    if (event.pointerId !== drawer) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) {
      const p = point(e);
      ctx.beginPath();
      ctx.moveTo(last[0], last[1]);
      ctx.lineTo(p[0], p[1]);
      ctx.stroke();
      last = p;
    }
  });
  const endStroke = (event) => {
    if (event.pointerId !== drawer) return;
    drawer = null;
    last = null;
    // Read the drawing shortly after the pen lifts, unless another stroke starts (a 4 or a 7 has two).
    state.autoTimer = setTimeout(predictDrawing, 700);
  };
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  function predictDrawing() {
    clearTimeout(state.autoTimer);
    if (!state.drawn) {
      setStatus("Draw a digit first.", "error");
      return;
    }
    if (state.reading === state.drawing) return; // this drawing is being read (a double click)
    const drawing = (state.reading = state.drawing);
    pad.toBlob(async (blob) => {
      if (blob) await predict(blob, "drawing.png");
      if (state.reading === drawing) state.reading = null;
    }, "image/png");
  }

  // ---- uploads -------------------------------------------------------------------------------------------------
  const drop = $("drop");
  const fileInput = $("file");
  drop.addEventListener("click", (event) => {
    if (event.target !== fileInput && event.target.tagName !== "LABEL") fileInput.click();
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (!file) return;
    event.preventDefault();
    predictFile(file);
  });
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) predictFile(fileInput.files[0]);
    fileInput.value = "";
  });
  ["dragenter", "dragover"].forEach((type) =>
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    }),
  );
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  // A file dropped anywhere on the page is read (the browser would otherwise open it in place of the page).
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) predictFile(file);
  });

  // A phone photo is megabytes and the model looks at 28x28: a big picture is scaled down here to SHRINK_TO
  // pixels on its long side (turned upright by its EXIF orientation), so a phone on a slow network sends
  // ~100 KB, not 5 MB. A picture the browser reads but the gateway does not (AVIF, or a file whose type the
  // browser does not know: no extension) is converted whatever its size. Small pictures the gateway reads,
  // and anything the browser cannot decode, are sent as they are (the server says what is wrong with those).
  const SHRINK_TO = 1000;
  const SMALL_BYTES = 300 * 1024;
  const GATEWAY_READS = ["image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff"];

  async function predictFile(file) {
    setStatus("Reading…");
    predict(await shrunk(file), file.name);
  }

  async function shrunk(file) {
    if (typeof createImageBitmap !== "function") return file;
    const readable = GATEWAY_READS.includes(file.type);
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (_) {
      return file;
    }
    const scale = Math.min(1, SHRINK_TO / Math.max(bitmap.width, bitmap.height));
    if (readable && scale === 1 && file.size <= SMALL_BYTES) {
      bitmap.close();
      return file;
    }
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    const context = canvas.getContext("2d");
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    // JPEG unless the picture has transparency, which JPEG would flatten onto black.
    const alpha = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let opaque = true;
    for (let i = 3; i < alpha.length && opaque; i += 4) opaque = alpha[i] === 255;
    const type = opaque ? "image/jpeg" : "image/png";
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, type, 0.9));
    return blob && (!readable || blob.size < file.size) ? blob : file;
  }

  // ---- the API -------------------------------------------------------------------------------------------------
  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (_) {
      // fetch says only "Failed to fetch": the network, or a file the browser cannot read (a dropped folder).
      throw new Error(
        options && options.body instanceof FormData
          ? "The picture could not be sent (no connection to the gateway, or the file cannot be read)."
          : "No connection to the gateway.",
      );
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
      const retry = response.headers.get("Retry-After");
      const saysWhen = /\b(retry|try again)\b/i.test(message);
      throw new Error(retry && !saysWhen ? `${message} (try again in ${retry} s)` : message);
    }
    return body;
  }

  function setStatus(text, kind, id = "status") {
    const el = $(id);
    el.textContent = text;
    el.className = "status" + (kind ? " " + kind : "");
  }

  // Resolves true when the answer is shown.
  async function predict(blob, filename) {
    const seq = ++state.seq;
    const form = new FormData();
    form.append("image", blob, filename);
    setStatus("Reading…");
    $("predict-btn").disabled = true;
    try {
      const answer = await api("/v1/predict?input=png", { method: "POST", body: form });
      if (seq !== state.seq) return; // a newer request was sent meanwhile
      showAnswer(answer);
      setStatus("");
      loadRecent(true);
      return true;
    } catch (error) {
      if (seq !== state.seq) return false;
      setStatus(error.message, "error");
      // The previous answer goes: its feedback buttons would label the wrong picture.
      state.current = null;
      $("result").hidden = true;
      return false;
    } finally {
      $("predict-btn").disabled = false;
    }
  }

  function showAnswer(answer) {
    state.current = answer;
    $("result").hidden = false;
    $("digit").textContent = String(answer.digit);
    const p = answer.probabilities[answer.digit];
    $("confidence").textContent = `${(p * 100).toFixed(1)}% sure`;
    $("seen").src = "data:image/png;base64," + answer.input.png_base64;
    const model = `${answer.model.name} v${answer.model.version}` + (answer.model.label ? ` (${answer.model.label})` : "");
    $("model-version").textContent = model;
    const t = answer.timings_ms;
    $("meta").textContent = `${model} · preprocessing ${t.preprocess.toFixed(1)} ms · model ${t.model.toFixed(1)} ms · total ${t.total.toFixed(1)} ms`;
    const bars = $("bars");
    bars.replaceChildren(
      ...answer.probabilities.map((value, digit) => {
        const li = document.createElement("li");
        if (digit === answer.digit) li.className = "best";
        li.setAttribute("aria-label", `${digit}: ${(value * 100).toFixed(1)} percent`);
        const label = document.createElement("span");
        label.textContent = String(digit);
        const track = document.createElement("span");
        track.className = "track";
        const fill = document.createElement("span");
        fill.className = "fill";
        track.append(fill);
        const pct = document.createElement("span");
        pct.className = "pct";
        pct.textContent = `${(value * 100).toFixed(1)}%`;
        li.append(label, track, pct);
        requestAnimationFrame(() => (fill.style.width = `${Math.max(value * 100, 0.5)}%`));
        return li;
      }),
    );
    setStatus("", null, "fb-status");
    setFeedbackEnabled(true);
  }

  // ---- feedback ------------------------------------------------------------------------------------------------
  const digitsBox = $("fb-digits");
  for (let d = 0; d <= 9; d++) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = String(d);
    button.dataset.label = String(d);
    button.setAttribute("aria-label", `The right digit is ${d}`);
    digitsBox.append(button);
  }
  digitsBox.addEventListener("click", (event) => {
    const label = event.target.dataset && event.target.dataset.label;
    if (label !== undefined) sendFeedback(Number(label));
  });
  $("fb-yes").addEventListener("click", () => state.current && sendFeedback(state.current.digit));

  function setFeedbackEnabled(on) {
    document.querySelectorAll("#feedback button").forEach((b) => (b.disabled = !on));
  }

  async function sendFeedback(label) {
    const current = state.current; // another upload may replace (or a failed one remove) it meanwhile
    if (!current) return;
    setFeedbackEnabled(false);
    try {
      await api(`/v1/predictions/${current.id}/feedback`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ label }),
      });
      loadRecent(true);
      if (state.current !== current) return; // the feedback area is the next answer's now
      setStatus(label === current.digit ? "Thanks! Recorded as correct." : `Thanks! Recorded the right digit: ${label}.`, "ok", "fb-status");
    } catch (error) {
      if (state.current !== current) return;
      setStatus(error.message, "error", "fb-status");
      setFeedbackEnabled(true);
    }
    $("fb-status").focus(); // the pressed button was disabled: keyboard users keep their place here
  }

  // ---- recent predictions ---------------------------------------------------------------------------------------
  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function row(item) {
    const tr = document.createElement("tr");
    tr.dataset.id = item.id;
    const when = item.created_at ? new Date(item.created_at).toLocaleString() : "";
    const top = Math.max(...item.probabilities);
    const file = cell(item.filename || "—", "file");
    if (item.filename) file.title = item.filename;
    const feedback = document.createElement("td");
    if (item.feedback !== null && item.feedback !== undefined) {
      const tag = document.createElement("span");
      const right = item.feedback === item.digit;
      tag.className = "tag " + (right ? "good" : "bad");
      tag.textContent = right ? "✓ correct" : `✗ was ${item.feedback}`;
      feedback.append(tag);
    } else {
      feedback.textContent = "—";
    }
    tr.append(cell(when), file, cell(String(item.digit), "digit-cell"), cell(`${(top * 100).toFixed(1)}%`),
      cell(`${item.model.name} v${item.model.version}`), feedback);
    if (state.current && item.id === state.current.id) tr.classList.add("fresh");
    return tr;
  }

  // A reload (reset) supersedes any load in flight; "Load more" waits for the load in flight (a double click
  // would add the same page twice).
  async function loadRecent(reset) {
    const more = $("more-btn");
    if (!reset && more.disabled) return;
    const load = ++state.recent;
    const params = new URLSearchParams({ limit: "10" });
    if (!reset && state.cursor) params.set("cursor", state.cursor);
    more.disabled = true;
    try {
      const page = await api(`/v1/predictions?${params}`);
      if (load !== state.recent) return;
      const body = $("recent-body");
      // A shadow copy is another version's answer to an upload listed already (the one its user got).
      const rows = page.items.filter((item) => !(item.model && item.model.routing === "shadow")).map(row);
      if (reset) body.replaceChildren(...rows);
      else body.append(...rows);
      state.cursor = page.next_cursor;
      $("more-btn").hidden = !page.next_cursor;
      $("recent-status").textContent = body.children.length ? "" : "No predictions yet: draw a digit!";
    } catch (error) {
      if (load === state.recent) {
        $("recent-status").textContent = `Recent predictions are not available: ${error.message}`;
      }
    } finally {
      if (load === state.recent) more.disabled = false;
    }
  }

  $("predict-btn").addEventListener("click", predictDrawing);
  $("clear-btn").addEventListener("click", () => {
    clearTimeout(state.autoTimer);
    clearPad();
  });
  $("refresh-btn").addEventListener("click", () => loadRecent(true));
  $("more-btn").addEventListener("click", () => loadRecent(false));

  clearPad();
  loadRecent(true);
})();
