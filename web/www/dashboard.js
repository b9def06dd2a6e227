// The run's dashboard: polls the serving node's /run.json (the run's heartbeats, folded) and
// draws the loss and throughput against time and a table of the peers. State for tests is on
// <body data-state data-peers data-points data-first-loss data-last-loss data-table-samples
// data-table-credit data-credited data-checkpoint-round data-val-points>. A peer's credit is what the others attest they counted of its
// updates; its samples are its own claim.
import { drawLine, drawLines } from "./chart.js";

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : "–");
const short = (id) => `${id.slice(0, 8)}…${id.slice(-6)}`;
const fmtBytes = (b) => (b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : `${(b / 1024).toFixed(1)} KiB`);
const clock = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;

function render(run) {
  const s = run.summary;
  $("run").textContent = run.run_id;
  $("peers").textContent = s.peers;
  $("round").textContent = s.round;
  $("loss").textContent = `${fmt(s.loss ?? NaN)} training, ${fmt(s.val_loss ?? NaN)} validation`;
  $("throughput").textContent = `${Math.round(s.tokens_per_s)} tokens/s`;
  $("samples").textContent = `${s.samples} claimed, ${s.credit} credited`;
  // The checkpoint this node offers (`--checkpoint`), a safetensors file `gradswarm eval` and
  // Python's safetensors read.
  const ck = run.checkpoint;
  if (ck) {
    const a = document.createElement("a");
    a.href = "checkpoint.safetensors";
    a.download = ck.file_name;
    a.textContent = `round ${ck.round} (${fmtBytes(ck.bytes)}, written ${Math.round(ck.age_s)} s ago)`;
    $("checkpoint").replaceChildren(a);
  } else {
    $("checkpoint").textContent = "none on offer";
  }
  const losses = run.history.map((p) => ({ x: p.t_s, y: p.loss ?? NaN }));
  const series = (x) => [
    { points: run.history.map((p) => ({ x: x(p), y: p.loss ?? NaN })), color: "#1565c0", label: "training" },
    { points: run.history.map((p) => ({ x: x(p), y: p.val_loss ?? NaN })), color: "#e65100", label: "validation" },
  ];
  drawLines($("loss-chart"), series((p) => p.t_s), { xLabel: clock });
  drawLines($("loss-samples-chart"), series((p) => p.samples), { xLabel: (n) => `${Math.round(n)} samples` });
  drawLine($("speed-chart"), run.history.map((p) => ({ x: p.t_s, y: p.tokens_per_s })), { color: "#2e7d32", xLabel: clock, yDigits: 0 });
  const total = run.peers.reduce((a, p) => a + p.samples, 0);
  const credited = run.peers.reduce((a, p) => a + p.credit, 0);
  $("contributions").tBodies[0].replaceChildren(
    ...run.peers.map((p) => {
      const tr = document.createElement("tr");
      const cells = [
        short(p.peer_id), p.agent, p.round, fmt(p.loss ?? NaN), Math.round(p.tokens_per_s), p.samples,
        p.credit, `${((100 * p.credit) / Math.max(1, credited)).toFixed(1)} %`,
        `${fmtBytes(p.bytes_sent)} / ${fmtBytes(p.bytes_received)}`,
      ];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = String(c);
        tr.append(td);
      }
      tr.title = p.peer_id;
      return tr;
    }),
  );
  const finite = losses.filter((p) => Number.isFinite(p.y));
  Object.assign(document.body.dataset, {
    state: "live",
    peers: String(s.peers),
    points: String(finite.length),
    valPoints: String(run.history.filter((p) => Number.isFinite(p.val_loss)).length),
    firstLoss: String(finite[0]?.y ?? NaN),
    lastLoss: String(finite.at(-1)?.y ?? NaN),
    tableSamples: String(total),
    tableCredit: String(credited),
    checkpointRound: String(ck?.round ?? 0),
    credited: String(run.peers.filter((p) => p.credit > 0).length),
    summarySamples: String(s.samples),
  });
}

async function poll() {
  try {
    const r = await fetch("run.json", { cache: "no-store" });
    if (!r.ok) throw new Error(`run.json: HTTP ${r.status}`);
    render(await r.json());
    $("error").hidden = true;
  } catch (e) {
    $("error").hidden = false;
    $("error").textContent = String(e?.message ?? e);
  }
  setTimeout(poll, 2000);
}
poll();
