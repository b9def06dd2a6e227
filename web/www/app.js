// The page of a browser peer: starts the wasm peer in a worker (worker.js), joins the run the
// serving node names, and shows what the peer reports each round. State for tests is on
// <body data-state data-rounds data-adapter data-webgpu>.

import { drawLine } from "./chart.js";

const $ = (id) => document.getElementById(id);
const losses = [];
let worker = null;
let bytesUp = 0;
let bytesDown = 0;
const drops = {};

function fail(message) {
  $("error").hidden = false;
  $("error").textContent = message;
  $("status").textContent = "error";
  document.body.dataset.state = "error";
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(2)} MiB`;
}

function draw() {
  drawLine($("chart"), losses.map((p) => ({ x: p.round, y: p.loss })), { xLabel: (r) => `round ${r}` });
}

window.gsReports = [];

function onRound(r) {
  window.gsReports.push(r);
  losses.push({ round: r.round, loss: r.loss });
  bytesUp += r.bytes_up;
  bytesDown += r.bytes_down;
  for (const [reason, n] of Object.entries(r.drops ?? {})) {
    if (typeof n === "number") drops[reason] = (drops[reason] ?? 0) + n;
  }
  const st = r.staleness ?? [];
  $("round").textContent = r.round;
  $("peers").textContent = r.peers;
  $("loss").textContent = Number.isFinite(r.loss) ? r.loss.toFixed(3) : "catching up";
  $("bytes").textContent = `${fmtBytes(bytesUp)} / ${fmtBytes(bytesDown)}`;
  // Samples of this tab's updates that counted in the others' aggregates, as they attest.
  $("credit").textContent = `${r.credit} of ${r.samples} samples`;
  $("staleness").textContent = st.length ? (st.reduce((a, b) => a + b, 0) / st.length).toFixed(2) : "–";
  const d = Object.entries(drops).filter(([, n]) => n > 0);
  $("drops").textContent = d.length ? d.map(([k, n]) => `${k} ${n}`).join(", ") : "none";
  document.body.dataset.rounds = String(losses.length);
  // Rounds this tab trained itself (catch-up rounds only apply what the swarm did meanwhile).
  if (!r.catch_up) document.body.dataset.trained = String(Number(document.body.dataset.trained ?? 0) + 1);
  document.body.dataset.lastLoss = String(r.loss);
  if (losses.length === 1) document.body.dataset.firstLoss = String(r.loss);
  draw();
}

function onEnd(error) {
  $("join").disabled = false;
  $("leave").disabled = true;
  $("pause").disabled = true;
  if (error) {
    fail(`the peer stopped: ${error}`);
  } else {
    $("status").textContent = "left the run";
    document.body.dataset.state = "done";
  }
}

async function offeredText() {
  // Before joining: what WebGPU offers here (the peer decides when it joins; see ?device=).
  if (!navigator.gpu) return "this browser has no WebGPU: training will run on the CPU backend in wasm";
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) return "WebGPU has no adapter here: training will run on the CPU backend in wasm";
  const info = adapter.info ?? {};
  const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "unknown";
  return `WebGPU adapter ${name}${info.isFallbackAdapter ? " (software)" : ""} offered`;
}

function usedText(p) {
  if (p.webgpu) return `WebGPU — ${p.adapter}`;
  return `CPU (burn flex in wasm) — ${p.fallback ?? "asked for the CPU backend"}`;
}

// Where the page keeps its peer's key (this origin's localStorage), so that a reload rejoins as
// the same peer.
const IDENTITY_KEY = "gradswarm.identity";

// The tab's checkpoints, one per run ({round, bytes}: the node's safetensors format), in this
// origin's IndexedDB: a reload resumes from there, as a desktop node does from its --out folder.
function checkpoints(mode, use) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("gradswarm", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("checkpoints");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const tx = open.result.transaction("checkpoints", mode);
      const request = use(tx.objectStore("checkpoints"));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
    };
  });
}
const loadCheckpoint = (runId) => checkpoints("readonly", (store) => store.get(runId));
const keepCheckpoint = (runId, round, bytes) => checkpoints("readwrite", (store) => store.put({ round, bytes }, runId));

async function main() {
  try {
    const [boot, corpus] = await Promise.all([
      fetch("bootstrap.json").then((r) => (r.ok ? r.json() : Promise.reject(new Error(`bootstrap.json: HTTP ${r.status}`)))),
      fetch("corpus.txt").then((r) => (r.ok ? r.arrayBuffer() : Promise.reject(new Error(`corpus.txt: HTTP ${r.status}`)))),
    ]);
    // ?options={...} adds join options (rounds, model, train, device: auto|gpu|cpu), e.g. for a
    // test's tiny model. A published run's settings (model, trainer, mode, codec) come with
    // bootstrap.json, as a desktop node's come with the manifest.
    const extra = new URLSearchParams(location.search).get("options");
    const published = boot.settings ? { settings: boot.settings } : {};
    const options = { run_id: boot.run_id, bootstrap: boot.bootstrap, ...published, ...(extra ? JSON.parse(extra) : {}) };
    if (!options.bootstrap.length) throw new Error("the serving node has no WebSocket address yet; reload in a moment");
    $("run").textContent = options.run_id;
    $("adapter").textContent = await offeredText();
    $("status").textContent = "ready";
    document.body.dataset.state = "ready";
    $("join").disabled = false;
    $("join").onclick = async () => {
      $("join").disabled = true;
      $("status").textContent = "starting";
      worker?.terminate();
      worker = new Worker("worker.js", { type: "module" });
      worker.onerror = (e) => fail(`the peer's worker failed: ${e.message ?? e}`);
      worker.onmessage = ({ data }) => {
        if (data.type === "round") onRound(data.report);
        else if (data.type === "checkpoint") {
          keepCheckpoint(options.run_id, data.round, data.bytes)
            .then(() => {
              $("checkpoint").textContent = `round ${data.round}, ${fmtBytes(data.bytes.byteLength)}, kept in this browser`;
              document.body.dataset.checkpoint = String(data.round);
            })
            .catch((e) => console.warn(`checkpoint of round ${data.round} not kept: ${e}`));
        }
        else if (data.type === "end") onEnd(data.error);
        else if (data.type === "error") {
          $("join").disabled = false;
          fail(data.message);
        } else if (data.type === "joined") {
          // The tab's identity outlives a reload: the next Join has the same peer id.
          localStorage.setItem(IDENTITY_KEY, JSON.stringify(data.identity));
          $("peer").textContent = data.peer_id;
          $("adapter").textContent = usedText(data);
          document.body.dataset.adapter = $("adapter").textContent;
          document.body.dataset.webgpu = String(data.webgpu);
          $("codec").textContent = `top-k + int8 + zstd: ${data.codec}`;
          document.body.dataset.codec = data.codec;
          if (data.resumed_from !== null) {
            document.body.dataset.resumedFrom = String(data.resumed_from);
            $("checkpoint").textContent = `resumed from this browser's checkpoint of round ${data.resumed_from}`;
          }
          $("status").textContent = "training";
          document.body.dataset.state = "running";
          $("leave").disabled = false;
          $("pause").disabled = false;
        }
      };
      // The corpus is copied to the worker; the page keeps its own for a later Join.
      const saved = localStorage.getItem(IDENTITY_KEY);
      const identity = saved ? { identity: JSON.parse(saved) } : {};
      // A browser without IndexedDB (private modes of some) starts afresh, as a new peer would.
      const kept = await loadCheckpoint(options.run_id).catch(() => null);
      worker.postMessage({
        type: "join",
        options: { duty_cycle: Number($("duty").value), ...options, ...identity },
        corpus: corpus.slice(0),
        checkpoint: kept?.bytes ?? null,
      });
    };
    $("leave").onclick = () => worker?.postMessage({ type: "leave" });
    // Pausing keeps the tab in the run (heartbeats go on, rounds are skipped): a volunteer takes
    // the machine back for a while without leaving.
    $("pause").onclick = () => {
      const pausing = $("pause").textContent === "Pause";
      worker?.postMessage({ type: pausing ? "pause" : "resume" });
      $("pause").textContent = pausing ? "Resume" : "Pause";
      $("status").textContent = pausing ? "paused" : "training";
    };
  } catch (e) {
    fail(String(e?.message ?? e));
  }
}

window.addEventListener("error", (e) => fail(String(e.message)));
window.addEventListener("unhandledrejection", (e) => fail(String(e.reason?.message ?? e.reason)));
main();
