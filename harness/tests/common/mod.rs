//! What the end-to-end test files share: a tiny model, fast settings, and the checks of a run.

#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;
use std::time::Duration;

use gradswarm_core::StalenessPolicy;
use gradswarm_harness::{LocalSwarm, load_corpus, max_divergence};
use gradswarm_model::{Corpus, ModelConfig, TrainConfig};
use gradswarm_peer::{Mode, PeerConfig, PeerSummary};

pub const DEADLINE: Duration = Duration::from_secs(120);

/// One swarm at a time: five swarms of 3–4 peers on two cores would make every round's timing,
/// which the slow-peer and join tests depend on, a matter of scheduling.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding the lock poisoned it; the next test is still valid.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn tiny_model() -> ModelConfig {
    ModelConfig::tiny()
}

pub fn tiny_train() -> TrainConfig {
    TrainConfig {
        steps: 1000,
        batch_size: 8,
        micro_batch_size: 8,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 3,
        ..TrainConfig::default()
    }
}

pub fn config(run_id: &str, rounds: u64) -> PeerConfig {
    let mut c = PeerConfig::new(run_id, Mode::Gradient);
    c.rounds = Some(rounds);
    // Top-10%: the tiny model has 20k parameters, so top-1% would send only ~200 per round.
    c.codec = gradswarm_core::CodecDescriptor::top_k_int8_zstd(100_000);
    c.join_wait = Duration::from_millis(500);
    c.min_wait = Duration::from_millis(300);
    c.peer_timeout = Duration::from_secs(10);
    // The tiny model's rounds take milliseconds: a heartbeat every round, so that drift shows
    // within a 40-round run.
    c.heartbeat_every = Duration::ZERO;
    c
}

pub fn corpus() -> Arc<Corpus> {
    load_corpus(tiny_model().context).expect("bundled corpus")
}

/// Configs of fast peers that do not wait for a slow one (the deadline is what makes it late), and
/// of the slow one, `slowdown` times slower; updates staler than `tau_max` are dropped.
pub fn fast_and_slow(
    mut fast: PeerConfig,
    tau_max: u64,
    slowdown: f64,
) -> (PeerConfig, PeerConfig) {
    fast.staleness = StalenessPolicy {
        alpha: 0.5,
        tau_max,
    };
    fast.deadline_factor = 1.0;
    fast.min_wait = Duration::from_millis(1);
    // The slow peer is late by a few of the fast peers' rounds, which take a few milliseconds
    // of the tiny model's compute: a round floor of 50 ms would hide that.
    fast.round_floor = Duration::ZERO;
    let mut slow = fast.clone();
    slow.slowdown = slowdown;
    (fast, slow)
}

/// Runs one peer per config (each waiting for the others) to its last round; their summaries.
pub fn run_together(
    swarm: &mut LocalSwarm,
    configs: Vec<PeerConfig>,
    corpus: &Arc<Corpus>,
) -> Vec<PeerSummary> {
    let others = configs.len() - 1;
    let peers: Vec<_> = configs
        .into_iter()
        .map(|c| {
            swarm
                .spawn_peer(c, &tiny_model(), &tiny_train(), corpus.clone(), others)
                .unwrap()
                .1
        })
        .collect();
    peers.into_iter().map(|p| p.join().unwrap()).collect()
}

/// The largest relative distance of a peer's final θ from the peers' mean (printed, for the log).
pub fn final_divergence(summaries: &[PeerSummary]) -> f64 {
    let params: Vec<&[f32]> = summaries
        .iter()
        .map(|s| s.final_params.as_slice())
        .collect();
    let divergence = max_divergence(&params);
    eprintln!("final replica divergence {divergence:.3e}");
    divergence
}

pub fn mean(xs: impl Iterator<Item = f32>) -> f32 {
    let v: Vec<f32> = xs.filter(|x| x.is_finite()).collect();
    v.iter().sum::<f32>() / v.len().max(1) as f32
}

/// First-3 vs last-3 rounds' mean training loss of a peer's own rounds.
pub fn loss_fell(summary: &PeerSummary) -> (f32, f32) {
    let own: Vec<f32> = summary
        .rounds
        .iter()
        .filter(|r| !r.catch_up)
        .map(|r| r.loss)
        .collect();
    let first = mean(own.iter().take(3).copied());
    let last = mean(own.iter().rev().take(3).copied());
    (first, last)
}
