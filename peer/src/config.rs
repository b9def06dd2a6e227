//! How a peer takes part in a run (the `[swarm]` table of the node's TOML config).

use std::time::Duration;

use gradswarm_core::{
    AggregationRule, AveragingConfig, CodecDescriptor, DirectionScreen, NormScreen, OuterConfig,
    StalenessPolicy, StandingConfig, WireLimits,
};
use serde::{Deserialize, Serialize};

/// Peers outside its heartbeat mesh that a peer under group averaging tells which heartbeats it
/// has, each gossip heartbeat (`NetConfig::gossip_lazy`).
const GROUPS_GOSSIP_LAZY: usize = 2;

/// The shortest a round may take. A peer alone, or whose partners are all in at once, would
/// otherwise run a tiny model's rounds as fast as it computes them (100 a second measured), past
/// the rate at which the others take its updates ([`gradswarm_net::RATE_PER_SECOND`] a topic):
/// its updates would be dropped as a flood and its rounds run away from theirs for good. One
/// update a round at half that rate leaves room for catch-up bursts.
pub const ROUND_FLOOR: Duration =
    Duration::from_millis((2000.0 / gradswarm_net::RATE_PER_SECOND) as u64);

/// A heartbeat's agent string: `gradswarm/<version> <kind> <device>`, cut to what the wire
/// allows and to printable ASCII (a device's name may hold anything).
pub fn agent(kind: &str, device: &str) -> String {
    let text = format!("gradswarm/{} {kind} {device}", env!("CARGO_PKG_VERSION"));
    text.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .take(gradswarm_core::wire::MAX_AGENT_LEN)
        .collect()
}

/// What a peer sends each round: `mode` in the node's `[swarm]` table, in harness scenarios and
/// in the browser's options (one enum for all of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One local AdamW step per round (H = 1): peers average every step, as data-parallel training.
    #[default]
    Gradient,
    /// H = `local_steps` local steps per round, DiLoCo-style: the update is the pseudo-gradient
    /// θ_anchor − θ_local.
    LocalSteps,
}

impl Mode {
    /// Local optimizer steps per round, given H (the `local_steps` setting, used in local-steps
    /// mode only).
    pub fn steps_per_round(self, local_steps: u64) -> u64 {
        match self {
            Self::Gradient => 1,
            Self::LocalSteps => local_steps.max(1),
        }
    }
}

/// H when a configuration does not say: local-steps mode's default steps per round.
pub const DEFAULT_LOCAL_STEPS: u64 = 8;

