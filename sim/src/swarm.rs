//! One simulated run: `peers` peers training the synthetic objective round by round, with core's
//! codec (top-k, int8, zstd, error feedback: real payloads and their real sizes), topology
//! ([`Broadcast`] or [`Groups`]), round book, aggregation rule and outer optimizer.
//!
//! Time is modelled per peer: a peer's round starts at its clock, computes for its machine's
//! time, uploads its payload to each partner at its uplink, and its group's round closes when
//! the updates that made the deadline are in and every member has downloaded them (latency
//! plus bytes over its downlink). A group waits for its own members only; broadcast is the one
//! group of everyone. Updates that miss the deadline are dropped and counted. Every member of a
//! group applies the group's aggregate, so a group's replicas stay equal while replicas in
//! different groups differ. A group averaging updates alone would let them drift apart for good
//! (each replica moves by gradients taken at the others' parameters, a random walk nothing pulls
//! back: measured, 2.5× ‖θ̄‖ after 100 rounds at 64 peers, 6× after 300 with noise 1); so a new group first
//! averages its members' parameters, as Moshpit SGD does, and regrouping mixes the swarm.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use gradswarm_core::adversary;
use gradswarm_core::codec::decode_payload;
use gradswarm_core::synthetic::SplitMix;
use gradswarm_core::topology::{REPLICA_CLIP, decode_replica, encode_replica};
use gradswarm_core::wire::params_checksum;
use gradswarm_core::{
    AggregationRule, CodecDescriptor, CpuCodec, DecodedUpdate, DirectionScreen, ErrorFeedback,
    Groups, NormScreen, OuterConfig, OuterOptimizer, RngKey, RoundBook, StalenessPolicy, Standing,
    StandingConfig, median_clipped_mean, screen_round,
};
use serde::{Deserialize, Serialize};

use crate::links::{LinkModel, Machine};
use crate::objective::Quadratic;

/// Whose updates a peer waits for and averages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Every live peer, every round.
    Broadcast,
    /// Groups of about `size`, drawn afresh every `every` rounds ([`Groups`]); a new group first
    /// averages its members' parameters.
    Groups {
        /// The group size aimed at.
        size: usize,
        /// Rounds a grouping lasts.
        every: u64,
    },
    /// Compressed gossip over `rings` hash rings ([`gradswarm_core::gossip`]): each peer steps on
    /// its own update, sends the codec's compression of θ − x̂ to its `rings` successors and moves
    /// toward its predecessors' public copies by [`SimConfig::gamma`].
    Gossip {
        /// Rings: the peers each one sends to and hears from.
        rings: usize,
    },
}

impl Strategy {
    /// A short name for reports: `broadcast`, `groups-8`.
    pub fn name(&self) -> String {
        match self {
            Self::Broadcast => "broadcast".into(),
            Self::Groups { size, every } => format!("groups-{size}x{every}"),
            Self::Gossip { rings } => format!("gossip-{rings}"),
        }
    }

    /// The round's groups, as indices into `ids` (gossip has none: a peer's neighbours overlap).
    fn groups(&self, round: u64, ids: &[Vec<u8>]) -> Vec<Vec<usize>> {
        match self {
            Self::Broadcast => vec![(0..ids.len()).collect()],
            Self::Gossip { .. } => Vec::new(),
            Self::Groups { size, every } => {
                let refs: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
                let index: HashMap<&[u8], usize> =
                    refs.iter().enumerate().map(|(i, &p)| (p, i)).collect();
                Groups {
                    size: *size,
                    every: *every,
                }
                .groups(round, &refs, refs.len())
                .into_iter()
                .map(|g| g.iter().filter_map(|p| index.get(p).copied()).collect())
                .collect()
            }
        }
    }
}

