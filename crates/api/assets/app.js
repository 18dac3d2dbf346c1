// podflow's web UI: the service map, top talkers and bytes/cost by class, all from
// /api/v1/query, and avoidable cross-zone traffic per Service from /api/v1/cost/services. A plain ES module; cytoscape is loaded by index.html as a global (the
// vendored UMD build). What the page rendered is exposed as `window.podflow` and, once
// done, as JSON in <script id="podflow-state"> with <body data-ready="true"> (for tests).

const CLASS_COLOR = {
  INTRA_NODE: "#2e9e44",
  INTRA_ZONE: "#2e9e44",
  INTER_ZONE: "#e8890c",
  INTRA_VPC: "#e8890c",
  INTER_REGION: "#d62728",
  PUBLIC_INTERNET: "#d62728",
};
const GRAY = "#8c8c8c";
// An edge carrying several classes is coloured by its most expensive one.
const CLASS_RANK = ["UNKNOWN", "INTRA_NODE", "INTRA_ZONE", "INTRA_VPC", "INTER_ZONE", "INTER_REGION", "PUBLIC_INTERNET"];
const MAP_DIMS = ["src_kind", "src_namespace", "src_workload", "dst_kind", "dst_namespace", "dst_workload", "class"];
const TALKER_DIMS = ["src_namespace", "src_workload", "dst_namespace", "dst_workload", "class"];
const TALKERS = 50;
const MAX_ROWS = 10000;
const RANGES = [900, 3600, 21600, 86400, 604800];
// Above this many nodes: namespace clusters (linear) instead of cose (quadratic per
// iteration), straight edges, and no edge drawing while panning.
const BIG_GRAPH = 150;

const $ = (id) => document.getElementById(id);
const classColor = (c) => CLASS_COLOR[c] ?? GRAY;
const rank = (c) => CLASS_RANK.indexOf(c);
const bytesOf = (r) => r.bytes_src_to_dst + r.bytes_dst_to_src;
const byBytes = (a, b) => bytesOf(b) - bytesOf(a) || b.connections - a.connections;
const nodeId = (kind, ns, workload) => (ns ? `${ns}/${workload}` : workload || kind);

// The avoidable table's columns: how each sorts (text or number) and its first direction.
const AVOID_SORTS = {
  service: { text: (s) => `${s.namespace}/${s.name}`, first: "ascending" },
  cross_zone_cost_usd: { num: (s) => s.cross_zone_cost_usd, first: "descending" },
  avoidable_share: { num: (s) => s.avoidable_share, first: "descending" },
  projected_monthly_saving_usd: { num: (s) => s.projected_monthly_saving_usd, first: "descending" },
  prefers_close: { num: (s) => (s.prefers_close_but_crosses ? 2 : s.prefers_close ? 1 : 0), first: "descending" },
};
const AVOID_LIMIT = 200;

const state = readUrl();
let cy = null;
let generation = 0;

function readUrl() {
  const p = new URLSearchParams(location.search);
  const int = (k) => {
    const v = p.get(k);
    return v !== null && /^\d{1,12}$/.test(v) ? Number(v) : null;
  };
  const range = int("range");
  return {
    range: RANGES.includes(range) ? range : 3600,
    namespace: p.get("namespace") ?? "",
    view: p.get("view") === "raw" ? "raw" : "once",
    // An explicit window (Unix seconds) overrides the range.
    from: int("from"),
    to: int("to"),
    select: p.get("select"),
    // Leave out the probes' own traffic (podflow_probe=false on every flow query).
    hideProbes: p.get("probes") === "hide",
    // The avoidable table's order: most cross-zone cost first.
    avoidSort: AVOID_SORTS[p.get("avoid_sort")] ? p.get("avoid_sort") : "cross_zone_cost_usd",
    avoidDir: p.get("avoid_dir") === "ascending" ? "ascending" : p.get("avoid_dir") === "descending" ? "descending" : null,
  };
}

function writeUrl() {
  const p = new URLSearchParams();
  if (state.from !== null) {
    p.set("from", state.from);
    if (state.to !== null) p.set("to", state.to);
  } else if (state.range !== 3600) {
    p.set("range", state.range);
  }
  if (state.namespace) p.set("namespace", state.namespace);
  if (state.view !== "once") p.set("view", state.view);
  if (state.hideProbes) p.set("probes", "hide");
  if (state.avoidSort !== "cross_zone_cost_usd") p.set("avoid_sort", state.avoidSort);
  if (state.avoidDir) p.set("avoid_dir", state.avoidDir);
  const q = p.toString();
  history.replaceState(null, "", q ? `?${q}` : location.pathname);
}

// ---- formatting ----

function fmtBytes(b) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = b;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${Math.round(v)} B`;
  return `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}
