// FreqCa Accelerate: step timeline and run statistics drawn on the node (ComfyUI front-end extension).
//
// Before a run: the planned schedule (from the node's widgets and the steps of the sampler it feeds).
// While sampling: the same schedule, filled in step by step from the sampler's progress events.
// After a run: what really happened, from the "freqca.stats" event the Python side sends at the end of
// each sampling run (full / cached steps, estimated speedup, CRF cache size, method, time).
// Only nodes of type FreqCaAccelerate are touched.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "FreqCaAccelerate";
const WIDGET_NAME = "freqca_timeline";
const CORE_TEXT_PREVIEW = "$$node-text-preview";  // where the front-end shows send_progress_text
const COLORS = { F: "#e0873a", a: "#d4b13f", c: "#3fae6e", ".": "#555b66" };
const TEXT = "#dddddd";
const DIM = "#9aa0a6";
const NOTE = "#e3b341";
const MARGIN = 15;
const ROW = 16;
const CELL_H = 13;
const CELL_GAP = 1;
const MIN_CELL = 5;
const MAX_CELL = 22;
const MAX_HOPS = 8;

// Mirror of freqca_core.schedule.FixedSchedule.forced_full / is_full (the Python side stays the
// authority: after a run the real timeline replaces this plan). "F" full, "c" cached, "?" decided during
// the run (adaptive schedule), by FEB-Cache's table, by a gates file or by calibration (method auto). start/end percent are points of the
// noise schedule, which the front-end does not know: the plan takes them as fractions of the steps.
function planOf(step, n, s) {
  if (s.method === "feb" || s.method === "auto" || s.gates) return step === 0 ? "F" : "?";  // decided elsewhere
  let origin = Math.max(s.warmup_steps, 1);
  if (n != null) {
    origin = Math.max(origin, Math.ceil(s.start_percent * n - 1e-9));
    if (step >= s.end_percent * n - 1e-9 || step >= n - s.final_full_steps) return "F";
  }
  if (step < origin) return "F";
  if (s.schedule === "adaptive") return "?";
  return (step - origin + 1) % s.interval === 0 ? "F" : "c";
}

// Mirror of freqca_core.schedule.FixedSchedule.for_run: a fixed schedule too long for the run (fewer steps
// than warm-up + 2 intervals + 1) gets interval and warm-up of at most n / 4 and its last step full; under
// MIN_CACHED_STEPS steps every step is full.
const MIN_CACHED_STEPS = 5;
function fitted(s, n) {
  if (n == null || s.method === "feb" || s.method === "auto" || s.gates || s.schedule !== "fixed" || s.interval <= 1
      || n >= s.warmup_steps + 2 * s.interval + 1) return s;
  if (n < MIN_CACHED_STEPS) return { ...s, warmup_steps: n, interval: 1 };
  const quarter = Math.floor(n / 4);
  return { ...s, warmup_steps: Math.min(s.warmup_steps, Math.max(1, quarter)),
           interval: Math.min(s.interval, Math.max(2, quarter)),
           final_full_steps: Math.max(s.final_full_steps, 1) };
}

// The FreqCa Options node plugged into the node's `options` input, if any.
function optionsNodeOf(node) {
  const slot = node.findInputSlot?.("options") ?? -1;
  return slot >= 0 ? node.getInputNode?.(slot) ?? null : null;
}

function settingsOf(node) {
  const widget = (owner, name, fallback) => {
    const w = owner?.widgets?.find((x) => x.name === name);
    return w && w.value !== undefined && w.value !== null ? w.value : fallback;
  };
  const get = (name, fallback) => widget(node, name, fallback);
  const options = optionsNodeOf(node);
  const method = get("method", "freqca");
  const gatesFile = widget(options, "gates_file", "none");
  return {
    method,
    schedule: widget(options, "schedule", "fixed"),
    gates: method === "frdiff" && gatesFile !== "none" && gatesFile !== "",
    interval: Math.max(1, Number(get("interval", 6))),
    warmup_steps: Number(get("warmup_steps", 3)),
    final_full_steps: Number(get("final_full_steps", 0)),
    start_percent: Number(get("start_percent", 0)),
    end_percent: Number(get("end_percent", 1)),
  };
}

