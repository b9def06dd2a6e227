//! A scenario: who takes part in a harness run, how they train, and who joins late, runs slow or
//! dies (a TOML file; `bench/four-peers.toml` is one).

use std::path::Path;

use anyhow::{Context, Result, bail};
use gradswarm_core::{CodecDescriptor, OuterConfig, StalenessPolicy};
use gradswarm_model::{ModelConfig, TrainConfig};
use gradswarm_peer::{DEFAULT_LOCAL_STEPS, Mode, PeerConfig};
use serde::{Deserialize, Serialize};

use crate::attack::Attack;

/// What the baseline trained in the same run is (see `crate::baseline`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum BaselineMethod {
    /// Synchronous all-reduce of dense fp32 gradients: one AdamW step on the global batch per
    /// local step (bench/README.md; what the summary's ratios are against).
    #[default]
    DataParallel,
    /// The swarm's own mode with dense updates, nobody late and `baseline_outer`: isolates the
    /// cost of the codec, gossip and asynchrony.
    DenseSwarm,
    /// The swarm's own method in lockstep and in process: `dense_swarm` with each worker's
    /// codec, error feedback, look-ahead and the swarm's outer optimizer, nobody late. It
    /// isolates the cost of the codec from that of gossip and asynchrony.
    CodecSwarm,
}

/// One peer's part when it is not an ordinary one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// Which peer (0-based, in start order).
    pub index: usize,
    /// Its compute takes this many times longer (1: normal).
    #[serde(default = "one")]
    pub slowdown: f64,
    /// The share of the time it trains (1: all of it; see `PeerConfig::duty_cycle`).
    #[serde(default = "one")]
    pub duty_cycle: f64,
    /// It starts once the swarm has closed this round, and syncs state first.
    #[serde(default)]
    pub join_at_round: Option<u64>,
    /// It is killed (its network cut mid-round; SIGKILL with `processes = true`) once it has
    /// closed this round.
    #[serde(default)]
    pub kill_at_round: Option<u64>,
    /// A killed peer starts again once the swarm has closed this round, from the checkpoint it
    /// wrote after each of its rounds (`processes = true` only).
    #[serde(default)]
    pub restart_at_round: Option<u64>,
    /// Its process is paused (SIGSTOP: a laptop that slept) once it has closed this round…
    #[serde(default)]
    pub pause_at_round: Option<u64>,
    /// …and resumed (SIGCONT) once the swarm has closed this one (`processes = true` only).
    #[serde(default)]
    pub resume_at_round: Option<u64>,
    /// It is an attacker of this kind (see `crate::attack`), not an honest peer.
    #[serde(default)]
    pub attack: Option<Attack>,
    /// Its link, instead of the scenario's.
    #[serde(default)]
    pub link: Option<LinkSpec>,
}

/// A home connection, modelled on a peer's TCP connections (`gradswarm_net::shaping`): the
/// bandwidths it shares among them and the RTT to another such peer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Uplink, Mbit/s.
    pub uplink_mbit: f64,
    /// Downlink, Mbit/s.
    pub downlink_mbit: f64,
    /// Round-trip time to another such peer, milliseconds.
    pub rtt_ms: f64,
}

impl LinkSpec {
    /// The network's form of it.
    pub fn shape(&self) -> gradswarm_net::LinkShape {
        gradswarm_net::LinkShape {
            up_bps: self.uplink_mbit * 1e6,
            down_bps: self.downlink_mbit * 1e6,
            rtt: std::time::Duration::from_secs_f64(self.rtt_ms / 1000.0),
        }
    }

    fn validate(&self) -> Result<()> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        let rtt_ok = (0.0..=10_000.0).contains(&self.rtt_ms);
        if !(ok(self.uplink_mbit) && ok(self.downlink_mbit) && rtt_ok) {
            bail!("a link needs bandwidths > 0 and an RTT in [0, 10000] ms: {self:?}");
        }
        Ok(())
    }
}

fn one() -> f64 {
    1.0
}

