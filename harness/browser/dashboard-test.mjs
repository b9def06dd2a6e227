// The dashboard test (scripts/browser-test): a bootstrap node serving the page and three native
// peers; Debian's Chromium opens the run's dashboard. It lists the three peers, its loss chart
// has points that fall, its table's samples add up to its summary's, each peer's row is at most what
// that peer reports when it leaves, and its credit (what the other two attest) is some and at most
// its samples; its checkpoint link downloads a checkpoint of the run. The screenshot goes to the
// artifacts folder (GS_SCREENSHOT=docs/dashboard.png refreshes the README's).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { processes } from "./procs.mjs";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const bin = process.env.GS_BIN_DIR ?? path.join(os.homedir(), ".cache/gradswarm-target/debug");
const artifacts = process.env.GS_ARTIFACTS ?? path.join(root, "runs/dashboard-test");
const screenshot = process.env.GS_SCREENSHOT ?? path.join(artifacts, "dashboard.png");
const DEADLINE_MS = 4 * 60 * 1000;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gs-dashboard-"));
fs.mkdirSync(artifacts, { recursive: true });
const { start, fail, children } = processes(root, artifacts, "dashboard-test");

try {
  // The browser test's run, evaluated every 50 rounds so that the charts have a validation loss.
  const config = path.join(tmp, "peer.toml");
  const toml = fs.readFileSync(path.join(root, "harness/browser/peer.toml"), "utf8");
  fs.writeFileSync(config, toml.replace(/^eval_every = 0$/m, "eval_every = 50"));
  const boot = start("bootstrap", path.join(bin, "gradswarm-bootstrap"), [
    "--run-id", "browser-e2e", "--host", "127.0.0.1", "--port", "0",
    "--key", path.join(tmp, "bootstrap.key"), "--web", "0", "--web-root", path.join(root, "web/www"),
    // Peer 0's checkpoint (written every 100 rounds), offered for download.
    "--checkpoint", path.join(tmp, "peer-0", "checkpoint.safetensors"),
  ]);
  const page = (await boot.waitFor(/^page: http:/)).slice("page: ".length);
  const tcp = (await boot.waitFor(/^listening on \/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//)).slice("listening on ".length);
  const peers = [0, 1, 2].map((i) =>
    start(`peer-${i}`, path.join(bin, "gradswarm"), [
      "join", tcp, "--config", config, "--out", path.join(tmp, `peer-${i}`), "--min-peers", "2", "--rounds", "0",
    ]),
  );

  const browser = await chromium.launch({
    executablePath: process.env.GS_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const tab = await browser.newPage({ viewport: { width: 900, height: 1100 } });
  await tab.goto(`${page}dashboard.html`);
  // Heartbeats come every 3 s from each peer; a history point at most every second.
  await tab.waitForFunction(
    () => {
      const d = document.body.dataset;
      return (
        Number(d.peers) === 3 && Number(d.credited) === 3 && Number(d.checkpointRound) > 0 && Number(d.valPoints) >= 2 &&
        Number(d.points) >= 8 && Number(d.lastLoss) < Number(d.firstLoss)
      );
    },
    null,
    { timeout: DEADLINE_MS, polling: 500 },
  );
  await tab.screenshot({ path: screenshot, fullPage: true });
  const seen = await tab.evaluate(() => ({
    ...document.body.dataset,
    rows: [...document.querySelectorAll("#contributions tbody tr")].map((tr) => ({
      id: tr.title,
      samples: Number(tr.children[5].textContent),
      credit: Number(tr.children[6].textContent),
    })),
  }));
  // The page's checkpoint link downloads a gradswarm checkpoint of this run, at the round it says.
  const link = await tab.$eval("#checkpoint a", (a) => ({ href: a.href, name: a.download }));
  const bytes = Buffer.from(await (await fetch(link.href)).arrayBuffer());
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const meta = JSON.parse(bytes.subarray(8, 8 + headerLen).toString("utf8")).__metadata__;
  if (meta.format !== "gradswarm-checkpoint/1" || meta.run_id !== "browser-e2e") fail(`the download is no checkpoint of the run: ${JSON.stringify(meta)}`);
  if (Number(meta.round) < Number(seen.checkpointRound)) fail(`the page offered round ${seen.checkpointRound}, the download holds ${meta.round}`);
  if (!link.name.endsWith(".safetensors")) fail(`the download is named ${link.name}`);
  await browser.close();
  if (Number(seen.tableSamples) !== Number(seen.summarySamples)) fail(`the table sums to ${seen.tableSamples}, the summary says ${seen.summarySamples}`);

  // The peers leave (Ctrl-C) and print what they trained: the dashboard showed each one, at most
  // that much (it heard them a little earlier).
  for (const p of peers) p.child.kill("SIGINT");
  const reported = [];
  for (const p of peers) {
    const { code, lines } = await p.exited;
    if (code !== 0) fail(`a peer exited with ${code}`);
    reported.push(JSON.parse(lines.filter((l) => l.startsWith("{")).pop() ?? "{}"));
  }
  for (const r of reported) {
    const row = seen.rows.find((x) => x.id === r.peer_id);
    if (!row) fail(`the dashboard did not list ${r.peer_id}`);
    if (!(row.samples > 0 && row.samples <= r.samples)) fail(`${r.peer_id}: the dashboard showed ${row.samples} samples, it reports ${r.samples}`);
    // Credit is what the other two attest they counted: some, and no more than the peer trained.
    if (!(row.credit > 0 && row.credit <= row.samples)) fail(`${r.peer_id}: the dashboard credited ${row.credit} of its ${row.samples} samples`);
  }
  const result = {
    peers: Number(seen.peers),
    points: Number(seen.points),
    val_points: Number(seen.valPoints),
    first_loss: Number(seen.firstLoss),
    last_loss: Number(seen.lastLoss),
    table_samples: Number(seen.tableSamples),
    table_credit: Number(seen.tableCredit),
    checkpoint_round: Number(seen.checkpointRound),
    reported_samples: reported.map((r) => r.samples),
    screenshot,
  };
  fs.writeFileSync(path.join(artifacts, "result.json"), JSON.stringify(result, null, 2));
  console.log(`dashboard-test: ok ${JSON.stringify(result)}`);
  for (const c of children) c.kill("SIGTERM");
  fs.rmSync(tmp, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  fail(e?.stack ?? String(e));
}
