// The CATO dashboard: polls /v1/status/history and draws it with uPlot.
// A service with users needs a bearer token: it is asked for once and kept in this
// tab's sessionStorage only (gone when the tab closes).
"use strict";
(function () {
  const TOKEN_KEY = "cato-token";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const $ = (id) => document.getElementById(id);
  const history = { samples: [], scale_events: [], targets: {}, users: {}, interval_s: 5, capacity: 720 };
  const charts = {};
  window.catoCharts = charts; // for the browser test and the curious
  let timer = null;

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  async function fetchHistory(since) {
    const headers = {};
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const url = "/v1/status/history" + (since === undefined ? "" : "?since=" + since);
    const resp = await fetch(url, { headers, cache: "no-store" });
    if (resp.status === 401) {
      const err = new Error("unauthorized");
      err.unauthorized = true;
      throw err;
    }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    return resp.json();
  }

  function merge(doc, incremental) {
    history.interval_s = doc.interval_s;
    history.capacity = doc.capacity;
    history.targets = doc.targets;
    history.users = doc.users;
    if (incremental) {
      history.samples.push(...doc.samples);
      history.scale_events.push(...doc.scale_events);
    } else {
      history.samples = doc.samples;
      history.scale_events = doc.scale_events;
    }
    if (history.samples.length > history.capacity) {
      history.samples.splice(0, history.samples.length - history.capacity);
    }
    const first = history.samples.length ? history.samples[0].t : 0;
    history.scale_events = history.scale_events.filter((e) => e.t >= first);
  }

  function union(f) {
    const keys = new Set();
    for (const s of history.samples) for (const k of Object.keys(f(s) || {})) keys.add(k);
    return [...keys].sort();
  }

  function kindLabel(kind) {
    const target = history.targets[kind];
    return target ? `${kind} (${target.metric.toUpperCase()} ≤ ${target.target_ms} ms)` : kind;
  }

  // Each builder returns {series: [{label, ...}], data: [xs, ...ys], measured: count}.
  function slaChart(xs) {
    const kinds = union((s) => s.kinds);
    const ys = kinds.map((k) => history.samples.map((s) => {
      const row = s.kinds[k];
      return row && row.requests ? (100 * row.sla_met) / row.requests : null;
    }));
    return { series: kinds.map((k) => ({ label: kindLabel(k), unit: "%" })), ys, scale: { min: 0, max: 100 } };
  }

  function latencyChart(xs) {
    const kinds = union((s) => s.kinds);
    const series = [], ys = [];
    for (const k of kinds) {
      const metric = (history.targets[k] || { metric: "e2e" }).metric;
      for (const p of ["p50", "p95"]) {
        series.push({ label: `${k} ${metric.toUpperCase()} ${p.toUpperCase()}`, unit: "ms", group: k, dash: p === "p95" ? [] : [2, 3] });
        ys.push(history.samples.map((s) => (s.kinds[k] ? s.kinds[k][`${metric}_${p}_ms`] : null)));
      }
      if (history.targets[k]) {
        series.push({ label: `${k} target`, unit: "ms", group: k, dash: [8, 4], target: true });
        ys.push(xs.map(() => history.targets[k].target_ms));
      }
    }
    return { series, ys };
  }

  function replicasChart(xs) {
    const models = union((s) => s.replicas);
    const series = [], ys = [];
    for (const m of models) {
      for (const state of ["ready", "pending"]) {
        series.push({ label: `${m} ${state}`, group: m, dash: state === "ready" ? [] : [4, 4] });
        ys.push(history.samples.map((s) => (s.replicas[m] ? s.replicas[m][state] || 0 : 0)));
      }
    }
    return { series, ys, scale: { min: 0 }, events: true };
  }

  function loadChart(xs) {
    return {
      series: [{ label: "queued calls" }, { label: "in-flight calls" }, { label: "goodput (tasks/s)" }],
      ys: [history.samples.map((s) => s.queued), history.samples.map((s) => s.in_flight), history.samples.map((s) => s.goodput)],
      scale: { min: 0 },
    };
  }

  function topUsers(n) {
    return Object.entries(history.users).sort((a, b) => b[1].requests - a[1].requests).slice(0, n);
  }

  function usersChart(xs) {
    const top = topUsers(5).map(([u]) => u);
    return {
      series: top.map((u) => ({ label: u })),
      ys: top.map((u) => history.samples.map((s) => (s.users[u] ? s.users[u].requests : 0))),
      scale: { min: 0 },
    };
  }

  function scaleEventLines(u) {
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#f59e0b";
    ctx.lineWidth = 2 * devicePixelRatio;
    ctx.setLineDash([6, 4]);
    for (const e of history.scale_events) {
      const x = u.valToPos(e.t, "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  }

  function draw(name, built, xs) {
    const el = $("chart-" + name);
    const colorOf = {};
    let next = 0;
    const series = [{}].concat(built.series.map((s) => {
      const key = s.group || s.label;
      if (!(key in colorOf)) colorOf[key] = COLORS[next++ % COLORS.length];
      return {
        label: s.label, stroke: colorOf[key], width: s.target ? 1 : 2, dash: s.dash || [],
        spanGaps: false, points: { show: false },
        value: (u, v) => (v == null ? "-" : v.toFixed(v < 10 ? 2 : 0) + (s.unit ? " " + s.unit : "")),
      };
    }));
    const data = [xs].concat(built.ys);
    const measured = built.ys.reduce((n, y, i) => n + (built.series[i].target ? 0 : y.filter((v) => v != null).length), 0);
    el.dataset.points = String(measured);
    el.dataset.series = String(built.series.length);
    const key = series.map((s) => s.label).join("|");
    const old = charts[name];
    if (old && old._key === key) {
      old.setData(data);
      return;
    }
    if (old) old.destroy();
    const opts = {
      width: Math.max(el.clientWidth, 300), height: 240, series,
      scales: { x: { time: true }, y: built.scale ? { range: (u, min, max) => [built.scale.min ?? min, built.scale.max ?? Math.max(max, 1)] } : {} },
      axes: [{}, { size: 60 }],
      hooks: built.events ? { draw: [scaleEventLines] } : {},
    };
    const chart = new uPlot(opts, data, el);
    chart._key = key;
    charts[name] = chart;
  }

  function fmtTime(t) { return new Date(t * 1000).toLocaleTimeString(); }

  function tables() {
    const events = $("scale-events").querySelector("tbody");
    events.replaceChildren(...history.scale_events.slice(-10).reverse().map((e) => row([fmtTime(e.t), e.model, `${e.before} → ${e.after}`, e.reason])));
    const users = $("users").querySelector("tbody");
    users.replaceChildren(...topUsers(10).map(([u, v]) => row([u, v.requests, v.tokens])));
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = String(c);
      tr.appendChild(td);
    }
    return tr;
  }

  function render() {
    const xs = history.samples.map((s) => s.t);
    draw("sla", slaChart(xs), xs);
    draw("latency", latencyChart(xs), xs);
    draw("replicas", replicasChart(xs), xs);
    draw("load", loadChart(xs), xs);
    draw("users", usersChart(xs), xs);
    tables();
    const last = history.samples.length ? fmtTime(history.samples[history.samples.length - 1].t) : "no sample yet";
    $("state").textContent = `${history.samples.length} samples every ${history.interval_s} s; last ${last}`;
  }

  function askToken(message) {
    if (timer) clearTimeout(timer);
    timer = null;
    $("login").hidden = false;
    $("charts").hidden = true;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  async function refresh(full) {
    try {
      const last = history.samples.length ? history.samples[history.samples.length - 1].t : undefined;
      const doc = await fetchHistory(full ? undefined : last);
      merge(doc, !full);
      $("login").hidden = true;
      $("charts").hidden = false;
      $("signout").hidden = !token();
      render();
    } catch (err) {
      if (err.unauthorized) {
        const had = token();
        sessionStorage.removeItem(TOKEN_KEY);
        askToken(had ? "that token was refused" : "");
        return;
      }
      $("state").textContent = "cannot reach the service: " + err.message;
    }
    timer = setTimeout(() => refresh(false), Math.max(2, history.interval_s) * 1000);
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh(true);
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken("");
  });
  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(charts)) chart.setSize({ width: Math.max($("chart-" + name).clientWidth, 300), height: 240 });
  });
  refresh(true);
})();