/// Everything a run is made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Live peers (churn replaces the ones that leave, so the count holds).
    pub peers: usize,
    /// The averaging strategy.
    pub strategy: Strategy,
    /// Coordinates of the synthetic model.
    pub dim: usize,
    /// Rounds at most (a run stops earlier at the target).
    pub max_rounds: u64,
    /// The mean relative loss that ends a run.
    pub target: f64,
    /// Local SGD steps per round.
    pub local_steps: usize,
    /// Their step size.
    pub inner_lr: f32,
    /// Gradient noise per coordinate.
    pub noise: f32,
    /// The outer optimizer applied to each round's aggregate.
    pub outer: OuterConfig,
    /// The update codec.
    pub codec: CodecDescriptor,
    /// Error feedback's decay.
    pub feedback_decay: f32,
    /// The aggregation rule, per group.
    pub rule: AggregationRule,
    /// The direction screen before it, as the peers run it (`None`: off, for comparisons).
    #[serde(default = "default_screen")]
    pub direction_screen: Option<DirectionScreen>,
    /// A round closes `deadline_factor` × the group's median compute after its median member was
    /// ready, with whatever updates are in.
    pub deadline_factor: f64,
    /// Machines and links.
    pub links: LinkModel,
    /// Each round, each peer leaves with this probability and a newcomer takes its place (its
    /// state fetched from a random peer).
    pub churn: f64,
    /// The share of the first peers that send −Δ (a sign flip at an honest norm).
    pub attackers: f64,
    /// Whether they send instead an update crafted from their group's honest updates of the
    /// round, to pass the screens (the harness's `crafted`; omniscient and on time).
    #[serde(default)]
    pub crafted: bool,
    /// How much of a crafted update is the lie: each attacker sends `(1 − share) Δ + share ×
    /// crafted` of its own honest Δ (1: the lie alone). Below 1 it hides in the honest crowd,
    /// pushing less each round: the attack on standing, which judges consistency over rounds.
    #[serde(default = "default_crafted_share")]
    pub crafted_share: f32,
    /// Whether the colluders ride standing's cut instead: they see how far the peers judge
    /// them (an omniscient attacker replays the peers' standing), and each round raise their
    /// share of the lie by 30 % while the farthest of them lies within 0.9 of
    /// [`gradswarm_core::standing::CUT`], and halve it once one lies beyond; starting from
    /// `crafted_share`. Of the controllers tried this one hurt most: it pushes hard through
    /// the rounds standing's verdict takes to come (bench/README.md, "Standing").
    #[serde(default)]
    pub crafted_adaptive: bool,
    /// How far apart the optima of two kinds of honest peers' data lie, in units of the skew
    /// direction (as long as the optimum): a share [`SimConfig::skewed`] of the honest peers
    /// pulls toward one, the rest toward the other, and the common optimum is their mean (0:
    /// every peer's data alike). Honest heterogeneity, which standing must not take for
    /// collusion.
    #[serde(default)]
    pub skew: f32,
    /// The share of the honest peers whose data pull the other way ([`SimConfig::skew`]).
    #[serde(default = "default_skewed")]
    pub skewed: f64,
    /// Whether each honest peer's data pull instead along a direction of its own, `skew` from
    /// the common optimum (a shard unlike the others, as the swarm's random shards of one
    /// corpus make them): no two peers share a deviation, so none looks like a colluder.
    #[serde(default)]
    pub skew_per_peer: bool,
    /// Peers' standing over rounds ([`gradswarm_core::standing`]), as the peers judge it: under
    /// broadcast only (`None`: off, for comparisons).
    #[serde(default = "default_standing")]
    pub standing: Option<StandingConfig>,
    /// Rounds between a round and its counting in standing: the peers wait until no late update
    /// can change it (their round book's horizon, 10 at the default τ_max of 4).
    #[serde(default = "default_standing_lag")]
    pub standing_lag: u64,
    /// Whether a new group averages its members' parameters (off only to show what it is for).
    pub average_parameters: bool,
    /// Gossip's consensus step size γ (CHOCO's): how far a peer moves toward its neighbours'
    /// public copies each round.
    #[serde(default = "default_gamma")]
    pub gamma: f32,
    /// Seeds the objective, the machines and every draw.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            peers: 8,
            strategy: Strategy::Groups { size: 8, every: 20 },
            dim: 16_384,
            max_rounds: 400,
            target: 0.05,
            local_steps: 4,
            inner_lr: 0.5,
            noise: 0.1,
            outer: OuterConfig::Sgd { lr: 1.0 },
            codec: CodecDescriptor::top_k_int8_zstd(10_000),
            feedback_decay: 1.0,
            rule: AggregationRule::WeightedMean,
            direction_screen: default_screen(),
            deadline_factor: 1.5,
            links: LinkModel::default(),
            churn: 0.0,
            attackers: 0.0,
            crafted: false,
            crafted_share: default_crafted_share(),
            crafted_adaptive: false,
            skew: 0.0,
            skewed: default_skewed(),
            skew_per_peer: false,
            standing: default_standing(),
            standing_lag: default_standing_lag(),
            average_parameters: true,
            gamma: default_gamma(),
            seed: 1,
        }
    }
}