function plannedTimeline(node, n) {
  const s = fitted(settingsOf(node), n);
  let t = "";
  for (let i = 0; i < n; i++) t += planOf(i, n, s);
  return t;
}

// Nodes reachable downstream of the FreqCa node's outputs (breadth first, a few hops).
function downstream(node) {
  const graph = node.graph;
  const seen = new Set([node.id]);
  const found = [];
  let frontier = [node];
  for (let hop = 0; hop < MAX_HOPS && frontier.length; hop++) {
    const next = [];
    for (const n of frontier) {
      for (const out of n.outputs ?? []) {
        for (const linkId of out.links ?? []) {
          const link = graph?.getLink?.(linkId) ?? graph?.links?.[linkId];
          const target = link ? graph.getNodeById(link.target_id) : null;
          if (target && !seen.has(target.id)) {
            seen.add(target.id);
            found.push(target);
            next.push(target);
          }
        }
      }
    }
    frontier = next;
  }
  return found;
}

function samplerSteps(node) {
  for (const n of downstream(node)) {
    const w = n.widgets?.find((x) => x.name === "steps");
    if (w && Number.isFinite(Number(w.value)) && Number(w.value) > 0) {
      return { steps: Number(w.value), title: n.title || n.type };
    }
  }
  return null;
}

function count(timeline, ch) {
  let k = 0;
  for (const x of timeline) if (x === ch) k++;
  return k;
}

function speedupText(steps, full) {
  return full > 0 ? `${(steps / full).toFixed(1)}\u00d7` : "\u2013";
}

// "18/28 full · est. 1.6×" for a plan; an adaptive plan only knows its forced full steps.
function planText(timeline, steps) {
  const full = count(timeline, "F");
  if (timeline.includes("?")) return `${full}/${steps} full + decided while sampling`;
  return `${full}/${steps} full \u00b7 est. ${speedupText(steps, full)}`;
}

// What the widget shows now: {title, timeline, done (cells drawn solid), detail}.
function view(node) {
  const st = node.freqca ?? {};
  if (node.mode === 4) {  // bypassed: the model passes through uncached
    return { title: "FreqCa off (bypassed)", timeline: "", done: 0,
             detail: "the sampler gets the model unchanged; every step runs in full" };
  }
  if (st.live) {
    const { value, max } = st.live;
    const timeline = plannedTimeline(node, max);
    return {
      title: `sampling ${value}/${max} \u00b7 ${planText(timeline, max)}`,
      timeline,
      done: value,
      detail: `${settingsOf(node).method} \u00b7 planned; the run's own numbers follow at the end`,
    };
  }
  if (st.stats && st.stats.timeline !== undefined) {
    const s = st.stats;
    // anything the summary line says after the timeline (fallbacks, warnings), shown as a note
    const tail = String(s.text ?? "").split("]").slice(1).join("]").replace(/^[;\s]+/, "");
    return {
      title: `${s.full}/${s.steps} full \u00b7 ${s.attention ? `${s.attention} attention reused \u00b7 ` : ""}` +
             `${s.cached} cached \u00b7 est. ${speedupText(s.steps, s.full + (s.attention ?? 0))}`,
      timeline: s.timeline,
      done: s.timeline.length,
      detail: `${s.method} \u00b7 CRF cache ${Number(s.cache_mb).toFixed(2)} MB \u00b7 ${Number(s.seconds).toFixed(1)} s`,
      note: tail,
    };
  }
  if (st.stats && st.stats.text) {
    return { title: "last run", timeline: "", done: 0, detail: st.stats.text };
  }
  const sampler = samplerSteps(node);
  if (!sampler) {
    return { title: "FreqCa: connect to a sampler", timeline: "", done: 0,
             detail: "F = full step, a = attention reused, c = cached step" };
  }
  const timeline = plannedTimeline(node, sampler.steps);
  return {
    title: `planned ${planText(timeline, sampler.steps)}`,
    timeline,
    done: 0,
    detail: `${settingsOf(node).method} \u00b7 ${sampler.steps} steps of ${sampler.title} \u00b7 run to measure`,
  };
}

