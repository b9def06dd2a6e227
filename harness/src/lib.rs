//! gradswarm's local multi-peer harness: a bootstrap node and N peers in one process, on real
//! loopback sockets with real libp2p, each peer's round loop on a thread of its own.
//!
//! The end-to-end tests (`harness/tests/swarm.rs`) drive it; every wait is on an event (a round report)
//! with a deadline, never a sleep.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use gradswarm_core::CpuCodec;
use gradswarm_model::burn::prelude::Device;
use gradswarm_model::{Checkpoint, checkpoint};
use gradswarm_model::{Corpus, DataConfig, ModelConfig, TrainConfig, Trainer};
use gradswarm_net::{Multiaddr, NetConfig, NetHandle, native};
use gradswarm_peer::{
    Edge, Honest, MOMENTUM_KEY, PauseHandle, Peer, PeerConfig, PeerSummary, RESIDUAL_KEY,
    RoundReport, StopHandle, stop_pair,
};

use crate::attack::{Attack, Attacker};

pub mod adversity;
pub mod attack;
pub mod baseline;
pub mod child;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;

/// The workspace's bundled corpus.
pub fn corpus_path() -> PathBuf {
    manifest_dir().join("../data/shakespeare.txt")
}

/// This package's directory, read at run time where cargo sets it: a binary built from another
/// checkout that shares the target directory (and that cargo then reuses) would otherwise look in
/// that checkout.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Loads the bundled corpus for a model of context `context`.
pub fn load_corpus(context: usize) -> Result<Arc<Corpus>> {
    let data = DataConfig {
        path: corpus_path(),
        ..DataConfig::default()
    };
    Ok(Arc::new(Corpus::load(&data, context)?))
}

/// A round report from peer `index`.
#[derive(Clone, Debug)]
pub struct Report {
    /// Which peer (in the order they were started).
    pub peer: usize,
    /// The report.
    pub round: RoundReport,
    /// Bytes the peer's transport had sent by the end of the round.
    pub wire_sent: u64,
    /// Bytes the peer's transport had received by the end of the round.
    pub wire_received: u64,
    /// Of the bytes sent, the substream payloads by protocol, by the end of the round.
    pub wire_sent_by_protocol: BTreeMap<String, u64>,
    /// Peers it was connected to at the end of the round.
    pub connections: usize,
    /// θ after the round, on rounds that are multiples of [`LocalSwarm::snapshot_every`].
    pub params: Option<Arc<Vec<f32>>>,
}

/// What `net` has sent so far, by protocol.
fn sent_by_protocol(net: &NetHandle) -> BTreeMap<String, u64> {
    net.wire_by_protocol()
        .into_iter()
        .map(|(name, (sent, _))| (name, sent))
        .collect()
}

/// What the peers' threads tell the harness.
enum Event {
    /// A peer finished a round.
    Round(Box<Report>),
    /// A peer's run ended with this error: waiting on its reports would only time out.
    Failed(usize, String),
}

/// A running in-process peer.
pub struct PeerProc {
    /// Its network handle (to kill it: shut the network down).
    pub net: NetHandle,
    /// Pauses and resumes it without it leaving.
    pub pause: PauseHandle,
    stop: StopHandle,
    thread: Option<JoinHandle<Result<PeerSummary>>>,
    index: usize,
    killed: Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>>,
}

impl PeerProc {
    /// Asks the peer to stop after its round and waits for its summary.
    pub fn stop(self) -> Result<PeerSummary> {
        self.stop.stop();
        self.join()
    }

    /// Kills the peer: its network goes away mid-round, as a crashed process's would.
    pub fn kill(mut self) {
        // Its run ends with an error now, which is no reason to stop waiting on the others.
        self.killed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.index);
        self.net.shutdown();
        self.stop.stop();
        // Its thread ends on its own; what it returns no longer matters.
        self.thread.take();
    }

    /// Waits for the peer to finish its configured rounds.
    pub fn join(mut self) -> Result<PeerSummary> {
        let thread = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("already joined"))?;
        let summary = thread
            .join()
            .map_err(|_| anyhow!("peer thread panicked"))??;
        self.net.shutdown();
        Ok(summary)
    }
}

