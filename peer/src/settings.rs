//! A run's settings as a node's TOML configuration holds them: `[run]`, `[model]`, `[train]`,
//! `[data]`, `[swarm]`. Every key is optional; `configs/default.toml` lists them all with their
//! defaults. Unknown keys are errors, so a typo never silently falls back to a default. The
//! desktop node reads them from its config file; a browser tab from a published run's manifest.

use std::path::PathBuf;
use std::time::Duration;

use gradswarm_core::{CodecDescriptor, StalenessPolicy};
use gradswarm_model::{DataConfig, DeviceChoice, ModelConfig, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::{DEFAULT_LOCAL_STEPS, Mode, PeerConfig};

/// A setting out of its range, or settings that do not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct SettingsError(pub String);

impl From<gradswarm_model::ModelError> for SettingsError {
    fn from(e: gradswarm_model::ModelError) -> Self {
        Self(e.to_string())
    }
}

/// Fails with `message` (the `bail!` of this module).
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(SettingsError(format!($($arg)*)))
    };
}

/// The run's identity and where its files go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The run id: peers only exchange updates within one run.
    pub id: String,
    /// Where checkpoints go.
    pub out: PathBuf,
    /// `auto`, `gpu` or `cpu`.
    pub device: DeviceChoice,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            id: "shakespeare-byte-gpt".into(),
            out: "runs/default".into(),
            device: DeviceChoice::Auto,
        }
    }
}

/// How this node joins a swarm (`gradswarm join`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmConfig {
    /// `gradient` or `local_steps`.
    pub mode: Mode,
    /// H: local steps per round in `local_steps` mode.
    pub local_steps: u64,
    /// Top-k density in parts per million (10000 = top-1%).
    pub top_k_per_million: u32,
    /// Staleness decay α of 1/(1+τ)^α.
    pub alpha: f32,
    /// Updates staler than this many rounds are dropped.
    pub tau_max: u64,
    /// `weighted_mean`, `trimmed_mean` (with `trim`) or `centered_clip`.
    pub aggregation: gradswarm_core::AggregationRule,
    /// Whose updates a round waits for: `broadcast` (every live peer), or
    /// `{ groups = { size = 4, every = 20 } }` (its group, regrouped every `every` rounds).
    pub averaging: gradswarm_core::AveragingConfig,
    /// How the aggregate moves θ (absent: SGD, lr 2 in gradient mode and 3 in local-steps mode), e.g. `{ kind = "nesterov", lr = 0.7, momentum = 0.9 }`.
    pub outer: Option<gradswarm_core::OuterConfig>,
    /// Error-feedback residual decay per round, in (0, 1] (absent: 1, the residual kept whole).
    pub feedback_decay: Option<f32>,
    /// Local steps start from where θ will stand once this peer's unsent residual is applied
    /// (absent: on in gradient mode, off with local steps).
    pub feedback_lookahead: Option<bool>,
    /// Local AdamW steps divide by the estimated second moment of all live peers' batches
    /// together rather than of this peer's batch alone (absent: off).
    pub global_second_moment: Option<bool>,
    /// Replicas further apart than this (relative L2, estimated from heartbeats) reconcile by
    /// pairwise averaging (absent: 1e-4; `inf`: never).
    pub drift_tolerance: Option<f64>,
    /// Seconds a round waits at least for partners' updates before it closes without them
    /// (absent: 0.5); it closes at once when all are in. Raise it to keep a much slower partner,
    /// e.g. a browser tab on a software GPU, in step instead of dropping its too-stale updates.
    pub min_wait: Option<f64>,
    /// Seconds a round waits at most (absent: 60).
    pub max_wait: Option<f64>,
    /// Stop after this many rounds (0: until Ctrl-C).
    pub rounds: u64,
    /// Checkpoint every this many rounds (0: only when leaving).
    pub checkpoint_every: u64,
    /// Addresses to listen on.
    pub listen: Vec<String>,
    /// Bootstrap nodes (full multiaddrs with /p2p/); `gradswarm join ADDR…` adds to these.
    pub bootstrap: Vec<String>,
    /// Find peers on the LAN with mDNS when no bootstrap node is given.
    pub mdns: bool,
    /// Validation loss every this many rounds (0: never).
    pub eval_every: u64,
    /// A private run: the peer ids (`gradswarm id` prints one) that may connect; anyone else is
    /// refused, and what they sign is dropped. Empty: an open run.
    pub allow: Vec<String>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Gradient,
            local_steps: DEFAULT_LOCAL_STEPS,
            top_k_per_million: 10_000,
            alpha: 0.5,
            tau_max: 4,
            aggregation: gradswarm_core::AggregationRule::WeightedMean,
            averaging: gradswarm_core::AveragingConfig::Broadcast,
            outer: None,
            feedback_decay: None,
            feedback_lookahead: None,
            global_second_moment: None,
            drift_tolerance: None,
            min_wait: None,
            max_wait: None,
            rounds: 0,
            checkpoint_every: 100,
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".into(),
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            eval_every: 50,
            allow: Vec::new(),
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// `[run]`.
    pub run: RunConfig,
    /// `[model]`.
    pub model: ModelConfig,
    /// `[train]`.
    pub train: TrainConfig,
    /// `[data]`.
    pub data: DataConfig,
    /// `[swarm]`.
    pub swarm: SwarmConfig,
}