function cellLayout(n, width) {
  const inner = Math.max(20, width - 2 * MARGIN);
  if (!n) return { cell: 0, perRow: 1, rows: 0 };
  const cell = Math.max(MIN_CELL, Math.min(MAX_CELL, Math.floor(inner / n)));
  const perRow = Math.max(1, Math.floor(inner / cell));
  return { cell, perRow, rows: Math.ceil(n / perRow) };
}

function widgetHeight(node, width) {
  const v = view(node);
  const { rows } = cellLayout(v.timeline.length, width);
  return 6 + ROW + rows * (CELL_H + CELL_GAP) + (rows ? 4 : 0) + ROW + (v.note ? ROW : 0) + 4;
}

function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let t = text;
  while (t.length > 1 && ctx.measureText(t + "\u2026").width > width) t = t.slice(0, -1);
  return t + "\u2026";
}

function drawTimeline(ctx, node, width, y) {
  const v = view(node);
  const inner = width - 2 * MARGIN;
  ctx.save();
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  let top = y + 6;
  ctx.font = "bold 12px sans-serif";
  ctx.fillStyle = TEXT;
  ctx.fillText(fitText(ctx, v.title, inner), MARGIN, top + ROW / 2);
  top += ROW;
  const { cell, perRow, rows } = cellLayout(v.timeline.length, width);
  if (rows) {
    top += 2;
    ctx.font = "bold 9px monospace";
    ctx.textAlign = "center";
    for (let i = 0; i < v.timeline.length; i++) {
      const ch = v.timeline[i];
      const x = MARGIN + (i % perRow) * cell;
      const cy = top + Math.floor(i / perRow) * (CELL_H + CELL_GAP);
      const color = COLORS[ch] ?? COLORS["."];
      if (i < v.done) {
        ctx.fillStyle = color;
        ctx.fillRect(x, cy, cell - CELL_GAP, CELL_H);
      } else {  // planned, not run yet: outlined
        ctx.strokeStyle = color;
        ctx.lineWidth = 1;
        ctx.strokeRect(x + 0.5, cy + 0.5, cell - CELL_GAP - 1, CELL_H - 1);
      }
      if (cell >= 9) {
        ctx.font = cell >= 16 ? "bold 10px monospace" : "bold 9px monospace";
        ctx.fillStyle = i < v.done ? "#111" : color;
        ctx.fillText(ch === "." ? "" : ch, x + (cell - CELL_GAP) / 2, cy + CELL_H / 2 + 0.5);
      }
    }
    top += rows * (CELL_H + CELL_GAP) + 2;
  }
  ctx.textAlign = "left";
  ctx.font = "11px sans-serif";
  ctx.fillStyle = DIM;
  ctx.fillText(fitText(ctx, v.detail, inner), MARGIN, top + ROW / 2);
  if (v.note) {
    top += ROW;
    ctx.fillStyle = NOTE;
    ctx.fillText(fitText(ctx, v.note, inner), MARGIN, top + ROW / 2);
  }
  ctx.restore();
}

function fitNode(node) {
  const need = node.computeSize?.();
  if (need && need[1] > node.size[1]) node.setSize([Math.max(node.size[0], need[0]), need[1]]);
  node.setDirtyCanvas?.(true, true);
}

function addTimelineWidget(node) {
  if (node.widgets?.some((w) => w.name === WIDGET_NAME)) return;
  node.freqca = node.freqca ?? {};
  node.addCustomWidget({
    name: WIDGET_NAME,
    type: "freqca_timeline",
    value: "",
    serialize: false,
    options: { serialize: false },
    draw(ctx, n, width, y) {
      try {
        drawTimeline(ctx, n, width, y);
      } catch (err) {  // never break the canvas
        if (!n.freqca?.drawError) console.warn("FreqCa: cannot draw the timeline", err);
        n.freqca.drawError = true;
      }
    },
    computeSize(width) {
      return [width ?? node.size[0], widgetHeight(node, width ?? node.size[0])];
    },
    view: () => view(node),  // what is drawn, as data (used by the browser test)
  });
  fitNode(node);
}