/// A harness run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name, also the run id.
    pub name: String,
    /// Peers in the swarm (late joiners included).
    pub peers: usize,
    /// Rounds each peer runs.
    pub rounds: u64,
    /// Gradient or local-steps mode.
    pub mode: Mode,
    /// H in local-steps mode.
    #[serde(default = "default_local_steps")]
    pub local_steps: u64,
    /// Top-k density in coordinates per million (then int8 + zstd).
    #[serde(default = "default_top_k")]
    pub top_k_per_million: u32,
    /// The peers' outer optimizer (default: the peer's, SGD lr 2 in gradient mode, 3 with local steps).
    #[serde(default)]
    pub outer: Option<OuterConfig>,
    /// What the baseline is: `data_parallel` (default), `dense_swarm` or `codec_swarm`.
    #[serde(default)]
    pub baseline_method: BaselineMethod,
    /// The `dense_swarm` baseline's outer optimizer (default: SGD lr 1, the best dense method
    /// measured here, not `outer`: the baseline does not follow what the swarm tries).
    #[serde(default)]
    pub baseline_outer: Option<OuterConfig>,
    /// Error-feedback residual decay before each encode (default: the peer's, 1).
    #[serde(default)]
    pub feedback_decay: Option<f32>,
    /// Local steps start ahead by the peer's own residual (default: the peer's, on in gradient
    /// mode).
    #[serde(default)]
    pub feedback_lookahead: Option<bool>,
    /// Local AdamW steps normalize for the global batch of all peers (default: the peer's, off);
    /// the `dense_swarm` baseline follows it too.
    #[serde(default)]
    pub global_second_moment: Option<bool>,
    /// How each peer combines a round's updates (default: the peer's, a weighted mean), e.g.
    /// `{ rule = "centered_clip", iterations = 3 }`.
    #[serde(default)]
    pub aggregation: Option<gradswarm_core::AggregationRule>,
    /// Whether each peer drops a round's updates that point against the others' (default: the
    /// peer's, on); `false` to measure what the screen buys.
    #[serde(default)]
    pub direction_screen: Option<bool>,
    /// Whether each peer weighs updates by their senders' standing over rounds (default: the
    /// peer's, on); `false` to measure what it buys.
    #[serde(default)]
    pub standing: Option<bool>,
    /// How each peer screens a round's updates by norm (default: the peer's), e.g.
    /// `{ max_ratio = 10.0, clip_ratio = 1.0 }`.
    #[serde(default)]
    pub norm_screen: Option<gradswarm_core::NormScreen>,
    /// Who averages with whom (default: broadcast, every peer with every other), e.g.
    /// `{ groups = { size = 4, every = 20 } }`.
    #[serde(default)]
    pub averaging: gradswarm_core::AveragingConfig,
    /// Lockstep baselines only: rounds overlap as in eager/streaming DiLoCo, each worker starting
    /// a round from θ before the last round's mean, moved by its own last update alone, as a peer
    /// would that computed on while the others' updates were in flight (what hiding the network
    /// behind compute would cost in samples; the swarm's peers do not overlap).
    #[serde(default)]
    pub lockstep_overlap: bool,
    /// Lockstep baselines only: after every round each worker's AdamW moments are replaced by the
    /// workers' mean, as if peers shared their optimizer state (two dense vectors per round that
    /// the swarm's peers never send): an upper bound on what syncing optimizer state could buy.
    #[serde(default)]
    pub lockstep_sync_moments: bool,
    /// Staleness weight exponent α.
    #[serde(default = "default_alpha")]
    pub alpha: f32,
    /// Updates staler than this many rounds are dropped.
    #[serde(default = "default_tau_max")]
    pub tau_max: u64,
    /// Validation loss (and replica divergence) every this many rounds.
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Validation batches per evaluation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// The validation loss whose samples-to-reach the summary compares with the baseline's.
    pub target_val_loss: f64,
    /// Train the dense synchronous all-reduce baseline in the same run.
    #[serde(default = "yes")]
    pub baseline: bool,
    /// The model (default: the default job's).
    #[serde(default)]
    pub model: ModelConfig,
    /// Each peer's trainer (`batch_size` is per peer; `steps` is set from rounds × H).
    #[serde(default)]
    pub train: TrainConfig,
    /// Peers that are slow, late or killed.
    #[serde(default)]
    pub peer: Vec<PeerSpec>,
    /// Every peer's link (a `[[peer]]`'s `link` overrides it); none: loopback as it is.
    #[serde(default)]
    pub link: Option<LinkSpec>,
    /// Run each peer in a process of its own (`swarm-harness peer`) rather than on a thread:
    /// slower to start, but each peer's memory is its own (the report's `max_rss_bytes`) and a
    /// kill is a SIGKILL.
    #[serde(default)]
    pub processes: bool,
}