const fmtRate = (bps) => (bps < 10 ? `${bps.toFixed(2)} B/s` : `${fmtBytes(bps)}/s`);
const fmtCost = (c) => (c === 0 ? "$0" : c < 0.01 ? `$${c.toFixed(4)}` : `$${c.toFixed(2)}`);
const fmtInt = (n) => n.toLocaleString("en-US");
const fmtPct = (x) => `${(100 * x).toFixed(x > 0 && x < 0.001 ? 3 : 1)}%`;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.dataset[k.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// ---- data ----

function timeWindow() {
  if (state.from !== null) return { from: state.from, to: state.to };
  return { from: Math.floor(Date.now() / 1000) - state.range, to: null };
}

// With --http-token-file the API wants a bearer token: asked for once (one prompt for
// the queries in flight together), kept for this tab, forgotten when it stops working.
const TOKEN_KEY = "podflow-token";
let asking = null;

function authHeaders(t) {
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function askToken() {
  asking ??= Promise.resolve().then(() => {
    const t = (window.prompt("This podflow API needs its bearer token:") ?? "").trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
  });
  await asking;
}

async function apiFetch(url) {
  const sent = sessionStorage.getItem(TOKEN_KEY);
  let r = await fetch(url, { headers: authHeaders(sent) });
  if (r.status !== 401) return r;
  // Ask only if no other query has got a new token meanwhile.
  if (sessionStorage.getItem(TOKEN_KEY) === sent) {
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken();
  }
  r = await fetch(url, { headers: authHeaders(sessionStorage.getItem(TOKEN_KEY)) });
  asking = null;
  return r;
}

async function query(win, params) {
  const p = new URLSearchParams({ view: state.view, from: win.from, ...params });
  if (win.to !== null) p.set("to", win.to);
  if (state.hideProbes) p.set("podflow_probe", "false");
  const url = `/api/v1/query?${p}`;
  const r = await apiFetch(url);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${body.error ?? ""}`);
  return body;
}

// Rows touching the selected namespace: one query per side, the rows inside it (on both
// sides) kept once. `dims` includes both namespaces so the two answers merge exactly.
async function queryTouching(win, dims, params) {
  const base = { ...params, group_by: dims.join(",") };
  if (!state.namespace) return query(win, base);
  const [a, b] = await Promise.all([
    query(win, { ...base, src_namespace: state.namespace }),
    query(win, { ...base, dst_namespace: state.namespace }),
  ]);
  const key = (r) => JSON.stringify(dims.map((d) => r.key[d]));
  const seen = new Set(a.rows.map(key));
  const rows = a.rows.concat(b.rows.filter((r) => !seen.has(key(r)))).sort(byBytes);
  return { ...a, rows };
}

// Avoidable cross-zone traffic per Service (count once; the namespace is the Service's).
async function queryServices(win) {
  const p = new URLSearchParams({ from: win.from, limit: AVOID_LIMIT });
  if (win.to !== null) p.set("to", win.to);
  if (state.namespace) p.set("namespace", state.namespace);
  const url = `/api/v1/cost/services?${p}`;
  const r = await apiFetch(url);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${body.error ?? ""}`);
  return body;
}

function buildGraph(rows, secs) {
  const nodes = new Map();
  const edges = new Map();
  const node = (kind, ns, workload) => {
    const id = nodeId(kind, ns, workload);
    let n = nodes.get(id);
    if (!n) {
      n = { id, label: workload || kind, kind, namespace: ns, sent: 0, received: 0, connections: 0, cost_usd: 0, peers: 0 };
      nodes.set(id, n);
    }
    return n;
  };
  for (const r of rows) {
    const k = r.key;
    const s = node(k.src_kind, k.src_namespace, k.src_workload);
    const d = node(k.dst_kind, k.dst_namespace, k.dst_workload);
    s.sent += r.bytes_src_to_dst;
    s.received += r.bytes_dst_to_src;
    d.sent += r.bytes_dst_to_src;
    d.received += r.bytes_src_to_dst;
    for (const n of s === d ? [s] : [s, d]) {
      n.connections += r.connections;
      n.cost_usd += r.cost_usd;
    }
    const id = `${s.id}->${d.id}`;
    let e = edges.get(id);
    if (!e) {
      e = { id, source: s.id, target: d.id, bytes_src_to_dst: 0, bytes_dst_to_src: 0, connections: 0, cost_usd: 0, classes: {} };
      edges.set(id, e);
      s.peers++;
      if (s !== d) d.peers++;
    }
    e.bytes_src_to_dst += r.bytes_src_to_dst;
    e.bytes_dst_to_src += r.bytes_dst_to_src;
    e.connections += r.connections;
    e.cost_usd += r.cost_usd;
    e.classes[k.class] = (e.classes[k.class] ?? 0) + bytesOf(r);
  }
  for (const e of edges.values()) {
    const classes = Object.keys(e.classes);
    e.class = classes.length === 1 ? classes[0] : "MIXED";
    e.color = classColor(classes.reduce((a, c) => (rank(c) > rank(a) ? c : a), "UNKNOWN"));
    e.bytes_per_second = bytesOf(e) / secs;
  }
  return { nodes: [...nodes.values()], edges: [...edges.values()] };
}

// ---- rendering ----

// The large-graph layout, linear in the number of nodes: one disc per namespace (nodes
// outside any namespace share one), the busiest workload in the middle of its disc
// (a sunflower spiral), the discs on a grid, busiest namespace first.
function clusterPositions(nodes) {
  const groups = new Map();
  for (const n of nodes) {
    const g = n.namespace || "";
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(n);
  }
  const total = (ns) => ns.reduce((a, n) => a + n.sent + n.received, 0);
  const ordered = [...groups.values()].sort((a, b) => total(b) - total(a));
  const spacing = 34;
  const radius = (k) => spacing * Math.sqrt(k) + spacing;
  const cell = 2 * Math.max(...ordered.map((g) => radius(g.length))) + spacing;
  const cols = Math.ceil(Math.sqrt(ordered.length));
  const golden = Math.PI * (3 - Math.sqrt(5));
  const positions = {};
  ordered.forEach((g, gi) => {
    const cx = (gi % cols) * cell;
    const cy = Math.floor(gi / cols) * cell;
    g.sort((a, b) => b.sent + b.received - (a.sent + a.received));
    g.forEach((n, i) => {
      const r = spacing * Math.sqrt(i);
      positions[n.id] = { x: cx + r * Math.cos(i * golden), y: cy + r * Math.sin(i * golden) };
    });
  });
  return positions;
}

function renderMap(graph) {
  const t0 = performance.now();
  const big = graph.nodes.length > BIG_GRAPH;
  const maxN = Math.max(1, ...graph.nodes.map((n) => n.sent + n.received));
  const maxE = Math.max(1, ...graph.edges.map(bytesOf));
  const scale = (b, max, lo, hi) => lo + ((hi - lo) * Math.log1p(b)) / Math.log1p(max);
  const elements = [];
  const positions = big ? clusterPositions(graph.nodes) : null;
  // In the clustered layout each namespace is a labelled box (a compound node).
  const clusterId = (ns) => `namespace:${ns}`;
  if (big) {
    for (const ns of new Set(graph.nodes.map((n) => n.namespace).filter(Boolean))) {
      elements.push({ group: "nodes", data: { id: clusterId(ns), label: ns, cluster: true } });
    }
  }
  for (const n of graph.nodes) {
    elements.push({
      group: "nodes",
      position: positions ? positions[n.id] : undefined,
      data: {
        id: n.id,
        label: n.label,
        size: big ? scale(n.sent + n.received, maxN, 8, 24) : scale(n.sent + n.received, maxN, 14, 46),
        color: n.kind === "pod" ? "#4a78c2" : "#8a63b8",
        shape: n.kind === "pod" ? "ellipse" : "round-rectangle",
        parent: big && n.namespace ? clusterId(n.namespace) : undefined,
      },
    });
  }
  for (const e of graph.edges) {
    elements.push({
      group: "edges",
      data: { id: e.id, source: e.source, target: e.target, width: scale(bytesOf(e), maxE, 1, big ? 5 : 12), color: e.color },
    });
  }
  if (cy) cy.destroy();
  cy = cytoscape({
    container: $("map"),
    elements,
    minZoom: 0.05,
    maxZoom: 4,
    textureOnViewport: big,
    hideEdgesOnViewport: big,
    style: [
      {
        selector: "node",
        style: {
          label: "data(label)",
          width: "data(size)",
          height: "data(size)",
          shape: "data(shape)",
          "background-color": "data(color)",
          "font-size": 11,
          color: "#1d232a",
          "text-valign": "bottom",
          "text-margin-y": 3,
          "min-zoomed-font-size": 7,
        },
      },
      {
        selector: "edge",
        style: {
          width: "data(width)",
          "line-color": "data(color)",
          "target-arrow-color": "data(color)",
          "target-arrow-shape": big ? "none" : "triangle",
          "curve-style": big ? "haystack" : "bezier",
          "arrow-scale": 0.8,
          opacity: big ? 0.45 : 0.75,
        },
      },
      { selector: ".faded", style: { opacity: 0.15, "text-opacity": 0.3 } },
      {
        selector: "node[?cluster]",
        style: {
          shape: "round-rectangle",
          "background-color": "#eef1f5",
          "background-opacity": 0.6,
          "border-width": 1,
          "border-color": "#c5ccd4",
          "text-valign": "top",
          "text-halign": "center",
          // The clustered view starts zoomed far out.
          "font-size": 44,
          "font-weight": 600,
          color: "#66707a",
          "min-zoomed-font-size": 0,
          padding: 8,
        },
      },
      { selector: "node:selected", style: { "border-width": 3, "border-color": "#1d232a" } },
      { selector: "edge:selected", style: { opacity: 1, "overlay-color": "#1d232a", "overlay-opacity": 0.2, "overlay-padding": 3 } },
    ],
    layout: big
      ? { name: "preset", fit: true, padding: 16 }
      : { name: "cose", animate: false, numIter: 600, randomize: true, idealEdgeLength: () => 90, nodeRepulsion: () => 9000, padding: 24 },
  });
  cy.on("tap", "node[!cluster]", (ev) => select(ev.target.id()));
  cy.on("tap", "edge", (ev) => select(ev.target.id()));
  cy.on("tap", (ev) => {
    if (ev.target === cy) {
      cy.elements().removeClass("faded");
      clearDetails();
    }
  });
  return { ms: performance.now() - t0, layout: big ? "namespace-clusters" : "cose" };
}

function clearDetails() {
  const d = $("details");
  delete d.dataset.selected;
  d.replaceChildren(el("p", { class: "hint" }, "Click a workload or an edge for details."));
}

function showDetails(id, title, fields) {
  const d = $("details");
  d.dataset.selected = id;
  const dl = el("dl");
  for (const [name, label, text, value] of fields) {
    dl.append(el("dt", {}, label), el("dd", { "data-field": name, "data-value": String(value) }, text));
  }
  d.replaceChildren(el("h3", {}, title), dl);
}

function showNode(id) {
  const n = window.podflow.nodes.find((x) => x.id === id);
  if (!n) return;
  showDetails(id, n.id, [
    ["kind", "Kind", n.kind, n.kind],
    ["namespace", "Namespace", n.namespace || "—", n.namespace],
    ["sent", "Sent", fmtBytes(n.sent), n.sent],
    ["received", "Received", fmtBytes(n.received), n.received],
    ["connections", "Connections", fmtInt(n.connections), n.connections],
    ["cost_usd", "Cost", fmtCost(n.cost_usd), n.cost_usd],
    ["peers", "Peers", fmtInt(n.peers), n.peers],
  ]);
}

function showEdge(id) {
  const e = window.podflow.edges.find((x) => x.id === id);
  if (!e) return;
  const fields = [
    ["source", "From", e.source, e.source],
    ["target", "To", e.target, e.target],
    ["class", "Class", e.class, e.class],
  ];
  if (e.class === "MIXED") {
    for (const [c, b] of Object.entries(e.classes)) fields.push([`class_${c}`, `  ${c}`, fmtBytes(b), b]);
  }
  fields.push(
    ["bytes_src_to_dst", "Bytes src→dst", fmtBytes(e.bytes_src_to_dst), e.bytes_src_to_dst],
    ["bytes_dst_to_src", "Bytes dst→src", fmtBytes(e.bytes_dst_to_src), e.bytes_dst_to_src],
    ["bytes_per_second", "Rate", fmtRate(e.bytes_per_second), e.bytes_per_second],
    ["connections", "Connections", fmtInt(e.connections), e.connections],
    ["cost_usd", "Cost", fmtCost(e.cost_usd), e.cost_usd],
  );
  showDetails(id, `${e.source} → ${e.target}`, fields);
  showEdgeHealth(e);
}

function select(id) {
  if (!cy || !id) return;
  const x = cy.getElementById(id);
  if (x.empty()) return;
  cy.elements().unselect();
  x.select();
  // Fade everything but the selection and its neighbours: readable with 500 workloads.
  const keep = x.isNode() ? x.closedNeighborhood() : x.union(x.connectedNodes());
  const boxes = cy.nodes("[?cluster]");
  cy.elements().removeClass("faded");
  cy.elements().difference(keep).difference(boxes).addClass("faded");
  if (x.isNode()) showNode(id);
  else showEdge(id);
}

function renderTalkers(rows) {
  const body = $("talkers").tBodies[0];
  if (rows.length === 0) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "7", class: "hint" }, "No flows in this range.")));
    return;
  }
  body.replaceChildren(
    ...rows.map((r) => {
      const k = r.key;
      const src = nodeId("", k.src_namespace, k.src_workload);
      const dst = nodeId("", k.dst_namespace, k.dst_workload);
      const num = (name, v, text) => el("td", { class: "num", "data-field": name, "data-value": String(v) }, text);
      const tr = el(
        "tr",
        { "data-src": src, "data-dst": dst, "data-class": k.class },
        el("td", {}, src),
        el("td", {}, dst),
        el("td", {}, el("span", { class: "dot", style: `background:${classColor(k.class)}` }), k.class),
        num("bytes_src_to_dst", r.bytes_src_to_dst, fmtBytes(r.bytes_src_to_dst)),
        num("bytes_dst_to_src", r.bytes_dst_to_src, fmtBytes(r.bytes_dst_to_src)),
        num("connections", r.connections, fmtInt(r.connections)),
        num("cost_usd", r.cost_usd, fmtCost(r.cost_usd)),
      );
      tr.addEventListener("click", () => select(`${src}->${dst}`));
      return tr;
    }),
  );
}

