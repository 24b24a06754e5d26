"""The report page: one HTML string with inline CSS, vanilla JavaScript and JSON data.

Nothing is loaded from anywhere: images are drawn on canvases from base64 pixel
arrays in the data, link figures are inline SVG. Stable hooks for tests and users:
``[data-entry="i,j"]`` on every clickable explained entry (heatmap marks, the entry
list, neighbour thumbnails), ``#heatmap-canvas`` (click any cell), ``#pair-view``
with ``#pair-similarity`` (its ``data-value`` holds the exact value), ``#pair-error``,
``#pair-sum`` and ``#pair-message``.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render"]

_CSS = r"""
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#f6f7f9; --card:#fff; --pos:#d62728; --neg:#1f4fd6; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { padding:16px 24px 8px; background:var(--card); border-bottom:1px solid var(--line); }
h1 { font-size:20px; margin:0 0 4px; } h2 { font-size:16px; margin:0 0 8px; } h3 { font-size:14px; margin:8px 0 4px; }
.muted { color:var(--muted); } .small { font-size:12px; }
#capped { margin:4px 0 0; padding-left:20px; } #capped li { margin:1px 0; }
.layout { display:grid; grid-template-columns:minmax(420px, 640px) minmax(480px, 1fr); gap:16px; padding:16px 24px; align-items:start; }
section.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.wide { margin:0 24px 16px; }
#heatmap-wrap { position:relative; user-select:none; }
#heatmap-canvas { position:absolute; image-rendering:pixelated; cursor:crosshair; }
#heatmap-marks { position:absolute; left:0; top:0; pointer-events:none; overflow:visible; }
#heatmap-marks .entry-mark { pointer-events:auto; cursor:pointer; }
#heatmap-marks .entry-mark:hover { stroke:#000; stroke-width:2; }
#heatmap-marks .selected { stroke:#e4002b; stroke-width:3; }  /* red: no viridis cell has it */
.legend { display:flex; align-items:center; gap:8px; margin-top:6px; font-size:12px; color:var(--muted); flex-wrap:wrap; }
.legend canvas { width:160px; height:10px; border:1px solid var(--line); }
.dot { display:inline-block; width:10px; height:10px; border-radius:50%; border:1.5px solid #fff; box-shadow:0 0 0 1px #888; vertical-align:middle; }
#cell-info { min-height:20px; font-size:12px; color:var(--muted); margin-top:4px; }
#pair-view { position:sticky; top:8px; }
#pair-message { padding:8px 10px; background:#fff8e1; border:1px solid #f1d48a; border-radius:6px; margin-bottom:8px; }
#pair-message.info { background:#eef3ff; border-color:#c6d4f5; }
.stats { display:flex; gap:16px; flex-wrap:wrap; margin:4px 0 8px; }
.stats b { font-variant-numeric:tabular-nums; }
.figure { position:relative; margin:4px 0; }
.figure canvas { position:absolute; image-rendering:pixelated; border:1px solid #999; }
.figure svg { position:absolute; left:0; top:0; pointer-events:none; overflow:visible; }
.maps { display:flex; gap:14px; flex-wrap:wrap; align-items:flex-start; }
.maps figure { margin:0; text-align:center; font-size:12px; color:var(--muted); }
.maps canvas { image-rendering:pixelated; border:1px solid #999; display:block; }
table { border-collapse:collapse; font-size:12px; }
th, td { padding:2px 6px; border-bottom:1px solid var(--line); text-align:right; font-variant-numeric:tabular-nums; }
th { position:sticky; top:0; background:#eef0f4; }
td.l, th.l { text-align:left; }
tr[data-entry] { cursor:pointer; } tr[data-entry]:hover { background:#eef3ff; } tr.selected { background:#fff6c8 !important; }
.scroll { max-height:360px; overflow:auto; border:1px solid var(--line); }
.queries { display:flex; flex-direction:column; gap:8px; }
.qrow { display:flex; gap:8px; align-items:flex-end; flex-wrap:wrap; }
.thumb { border:1px solid var(--line); background:#fff; border-radius:6px; padding:3px; font:inherit; font-size:11px; text-align:center; color:var(--fg); }
button.thumb { cursor:pointer; } button.thumb:hover { border-color:#6b8cff; }
.thumb canvas { display:block; image-rendering:pixelated; margin:0 auto 2px; }
.thumb.query { border-color:#333; }
.text-sample { max-width:220px; text-align:left; white-space:normal; }
.tokens td { width:22px; height:20px; padding:0; border:1px solid #fff; }
.tokens th { font-weight:normal; background:none; position:static; }
.tokens th.col { height:90px; vertical-align:bottom; padding:0; }
.tokens th.col div { writing-mode:vertical-rl; transform:rotate(180deg); white-space:nowrap; margin:0 auto; }
#word-maps { margin:4px 0; }
#word-maps canvas { position:static; border:1px solid #999; }  /* in a flow, not placed as the link figure's */
#word-maps .overlay { position:relative; }
#word-maps .overlay canvas.over { position:absolute; left:0; top:0; opacity:0.6; }
.audit-groups { display:flex; flex-wrap:wrap; gap:12px; }
.audit-card { border:1px solid var(--line); border-radius:6px; padding:6px; font-size:12px; }
.audit-card .maps canvas { width:96px; }
.audit-map { position:relative; }
.audit-map .hl { position:absolute; border:2px solid #f5c400; pointer-events:none; }
.note { color:var(--muted); font-style:italic; }
"""

_JS = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("report-data").textContent);
var $ = function (id) { return document.getElementById(id); };
function el(tag, attrs, text) {
  var e = document.createElement(tag);
  if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
var SVGNS = "http" + "://www.w3.org/2000/svg";  // a namespace name, never fetched
function sv(tag, attrs) { var e = document.createElementNS(SVGNS, tag); for (var k in attrs) e.setAttribute(k, attrs[k]); return e; }
function bytes(b64) { var s = atob(b64), a = new Uint8Array(s.length); for (var i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }
function f4(v) { return Number(v).toFixed(4); }
function fe(v) { return Number(v).toExponential(2); }
function fg(v) { return Number(v).toPrecision(3); }

// colour maps
var VIR = [[68,1,84],[71,44,122],[59,81,139],[44,113,142],[33,144,141],[39,173,129],[92,200,99],[170,220,50],[253,231,37]];
function viridis(t) {
  t = Math.min(1, Math.max(0, t)) * (VIR.length - 1);
  var i = Math.min(VIR.length - 2, Math.floor(t)), f = t - i, a = VIR[i], b = VIR[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}
function bwr(v, vmax) {  // blue (negative) - white - red (positive)
  var t = vmax > 0 ? Math.max(-1, Math.min(1, v / vmax)) : 0;
  return t >= 0 ? [255, 255 * (1 - t), 255 * (1 - t)] : [255 * (1 + t), 255 * (1 + t), 255];
}
function css(c) { return "rgb(" + Math.round(c[0]) + "," + Math.round(c[1]) + "," + Math.round(c[2]) + ")"; }
function paint(canvas, h, w, colour) {  // colour(r, c) -> [r, g, b]
  canvas.width = w; canvas.height = h;
  var ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h), px = img.data;
  for (var r = 0; r < h; r++) for (var c = 0; c < w; c++) {
    var o = 4 * (r * w + c), v = colour(r, c); px[o] = v[0]; px[o + 1] = v[1]; px[o + 2] = v[2]; px[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}
function sampleCanvas(side, idx, size) {  // an input sample as a canvas of about size px
  var s = D.samples[side][String(idx)];
  if (s === undefined || typeof s === "string") return null;
  var px = bytes(s.data), cv = el("canvas");
  paint(cv, s.h, s.w, function (r, c) {
    var o = (r * s.w + c) * s.c;
    return s.c === 1 ? [px[o], px[o], px[o]] : [px[o], px[o + 1], px[o + 2]];
  });
  var sc = size / Math.max(s.h, s.w);
  cv.style.width = (s.w * sc) + "px"; cv.style.height = (s.h * sc) + "px";
  return cv;
}
function named(side, i) { var s = (D.sample_names || {})[side] || {}, n = s[String(i)]; return n ? " " + n : ""; }
// a cross-modal kernel names its sides by modality, and a side whose bands are its texts quotes them
var CX = D.cross || null, WORD = {images: "image", texts: "text"};
function band(side, n) { return n === "" ? "" : (CX && CX.text_bands === side ? " \u201c" + n + "\u201d" : " (class " + n + ")"); }
function rowWord() { return CX ? WORD[CX.rows] : (D.same ? "sample" : "row"); }
function colWord() { return CX ? (CX.cols === "texts" ? "prompt" : "image") : (D.same ? "sample" : "train"); }
function rowName(i) { return rowWord() + " " + i + named("rows", i) + band("rows", D.row_names[D.row_class[i]]); }
function colName(j) { return colWord() + " " + j + named("cols", j) + band("cols", D.col_names[D.col_class[j]]); }
function rowLabel(i) { return rowWord() + " " + i; }
function key(i, j) { return i + "," + j; }

// ------------------------------------------------------------ header
document.title = D.title;
$("title").textContent = D.title;
$("summary").textContent = (CX ? "Cross-modal kernel K(" + CX.rows + ", " + (CX.cols === "texts" ? "prompts" : "images") + ") of " : "Kernel K(X, X_fit) of ") + D.n_rows + " x " + D.n_cols + " entries (" + D.kernel +
  ", explained with " + (D.method || "BiLRP") + "); " + D.entries.length + " entries precomputed; " +
  "computed in " + D.seconds + " s." + (CX && CX.text_bands ? " The " + (CX.text_bands === "cols" ? "columns" : "rows") + " are the texts, in the order given." : " Rows sorted by class, then columns.");
$("heatmap-axes").textContent = "Rows: the " + D.n_rows + (CX ? " " + CX.rows + " X" : D.same ? " training samples" : " samples X") +
  "; columns: the " + D.n_cols + (CX ? " " + colWord() + "s (X_fit_)" : " training samples (X_fit_)") +
  (CX && CX.text_bands ? "; the texts label their axis." : D.row_names.length > 1 || D.col_names.length > 1 ? "; both sorted by class (labels on the axes)." : ".");
var capUl = $("capped");
if (!D.capped.length) capUl.appendChild(el("li", null, "nothing: every entry of the kernel is shown and explained."));
D.capped.forEach(function (c) { capUl.appendChild(el("li", null, c)); });
D.notes.forEach(function (c) { capUl.appendChild(el("li", {"class": "note"}, c)); });

// ------------------------------------------------------------ entries index
var byKey = {}, byCell = {};
D.entries.forEach(function (e) {
  byKey[key(e.i, e.j)] = e;
  var ck = e.cell[0] + "," + e.cell[1];
  (byCell[ck] = byCell[ck] || []).push(e);
});

// ------------------------------------------------------------ heatmap
var HM = D.heatmap, ML = 34, MT = 22, LABEL_CHARS = 28;
function short(t) { return t.length > LABEL_CHARS ? t.slice(0, LABEL_CHARS - 1) + "\u2026" : t; }
function longest(names) { return names.reduce(function (m, n) { return Math.max(m, short(n).length); }, 0); }
if (CX && CX.text_bands === "cols") MT = 12 + 5 * longest(D.col_names);  // prompts written slanted above
if (CX && CX.text_bands === "rows") ML = 10 + 6 * longest(D.row_names);
var wrap = $("heatmap-wrap"), canvas = $("heatmap-canvas"), marks = $("heatmap-marks");
var side = 560 - (ML - 34), cw, ch;  // wide row labels take from the heatmap, not the card
(function drawHeatmap() {
  var q = bytes(HM.data);
  paint(canvas, HM.rows, HM.cols, function (r, c) { return viridis(q[r * HM.cols + c] / 255); });
  var aspect = HM.rows / HM.cols, W = side, Hh = side * aspect;
  if (Hh > side) { Hh = side; W = side / aspect; }
  W = Math.max(W, 120); Hh = Math.max(Hh, 60);
  cw = W / HM.cols; ch = Hh / HM.rows;
  canvas.style.left = ML + "px"; canvas.style.top = MT + "px";
  canvas.style.width = W + "px"; canvas.style.height = Hh + "px";
  wrap.style.width = (ML + W + 4) + "px"; wrap.style.height = (MT + Hh + 4) + "px";
  marks.setAttribute("width", ML + W + 4); marks.setAttribute("height", MT + Hh + 4);
  // class bands: boundaries and names
  function cellOf(edges, pos) { var lo = 0, hi = edges.length - 1; while (hi - lo > 1) { var m = (lo + hi) >> 1; if (edges[m] <= pos) lo = m; else hi = m; } return lo; }
  var g = sv("g", {"class": "bands"});
  D.row_bands.forEach(function (b, k) {
    var y0 = MT + cellOf(HM.row_edges, b[1]) * ch, y1 = MT + (cellOf(HM.row_edges, b[2] - 1) + 1) * ch;
    if (k > 0) g.appendChild(sv("line", {x1: ML, x2: ML + W, y1: y0, y2: y0, stroke: "#fff", "stroke-opacity": 0.55, "stroke-width": 0.8}));
    if (b[0] !== "") { var t = sv("text", {x: ML - 4, y: (y0 + y1) / 2 + 4, "text-anchor": "end", "font-size": 11, fill: "#333", "class": "row-label"}); t.textContent = short(b[0]); g.appendChild(t); }
  });
  D.col_bands.forEach(function (b, k) {
    var x0 = ML + cellOf(HM.col_edges, b[1]) * cw, x1 = ML + (cellOf(HM.col_edges, b[2] - 1) + 1) * cw;
    if (k > 0) g.appendChild(sv("line", {x1: x0, x2: x0, y1: MT, y2: MT + Hh, stroke: "#fff", "stroke-opacity": 0.55, "stroke-width": 0.8}));
    if (b[0] !== "") {
      var slant = CX && CX.text_bands === "cols", x = (x0 + x1) / 2;
      var t = sv("text", {x: x, y: MT - 6, "text-anchor": slant ? "start" : "middle", "font-size": 11, fill: "#333", "class": "col-label",
        transform: slant ? "rotate(-50 " + x + " " + (MT - 6) + ")" : ""});
      t.textContent = short(b[0]); g.appendChild(t);
    }
  });
  marks.appendChild(g);
  var colours = {neighbour: "#ff7f0e", block: "#ffffff", given: "#e377c2"};
  D.entries.forEach(function (e) {
    var c = sv("circle", {cx: ML + (e.cell[1] + 0.5) * cw, cy: MT + (e.cell[0] + 0.5) * ch, r: 3.2,
      fill: colours[e.src] || "#fff", "fill-opacity": e.src === "block" ? 0.35 : 0.95, stroke: "#222", "stroke-width": 0.8,
      "class": "entry-mark", "data-entry": key(e.i, e.j), "data-id": e.id});
    var tt = sv("title", {}); tt.textContent = rowName(e.i) + " x " + colName(e.j) + ": k = " + f4(e.k);
    c.appendChild(tt);
    c.addEventListener("click", function (ev) { ev.stopPropagation(); showEntry(e); });
    marks.appendChild(c);
  });
  var lg = $("legend-bar"); paint(lg, 1, 64, function (r, c) { return viridis(c / 63); });
  $("legend-min").textContent = f4(HM.vmin); $("legend-max").textContent = f4(HM.vmax);
})();
function cellAt(ev) {
  var rect = canvas.getBoundingClientRect();
  var c = Math.floor((ev.clientX - rect.left) / rect.width * HM.cols), r = Math.floor((ev.clientY - rect.top) / rect.height * HM.rows);
  if (r < 0 || c < 0 || r >= HM.rows || c >= HM.cols) return null;
  return [r, c];
}
function cellText(cell) {
  var r0 = HM.row_edges[cell[0]], r1 = HM.row_edges[cell[0] + 1], c0 = HM.col_edges[cell[1]], c1 = HM.col_edges[cell[1] + 1];
  var q = bytes(HM.data)[cell[0] * HM.cols + cell[1]] / 255, v = HM.vmin + q * (HM.vmax - HM.vmin);
  var i = D.row_order[r0], j = D.col_order[c0];
  var what = (r1 - r0 === 1 && c1 - c0 === 1) ? "entry (" + i + ", " + j + ")" :
    "cell of " + (r1 - r0) + " x " + (c1 - c0) + " entries, from (" + i + ", " + j + ")";
  return {text: what + ": " + rowName(i) + " x " + colName(j) + ", k \u2248 " + f4(v) + (r1 - r0 > 1 || c1 - c0 > 1 ? " (mean)" : ""), i: i, j: j};
}
canvas.addEventListener("mousemove", function (ev) { var c = cellAt(ev); $("cell-info").textContent = c ? cellText(c).text : ""; });
canvas.addEventListener("click", function (ev) {
  var c = cellAt(ev); if (!c) return;
  var found = byCell[c[0] + "," + c[1]];
  if (found && found.length) { showEntry(found[0], found); return; }
  var t = cellText(c);
  notPrecomputed(t.i, t.j, t.text);
});

// ------------------------------------------------------------ pair view
var selected = null;
function message(text, info) {
  var m = $("pair-message"); m.textContent = text; m.hidden = false; m.className = info ? "info" : "";
}
function notPrecomputed(i, j, where) {
  $("pair-content").hidden = true;
  message("No explanation was precomputed for " + where + ". Include " + (where.indexOf("cell of") === 0 ? "its first entry" : "it") + " with write_report(..., pairs=[(" + i + ", " + j +
    ")]), or raise max_entries (skbilrp report --max-entries N) so that more entries are sampled.");
  select(null);
}
function select(e) {
  document.querySelectorAll(".selected").forEach(function (n) { n.classList.remove("selected"); });
  selected = e;
  if (!e) return;
  document.querySelectorAll('[data-id="' + e.id + '"]').forEach(function (n) { n.classList.add("selected"); });
}
function showEntry(e, others) {
  select(e);
  var m = $("pair-message");
  if (others && others.length > 1) {
    m.hidden = false; m.className = "info"; m.textContent = "";
    m.appendChild(document.createTextNode(others.length + " precomputed entries fall in this heatmap cell: "));
    others.forEach(function (o) {
      var a = el("a", {href: "#", "data-entry": key(o.i, o.j)}, "(" + o.i + ", " + o.j + ")");
      a.addEventListener("click", function (ev) { ev.preventDefault(); showEntry(o, others); });
      m.appendChild(a); m.appendChild(document.createTextNode(" "));
    });
  } else { m.hidden = true; }
  $("pair-content").hidden = false;
  $("pair-title").textContent = rowName(e.i) + " \u00d7 " + colName(e.j) + " \u2014 " + e.detail;
  var s = $("pair-similarity"); s.textContent = f4(e.k); s.setAttribute("data-value", String(e.k));
  $("pair-sum").textContent = f4(e.sum);
  var pe = $("pair-error"); pe.textContent = fe(e.err); pe.setAttribute("data-value", String(e.err));
  $("pair-view").setAttribute("data-shown", key(e.i, e.j));
  if (D.kind === "cross") drawCross(e); else if (D.kind === "text") drawTokens(e); else drawLinks(e);
}

function drawLinks(e) {
  var fig = $("pair-figure"); fig.innerHTML = "";
  var ca = sampleCanvas("rows", e.i, 1), cb = sampleCanvas("cols", e.j, 1);
  var geoA = D.geometry[0], geoB = D.geometry[1];
  var S = 230, G = 70, bend = 0.3;
  function dims(s, geo) { var src = s || {height: geo.h, width: geo.w}; var h = s ? parseFloat(s.style.height) : geo.h, w = s ? parseFloat(s.style.width) : geo.w; var k = S / Math.max(h, w); return [w * k, h * k]; }
  var da = dims(ca, geoA), db = dims(cb, geoB);
  var xb = da[0] + G, lowest = 0;  // headroom: the highest arc peak (a quadratic peaks halfway to its control point)
  e.links.forEach(function (l) {
    var pa = geoA.centers[l[0]], pb = geoB.centers[l[1]], x1 = pa[0] * da[0], y1 = pa[1] * da[1], x2 = xb + pb[0] * db[0], y2 = pb[1] * db[1];
    lowest = Math.min(lowest, (y1 + y2) / 2 - 0.5 * bend * Math.hypot(x2 - x1, y2 - y1));
  });
  var T = Math.ceil(-lowest) + 6;
  fig.style.width = (xb + db[0] + 2) + "px"; fig.style.height = (T + Math.max(da[1], db[1]) + 4) + "px";
  [[ca, 0, da], [cb, xb, db]].forEach(function (t) {
    var c = t[0] || el("canvas");
    c.style.left = t[1] + "px"; c.style.top = T + "px"; c.style.width = t[2][0] + "px"; c.style.height = t[2][1] + "px";
    fig.appendChild(c);
  });
  var svg = sv("svg", {width: xb + db[0] + 2, height: T + Math.max(da[1], db[1]) + 4});
  [[geoA, 0, da], [geoB, xb, db]].forEach(function (t) {  // patch grid
    var geo = t[0]; if (!geo.grid) return;
    for (var k = 1; k < geo.grid[1]; k++) { var x = t[1] + t[2][0] * k / geo.grid[1]; svg.appendChild(sv("line", {x1: x, x2: x, y1: T, y2: T + t[2][1], stroke: "#fff", "stroke-opacity": 0.45, "stroke-width": 0.6})); }
    for (var k2 = 1; k2 < geo.grid[0]; k2++) { var y = T + t[2][1] * k2 / geo.grid[0]; svg.appendChild(sv("line", {x1: t[1], x2: t[1] + t[2][0], y1: y, y2: y, stroke: "#fff", "stroke-opacity": 0.45, "stroke-width": 0.6})); }
  });
  var links = e.links.slice().sort(function (a, b) { return Math.abs(a[2]) - Math.abs(b[2]); });  // weakest first
  var scale = links.reduce(function (m, l) { return Math.max(m, Math.abs(l[2])); }, 0) || 1;
  links.forEach(function (l) {
    var pa = geoA.centers[l[0]], pb = geoB.centers[l[1]];
    var x1 = pa[0] * da[0], y1 = T + pa[1] * da[1], x2 = xb + pb[0] * db[0], y2 = T + pb[1] * db[1];
    var d = Math.hypot(x2 - x1, y2 - y1), cx = (x1 + x2) / 2, cy = (y1 + y2) / 2 - bend * d;
    var a = Math.abs(l[2]) / scale, col = l[2] > 0 ? "#d62728" : "#1f4fd6";
    var p = sv("path", {d: "M" + x1 + " " + y1 + " Q" + cx + " " + cy + " " + x2 + " " + y2, fill: "none", stroke: col,
      "stroke-width": 0.8 + 2.7 * a, "stroke-opacity": Math.max(0.06, a), "stroke-linecap": "round", "class": "link"});
    svg.appendChild(p);
    [[x1, y1], [x2, y2]].forEach(function (q) { svg.appendChild(sv("circle", {cx: q[0], cy: q[1], r: 1.8, fill: col, "fill-opacity": Math.max(0.06, a)})); });
  });
  fig.appendChild(svg);
  // marginal maps
  var mg = $("pair-marginals"); mg.innerHTML = "";
  var vmax = 0; e.ma.concat(e.mb).forEach(function (v) { vmax = Math.max(vmax, Math.abs(v)); });
  [[e.ma, geoA, "rows", e.i, "first-order relevance of " + rowLabel(e.i)], [e.mb, geoB, "cols", e.j, "of " + colName(e.j).split(" (")[0]]].forEach(function (t) {
    var geo = t[1], f = el("figure"), cv = groupMap(geo, t[0], vmax, 120);
    if (!cv) return;
    f.appendChild(cv); f.appendChild(el("figcaption", null, t[4])); mg.appendChild(f);
  });
  var leg = el("figure"); leg.appendChild(el("div", {"class": "small"}, "red raises the similarity, blue lowers it; link opacity and width \u221d |relevance|; marginal scale \u00b1" + fg(vmax)));
  mg.appendChild(leg);
  topPairs(e.links, function (g) { return gname(geoA, g); }, function (g) { return gname(geoB, g); },
    ["group of " + rowLabel(e.i), "group of " + colName(e.j).split(" (")[0]]);
  $("pair-top-caption").textContent = "strongest of the " + e.links.length + " embedded group pairs (of " + (geoA.centers.length * geoB.centers.length) + ")";
}

function drawTokens(e) {
  var fig = $("pair-figure"); fig.innerHTML = ""; fig.style.width = ""; fig.style.height = "";
  $("pair-marginals").innerHTML = "";
  var texts = el("div", {"class": "small"});
  texts.appendChild(el("div", null, "A: " + (D.samples.rows[String(e.i)] || "")));
  texts.appendChild(el("div", null, "B: " + (D.samples.cols[String(e.j)] || "")));
  fig.appendChild(texts);
  var vmax = absMax(e.rel);
  fig.appendChild(matrixTable(e.ta, e.tb, e.rel, vmax, "token-matrix"));
  if (e.ntok[0] > e.ta.length || e.ntok[1] > e.tb.length) fig.appendChild(el("div", {"class": "note"}, "matrix cut to the first " + e.ta.length + " x " + e.tb.length + " of " + e.ntok[0] + " x " + e.ntok[1] + " tokens (max_tokens)"));
  fig.appendChild(el("div", {"class": "small muted"}, "token \u00d7 token relevance; red raises the similarity, blue lowers it; scale \u00b1" + fg(vmax)));
  topPairs(e.top, function (a) { return e.ta[a] || ("token " + a); }, function (b) { return e.tb[b] || ("token " + b); });
  $("pair-top-caption").textContent = "strongest token pairs";
}

// shared by the pair views: group maps, names, relevance matrices, strongest pairs
function absMax(rows) { var m = 0; rows.forEach(function (r) { r.forEach(function (v) { m = Math.max(m, Math.abs(v)); }); }); return m; }
function groupMap(geo, values, vmax, size) {  // one value per group, painted over its positions (null: no 2-D layout)
  var cv = el("canvas");
  if (!geo) return null;
  if (geo.grid) paint(cv, geo.grid[0], geo.grid[1], function (r, c) { return bwr(values[r * geo.grid[1] + c], vmax); });
  else if (geo.labels) paint(cv, geo.h, geo.w, function (r, c) { return bwr(values[geo.labels[r * geo.w + c]], vmax); });
  else return null;
  var k = size / Math.max(cv.width, cv.height); cv.style.width = cv.width * k + "px"; cv.style.height = cv.height * k + "px";
  return cv;
}
function gname(geo, g) { if (!geo) return "group " + g; if (geo.grid) return "patch (" + Math.floor(g / geo.grid[1]) + ", " + (g % geo.grid[1]) + ")"; if (geo.labels && geo.labels.length === geo.h * geo.w) { var k = geo.labels.indexOf(g); if (k >= 0 && geo.labels.every(function (v, n) { return v === n; })) return "pixel (" + Math.floor(k / geo.w) + ", " + (k % geo.w) + ")"; } return "group " + g; }
function matrixTable(rowLabels, colLabels, rel, vmax, id) {  // labelled rows x columns of relevance, coloured
  var t = el("table", {"class": "tokens", id: id}), hr = el("tr"); hr.appendChild(el("th"));
  colLabels.forEach(function (tok) { var th = el("th", {"class": "col"}); th.appendChild(el("div", null, tok)); hr.appendChild(th); });
  t.appendChild(hr);
  rel.forEach(function (row, a) {
    var tr = el("tr"); tr.appendChild(el("th", {"class": "l"}, rowLabels[a]));
    row.forEach(function (v, b) { var td = el("td", {title: rowLabels[a] + " \u00d7 " + colLabels[b] + ": " + fg(v)}); td.style.background = css(bwr(v, vmax)); tr.appendChild(td); });
    t.appendChild(tr);
  });
  return t;
}
function topPairs(list, nameA, nameB, header) {  // [a, b, relevance] rows of #pair-top, strongest first
  var top = $("pair-top"); top.innerHTML = "";
  if (header) { var hr = el("tr"); ["", header[0], header[1], "relevance"].forEach(function (h, k) { hr.appendChild(el("th", k ? null : {"class": "l"}, h)); }); top.appendChild(hr); }
  list.slice(0, 8).forEach(function (l, k) {
    var tr = el("tr"); tr.appendChild(el("td", {"class": "l"}, String(k + 1)));
    tr.appendChild(el("td", null, nameA(l[0]))); tr.appendChild(el("td", null, nameB(l[1])));
    var td = el("td", null, (l[2] > 0 ? "+" : "") + fg(l[2])); td.style.color = l[2] > 0 ? "#b01515" : "#1f3fb0"; tr.appendChild(td);
    top.appendChild(tr);
  });
}

function drawCross(e) {  // the image with one patch heatmap per word over it, and the patch x word matrix
  var fig = $("pair-figure"), geo = CX.geometry; fig.innerHTML = ""; fig.style.width = ""; fig.style.height = "";
  var imgSide = CX.image_side, txtSide = imgSide === "rows" ? "cols" : "rows";
  var ii = imgSide === "rows" ? e.i : e.j, ti = imgSide === "rows" ? e.j : e.i;
  fig.appendChild(el("div", {"class": "small", id: "pair-text"}, "text: " + (D.samples[txtSide][String(ti)] || "")));
  var vmax = absMax(e.rel), maps = el("div", {"class": "maps", id: "word-maps"});
  var own = el("figure"), image = sampleCanvas(imgSide, ii, 120);
  if (image) { own.appendChild(image); own.appendChild(el("figcaption", null, "image " + ii + named(imgSide, ii))); maps.appendChild(own); }
  e.tok.forEach(function (word, w) {
    var column = e.rel.map(function (r) { return r[w]; }), hm = groupMap(geo, column, vmax, 120);
    if (!hm) return;
    var f = el("figure", {"data-word": w}), holder = el("div", {"class": "overlay"}), under = sampleCanvas(imgSide, ii, 120);
    if (under) { holder.appendChild(under); hm.className = "over"; }
    holder.appendChild(hm); f.appendChild(holder);
    var sum = column.reduce(function (a, v) { return a + v; }, 0);
    f.appendChild(el("figcaption", e.spec[w] ? {"class": "note"} : null, word + " (\u03a3 " + fg(sum) + ")"));
    maps.appendChild(f);
  });
  fig.appendChild(maps);
  if (e.ntok > e.tok.length) fig.appendChild(el("div", {"class": "note"}, "cut to the first " + e.tok.length + " of " + e.ntok + " words (max_tokens)"));
  fig.appendChild(el("div", {"class": "small muted"}, "patch relevance of each word over the image (italic: special tokens); red raises the similarity, blue lowers it; scale \u00b1" + fg(vmax)));
  var mg = $("pair-marginals"); mg.innerHTML = "";
  mg.appendChild(matrixTable(e.rel.map(function (_, g) { return gname(geo, g); }), e.tok, e.rel, vmax, "patch-word-matrix"));
  topPairs(e.top, function (g) { return gname(geo, g); }, function (w) { return e.tok[w]; }, ["patch", "word"]);
  $("pair-top-caption").textContent = "strongest patch \u00d7 word pairs";
}

// ------------------------------------------------------------ entry list
function entryRow(e, cols) {
  var tr = el("tr", {"data-entry": key(e.i, e.j), "data-id": e.id});
  cols.forEach(function (c, k) { tr.appendChild(el("td", k === cols.length - 1 ? {"class": "l"} : null, c)); });
  tr.addEventListener("click", function () { showEntry(e); $("pair-view").scrollIntoView({block: "nearest"}); });
  return tr;
}
(function entryList() {
  var t = $("entry-list"), hr = el("tr");
  ["row", "column", "k", "sum R", "error", "source"].forEach(function (h, k) { hr.appendChild(el("th", k === 5 ? {"class": "l"} : null, h)); });
  t.appendChild(hr);
  D.entries.forEach(function (e) { t.appendChild(entryRow(e, [rowName(e.i), colName(e.j), f4(e.k), f4(e.sum), fe(e.err), e.detail])); });
})();

// ------------------------------------------------------------ queries
(function queries() {
  var box = $("query-list");
  if (CX) {
    $("queries-title").textContent = "Nearest " + colWord() + "s of chosen " + rowWord() + "s (zero-shot top-" + ((D.queries[0] || {neighbours: []}).neighbours.length) + ")";
    $("queries-help").textContent = "Each " + rowWord() + " with the " + colWord() + "s of largest similarity; click one for the explanation of that similarity.";
  }
  if (!D.queries.length) { box.appendChild(el("p", {"class": "note"}, "no queries")); return; }
  D.queries.forEach(function (q) {
    var row = el("div", {"class": "qrow", "data-query": q.row});
    var qb = el("div", {"class": "thumb query"}), qc = sampleCanvas("rows", q.row, 56);
    if (qc) qb.appendChild(qc); else qb.appendChild(el("div", {"class": "text-sample"}, D.samples.rows[String(q.row)] || ""));
    qb.appendChild(el("div", null, "query " + rowName(q.row).replace("row ", "")));
    row.appendChild(qb);
    q.neighbours.forEach(function (j, r) {
      var e = byKey[key(q.row, j)]; if (!e) return;
      var b = el("button", {"class": "thumb", "data-entry": key(q.row, j), "data-id": e.id, type: "button"});
      var c = sampleCanvas("cols", j, 56);
      if (c) b.appendChild(c); else b.appendChild(el("div", {"class": "text-sample"}, D.samples.cols[String(j)] || ""));
      b.appendChild(el("div", null, "#" + (r + 1) + " " + colName(j).replace("train ", "").replace("sample ", "")));
      b.appendChild(el("div", null, "k = " + f4(e.k)));
      b.addEventListener("click", function () { showEntry(e); $("pair-view").scrollIntoView({block: "nearest"}); });
      row.appendChild(b);
    });
    box.appendChild(row);
  });
})();

// ------------------------------------------------------------ audit
(function audit() {
  var box = $("audit-body"), A = D.audit;
  if (!A) {
    // the builder's own reason (e.g. a text kernel) beats the generic hint
    var why = (D.notes || []).filter(function (n) { return n.indexOf("no dataset audit") === 0; })[0];
    box.appendChild(el("p", {"class": "note"}, why ? why.charAt(0).toUpperCase() + why.slice(1) + "." : "No dataset audit in this report (audit=None, or skbilrp.audits.audit_dataset was not available). Pass audit=\"auto\" or audit=audit_dataset(...)."));
    return;
  }
  var head = el("p", {"class": "small"});
  head.textContent = "Entries aggregated: " + (A.entries || "?") + ". For each group: where the similarity between its members comes from (mean share of the similarity per position, summing to 1) next to where its input signal lies (mean share of |x|). Regions carrying far more similarity than signal are listed as suspicious.";
  box.appendChild(head);
  var groups = A.groups || Object.keys(A.relevance_maps || {});
  var cards = el("div", {"class": "audit-groups"}), cardOf = {};
  function grid(m) { return Array.isArray(m) && Array.isArray(m[0]) ? m : null; }
  groups.forEach(function (g) {
    var gk = String(g), rm = grid((A.relevance_maps || {})[gk]), sm = grid((A.signal_maps || {})[gk]);
    var card = el("div", {"class": "audit-card", "data-group": gk}); card.appendChild(el("h3", null, "group " + gk));
    var maps = el("div", {"class": "maps"});
    [[rm, "similarity share", true], [sm, "signal share", false]].forEach(function (t) {
      if (!t[0]) return;
      var m = t[0], h = m.length, w = m[0].length, vmax = 0;
      m.forEach(function (r) { r.forEach(function (v) { vmax = Math.max(vmax, Math.abs(v)); }); });
      var f = el("figure"), holder = el("div", {"class": "audit-map"}), cv = el("canvas");
      paint(cv, h, w, function (r, c) { var v = m[r][c]; return t[2] ? bwr(v, vmax) : [255 - 255 * v / (vmax || 1), 255 - 255 * v / (vmax || 1), 255 - 255 * v / (vmax || 1)]; });
      cv.style.width = "96px"; cv.style.height = (96 * h / w) + "px";
      holder.appendChild(cv); f.appendChild(holder); f.appendChild(el("figcaption", null, t[1])); maps.appendChild(f);
      if (t[2]) cardOf[gk] = {holder: holder, h: h, w: w};
    });
    card.appendChild(maps);
    var np = (A.n_pairs || {})[gk], ce = (A.conservation_error || {})[gk];
    card.appendChild(el("div", null, (np !== undefined ? np + " entries" : "") + (ce !== undefined && ce !== null ? "; conservation error \u2264 " + fe(ce) : "")));
    cards.appendChild(card);
  });
  box.appendChild(cards);
  var left = (D.notes || []).filter(function (n) { return n.indexOf("dataset audit:") === 0; })[0];
  if (left) box.appendChild(el("p", {"class": "note"}, left.charAt(0).toUpperCase() + left.slice(1) + "."));
  box.appendChild(el("h3", null, "Suspicious regions"));
  if (!groups.length) { box.appendChild(el("p", {"class": "note"}, "none: no group had entries to aggregate, so nothing was audited")); return; }
  var sus = A.suspicious || [];
  if (!sus.length) { box.appendChild(el("p", {"class": "note"}, "none above the audit's ratio threshold")); return; }
  var t = el("table", {id: "suspicious"}), hr = el("tr");
  ["group", "region", "rows", "columns", "similarity share", "signal share", "ratio"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
  t.appendChild(hr);
  function span(s) { if (Array.isArray(s)) return s[0] + "\u2013" + (s[1] - 1); if (s && typeof s === "object") return s.start + "\u2013" + (s.stop - 1); return String(s); }
  sus.forEach(function (s, k) {
    var sl = s.slices || [[0, 0], [0, 0]];
    var tr = el("tr", {"data-suspicious": k});
    [String(s.group), String(s.region), span(sl[0]), span(sl[1]), fg(s.share), fg(s.signal_share), fg(s.ratio)].forEach(function (c) { tr.appendChild(el("td", null, c)); });
    tr.style.cursor = "pointer";
    tr.addEventListener("click", function () {
      document.querySelectorAll(".audit-map .hl").forEach(function (n) { n.remove(); });
      var c = cardOf[String(s.group)]; if (!c) return;
      var r0 = Array.isArray(sl[0]) ? sl[0][0] : sl[0].start, r1 = Array.isArray(sl[0]) ? sl[0][1] : sl[0].stop;
      var c0 = Array.isArray(sl[1]) ? sl[1][0] : sl[1].start, c1 = Array.isArray(sl[1]) ? sl[1][1] : sl[1].stop;
      var px = 96 / c.w, hl = el("div", {"class": "hl"});
      hl.style.left = (c0 * px) + "px"; hl.style.top = (r0 * px) + "px"; hl.style.width = ((c1 - c0) * px) + "px"; hl.style.height = ((r1 - r0) * px) + "px";
      c.holder.appendChild(hl); c.holder.scrollIntoView({block: "nearest"});
    });
    t.appendChild(tr);
  });
  var sc = el("div", {"class": "scroll"}); sc.appendChild(t); box.appendChild(sc);
  sus.forEach(function (s) { var c = cardOf[String(s.group)]; if (c) c.holder.parentNode.parentNode.parentNode.style.borderColor = "#f5c400"; });
})();

// ------------------------------------------------------------ conservation
(function conservation() {
  var C = D.conservation, box = $("conservation-body");
  box.appendChild(el("p", null, "Each explanation should sum to the kernel value it explains; what it does not is the conservation error k \u2212 \u03a3R (biases and stabilisers absorb it). Over the " + C.n + " precomputed entries: largest |error| " + fe(C.max_abs) + ", mean " + fe(C.mean_abs) + ", largest relative to |k| " + fe(C.max_rel) + "."));
  if (D.audit && D.audit.conservation_error) {
    var parts = Object.keys(D.audit.conservation_error).map(function (g) { var v = D.audit.conservation_error[g]; return g + ": " + (v === null ? "?" : fe(v)); });
    box.appendChild(el("p", {"class": "small"}, "Audit, largest relative error per group: " + parts.join(", ")));
  }
  if (!C.worst.length) return;
  var t = el("table", {id: "conservation-worst"}), hr = el("tr");
  ["row", "column", "k", "sum R", "error", "entry"].forEach(function (h) { hr.appendChild(el("th", null, h)); }); t.appendChild(hr);
  C.worst.forEach(function (k) { var e = D.entries[k]; t.appendChild(entryRow(e, [rowName(e.i), colName(e.j), f4(e.k), f4(e.sum), fe(e.err), e.detail])); });
  box.appendChild(t);
})();

// first view: the first neighbour pair, or the first entry
if (D.entries.length) showEntry(D.entries[0]); else message("No entry was explained (max_entries=0).");
document.body.setAttribute("data-ready", "1");
})();
"""

_BODY = r"""
<header>
  <h1 id="title"></h1>
  <p id="summary" class="muted"></p>
  <details id="caps" open><summary>What was capped (precomputed and embedded, not everything)</summary><ul id="capped"></ul></details>
</header>
<div class="layout">
  <section class="card" id="kernel-panel">
    <h2>Kernel heatmap</h2>
    <div class="small muted">Click a marked entry (or any cell) to see its BiLRP explanation.</div>
    <div id="heatmap-wrap"><canvas id="heatmap-canvas"></canvas><svg id="heatmap-marks"></svg></div>
    <div class="legend"><span id="legend-min"></span><canvas id="legend-bar"></canvas><span id="legend-max"></span>
      <span><span class="dot" style="background:#ff7f0e"></span> neighbour pair</span>
      <span><span class="dot" style="background:rgba(255,255,255,.35)"></span> class-block sample</span>
      <span><span class="dot" style="background:#e377c2"></span> given pair</span></div>
    <div id="heatmap-axes" class="small muted"></div>
    <div id="cell-info"></div>
  </section>
  <section class="card" id="pair-view">
    <h2>Pair explanation</h2>
    <div id="pair-message" hidden></div>
    <div id="pair-content" hidden>
      <div id="pair-title" class="small"></div>
      <div class="stats">
        <span>similarity k = <b id="pair-similarity"></b></span>
        <span>sum of relevance &Sigma;R = <b id="pair-sum"></b></span>
        <span>conservation error k &minus; &Sigma;R = <b id="pair-error"></b></span>
      </div>
      <div id="pair-figure" class="figure"></div>
      <div id="pair-marginals" class="maps"></div>
      <h3 id="pair-top-caption"></h3>
      <table id="pair-top"></table>
    </div>
  </section>
</div>
<section class="card wide" id="queries"><h2 id="queries-title">Nearest neighbours of chosen queries</h2>
  <div class="small muted" id="queries-help">Each query with its nearest training samples by kernel-induced distance; click one for the explanation of that similarity.</div>
  <div id="query-list" class="queries"></div></section>
<section class="card wide" id="audit"><h2>Dataset audit</h2><div id="audit-body"></div></section>
<section class="card wide" id="conservation"><h2>Conservation</h2><div id="conservation-body"></div></section>
<section class="card wide" id="entries"><h2>Precomputed entries</h2><div class="scroll"><table id="entry-list"></table></div></section>
"""


def render(data: dict[str, Any]) -> str:
    """The whole page for the report ``data`` (see :func:`~skbilrp.report.write_report`)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
    payload = payload.replace("<", "\\u003c")  # only inside JSON strings: no </script> can end the block
    title = html.escape(str(data.get("title", "skbilrp report")))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{_BODY}\n"
            f"<script type=\"application/json\" id=\"report-data\">{payload}</script>\n"
            f"<script>{_JS}</script>\n</body>\n</html>\n")
