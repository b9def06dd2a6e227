//! What a peer reports per round (the harness's report rows, the node's status line).

use std::collections::BTreeMap;

use gradswarm_core::DropCounts;
use serde::{Deserialize, Serialize};

/// One round as one peer saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// The round closed.
    pub round: u64,
    /// Mean training loss of this round's local steps (nats per byte); NaN in a catch-up round.
    /// JSON has no NaN: it is written as null, and read back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f32,
    /// Validation loss, when evaluated this round.
    pub val_loss: Option<f64>,
    /// Samples this peer has trained on so far.
    pub samples: u64,
    /// Live peers besides this one.
    pub peers: usize,
    /// Updates that counted in this round (this peer's own included).
    pub updates: usize,
    /// Staleness τ of each update that counted.
    pub staleness: Vec<u64>,
    /// Updates dropped since the previous report, by reason.
    pub drops: DropCounts,
    /// This peer's credit so far: samples of its updates that counted in the others'
    /// aggregates, as they attest it ([`gradswarm_core::credit`]).
    #[serde(default)]
    pub credit: u64,
    /// How far the others' replicas are from this one (‖θ_them − θ_me‖ / ‖θ_me‖ by their
    /// sketches) at rounds both have sealed ([`gradswarm_core::marks`]) with the same updates,
    /// the median over the heartbeats heard since the previous report; None when none was.
    #[serde(default)]
    pub divergence: Option<f64>,
    /// Bytes of this peer's own update message.
    pub bytes_up: u64,
    /// Bytes of gossip messages received since the previous report.
    pub bytes_down: u64,
    /// Seconds of local training.
    pub compute_s: f64,
    /// Seconds encoding (and decoding our own update).
    pub encode_s: f64,
    /// Seconds waiting for others' updates.
    pub network_s: f64,
    /// Seconds averaging parameters with a new group before the round's local work (fetching
    /// the other old groups' replicas): network time too, once a grouping.
    #[serde(default)]
    pub average_s: f64,
    /// Of `average_s`, the seconds after every new partner had reached the round: the replicas'
    /// fetching, without the wait for an old group that ran behind (nor the fingerprints' last
    /// round trip, a few tens of ms on a home link).
    #[serde(default)]
    pub average_fetch_s: f64,
    /// How the regrouping that opened this round went (group averaging, at a round where the
    /// groups change); None in any other round.
    #[serde(default)]
    pub regroup: Option<RegroupReport>,
    /// When this peer handed its own update to the network (Unix ms); None in a round it sent
    /// none. With `arrived_ms` at its partners: how long its update was in flight.
    #[serde(default)]
    pub sent_at_ms: Option<f64>,
    /// When each of this round's updates arrived (Unix ms), by sender (base58), refused ones
    /// too (they end a partner's wait as well).
    #[serde(default)]
    pub arrived_ms: BTreeMap<String, f64>,
    /// Whether every awaited update was in when the wait ended and `arrived_ms` holds them all
    /// (not when the swarm moved on, the deadline passed, or arrivals overflowed).
    #[serde(default)]
    pub awaited_in: bool,
    /// Checksum of θ after the round.
    pub checksum: u64,
    /// True when this round was closed while catching up (no own update in it).
    pub catch_up: bool,
    /// Pairwise averagings with a drifted replica since the previous report.
    pub reconciled: u64,
    /// True when the round closed at its deadline with a partner's update still missing.
    pub waited_out: bool,
    /// The peer was paused: it closed this round as the swarm moved on, without training.
    #[serde(default)]
    pub skipped: bool,
    /// The partners (base58 ids) whose updates were missing then.
    pub missing: Vec<String>,
    /// Peers (base58) whose updates this round's aggregate weighed out for their standing, with
    /// their distance ([`gradswarm_core::standing::Factors`]).
    #[serde(default)]
    pub weighed_down: BTreeMap<String, f32>,
}

