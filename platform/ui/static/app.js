// bitsmith web interface: draws each page from the JSON API (or, in a `bitsmith report` file, from the answers
// inlined in #bitsmith-data). No framework, no external asset. Every user string reaches the DOM as a text
// node or an attribute value set through the DOM, never as HTML.
"use strict";
(() => {
  const body = document.body;
  const app = document.getElementById("app");
  const PAGE = body.dataset.page, REF = body.dataset.ref || "";
  const REPORT = body.dataset.report === "1", WRITABLE = body.dataset.writable === "1";
  const DATA = REPORT ? JSON.parse(document.getElementById("bitsmith-data").textContent) : null;
  const SVGNS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f5fd0", "#d0452f", "#1a7f37", "#b7791f", "#7c3aed", "#0e7490", "#be185d", "#4b5563",
                  "#65a30d", "#c2410c", "#0369a1", "#9333ea"];
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
  const WRITE_HEADER = "x-bitsmith-write-token";

  // ---- DOM helpers -------------------------------------------------------------------------------------------
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  function append(el, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const kids = (...items) => items.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false);
  const h = (tag, attrs, ...kids) => { const el = document.createElement(tag); setAttrs(el, attrs); return append(el, kids); };
  const s = (tag, attrs, ...kids) => { const el = document.createElementNS(SVGNS, tag); setAttrs(el, attrs); return append(el, kids); };
  const enc = encodeURIComponent;
  const link = (href, text, attrs) => REPORT ? h("span", {class: "mono"}, text) : h("a", {href, ...attrs}, text);
  const short = (id, n = 12) => (id || "").slice(0, n);
  const runLink = (id, text) => link(`/runs/${enc(id)}`, text || short(id));
  const artLink = (digest, text) => link(`/artifacts/${enc(digest)}`, text || short(digest));
  const statusEl = (st) => h("span", {class: `status-${st}`}, st || "—");
  const fmtTime = (iso) => iso ? iso.replace("T", " ").slice(0, 19) : "—";
  function fmtNum(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return (a !== 0 && (a >= 1e6 || a < 1e-3)) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  const fmtValue = (v) => (v !== null && typeof v === "object") ? JSON.stringify(v) : (typeof v === "number" ? fmtNum(v) : String(v ?? "—"));
  function table(headers, rows, attrs) {
    return h("table", attrs, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
             h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => c instanceof Node && c.tagName === "TD" ? c : h("td", {}, c))))));
  }
  const kv = (pairs) => h("table", {class: "kv"}, h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
  const numTd = (v) => h("td", {class: "num"}, fmtNum(v));
  const section = (title, ...kids) => h("section", {}, h("h2", {}, title), kids);
  function showError(where, err) { where.appendChild(h("p", {class: "err"}, String(err && err.message || err))); }

  // ---- data -------------------------------------------------------------------------------------------------
  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      for (const item of Array.isArray(v) ? v : [v]) if (item !== null && item !== undefined && item !== "") q.append(k, item);
    }
    const text = q.toString();
    return text ? `?${text}` : "";
  }
  async function api(path, params, init) {
    const response = await fetch(path + query(params), {credentials: "same-origin", ...(init || {}),
                                                         headers: {accept: "application/json", ...((init || {}).headers || {})}});
    const data = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
    if (!response.ok) throw new Error(data.error || `${response.status}`);
    return data;
  }
  // In a report, `key` names an inlined answer; on the server, `path` is fetched.
  const get = (key, path, params) => REPORT ? Promise.resolve(DATA[key] ?? null) : api(path, params);
  function writeToken() {
    let token = sessionStorage.getItem("bitsmith.write");
    if (!token) { token = prompt("write token (BITSMITH_UI_WRITE_TOKEN)") || ""; if (token) sessionStorage.setItem("bitsmith.write", token); }
    return token;
  }
  async function write(path, payload, out) {
    try {
      const init = {method: "POST", headers: {[WRITE_HEADER]: writeToken(), "content-type": "application/json"}};
      if (payload !== undefined) init.body = JSON.stringify(payload);
      const answer = await api(path, {}, init);
      out.textContent = `done: ${JSON.stringify(answer)}`;
      return answer;
    } catch (err) {
      if (/write token/.test(err.message)) sessionStorage.removeItem("bitsmith.write");
      out.textContent = `refused: ${err.message}`;
      return null;
    }
  }

  // ---- charts (SVG, drawn here) -----------------------------------------------------------------------------
  const tip = h("div", {class: "tip"});
  body.appendChild(tip);
  function showTip(ev, text) { tip.textContent = text; tip.style.display = "block"; tip.style.left = `${ev.clientX + 12}px`; tip.style.top = `${ev.clientY + 12}px`; }
  const hideTip = () => { tip.style.display = "none"; };
  function ticks(lo, hi, n = 5) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
    return out;
  }
  function extent(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (lo === Infinity) return [0, 1];
    if (lo === hi) { const pad = Math.abs(lo) * 0.05 || 1; return [lo - pad, hi + pad]; }
    return [lo, hi];
  }
  function frame(width, height, xr, yr, xLabel, yLabel) {
    const longest = Math.max(0, ...ticks(...yr).map((t) => fmtNum(t).length));
    const m = {l: Math.max(58, 26 + 6.5 * longest), r: 12, t: 12, b: 36};  // tick labels clear of the axis title
    const X = (v) => m.l + (v - xr[0]) / (xr[1] - xr[0]) * (width - m.l - m.r);
    const Y = (v) => height - m.b - (v - yr[0]) / (yr[1] - yr[0]) * (height - m.t - m.b);
    const svg = s("svg", {class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, xmlns: SVGNS});
    for (const t of ticks(...yr)) {
      svg.append(...kids(s("line", {class: "grid", x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t)}),
                 s("text", {x: m.l - 4, y: Y(t) + 3, "text-anchor": "end"}, fmtNum(t))));
    }
    for (const t of ticks(...xr)) svg.append(...kids(s("text", {x: X(t), y: height - m.b + 14, "text-anchor": "middle"}, fmtNum(t))));
    svg.append(...kids(s("line", {class: "axis", x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b}),
               s("line", {class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: height - m.b}),
               s("text", {x: (m.l + width - m.r) / 2, y: height - 4, "text-anchor": "middle"}, xLabel || ""),
               s("text", {x: 12, y: (m.t + height - m.b) / 2, "text-anchor": "middle",
                          transform: `rotate(-90 12 ${(m.t + height - m.b) / 2})`}, yLabel || "")));
    return {svg, X, Y, m};
  }
  // series: [{label, points: [[x, y], ...]}]; one polyline each (data-points = its point count).
  function lineChart(title, series, {width = 540, height = 260, xLabel = "step"} = {}) {
    const xs = series.flatMap((se) => se.points.map((p) => p[0])), ys = series.flatMap((se) => se.points.map((p) => p[1]));
    const {svg, X, Y} = frame(width, height, extent(xs), extent(ys), xLabel, title);
    series.forEach((se, i) => {
      const color = COLORS[i % COLORS.length];
      const pts = se.points.filter((p) => Number.isFinite(p[1]));
      svg.appendChild(s("polyline", {fill: "none", stroke: color, "stroke-width": 1.6, class: "series",
                                     "data-label": se.label, "data-points": se.points.length,
                                     points: pts.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ")}));
      if (pts.length <= 300) for (const p of pts) svg.appendChild(s("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2, fill: color, class: "pt"}));
    });
    svg.addEventListener("mousemove", (ev) => {
      const box = svg.getBoundingClientRect(), px = ev.clientX - box.left;
      const lines = [];
      for (const se of series) {
        let best = null;
        for (const p of se.points) if (best === null || Math.abs(X(p[0]) - px) < Math.abs(X(best[0]) - px)) best = p;
        if (best) lines.push(`${se.label}: step ${best[0]} → ${fmtNum(best[1])}`);
      }
      showTip(ev, lines.join("\n"));
    });
    svg.addEventListener("mouseleave", hideTip);
    const legend = series.length > 1 ? h("div", {class: "legend"}, series.map((se, i) =>
      h("span", {}, swatch(COLORS[i % COLORS.length]), se.label))) : null;
    return h("div", {class: "card chart-card", "data-metric": title}, h("div", {class: "mono"}, title), svg, legend);
  }
  function swatch(color) { const i = h("i"); i.style.background = color; return i; }  // CSSOM: allowed by the CSP
  // points: [{x, y, label, href, front}]; front points are joined (the Pareto front).
  function scatter(points, xLabel, yLabel, {width = 560, height = 360} = {}) {
    const {svg, X, Y} = frame(width, height, extent(points.map((p) => p.x)), extent(points.map((p) => p.y)), xLabel, yLabel);
    const front = points.filter((p) => p.front).sort((a, b) => a.x - b.x);
    if (front.length > 1) svg.appendChild(s("polyline", {fill: "none", stroke: "#d0452f", "stroke-dasharray": "4 3",
                                                          points: front.map((p) => `${X(p.x)},${Y(p.y)}`).join(" ")}));
    for (const p of points) {
      const dot = s("circle", {cx: X(p.x), cy: Y(p.y), r: p.front ? 6 : 4.5, class: p.front ? "pt front" : "pt",
                               fill: p.front ? "#d0452f" : "#2f5fd0", "fill-opacity": 0.8, "data-run": p.run || "",
                               onmousemove: (ev) => showTip(ev, p.label), onmouseleave: hideTip});
      svg.appendChild(p.href && !REPORT ? s("a", {href: p.href}, dot) : dot);
    }
    return h("div", {class: "card"}, svg);
  }
  // dims: [{name, values: row -> value}]; rows: [{row, label, href, front}]
  function parallel(dims, rows, {width = 760, height = 300} = {}) {
    const m = {l: 40, r: 40, t: 24, b: 20};
    const svg = s("svg", {class: "chart", width, height, xmlns: SVGNS});
    const axisX = (i) => m.l + i * (width - m.l - m.r) / Math.max(1, dims.length - 1);
    const scales = dims.map((d) => {
      const vals = rows.map((r) => d.values(r.row));
      if (vals.every((v) => typeof v === "number" || v === null || v === undefined)) {
        const [lo, hi] = extent(vals);
        return {pos: (v) => typeof v === "number" ? height - m.b - (v - lo) / (hi - lo) * (height - m.t - m.b) : null,
                labels: [[lo, fmtNum(lo)], [hi, fmtNum(hi)]]};
      }
      const cats = [...new Set(vals.map((v) => JSON.stringify(v)))];
      const at = (v) => height - m.b - (cats.indexOf(JSON.stringify(v)) + 0.5) / cats.length * (height - m.t - m.b);
      return {pos: at, labels: cats.map((c) => [JSON.parse(c), c])};
    });
    dims.forEach((d, i) => {
      svg.append(...kids(s("line", {class: "axis", x1: axisX(i), x2: axisX(i), y1: m.t, y2: height - m.b}),
                 s("text", {x: axisX(i), y: m.t - 8, "text-anchor": "middle"}, d.name)));
      for (const [v, text] of scales[i].labels) svg.appendChild(s("text", {x: axisX(i) + 4, y: scales[i].pos(v) + 3}, text));
    });
    rows.forEach((r) => {
      const pts = dims.map((d, i) => [axisX(i), scales[i].pos(d.values(r.row))]).filter((p) => p[1] !== null);
      const line = s("polyline", {fill: "none", stroke: r.front ? "#d0452f" : "#2f5fd0", "stroke-opacity": 0.7,
                                  "stroke-width": r.front ? 2.2 : 1.4, points: pts.map((p) => p.join(",")).join(" "),
                                  onmousemove: (ev) => showTip(ev, r.label), onmouseleave: hideTip});
      svg.appendChild(r.href && !REPORT ? s("a", {href: r.href}, line) : line);
    });
    return h("div", {class: "card"}, svg);
  }
  function heatMap(heat) {
    const cw = 74, ch = 22, left = 60, top = 24;
    const svg = s("svg", {class: "chart heat", width: left + heat.kinds.length * cw + 10, height: top + heat.blocks.length * ch + 10});
    const all = heat.bits.flat().filter((v) => typeof v === "number");
    const [lo, hi] = extent(all);
    heat.kinds.forEach((k, j) => {  // the layer's own name (q_proj, down_proj); the full path in its tooltip
      const shortName = k.split(".").pop(), label = shortName.length > 11 ? `${shortName.slice(0, 10)}…` : shortName;
      svg.appendChild(s("text", {x: left + j * cw + cw / 2, y: top - 6, "text-anchor": "middle", class: "heat-kind",
                                 onmousemove: (ev) => showTip(ev, k), onmouseleave: hideTip}, label));
    });
    heat.blocks.forEach((b, i) => {
      svg.appendChild(s("text", {x: left - 6, y: top + i * ch + 15, "text-anchor": "end"}, b < 0 ? "other" : `block ${b}`));
      heat.kinds.forEach((k, j) => {
        const v = heat.bits[i][j], f = typeof v === "number" ? (v - lo) / (hi - lo || 1) : null;
        const fill = f === null ? "#f3f4f6" : `hsl(${20 + 200 * f}, 65%, ${78 - 30 * f}%)`;
        svg.append(...kids(s("rect", {x: left + j * cw, y: top + i * ch, width: cw - 2, height: ch - 2, fill, class: "cell", "data-block": b, "data-kind": k, "data-bits": v ?? "",
                              onmousemove: (ev) => showTip(ev, `block ${b} ${k}: ${fmtNum(v)} bits`), onmouseleave: hideTip}),
                   s("text", {x: left + j * cw + cw / 2, y: top + i * ch + 15, "text-anchor": "middle"}, fmtNum(v))));
      });
    });
    return h("div", {class: "card"}, svg);
  }
  function bars(title, items) {  // items: [{label, value}]
    const width = 520, rowH = 22, left = 150;
    const max = Math.max(...items.map((x) => Number.isFinite(x.value) ? x.value : 0), 1e-12);
    const svg = s("svg", {class: "chart", width, height: items.length * rowH + 8});
    items.forEach((x, i) => {
      const w = Number.isFinite(x.value) ? (width - left - 70) * x.value / max : 0;
      svg.append(...kids(s("text", {x: left - 6, y: i * rowH + 15, "text-anchor": "end"}, x.label),
                 s("rect", {x: left, y: i * rowH + 4, width: w, height: rowH - 6, fill: COLORS[i % COLORS.length]}),
                 s("text", {x: left + w + 4, y: i * rowH + 15}, fmtNum(x.value))));
    });
    return h("div", {class: "card"}, h("div", {class: "mono"}, title), svg);
  }

  // ---- lineage graph ----------------------------------------------------------------------------------------
  const NODE_W = 250, NODE_H = 38;
  function lineageGraph(view, {onNode} = {}) {
    const pos = Object.fromEntries(view.nodes.map((n) => [n.id, n]));
    const svg = s("svg", {width: view.width, height: view.height, xmlns: SVGNS, class: "lineage"});
    for (const e of view.edges) {
      const a = pos[e.from], b = pos[e.to];
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      svg.appendChild(s("path", {d: `M${x1},${y1} C${x1 + 40},${y1} ${x2 - 40},${y2} ${x2},${y2}`, fill: "none",
                                 stroke: "#9ca3af", class: "edge", "data-from": e.from, "data-to": e.to}));
      if (e.role) svg.appendChild(s("text", {x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, "text-anchor": "middle", fill: "#6b7280", "font-size": 11}, e.role));
    }
    for (const n of view.nodes) {
      const fill = {run: "#e8f0fe", artifact: "#fef7e0", more: "#eeeeee"}[n.kind];
      const label = n.label.length > 38 ? `${n.label.slice(0, 37)}…` : n.label;
      const g = s("g", {class: `node node-${n.kind}`, "data-id": n.id, "data-kind": n.kind, "data-ref": n.ref,
                        "data-root": n.root ? "1" : null},
                  s("rect", {x: n.x, y: n.y, width: NODE_W, height: NODE_H, rx: n.kind === "run" ? 4 : 18, fill,
                             stroke: n.root ? "#d0452f" : "#6b7280"}),
                  s("text", {x: n.x + 8, y: n.y + 16, "font-size": 11}, label),
                  s("text", {x: n.x + 8, y: n.y + 31, "font-size": 10, fill: "#6b7280"},
                    n.kind === "more" ? "click to show more" : `${n.kind} ${short(n.ref)}${n.status ? " · " + n.status : ""}`));
      g.addEventListener("mousemove", (ev) => showTip(ev, n.label));
      g.addEventListener("mouseleave", hideTip);
      if (onNode) g.addEventListener("click", () => onNode(n));
      svg.appendChild(g);
    }
    return h("div", {class: "graph"}, svg);
  }

  // ---- pages ------------------------------------------------------------------------------------------------
  const RUN_COLUMNS = ["id", "name", "kind", "status", "tags", "created_at", "started_at", "finished_at", "sweep_id", "attempt"];
  function runCell(r, col) {
    if (col.startsWith("metric:")) return numTd(r.metrics[col.slice(7)]);
    const v = r[col];
    if (col === "id") return runLink(r.id);
    if (col === "status") return statusEl(v);
    if (col === "sweep_id") return v ? link(`/sweeps/${enc(v)}`, short(v)) : "—";
    if (col === "tags") return h("span", {class: "tags"}, (v || []).map((t) => h("span", {}, t)));
    if (col.endsWith("_at")) return fmtTime(v);
    return v === null || v === undefined || v === "" ? "—" : String(v);
  }

  async function pageRuns() {
    const p = new URLSearchParams(location.search);
    const field = (name, label, attrs) => h("label", {}, label, h("input", {name, value: p.get(name) || "", ...attrs}));
    const status = h("select", {name: "status"}, h("option", {value: ""}, "any"),
                     STATUSES.map((st) => h("option", {value: st, selected: p.get("status") === st}, st)));
    const sortList = h("datalist", {id: "sorts"});
    const form = h("form", {class: "filters", id: "filters"},
      field("kind", "kind", {size: 8}), h("label", {}, "status", status), field("tag", "tag", {size: 8}),
      field("sweep", "sweep id", {size: 14}), field("name", "name contains", {size: 14}),
      h("label", {}, "metric filters (; between)", h("input", {name: "metric", size: 28, placeholder: "test/token_ppl < 50",
                                                             value: p.getAll("metric").join("; ")})),
      h("label", {}, "sort", h("input", {name: "sort", list: "sorts", size: 20, value: p.get("sort") || "created_at"})), sortList,
      h("label", {}, "descending", h("input", {type: "checkbox", name: "desc", checked: p.get("desc") !== "false"})),
      field("limit", "rows", {size: 4, type: "number", min: 1, max: 500, value: p.get("limit") || "50"}),
      h("button", {type: "submit"}, "apply"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const el of form.elements) {
        if (!el.name || el.name === "metric" || el.name === "desc") continue;
        if (el.value) q.set(el.name, el.value);
      }
      for (const m of form.elements.metric.value.split(";").map((x) => x.trim()).filter(Boolean)) q.append("metric", m);
      if (!form.elements.desc.checked) q.set("desc", "false");
      location.search = q.toString();
    });
    const err = h("div"), columnsBox = h("div", {class: "columns"}), holder = h("div"), pager = h("div", {class: "pager"});
    const compareBtn = h("button", {type: "button", disabled: true}, "compare selected");
    app.replaceChildren(...kids(h("h1", {}, "Runs"), form, err, columnsBox, holder, pager, compareBtn));
    const params = {kind: p.get("kind"), status: p.get("status"), tag: p.get("tag"), sweep: p.get("sweep"),
                    name: p.get("name"), metric: p.getAll("metric"), sort: p.get("sort") || "created_at",
                    desc: p.get("desc") === "false" ? "false" : "true", limit: p.get("limit") || 50, cursor: p.get("cursor")};
    const selected = new Set();
    compareBtn.addEventListener("click", () => { location.href = `/compare${query({run: [...selected]})}`; });
    let chosen = JSON.parse(localStorage.getItem("bitsmith.columns") || "null");
    let page;
    function draw() {
      const metricKeys = [...new Set(page.rows.flatMap((r) => Object.keys(r.metrics)))].sort();
      const available = [...RUN_COLUMNS, ...metricKeys.map((k) => `metric:${k}`)];
      if (params.sort.startsWith("metric:") && !available.includes(params.sort)) available.push(params.sort);
      const cols = chosen ? available.filter((c) => chosen.includes(c)) : ["id", "name", "kind", "status", "created_at", ...available.filter((c) => c.startsWith("metric:")).slice(0, 4)];
      sortList.replaceChildren(...kids(...available.filter((c) => c !== "id" && c !== "tags" && c !== "sweep_id" && c !== "attempt").map((c) => h("option", {value: c}))));
      columnsBox.replaceChildren(...kids("columns: ", available.map((c) => h("label", {}, h("input", {type: "checkbox", checked: cols.includes(c), onchange: (ev) => {
        const next = new Set(cols); if (ev.target.checked) next.add(c); else next.delete(c);
        chosen = available.filter((x) => next.has(x)); localStorage.setItem("bitsmith.columns", JSON.stringify(chosen)); draw();
      }}), c.startsWith("metric:") ? c.slice(7) : c))));
      const head = h("tr", {}, h("th", {}, ""), cols.map((c) => {
        const sortable = c !== "tags" && c !== "sweep_id" && c !== "attempt" && c !== "id";
        const mark = params.sort === c ? (params.desc === "true" ? " ▼" : " ▲") : "";
        return h("th", {class: sortable ? "sortable" : "", "data-col": c, onclick: sortable ? () => {
          const q = new URLSearchParams(location.search); q.delete("cursor");
          const desc = params.sort === c ? params.desc !== "true" : true;
          q.set("sort", c); q.set("desc", String(desc)); location.search = q.toString();
        } : null}, (c.startsWith("metric:") ? c.slice(7) : c) + mark);
      }));
      const rows = page.rows.map((r) => h("tr", {"data-run": r.id}, h("td", {}, h("input", {type: "checkbox", checked: selected.has(r.id), onchange: (ev) => {
        if (ev.target.checked) selected.add(r.id); else selected.delete(r.id); compareBtn.disabled = selected.size < 1;
      }})), cols.map((c) => { const v = runCell(r, c); if (v instanceof Node && v.tagName === "TD") { v.dataset.col = c; return v; } return h("td", {"data-col": c}, v); })));
      holder.replaceChildren(...kids(page.rows.length ? h("table", {id: "runs"}, h("thead", {}, head), h("tbody", {}, rows))
                                              : h("p", {class: "muted", id: "runs-empty"}, "no runs match")));
      const first = new URLSearchParams(location.search); first.delete("cursor");
      const next = new URLSearchParams(location.search); if (page.next_cursor) next.set("cursor", page.next_cursor);
      pager.replaceChildren(...kids(params.cursor ? h("a", {href: `?${first}`}, "« first page") : null,
                            page.next_cursor ? h("a", {href: `?${next}`, id: "next-page"}, "next page »") : h("span", {class: "muted"}, "last page"),
                            h("span", {class: "muted"}, `${page.rows.length} runs shown`)));
    }
    try { page = await api("/api/runs", params); draw(); } catch (e) { showError(err, e); return; }
    setInterval(async () => {  // live status: re-read this page while the tab is visible
      if (document.hidden) return;
      try { page = await api("/api/runs", params); draw(); document.getElementById("live").textContent = `live · ${new Date().toLocaleTimeString()}`; }
      catch (e) { document.getElementById("live").textContent = `live refresh failed: ${e.message}`; }
    }, 4000);
  }

  function specWithLinks(text) {
    const pre = h("pre", {class: "spec"});
    const re = /(?:sha256:)?([0-9a-f]{64})/g;
    let last = 0, m;
    while ((m = re.exec(text)) !== null) {
      pre.append(...kids(text.slice(last, m.index), artLink(m[1], m[0])));
      last = re.lastIndex;
    }
    pre.append(...kids(text.slice(last)));
    return pre;
  }
  const edgesTable = (edges) => edges.length ? table(["role", "artifact", "kind", "name", "size"], edges.map((e) =>
    [e.role, artLink(e.digest), e.kind || "—", e.name || "—", fmtBytes(e.size_bytes)])) : h("p", {class: "muted"}, "none");

  async function pageRun() {
    const d = await get("run", `/api/runs/${enc(REF)}`);
    const r = d.run;
    const out = h("span", {class: "muted", id: "write-result"});
    const actions = WRITABLE && !REPORT ? h("div", {class: "row"},
      TERMINAL.has(r.status) ? null : h("button", {onclick: () => write(`/api/runs/${enc(r.id)}/cancel`, undefined, out)}, "cancel"),
      r.status === "succeeded" ? h("button", {onclick: () => write(`/api/runs/${enc(r.id)}/reproduce`, undefined, out)}, "reproduce") : null,
      h("button", {onclick: async () => { const t = prompt("tag to add"); if (t) await write(`/api/runs/${enc(r.id)}/tags`, {add: [t], remove: []}, out); }}, "add tag"),
      out) : null;
    const charts = h("div", {class: "row", id: "charts"});
    const logPre = h("pre", {class: "log", id: "log"});
    const follow = h("input", {type: "checkbox", checked: !TERMINAL.has(r.status)});
    const lineageBox = h("div");
    app.replaceChildren(...kids(
      h("h1", {}, r.name || r.id, " ", statusEl(r.status)),
      h("p", {class: "muted"}, `${r.kind} run ${r.id}`, " · ", link(`/lineage${query({run: r.id})}`, "lineage"),
        r.kind === "search" ? [" · ", link(`/searches/${enc(r.id)}`, "search views")] : null,
        r.sweep_id ? [" · sweep ", link(`/sweeps/${enc(r.sweep_id)}`, short(r.sweep_id))] : null),
      actions,
      h("div", {class: "row"},
        h("div", {}, h("h2", {}, "Run"), kv([["id", h("span", {class: "mono"}, r.id)], ["kind", r.kind], ["status", statusEl(r.status)],
          ["attempt", `${r.attempt} (max retries ${r.max_retries})`], ["executor", r.executor || "—"], ["host", r.host || "—"],
          ["created", fmtTime(r.created_at)], ["started", fmtTime(r.started_at)], ["finished", fmtTime(r.finished_at)],
          ["seed", String(r.seed)], ["tags", h("span", {class: "tags"}, r.tags.map((t) => h("span", {}, t)))],
          ["cache hit of", r.cache_hit_of ? runLink(r.cache_hit_of) : "—"], ["joins", r.joins ? runLink(r.joins) : "—"],
          ["spec hash", h("span", {class: "mono"}, short(r.spec_hash, 16))], ["cache key", h("span", {class: "mono"}, short(r.cache_key, 16))]])),
        h("div", {}, h("h2", {}, "Final metrics"), Object.keys(r.metrics).length
          ? table(["metric", "value"], Object.entries(r.metrics).map(([k, v]) => [k, numTd(v)]), {id: "final-metrics"})
          : h("p", {class: "muted"}, "none"))),
      r.error ? section("Error", h("pre", {class: "err"}, r.error), r.traceback ? h("details", {}, h("summary", {}, "traceback"), h("pre", {}, r.traceback)) : null) : null,
      section("Metric series", d.series_of && d.series_of !== r.id ? h("p", {class: "muted", id: "series-of"}, "a cache hit: the series of its original run ", runLink(d.series_of)) : null, charts),
      section("Spec", specWithLinks(d.spec_yaml)),
      h("div", {class: "row"},
        h("div", {}, h("h2", {}, "Inputs"), edgesTable(d.inputs)),
        h("div", {}, h("h2", {}, "Outputs"), edgesTable(d.outputs))),
      h("div", {class: "row"},
        h("div", {}, h("h2", {}, "Code version"), kv([...Object.entries(d.code_version).map(([k, v]) => [k, h("span", {class: "mono"}, fmtValue(v))]),
                                                     ["modules fingerprinted", String(d.code_modules)]])),
        h("div", {}, h("h2", {}, "Environment"), kv(Object.entries(d.environment || {}).map(([k, v]) => [k, h("span", {class: "mono"}, fmtValue(v))])))),
      section("Events", table(["at", "from", "to", "attempt", "message"], d.events.map((e) =>
        [fmtTime(e.at), e.from_status || "—", statusEl(e.to_status), String(e.attempt), e.message || ""]), {id: "events"})),
      section("Reproductions", d.reproductions.length ? table(["original", "reproduction", "verdict", "differing outputs", "differing metrics", "changed modules"],
        d.reproductions.map((x) => [runLink(x.original), runLink(x.reproduction), h("span", {class: x.matches ? "status-succeeded" : "status-failed"}, x.matches ? "matches" : `differs (${x.reproduction_status})`),
                                    x.differing_outputs.join(", ") || "—", x.differing_metrics.join(", ") || "—", Object.entries(x.changed_modules || {}).map(([m, c]) => `${m} (${c})`).join(", ") || "—"]))
        : h("p", {class: "muted"}, "no other run of the same cache key")),
      section("Lineage", lineageBox),
      section("Log", REPORT ? null : h("label", {}, follow, " follow"), logPre)));
    get("metrics", `/api/runs/${enc(r.id)}/metrics`).then((m) => {
      if (!m) return;
      const keys = Object.keys(m.series).sort();
      if (!keys.length) charts.append(...kids(h("p", {class: "muted"}, "no stepped metrics")));
      for (const k of keys) charts.append(...kids(lineChart(k, [{label: k, points: m.series[k]}])));
    }).catch((e) => showError(charts, e));
    get("lineage", "/api/lineage", {run: r.id, depth: 2}).then((view) => {
      if (view) lineageBox.append(...kids(lineageGraph(view, {onNode: REPORT ? null : (n) => { if (n.kind !== "more") location.href = `/lineage${query({[n.kind]: n.ref})}`; }})));
    }).catch((e) => showError(lineageBox, e));
    let offset = 0;
    async function readLog() {
      try {
        const chunk = await get("log", `/api/runs/${enc(r.id)}/log`, {offset});
        if (!chunk) return;
        if (!chunk.exists && !offset) logPre.textContent = "(no log)";
        logPre.append(...kids(chunk.text));
        offset = chunk.offset;
        if (follow.checked) logPre.scrollTop = logPre.scrollHeight;
        if (!REPORT && (!chunk.done || chunk.text) && (follow.checked || chunk.text)) setTimeout(readLog, chunk.text ? 200 : 2000);
      } catch (e) { showError(logPre.parentNode, e); }
    }
    readLog();
  }

  async function pageCompare() {
    const ids = new URLSearchParams(location.search).getAll("run");
    const d = await api("/api/compare", {run: ids});
    const runs = d.runs;
    const curves = h("div", {class: "row", id: "curves"});
    app.replaceChildren(...kids(h("h1", {}, `Compare ${runs.length} runs`),
      section("Final metrics", table(["metric", ...runs.map((r) => runLink(r.id, `${r.name || ""} ${short(r.id, 8)}`))],
        d.metric_keys.map((k) => [k, ...runs.map((r) => numTd(r.metrics[k]))]), {id: "compare-metrics"})),
      section("Spec differences", d.spec_diff.length ? table(["field", ...runs.map((r) => short(r.id, 8))],
        d.spec_diff.map((x) => [x.field, ...x.values.map((v) => h("td", {class: "diff mono"}, fmtValue(v)))]), {id: "spec-diff"}) : h("p", {class: "muted"}, "specs are identical")),
      section("Curves", curves)));
    const series = await Promise.all(runs.map((r) => api(`/api/runs/${enc(r.id)}/metrics`)));
    const keys = [...new Set(runs.flatMap((r) => d.series[r.id]))].sort();
    for (const k of keys) {
      curves.append(...kids(lineChart(k, runs.map((r, i) => ({label: `${r.name || r.id.slice(0, 8)} (${short(r.id, 8)})`, points: series[i].series[k] || []}))
        .filter((x) => x.points.length))));
    }
    if (!keys.length) curves.append(...kids(h("p", {class: "muted"}, "no stepped metrics")));
  }

  async function pageArtifacts() {
    const p = new URLSearchParams(location.search);
    const form = h("form", {class: "filters"},
      h("label", {}, "kind", h("input", {name: "kind", size: 10, value: p.get("kind") || ""})),
      h("label", {}, "where (; between), e.g. meta.bits<=4; size_bytes>1000",
        h("input", {name: "where", size: 50, value: p.getAll("where").join("; ")})),
      h("button", {type: "submit"}, "find"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (form.elements.kind.value) q.set("kind", form.elements.kind.value);
      for (const w of form.elements.where.value.split(";").map((x) => x.trim()).filter(Boolean)) q.append("where", w);
      location.search = q.toString();
    });
    const holder = h("div");
    app.replaceChildren(...kids(h("h1", {}, "Artifacts"), form, holder));
    try {
      const d = await api("/api/artifacts", {kind: p.get("kind"), where: p.getAll("where"), cursor: p.get("cursor"), limit: 50});
      const next = new URLSearchParams(location.search); if (d.next_cursor) next.set("cursor", d.next_cursor);
      const first = new URLSearchParams(location.search); first.delete("cursor");
      holder.append(...kids(table(["digest", "kind", "name", "size", "producer", "created"], d.rows.map((a) =>
        [artLink(a.digest), a.kind, a.name || "—", fmtBytes(a.size_bytes), a.producer_run_id ? runLink(a.producer_run_id) : "—", fmtTime(a.created_at)]), {id: "artifacts"}),
        h("div", {class: "pager"}, p.get("cursor") ? h("a", {href: `?${first}`}, "« first page") : null,
          d.next_cursor ? h("a", {href: `?${next}`, id: "next-page"}, "next page »") : h("span", {class: "muted"}, "last page"))));
    } catch (e) { showError(holder, e); }
  }

  function flat(obj, prefix = "", out = []) {
    for (const [k, v] of Object.entries(obj || {})) {
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) flat(v, `${prefix}${k}.`, out);
      else out.push([`${prefix}${k}`, v]);
    }
    return out;
  }

  async function pageArtifact() {
    const d = await api(`/api/artifacts/${enc(REF)}`);
    const a = d.artifact;
    const download = `/api/artifacts/${enc(a.digest)}/download`;
    const filesBox = h("div");
    app.replaceChildren(...kids(h("h1", {}, a.name || `${a.kind} ${short(a.digest)}`),
      h("p", {class: "muted"}, link(`/lineage${query({artifact: a.digest})}`, "lineage"), a.is_dir ? null : [" · ", h("a", {href: download, id: "download"}, "download")]),
      kv([["digest", h("span", {class: "mono"}, a.digest)], ["kind", a.kind], ["name", a.name || "—"], ["size", fmtBytes(a.size_bytes)],
          ["directory", a.is_dir ? "yes" : "no"], ["created", fmtTime(a.created_at)],
          ["producer", d.producer ? h("span", {}, runLink(d.producer.id), ` ${d.producer.kind} ${d.producer.name || ""} (${d.producer.status})`) : "— (registered)"]]),
      section("Metadata", flat(a.metadata).length ? table(["field", "value"], flat(a.metadata).map(([k, v]) => [k, h("span", {class: "mono"}, fmtValue(v))]), {id: "metadata"}) : h("p", {class: "muted"}, "none")),
      section(`Consumers (${d.consumer_count})`, d.consumers.length ? table(["run", "role"], d.consumers.map((c) => [runLink(c.run_id), c.role])) : h("p", {class: "muted"}, "none")),
      a.is_dir ? section("Files", filesBox) : null));
    if (a.is_dir) {
      const f = await api(`/api/artifacts/${enc(a.digest)}/files`);
      filesBox.append(...kids(table(["path", "size"], f.files.map((x) => [h("a", {href: `${download}${query({path: x.path})}`}, x.path), fmtBytes(x.size_bytes)]))));
    }
  }

  async function pageLineage() {
    const p = new URLSearchParams(location.search);
    const params = {run: p.get("run"), artifact: p.get("artifact"), direction: p.get("direction") || "both",
                    depth: p.get("depth") || 4, collapse: p.get("collapse") || 8};
    const form = h("form", {class: "filters", method: "get", action: "/lineage"},
      h("label", {}, "run id", h("input", {name: "run", size: 28, value: params.run || ""})),
      h("label", {}, "or artifact (digest, NAME, run:ID/ROLE)", h("input", {name: "artifact", size: 28, value: params.artifact || ""})),
      h("label", {}, "direction", h("select", {name: "direction"}, ["both", "up", "down"].map((x) => h("option", {value: x, selected: params.direction === x}, x)))),
      h("label", {}, "depth", h("input", {name: "depth", type: "number", min: 1, max: 12, size: 3, value: params.depth})),
      h("label", {}, "collapse past", h("input", {name: "collapse", type: "number", min: 1, max: 1000, size: 4, value: params.collapse})),
      h("button", {type: "submit"}, "show"));
    for (const el of form.elements) if (el.name === "run" || el.name === "artifact") el.addEventListener("input", () => { if (el.value) form.elements[el.name === "run" ? "artifact" : "run"].value = ""; });
    app.replaceChildren(...kids(h("h1", {}, "Lineage"), form));
    if (!params.run && !params.artifact) { app.append(...kids(h("p", {class: "muted"}, "give a run id or an artifact reference"))); return; }
    const view = await api("/api/lineage", params);
    const exports = h("p", {}, "export: ", ["svg", "dot", "mermaid"].map((f) => [h("a", {href: `/api/lineage/export${query({...params, format: f})}`, class: `export-${f}`}, f), " "]));
    const go = (extra) => { location.search = query({...params, ...extra}).slice(1); };
    const graphBox = lineageGraph(view, {onNode: (n) => {
      if (n.kind === "more") go({collapse: Math.min(1000, Number(params.collapse) * 4)});
      else go({run: n.kind === "run" ? n.ref : null, artifact: n.kind === "artifact" ? n.ref : null});
    }});
    const listed = view.nodes.filter((n) => n.kind !== "more");
    app.append(...kids(h("p", {class: "muted"}, `${listed.length} nodes, ${view.edges.length} edges; click a node to centre the graph on it`,
      view.groups.length ? `; ${view.groups.reduce((a, g) => a + g.count, 0)} siblings collapsed (click “more” to expand)` : ""),
      exports, graphBox,
      section("Nodes", table(["level", "node", "label"], listed.map((n) => [String(n.level),
        n.kind === "run" ? runLink(n.ref, `run ${short(n.ref)}`) : artLink(n.ref, `artifact ${short(n.ref)}`), n.label])))));
  }

  async function pageSweeps() {
    const p = new URLSearchParams(location.search);
    const d = await api("/api/sweeps", {limit: p.get("limit") || 50, cursor: p.get("cursor")});
    const next = new URLSearchParams(location.search); if (d.next_cursor) next.set("cursor", d.next_cursor);
    const first = new URLSearchParams(location.search); first.delete("cursor");
    app.replaceChildren(...kids(h("h1", {}, "Sweeps"), d.rows.length ? table(["sweep", "name", "status", "children", "created"], d.rows.map((x) =>
      [link(`/sweeps/${enc(x.id)}`, short(x.id)), x.name || "—", statusEl(x.status), String(x.children), fmtTime(x.created_at)]), {id: "sweeps"})
      : h("p", {class: "muted"}, "no sweeps yet"),
      h("div", {class: "pager"}, p.get("cursor") ? h("a", {href: `?${first}`}, "« first page") : null,
        d.next_cursor ? h("a", {href: `?${next}`, id: "next-page"}, "next page »") : h("span", {class: "muted"}, "last page"))));
  }

  async function pageSweep() {
    const d = await get("sweep", `/api/sweeps/${enc(REF)}`);
    const sw = d.sweep, objectives = d.objectives.map((o) => o.metric);
    const out = h("span", {class: "muted", id: "write-result"});
    const rows = d.rows;
    const label = (r) => `run ${short(r.run_id)} (${r.status})\n${Object.entries(r.params).map(([k, v]) => `${k}=${fmtValue(v)}`).join(" ")}\n` +
      objectives.map((k) => `${k}: ${fmtNum(r.metrics[k])}`).join("\n");
    const ok = rows.filter((r) => objectives.every((k) => typeof r.metrics[k] === "number"));
    app.replaceChildren(...kids(h("h1", {}, sw.name || sw.id, " ", statusEl(sw.status)),
      h("p", {class: "muted"}, `sweep ${sw.id} · ${sw.children} children · `, link(`/runs${query({sweep: sw.id})}`, "as runs"),
        WRITABLE && !REPORT ? [" · ", h("button", {onclick: () => write(`/api/sweeps/${enc(sw.id)}/resume`, undefined, out)}, "resume"), out] : null),
      section("Children", table(["run", "status", ...d.parameters, ...d.objectives.map((o) => `${o.metric} (${o.goal})`), "Pareto"],
        rows.map((r) => [runLink(r.run_id), statusEl(r.status), ...d.parameters.map((k) => h("td", {class: "mono"}, fmtValue(r.params[k]))),
                         ...objectives.map((k) => numTd(r.metrics[k])), r.pareto ? "★" : ""]), {id: "children"})),
      objectives.length >= 2 ? section(`Pareto front: ${objectives[0]} vs ${objectives[1]}`, h("div", {id: "pareto"},
        scatter(ok.map((r) => ({x: r.metrics[objectives[0]], y: r.metrics[objectives[1]], front: r.pareto, label: label(r),
                               run: r.run_id, href: `/runs/${enc(r.run_id)}`})), objectives[0], objectives[1])))
        : h("p", {class: "muted"}, "one objective: no Pareto plot (the table is ranked by it)"),
      section("Parallel coordinates", h("div", {id: "parallel"}, parallel(
        [...d.parameters.map((k) => ({name: k, values: (r) => r.params[k]})), ...objectives.map((k) => ({name: k, values: (r) => r.metrics[k]}))],
        rows.map((r) => ({row: r, label: label(r), href: `/runs/${enc(r.run_id)}`, front: r.pareto})))))));
  }

  async function pageSearch() {
    const d = await get("search", `/api/searches/${enc(REF)}`);
    drawSearch(app, d, true);
  }
  function drawSearch(where, d, heading) {
    if (heading) where.replaceChildren(...kids(h("h1", {}, "Search ", runLink(d.run_id)),
      d.series_of && d.series_of !== d.run_id ? h("p", {class: "muted", id: "series-of"}, "a cache hit: the trajectory of its original run ", runLink(d.series_of)) : null));
    if (d.error) where.append(...kids(h("p", {class: "err"}, d.error)));
    where.append(...kids(section("Bits per layer", d.heat_map && d.heat_map.blocks.length ? h("div", {id: "heat"}, heatMap(d.heat_map)) : h("p", {class: "muted"}, "no allocation recorded"))));
    const traj = h("div", {class: "row", id: "trajectory"});
    for (const [k, pts] of Object.entries(d.trajectory || {})) traj.append(...kids(lineChart(k, [{label: k, points: pts}], {xLabel: "generation"})));
    where.append(...kids(section("Fitness trajectory", Object.keys(d.trajectory || {}).length ? traj : h("p", {class: "muted"}, "no trajectory logged"))));
    if (d.table && d.table.length) {
      const cols = Object.keys(d.table[0]);
      where.append(...kids(section("Allocation beside uniform", table(cols, d.table.map((row) => cols.map((c) => typeof row[c] === "number" ? numTd(row[c]) : String(row[c] ?? "—"))), {id: "vs-uniform"}),
        h("div", {class: "row"}, ["test_token_ppl", "avg_bits"].filter((c) => d.table.some((row) => typeof row[c] === "number"))
          .map((c) => bars(c, d.table.map((row) => ({label: String(row.method), value: row[c]}))))))));
    }
  }

  const PAGES = {runs: pageRuns, run: pageRun, compare: pageCompare, artifacts: pageArtifacts, artifact: pageArtifact,
                 lineage: pageLineage, sweeps: pageSweeps, sweep: pageSweep, search: pageSearch};
  async function start() {
    try {
      await PAGES[PAGE]();
      if (REPORT && PAGE === "run" && DATA.search) drawSearch(app, DATA.search, false);
    } catch (e) { app.replaceChildren(...kids(h("p", {class: "err", id: "error"}, String(e.message || e)))); }
    body.dataset.ready = "1";
  }
  start();
})();
