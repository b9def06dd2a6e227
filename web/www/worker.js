// The browser peer's worker: the wasm peer runs here, off the page's thread, so that training on
// the CPU backend (whose steps block while they compute) never freezes the page. The page sends
// {type: "join", options, corpus, checkpoint}, {type: "pause"}, {type: "resume"} and
// {type: "leave"}; the worker answers with
// "joined", "round", "checkpoint", "end" and "error" messages.
import init, { join } from "./pkg/gradswarm_web.js";

let peer = null;
// A Rust panic surfaces as a RuntimeError ("unreachable") from inside a task: tell the page, which
// would otherwise wait for rounds that never come. Deep stacks name the Rust frames that failed.
Error.stackTraceLimit = 64;
const failed = (message) => self.postMessage({ type: "error", message: `the peer crashed: ${message}` });
self.addEventListener("error", (e) => failed(String(e.message ?? e)));
self.addEventListener("unhandledrejection", (e) => failed(String(e.reason?.message ?? e.reason)));
const ready = init();

self.onmessage = async (event) => {
  const message = event.data;
  if (message.type === "leave") {
    peer?.leave();
    return;
  }
  if (message.type === "pause" || message.type === "resume") {
    peer?.[message.type]();
    return;
  }
  if (message.type !== "join" || peer) return;
  try {
    await ready;
    peer = await join(
      message.options,
      new Uint8Array(message.corpus),
      message.checkpoint ?? undefined,
      (report) => self.postMessage({ type: "round", report }),
      (error) => {
        peer = null;
        self.postMessage({ type: "end", error });
      },
      // The page keeps it (IndexedDB); the buffer moves there rather than being copied.
      (round, bytes) => self.postMessage({ type: "checkpoint", round, bytes }, [bytes.buffer]),
    );
    self.postMessage({
      type: "joined",
      peer_id: peer.peer_id,
      identity: Array.from(peer.identity),
      adapter: peer.adapter,
      webgpu: peer.webgpu,
      fallback: peer.fallback ?? null,
      resumed_from: peer.resumed_from ?? null,
      codec: peer.codec,
    });
  } catch (e) {
    peer = null;
    self.postMessage({ type: "error", message: String(e?.message ?? e) });
  }
};