/// How one regrouping went for one peer: whom it averaged with, and what it left out and why.
/// The harness sums them over a run, so that what the tolerances refuse is counted, not guessed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegroupReport {
    /// New partners, as this peer drew its group.
    pub partners: u64,
    /// Of them, those left out without a fingerprint of the round: they stood still short of it,
    /// refused, gave one without a sketch, or the wait for fingerprints ended first (all of
    /// them when this peer had no replica of the round marked).
    pub unreached: u64,
    /// Old groups' replicas fetched and taken (one per holding that is not this peer's own).
    pub fetched: u64,
    /// Holdings whose replica no holder served in a form that could be taken.
    pub unfetched: u64,
    /// Replicas served that did not fit: off their holders' sketches or norms, or beyond
    /// `REPLICA_REACH` from this peer's own. Each one refused, and the next holder asked.
    pub refused: u64,
    /// The farthest a replica that was taken lay from its holders' fingerprints (relative, on the
    /// drift sketch): how close honest replicas come to the tolerance. None when none was fetched.
    pub max_off: Option<f64>,
    /// The farthest a replica taken lay from this peer's own (exact, relative to its norm): how
    /// far apart honest old groups grew, against the reach a replica is refused beyond
    /// (`REPLICA_REACH`). None when none was fetched.
    #[serde(default)]
    pub max_reach: Option<f64>,
    /// Holders that did not support, by their keyed check, the first replica taken from their
    /// holding (or gave no check). Honest holders of one replica support it, so this counts
    /// liars, and checks lost or refused; where the first replica's supporters are no majority
    /// of the holding, these are fetched from next.
    #[serde(default)]
    pub unsupported: u64,
    /// Replicas of a holding of several that counted for their server alone: no fellow holder's
    /// check supported them. Honest holders support each other, so this counts liars' replicas
    /// (and, if any, honest ones whose fellow holders' checks were lost).
    #[serde(default)]
    pub alone: u64,
    /// Replicas taken and then set aside: a majority of their holding supported another, which
    /// then counted for every holder (the liar's among them), or gave its checks against them.
    /// Not in `fetched`, nor in `max_off` and `max_reach`.
    #[serde(default)]
    pub outvoted: u64,
    /// The farthest a holder's keyed check read from a replica it supported (relative): how
    /// close honest holders come to `CHECK_TOLERANCE`. None when no holder was checked.
    #[serde(default)]
    pub max_check: Option<f64>,
    /// Partners whose replica went into the average.
    pub averaged: u64,
    /// Replicas (one per member counted) that lay past `REPLICA_CLIP` from the group's
    /// coordinate-wise median and were clipped to it in the mean.
    #[serde(default)]
    pub clipped: u64,
    /// The farthest the group's mean moved this peer's θ (exact, relative to its norm): how much
    /// a regrouping changed a peer, honest mixing or a liar's pull. None when none averaged.
    #[serde(default)]
    pub max_moved: Option<f64>,
}

impl RegroupReport {
    /// Keeps the farther of `max_off` and `off`, and of `max_reach` and `reach`.
    pub fn took(&mut self, off: Option<f64>, reach: Option<f64>) {
        self.max_off = farther(self.max_off, off);
        self.max_reach = farther(self.max_reach, reach);
    }

    /// Keeps the farther of `max_check` and `check`.
    pub fn checked(&mut self, check: Option<f64>) {
        self.max_check = farther(self.max_check, check);
    }

    /// Keeps the farther of `max_moved` and `moved`.
    pub fn moved(&mut self, moved: f64) {
        self.max_moved = Some(self.max_moved.map_or(moved, |m| m.max(moved)));
    }

    /// Adds `other`'s counts to these, keeping the farther `max_off`, `max_reach`, `max_check`
    /// and `max_moved`.
    pub fn merge(&mut self, other: &RegroupReport) {
        self.partners += other.partners;
        self.unreached += other.unreached;
        self.fetched += other.fetched;
        self.unfetched += other.unfetched;
        self.refused += other.refused;
        self.averaged += other.averaged;
        self.clipped += other.clipped;
        self.unsupported += other.unsupported;
        self.alone += other.alone;
        self.outvoted += other.outvoted;
        self.checked(other.max_check);
        if let Some(moved) = other.max_moved {
            self.moved(moved);
        }
        self.took(other.max_off, other.max_reach);
    }
}

/// The farther of two distances, where either is known.
fn farther(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// What a peer did over its whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerSummary {
    /// The peer's id (base58).
    pub peer_id: String,
    /// The round the peer started on (non-zero when it synced from a peer).
    pub start_round: u64,
    /// The peer that served its state, if it synced (at the join, or the latest re-sync).
    pub synced_from: Option<String>,
    /// Times it fell too far behind the others mid-run and fetched the run's state again.
    #[serde(default)]
    pub resyncs: u64,
    /// Whether it left only when its linger past the last round ran out (twice `peer_timeout`),
    /// a peer still unsettled or owing it an update: a run's end that cost it that long.
    #[serde(default)]
    pub lingered_out: bool,
    /// States fetched and not taken (unverified, refused by the others, or not installed):
    /// what syncing cost it in passes.
    #[serde(default)]
    pub states_not_taken: u64,
    /// Every round's report.
    pub rounds: Vec<RoundReport>,
    /// All drops, by reason.
    pub drops: DropCounts,
    /// Updates received from each other peer that counted, keyed by peer id (base58).
    pub counted_from: BTreeMap<String, u64>,
    /// Pairwise averagings with drifted replicas, keyed by the partner's peer id (base58).
    pub reconciled_with: BTreeMap<String, u64>,
    /// This peer's credit at the end, as the others attest it.
    #[serde(default)]
    pub credit: u64,
    /// Every peer's credit (its own included) as this peer's view of the run has it, by id (base58).
    #[serde(default)]
    pub credits: BTreeMap<String, u64>,
    /// θ at the end.
    pub final_params: Vec<f32>,
}

