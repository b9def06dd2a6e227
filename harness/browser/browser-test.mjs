// The browser end-to-end test (scripts/browser-test): a bootstrap node serving the page, one
// native peer, and Debian's Chromium as the browser peer. The browser joins, trains ≥ 10 rounds,
// its loss falls, and the native peer's summary counts the browser's updates. Every wait is on an
// event (a line printed, a DOM attribute) with a deadline.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { processes } from "./procs.mjs";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const bin = process.env.GS_BIN_DIR ?? path.join(os.homedir(), ".cache/gradswarm-target/debug");
const artifacts = process.env.GS_ARTIFACTS ?? path.join(root, "runs/browser-test");
const ROUNDS = Number(process.env.GS_ROUNDS ?? 12);
// Where the browser peer trains: auto (WebGPU on a hardware adapter, else the CPU backend), gpu
// (WebGPU on any adapter: here Chromium's SwiftShader) or cpu.
const DEVICE = process.env.GS_DEVICE ?? "auto";
// The run's swarm.mode: gradient (peer.toml's) or local_steps (H = 2), which the page's peer
// learns from the published settings like every other setting.
const MODE = process.env.GS_MODE ?? "gradient";
// How far the tab's own loss must fall, its last three rounds' mean below its first three's.
const LOSS_FALL = 0.3;
// GS_RELOAD=1: after its rounds (and a checkpoint kept in IndexedDB) the native peer leaves and
// the tab is loaded again: it must keep its peer id and resume alone from its checkpoint.
const RELOAD = process.env.GS_RELOAD === "1";
// GS_PAUSE=1: after its rounds the tab is paused (it must skip rounds, training none) and resumed.
const PAUSE = process.env.GS_PAUSE === "1";
// GS_HOST=<ip>: the bootstrap, its page and the native peer on that (non-loopback) address, the
// page over HTTPS and the tab dialling WebSocket over TLS (`/tls/ws`), as a browser elsewhere
// would; the certificate is made here (openssl) for that address.
const HOST = process.env.GS_HOST || "127.0.0.1";
const TLS = HOST !== "127.0.0.1";
const DEADLINE_MS = 8 * 60 * 1000;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gs-browser-"));
fs.mkdirSync(artifacts, { recursive: true });
const { start, fail, children } = processes(root, artifacts, "browser-test");

// The mean of the tab's own first three losses and of its last three (rounds it caught up
// without training left out), and how many it has.
function lossEnds(reports) {
  const own = reports.filter((r) => !r.catch_up && Number.isFinite(r.loss)).map((r) => r.loss);
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  return { first: mean(own.slice(0, 3)), last: mean(own.slice(-3)), count: own.length };
}

// Loads `url` in `tab`, once more if Chromium aborted the load because an interface's addresses
// changed under it (net::ERR_NETWORK_CHANGED: the veth pair of a non-loopback run is new).
async function load(tab, url) {
  try {
    await tab.goto(url);
  } catch (e) {
    if (!String(e).includes("ERR_NETWORK_CHANGED")) throw e;
    console.log(`browser-test: ${url} was aborted by a network change; loading it again`);
    await tab.goto(url);
  }
}