/// The round protocol's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    /// The run: updates of other runs are rejected.
    pub run_id: String,
    /// Gradient or local-steps mode.
    pub mode: Mode,
    /// H: local steps per round in local-steps mode (ignored in gradient mode).
    pub local_steps: u64,
    /// The codec chain updates are sent with.
    pub codec: CodecDescriptor,
    /// Staleness weights and τ_max.
    pub staleness: StalenessPolicy,
    /// How updates are combined.
    pub aggregation: AggregationRule,
    /// Whose updates a round waits for (broadcast: every live peer).
    pub averaging: AveragingConfig,
    /// How the aggregate moves θ (SGD: lr 2 in gradient mode, 3 in local-steps mode by default).
    pub outer: OuterConfig,
    /// The error-feedback residual is multiplied by this before each encode (1: kept whole).
    pub feedback_decay: f32,
    /// Local steps start from θ − (outer step / peers) · residual: where θ will stand once this
    /// peer's unsent residual is applied ([`gradswarm_core::ErrorFeedback::ahead_of`]).
    pub feedback_lookahead: bool,
    /// Local AdamW steps normalize for the global batch of all live peers rather than for this
    /// peer's batch alone (`gradswarm_model::AdamW::set_replicas`).
    pub global_second_moment: bool,
    /// Stop after this round (None: until stopped).
    pub rounds: Option<u64>,
    /// A round's collection ends this many median compute times after publishing…
    pub deadline_factor: f64,
    /// …but never sooner than this…
    pub min_wait: Duration,
    /// …nor later than this.
    pub max_wait: Duration,
    /// The shortest a round may take, so that this peer's updates stay within the rate the
    /// others take them at ([`ROUND_FLOOR`]); tests of timing relative to compute set it to 0.
    pub round_floor: Duration,
    /// What this peer runs, as its heartbeats tell the run's view (`gradswarm status`): the
    /// binary sets `gradswarm/<version> <desktop|browser> <device>`.
    pub agent: String,
    /// A peer not heard from for this long is not waited for.
    pub peer_timeout: Duration,
    /// Before training, wait this long for peers to fetch the run's state from (0: start alone).
    pub join_wait: Duration,
    /// Validation loss every this many rounds (0: never).
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// How a round's updates are screened by norm before they are aggregated.
    pub norm_screen: NormScreen,
    /// How they are screened by direction after that (`None`: not at all, for comparisons).
    pub direction_screen: Option<DirectionScreen>,
    /// How peers' standing over sealed rounds weighs their updates (`None`: not at all, for
    /// comparisons): colluders who keep pushing one way lose their weight
    /// ([`gradswarm_core::standing`]).
    pub standing: Option<StandingConfig>,
    /// Experiments only: stretch each round's compute by this factor (1: none), to play a slow peer.
    pub slowdown: f64,
    /// The share of the time this peer trains, in (0, 1]: after computing for `c` seconds it rests
    /// until `c / duty_cycle` after the round began (a volunteer lending part of a machine).
    /// Below 1 its heartbeats say `throttled`, and partners do not wait for its updates.
    pub duty_cycle: f64,
    /// Replicas whose heartbeat sketches put them further apart than this (relative L2) reconcile
    /// by pairwise averaging (None: never).
    pub drift_tolerance: Option<f64>,
    /// A round's close sends a heartbeat only when the last one is at least this old (zero: every
    /// round); the last round's close always sends one.
    pub heartbeat_every: Duration,
}

impl PeerConfig {
    /// Defaults for `run_id` in `mode`: top-1% + int8 + zstd, α = 0.5, τ_max = 4, weighted mean,
    /// error feedback without decay; outer SGD lr 2 in gradient mode, lr 3 in local-steps mode.
    pub fn new(run_id: &str, mode: Mode) -> Self {
        Self {
            run_id: run_id.to_string(),
            mode,
            local_steps: DEFAULT_LOCAL_STEPS,
            codec: CodecDescriptor::top_k_int8_zstd(10_000),
            staleness: StalenessPolicy::default(),
            aggregation: AggregationRule::WeightedMean,
            averaging: AveragingConfig::Broadcast,
            outer: match mode {
                // The mean of the peers' optimizer steps. Each is AdamW's step on the peer's own
                // batch, normalised by that batch's noisier second moment, and their noise cancels
                // in the mean, so lr 1 steps shorter than data-parallel's AdamW on the whole batch.
                // Measured (bench/four-peers; bench/README.md, "The outer optimizer"): lr 2 ahead of lr 1
                // at every evaluation to round 119 in two runs (2.78 vs 2.90 at round 29), lr 3
                // no better.
                Mode::Gradient => OuterConfig::Sgd { lr: 2.0 },
                // Measured (bench/four-peers-h8-long; bench/README.md, "The outer optimizer"): a top-1%
                // coordinate is sent about once in 25 rounds, so lr 1 moves θ by the plain mean of
                // the pseudo-gradients while dense DiLoCo's Nesterov (0.7, 0.9) moves it ~7× that;
                // Nesterov on the delayed sparse bursts diverged, SGD lr 3-4 trained best (lr 6
                // was worse again), and the residual is best kept whole (decay 1).
                Mode::LocalSteps => OuterConfig::Sgd { lr: 3.0 },
            },
            feedback_decay: 1.0,
            // Measured in gradient mode (bench/README.md, "Error feedback looks ahead"; validation read
            // every 10 rounds): four-peers reaches 2.6 with 1 920–2 240 samples instead of
            // 2 880–3 200, four-peers-top01 with 3 200–3 520 instead of 4 160–4 480. With local
            // steps it reached 2.2 later on four-peers-h8-long (16 384 samples against 12 800).
            feedback_lookahead: matches!(mode, Mode::Gradient),
            // Off: in lockstep on four-peers-long it takes dense averaging's final loss from
            // 1.800 to 1.750 (data-parallel: 1.735), but the codecs' outer lr 2 already makes up
            // for the same shortfall: top-1% ends at 1.816 with it, 1.800 without, and top-0.1%
            // gains 5% in samples (bench/README.md, "The codec is not the gap at top-1%").
            global_second_moment: false,
            rounds: None,
            deadline_factor: 2.0,
            min_wait: Duration::from_millis(500),
            round_floor: ROUND_FLOOR,
            agent: agent("peer", "unknown device"),
            max_wait: Duration::from_secs(60),
            peer_timeout: Duration::from_secs(30),
            join_wait: Duration::from_secs(3),
            eval_every: 0,
            eval_batches: 4,
            norm_screen: NormScreen::default(),
            direction_screen: Some(DirectionScreen::default()),
            standing: Some(StandingConfig::default()),
            slowdown: 1.0,
            duty_cycle: 1.0,
            // Last-bit differences of updates applied in another order read as ~1e-7; one missed
            // update of the default job as ~1e-3.
            drift_tolerance: Some(1e-4),
            // Gossipsub sends each heartbeat to every mesh member and each of them forwards it,
            // so in gradient mode, rounds of a few tenths of a second, a heartbeat per round cost
            // much uplink. Measured at top-0.2%: once a second instead of every round cut wire
            // bytes per step by 18%; at top-0.1%, every 3 s instead of every second by 12% more
            // (12.1 → 10.7 kB, 289× → 327×). Updates show liveness and round anyway; a tenth of
            // the peer timeout still tells drift within a few seconds.
            heartbeat_every: Duration::from_secs(3),
        }
    }
    /// Local optimizer steps per round.
    pub fn steps_per_round(&self) -> u64 {
        self.mode.steps_per_round(self.local_steps)
    }

