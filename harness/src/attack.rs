//! Attacker peers: a real peer (real sockets, the peer code) whose [`Edge`] lies the way a
//! stranger could — about what it computed, its rounds, its samples or its replica — with a
//! valid signature on every message. docs/security.md names the defence each one meets.

use std::collections::VecDeque;

use gradswarm_core::adversary;
use gradswarm_core::codec::topk;
use gradswarm_core::codec::{DecodedUpdate, decode_payload, pack_payload};
use gradswarm_core::credit::{Attestation, MAX_ATTESTATIONS, peer_tag};
use gradswarm_core::synthetic::SplitMix;
use gradswarm_core::{
    AveragingConfig, Codec, CodecDescriptor, CpuCodec, Groups, Heartbeat, NormScreen, PeerState,
    Quantize, RngKey, StalenessPolicy, Update,
};
use gradswarm_peer::Edge;
use serde::{Deserialize, Serialize};
use tracing::debug;

/// What an attacker peer does (a scenario's `attack = "…"`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Attack {
    /// Sends −Δ: pushes the swarm uphill at an honest norm.
    SignFlip,
    /// Sends 100 Δ.
    Scale,
    /// Sends NaN values (a raw f32 payload: the int8 codec cannot carry one).
    Nan,
    /// Sends a random direction at Δ's norm.
    Noise,
    /// Sends nothing of value (a zero update) and claims the honest samples: a free rider.
    Zero,
    /// Sends its first updates again and again, unchanged.
    Replay,
    /// Re-publishes the latest update it received from another peer as its own.
    Copycat,
    /// Claims 64 times the samples it trained on, to weigh as 64 peers.
    SamplesInflation,
    /// Claims a round near the horizon ahead, so that others close the rounds in between.
    RoundInflation,
    /// Describes (and serves) a replica far from the swarm's, so that others average toward it.
    DriftPoison,
    /// Serves its new group a replica a hundred times θ, with a fingerprint to match, so that the
    /// group's mean of replicas is whatever it says (group averaging).
    ReplicaBlowup,
    /// Serves its new group a replica just within reach of the honest ones (θ plus noise of 1.9
    /// times its norm, at regrouping rounds), with a fingerprint to match: the farthest a
    /// replica is taken from, so that the group's plain mean would move by nearly half of ‖θ‖
    /// each grouping.
    ReplicaReach,
    /// Trains, sends and describes its θ honestly, so that it holds one replica with its old
    /// group's honest members; at regrouping rounds it serves its new group θ shrunk by
    /// [`HIDDEN_SHRINK`] plus a vector of [`HIDDEN_SIZE`] ‖θ‖ that the public sketch does not
    /// see ([`gradswarm_core::drift::unseen_by_sketch`]): every public check of its fingerprint
    /// passes, and where it is the holder asked, its replica would count for every member of
    /// its holding.
    ReplicaHidden,
    /// Heartbeats but never sends an update, so that rounds wait for it.
    Stall,
    /// Serves joiners a poisoned θ, and claims a later round than anyone so that it is asked first.
    StatePoison,
    /// Sends each heartbeat [`FLOOD_COPIES`] times and each update 20 times.
    Flood,
    /// Signs two different updates for each round (Δ and −Δ), hoping that peers keep different
    /// ones and part.
    Equivocate,
    /// Trains and sends honestly, but claims 64 times the samples it trained on in its
    /// heartbeats, attests that it counted as much of its own updates, and that it counted none
    /// of the others': to be credited more than it contributed, and the others less.
    CreditInflation,
    /// Every other kind in turn, a new one each round ([`Attack::ROTATION`]): all attacks at once
    /// when several such peers start at different points of the rotation.
    Mixed,
    /// Identities of one attacker that lie in agreement (from a shared seed): each takes its
    /// share of the data and sends the same fixed direction at an honest norm, so that their
    /// bias adds up round after round instead of averaging out; each describes and serves the
    /// same poisoned θ, claiming a later round, so that they vouch for each other to a joiner
    /// and vote together on drift.
    Sybil,
    /// Waits for the round's other updates (it computes [`CRAFTED_SLOWDOWN`] times slower) and
    /// sends one made to pass both screens while pushing against their sum: the negated sum of
    /// the half of them that point most along it (the most updates the direction screen lets one
    /// update oppose), on coordinates the other half do not touch (so that they abstain), at the
    /// norm screen's clip (twice the round's median norm). The omniscient attacker of the
    /// robust-aggregation literature, made sparse; where it has heard fewer than two updates, it
    /// flips its own.
    Crafted,
}