// The avoidable table in the chosen order: Services with a ClusterIP, then headless
// ones (PreferClose cannot help them), each group sorted on its own.
function sortServices(list) {
  const col = AVOID_SORTS[state.avoidSort];
  const dir = state.avoidDir ?? col.first;
  const sign = dir === "ascending" ? 1 : -1;
  const name = (s) => `${s.namespace}/${s.name}`;
  const cmp = col.text ? (a, b) => col.text(a).localeCompare(col.text(b)) : (a, b) => col.num(a) - col.num(b);
  return [...list].sort((a, b) => sign * cmp(a, b) || name(a).localeCompare(name(b)));
}

function renderAvoidable(data) {
  const table = $("avoidable");
  const dir = state.avoidDir ?? AVOID_SORTS[state.avoidSort].first;
  for (const th of table.tHead.querySelectorAll("th[data-sort]")) {
    if (th.dataset.sort === state.avoidSort) th.setAttribute("aria-sort", dir);
    else th.removeAttribute("aria-sort");
  }
  const body = table.tBodies[0];
  const groups = [
    ["services", "Services", sortServices(data.services)],
    ["headless", "Headless Services (clients dial the pods; PreferClose does not apply)", sortServices(data.headless)],
  ];
  const rows = [];
  const order = {};
  for (const [id, title, list] of groups) {
    order[id] = list.map((s) => `${s.namespace}/${s.name}`);
    if (list.length === 0) continue;
    rows.push(el("tr", { class: "group", "data-group": id }, el("th", { colspan: "5" }, title)));
    for (const s of list) {
      const num = (name, v, text) => el("td", { class: "num", "data-field": name, "data-value": String(v) }, text);
      const close = s.prefers_close_but_crosses ? "yes, still crosses" : s.prefers_close ? "yes" : "no";
      rows.push(
        el(
          "tr",
          { "data-service": `${s.namespace}/${s.name}`, "data-headless": String(s.headless), "data-group": id },
          el("td", {}, `${s.namespace}/${s.name}`),
          num("cross_zone_cost_usd", s.cross_zone_cost_usd, fmtCost(s.cross_zone_cost_usd)),
          num("avoidable_share", s.avoidable_share, fmtPct(s.avoidable_share)),
          num("projected_monthly_saving_usd", s.projected_monthly_saving_usd, fmtCost(s.projected_monthly_saving_usd)),
          el(
            "td",
            {
              "data-field": "prefers_close",
              "data-value": String(s.prefers_close),
              "data-crosses": String(s.prefers_close_but_crosses),
              class: s.prefers_close_but_crosses ? "warn" : "",
              title: s.prefers_close_but_crosses ? "asks for close backends and still crossed zones with a Ready backend in the client's zone" : "",
            },
            close,
          ),
        ),
      );
    }
  }
  if (rows.length === 0) {
    rows.push(el("tr", { class: "empty" }, el("td", { colspan: "5", class: "hint" }, "No traffic through Services in this range.")));
  }
  body.replaceChildren(...rows);
  return { sort: state.avoidSort, dir, order };
}