/// A bootstrap node and the peers started against it.
pub struct LocalSwarm {
    runtime: tokio::runtime::Runtime,
    /// The bootstrap node's TCP address (with `/p2p/<id>`).
    pub bootstrap: Multiaddr,
    /// The bootstrap node, when this swarm started it (not in a peer process: [`Self::attach`]).
    bootstrap_net: Option<NetHandle>,
    reports_tx: std_mpsc::Sender<Event>,
    /// Every round report of every peer in arrival order, and peers that ended with an error.
    reports: std_mpsc::Receiver<Event>,
    started: usize,
    killed: Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>>,
    /// Attach θ to the reports of rounds `r` with `(r + 1) % snapshot_every == 0` (0: never), so
    /// that replica divergence can be measured along the run.
    pub snapshot_every: u64,
    /// Peers started from here on write a checkpoint to this file after each round, and start
    /// from it when it is there (a peer process restarted after a SIGKILL).
    pub checkpoint: Option<PathBuf>,
    /// Peers started from here on are behind this link (none: loopback as it is).
    pub link: Option<gradswarm_net::LinkShape>,
    /// Peers started from here on take the identity [`identity`] gives their index under this
    /// seed (none: a fresh random one), so that a test knows the groups they will be drawn in.
    pub identities: Option<u64>,
}

/// The identity of the `index`-th peer a [`LocalSwarm`] starts under identity seed `seed`: the
/// same for every run, so that the groups drawn from the peers' ids are too.
pub fn identity(seed: u64, index: usize) -> gradswarm_net::Keypair {
    let mut rng = gradswarm_core::synthetic::SplitMix::new(seed ^ (index as u64).rotate_left(32));
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    gradswarm_net::Keypair::ed25519_from_bytes(bytes).expect("32 bytes are an ed25519 secret")
}

/// Where a peer restarts from: its checkpoint's round and its own state beside θ and AdamW.
struct Resume {
    round: u64,
    state: Vec<(&'static str, Vec<f32>)>,
}

impl LocalSwarm {
    /// Starts a bootstrap node for `run_id` on a loopback port.
    pub fn start(run_id: &str) -> Result<Self> {
        let mut swarm = Self::attach("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let (bootstrap_net, bootstrap) = swarm.runtime.block_on(async {
            let mut config = NetConfig::bootstrap(run_id, 16 << 20);
            config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
            config.gossip_heartbeat = Duration::from_millis(200);
            let key = gradswarm_net::Keypair::generate_ed25519();
            let (handle, mut events, driver) = native::build(config, key).await?;
            tokio::spawn(driver.run());
            let addr = tokio::time::timeout(Duration::from_secs(10), async {
                use futures::StreamExt;
                while let Some(event) = events.next().await {
                    if let gradswarm_net::NetEvent::Listening(addr) = event {
                        return Some(addr);
                    }
                }
                None
            })
            .await
            .context("bootstrap did not start listening")?
            .ok_or_else(|| anyhow!("bootstrap stopped"))?;
            anyhow::Ok((handle, addr))
        })?;
        swarm.bootstrap = bootstrap;
        swarm.bootstrap_net = Some(bootstrap_net);
        Ok(swarm)
    }

