// The versions page: GET /v1/models/<model>/scorecard every few seconds, drawn as a table (side by side),
// SVG line charts (over time) and a confusion matrix. Plain JS, no dependencies, nothing from outside.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 5000;
  const params = new URLSearchParams(location.search);
  const model = params.get("model") || "mnist"; // the gateway redirects /rollouts to ?model=MODEL_NAME
  const state = { card: null, timer: 0, confusionVersion: null };

  const dash = "\u2013";
  const count = (n) => String(n);
  const pct = (x) => (x === null ? dash : `${(x * 100).toFixed(1)} %`);
  const ms = (x) => (x === null ? dash : x.toFixed(1));

  function el(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    return node;
  }

  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== null) node.textContent = text;
    return node;
  }

  function role(card, version) {
    if (version === card.stable_version) return "stable";
    if (version === card.canary_version) return "canary";
    return "";
  }

  // ---- side by side -----------------------------------------------------------------------------------------
  function drawTable(card) {
    const body = $("versions-body");
    body.replaceChildren();
    card.versions.forEach((v, i) => {
      const row = el("tr", { "data-version": String(v.version) });
      const name = el("td", { "data-field": "version" });
      name.append(el("span", { class: `swatch s${i % 8}`, "aria-hidden": "true" }), `v${v.version}`);
      const r = role(card, v.version);
      if (r) name.append(el("span", { class: "role" }, r));
      row.append(name);
      const fb = v.feedback;
      const accuracy = fb.accuracy === null ? dash : `${pct(fb.accuracy)} (${pct(fb.interval[0])}${dash}${pct(fb.interval[1])})`;
      const agreement = v.agreement.with_version === null || v.agreement.rate === null
        ? dash
        : `${pct(v.agreement.rate)} of ${v.agreement.compared} vs v${v.agreement.with_version}`;
      const cells = [
        ["requests", count(v.requests)],
        ["errors", count(v.errors)],
        ["error_rate", pct(v.error_rate)],
        ["p50", ms(v.latency_ms.p50)],
        ["p99", ms(v.latency_ms.p99)],
        ["shadow", count(v.shadow)],
        ["agreement", agreement],
        ["labels", count(fb.labels)],
        ["accuracy", accuracy],
      ];
      for (const [field, text] of cells) row.append(el("td", { "data-field": field, class: "num" }, text));
      body.append(row);
    });
    if (!card.versions.length) {
      const row = el("tr");
      row.append(el("td", { colspan: "10", class: "muted" }, "No versions known yet."));
      body.append(row);
    }
  }

  // ---- over time ------------------------------------------------------------------------------------------
  const W = 560, H = 200, PAD = { left: 46, right: 10, top: 10, bottom: 24 };

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function drawChart(id, card, valueOf, { fraction = false } = {}) {
    const figure = $(id);
    figure.querySelector("svg")?.remove();
    const series = card.versions.map((v) => v.series.map(valueOf));
    const points = Math.max(1, ...card.versions.map((v) => v.series.length));
    const finite = series.flat().filter((x) => x !== null);
    const top = fraction ? 1 : niceMax(Math.max(0, ...finite));
    const x = (i) => PAD.left + (points === 1 ? 0 : (i * (W - PAD.left - PAD.right)) / (points - 1));
    const y = (value) => H - PAD.bottom - (value / top) * (H - PAD.top - PAD.bottom);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": figure.querySelector("figcaption").textContent });
    for (const frac of [0, 0.5, 1]) {
      const at = y(top * frac);
      chart.append(svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: at, y2: at }));
      const label = fraction ? `${Math.round(frac * 100)} %` : String(+(top * frac).toPrecision(3));
      chart.append(svg("text", { class: "tick", x: PAD.left - 6, y: at + 3, "text-anchor": "end" }, label));
    }
    const minutes = card.versions[0]?.series.map((p) => p.minute) || [];
    if (minutes.length) {
      const time = (iso) => iso.slice(11, 16);
      chart.append(svg("text", { class: "tick", x: PAD.left, y: H - 6 }, time(minutes[0])));
      chart.append(svg("text", { class: "tick", x: W - PAD.right, y: H - 6, "text-anchor": "end" }, time(minutes[minutes.length - 1])));
    }
    series.forEach((values, i) => {
      // A gap (null: nothing to compute in that step) breaks the line; a lone point gets a dot.
      const group = svg("g", { class: `s${i % 8}`, "data-version": String(card.versions[i].version) });
      let run = [];
      const flush = () => {
        if (run.length > 1) group.append(svg("polyline", { class: `line s${i % 8}`, points: run.join(" ") }));
        else if (run.length === 1) {
          const [cx, cy] = run[0].split(",");
          group.append(svg("circle", { class: `dot s${i % 8}`, cx, cy, r: 2.5 }));
        }
        run = [];
      };
      values.forEach((value, j) => {
        if (value === null) flush();
        else run.push(`${x(j).toFixed(1)},${y(value).toFixed(1)}`);
      });
      flush();
      group.setAttribute("data-values", JSON.stringify(values));
      chart.append(group);
    });
    figure.append(chart);
  }

  function drawLegend(card) {
    const legend = $("legend");
    legend.replaceChildren();
    card.versions.forEach((v, i) => {
      const item = el("li");
      item.append(el("span", { class: `swatch s${i % 8}`, "aria-hidden": "true" }), `v${v.version}`);
      const r = role(card, v.version);
      if (r) item.append(` (${r})`);
      legend.append(item);
    });
  }

  // ---- digits and confusion ----------------------------------------------------------------------------
  function drawConfusion(card) {
    const select = $("confusion-version");
    const versions = card.versions.map((v) => v.version);
    if (!versions.includes(state.confusionVersion)) {
      state.confusionVersion = card.canary_version ?? card.stable_version ?? versions[0] ?? null;
    }
    select.replaceChildren(...versions.map((v) => el("option", { value: String(v) }, `v${v}`)));
    if (state.confusionVersion !== null) select.value = String(state.confusionVersion);
    const v = card.versions.find((item) => item.version === state.confusionVersion);
    const bars = $("digit-bars");
    const table = $("confusion");
    bars.replaceChildren();
    table.replaceChildren();
    if (!v) return;
    const answers = v.digits.reduce((a, b) => a + b, 0);
    v.digits.forEach((n, d) => {
      const share = answers ? n / answers : 0;
      const li = el("li", { "data-digit": String(d) });
      const track = el("span", { class: "track" });
      const fill = el("span", { class: "fill" });
      fill.style.width = `${(share * 100).toFixed(1)}%`;
      track.append(fill);
      li.append(el("span", {}, String(d)), track, el("span", { class: "pct" }, count(n)));
      bars.append(li);
    });
    const head = el("tr");
    head.append(el("th", { scope: "col" }, "true \\ said"));
    for (let d = 0; d < 10; d++) head.append(el("th", { scope: "col" }, String(d)));
    table.append(head);
    const most = Math.max(1, ...v.confusion.flat());
    v.confusion.forEach((row, label) => {
      const tr = el("tr", { "data-label": String(label) });
      tr.append(el("th", { scope: "row" }, String(label)));
      row.forEach((n, d) => {
        const heat = n ? Math.min(4, 1 + Math.floor((3 * n) / most)) : 0;
        const classes = [label === d ? "diag" : "", heat ? `h${heat}` : ""].filter(Boolean).join(" ");
        tr.append(el("td", classes ? { class: classes } : {}, n ? count(n) : ""));
      });
      table.append(tr);
    });
  }

  // ---- refresh ------------------------------------------------------------------------------------------
  function draw(card) {
    state.card = card;
    $("model-name").textContent = card.model;
    $("stable-version").textContent = card.stable_version === null ? dash : `v${card.stable_version}`;
    $("canary-version").textContent = card.canary_version === null ? dash : `v${card.canary_version}`;
    drawTable(card);
    drawLegend(card);
    const rate = (part, whole) => (whole ? part / whole : null);
    drawChart("chart-requests", card, (p) => p.requests);
    drawChart("chart-errors", card, (p) => rate(p.errors, p.requests + p.errors), { fraction: true });
    drawChart("chart-p99", card, (p) => p.p99);
    drawChart("chart-accuracy", card, (p) => rate(p.correct, p.labels), { fraction: true });
    drawConfusion(card);
    const updated = $("updated");
    updated.textContent = `${card.versions.length} version(s), ${card.window.from.slice(11, 16)}${dash}${card.window.to.slice(11, 19)} UTC, refreshed every ${REFRESH_MS / 1000} s`;
    updated.dataset.to = card.window.to;
    updated.classList.remove("error");
  }

  async function refresh() {
    clearTimeout(state.timer);
    const url = `/v1/models/${encodeURIComponent(model)}/scorecard?window=${$("window").value}`;
    $("api-link").href = url;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
      draw(body);
    } catch (error) {
      $("updated").textContent = `Could not load the scorecard: ${error.message}`;
      $("updated").classList.add("error");
    }
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  $("window").addEventListener("change", refresh);
  $("confusion-version").addEventListener("change", (event) => {
    state.confusionVersion = Number(event.target.value);
    if (state.card) drawConfusion(state.card);
  });
  refresh();
})();