function summarize(classRows, cloudRows) {
  const by = {};
  let total = { bytes: 0, cost_usd: 0 };
  for (const r of classRows) {
    const c = r.key.class;
    by[c] ??= { bytes: 0, cost_usd: 0 };
    by[c].bytes += bytesOf(r);
    by[c].cost_usd += r.cost_usd;
    total = { bytes: total.bytes + bytesOf(r), cost_usd: total.cost_usd + r.cost_usd };
  }
  const sum = (...cs) =>
    cs.reduce((a, c) => ({ bytes: a.bytes + (by[c]?.bytes ?? 0), cost_usd: a.cost_usd + (by[c]?.cost_usd ?? 0) }), { bytes: 0, cost_usd: 0 });
  const services = {};
  for (const r of cloudRows) {
    const name = r.key.dst_name || "other";
    services[name] ??= { bytes: 0, cost_usd: 0 };
    services[name].bytes += bytesOf(r);
    services[name].cost_usd += r.cost_usd;
  }
  const cloud = Object.values(services).reduce((a, s) => ({ bytes: a.bytes + s.bytes, cost_usd: a.cost_usd + s.cost_usd }), { bytes: 0, cost_usd: 0 });
  return {
    by_class: by,
    tiles: [
      { id: "total", title: "All traffic", color: "", ...total },
      { id: "same-zone", title: "Same node / zone", color: "green", ...sum("INTRA_NODE", "INTRA_ZONE") },
      { id: "cross-zone", title: "Cross zone", color: "orange", ...sum("INTER_ZONE") },
      { id: "inter-region", title: "Inter region", color: "red", ...sum("INTER_REGION") },
      { id: "internet", title: "Internet", color: "red", ...sum("PUBLIC_INTERNET") },
      {
        id: "cloud-services",
        title: "Cloud services",
        color: "orange",
        ...cloud,
        sub: Object.entries(services)
          .sort((a, b) => b[1].bytes - a[1].bytes)
          .slice(0, 3)
          .map(([n, s]) => `${n} ${fmtBytes(s.bytes)}`)
          .join(", "),
      },
      { id: "vpc", title: "Private / VPC", color: "orange", ...sum("INTRA_VPC"), sub: "includes cloud services in the region" },
      { id: "unknown", title: "Unknown", color: "", ...sum("UNKNOWN") },
    ],
    cloud_services: services,
  };
}