impl Attack {
    /// How many times slower than an honest peer an attacker of this kind computes: a crafted
    /// update needs the round's others in hand before it is made.
    pub fn slowdown(self) -> f64 {
        match self {
            Attack::Crafted => CRAFTED_SLOWDOWN,
            _ => 1.0,
        }
    }

    /// The kinds a [`Attack::Mixed`] attacker goes through, one per round.
    pub const ROTATION: [Attack; 15] = [
        Attack::SignFlip,
        Attack::Scale,
        Attack::Nan,
        Attack::Noise,
        Attack::Zero,
        Attack::Replay,
        Attack::Copycat,
        Attack::SamplesInflation,
        Attack::RoundInflation,
        Attack::DriftPoison,
        Attack::ReplicaBlowup,
        Attack::Stall,
        Attack::StatePoison,
        Attack::Flood,
        Attack::Equivocate,
    ];
}

/// How many times slower a [`Attack::Crafted`] attacker computes, so that it has heard the
/// round's honest updates (at 1.5 it had heard too few in 33 of 80 rounds): an honest peer waits
/// twice its median compute time after its own push, so the crafted update still arrives in time.
pub const CRAFTED_SLOWDOWN: f64 = 2.5;

/// How many received updates an attacker keeps (the crafted one reads its round's).
const HEARD: usize = 64;

/// How many times a flooding attacker sends each heartbeat.
pub const FLOOD_COPIES: usize = 200;

/// The [`Edge`] of an attacker peer.
pub struct Attacker {
    attack: Attack,
    /// The kind it makes this round (for [`Attack::Mixed`], where it is in the rotation).
    current: Attack,
    /// Where in [`Attack::ROTATION`] a mixed attacker starts.
    offset: u64,
    codec: CpuCodec,
    rng: SplitMix,
    staleness: StalenessPolicy,
    /// Its first updates (replay), and how many it re-sent.
    sent: VecDeque<Update>,
    replayed: usize,
    /// The latest update received from someone else (copycat).
    copied: Option<Update>,
    /// The direction a sybil pushes, drawn once from [`SYBIL_SEED`].
    direction: Vec<f32>,
    /// The run's groups, if it averages in groups: when a new group fetches replicas.
    groups: Option<Groups>,
    /// The latest updates it received (crafted), at most [`HEARD`].
    heard: VecDeque<Update>,
    /// The run's norm screen: a crafted update goes out at its clip.
    norm_screen: NormScreen,
}

/// How far [`Attack::ReplicaHidden`] shrinks θ: its norm makes room for the hidden vector, and
/// the public sketch reads the replica 3 % off plus its rounding (5.5–6 % on the tests' tiny
/// model), within the 8 % tolerance.
pub const HIDDEN_SHRINK: f32 = 0.97;

/// The size of the vector [`Attack::ReplicaHidden`] hides (× ‖θ‖): with [`HIDDEN_SHRINK`], the
/// served norm stays within 0.1 % of θ's (0.97² + 0.243² = 1).
pub const HIDDEN_SIZE: f32 = 0.243;

/// How many of its first updates a replaying attacker sends, and then sends again.
const REPLAY_AGE: usize = 3;

/// The seed every [`Attack::Sybil`] identity shares: what makes them one attacker.
const SYBIL_SEED: u64 = 0x5EB1_1DE5;

