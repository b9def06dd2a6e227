//! gradswarm's browser peer: a tab that joins a run as an equal peer.
//!
//! The page (`web/www/`) calls [`join`] with the run's options and the corpus bytes; this builds
//! the same [`Peer`](gradswarm_peer::Peer) the desktop node runs, on libp2p over WebSocket
//! (`gradswarm_net::web`), and drives it with wasm-bindgen-futures. Round reports go to a
//! JavaScript callback. Training runs on burn's wgpu backend over WebGPU where the browser offers
//! a hardware adapter, else on burn's CPU backend inside wasm, and the page says which and why.
//! Every read of the GPU is awaited (the trainer's `_async` methods): a tab cannot block on it.
#![cfg(target_arch = "wasm32")]

use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc;
use gradswarm_core::CodecDescriptor;
use gradswarm_model::{
    BackendKind, Checkpoint, Corpus, DataConfig, DeviceChoice, ModelConfig, TrainConfig, Trainer,
    device,
};
use gradswarm_net::{Keypair, Multiaddr};
use gradswarm_peer::{
    MOMENTUM_KEY, Mode, NodeConfig, PauseHandle, Peer, PeerConfig, RESIDUAL_KEY, RoundReport,
    StopHandle, stop_pair,
};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

/// Sets up panic messages and logs on the browser console (runs when the module loads).
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    // INFO and up: libp2p's TRACE lines, printed through the console, slowed rounds to a crawl.
    let config = tracing_wasm::WASMLayerConfigBuilder::new()
        .set_max_level(tracing::Level::INFO)
        .build();
    tracing_wasm::set_as_global_default_with_config(config);
}

/// What the page passes to [`join`] (a plain JavaScript object).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinOptions {
    /// The run to join: it must match the native peers' run id.
    pub run_id: String,
    /// Multiaddrs of nodes to dial (a bootstrap node's `/ws` address, with `/p2p/<id>`).
    pub bootstrap: Vec<String>,
    /// Rounds to run (absent: until [`BrowserPeer::leave`]).
    #[serde(default)]
    pub rounds: Option<u64>,
    /// Other peers to wait for before the first round.
    #[serde(default)]
    pub min_peers: usize,
    /// The model (absent: the default job's); it must match the run's.
    #[serde(default)]
    pub model: Option<ModelConfig>,
    /// The trainer (absent: the default job's).
    #[serde(default)]
    pub train: Option<TrainConfig>,
    /// Top-k density in coordinates per million (absent: the default job's, 10 000); it must
    /// match the run's `swarm.top_k_per_million`, as peers accept updates in the run's codec only.
    #[serde(default)]
    pub top_k_per_million: Option<u32>,
    /// Where to train: `auto` (WebGPU on a hardware adapter, else the CPU backend), `gpu`
    /// (WebGPU on any adapter, software ones included) or `cpu`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// A published run's settings (its manifest's TOML, which the page server hands out): the
    /// model, trainer, mode and codec come from them, as a desktop node's do, instead of
    /// `model`, `train` and `top_k_per_million`.
    #[serde(default)]
    pub settings: Option<String>,
    /// This tab's key (its protobuf encoding, as [`BrowserPeer::identity`] gave it on an earlier
    /// visit), so that a reload rejoins with the same peer id (absent: a new identity).
    #[serde(default)]
    pub identity: Option<Vec<u8>>,
    /// The share of the time the tab trains, in (0, 1] (absent: all of it).
    #[serde(default)]
    pub duty_cycle: Option<f64>,
    /// Rounds between the checkpoints handed to the page (one more when the peer leaves).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

/// A tab checkpoints more often than a desktop node (100 rounds): it is closed without warning.
fn default_checkpoint_every() -> u64 {
    10
}