// All FreqCa nodes of the root graph and of any subgraph (ids may be "parent:child" execution ids).
function freqcaNodes() {
  const graphs = [app.graph, app.canvas?.graph, ...(app.graph?.subgraphs?.values?.() ?? [])];
  const nodes = new Set();
  for (const g of graphs) for (const n of g?._nodes ?? g?.nodes ?? []) if (n.comfyClass === NODE_TYPE) nodes.add(n);
  return [...nodes];
}

function findFreqcaNode(id) {
  const key = String(id);
  const local = key.includes(":") ? key.split(":").pop() : key;
  return freqcaNodes().find((n) => String(n.id) === key || String(n.id) === local) ?? null;
}

// The summary line also arrives as progress text (for front-ends without this extension); on FreqCa
// nodes the timeline shows the same numbers, so the plain-text copy is removed there.
function removeCoreTextPreview(node) {
  const i = node.widgets?.findIndex((w) => w.name === CORE_TEXT_PREVIEW) ?? -1;
  if (i < 0) return;
  node.widgets[i].onRemove?.();
  node.widgets.splice(i, 1);
  node.setDirtyCanvas?.(true, true);
}

function onStats(event) {
  const stats = event.detail;
  if (!stats || stats.node === undefined) return;
  const node = findFreqcaNode(stats.node);
  if (!node) return;
  addTimelineWidget(node);
  node.freqca.stats = stats;
  node.freqca.live = null;
  if (stats.timeline !== undefined) {
    removeCoreTextPreview(node);
    setTimeout(() => removeCoreTextPreview(node), 0);
  }
  fitNode(node);
}

// Workflows saved with the 16-widget node (0.2: method, interval, warmup_steps, final_full_steps, cutoff,
// hermite_scale, start_percent, end_percent, verbose, schedule, …) hold its values in that order; the main
// node now has six widgets. Take the six from their old places (the advanced ones need a FreqCa Options node).
const LEGACY_LENGTH = 16;
const LEGACY_PLACES = { method: 0, interval: 1, warmup_steps: 2, final_full_steps: 3, start_percent: 6,
                        end_percent: 7 };
function migrateLegacyValues(node, values) {
  if (!Array.isArray(values) || values.length !== LEGACY_LENGTH || typeof values[8] !== "boolean") return;
  for (const [name, place] of Object.entries(LEGACY_PLACES)) {
    const w = node.widgets?.find((x) => x.name === name);
    if (w) w.value = values[place];
  }
}

function onProgress(event) {
  const { value, max, node: running } = event.detail ?? {};
  if (running == null || !max) return;
  const runningKey = String(running).split(":").pop();
  for (const node of freqcaNodes()) {
    if (!node.freqca) continue;
    if (downstream(node).some((n) => String(n.id) === runningKey)) {
      node.freqca.live = { value, max };
      fitNode(node);
    }
  }
}

function onRunEnd() {
  for (const node of freqcaNodes()) {
    if (node.freqca?.live) {
      node.freqca.live = null;
      fitNode(node);
    }
  }
}

app.registerExtension({
  name: "freqca.accelerate",
  async setup() {
    api.addEventListener("freqca.stats", onStats);
    api.addEventListener("progress", onProgress);
    for (const type of ["execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(type, onRunEnd);
    }
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addTimelineWidget(this);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {  // a saved size may predate the timeline
      const result = onConfigure?.apply(this, arguments);
      migrateLegacyValues(this, info?.widgets_values);
      if (this.widgets?.some((w) => w.name === WIDGET_NAME)) fitNode(this);
      return result;
    };
  },
});