/// The peers' default direction screen.
fn default_screen() -> Option<DirectionScreen> {
    Some(DirectionScreen::default())
}

/// The lie alone.
fn default_crafted_share() -> f32 {
    1.0
}

/// A quarter of the honest peers skewed, as a quarter may lie.
fn default_skewed() -> f64 {
    0.25
}

/// The peers' default standing.
fn default_standing() -> Option<StandingConfig> {
    Some(StandingConfig::default())
}

/// The peers' default round book horizon (2 τ_max + 2 at τ_max 4).
fn default_standing_lag() -> u64 {
    10
}

/// CHOCO's γ: 0.05 mixed best of 0.001–0.2 at top-1 % (bench/README.md).
fn default_gamma() -> f32 {
    0.05
}

/// One round, averaged over the peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundStats {
    /// The round.
    pub round: u64,
    /// Mean relative loss of the honest replicas after it.
    pub loss: f64,
    /// Mean ‖θ_i − θ̄‖ / ‖θ̄‖ over the honest replicas.
    pub spread: f64,
    /// Mean seconds the round took a peer.
    pub round_s: f64,
    /// Mean bytes a peer uploaded in it.
    pub bytes_up: f64,
    /// Mean bytes a peer downloaded in it (state syncs aside).
    pub bytes_down: f64,
    /// Mean peers a peer exchanged updates with.
    pub connections: f64,
    /// … of its bytes, those of parameter averaging in new groups (up and down).
    pub sync_bytes: f64,
    /// Updates that missed their group's deadline.
    pub dropped: u64,
    /// Honest peers weighed out for their standing, summed over the groups.
    #[serde(default)]
    pub honest_weighed_out: u64,
    /// Attackers weighed out for their standing, summed over the groups.
    #[serde(default)]
    pub liars_weighed_out: u64,
    /// The largest distance standing judged an attacker at (0: none judged).
    #[serde(default)]
    pub liar_distance: f64,
    /// The colluders' share of the lie this round ([`SimConfig::crafted_share`]).
    #[serde(default)]
    pub crafted_share: f64,
}

/// A run's outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The strategy's name.
    pub strategy: String,
    /// Live peers.
    pub peers: usize,
    /// The first round whose mean loss was at the target, if any.
    pub rounds_to_target: Option<u64>,
    /// Rounds run.
    pub rounds: u64,
    /// Mean simulated seconds per round.
    pub round_s: f64,
    /// Mean bytes per peer per round, up and down.
    pub bytes_per_round: f64,
    /// … of which uploaded.
    pub bytes_up_per_round: f64,
    /// Mean peers exchanged with per round.
    pub connections: f64,
    /// Mean bytes per peer per round of parameter averaging (up and down), included above.
    pub sync_bytes_per_round: f64,
    /// Mean encoded update size.
    pub update_bytes: f64,
    /// The dense f32 vector's size.
    pub dense_bytes: u64,
    /// Mean relative loss at the end.
    pub final_loss: f64,
    /// Replica spread at the end.
    pub final_spread: f64,
    /// Updates that missed their deadline, all rounds.
    pub dropped: u64,
    /// Honest peers weighed out for their standing, peer-rounds over the run.
    #[serde(default)]
    pub honest_weighed_out: u64,
    /// Attackers weighed out for their standing, peer-rounds over the run.
    #[serde(default)]
    pub liars_weighed_out: u64,
    /// The colluders' mean share of the lie over the rounds ([`SimConfig::crafted_adaptive`]).
    #[serde(default)]
    pub crafted_share_mean: f64,
    /// With skewed data ([`SimConfig::skew`]): where the honest replicas' mean ended along the
    /// skew direction, as a share of the optima's distance. 0: both kinds of data counted as
    /// their shares; −[`SimConfig::skewed`]: the skewed peers' data counted for nothing.
    #[serde(default)]
    pub skew_pull: f64,
    /// Newcomers, and the bytes of state they fetched.
    pub joins: u64,
    /// Bytes of state fetched by newcomers.
    pub sync_bytes: u64,
}

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration cannot run.
    #[error("bad configuration: {0}")]
    Config(String),
    /// The codec refused an update (a non-finite Δ: the run diverged).
    #[error("round {round}: {reason}")]
    Codec {
        /// The round.
        round: u64,
        /// What the codec said.
        reason: String,
    },
}