impl JoinOptions {
    /// The model, trainer, data split and peer settings these options ask for.
    fn resolve(&self) -> Result<(ModelConfig, TrainConfig, DataConfig, PeerConfig), JsError> {
        if let Some(text) = &self.settings {
            if self.model.is_some() || self.train.is_some() || self.top_k_per_million.is_some() {
                return Err(JsError::new(
                    "join options: a published run's settings say the model, trainer and \
                     codec; give them or settings, not both",
                ));
            }
            let run = NodeConfig::from_toml(text).map_err(|e| js_error("run settings", e))?;
            let mut config = run.peer_config();
            config.run_id = self.run_id.clone();
            return Ok((run.model, run.train, run.data, config));
        }
        let mut config = PeerConfig::new(&self.run_id, Mode::Gradient);
        if let Some(per_million) = self.top_k_per_million {
            config.codec = CodecDescriptor::top_k_int8_zstd(per_million);
            config
                .codec
                .validate()
                .map_err(|e| js_error("top_k_per_million", e))?;
        }
        Ok((
            self.model.clone().unwrap_or_default(),
            self.train.clone().unwrap_or_default(),
            DataConfig::default(),
            config,
        ))
    }
}

/// What the page is told after each round: a [`RoundReport`] in JavaScript's terms (numbers
/// that fit a double; the parameter checksum, a random 64-bit value, stays out).
#[derive(Serialize)]
struct PageReport {
    round: f64,
    loss: f32,
    val_loss: Option<f64>,
    samples: f64,
    peers: usize,
    updates: usize,
    staleness: Vec<f64>,
    drops: std::collections::BTreeMap<String, f64>,
    bytes_up: f64,
    bytes_down: f64,
    compute_s: f64,
    encode_s: f64,
    network_s: f64,
    catch_up: bool,
    reconciled: f64,
    credit: f64,
}

impl From<&RoundReport> for PageReport {
    fn from(r: &RoundReport) -> Self {
        Self {
            round: r.round as f64,
            loss: r.loss,
            val_loss: r.val_loss,
            samples: r.samples as f64,
            peers: r.peers,
            updates: r.updates,
            staleness: r.staleness.iter().map(|&t| t as f64).collect(),
            drops: r
                .drops
                .iter()
                .map(|(reason, n)| (reason.as_str().to_string(), n as f64))
                .collect(),
            bytes_up: r.bytes_up as f64,
            bytes_down: r.bytes_down as f64,
            compute_s: r.compute_s,
            encode_s: r.encode_s,
            network_s: r.network_s,
            catch_up: r.catch_up,
            reconciled: r.reconciled as f64,
            credit: r.credit as f64,
        }
    }
}

/// A running browser peer.
#[wasm_bindgen]
pub struct BrowserPeer {
    stop: StopHandle,
    peer_id: String,
    identity: Vec<u8>,
    adapter: String,
    webgpu: bool,
    fallback: Option<String>,
    resumed_from: Option<u64>,
    codec: String,
    pause: PauseHandle,
}

#[wasm_bindgen]
impl BrowserPeer {
    /// Where the update codec runs: the WGSL kernels on the training device, or the CPU.
    #[wasm_bindgen(getter)]
    pub fn codec(&self) -> String {
        self.codec.clone()
    }

    /// The round of the tab's own checkpoint it resumed from, if it did.
    #[wasm_bindgen(getter)]
    pub fn resumed_from(&self) -> Option<u64> {
        self.resumed_from
    }

    /// This peer's key (protobuf encoding), for the page to keep and pass back as
    /// [`JoinOptions::identity`] on its next visit.
    #[wasm_bindgen(getter)]
    pub fn identity(&self) -> Vec<u8> {
        self.identity.clone()
    }

    /// This peer's libp2p id (base58).
    #[wasm_bindgen(getter)]
    pub fn peer_id(&self) -> String {
        self.peer_id.clone()
    }

    /// What trains: the WebGPU adapter (name, type, driver) or the CPU backend.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// Whether training runs on WebGPU (else on the CPU backend inside wasm).
    #[wasm_bindgen(getter)]
    pub fn webgpu(&self) -> bool {
        self.webgpu
    }

    /// Why the CPU backend was chosen under `auto`, when it was.
    #[wasm_bindgen(getter)]
    pub fn fallback(&self) -> Option<String> {
        self.fallback.clone()
    }