function renderSummary(summary) {
  $("summary").replaceChildren(
    ...summary.tiles.map((t) =>
      el(
        "div",
        { id: `tile-${t.id}`, class: `tile ${t.color}`, "data-bytes": String(t.bytes), "data-cost": String(t.cost_usd) },
        el("h3", {}, t.title),
        el("div", { class: "bytes" }, fmtBytes(t.bytes)),
        el("div", { class: "cost" }, fmtCost(t.cost_usd)),
        ...(t.sub ? [el("div", { class: "sub" }, t.sub)] : []),
      ),
    ),
  );
}

function renderNamespaces(rows) {
  const names = new Set();
  for (const r of rows) {
    if (r.key.src_namespace) names.add(r.key.src_namespace);
    if (r.key.dst_namespace) names.add(r.key.dst_namespace);
  }
  if (state.namespace) names.add(state.namespace);
  const sorted = [...names].sort();
  $("namespace").replaceChildren(el("option", { value: "" }, "all"), ...sorted.map((n) => el("option", { value: n }, n)));
  $("namespace").value = state.namespace;
  return sorted;
}

// ---- zone × zone matrix (issue 16): /api/v1/pairs?level=zone; a cell's node pairs ----

async function fetchPairs(win, params) {
  const p = new URLSearchParams({ from: win.from, ...params });
  if (win.to !== null) p.set("to", win.to);
  const url = `/api/v1/pairs?${p}`;
  const r = await apiFetch(url);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${body.error ?? ""}`);
  return body;
}

// Zone pairs with both zones known (traffic with one end outside the cluster is in the
// tiles above), or why there are none.
async function loadZones(win) {
  try {
    const body = await fetchPairs(win, { level: "zone" });
    return { pairs: body.pairs.filter((p) => p.src && p.dst), from: body.from, to: body.to, error: null };
  } catch (err) {
    return { pairs: [], error: String(err.message ?? err) };
  }
}

const fmtLoss = (l) => (l === null || l === undefined ? "—" : `${(l * 100).toFixed(l > 0 && l < 0.01 ? 2 : 1)}%`);
const fmtRtt = (s) => (s === null || s === undefined ? "—" : s < 0.001 ? `${(s * 1e6).toFixed(0)} µs` : `${(s * 1e3).toFixed(2)} ms`);
const pairBytes = (p) => p.bytes_src_to_dst + p.bytes_dst_to_src;

// What a pair shows, as data attributes (tests read these) and text.
function pairAttrs(p) {
  return {
    "data-src": p.src,
    "data-dst": p.dst,
    "data-bytes": String(pairBytes(p)),
    "data-cost": String(p.cost_usd),
    "data-loss": p.loss === null ? "" : String(p.loss),
    "data-rtt-p50": p.rtt_p50_seconds === null ? "" : String(p.rtt_p50_seconds),
    "data-rtt-p99": p.rtt_p99_seconds === null ? "" : String(p.rtt_p99_seconds),
    "data-failures": String(p.failures),
  };
}

function healthClass(p) {
  if (p.loss === null) return "";
  return p.loss >= 0.05 ? "sick" : p.loss > 0 ? "lossy" : "";
}

function renderZoneMatrix(z) {
  const table = $("zone-matrix");
  if (z.error || z.pairs.length === 0) {
    const text = z.error ?? "No traffic or probes between zones in this range.";
    table.replaceChildren(el("tbody", {}, el("tr", { class: "empty" }, el("td", { class: z.error ? "hint error" : "hint" }, text))));
    $("zone-pairs").replaceChildren();
    return;
  }
  const srcs = [...new Set(z.pairs.map((p) => p.src))].sort();
  const dsts = [...new Set(z.pairs.map((p) => p.dst))].sort();
  const at = new Map(z.pairs.map((p) => [`${p.src}\u0000${p.dst}`, p]));
  const head = el("thead", {}, el("tr", {}, el("th", {}, "from \\ to"), ...dsts.map((d) => el("th", { class: "num" }, d))));
  const rows = srcs.map((s) =>
    el(
      "tr",
      {},
      el("th", {}, s),
      ...dsts.map((d) => {
        const p = at.get(`${s}\u0000${d}`);
        if (!p) return el("td", { class: "hint" }, "—");
        const health = p.probes > 0 ? `loss ${fmtLoss(p.loss)} · p50 ${fmtRtt(p.rtt_p50_seconds)}` : "no probes";
        const td = el(
          "td",
          { class: `cell ${healthClass(p)}`, ...pairAttrs(p), title: `p99 ${fmtRtt(p.rtt_p99_seconds)}, ${fmtInt(p.failures)} failed probes` },
          el("div", { class: "bytes" }, fmtBytes(pairBytes(p))),
          el("div", { class: "cost" }, fmtCost(p.cost_usd)),
          el("div", { class: "health" }, health),
        );
        td.addEventListener("click", () => showZonePair(s, d));
        return td;
      }),
    ),
  );
  table.replaceChildren(head, el("tbody", {}, ...rows));
}

// The node pairs of one zone pair, fetched on click.
async function showZonePair(src, dst) {
  const box = $("zone-pairs");
  delete box.dataset.ready;
  for (const c of $("zone-matrix").querySelectorAll("td.cell")) {
    c.classList.toggle("selected", c.dataset.src === src && c.dataset.dst === dst);
  }
  try {
    const body = await fetchPairs(timeWindow(), { level: "node", src_zone: src, dst_zone: dst });
    const num = (name, v, text) => el("td", { class: "num", "data-field": name, "data-value": String(v ?? "") }, text);
    const rows = body.pairs.map((p) =>
      el(
        "tr",
        { ...pairAttrs(p), class: healthClass(p) },
        el("td", {}, p.src),
        el("td", {}, p.dst),
        num("bytes", pairBytes(p), fmtBytes(pairBytes(p))),
        num("cost_usd", p.cost_usd, fmtCost(p.cost_usd)),
        num("loss", p.loss, fmtLoss(p.loss)),
        num("rtt_p50", p.rtt_p50_seconds, fmtRtt(p.rtt_p50_seconds)),
        num("rtt_p99", p.rtt_p99_seconds, fmtRtt(p.rtt_p99_seconds)),
        num("failures", p.failures, fmtInt(p.failures)),
      ),
    );
    const table = el(
      "table",
      { id: "node-pairs", "data-src-zone": src, "data-dst-zone": dst },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...["From node", "To node"].map((h) => el("th", {}, h)),
          ...["Bytes", "Cost", "Loss", "RTT p50", "RTT p99", "Failed probes"].map((h) => el("th", { class: "num" }, h)),
        ),
      ),
      el("tbody", {}, ...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: "8", class: "hint" }, "No node pairs."))])),
    );
    box.replaceChildren(el("h3", {}, `${src} → ${dst}: node pairs`), table);
    if (window.podflow) window.podflow.node_pairs = { src_zone: src, dst_zone: dst, pairs: body.pairs };
  } catch (err) {
    box.replaceChildren(el("p", { class: "hint error" }, String(err.message ?? err)));
  }
  box.dataset.ready = "true";
}

// ---- bytes over time by class (issue 16): /api/v1/query?group_by=time_*,class ----

// The bucket dimension for a window: about 15 to 170 bars.
function timeStep(from, to) {
  const span = to - from;
  if (span <= 3600) return ["time_1m", 60];
  if (span <= 86400) return ["time_10m", 600];
  return ["time_1h", 3600];
}

async function loadSeries(win) {
  const to = win.to ?? Math.floor(Date.now() / 1000);
  const [dim, step] = timeStep(win.from, to);
  const body = await queryTouching(win, state.namespace ? [dim, "src_namespace", "dst_namespace", "class"] : [dim, "class"], { limit: MAX_ROWS });
  const buckets = new Map();
  for (const r of body.rows) {
    const t = Number(r.key[dim]);
    const b = buckets.get(t) ?? { t, total: 0, by_class: {} };
    b.by_class[r.key.class] = (b.by_class[r.key.class] ?? 0) + bytesOf(r);
    b.total += bytesOf(r);
    buckets.set(t, b);
  }
  const first = Math.floor(body.from / step) * step;
  return { dim, step, from: first, to: body.to, buckets: [...buckets.values()].sort((a, b) => a.t - b.t) };
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function renderSeries(series) {
  const box = $("series");
  if (series.buckets.length === 0) {
    box.replaceChildren(el("p", { class: "hint" }, "No flows in this range."));
    return;
  }
  const n = Math.max(1, Math.ceil((series.to - series.from) / series.step));
  const [W, H] = [1000, 140];
  const barW = W / n;
  const max = Math.max(...series.buckets.map((b) => b.total));
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": "bytes over time by class" });
  const seen = new Set();
  for (const b of series.buckets) {
    const x = ((b.t - series.from) / series.step) * barW;
    let y = H;
    for (const c of CLASS_RANK.concat(Object.keys(b.by_class).filter((k) => !CLASS_RANK.includes(k)))) {
      const v = b.by_class[c];
      if (!v) continue;
      seen.add(c);
      const h = (v / max) * (H - 4);
      y -= h;
      const r = svg("rect", { x: x.toFixed(2), y: y.toFixed(2), width: Math.max(1, barW - 1).toFixed(2), height: h.toFixed(2), fill: classColor(c), "data-t": String(b.t), "data-class": c, "data-bytes": String(v) });
      const tip = svg("title", {});
      tip.textContent = `${new Date(b.t * 1000).toLocaleString()} · ${c}: ${fmtBytes(v)}`;
      r.append(tip);
      chart.append(r);
    }
  }
  const keys = el("div", { class: "keys" }, ...[...seen].map((c) => el("span", {}, el("i", { style: `background:${classColor(c)}` }), c)));
  const axis = el(
    "div",
    { class: "axis" },
    el("span", {}, new Date(series.from * 1000).toLocaleTimeString()),
    el("span", {}, `peak ${fmtBytes(max)} per ${series.step >= 3600 ? `${series.step / 3600} h` : `${series.step / 60} min`}`),
    el("span", {}, new Date(series.to * 1000).toLocaleTimeString()),
  );
  box.replaceChildren(chart, axis, keys);
}

// ---- probe health in the map's edge details (issue 16) ----

// The node pairs' health of this refresh's window, fetched once when an edge is clicked.
let nodePairsCache = null;

function nodePairHealth(win) {
  nodePairsCache ??= fetchPairs(win, { level: "node" }).then((b) => new Map(b.pairs.map((p) => [`${p.src}\u0000${p.dst}`, p])));
  return nodePairsCache;
}

// The node pairs (else zone pairs) an edge's traffic crossed that have probe data: the
// edge's flows grouped by node and zone, looked up in /api/v1/pairs.
async function showEdgeHealth(e) {
  const box = el("div", { id: "edge-health" }, el("h4", {}, "Probe health"), el("p", { class: "hint" }, "Loading…"));
  $("details").append(box);
  const end = (id) => window.podflow.nodes.find((n) => n.id === id);
  const [s, d] = [end(e.source), end(e.target)];
  try {
    const win = timeWindow();
    const params = { group_by: "src_node,dst_node,src_zone,dst_zone", limit: 100 };
    if (s) Object.assign(params, { src_kind: s.kind, src_namespace: s.namespace ?? "", src_workload: s.label });
    if (d) Object.assign(params, { dst_kind: d.kind, dst_namespace: d.namespace ?? "", dst_workload: d.label });
    const [q, nodes] = await Promise.all([query(win, params), nodePairHealth(win)]);
    if ($("details").dataset.selected !== e.id) return;
    const zones = new Map((window.podflow.zones?.pairs ?? []).map((p) => [`${p.src}\u0000${p.dst}`, p]));
    const found = (rows, key, from) => {
      const out = new Map();
      for (const r of rows) {
        const [a, b] = key(r.key);
        const p = a && b ? from.get(`${a}\u0000${b}`) : undefined;
        if (p && p.probes > 0) out.set(`${a}\u0000${b}`, p);
      }
      return [...out.values()];
    };
    let level = "node";
    let pairs = found(q.rows, (k) => [k.src_node, k.dst_node], nodes);
    if (pairs.length === 0) {
      level = "zone";
      pairs = found(q.rows, (k) => [k.src_zone, k.dst_zone], zones);
    }
    if (pairs.length === 0) {
      box.replaceChildren(el("h4", {}, "Probe health"), el("p", { class: "hint" }, "No probe data for this edge's nodes or zones."));
    } else {
      const dl = el("dl");
      for (const p of pairs) {
        const health = `loss ${fmtLoss(p.loss)} · p50 ${fmtRtt(p.rtt_p50_seconds)} · p99 ${fmtRtt(p.rtt_p99_seconds)} · ${fmtInt(p.failures)} failed`;
        dl.append(el("dt", {}, `${p.src} → ${p.dst}`), el("dd", { class: `probe-pair ${healthClass(p)}`, "data-level": level, ...pairAttrs(p) }, health));
      }
      box.replaceChildren(el("h4", {}, `Probe health (${level} pairs)`), dl);
    }
  } catch (err) {
    box.replaceChildren(el("h4", {}, "Probe health"), el("p", { class: "hint error" }, String(err.message ?? err)));
  }
  box.dataset.ready = "true";
}

function publish(pf) {
  // For browser tests: where an element is drawn, in viewport pixels (a node's centre, an
  // edge's midpoint). A function, so it stays out of the JSON below.
  pf.viewportPosition = (id) => {
    const x = cy?.getElementById(id);
    if (!x || x.empty()) return null;
    const p = x.isNode() ? x.renderedPosition() : x.renderedMidpoint();
    const box = $("map").getBoundingClientRect();
    return { x: Math.round(box.left + p.x), y: Math.round(box.top + p.y) };
  };
  window.podflow = pf;
  // `<` escaped so the JSON cannot close the script element.
  $("podflow-state").textContent = JSON.stringify(pf).replace(/</g, "\\u003c");
  document.body.dataset.ready = "true";
}

async function refresh() {
  const mine = ++generation;
  nodePairsCache = null;
  const status = $("status");
  status.className = "";
  status.textContent = "Loading…";
  delete document.body.dataset.ready;
  const win = timeWindow();
  try {
    const cloudParams = { group_by: "dst_kind,dst_name", dst_kind: "cloud_range", limit: MAX_ROWS };
    if (state.namespace) cloudParams.src_namespace = state.namespace;
    const [map, talkers, classes, cloud, namespaces, zones, series, services] = await Promise.all([
      queryTouching(win, MAP_DIMS, { limit: MAX_ROWS }),
      queryTouching(win, TALKER_DIMS, { limit: TALKERS }),
      state.namespace
        ? queryTouching(win, ["src_namespace", "dst_namespace", "class"], { limit: MAX_ROWS })
        : query(win, { group_by: "class", limit: MAX_ROWS }),
      query(win, cloudParams),
      query(win, { group_by: "src_namespace,dst_namespace", limit: MAX_ROWS }),
      loadZones(win),
      loadSeries(win),
      queryServices(win),
    ]);
    if (mine !== generation) return;
    const secs = Math.max(1, map.to - map.from);
    const graph = buildGraph(map.rows, secs);
    const talkerRows = talkers.rows.slice(0, TALKERS);
    const summary = summarize(classes.rows, cloud.rows);
    const avoidable = {
      from: services.from,
      to: services.to,
      range_seconds: services.range_seconds,
      truncated: services.truncated,
      services: services.services,
      headless: services.headless,
    };
    window.podflow = { nodes: graph.nodes, edges: graph.edges, talkers: talkerRows, summary, zones, series, avoidable };
    renderSummary(summary);
    renderSeries(series);
    renderZoneMatrix(zones);
    renderTalkers(talkerRows);
    avoidable.shown = renderAvoidable(avoidable);
    const nsList = renderNamespaces(namespaces.rows);
    const drawn = renderMap(graph);
    if (graph.nodes.length === 0) status.textContent = "No flows in this range.";
    else status.textContent = `${graph.nodes.length} workloads, ${graph.edges.length} edges · ${new Date(map.from * 1000).toLocaleString()} – ${new Date(map.to * 1000).toLocaleString()}`;
    // The API returns the largest pairs first: say so when the map is cut.
    if (map.rows.length >= MAX_ROWS) status.textContent += ` (the ${fmtInt(MAX_ROWS)} largest pairs only)`;
    publish({
      error: null,
      window: { from: map.from, to: map.to, view: state.view, namespace: state.namespace, hide_probes: state.hideProbes },
      namespaces: nsList,
      render_ms: drawn.ms,
      layout: drawn.layout,
      ...window.podflow,
    });
    if (state.select) select(state.select);
  } catch (err) {
    if (mine !== generation) return;
    status.className = "error";
    status.textContent = String(err.message ?? err);
    publish({ error: status.textContent, nodes: [], edges: [], talkers: [], summary: null, avoidable: null });
  }
}

function init() {
  const range = $("range");
  if (state.from !== null) {
    range.prepend(el("option", { value: "custom" }, "custom"));
    range.value = "custom";
  } else {
    range.value = String(state.range);
  }
  $("view").value = state.view;
  range.addEventListener("change", () => {
    if (range.value === "custom") return;
    state.range = Number(range.value);
    state.from = state.to = null;
    range.querySelector('option[value="custom"]')?.remove();
    state.select = null;
    writeUrl();
    refresh();
  });
  $("namespace").addEventListener("change", () => {
    state.namespace = $("namespace").value;
    state.select = null;
    writeUrl();
    refresh();
  });
  $("view").addEventListener("change", () => {
    state.view = $("view").value;
    writeUrl();
    refresh();
  });
  $("hide-probes").checked = state.hideProbes;
  $("hide-probes").addEventListener("change", () => {
    state.hideProbes = $("hide-probes").checked;
    writeUrl();
    refresh();
  });
  $("refresh").addEventListener("click", () => refresh());
  // Sorting the avoidable table re-renders what was fetched (no new query).
  for (const th of $("avoidable").tHead.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      const current = state.avoidDir ?? AVOID_SORTS[state.avoidSort].first;
      if (key === state.avoidSort) state.avoidDir = current === "ascending" ? "descending" : "ascending";
      else {
        state.avoidSort = key;
        state.avoidDir = null;
      }
      writeUrl();
      const pf = window.podflow;
      if (pf?.avoidable) {
        pf.avoidable.shown = renderAvoidable(pf.avoidable);
        publish(pf);
      }
    });
  }
  refresh();
}

init();