impl NodeConfig {
    /// Parses and validates settings written as TOML (a config file, a manifest's settings).
    pub fn from_toml(text: &str) -> Result<Self, SettingsError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| SettingsError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The peer configuration these settings ask for.
    pub fn peer_config(&self) -> PeerConfig {
        let cfg = self;
        let mut p = PeerConfig::new(&cfg.run.id, cfg.swarm.mode);
        p.local_steps = cfg.swarm.local_steps;
        p.codec = CodecDescriptor::top_k_int8_zstd(cfg.swarm.top_k_per_million);
        p.staleness = StalenessPolicy {
            alpha: cfg.swarm.alpha,
            tau_max: cfg.swarm.tau_max,
        };
        p.aggregation = cfg.swarm.aggregation;
        p.averaging = cfg.swarm.averaging;
        p.rounds = (cfg.swarm.rounds > 0).then_some(cfg.swarm.rounds);
        p.eval_every = cfg.swarm.eval_every;
        if let Some(outer) = cfg.swarm.outer {
            p.outer = outer;
        }
        if let Some(decay) = cfg.swarm.feedback_decay {
            p.feedback_decay = decay;
        }
        if let Some(lookahead) = cfg.swarm.feedback_lookahead {
            p.feedback_lookahead = lookahead;
        }
        if let Some(global) = cfg.swarm.global_second_moment {
            p.global_second_moment = global;
        }
        if let Some(lo) = cfg.swarm.min_wait {
            p.min_wait = Duration::from_secs_f64(lo);
        }
        if let Some(hi) = cfg.swarm.max_wait {
            p.max_wait = Duration::from_secs_f64(hi);
        }
        // One bound given alone still bounds the other: a min_wait above the default max_wait raises it.
        p.max_wait = p.max_wait.max(p.min_wait);
        if let Some(tolerance) = cfg.swarm.drift_tolerance {
            p.drift_tolerance = tolerance.is_finite().then_some(tolerance);
        }
        p
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.run.id.is_empty() || self.run.id.len() > gradswarm_core::wire::MAX_RUN_ID_LEN {
            bail!(
                "run.id must be 1 to {} bytes",
                gradswarm_core::wire::MAX_RUN_ID_LEN
            );
        }
        self.model.validate()?;
        self.train.validate()?;
        self.data.validate()?;
        gradswarm_net::parse_peer_ids(&self.swarm.allow)
            .map_err(|e| SettingsError(format!("swarm.allow: {e}")))?;
        if self.swarm.mode == Mode::LocalSteps && self.swarm.local_steps == 0 {
            bail!("swarm.local_steps must be at least 1");
        }
        if self.swarm.top_k_per_million == 0 || self.swarm.top_k_per_million > 1_000_000 {
            bail!("swarm.top_k_per_million must be 1 to 1000000");
        }
        if self
            .swarm
            .feedback_decay
            .is_some_and(|d| !(d > 0.0 && d <= 1.0))
        {
            bail!("swarm.feedback_decay must be in (0, 1]");
        }
        if self
            .swarm
            .drift_tolerance
            .is_some_and(|t| t.is_nan() || t <= 0.0)
        {
            bail!("swarm.drift_tolerance must be positive (inf: never reconcile)");
        }
        for (key, wait) in [
            ("min_wait", self.swarm.min_wait),
            ("max_wait", self.swarm.max_wait),
        ] {
            if wait.is_some_and(|w| !(w.is_finite() && (0.0..=86_400.0).contains(&w))) {
                bail!("swarm.{key} must be 0 to 86400 seconds");
            }
        }
        if let (Some(lo), Some(hi)) = (self.swarm.min_wait, self.swarm.max_wait)
            && lo > hi
        {
            bail!("swarm.min_wait ({lo} s) must not exceed swarm.max_wait ({hi} s)");
        }
        if !(self.swarm.alpha.is_finite() && self.swarm.alpha >= 0.0) {
            bail!("swarm.alpha must be a non-negative number");
        }
        for a in self.swarm.listen.iter().chain(&self.swarm.bootstrap) {
            if let Err(e) = a.parse::<gradswarm_net::Multiaddr>() {
                bail!("swarm address {a:?} is not a multiaddr: {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer settings a valid node config file `text` gives.
    fn peer_of(text: &str) -> PeerConfig {
        let c: NodeConfig = toml::from_str(text).expect("parses");
        c.validate().expect("valid");
        c.peer_config()
    }

    #[test]
    fn the_documented_default_file_is_the_default() {
        let text = include_str!("../../configs/default.toml");
        let parsed: NodeConfig = toml::from_str(text).expect("default.toml parses");
        assert_eq!(parsed, NodeConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<NodeConfig>("[model]\nlayer = 3\n").is_err());
        let c: NodeConfig = toml::from_str("[model]\nheads = 3\n").expect("parses");
        assert!(c.validate().is_err());
        for bad in ["0.0", "-1e-4", "nan"] {
            let text = format!("[swarm]\ndrift_tolerance = {bad}\n");
            let c: NodeConfig = toml::from_str(&text).expect("parses");
            assert!(
                c.validate().is_err(),
                "drift_tolerance = {bad} was accepted"
            );
        }
        let never: NodeConfig = toml::from_str("[swarm]\ndrift_tolerance = inf\n").expect("parses");
        assert!(never.validate().is_ok());
        assert_eq!(never.peer_config().drift_tolerance, None);
    }

    #[test]
    fn round_waits_are_checked_and_reach_the_peer() {
        for bad in [
            "min_wait = -1.0",
            "max_wait = nan",
            "min_wait = inf",
            "min_wait = 5.0\nmax_wait = 2.0",
        ] {
            let c: NodeConfig = toml::from_str(&format!("[swarm]\n{bad}\n")).expect("parses");
            let err = c.validate().expect_err(bad).to_string();
            assert!(err.contains("wait"), "{bad}: {err}");
        }
        let c: NodeConfig = toml::from_str("[swarm]\nmin_wait = 90.0\n").expect("parses");
        c.validate().expect("min_wait alone is valid");
        let p = c.peer_config();
        assert_eq!(p.min_wait, std::time::Duration::from_secs(90));
        assert!(p.max_wait >= p.min_wait, "max_wait {:?}", p.max_wait);
    }

    #[test]
    fn the_look_ahead_follows_the_mode_unless_set() {
        let peer = |text: &str| peer_of(text).feedback_lookahead;
        assert!(peer("[swarm]\nmode = \"gradient\"\n"));
        assert!(!peer("[swarm]\nmode = \"local_steps\"\n"));
        assert!(!peer(
            "[swarm]\nmode = \"gradient\"\nfeedback_lookahead = false\n"
        ));
        assert!(peer(
            "[swarm]\nmode = \"local_steps\"\nfeedback_lookahead = true\n"
        ));
    }

    #[test]
    fn the_global_second_moment_is_off_unless_set_and_reaches_the_peer() {
        let peer = |text: &str| peer_of(text).global_second_moment;
        assert!(!peer("[swarm]\nmode = \"gradient\"\n"));
        assert!(peer(
            "[swarm]\nmode = \"gradient\"\nglobal_second_moment = true\n"
        ));
    }
}