    /// Stops training without leaving: heartbeats go on and the rounds are skipped.
    pub fn pause(&self) {
        self.pause.set(true);
    }

    /// Trains again after [`BrowserPeer::pause`], from the swarm's round.
    pub fn resume(&self) {
        self.pause.set(false);
    }

    /// Leaves the run after the current round: to the others, a tab that left.
    pub fn leave(&self) {
        self.stop.stop();
    }
}

fn js_error(context: &str, e: impl std::fmt::Display) -> JsError {
    JsError::new(&format!("{context}: {e}"))
}

/// Joins the run: `options` as [`JoinOptions`], `corpus` the training text's bytes, `checkpoint`
/// the bytes `on_checkpoint` was last called with in this run (absent: a fresh start), `on_round`
/// called with each round's report (an object shaped like [`RoundReport`]), `on_end` with an
/// error message or null when the peer stops, and `on_checkpoint` with `(round, bytes)` every
/// `checkpoint_every` rounds and when the peer leaves. Resolves once the device is chosen and the
/// peer started.
#[wasm_bindgen]
pub async fn join(
    options: JsValue,
    corpus: Vec<u8>,
    checkpoint: Option<Vec<u8>>,
    on_round: js_sys::Function,
    on_end: js_sys::Function,
    on_checkpoint: js_sys::Function,
) -> Result<BrowserPeer, JsError> {
    let options: JoinOptions =
        serde_wasm_bindgen::from_value(options).map_err(|e| js_error("join options", e))?;
    let (model, train, data, mut config) = options.resolve()?;
    let corpus =
        Corpus::from_bytes(corpus, &data, model.context).map_err(|e| js_error("corpus", e))?;
    let bootstrap = options
        .bootstrap
        .iter()
        .map(|a| a.parse::<Multiaddr>().map_err(|e| js_error(a, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let selected = device::select_async(options.device)
        .await
        .map_err(|e| js_error("device", e))?;
    match &selected.fallback_reason {
        Some(why) => tracing::info!("training on {} ({why})", selected.summary),
        None => tracing::info!("training on {}", selected.summary),
    }
    let resumed = match checkpoint {
        Some(bytes) => resumable(&bytes, &config.run_id, &model),
        None => None,
    };
    let trainer = match &resumed {
        Some(ckpt) => ckpt.into_trainer(
            std::path::Path::new("the tab's checkpoint"),
            &train,
            &selected.device,
        ),
        None => Trainer::new(&model, &train, &selected.device),
    }
    .map_err(|e| js_error("model", e))?;
    config.rounds = options.rounds;
    if let Some(duty) = options.duty_cycle {
        if !(duty > 0.0 && duty <= 1.0) {
            return Err(JsError::new(&format!(
                "duty_cycle must be in (0, 1], not {duty}"
            )));
        }
        config.duty_cycle = duty;
    }
    config.agent = gradswarm_peer::agent("browser", &selected.summary);
    let n = trainer.num_params();
    let mut net_config = config.net_config(model.hash(), n, train.batch_size);
    net_config.bootstrap = bootstrap;
    let key = match &options.identity {
        Some(bytes) => {
            Keypair::from_protobuf_encoding(bytes).map_err(|e| js_error("identity", e))?
        }
        None => Keypair::generate_ed25519(),
    };
    let identity = key
        .to_protobuf_encoding()
        .map_err(|e| js_error("identity", e))?;
    let (net, events, driver) =
        gradswarm_net::web::build(net_config, key).map_err(|e| js_error("network", e))?;
    let peer_id = net.local_peer_id().to_base58();
    wasm_bindgen_futures::spawn_local(driver.run());

    // On WebGPU the codec's kernels share the trainer's device, as on the desktop.
    let (codec, codec_kind) = gradswarm_shaders::codec_for(config.codec, selected.wgpu_queue())
        .map_err(|e| js_error("codec", e))?;
    let (stop, stop_rx) = stop_pair();
    let mut peer = Peer::new(
        config,
        trainer,
        Arc::new(corpus),
        codec,
        net.clone(),
        events,
        stop_rx,
    )
    .map_err(|e| js_error("peer", e))?;
    if let Some(ckpt) = &resumed {
        // As the node resumes: from the checkpoint's round, catching up if the swarm moved on.
        peer.resume_at(ckpt.meta.round);
        for key in [RESIDUAL_KEY, MOMENTUM_KEY] {
            if let Some(values) = ckpt.state(key) {
                peer.restore_local_state(key, values.to_vec())
                    .map_err(|e| js_error("the tab's checkpoint", e))?;
            }
        }
        tracing::info!(
            "resuming from the tab's checkpoint of round {}",
            ckpt.meta.round
        );
    }
    peer.wait_for_peers(options.min_peers);
    let pause = PauseHandle::default();
    peer.set_pause_handle(pause.clone());
    // Checkpoints cross to the page as reports do (the sink must be Send).
    let (checkpoints, mut kept) = mpsc::unbounded::<(u64, Vec<u8>)>();
    peer.set_checkpoint_sink(
        options.checkpoint_every,
        Box::new(move |round, bytes| {
            let _ = checkpoints.unbounded_send((round, bytes));
        }),
    );
    wasm_bindgen_futures::spawn_local(async move {
        while let Some((round, bytes)) = kept.next().await {
            let bytes = js_sys::Uint8Array::from(bytes.as_slice());
            if let Err(e) =
                on_checkpoint.call2(&JsValue::NULL, &JsValue::from_f64(round as f64), &bytes)
            {
                tracing::warn!("the page's checkpoint callback failed: {e:?}");
            }
        }
    });
    // The observer must be Send (native peers run on threads); JavaScript values are not, so
    // reports cross a channel to a task that calls the page.
    let (reports, mut received) = mpsc::unbounded::<RoundReport>();
    peer.set_observer(Box::new(move |report, _, _| {
        let _ = reports.unbounded_send(report.clone());
    }));
    wasm_bindgen_futures::spawn_local(async move {
        while let Some(report) = received.next().await {
            // JSON-compatible: drop counts arrive as a plain object, not a JavaScript Map.
            let serializer = serde_wasm_bindgen::Serializer::json_compatible();
            match PageReport::from(&report).serialize(&serializer) {
                Ok(value) => {
                    if let Err(e) = on_round.call1(&JsValue::NULL, &value) {
                        tracing::warn!("the page's round callback failed: {e:?}");
                    }
                }
                Err(e) => tracing::warn!("round {} not shown: {e}", report.round),
            }
        }
    });
    wasm_bindgen_futures::spawn_local(async move {
        let result = peer.run().await;
        net.shutdown();
        let end = match result {
            Ok(_) => JsValue::NULL,
            Err(e) => JsValue::from_str(&e.to_string()),
        };
        let _ = on_end.call1(&JsValue::NULL, &end);
    });
    Ok(BrowserPeer {
        stop,
        peer_id,
        identity,
        adapter: selected.summary,
        webgpu: selected.kind == BackendKind::Wgpu,
        fallback: selected.fallback_reason,
        resumed_from: resumed.map(|c| c.meta.round),
        codec: codec_kind.to_string(),
        pause,
    })
}

/// The tab's checkpoint, if it is one of this run and model; a stale or damaged one is set aside
/// (logged), and the tab starts as a new peer would, syncing from the swarm.
fn resumable(bytes: &[u8], run_id: &str, model: &ModelConfig) -> Option<Checkpoint> {
    match Checkpoint::from_bytes(bytes) {
        Ok(ckpt) if ckpt.meta.run_id == run_id && ckpt.meta.model_config == *model => Some(ckpt),
        Ok(ckpt) => {
            tracing::warn!(
                "the tab's checkpoint is of run {}, not {run_id}: starting afresh",
                ckpt.meta.run_id
            );
            None
        }
        Err(e) => {
            tracing::warn!("the tab's checkpoint is unreadable ({e}): starting afresh");
            None
        }
    }
}