/// How far (× θ's root mean square) a sybil's described and served θ is from its own: beyond the
/// joiner's tolerance (0.25), so that only its fellow identities vouch for it.
const SYBIL_POISON: f32 = 0.5;

impl Attacker {
    /// An attacker encoding with `codec` (the run's) in a run of `staleness`; `seed` fixes its noise.
    pub fn new(
        attack: Attack,
        codec: CodecDescriptor,
        staleness: StalenessPolicy,
        averaging: AveragingConfig,
        norm_screen: NormScreen,
        seed: u64,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            attack,
            current: if attack == Attack::Mixed {
                Attack::ROTATION[0]
            } else {
                attack
            },
            offset: seed % Attack::ROTATION.len() as u64,
            codec: CpuCodec::new(codec)?,
            rng: SplitMix::new(seed),
            staleness,
            sent: VecDeque::new(),
            replayed: 0,
            copied: None,
            direction: Vec::new(),
            groups: match averaging {
                AveragingConfig::Groups { size, every } => Some(Groups { size, every }),
                AveragingConfig::Broadcast => None,
            },
            heard: VecDeque::new(),
            norm_screen,
        })
    }

    /// `values` encoded as the run's codec would (no error feedback: lies need no memory).
    fn encode(&mut self, values: &[f32], round: u64) -> Option<Vec<u8>> {
        let mut residual = vec![0.0; values.len()];
        self.codec
            .encode(values, &mut residual, RngKey::new(0xA77AC4, round))
            .ok()
    }

    /// A payload of the run's sparsity whose values are NaN.
    fn nan_payload(&self, delta: &[f32]) -> Option<Vec<u8>> {
        let mut descriptor = self.codec.descriptor();
        descriptor.quantize = Quantize::F32;
        let k = descriptor.max_entries(delta.len());
        let indices = topk::select(delta, k);
        let values = vec![f32::NAN; indices.len()];
        pack_payload(&descriptor, delta.len(), Some(&indices), &values, &[], &[]).ok()
    }

    fn with_payload(mut update: Update, payload: Option<Vec<u8>>) -> Vec<Update> {
        match payload {
            Some(p) => {
                update.payload = p;
                vec![update]
            }
            None => Vec::new(),
        }
    }
}