/// One simulated peer: its replica, codec state, machine and clock.
pub(crate) struct Peer {
    /// Its id, as the topology draws it.
    pub(crate) id: Vec<u8>,
    /// Its replica.
    pub(crate) theta: Vec<f32>,
    feedback: ErrorFeedback,
    /// Applies aggregates (gossip: its own steps) to θ.
    pub(crate) outer: OuterOptimizer,
    /// Encodes its payloads.
    pub(crate) codec: CpuCodec,
    /// Its compute speed and links.
    pub(crate) machine: Machine,
    /// Simulated seconds at which its next round starts.
    pub(crate) clock: f64,
    /// Whether it sends −Δ.
    pub(crate) attacker: bool,
    /// How far its data move its optimum along the skew direction ([`SimConfig::skew`]).
    pub(crate) shift: f32,
    /// Seeds its draws.
    pub(crate) seed: u64,
    /// Gossip: its public copy x̂, as its neighbours hold it.
    pub(crate) public: Vec<f32>,
    /// Gossip: the peers whose public copies it holds.
    pub(crate) heard: Vec<Vec<u8>>,
}

/// What a peer computed in a round.
#[derive(Clone)]
struct Computed {
    bytes: usize,
    update: Arc<DecodedUpdate>,
    compute_s: f64,
}

/// Runs `config`, calling `progress` after each round.
pub fn run(config: &SimConfig, mut progress: impl FnMut(&RoundStats)) -> Result<Summary, SimError> {
    if config.peers == 0 || config.dim == 0 {
        return Err(SimError::Config("peers and dim must be > 0".into()));
    }
    let objective = Quadratic::new(config.dim, config.noise, config.seed);
    let mut rng = SplitMix::new(config.seed ^ 0x5157_5157);
    let attackers = (config.attackers * config.peers as f64).round() as usize;
    let shifts = shifts(config, attackers);
    let mut next_id = 0u64;
    let mut peers: Vec<Peer> = (0..config.peers)
        .map(|i| {
            let p = new_peer(
                config,
                &mut rng,
                next_id,
                vec![0.0; config.dim],
                (0.0, shifts[i]),
                i < attackers,
            );
            next_id += 1;
            p
        })
        .collect::<Result<_, _>>()?;
    let policy = StalenessPolicy {
        alpha: 1.0,
        tau_max: 0,
    };
    let mut sum = Summary {
        strategy: config.strategy.name(),
        peers: config.peers,
        dense_bytes: 4 * config.dim as u64,
        ..Default::default()
    };
    let (mut bytes, mut up, mut conns, mut update_bytes, mut round_s) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut sync = 0.0;
    // Under broadcast only, as the peers judge (`judges_standing`): one group, the whole run.
    let mut standing = config
        .standing
        .filter(|_| config.strategy == Strategy::Broadcast)
        .map(Standing::new);
    let mut share = config.crafted_share;
    let mut shares = 0.0;
    for round in 0..config.max_rounds {
        churn(config, &mut peers, &mut rng, &mut next_id, &mut sum)?;
        let ids: Vec<Vec<u8>> = peers.iter().map(|p| p.id.clone()).collect();
        let mut stats = RoundStats {
            round,
            ..Default::default()
        };
        let started: Vec<f64> = peers.iter().map(|p| p.clock).collect();
        if let Strategy::Gossip { rings } = config.strategy {
            update_bytes +=
                crate::gossip::round(config, &objective, &mut peers, round, rings, &mut stats)?;
        } else {
            update_bytes += group_round(
                config,
                &objective,
                &mut peers,
                (round, &ids, share),
                policy,
                standing.as_mut(),
                &mut stats,
            )?;
        }
        stats.crafted_share = f64::from(share);
        shares += f64::from(share);
        if config.crafted_adaptive {
            share = ride_the_cut(share, stats.liar_distance);
        }
        let n = peers.len() as f64;
        stats.bytes_up /= n;
        stats.bytes_down /= n;
        stats.sync_bytes /= n;
        stats.connections /= n;
        stats.round_s = peers
            .iter()
            .zip(&started)
            .map(|(p, s)| p.clock - s)
            .sum::<f64>()
            / n;
        (stats.loss, stats.spread) = loss_and_spread(&objective, &peers);
        sum.rounds = round + 1;
        sum.dropped += stats.dropped;
        sum.honest_weighed_out += stats.honest_weighed_out;
        sum.liars_weighed_out += stats.liars_weighed_out;
        bytes += stats.bytes_up + stats.bytes_down;
        up += stats.bytes_up;
        conns += stats.connections;
        sync += stats.sync_bytes;
        round_s += stats.round_s;
        sum.final_loss = stats.loss;
        sum.final_spread = stats.spread;
        progress(&stats);
        if !stats.loss.is_finite() {
            break;
        }
        if stats.loss <= config.target {
            sum.rounds_to_target = Some(round + 1);
            break;
        }
    }
    if config.skew != 0.0 && !config.skew_per_peer {
        sum.skew_pull = objective.skew_of(&honest_mean(&peers)) / f64::from(config.skew);
    }
    let r = sum.rounds.max(1) as f64;
    sum.crafted_share_mean = shares / r;
    sum.bytes_per_round = bytes / r;
    sum.bytes_up_per_round = up / r;
    sum.connections = conns / r;
    sum.sync_bytes_per_round = sync / r;
    sum.round_s = round_s / r;
    sum.update_bytes = update_bytes / r;
    Ok(sum)
}

