//! How a peer takes part in a run (the `[swarm]` table of the node's TOML config).

use std::time::Duration;

use gradswarm_core::{
    AggregationRule, AveragingConfig, CodecDescriptor, OuterConfig, StalenessPolicy,
};
use serde::{Deserialize, Serialize};

/// What a peer sends each round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One local AdamW step per round (H = 1): peers average every step, as data-parallel training.
    Gradient,
    /// H local steps per round, DiLoCo-style: the update is the pseudo-gradient θ_anchor − θ_local.
    LocalSteps {
        /// Local steps per round.
        h: u64,
    },
}

impl Mode {
    /// Local optimizer steps per round.
    pub fn local_steps(self) -> u64 {
        match self {
            Self::Gradient => 1,
            Self::LocalSteps { h } => h.max(1),
        }
    }
}

/// The round protocol's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    /// The run: updates of other runs are rejected.
    pub run_id: String,
    /// Gradient or local-steps mode.
    pub mode: Mode,
    /// The codec chain updates are sent with.
    pub codec: CodecDescriptor,
    /// Staleness weights and τ_max.
    pub staleness: StalenessPolicy,
    /// How updates are combined.
    pub aggregation: AggregationRule,
    /// Whose updates a round waits for (broadcast: every live peer).
    pub averaging: AveragingConfig,
    /// How the aggregate moves θ (SGD lr 1 by default; Nesterov is there for dense codecs).
    pub outer: OuterConfig,
    /// The error-feedback residual is multiplied by this before each encode (1: kept whole).
    pub feedback_decay: f32,
    /// Stop after this round (None: until stopped).
    pub rounds: Option<u64>,
    /// A round's collection ends this many median compute times after publishing…
    pub deadline_factor: f64,
    /// …but never sooner than this…
    pub min_wait: Duration,
    /// …nor later than this.
    pub max_wait: Duration,
    /// A peer not heard from for this long is not waited for.
    pub peer_timeout: Duration,
    /// Before training, wait this long for peers to fetch the run's state from (0: start alone).
    pub join_wait: Duration,
    /// Validation loss every this many rounds (0: never).
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Drop updates whose norm exceeds this multiple of the running median.
    pub max_norm_ratio: f64,
    /// Experiments only: stretch each round's compute by this factor (1: none), to play a slow peer.
    pub slowdown: f64,
    /// Replicas whose heartbeat sketches put them further apart than this (relative L2) reconcile
    /// by pairwise averaging (None: never).
    pub drift_tolerance: Option<f64>,
}

impl PeerConfig {
    /// Defaults for `run_id` in `mode`: top-1% + int8 + zstd, α = 0.5, τ_max = 4, weighted mean,
    /// outer SGD lr 1; in local-steps mode the error-feedback residual decays by 0.9 per round.
    pub fn new(run_id: &str, mode: Mode) -> Self {
        Self {
            run_id: run_id.to_string(),
            mode,
            codec: CodecDescriptor::top_k_int8_zstd(10_000),
            staleness: StalenessPolicy::default(),
            aggregation: AggregationRule::WeightedMean,
            averaging: AveragingConfig::Broadcast,
            // Local steps with a sparse codec: measured (bench/four-peers-h8), DiLoCo's Nesterov
            // on top-1% pseudo-gradients with error feedback diverged (val 2.84, rising), with or
            // without residual decay, while SGD lr 1 on a residual decaying by 0.9 — whose
            // accumulator is the momentum, as SparseLoCo — beat the dense Nesterov baseline.
            outer: OuterConfig::Sgd { lr: 1.0 },
            feedback_decay: match mode {
                Mode::Gradient => 1.0,
                Mode::LocalSteps { .. } => 0.9,
            },
            rounds: None,
            deadline_factor: 2.0,
            min_wait: Duration::from_millis(500),
            max_wait: Duration::from_secs(60),
            peer_timeout: Duration::from_secs(30),
            join_wait: Duration::from_secs(3),
            eval_every: 0,
            eval_batches: 4,
            max_norm_ratio: 50.0,
            slowdown: 1.0,
            // Last-bit differences of updates applied in another order read as ~1e-7; one missed
            // update of the default job as ~1e-3.
            drift_tolerance: Some(1e-4),
        }
    }
}