try {
  // The run is published (peer.toml's settings and data): the page's peer takes the model,
  // trainer and codec from it, as the native peer does.
  let config = path.join(root, "harness/browser/peer.toml");
  if (MODE !== "gradient") {
    // peer.toml ends in its [swarm] table.
    const text = fs.readFileSync(config, "utf8") + `mode = "${MODE}"\nlocal_steps = 2\n`;
    config = path.join(tmp, "peer.toml");
    fs.writeFileSync(config, text);
  }
  execFileSync(path.join(bin, "gradswarm"), ["publish", "--config", config, "--out", path.join(tmp, "run")], { cwd: root });
  const tlsArgs = [];
  if (TLS) {
    const [cert, key] = [path.join(tmp, "cert.pem"), path.join(tmp, "key.pem")];
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
      "-subj", "/CN=gradswarm-browser-test", "-addext", `subjectAltName=IP:${HOST}`, "-keyout", key, "-out", cert,
    ], { stdio: "ignore" });
    tlsArgs.push("--web-host", HOST, "--tls-cert", cert, "--tls-key", key);
  }
  const boot = start("bootstrap", path.join(bin, "gradswarm-bootstrap"), [
    "--run", path.join(tmp, "run"), "--host", HOST, "--port", "0",
    "--key", path.join(tmp, "bootstrap.key"), "--web", "0",
    "--web-root", path.join(root, "web/www"), ...tlsArgs,
  ]);
  const page = (await boot.waitFor(/^page: https?:/)).slice("page: ".length);
  const escaped = HOST.replaceAll(".", "\\.");
  const tcp = (await boot.waitFor(new RegExp(`^listening on /ip4/${escaped}/tcp/\\d+/p2p/`))).slice("listening on ".length);
  await boot.waitFor(/^listening on .*\/ws\/p2p\//);

  const native = start("native-peer", path.join(bin, "gradswarm"), [
    "join", tcp, "--config", config,
    "--out", path.join(tmp, "native"), "--min-peers", "1",
    ...(TLS ? ["--listen", `/ip4/${HOST}/tcp/0`] : []),
    // With a reload, the native peer trains on until the reloaded tab has rejoined (then SIGINT).
    "--rounds", String(RELOAD || PAUSE ? 100000 : ROUNDS),
  ]);

  const context = await chromium.launchPersistentContext(path.join(tmp, "profile"), {
    executablePath: process.env.GS_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // The test's own certificate: a volunteer's browser trusts the organiser's real one.
    ignoreHTTPSErrors: TLS,
    args: [
      "--no-sandbox", "--disable-gpu-sandbox", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic", "--enable-unsafe-webgpu",
    ],
  });
  const tab = context.pages()[0] ?? (await context.newPage());
  // Encodes the WGSL codec handed to the CPU reference (same bytes, so only the log tells).
  let gpuFallbacks = 0;
  const consoleLog = fs.createWriteStream(path.join(artifacts, "browser-console.log"));
  tab.on("console", (m) => consoleLog.write(`${m.type()}: ${m.text()}\n`));
  tab.on("pageerror", (e) => consoleLog.write(`pageerror: ${e.message}\n`));
  // The peer runs in a worker (web/www/worker.js): keep its console too.
  tab.on("worker", (w) => {
    consoleLog.write(`worker started: ${w.url()}\n`);
    w.on("console", (m) => {
      consoleLog.write(`worker ${m.type()}: ${m.text()}\n`);
      if (m.text().includes("GPU encode failed")) gpuFallbacks += 1;
    });
  });
  // `rounds` is the round to stop at: a reloaded tab syncs to the native peer's round, which went
  // on without it, so with a reload the tab runs until it is closed.
  const stopAt = RELOAD || PAUSE ? 1_000_000 : ROUNDS + 30;
  const options = encodeURIComponent(JSON.stringify({ rounds: stopAt, min_peers: 1, device: DEVICE }));
  await load(tab, `${page}?options=${options}`);
  await tab.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: 120_000 });
  const ready = await tab.evaluate(() => document.body.dataset.state);
  if (ready !== "ready") fail(`page did not load: ${await tab.textContent("#error")}`);
  const clicked = Date.now();
  await tab.click("#join");
  await tab.waitForFunction(() => Number(document.body.dataset.rounds ?? 0) >= 1 || ["error", "done"].includes(document.body.dataset.state), null, { timeout: DEADLINE_MS });
  const firstRoundMs = Date.now() - clicked;
  await tab.waitForFunction(
    (n) => Number(document.body.dataset.trained ?? 0) >= n || ["error", "done"].includes(document.body.dataset.state),
    10, { timeout: DEADLINE_MS },
  );
  // Every run checkpoints in the tab (IndexedDB, every 10 rounds), on WebGPU as on the CPU.
  await tab.waitForFunction(() => document.body.dataset.checkpoint !== undefined || ["error", "done"].includes(document.body.dataset.state), null, { timeout: DEADLINE_MS });
  // Ten rounds of a tab that synced a trained state may fall by less than the noise of three
  // losses at batch 8 (CI, local steps: 4.945 → 4.900 once): wait for the fall, up to 40
  // trained rounds, and judge it below then.
  // (`lossEnds` travels as source: the page cannot call this script's functions.)
  await tab.waitForFunction(
    `(() => {
      const l = (${lossEnds})(window.gsReports ?? []);
      return (l.count >= 6 && l.last < l.first - ${LOSS_FALL}) || l.count >= 40
        || ["error", "done"].includes(document.body.dataset.state);
    })()`,
    null, { timeout: DEADLINE_MS },
  );
  await tab.screenshot({ path: path.join(artifacts, "page.png"), fullPage: true });
  const seen = await tab.evaluate(() => ({
    state: document.body.dataset.state,
    rounds: Number(document.body.dataset.trained ?? 0),
    adapter: document.body.dataset.adapter,
    webgpu: document.body.dataset.webgpu === "true",
    error: document.getElementById("error").textContent,
    peer: document.getElementById("peer").textContent,
    reports: window.gsReports ?? [],
    checkpoint: document.body.dataset.checkpoint,
    codec: document.body.dataset.codec,
  }));
  fs.writeFileSync(path.join(artifacts, "reports.json"), JSON.stringify(seen.reports, null, 1));
  if (seen.state === "error") fail(`the page shows an error: ${seen.error}`);
  if (DEVICE === "gpu" && !seen.webgpu) fail(`asked for WebGPU, the page trained on: ${seen.adapter}`);
  // On WebGPU the update codec runs as WGSL kernels on the trainer's device (its readback
  // awaited); the native peer counting the tab's updates below shows their bytes are the run's.
  if (seen.webgpu !== seen.codec?.startsWith("WGSL")) fail(`WebGPU ${seen.webgpu}, yet the codec runs on: ${seen.codec}`);
  if (gpuFallbacks > 0) fail(`${gpuFallbacks} encodes fell back from the WGSL codec to the CPU`);
  if (seen.rounds < 10) fail(`the browser peer completed ${seen.rounds} rounds`);
  const kept = Number(seen.checkpoint);
  if (!Number.isFinite(kept)) fail("the tab kept no checkpoint");
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const { first, last, count: trained } = lossEnds(seen.reports);
  if (!(last < first - LOSS_FALL)) fail(`the browser's loss did not fall: ${first.toFixed(3)} → ${last.toFixed(3)}`);
  const compute = seen.reports.reduce((a, r) => a + r.compute_s, 0);
  const samples = Math.max(...seen.reports.map((r) => r.samples));
  const CONTEXT = 32; // peer.toml's model.context
  const browserTokS = (samples * CONTEXT) / Math.max(1e-9, compute);

  let paused = null;
  if (PAUSE) {
    // Paused, the tab stays in the run: its heartbeats say so, the native peer stops waiting for
    // it, and the tab closes the rounds it sits out without training; resumed, it trains again.
    const count = () => tab.evaluate(() => ({ rounds: Number(document.body.dataset.rounds ?? 0), trained: Number(document.body.dataset.trained ?? 0) }));
    await tab.click("#pause");
    const before = await count();
    await tab.waitForFunction((n) => Number(document.body.dataset.rounds ?? 0) >= n, before.rounds + 10, { timeout: DEADLINE_MS });
    const during = await count();
    // The pause reaches the worker as a message and takes effect at its next round: the round
    // under way, and one more begun before the message arrived, may still train.
    if (during.trained > before.trained + 2) fail(`paused, the tab trained ${during.trained - before.trained} rounds`);
    await tab.click("#pause");
    await tab.waitForFunction((n) => Number(document.body.dataset.trained ?? 0) >= n, during.trained + 2, { timeout: DEADLINE_MS });
    paused = { skipped_rounds: during.rounds - before.rounds, trained_while_paused: during.trained - before.trained };
    native.child.kill("SIGINT");
  }

  let reloaded = null;
  if (RELOAD) {
    // The native peer leaves, so that after the reload the tab is alone: where it starts is its
    // own checkpoint's doing (kept above), not a sync from a peer.
    native.child.kill("SIGINT");
    await native.exited;
    // The page loaded again (its options now wait for nobody): the same peer id, from the key
    // it kept, and its checkpoint's round and θ, from IndexedDB.
    const alone = encodeURIComponent(JSON.stringify({ rounds: stopAt, min_peers: 0, device: DEVICE }));
    await load(tab, `${page}?options=${alone}`);
    await tab.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: 120_000 });
    await tab.click("#join");
    await tab.waitForFunction(() => Number(document.body.dataset.rounds ?? 0) >= 2 || ["error", "done"].includes(document.body.dataset.state), null, { timeout: DEADLINE_MS });
    reloaded = await tab.evaluate(() => ({
      peer: document.getElementById("peer").textContent,
      rounds: Number(document.body.dataset.rounds ?? 0),
      resumedFrom: Number(document.body.dataset.resumedFrom),
      state: document.body.dataset.state,
      error: document.getElementById("error").textContent,
      reports: window.gsReports ?? [],
    }));
    if (reloaded.state === "error") fail(`after the reload the page shows an error: ${reloaded.error}`);
    if (reloaded.peer !== seen.peer) fail(`a reload changed the peer id: ${seen.peer} → ${reloaded.peer}`);
    if (reloaded.rounds < 2) fail(`after the reload the tab trained ${reloaded.rounds} rounds (${reloaded.state})`);
    if (!(reloaded.resumedFrom >= kept)) fail(`the tab kept round ${kept} but resumed from ${reloaded.resumedFrom}`);
    const firstRound = reloaded.reports[0]?.round;
    if (!(firstRound >= reloaded.resumedFrom)) fail(`resumed from round ${reloaded.resumedFrom}, yet its first round was ${firstRound}`);
    const after = reloaded.reports.filter((r) => Number.isFinite(r.loss)).map((r) => r.loss);
    // θ₀'s loss is the first rounds' before the reload: a resumed θ is far below it.
    if (!(mean(after.slice(0, 2)) < first - 0.3)) fail(`after the reload the loss was ${mean(after.slice(0, 2)).toFixed(3)}, a fresh model's ${first.toFixed(3)}`);
    reloaded.lossAfter = mean(after.slice(0, 2));
  }

  const { code, lines } = await Promise.race([
    native.exited,
    new Promise((_, reject) => setTimeout(() => reject(new Error("the native peer did not finish")), DEADLINE_MS)),
  ]);
  if (code !== 0) fail(`the native peer exited with ${code}`);
  const summary = JSON.parse(lines.filter((l) => l.startsWith("{")).pop() ?? "{}");
  const counted = summary.counted_from?.[seen.peer] ?? 0;
  // On a software WebGPU adapter the tab is ~100x slower than the native peer; the native peer's
  // config (peer.toml: swarm.min_wait) makes its rounds wait for the tab's update, so the tab's
  // updates count in both runs instead of arriving too stale.
  if (counted < 5) fail(`the native peer counted ${counted} updates of the browser peer ${seen.peer}`);
  // The tab's credit: what the native peer attests it counted of the tab's updates (its summary
  // at the end; the tab may train on after the page was read), and on the page never more than
  // the tab trained on. (The page shows it once an attestation has come back, heartbeats being
  // seconds apart: not in every short run.)
  // Each counted update carries one round's samples at most, so the credit is at most the updates
  // the native peer counted times the most samples the tab trained in a round.
  const credit = summary.credits?.[seen.peer] ?? 0;
  const perRound = Math.max(0, ...seen.reports.map((r, i) => r.samples - (seen.reports[i - 1]?.samples ?? 0)));
  if (!(credit > 0 && credit <= counted * perRound)) {
    fail(`the native peer credits the tab ${credit} for ${counted} updates of at most ${perRound} samples`);
  }
  const shown = Math.max(0, ...seen.reports.map((r) => r.credit ?? 0));
  if (shown > samples) fail(`the tab's page shows a credit of ${shown} for ${samples} samples`);
  const nativeTokS = (summary.samples * CONTEXT) / Math.max(1e-9, summary.compute_s);
  await context.close();
  const result = {
    device: DEVICE,
    mode: MODE,
    page,
    webgpu: seen.webgpu,
    adapter: seen.adapter,
    browser_rounds: seen.rounds,
    checkpoint_round: kept,
    codec: seen.codec,
    browser_loss_first3: first,
    browser_loss_last3: last,
    native_counted_browser_updates: counted,
    browser_credit: credit,
    browser_credit_shown: shown,
    time_to_first_round_s: firstRoundMs / 1000,
    browser_tokens_per_s: browserTokS,
    browser_compute_s_per_round: compute / Math.max(1, trained),
    native_tokens_per_s: nativeTokS,
    pause: paused,
    reload: reloaded && {
      same_peer_id: reloaded.peer === seen.peer,
      resumed_from_round: reloaded.resumedFrom,
      rounds_after: reloaded.rounds,
      loss_after: reloaded.lossAfter,
    },
    screenshot: path.join(artifacts, "page.png"),
  };
  fs.writeFileSync(path.join(artifacts, "result.json"), JSON.stringify(result, null, 2));
  console.log(`browser-test: ok ${JSON.stringify(result)}`);
  for (const c of children) c.kill("SIGTERM");
  // The browser profile and the run folder (~50 MB) are kept only when the test fails.
  fs.rmSync(tmp, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  fail(e?.stack ?? String(e));
}