impl Edge for Attacker {
    fn update(&mut self, mut update: Update, delta: &[f32]) -> Vec<Update> {
        let round = update.round;
        if self.attack == Attack::Mixed {
            let at = (round + self.offset) % Attack::ROTATION.len() as u64;
            self.current = Attack::ROTATION[at as usize];
        }
        match self.current {
            Attack::SignFlip => {
                let flipped: Vec<f32> = delta.iter().map(|v| -v).collect();
                let p = self.encode(&flipped, round);
                Self::with_payload(update, p)
            }
            Attack::Scale => {
                let scaled: Vec<f32> = delta.iter().map(|v| 100.0 * v).collect();
                let p = self.encode(&scaled, round);
                Self::with_payload(update, p)
            }
            Attack::Nan => {
                update.codec.quantize = Quantize::F32;
                let p = self.nan_payload(delta);
                Self::with_payload(update, p)
            }
            Attack::Noise => {
                let norm = l2(delta);
                let mut noise: Vec<f32> =
                    (0..delta.len()).map(|_| self.rng.normal() as f32).collect();
                let scale = norm / l2(&noise).max(1e-30);
                noise.iter_mut().for_each(|v| *v *= scale);
                let p = self.encode(&noise, round);
                Self::with_payload(update, p)
            }
            Attack::Zero => {
                let p = self.encode(&vec![0.0; delta.len()], round);
                Self::with_payload(update, p)
            }
            Attack::Replay => {
                // Its first updates go out honestly; from then on it sends them again, unchanged.
                if self.sent.len() < REPLAY_AGE {
                    self.sent.push_back(update.clone());
                    vec![update]
                } else {
                    let again = self.sent[self.replayed % REPLAY_AGE].clone();
                    self.replayed += 1;
                    vec![again]
                }
            }
            Attack::Copycat => match self.copied.take() {
                Some(theirs) => {
                    update.codec = theirs.codec;
                    update.payload = theirs.payload;
                    vec![update]
                }
                None => Vec::new(),
            },
            Attack::SamplesInflation => {
                update.samples = update.samples.saturating_mul(64);
                vec![update]
            }
            Attack::RoundInflation => {
                // Just inside what receivers keep for later: 2τ_max + 2 rounds ahead.
                update.round += 2 * self.staleness.tau_max + 1;
                update.base_round = update.round;
                vec![update]
            }
            Attack::DriftPoison
            | Attack::ReplicaBlowup
            | Attack::ReplicaReach
            | Attack::ReplicaHidden
            | Attack::StatePoison
            | Attack::CreditInflation => vec![update],
            Attack::Sybil => {
                let norm = l2(delta);
                let direction = self.sybil_direction(delta.len());
                let scale = norm / l2(direction).max(1e-30);
                let biased: Vec<f32> = direction.iter().map(|v| v * scale).collect();
                let p = self.encode(&biased, round);
                Self::with_payload(update, p)
            }
            Attack::Crafted => {
                let crafted = self.crafted(round, delta).unwrap_or_else(|| {
                    debug!("round {round}: too few updates heard to craft one; flipping");
                    delta.iter().map(|v| -v).collect()
                });
                let p = self.encode(&crafted, round);
                Self::with_payload(update, p)
            }
            Attack::Flood => vec![update; 20],
            Attack::Equivocate => {
                let flipped: Vec<f32> = delta.iter().map(|v| -v).collect();
                let other = Self::with_payload(update.clone(), self.encode(&flipped, round));
                [vec![update], other].concat()
            }
            Attack::Stall | Attack::Mixed => Vec::new(),
        }
    }

    fn mark(&mut self, round: u64, params: &mut Vec<f32>) {
        match self.current {
            // Far enough to read as drift, near enough to look like a replica: θ + 20% of its norm.
            Attack::DriftPoison => self.poison(params, 0.2),
            Attack::ReplicaBlowup => params.iter_mut().for_each(|v| *v *= 100.0),
            // Inside `REPLICA_REACH` (2 ‖θ‖) of a partner whose θ is the attacker's own; only
            // where a new group fetches it, so that between groupings the attacker's heartbeats
            // describe its θ and no drift repair moves that θ away from the honest ones'.
            Attack::ReplicaReach if self.groups.is_some_and(|g| g.regroups_at(round)) => {
                self.poison(params, 1.9)
            }
            Attack::Sybil => sybil_poison(round, params),
            _ => {}
        }
    }

    fn replica(&mut self, round: u64, params: &[f32]) -> Option<Vec<f32>> {
        if self.current != Attack::ReplicaHidden
            || !self.groups.is_some_and(|g| g.regroups_at(round))
        {
            return None;
        }
        let hidden = hidden_direction(params.len(), round);
        let scale = HIDDEN_SIZE * l2(params);
        Some(
            params
                .iter()
                .zip(&hidden)
                .map(|(t, v)| HIDDEN_SHRINK * t + scale * v)
                .collect(),
        )
    }

    fn heartbeat(&mut self, mut heartbeat: Heartbeat) -> Vec<Heartbeat> {
        match self.current {
            Attack::StatePoison | Attack::Sybil => {
                heartbeat.round += 3;
                vec![heartbeat]
            }
            Attack::Flood => vec![heartbeat; FLOOD_COPIES],
            Attack::CreditInflation => {
                heartbeat.samples = heartbeat.samples.saturating_mul(64);
                for a in &mut heartbeat.attests {
                    a.samples = 0;
                }
                heartbeat.attests.truncate(MAX_ATTESTATIONS - 1);
                heartbeat.attests.push(Attestation {
                    peer: peer_tag(&heartbeat.peer_id),
                    samples: heartbeat.samples,
                });
                vec![heartbeat]
            }
            _ => vec![heartbeat],
        }
    }