    /// A swarm whose peers join the bootstrap node at `bootstrap`, started elsewhere (a peer
    /// process joins its harness's).
    pub fn attach(bootstrap: Multiaddr) -> Result<Self> {
        // RUST_LOG=gradswarm_peer=debug shows a test's rounds; a second init (another test) is a
        // no-op. Without it the peers' warnings are kept: a failing test then prints them (its
        // output is captured), which is all a CI log has to explain a flake with.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,libp2p_kad=error,libp2p_gossipsub=error".into()),
            )
            .with_test_writer()
            .try_init();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (reports_tx, reports) = std_mpsc::channel();
        Ok(Self {
            runtime,
            bootstrap,
            bootstrap_net: None,
            reports_tx,
            reports,
            started: 0,
            killed: Arc::default(),
            snapshot_every: 0,
            checkpoint: None,
            link: None,
            identities: None,
        })
    }

    /// Starts a peer training `model`/`train` under `config`; it first waits for `min_peers`
    /// other peers. Returns its index (in report order) and its handle.
    pub fn spawn_peer(
        &mut self,
        config: PeerConfig,
        model: &ModelConfig,
        train: &TrainConfig,
        corpus: Arc<Corpus>,
        min_peers: usize,
    ) -> Result<(usize, PeerProc)> {
        self.spawn_as(None, config, model, train, corpus, min_peers)
    }

    /// Starts a peer like [`Self::spawn_peer`]; with `attack`, an attacker whose messages go
    /// out through that [`Attacker`] edge.
    pub fn spawn_as(
        &mut self,
        attack: Option<Attack>,
        config: PeerConfig,
        model: &ModelConfig,
        train: &TrainConfig,
        corpus: Arc<Corpus>,
        min_peers: usize,
    ) -> Result<(usize, PeerProc)> {
        let (trainer, resume) = match &self.checkpoint {
            Some(path) if path.exists() => {
                let ckpt = Checkpoint::load(path)?;
                let trainer = ckpt.into_trainer(path, train, &Device::flex())?;
                let state = [RESIDUAL_KEY, MOMENTUM_KEY]
                    .into_iter()
                    .filter_map(|key| ckpt.state(key).map(|v| (key, v.to_vec())))
                    .collect();
                let round = ckpt.meta.round;
                (trainer, Some(Resume { round, state }))
            }
            _ => (Trainer::new(model, train, &Device::flex())?, None),
        };
        let mut config = config;
        if let Some(attack) = attack {
            config.slowdown = config.slowdown.max(attack.slowdown());
        }
        let edge: Box<dyn Edge> = match attack {
            Some(attack) => Box::new(Attacker::new(
                attack,
                config.codec,
                config.staleness,
                config.averaging,
                config.norm_screen,
                0x5EED + self.started as u64,
            )?),
            None => Box::new(Honest),
        };
        self.spawn_with(config, trainer, corpus, min_peers, edge, resume)
    }

    /// Starts a peer around a trainer made by the caller (whose replica a test may have moved).
    pub fn spawn_trainer(
        &mut self,
        config: PeerConfig,
        trainer: Trainer,
        corpus: Arc<Corpus>,
        min_peers: usize,
    ) -> Result<(usize, PeerProc)> {
        self.spawn_with(config, trainer, corpus, min_peers, Box::new(Honest), None)
    }

    fn spawn_with(
        &mut self,
        config: PeerConfig,
        trainer: Trainer,
        corpus: Arc<Corpus>,
        min_peers: usize,
        edge: Box<dyn Edge>,
        resume: Option<Resume>,
    ) -> Result<(usize, PeerProc)> {
        let index = self.started;
        self.started += 1;
        let n = trainer.num_params();
        let model_hash = trainer.model_config().hash();
        let mut net_config = config.net_config(model_hash, n, trainer.config().batch_size);
        net_config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
        net_config.bootstrap = vec![self.bootstrap.clone()];
        net_config.gossip_heartbeat = Duration::from_millis(200);
        net_config.link = self.link;
        let key = match self.identities {
            Some(seed) => identity(seed, index),
            None => gradswarm_net::Keypair::generate_ed25519(),
        };
        let (net, events, driver) = self.runtime.block_on(native::build(net_config, key))?;
        // Every log line says whose it is: one process runs all of a scenario's peers.
        let span = tracing::info_span!("peer", i = index);
        self.runtime
            .spawn(tracing::Instrument::instrument(driver.run(), span.clone()));
        let codec = Box::new(CpuCodec::new(config.codec)?);
        let (stop, stop_rx) = stop_pair();
        let pause = PauseHandle::default();
        let peer_pause = pause.clone();
        let tx = self.reports_tx.clone();
        let round_tx = tx.clone();
        let peer_net = net.clone();
        let counted_net = net.clone();
        let snapshot_every = self.snapshot_every;
        let checkpoint_path = self.checkpoint.clone();
        let run_id = config.run_id.clone();
        let thread = std::thread::Builder::new()
            .name(format!("peer-{index}"))
            .spawn(move || -> Result<PeerSummary> {
                let _span = span.entered();
                let mut peer =
                    Peer::new(config, trainer, corpus, codec, peer_net, events, stop_rx)?;
                if let Some(resume) = resume {
                    peer.resume_at(resume.round);
                    for (key, values) in resume.state {
                        peer.restore_local_state(key, values)?;
                    }
                }
                peer.wait_for_peers(min_peers);
                peer.set_edge(edge);
                peer.set_pause_handle(peer_pause);
                peer.set_observer(Box::new(move |round, trainer, state| {
                    if let Some(path) = &checkpoint_path
                        && let Err(e) =
                            checkpoint::save(path, trainer, &run_id, round.round + 1, state)
                    {
                        tracing::warn!("checkpoint after round {}: {e}", round.round);
                    }
                    let (wire_sent, wire_received) = counted_net.wire_bytes();
                    let wire_sent_by_protocol = sent_by_protocol(&counted_net);
                    let params = (snapshot_every > 0
                        && (round.round + 1).is_multiple_of(snapshot_every))
                    .then(|| trainer.parameters().ok().map(Arc::new))
                    .flatten();
                    // The test may have finished listening; the peer carries on regardless.
                    let _ = round_tx.send(Event::Round(Box::new(Report {
                        peer: index,
                        round: round.clone(),
                        wire_sent,
                        wire_received,
                        wire_sent_by_protocol,
                        connections: counted_net.connected_peers(),
                        params,
                    })));
                }));
                let result = futures::executor::block_on(peer.run());
                if let Err(e) = &result {
                    let _ = tx.send(Event::Failed(index, e.to_string()));
                }
                Ok(result?)
            })?;
        Ok((
            index,
            PeerProc {
                net,
                pause,
                stop,
                thread: Some(thread),
                index,
                killed: self.killed.clone(),
            },
        ))
    }

    /// Waits until `pred` holds for a report, collecting every report seen meanwhile into `log`;
    /// fails after `timeout`.
    pub fn wait_for(
        &self,
        log: &mut Vec<Report>,
        timeout: Duration,
        mut pred: impl FnMut(&Report) -> bool,
    ) -> Result<Report> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no matching round report within {timeout:?}");
            }
            match self.reports.recv_timeout(left) {
                Ok(Event::Round(report)) => {
                    log.push((*report).clone());
                    if pred(&report) {
                        return Ok(*report);
                    }
                }
                Ok(Event::Failed(peer, error)) => {
                    let killed = self.killed.lock().unwrap_or_else(|p| p.into_inner());
                    if !killed.contains(&peer) {
                        bail!("peer {peer} failed: {error}");
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no matching round report within {timeout:?}")
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => bail!("all peers ended"),
            }
        }
    }

    /// Runs a future on the swarm's network runtime (a rogue node in a test, say).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Spawns a task on the swarm's network runtime.
    pub fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(f);
    }
}

impl Drop for LocalSwarm {
    fn drop(&mut self) {
        if let Some(net) = &self.bootstrap_net {
            net.shutdown();
        }
    }
}

/// Relative L2 distance of each vector from their mean: max_i ‖θ_i − θ̄‖ / ‖θ̄‖.
pub fn max_divergence(params: &[&[f32]]) -> f64 {
    let Some(first) = params.first() else {
        return 0.0;
    };
    let n = first.len();
    let mut mean = vec![0.0f64; n];
    for p in params {
        for (m, &v) in mean.iter_mut().zip(p.iter()) {
            *m += f64::from(v) / params.len() as f64;
        }
    }
    let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt().max(1e-30);
    params
        .iter()
        .map(|p| {
            p.iter()
                .zip(&mean)
                .map(|(&v, m)| (f64::from(v) - m).powi(2))
                .sum::<f64>()
                .sqrt()
                / norm
        })
        .fold(0.0, f64::max)
}