/// One round of broadcast or groups: new groups average their parameters, every peer computes
/// its update, each group waits for its members' and applies their aggregate. Returns the
/// round's mean encoded update size.
fn group_round(
    config: &SimConfig,
    objective: &Quadratic,
    peers: &mut [Peer],
    (round, ids, share): (u64, &[Vec<u8>], f32),
    policy: StalenessPolicy,
    mut standing: Option<&mut Standing>,
    stats: &mut RoundStats,
) -> Result<f64, SimError> {
    let groups = config.strategy.groups(round, ids);
    if let Strategy::Groups { size, every } = config.strategy
        && config.average_parameters
        && round > 0
        && (Groups { size, every }).regroups_at(round)
    {
        for group in &groups {
            average_parameters(config, peers, group, round, stats)?;
        }
    }
    let computed = compute_all(config, objective, peers, round)?;
    let liars: Vec<bool> = peers.iter().map(|p| p.attacker).collect();
    for group in groups {
        let g = group.len();
        let ready: Vec<f64> = group
            .iter()
            .map(|&i| peers[i].clock + computed[i].compute_s)
            .collect();
        let arrive: Vec<f64> = group
            .iter()
            .zip(&ready)
            .map(|(&i, r)| {
                let m = &peers[i].machine;
                r + (g - 1) as f64 * computed[i].bytes as f64 / m.up_bps + m.latency_s
            })
            .collect();
        let deadline = median(&ready)
            + config.deadline_factor
                * median(
                    &group
                        .iter()
                        .map(|&i| computed[i].compute_s)
                        .collect::<Vec<_>>(),
                );
        let first = arrive.iter().copied().fold(f64::INFINITY, f64::min);
        let included: Vec<bool> = arrive.iter().map(|&a| a <= deadline.max(first)).collect();
        stats.dropped += included.iter().filter(|&&k| !k).count() as u64;
        let last = arrive
            .iter()
            .zip(&included)
            .filter(|(_, k)| **k)
            .map(|(a, _)| *a)
            .fold(0.0, f64::max);
        let total: usize = group.iter().map(|&i| computed[i].bytes).sum();
        let mut close = last;
        for &i in &group {
            let m = &peers[i].machine;
            let down = (total - computed[i].bytes) as f64;
            close = close.max(last + m.latency_s + down / m.down_bps);
            stats.bytes_up += ((g - 1) * computed[i].bytes) as f64;
            stats.bytes_down += down;
            stats.connections += (g - 1) as f64;
        }
        let sent = crafted(config, share, &group, &included, &liars, &computed);
        let aggregate = aggregate(
            config,
            policy,
            round,
            Members {
                group: &group,
                included: &included,
                ids,
                liars: &liars,
            },
            &sent,
            standing.as_deref_mut(),
            stats,
        );
        for (&i, r) in group.iter().zip(&ready) {
            let p = &mut peers[i];
            // A member whose update missed the deadline was still computing at the close.
            p.clock = close.max(*r);
            if let Some(a) = &aggregate {
                p.outer.apply(&mut p.theta, a);
            }
        }
    }
    Ok(computed.iter().map(|c| c.bytes as f64).sum::<f64>() / peers.len() as f64)
}