    fn snapshot(&mut self, state: &mut PeerState) {
        match self.current {
            Attack::StatePoison => self.poison(&mut state.params, 1.0),
            // The θ its fellow identities describe for that round, so that they vouch for it.
            Attack::Sybil => sybil_poison(state.round, &mut state.params),
            _ => {}
        }
    }

    fn received(&mut self, update: &Update) {
        // A mixed attacker keeps a copy for its copycat rounds.
        if matches!(self.attack, Attack::Copycat | Attack::Mixed) {
            self.copied = Some(update.clone());
        }
        if self.attack == Attack::Crafted {
            if self.heard.len() == HEARD {
                self.heard.pop_front();
            }
            self.heard.push_back(update.clone());
        }
    }
}

impl Attacker {
    /// The fixed direction every sybil identity pushes (the same in all of them, every round).
    fn sybil_direction(&mut self, len: usize) -> &[f32] {
        if self.direction.len() != len {
            let mut rng = SplitMix::new(SYBIL_SEED);
            self.direction = (0..len).map(|_| rng.normal() as f32).collect();
        }
        &self.direction
    }

    /// The [`Attack::Crafted`] update of `round` (vectors of `delta`'s length), from the updates
    /// of that round it has heard; `None` where it has heard fewer than two.
    fn crafted(&self, round: u64, delta: &[f32]) -> Option<Vec<f32>> {
        let len = delta.len();
        let theirs: Vec<DecodedUpdate> = self
            .heard
            .iter()
            .filter(|u| u.round == round)
            .filter_map(|u| decode_payload(&u.codec, &u.payload, len).ok())
            .collect();
        let heard: Vec<&DecodedUpdate> = theirs.iter().collect();
        let k = self.codec.descriptor().max_entries(len);
        let crafted = adversary::crafted(&heard, heard.len(), len, k, self.norm_screen.clip_ratio)?;
        debug!(
            "round {round}: crafted against {} of the {} updates heard",
            heard.len() / 2,
            heard.len()
        );
        Some(crafted)
    }

    /// Adds Gaussian noise of `share` × θ's root mean square to every coordinate.
    fn poison(&mut self, params: &mut [f32], share: f32) {
        let rms = (l2(params) / (params.len().max(1) as f32).sqrt()).max(1e-3);
        for v in params.iter_mut() {
            *v += share * rms * self.rng.normal() as f32;
        }
    }
}

/// The unit vector [`Attack::ReplicaHidden`] hides in its replica of `round` (of `len`
/// parameters): drawn from a fixed seed and the round, so that a test can measure how much of it
/// reached the honest peers' θ, with what the public sketch sees of it taken out.
pub fn hidden_direction(len: usize, round: u64) -> Vec<f32> {
    let mut rng = SplitMix::new(HIDDEN_SEED ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut hidden: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
    gradswarm_core::drift::unseen_by_sketch(&mut hidden);
    let norm = l2(&hidden).max(1e-30);
    hidden.iter_mut().for_each(|v| *v /= norm);
    hidden
}

/// The seed of [`hidden_direction`].
const HIDDEN_SEED: u64 = 0x41D_DE17;

/// θ of `round` as every sybil identity describes it: its own plus noise drawn from the shared
/// seed and the round, so that the identities' poisoned replicas agree with one another.
fn sybil_poison(round: u64, params: &mut [f32]) {
    let rms = (l2(params) / (params.len().max(1) as f32).sqrt()).max(1e-3);
    let mut rng = SplitMix::new(SYBIL_SEED ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for v in params.iter_mut() {
        *v += SYBIL_POISON * rms * rng.normal() as f32;
    }
}

fn l2(v: &[f32]) -> f32 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32
}
