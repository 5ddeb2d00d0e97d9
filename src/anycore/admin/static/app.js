// anycore dashboard: reads /api/events (server-sent events, one frame per second) and
// draws the node: services, their live and draining releases, workers, plots of the last
// minutes per release, and the events timeline. No library: the DOM and a canvas.
// Everything from the node is put in the page as text (textContent), never as HTML.
"use strict";
(() => {
  const PALETTE = ["#5aa9ff", "#f2b84b", "#b48cff", "#3fd0c9", "#ff7ab6", "#a6d85b", "#ff9f5a", "#7dd3fc"];
  const NODE_COLOUR = "#8d99a8"; // answers the node made before choosing a release (503 queue full, no route)
  const KEEP = 900; // seconds kept, as the server keeps
  const KINDS = ["deploy", "crash", "scale", "rollback", "cluster", "node", "info"];
  const PHASES = ["fetch", "env", "import", "warm", "migrate", "shift", "drain", "retire", "done"];
  const MAX_EVENTS = 400;

  const S = {
    snap: null, node: "", seq: 0, t: 0, received: 0, series: new Map(), events: [], load: new Map(),
    range: 300, filters: new Set(KINDS), colours: new Map(), cards: new Map(), eventsDirty: true, freshFrom: Infinity,
  };

  // -- small helpers -------------------------------------------------------------------
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "style") for (const [p, x] of Object.entries(v)) el.style.setProperty(p, x);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const kid of kids.flat()) {
      if (kid === undefined || kid === null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const $ = (id) => document.getElementById(id);
  const num = (v, d = 0) => (typeof v === "number" && isFinite(v) ? v : d);
  function hash(text) {
    let x = 2166136261;
    for (let i = 0; i < text.length; i++) x = Math.imul(x ^ text.charCodeAt(i), 16777619);
    return x >>> 0;
  }
  // One colour per release, the same in every list and plot; two releases of one service
  // never share a colour while both are known.
  function colour(release) {
    if (!release) return NODE_COLOUR;
    let c = S.colours.get(release);
    if (c) return c;
    const service = release.split("@")[0];
    const taken = new Set([...S.colours].filter(([r]) => r.split("@")[0] === service).map(([, c]) => c));
    const start = hash(release) % PALETTE.length;
    c = PALETTE[start];
    for (let i = 0; i < PALETTE.length; i++) {
      const candidate = PALETTE[(start + i) % PALETTE.length];
      if (!taken.has(candidate)) { c = candidate; break; }
    }
    S.colours.set(release, c);
    return c;
  }
  const chip = (release, label) => h("span", { class: "chip", style: { "--c": colour(release) } }, label || release || "node");
  const badge = (text) => h("span", { class: `badge ${String(text).replace(/[^a-z]/g, "")}` }, text);
  function clock(t) {
    const d = new Date(t * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, "0")).join(":");
  }
  function duration(s) {
    s = num(s);
    if (s < 60) return `${s.toFixed(0)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }
  function ms(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds === 0) return "0";
    const v = seconds * 1000;
    if (v < 1) return `${v.toFixed(2)} ms`;
    if (v < 10) return `${v.toFixed(1)} ms`;
    if (v < 1000) return `${v.toFixed(0)} ms`;
    return `${(v / 1000).toFixed(v < 10000 ? 2 : 1)} s`;
  }
  function rate(v) {
    v = num(v);
    if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
    return v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1);
  }

  // -- data --------------------------------------------------------------------------
  function receive(data) {
    const full = !!data.full;
    if (full) {
      S.series.clear();
      S.events = [];
      S.freshFrom = data.seq + 1;
    }
    S.snap = data.snapshot;
    S.node = data.node;
    S.t = data.t;
    S.received = Date.now();
    const cut = data.t - KEEP;
    for (const s of data.series || []) {
      const key = `${s.service}\u0000${s.release}`;
      let entry = S.series.get(key);
      if (!entry) S.series.set(key, (entry = { service: s.service, release: s.release, points: [] }));
      entry.points.push(...s.points);
      while (entry.points.length && entry.points[0][1] < cut) entry.points.shift();
    }
    if ((data.events || []).length) {
      S.events.push(...data.events);
      if (S.events.length > MAX_EVENTS) S.events.splice(0, S.events.length - MAX_EVENTS);
      S.eventsDirty = true;
    }
    if (full) S.load.clear();
    for (const l of data.load || []) {
      let load = S.load.get(l.service);
      if (!load) S.load.set(l.service, (load = []));
      load.push(...l.points); // [t, queued, inflight]
      while (load.length && load[0][0] < cut) load.shift();
    }
    S.seq = data.seq;
    S.frames = (S.frames || 0) + 1;
    render();
    document.body.dataset.frames = String(S.frames); // how many updates arrived (tests wait on it)
  }

  function connect() {
    if (!window.EventSource) return poll();
    const source = new EventSource("/api/events");
    source.addEventListener("state", (e) => receive(JSON.parse(e.data)));
    source.onerror = () => setLive("off", "reconnecting…");
  }
  async function poll() {
    for (;;) {
      try {
        const r = await fetch(`/api/state?since=${S.seq}`, { cache: "no-store" });
        if (r.ok) receive(await r.json());
      } catch (err) {
        setLive("off", "node unreachable");
      }
      await new Promise((done) => setTimeout(done, 1000));
    }
  }
  function setLive(cls, text) {
    $("conn").className = `conn ${cls}`;
    $("live-text").textContent = text;
  }
  setInterval(() => {
    if (!S.received) return;
    const age = (Date.now() - S.received) / 1000;
    if (age > 3) setLive("stale", `no update for ${age.toFixed(0)}s`);
    else setLive("on", "live");
  }, 500);

  // -- rendering ---------------------------------------------------------------------
  function render() {
    const snap = S.snap;
    if (!snap) return;
    document.title = `anycore · ${snap.node}`;
    $("node").replaceChildren(
      "node ", h("b", {}, snap.node), `  ·  gateway ${snap.gateway}  ·  ${num(snap.connections)} connection${num(snap.connections) === 1 ? "" : "s"}`,
      gatewayErrors(snap.gateway_errors));
    setLive("on", "live");
    renderCluster(snap);
    renderServices(snap);
    if (S.eventsDirty) renderEvents();
  }

  function gatewayErrors(errors) {
    const counts = typeof errors === "number" ? { errors } : errors || {};
    const total = Object.values(counts).reduce((a, n) => a + num(n), 0);
    if (!total) return "";
    return h("span", { title: Object.entries(counts).map(([k, n]) => `${k}: ${n}`).join("\n") }, `  ·  ${total} gateway errors`);
  }

  function renderCluster(snap) {
    const box = $("cluster");
    const cluster = snap.cluster;
    // A single node is a cluster of one: the strip appears with the first peer.
    if (!cluster || !Object.keys(cluster.peers || {}).length) { box.hidden = true; return; }
    box.hidden = false;
    const cards = [];
    const mine = {};
    for (const svc of snap.services || []) {
      const workers = ((svc.live || {}).workers || []);
      mine[svc.name] = { release: svc.release, slots: workers.reduce((a, w) => a + num(w.slots), 0),
        inflight: num(svc.inflight), queued: num(svc.queued), workers: workers.length };
    }
    cards.push(nodeCard(snap.node, snap.gateway, "this node", mine, true));
    for (const [id, peer] of Object.entries(cluster.peers || {}).sort()) {
      const services = peer.services || Object.fromEntries(Object.entries(peer.free || {}).map(([s, f]) => [s, { free: f }]));
      cards.push(nodeCard(id, peer.gateway, `heartbeat ${num(peer.seen_s_ago).toFixed(1)}s ago`, services, false));
    }
    const line = (k, v) => h("div", { class: "kv" }, h("span", { class: "muted" }, k), h("b", {}, String(num(v))));
    box.replaceChildren(...cards,
      h("div", { class: "nodecard" }, h("div", { class: "sub" }, "between nodes (this node)"),
        line("sent to peers", cluster.spilled), line("run for peers", cluster.accepted), line("remote in flight", cluster.remote_inflight)));
  }
  function nodeCard(id, gateway, sub, services, self) {
    const rows = [];
    for (const [name, load] of Object.entries(services).sort()) {
      const slots = num(load.slots);
      const used = load.inflight !== undefined ? num(load.inflight) : slots - num(load.free);
      const frac = slots ? Math.min(1, used / slots) : 0;
      rows.push(h("span", {}, name),
        h("span", { class: `bar ${frac >= 1 ? "full" : ""}`, style: { "--c": colour(load.release) } }, h("i", { style: { width: `${frac * 100}%` } })),
        h("span", { class: "muted" }, load.release === "" ? "stopped" : slots ? `${used}/${slots}` : `${num(load.free)} free`,
          num(load.queued) ? ` · ${load.queued} queued` : ""));
    }
    return h("div", { class: `nodecard ${self ? "self" : ""}` }, h("div", { class: "name" }, id),
      h("div", { class: "sub" }, `${sub} · ${gateway || ""}`), h("div", { class: "load" }, rows));
  }

  function renderServices(snap) {
    const box = $("services");
    const names = new Set();
    if (!(snap.services || []).length) {
      box.replaceChildren(h("p", { class: "empty" }, "no service on this node yet: anycore deploy PATH"));
      S.cards.clear();
      return;
    }
    const order = [];
    for (const svc of snap.services) {
      names.add(svc.name);
      let card = S.cards.get(svc.name);
      if (!card) S.cards.set(svc.name, (card = makeCard(svc.name)));
      fillCard(card, svc);
      order.push(card.el);
    }
    for (const name of [...S.cards.keys()]) if (!names.has(name)) S.cards.delete(name);
    if (order.length !== box.children.length || order.some((el, i) => box.children[i] !== el)) box.replaceChildren(...order);
  }

  function makeCard(name) {
    const part = (cls) => h("div", { class: cls });
    const card = { name, head: part("svc-head"), deploy: part("deploy-box"), releases: part("releases"), legend: part("legend"),
      charts: {}, workers: part("workers-box") };
    const chart = (key, title) => {
      const value = h("b");
      const canvas = h("canvas");
      card.charts[key] = { canvas, value };
      return h("div", { class: "chart" }, h("div", { class: "label" }, h("span", {}, title), value), canvas);
    };
    card.el = h("article", { class: "service", "data-service": name }, card.head, card.deploy, card.releases,
      (card.chartsBox = h("div", { class: "charts" }, chart("rps", "requests / s"), chart("lat", "latency p99 ─ p50 ┄"),
        chart("load", h("span", {}, h("span", { class: "c-inflight" }, "in flight"), " · ", h("span", { class: "c-queued" }, "queued"))))),
      card.legend, card.workers);
    return card;
  }

  function fillCard(card, svc) {
    const live = svc.live || null;
    const rates = seriesOf(svc.name);
    const last = (key) => rates.reduce((a, s) => a + num((s.points[s.points.length - 1] || [])[key]), 0);
    const liveSeries = rates.find((s) => s.release === svc.release);
    const p99 = lastValue(liveSeries, 5);
    const fig = (k, v, cls) => h("div", { class: `figure ${cls || ""}` }, h("div", { class: "v" }, v), h("div", { class: "k" }, k));
    card.head.replaceChildren(
      h("h3", {}, svc.name), badge(svc.state), h("span", { class: "routes" }, (svc.routes || []).join("  ")),
      h("div", { class: "figures" },
        fig("req/s", rate(last(2))), fig("p99", ms(p99)),
        last(3) > 0 ? fig("errors/s", rate(last(3)), "bad") : null,
        fig("in flight", String(num(svc.inflight))), fig("queued", String(num(svc.queued)), svc.queued ? "warn" : ""),
        fig("served", String(num(svc.served))),
        num(svc.rejected) ? fig("rejected", String(svc.rejected), "bad") : null,
        num(svc.websockets) ? fig("websockets", String(svc.websockets)) : null));
    card.deploy.replaceChildren(...deployPanel(svc.name));
    const releases = [];
    if (live) releases.push(releaseRow(live, "live"));
    for (const d of svc.draining || []) releases.push(releaseRow(d, "draining"));
    if (!live && !releases.length) releases.push(h("div", { class: "release" }, h("span", { class: "muted" }, "no live release")));
    for (const f of svc.failed || []) releases.push(h("div", { class: "release", style: { "--c": "var(--bad)" } }, chip(f.release), badge("failed"), h("span", { class: "warn" }, f.reason)));
    if (svc.rolled_back) releases.push(h("div", { class: "release", style: { "--c": "var(--rollback)" } }, badge("rolled back"), h("span", { class: "meta" }, svc.rolled_back)));
    card.releases.replaceChildren(...releases);
    const idle = !live && !rates.some((s) => s.points.length) && !(S.load.get(svc.name) || []).some((p) => p[1] || p[2]);
    card.chartsBox.hidden = idle;
    card.legend.hidden = idle;
    if (!idle) drawCharts(card, svc, rates);
    const legend = rates.map((s) => chip(s.release, s.release ? s.release : "node-made answers"));
    legend.push(h("span", {}, h("span", { class: "solid", style: { "border-color": "var(--bad)" } }), "5xx/s"));
    legend.push(h("span", {}, h("span", { class: "mark" }), "traffic shifted"));
    card.legend.replaceChildren(...legend);
    card.workers.replaceChildren(workersTable(svc));
  }

  function releaseRow(r, role) {
    const workers = r.workers || [];
    const ready = workers.filter((w) => w.state === "ready").length;
    const inflight = workers.reduce((a, w) => a + num(w.inflight), 0);
    const scaler = r.scaler;
    const meta = role === "live"
      ? [`${ready}/${workers.length} workers ready`, scaler ? ` · target ${scaler.desired} [${scaler.min}..${scaler.max}]` : ""]
      : [`${workers.length} worker${workers.length === 1 ? "" : "s"} finishing ${inflight} request${inflight === 1 ? "" : "s"}`];
    return h("div", { class: `release ${role}`, style: { "--c": colour(r.release) } },
      chip(r.release), badge(role === "live" ? (r.crashlooping ? "crashlooping" : r.state || "live") : "draining"),
      h("span", { class: "meta" }, ...meta, r.restarts ? ` · ${r.restarts} restarts` : ""),
      r.last_exit ? h("span", { class: "warn" }, `last exit: ${r.last_exit}`) : null,
      r.failure ? h("span", { class: "warn" }, r.failure) : null);
  }

  function workersTable(svc) {
    const rows = [];
    const groups = [[svc.live, false], ...(svc.draining || []).map((d) => [d, true])];
    for (const [release, draining] of groups) {
      for (const w of (release && release.workers) || []) {
        const slots = num(w.slots, 1);
        const frac = Math.min(1, num(w.inflight) / slots);
        rows.push(h("tr", { class: draining ? "draining" : "" },
          h("td", {}, `#${w.id}`), h("td", {}, chip(w.release)), h("td", {}, badge(draining && w.state === "ready" ? "draining" : w.state)),
          h("td", {}, h("span", { class: `bar ${frac >= 1 ? "full" : ""}`, style: { "--c": colour(w.release) } }, h("i", { style: { width: `${frac * 100}%` } })),
            `${num(w.inflight)}/${slots}`),
          h("td", { class: "num" }, String(num(w.served))), h("td", { class: "num" }, `${Math.round(num(w.cpu) * 100)}%`),
          h("td", { class: "num" }, `${num(w.rss_mib).toFixed(1)} MiB`),
          h("td", { class: "num" }, duration(w.uptime)), h("td", { class: "num muted" }, String(w.pid || "–"))));
      }
    }
    if (!rows.length) return h("p", { class: "muted" }, "no workers");
    const th = (t, cls) => h("th", { class: cls || "" }, t);
    return h("table", { class: "workers" },
      h("thead", {}, h("tr", {}, th("worker"), th("release"), th("state"), th("in flight / slots"), th("served", "num"), th("CPU", "num"), th("RSS", "num"),
        th("uptime", "num"), th("pid", "num"))),
      h("tbody", {}, rows));
  }

  // -- deploy progress, from the deploy.phase events ---------------------------------
  function deployPanel(service) {
    const phases = S.events.filter((e) => e.event === "deploy.phase" && e.service === service);
    if (!phases.length) return [];
    const id = phases[phases.length - 1].fields.deploy;
    const mine = phases.filter((e) => e.fields.deploy === id);
    const first = mine[0], lastEv = mine[mine.length - 1];
    const end = lastEv.fields.phase;
    const finished = ["done", "failed", "noop"].includes(end);
    if (finished && S.t - lastEv.t > 120) return []; // an old deploy: the timeline has it
    const release = first.fields.release || "";
    const seen = new Map();
    mine.forEach((e, i) => {
      const next = mine[i + 1];
      seen.set(e.fields.phase, { t: e.t, took: next ? next.t - e.t : (finished ? null : S.t - e.t) });
    });
    const steps = PHASES.filter((p) => p !== "env" || seen.has("env")).map((p) => {
      let cls = "";
      if (seen.has(p)) cls = (p === end && !finished) ? "now" : "done";
      else if (PHASES.indexOf(p) < PHASES.indexOf(lastReached(mine) || "fetch")) cls = "skip";
      if (end === "failed" && p === lastReached(mine)) cls = "fail";
      const info = seen.get(p);
      const took = cls === "skip" ? "skipped" : info && info.took !== null && p !== "done" ? `${info.took.toFixed(info.took < 10 ? 2 : 0)}s` : "";
      return h("div", { class: `step ${cls}`, style: { "--c": colour(release) } }, p, h("span", { class: "t" }, took || "\u00a0"));
    });
    const status = end === "done" ? `live after ${num(lastEv.fields.elapsed_s).toFixed(2)}s` : end === "failed" ? "failed" : end === "noop" ? "no change" : `${end}…`;
    return [h("div", { class: "deploy" },
      h("div", { class: "title" }, h("b", {}, "deploy"), chip(release), h("span", { class: "muted" }, status),
        lastEv.fields.error ? h("span", { class: "err" }, String(lastEv.fields.error)) : null,
        end === "failed" ? h("span", { class: "muted" }, "— the previous release keeps serving") : null),
      h("div", { class: "steps" }, steps))];
  }
  function lastReached(events) {
    const reached = events.map((e) => e.fields.phase).filter((p) => PHASES.includes(p) && p !== "done");
    return reached[reached.length - 1];
  }

  // -- plots ---------------------------------------------------------------------------
  function seriesOf(service) {
    return [...S.series.values()].filter((s) => s.service === service)
      .sort((a, b) => (a.release === "") - (b.release === "") || a.release.localeCompare(b.release));
  }

  // The plots span the chosen range, or less while the history is younger (at least a
  // minute): a node started a few seconds ago is not a sliver at the right edge.
  function span() {
    let oldest = S.t;
    for (const s of S.series.values()) if (s.points.length) oldest = Math.min(oldest, s.points[0][1]);
    for (const l of S.load.values()) if (l.length) oldest = Math.min(oldest, l[0][0]);
    return Math.min(S.range, Math.max(60, Math.ceil((S.t - oldest) / 60) * 60));
  }

  function drawCharts(card, svc, rates) {
    const range = span();
    const t1 = S.t, t0 = t1 - range;
    const marks = S.events.filter((e) => e.service === svc.name && e.t >= t0 &&
      (e.event === "service.shifted" || e.event === "release.rollback" || (e.event === "worker.exited" && e.kind === "crash")))
      .map((e) => ({ t: e.t, colour: e.event === "service.shifted" ? colour(e.fields.release) : e.event === "release.rollback" ? "#ff9f5a" : "#ff5d5d",
        label: e.event === "service.shifted" ? `→ ${String(e.fields.release || "").split("@")[1] || ""}` : e.event === "release.rollback" ? "rollback" : "crash" }));
    const visible = (s) => s.points.filter((p) => p[1] >= t0 - 2);
    const rps = rates.map((s) => ({ colour: colour(s.release), points: visible(s).map((p) => [p[1], p[2]]), width: 2 }));
    const errors = new Map();
    for (const s of rates) for (const p of visible(s)) if (p[3] > 0) errors.set(p[1], (errors.get(p[1]) || 0) + p[3]);
    const errLine = { colour: "#ff5d5d", points: [...errors].sort((a, b) => a[0] - b[0]), width: 1.5, fill: "rgba(255,93,93,.18)" };
    const total = rates.reduce((a, s) => a + num((s.points[s.points.length - 1] || [])[2]), 0);
    card.charts.rps.value.textContent = `${rate(total)} req/s`;
    plot(card.charts.rps.canvas, { t0, t1, range, lines: [...rps, errLine], marks, fmt: rate });

    const lat = [];
    for (const s of rates) {
      if (!s.release) continue;
      lat.push({ colour: colour(s.release), points: visible(s).map((p) => [p[1], p[5]]), width: 2 });
      lat.push({ colour: colour(s.release), points: visible(s).map((p) => [p[1], p[4]]), width: 1.3, dash: [4, 4] });
    }
    const live = rates.find((s) => s.release === svc.release);
    const p99 = lastValue(live, 5), p50 = lastValue(live, 4);
    card.charts.lat.value.textContent = p99 !== null ? `p99 ${ms(p99)} · p50 ${ms(p50)}` : "–";
    plot(card.charts.lat.canvas, { t0, t1, range, lines: lat, marks, fmt: ms });

    const load = (S.load.get(svc.name) || []).filter((p) => p[0] >= t0 - 2);
    card.charts.load.value.textContent = `${num(svc.inflight)} · ${num(svc.queued)}`;
    plot(card.charts.load.canvas, { t0, t1, range, marks, fmt: (v) => v.toFixed(0), integer: true, lines: [
      { colour: "#cfd8e3", points: load.map((p) => [p[0], p[2]]), width: 1.6, fill: "rgba(207,216,227,.08)" },
      { colour: "#f2b84b", points: load.map((p) => [p[0], p[1]]), width: 2, fill: "rgba(242,184,75,.15)" }] });
  }

  // The newest non-empty value of a series' column (p50/p99 are null in an idle second),
  // if it is at most a minute old.
  function lastValue(series, column) {
    if (!series) return null;
    for (let i = series.points.length - 1; i >= 0; i--) {
      const p = series.points[i];
      if (p[1] < S.t - 60) break;
      if (p[column] !== null && p[column] !== undefined) return p[column];
    }
    return null;
  }

  function niceMax(v, integer) {
    if (!(v > 0)) return integer ? 4 : 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    const m = [1, 2, 2.5, 5, 10].find((x) => x * p >= v * 1.05) * p;
    return integer ? Math.max(4, Math.ceil(m)) : m;
  }

  function plot(canvas, { t0, t1, range, lines, marks, fmt, integer }) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, hgt = canvas.clientHeight;
    if (!w || !hgt) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hgt * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    const left = 46, right = 6, top = 12, bottom = 18;
    const pw = w - left - right, ph = hgt - top - bottom;
    let max = 0;
    for (const l of lines) for (const p of l.points) if (p[0] >= t0 && p[1] !== null && p[1] > max) max = p[1];
    max = niceMax(max, integer);
    const x = (t) => left + ((t - t0) / (t1 - t0)) * pw;
    const y = (v) => top + ph - (v / max) * ph;
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#8d99a8";
    g.strokeStyle = "#2a333f";
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4, yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
      if (i % 2 === 0) g.fillText(fmt(v), left - 5, yy);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    const step = range <= 60 ? 15 : range <= 300 ? 60 : range <= 600 ? 120 : 300;
    for (let s = 0; s <= range; s += step) {
      const xx = x(t1 - s);
      g.fillText(s === 0 ? "now" : `−${s >= 60 ? `${s / 60}m` : `${s}s`}`, Math.min(Math.max(xx, left + 10), w - right - 12), top + ph + 4);
    }
    g.save();
    g.beginPath(); g.rect(left, 0, pw, hgt); g.clip();
    const rows = [-Infinity, -Infinity]; // where the last label of each row ends: labels never overlap
    for (const m of (marks || []).slice().sort((a, b) => a.t - b.t)) {
      const xx = Math.round(x(m.t)) + 0.5;
      g.strokeStyle = m.colour; g.setLineDash([2, 3]); g.lineWidth = 1.5;
      g.beginPath(); g.moveTo(xx, top); g.lineTo(xx, top + ph); g.stroke();
      g.setLineDash([]); g.fillStyle = m.colour; g.textAlign = "left";
      const width = g.measureText(m.label).width;
      const row = rows.findIndex((end) => end < xx + 3);
      if (row < 0) continue;
      g.fillText(m.label, xx + 3, row === 0 ? 0 : top + 2);
      rows[row] = xx + 3 + width + 4;
    }
    for (const l of lines) {
      const runs = [];
      let run = [];
      let prev = null;
      for (const p of l.points) {
        if (p[1] === null || (prev && p[0] - prev[0] > 2.5)) { if (run.length) runs.push(run); run = []; }
        if (p[1] !== null) run.push(p);
        prev = p;
      }
      if (run.length) runs.push(run);
      g.strokeStyle = l.colour; g.lineWidth = l.width || 2; g.setLineDash(l.dash || []); g.lineJoin = "round";
      for (const r of runs) {
        g.beginPath();
        r.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
        if (r.length === 1) g.lineTo(x(r[0][0]) + 1.5, y(r[0][1]));
        g.stroke();
        if (l.fill && r.length > 1) {
          g.lineTo(x(r[r.length - 1][0]), y(0)); g.lineTo(x(r[0][0]), y(0)); g.closePath();
          g.fillStyle = l.fill; g.fill();
        }
      }
    }
    g.restore();
    g.setLineDash([]);
  }

  // -- the events timeline -----------------------------------------------------------
  function describe(e) {
    const f = e.fields || {};
    const rel = f.release ? chip(f.release) : null;
    switch (e.event) {
      case "deploy.phase":
        if (f.phase === "done") return [["deploy of ", rel, ` live (${num(f.elapsed_s).toFixed(2)}s)`]];
        if (f.phase === "failed") return [["deploy of ", rel, " failed"], f.error, true];
        if (f.phase === "noop") return [["deploy: no change"], f.detail];
        return [["deploy ", rel, `: ${f.phase}`], f.detail];
      case "service.shifted": return [["traffic shifted to ", rel], f.previous ? `from ${f.previous} · ${num(f.workers)} workers` : `${num(f.workers)} workers`];
      case "worker.exited": return [[`worker #${f.worker} exited`, rel ? " · " : "", rel], `${f.cause || ""}${num(f.inflight) ? ` · ${f.inflight} in flight` : ""}`, e.kind === "crash"];
      case "worker.hung": return [[`worker #${f.worker} hung`, " · ", rel], fieldsText(f, ["worker", "release"]), true];
      case "worker.restarting": return [[`restarting worker #${f.replaces}`], f.delay_s ? `in ${num(f.delay_s).toFixed(2)}s` : ""];
      case "worker.ready": return [[`worker #${f.worker} ready`, " · ", rel]];
      case "worker.started": return [[`worker #${f.worker} started`, " · ", rel]];
      case "scale.up": case "scale.down":
        return [[`scale ${e.event === "scale.up" ? "up" : "down"} ${f.workers} → ${f.desired} workers`, rel ? " · " : "", rel], fieldsText(f, ["workers", "desired", "release"])];
      case "release.rollback": return [["rolled back ", rel, ` → ${f.to || "?"}`], f.reason, true];
      case "release.crashlooping": return [[rel, " is crashlooping"], fieldsText(f, ["release"]), true];
      case "release.failed": return [[rel, " failed"], f.reason, true];
      case "release.healthy": return [[rel, " healthy"]];
      case "release.retired": return [[rel, " retired"]];
      case "release.imported": return [[rel, " imported"], f.kind ? `zygote ${f.zygote_pid} (${f.kind})` : ""];
      default: return [[e.event], fieldsText(f, []), e.kind === "crash"];
    }
  }
  function fieldsText(f, skip) {
    return Object.entries(f).filter(([k]) => !skip.includes(k)).map(([k, v]) => `${k}=${v}`).join(" ");
  }

  function renderEvents() {
    S.eventsDirty = false;
    const counts = Object.fromEntries(KINDS.map((k) => [k, 0]));
    for (const e of S.events) counts[e.kind] = (counts[e.kind] || 0) + 1;
    $("filters").replaceChildren(...KINDS.filter((k) => counts[k]).map((k) =>
      h("button", { class: `k-${k} ${S.filters.has(k) ? "on" : ""}`, onclick: () => toggle(k) }, `${k} ${counts[k]}`)));
    const items = [];
    for (let i = S.events.length - 1; i >= 0 && items.length < 250; i--) {
      const e = S.events[i];
      if (!S.filters.has(e.kind)) continue;
      const [what, more, err] = describe(e);
      items.push(h("li", { class: `ev k-${e.kind} ${e.seq >= S.freshFrom ? "fresh" : ""}`, "data-event": e.event },
        h("span", { class: "when" }, clock(e.t)),
        h("span", { class: "what" }, e.service ? h("span", { class: "svc" }, e.service) : null, what),
        more ? h("span", { class: `more ${err ? "err" : ""}` }, String(more)) : null));
    }
    S.freshFrom = S.seq + 1;
    $("events").replaceChildren(...(items.length ? items : [h("li", { class: "empty" }, "no events yet")]));
  }
  function toggle(kind) {
    if (S.filters.has(kind)) S.filters.delete(kind); else S.filters.add(kind);
    renderEvents();
  }

  // -- controls ------------------------------------------------------------------------
  for (const b of document.querySelectorAll("#range button")) {
    b.addEventListener("click", () => {
      S.range = Number(b.dataset.range);
      for (const other of document.querySelectorAll("#range button")) other.classList.toggle("on", other === b);
      render();
    });
  }
  window.addEventListener("resize", () => render());
  connect();
})();