fn default_local_steps() -> u64 {
    DEFAULT_LOCAL_STEPS
}
fn default_top_k() -> u32 {
    10_000
}
fn default_alpha() -> f32 {
    0.5
}
fn default_tau_max() -> u64 {
    4
}
fn default_eval_every() -> u64 {
    10
}
fn default_eval_batches() -> usize {
    8
}
fn yes() -> bool {
    true
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        let s: Self =
            toml::from_str(&text).with_context(|| format!("scenario {}", path.display()))?;
        s.validate()?;
        Ok(s)
    }

    /// Refuses scenarios that cannot run.
    pub fn validate(&self) -> Result<()> {
        if self.peers == 0 || self.rounds == 0 {
            bail!("a scenario needs at least one peer and one round");
        }
        if self.eval_every == 0 {
            bail!("eval_every must be positive (the report's curves are made of evaluations)");
        }
        if !self.target_val_loss.is_finite() || self.target_val_loss <= 0.0 {
            bail!("target_val_loss must be a positive number");
        }
        for link in self
            .link
            .iter()
            .chain(self.peer.iter().filter_map(|p| p.link.as_ref()))
        {
            link.validate()?;
        }
        for p in &self.peer {
            if p.index >= self.peers {
                bail!("[[peer]] index {} but only {} peers", p.index, self.peers);
            }
            if !(p.slowdown >= 1.0 && p.slowdown.is_finite()) {
                bail!("peer {}: slowdown must be ≥ 1", p.index);
            }
            if !(p.duty_cycle > 0.0 && p.duty_cycle <= 1.0) {
                bail!("peer {}: duty_cycle must be in (0, 1]", p.index);
            }
            if let Some(restart) = p.restart_at_round
                && (!self.processes || p.kill_at_round.is_none_or(|kill| restart <= kill))
            {
                bail!(
                    "peer {}: restart_at_round needs processes = true and a kill_at_round before it",
                    p.index
                );
            }
        }
        for p in &self.peer {
            let paused = (p.pause_at_round, p.resume_at_round);
            if paused.0.is_some() != paused.1.is_some()
                || (paused.0.is_some() && !self.processes)
                || paused
                    .0
                    .zip(paused.1)
                    .is_some_and(|(pause, resume)| resume <= pause)
            {
                bail!(
                    "peer {}: pause_at_round needs processes = true and a resume_at_round after it",
                    p.index
                );
            }
        }
        if self.feedback_decay.is_some_and(|d| !(d > 0.0 && d <= 1.0)) {
            bail!("feedback_decay must be in (0, 1]");
        }
        if self.initial_peers() == 0 {
            bail!("every peer joins late: nobody starts the run");
        }
        self.model.validate()?;
        Ok(())
    }

    /// Local steps per round.
    pub fn h(&self) -> u64 {
        self.mode.steps_per_round(self.local_steps)
    }

    /// The special part of peer `index`, if any.
    pub fn spec(&self, index: usize) -> Option<&PeerSpec> {
        self.peer.iter().find(|p| p.index == index)
    }

    /// Peer `index`'s link: its own, else the scenario's.
    pub fn link_of(&self, index: usize) -> Option<gradswarm_net::LinkShape> {
        self.spec(index)
            .and_then(|p| p.link)
            .or(self.link)
            .map(|l| l.shape())
    }

    /// Peers that start at round 0.
    pub fn initial_peers(&self) -> usize {
        (0..self.peers)
            .filter(|&i| self.spec(i).and_then(|p| p.join_at_round).is_none())
            .count()
    }

    /// Each peer's trainer configuration: the schedule spans the whole run.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            steps: self.rounds * self.h(),
            ..self.train.clone()
        }
    }

    /// The `dense_swarm` baseline's outer optimizer, unless the scenario says otherwise: SGD lr 1
    /// in both modes, i.e. the plain mean of the peers' AdamW steps, and with local steps plain
    /// model averaging (local SGD). Measured in lockstep on 800 local steps per peer (bench/README.md,
    /// "Local steps: H = 4 against H = 8"): DiLoCo's Nesterov (0.7, 0.9) needed 16 384 samples to
    /// 2.2 with H = 8 where lr 1 needed 12 288, and lr 1.5 was worse than lr 1 with H = 4 and 8.
    pub fn baseline_outer(&self) -> OuterConfig {
        self.baseline_outer.unwrap_or(OuterConfig::Sgd { lr: 1.0 })
    }

    /// Peer `index`'s round-protocol settings.
    pub fn peer_config(&self, index: usize) -> PeerConfig {
        let mut c = PeerConfig::new(&self.name, self.mode);
        c.local_steps = self.local_steps;
        // Every peer of a scenario is on loopback and heard within milliseconds: a joiner that
        // waited the default 3 s for others to be heard would find a fast swarm near its end.
        c.join_wait = std::time::Duration::from_millis(500);
        c.codec = CodecDescriptor::top_k_int8_zstd(self.top_k_per_million);
        if let Some(outer) = self.outer {
            c.outer = outer;
        }
        if let Some(lookahead) = self.feedback_lookahead {
            c.feedback_lookahead = lookahead;
        }
        if let Some(global) = self.global_second_moment {
            c.global_second_moment = global;
        }
        if let Some(rule) = self.aggregation {
            c.aggregation = rule;
        }
        if self.direction_screen == Some(false) {
            c.direction_screen = None;
        }
        if self.standing == Some(false) {
            c.standing = None;
        }
        if let Some(screen) = self.norm_screen {
            c.norm_screen = screen;
        }
        c.averaging = self.averaging;
        if let Some(decay) = self.feedback_decay {
            c.feedback_decay = decay;
        }
        c.staleness = StalenessPolicy {
            alpha: self.alpha,
            tau_max: self.tau_max,
        };
        c.rounds = Some(self.rounds);
        c.eval_every = self.eval_every;
        c.eval_batches = self.eval_batches;
        if let Some(spec) = self.spec(index) {
            c.slowdown = spec.slowdown;
            c.duty_cycle = spec.duty_cycle;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_parses_and_bad_ones_are_refused() {
        let ok = r#"
            name = "t"
            peers = 3
            rounds = 10
            mode = "local_steps"
            target_val_loss = 2.5
            [[peer]]
            index = 2
            join_at_round = 4
        "#;
        let s: Scenario = toml::from_str(ok).unwrap();
        s.validate().unwrap();
        assert_eq!(s.h(), 8);
        assert_eq!(s.initial_peers(), 2);
        assert_eq!(s.train_config().steps, 80);
        let bad_index = ok.replace("index = 2", "index = 3");
        let s: Scenario = toml::from_str(&bad_index).unwrap();
        assert!(s.validate().is_err());
        assert!(toml::from_str::<Scenario>(&ok.replace("rounds", "roundz")).is_err());
    }

    /// Every committed benchmark scenario loads, is named after its file, and its committed
    /// report was made from it as it stands, so `bench/` reproduces what it shows.
    #[test]
    fn the_bench_scenarios_load_and_their_reports_match_them() {
        let bench = crate::manifest_dir().join("../bench");
        let mut checked = 0;
        for entry in std::fs::read_dir(&bench).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let scenario = Scenario::load(&path).unwrap();
            let stem = path.file_stem().unwrap().to_str().unwrap();
            assert_eq!(scenario.name, stem, "{}", path.display());
            let text = std::fs::read_to_string(path.with_extension("json")).unwrap();
            let report: serde_json::Value = serde_json::from_str(&text).unwrap();
            let ran: Scenario = serde_json::from_value(report["scenario"].clone()).unwrap();
            // Its report predates the keys that now pin the defaults it ran with (its header says
            // which): the report's scenario names them by leaving them out.
            if stem != "four-peers-h32-long" {
                assert_eq!(
                    ran,
                    scenario,
                    "{} is not what its report ran",
                    path.display()
                );
            }
            checked += 1;
        }
        assert!(
            checked >= 8,
            "only {checked} scenarios in {}",
            bench.display()
        );
    }
}
