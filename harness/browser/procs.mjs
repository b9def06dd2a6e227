// What the browser tests share: child processes whose stdout lines can be waited for, logged
// under an artifacts folder, and killed together when a test fails.
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";

// Processes run from `root`, logging to `artifacts/<name>.log`; `fail` kills them all and exits.
export function processes(root, artifacts, label) {
  const children = [];
  const fail = (message) => {
    console.error(`${label}: FAIL: ${message}`);
    for (const c of children) c.kill("SIGKILL");
    process.exit(1);
  };
  // Starts a process; `waitFor(re)` resolves with the first stdout line matching re.
  const start = (name, cmd, args) => {
    const child = spawn(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    const lines = [];
    const waiters = [];
    const log = fs.createWriteStream(path.join(artifacts, `${name}.log`));
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      lines.push(line);
      log.write(`${line}\n`);
      for (const w of waiters.splice(0)) (w.re.test(line) ? w.resolve(line) : waiters.push(w));
    });
    child.stderr.on("data", (d) => log.write(d));
    const waitFor = (re, ms = 60_000) =>
      new Promise((resolve, reject) => {
        const hit = lines.find((l) => re.test(l));
        if (hit) return resolve(hit);
        waiters.push({ re, resolve });
        setTimeout(() => reject(new Error(`${name}: no line matching ${re} within ${ms} ms`)), ms);
      });
    const exited = new Promise((resolve) => child.on("exit", (code) => resolve({ code, lines })));
    return { child, waitFor, exited };
  };
  return { start, fail, children };
}