/// Round reports a [`PeerSummary`] keeps: the latest this many at least, at most twice as many
/// (the observer sees every one as it happens). A run of a million rounds would otherwise hold a
/// million reports.
pub const MAX_REPORTS: usize = 4096;

/// Peers a [`PeerSummary`] counts per map (`counted_from`, `reconciled_with`): identities are
/// free, and a stranger making new ones must not grow an honest peer's summary without bound.
pub const MAX_COUNTED_PEERS: usize = 4096;

/// Adds `by` to `peer`'s count in `counts`; when a new peer would pass [`MAX_COUNTED_PEERS`],
/// the peer with the smallest count (the first such, by id) is forgotten first.
pub fn count_peer(counts: &mut BTreeMap<String, u64>, peer: String, by: u64) {
    if counts.len() >= MAX_COUNTED_PEERS && !counts.contains_key(&peer) {
        let least = counts
            .iter()
            .min_by_key(|&(_, &n)| n)
            .map(|(p, _)| p.clone());
        if let Some(least) = least {
            counts.remove(&least);
        }
    }
    *counts.entry(peer).or_default() += by;
}

impl PeerSummary {
    /// Keeps `report`, forgetting the oldest half once [`MAX_REPORTS`] × 2 are held.
    pub fn keep(&mut self, report: RoundReport) {
        if self.rounds.len() >= 2 * MAX_REPORTS {
            self.rounds.drain(..MAX_REPORTS);
        }
        self.rounds.push(report);
    }
}

/// Reads an f32 that JSON wrote as null (serde_json's NaN) back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Option::<f32>::deserialize(d).map(|v| v.unwrap_or(f32::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_peer_counts_stay_bounded_and_keep_the_largest() {
        let mut counts = BTreeMap::new();
        count_peer(&mut counts, "honest".into(), 500);
        for i in 0..3 * MAX_COUNTED_PEERS {
            count_peer(&mut counts, format!("sybil-{i}"), 1);
        }
        assert_eq!(counts.len(), MAX_COUNTED_PEERS);
        assert_eq!(
            counts.get("honest"),
            Some(&500),
            "the largest count is kept"
        );
        count_peer(&mut counts, "honest".into(), 1);
        assert_eq!(counts.get("honest"), Some(&501));
    }

    #[test]
    fn a_summary_keeps_a_bounded_window_of_the_latest_reports() {
        let mut summary = PeerSummary::default();
        for round in 0..(5 * MAX_REPORTS as u64) {
            summary.keep(RoundReport {
                round,
                ..Default::default()
            });
            assert!(summary.rounds.len() <= 2 * MAX_REPORTS);
        }
        assert!(summary.rounds.len() >= MAX_REPORTS);
        assert_eq!(
            summary.rounds.last().map(|r| r.round),
            Some(5 * MAX_REPORTS as u64 - 1)
        );
    }

    #[test]
    fn regroupings_add_up_and_keep_the_farthest_replica_taken_and_move() {
        let mut all = RegroupReport::default();
        let one = RegroupReport {
            partners: 3,
            unreached: 1,
            fetched: 1,
            refused: 2,
            max_off: Some(0.05),
            max_reach: Some(0.3),
            averaged: 2,
            clipped: 1,
            max_moved: Some(0.2),
            ..RegroupReport::default()
        };
        let other = RegroupReport {
            partners: 4,
            fetched: 2,
            unfetched: 1,
            max_off: Some(0.03),
            max_reach: Some(0.5),
            averaged: 3,
            max_moved: Some(0.1),
            ..RegroupReport::default()
        };
        all.merge(&one);
        all.merge(&RegroupReport::default());
        all.merge(&other);
        assert_eq!(
            (
                all.partners,
                all.unreached,
                all.fetched,
                all.unfetched,
                all.refused,
                all.averaged
            ),
            (7, 1, 3, 1, 2, 5)
        );
        assert_eq!((all.max_off, all.max_reach), (Some(0.05), Some(0.5)));
        assert_eq!((all.clipped, all.max_moved), (1, Some(0.2)));
    }

    #[test]
    fn a_catch_up_round_s_nan_loss_survives_json() {
        let r = RoundReport {
            round: 3,
            loss: f32::NAN,
            ..RoundReport::default()
        };
        let json = serde_json::to_string(&r).expect("json");
        let back: RoundReport = serde_json::from_str(&json).expect("read back");
        assert!(back.loss.is_nan() && back.round == 3);
    }
}