/// A new group's members average their parameters (reduce-scatter then all-gather of each
/// member's θ, encoded as the peers encode a replica, `topology::encode_replica`: about twice
/// the encoded θ up and down per member; each clipped around the replicas' median as the peers
/// clip them), so that the group's replicas start equal.
fn average_parameters(
    config: &SimConfig,
    peers: &mut [Peer],
    group: &[usize],
    round: u64,
    stats: &mut RoundStats,
) -> Result<(), SimError> {
    let g = group.len();
    // Replicas that already agree (equal checksums, as heartbeats carry them) have nothing to
    // average: a group of everyone, or a grouping that kept a group whole.
    let first = params_checksum(&peers[group[0]].theta);
    if g < 2
        || group
            .iter()
            .all(|&i| params_checksum(&peers[i].theta) == first)
    {
        return Ok(());
    }
    let mut replicas = Vec::with_capacity(g);
    let mut start: f64 = 0.0;
    let mut moved: f64 = 0.0;
    let codec_error = |reason: String| SimError::Codec { round, reason };
    for &i in group {
        let p = &peers[i];
        let payload = encode_replica(&p.theta, round).map_err(|e| codec_error(e.to_string()))?;
        replicas
            .push(decode_replica(&payload, config.dim).map_err(|e| codec_error(e.to_string()))?);
        let share = 2.0 * payload.len() as f64 * (g - 1) as f64 / g as f64;
        stats.bytes_up += share;
        stats.bytes_down += share;
        stats.sync_bytes += 2.0 * share;
        start = start.max(p.clock);
        let m = &p.machine;
        moved = moved.max(share / m.up_bps + share / m.down_bps + 2.0 * m.latency_s);
    }
    // Clipped around the replicas' median as the peers clip them: a replica that climbed the
    // objective (a group whose liars outvoted it) moves the new group by a bounded share.
    let refs: Vec<&[f32]> = replicas.iter().map(Vec::as_slice).collect();
    let mean = median_clipped_mean(&refs, REPLICA_CLIP)
        .map_err(|e| codec_error(e.to_string()))?
        .mean;
    for &i in group {
        peers[i].theta.copy_from_slice(&mean);
        peers[i].clock = start + moved;
    }
    Ok(())
}

/// Each peer's shift along the skew direction (its own, with [`SimConfig::skew_per_peer`]:
/// then every honest peer's is `skew`): the first `attackers` none (they lie anyway),
/// the first [`SimConfig::skewed`] of the honest ones `(1 − f) × skew`, the rest `−f × skew`,
/// where f is the share actually skewed, so that the shifts cancel over the honest peers.
fn shifts(config: &SimConfig, attackers: usize) -> Vec<f32> {
    if config.skew_per_peer {
        let shift = |i| if i < attackers { 0.0 } else { config.skew };
        return (0..config.peers).map(shift).collect();
    }
    let honest = config.peers.saturating_sub(attackers);
    let skewed = (config.skewed * honest as f64).round() as usize;
    let f = skewed as f32 / honest.max(1) as f32;
    (0..config.peers)
        .map(|i| match i.checked_sub(attackers) {
            None => 0.0,
            Some(j) if j < skewed => (1.0 - f) * config.skew,
            Some(_) => -f * config.skew,
        })
        .collect()
}

fn new_peer(
    config: &SimConfig,
    rng: &mut SplitMix,
    id: u64,
    theta: Vec<f32>,
    (clock, shift): (f64, f32),
    attacker: bool,
) -> Result<Peer, SimError> {
    Ok(Peer {
        id: id.to_le_bytes().to_vec(),
        feedback: ErrorFeedback::with_decay(config.dim, config.feedback_decay),
        outer: OuterOptimizer::new(config.outer),
        codec: CpuCodec::new(config.codec).map_err(|e| SimError::Config(e.to_string()))?,
        machine: config.links.draw(rng),
        clock,
        attacker,
        shift,
        seed: rng.next_u64(),
        public: match config.strategy {
            Strategy::Gossip { .. } => theta.clone(),
            _ => Vec::new(),
        },
        heard: Vec::new(),
        theta,
    })
}

/// Replaces each peer that leaves this round by a newcomer holding a copy of a random peer's
/// state (fetched dense over its downlink).
fn churn(
    config: &SimConfig,
    peers: &mut [Peer],
    rng: &mut SplitMix,
    next_id: &mut u64,
    sum: &mut Summary,
) -> Result<(), SimError> {
    if config.churn <= 0.0 || peers.len() < 2 {
        return Ok(());
    }
    for i in 0..peers.len() {
        if rng.uniform() >= config.churn {
            continue;
        }
        let mut from = (rng.next_u64() % peers.len() as u64) as usize;
        if from == i {
            from = (from + 1) % peers.len();
        }
        let (theta, clock) = (peers[from].theta.clone(), peers[from].clock);
        // A newcomer in the leaver's place has data like its.
        let shift = peers[i].shift;
        let mut joiner = new_peer(config, rng, *next_id, theta, (clock, shift), false)?;
        *next_id += 1;
        let state = 4 * config.dim as u64;
        joiner.clock += 2.0 * joiner.machine.latency_s + state as f64 / joiner.machine.down_bps;
        sum.joins += 1;
        sum.sync_bytes += state;
        peers[i] = joiner;
    }
    Ok(())
}