    /// This peer's network for a model of `model_len` parameters (hash `model_hash`) trained at
    /// `batch_size`: the run's topics, [`Self::wire_limits`], and gossip fitted to its averaging.
    pub fn net_config(
        &self,
        model_hash: gradswarm_core::ModelHash,
        model_len: usize,
        batch_size: usize,
    ) -> gradswarm_net::NetConfig {
        let limits = self.wire_limits(model_len, batch_size);
        let mut net = gradswarm_net::NetConfig::peer(&self.run_id, model_hash, limits);
        // Groups push updates to their partners, so only heartbeats travel the topics, and they
        // need not reach everyone in one hop: flooding each to all 31 others of 32 peers cost
        // each peer about a quarter of its heartbeat traffic.
        let groups = self.averaging.build().to_partners_only();
        net.flood_publish = !groups;
        // Nor need a peer tell 7 of 31 others each gossip heartbeat which heartbeats it has (a
        // quarter of the non-mesh peers, gossipsub's default): heartbeats repeat, and a lost one
        // is replaced by the next. Measured at 32 peers in groups of 4 (bench/thirty-two): 2
        // peers instead cut the heartbeat topic from 7.2 to 6.1 kB a step.
        if groups {
            net.gossip_lazy = Some(GROUPS_GOSSIP_LAZY);
        }
        // A peer needs direct connections to its group and its gossip mesh only, not to all N.
        net.full_mesh = !groups;
        net
    }

    /// The limits this peer's updates, and the others', are held to for a model of `model_len`
    /// parameters trained at `batch_size`: the one place the samples bound is computed.
    pub fn wire_limits(&self, model_len: usize, batch_size: usize) -> WireLimits {
        // Every peer of a run trains the run's batch for the run's steps per round, so an update
        // may claim exactly that and no more: samples are its aggregation weight, and a looser
        // bound is weight a liar takes from the honest.
        let honest = batch_size as u64 * self.steps_per_round();
        WireLimits::for_model(model_len, honest).with_codec(self.codec)
    }
}