/// Every peer's local steps and encoded update, on all cores.
fn compute_all(
    config: &SimConfig,
    objective: &Quadratic,
    peers: &mut [Peer],
    round: u64,
) -> Result<Vec<Computed>, SimError> {
    par_map(peers, |p| compute_one(config, objective, p, round))
}

/// `f` over every peer, on all cores, results in the peers' order (each peer's draws depend only
/// on the seed, its own and the round, so the split does not change the result).
pub(crate) fn par_map<T: Send>(
    peers: &mut [Peer],
    f: impl Fn(&mut Peer) -> Result<T, SimError> + Sync,
) -> Result<Vec<T>, SimError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = peers.len().div_ceil(threads).max(1);
    let f = &f;
    let results: Vec<Result<Vec<T>, SimError>> = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .chunks_mut(chunk)
            .map(|chunk| s.spawn(move || chunk.iter_mut().map(f).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(SimError::Config("a worker thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(peers.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

fn compute_one(
    config: &SimConfig,
    objective: &Quadratic,
    peer: &mut Peer,
    round: u64,
) -> Result<Computed, SimError> {
    let mut rng = SplitMix::new(peer.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut delta = objective.local_steps(
        &peer.theta,
        (config.local_steps, config.inner_lr),
        (peer.shift, config.skew_per_peer.then_some(peer.seed)),
        &mut rng,
    );
    if peer.attacker && !config.crafted {
        delta.iter_mut().for_each(|d| *d = -*d);
    }
    let payload = peer
        .feedback
        .encode(&mut peer.codec, &delta, RngKey::new(peer.seed, round))
        .map_err(|e| SimError::Codec {
            round,
            reason: e.to_string(),
        })?;
    let update =
        decode_payload(&config.codec, &payload, config.dim).map_err(|e| SimError::Codec {
            round,
            reason: e.to_string(),
        })?;
    Ok(Computed {
        bytes: payload.len(),
        update: Arc::new(update),
        compute_s: config.links.compute(&peer.machine, &mut rng),
    })
}

/// What each member of `group` sent: its update, or with [`SimConfig::crafted`], an attacker's
/// crafted from the honest updates of its group that made the deadline
/// ([`gradswarm_core::adversary::crafted`]).
fn crafted<'a>(
    config: &SimConfig,
    share: f32,
    group: &[usize],
    included: &[bool],
    liars: &[bool],
    computed: &'a [Computed],
) -> Cow<'a, [Computed]> {
    if !config.crafted {
        return Cow::Borrowed(computed);
    }
    let mut sent: Vec<Computed> = computed.to_vec();
    let arrived: Vec<usize> = group
        .iter()
        .zip(included)
        .filter(|(_, k)| **k)
        .map(|(&i, _)| i)
        .collect();
    let honest: Vec<&DecodedUpdate> = arrived
        .iter()
        .filter(|&&i| !liars[i])
        .map(|&i| &*computed[i].update)
        .collect();
    let k = config.codec.max_entries(config.dim);
    for &i in arrived.iter().filter(|&&i| liars[i]) {
        let others = arrived.len() - 1;
        if let Some(mut lie) = adversary::crafted(&honest, others, config.dim, k, 2.0) {
            if share < 1.0 {
                // Its own honest update, and a share of the lie, in the k coordinates the two
                // hold most of.
                let mut mixed = computed[i].update.to_dense();
                mixed
                    .iter_mut()
                    .zip(&lie)
                    .for_each(|(m, l)| *m = (1.0 - share) * *m + share * l);
                lie = vec![0.0; config.dim];
                for j in gradswarm_core::codec::topk::select(&mixed, k) {
                    lie[j as usize] = mixed[j as usize];
                }
            }
            let indices: Vec<u32> = (0..config.dim as u32)
                .filter(|&j| lie[j as usize] != 0.0)
                .collect();
            let values = indices.iter().map(|&j| lie[j as usize]).collect();
            sent[i].update = Arc::new(DecodedUpdate {
                len: config.dim,
                indices: Some(indices),
                values,
            });
        } else {
            // Too few honest updates heard to craft from: it flips its own.
            let own = &computed[i].update;
            sent[i].update = Arc::new(DecodedUpdate {
                len: own.len,
                indices: own.indices.clone(),
                values: own.values.iter().map(|v| -v).collect(),
            });
        }
    }
    Cow::Owned(sent)
}

/// The adaptive colluders' next share of the lie ([`SimConfig::crafted_adaptive`]), from how
/// far standing judged the farthest of them this round.
fn ride_the_cut(share: f32, liar_distance: f64) -> f32 {
    let edge = 0.9 * gradswarm_core::standing::CUT;
    let next = if liar_distance > edge {
        share * 0.5
    } else {
        share * 1.3
    };
    next.clamp(0.02, 1.0)
}

/// A group's members: their indices, whether each made the deadline, and every peer's id and
/// whether it attacks.
struct Members<'a> {
    group: &'a [usize],
    included: &'a [bool],
    ids: &'a [Vec<u8>],
    liars: &'a [bool],
}

/// The group's aggregate of the updates that made the deadline, through a round book, the norm
/// and direction screens as the peers run them, the group's standing, and the configured rule
/// (None when nothing is left).
fn aggregate(
    config: &SimConfig,
    policy: StalenessPolicy,
    round: u64,
    Members {
        group,
        included,
        ids,
        liars,
    }: Members<'_>,
    computed: &[Computed],
    standing: Option<&mut Standing>,
    stats: &mut RoundStats,
) -> Option<Vec<f32>> {
    let mut book = RoundBook::new(policy, round);
    for (&i, _) in group.iter().zip(included).filter(|(_, k)| **k) {
        // Every update claims one unit of samples: peers train equal batches.
        let _ = book.offer(
            &ids[i],
            round,
            round,
            1,
            i as u64,
            computed[i].update.clone(),
        );
    }
    let closed = book.close();
    let mut screened = screen_round(
        &closed.accepted,
        config.dim,
        &NormScreen::default(),
        config.direction_screen.as_ref(),
    );
    if let Some(standing) = standing {
        // Judged by the rounds sealed by now, as the peers judge (the simulator has no late
        // updates, so a round is final at once; the lag is the peers' wait for it).
        if let Some(upto) = round.checked_sub(config.standing_lag + 1) {
            let factors = standing.factors(upto);
            for (peer, distance) in factors.distances() {
                if ids
                    .iter()
                    .position(|id| id.as_slice() == peer)
                    .is_some_and(|i| liars[i])
                {
                    stats.liar_distance = stats.liar_distance.max(f64::from(distance));
                }
            }
            for (peer, _) in factors.reduced() {
                match ids.iter().position(|id| id.as_slice() == peer) {
                    Some(i) if liars[i] => stats.liars_weighed_out += 1,
                    Some(_) => stats.honest_weighed_out += 1,
                    None => {}
                }
            }
            factors.weigh(&closed.accepted, &mut screened);
        }
        standing.observe(round, &closed.accepted, &screened);
    }
    if screened.kept.is_empty() {
        return None;
    }
    config.rule.build().aggregate(&screened.inputs()).ok()
}

/// The honest replicas' mean relative loss, and their spread around their mean.
fn loss_and_spread(objective: &Quadratic, peers: &[Peer]) -> (f64, f64) {
    let honest: Vec<&Peer> = peers.iter().filter(|p| !p.attacker).collect();
    if honest.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = honest.len() as f64;
    let loss = honest
        .iter()
        .map(|p| objective.relative_loss(&p.theta))
        .sum::<f64>()
        / n;
    let mean = honest_mean(peers);
    let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt().max(1e-30);
    let spread = honest
        .iter()
        .map(|p| {
            p.theta
                .iter()
                .zip(&mean)
                .map(|(&t, m)| (f64::from(t) - m).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / n
        / norm;
    (loss, spread)
}

/// The honest replicas' mean θ.
fn honest_mean(peers: &[Peer]) -> Vec<f64> {
    let honest: Vec<&Peer> = peers.iter().filter(|p| !p.attacker).collect();
    let n = honest.len().max(1) as f64;
    let mut mean = vec![0.0f64; peers.first().map_or(0, |p| p.theta.len())];
    for p in &honest {
        for (m, &t) in mean.iter_mut().zip(&p.theta) {
            *m += f64::from(t) / n;
        }
    }
    mean
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
