//! The harness report (bench/README.md): per peer and per round what happened, the baseline trained
//! in the same run, and a `summary` of headline ratios that one line of jq can compare.

use std::collections::BTreeMap;

use gradswarm_core::DropCounts;
use gradswarm_peer::RegroupReport;
use serde::Serialize;

use crate::attack::Attack;
use crate::baseline::Baseline;
use crate::scenario::Scenario;

/// One round as one peer saw it.
#[derive(Clone, Debug, Serialize)]
pub struct RoundRow {
    /// The round.
    pub round: u64,
    /// Mean training loss of its local steps (null in a catch-up round).
    pub loss: Option<f32>,
    /// Validation loss, on evaluation rounds.
    pub val_loss: Option<f64>,
    /// Samples this peer trained on so far.
    pub samples: u64,
    /// Bytes the peer's transport sent during the round (all protocols, framing included).
    pub wire_bytes_up: u64,
    /// Bytes the peer's transport received during the round.
    pub wire_bytes_down: u64,
    /// Of `wire_bytes_up`, the substream payloads by protocol (noise and yamux framing are the
    /// rest); protocols that sent nothing are left out.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub wire_up_by_protocol: BTreeMap<String, u64>,
    /// Bytes of the peer's own update message.
    pub update_bytes_up: u64,
    /// Peers this peer was connected to at the round's end.
    #[serde(default)]
    pub connections: usize,
    /// Bytes of update and heartbeat messages it received.
    pub update_bytes_down: u64,
    /// How many counted updates had each staleness τ (index = τ).
    pub staleness_histogram: Vec<u64>,
    /// Updates dropped during the round, by reason.
    pub drops: DropCounts,
    /// Live peers besides this one.
    pub peers: usize,
    /// Seconds of local training.
    pub compute_s: f64,
    /// Seconds encoding.
    pub encode_s: f64,
    /// Seconds collecting the others' updates.
    pub network_s: f64,
    /// Seconds averaging parameters with a new group before the round: waiting for the new
    /// partners to reach it, then fetching their replicas.
    pub average_s: f64,
    /// Of `average_s`, the fetching (after every new partner had reached the round).
    pub average_fetch_s: f64,
    /// How the regrouping that opened the round went, in a round where the groups changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regroup: Option<RegroupReport>,
    /// Of `network_s`, the wait for updates in flight: the longest an awaited update travelled
    /// (its sender's hand-over to its arrival here, or to the wait's end where it had not
    /// arrived by then) after this peer began to wait. What the network cost the round, without
    /// the wait for partners still computing (an update handed over only after the wait ended
    /// cost none of it). None where it cannot be told (a round this peer sent nothing in):
    /// then the whole wait counts as the links', as it does where a missing update's hand-over
    /// is not known.
    pub link_s: Option<f64>,
    /// When its update went to the network (Unix ms), for [`link_times`].
    #[serde(skip)]
    pub sent_at_ms: Option<f64>,
    /// When each of the round's updates arrived (Unix ms), by sender, for [`link_times`].
    #[serde(skip)]
    pub arrived_ms: BTreeMap<String, f64>,
    /// Whether every awaited update was in when the wait ended, all in `arrived_ms`.
    #[serde(skip)]
    pub awaited_in: bool,
    /// The partners whose updates were still missing when the wait ended.
    #[serde(skip)]
    pub missing: Vec<String>,
}

/// Fills every row's `link_s` from the peers' hand-over and arrival times (one machine's clock:
/// the harness's peers share it). An update that arrived before this peer began to wait cost
/// nothing; one whose sender was still computing when this peer began costs only its flight;
/// one still missing when the wait ended costs its flight until then, none if its sender handed
/// it over only after (it was computing all along: a partner that started late, say).
pub fn link_times(peers: &mut [PeerRow]) {
    let sent: BTreeMap<(String, u64), f64> = peers
        .iter()
        .flat_map(|p| {
            p.rounds
                .iter()
                .filter_map(|r| Some(((p.peer_id.clone(), r.round), r.sent_at_ms?)))
        })
        .collect();
    for p in peers.iter_mut() {
        for r in &mut p.rounds {
            let Some(began) = r.sent_at_ms else {
                continue;
            };
            let (mut wait, mut known) = (0.0f64, r.awaited_in || !r.missing.is_empty());
            // What arrived after the wait ended (while a paced round idled) held nobody up.
            let ended = began + r.network_s * 1e3;
            for (from, &at) in r.arrived_ms.iter().filter(|(_, at)| **at <= ended) {
                match sent.get(&(from.clone(), r.round)) {
                    Some(&left) => wait = wait.max((at - left).min(at - began)),
                    None => known = false,
                }
            }
            if !r.awaited_in {
                for from in &r.missing {
                    match sent.get(&(from.clone(), r.round)) {
                        Some(&left) if left < ended => wait = wait.max(ended - left.max(began)),
                        Some(_) => {}
                        None => known = false,
                    }
                }
            }
            // An update whose hand-over nobody reported (a peer gone since) is counted whole.
            r.link_s = Some(if known {
                (wait / 1e3).clamp(0.0, r.network_s)
            } else {
                r.network_s
            });
        }
    }
}

/// One peer's run.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    /// Start order.
    pub index: usize,
    /// libp2p peer id.
    pub peer_id: String,
    /// The round it started on (non-zero for a late joiner).
    pub start_round: u64,
    /// The peer that served its state, when it joined late (or re-synced after falling behind).
    pub synced_from: Option<String>,
    /// Times it fell too far behind mid-run and fetched the run's state again.
    pub resyncs: u64,
    /// Whether it left only when its linger past the last round ran out (a peer still
    /// unsettled or owing it an update).
    pub lingered_out: bool,
    /// States it fetched and did not take (refused by the others' fingerprints, or broken).
    pub states_not_taken: u64,
    /// The peers whose replicas drift repair moved it toward, and how often.
    #[serde(default)]
    pub reconciled_with: BTreeMap<String, u64>,
    /// The peers its aggregates weighed down for their standing, and in how many rounds.
    #[serde(default)]
    pub weighed_down: BTreeMap<String, u64>,
    /// Whether it was killed.
    pub killed: bool,
    /// The round of the checkpoint it restarted from after a kill (`restart_at_round`).
    #[serde(default)]
    pub resumed_from: Option<u64>,
    /// The attack it made, if it was an attacker: its rounds are not the swarm's progress.
    pub attack: Option<Attack>,
    /// Its peak resident memory, when it ran in a process of its own (`processes = true`).
    pub max_rss_bytes: Option<u64>,
    /// Every round.
    pub rounds: Vec<RoundRow>,
    /// All its drops, by reason.
    pub drops: DropCounts,
}

/// Replica divergence at one round: max ‖θ_i − θ̄‖ / ‖θ̄‖ over the peers that reported θ.
#[derive(Clone, Debug, Serialize)]
pub struct DivergenceRow {
    /// The round.
    pub round: u64,
    /// Peers compared.
    pub peers: usize,
    /// The divergence.
    pub divergence: f64,
}

/// The numbers to compare runs by.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Peers in the scenario.
    pub peers: usize,
    /// Rounds per peer.
    pub rounds: u64,
    /// Local steps per round.
    pub local_steps: u64,
    /// Model parameters.
    pub parameters: usize,
    /// Dense fp32 bytes one peer sends per step in an all-reduce (4 bytes × parameters; a ring
    /// all-reduce sends 2(N−1)/N times that, so this is the conservative side).
    pub dense_bytes_per_peer_per_step: f64,
    /// gradswarm's transport bytes sent per peer per local step (mean over peers).
    pub wire_bytes_per_peer_per_step: f64,
    /// Its update messages' bytes per peer per local step (what the codec alone produced).
    pub update_bytes_per_peer_per_step: f64,
    /// Of the wire bytes per peer per step, each protocol's substream payloads (the rest of
    /// `wire_bytes_per_peer_per_step` is noise and yamux framing).
    pub wire_bytes_per_peer_per_step_by_protocol: BTreeMap<String, f64>,
    /// `wire_bytes_per_peer_per_step` over the rounds past the run's first tenth and before its
    /// last: what a long run pays a step, without the start's discovery and first meshes, and
    /// the end's settling, which a short run spreads over few steps.
    #[serde(default)]
    pub steady_wire_bytes_per_peer_per_step: f64,
    /// Peers a peer is connected to, the bootstrap nodes included: the mean over peers and over
    /// the same steady rounds (N − 1 peers and the bootstrap nodes on a full mesh).
    #[serde(default)]
    pub connections_per_peer: f64,
    /// dense ÷ wire bytes per peer per step.
    pub bytes_ratio_vs_dense: f64,
    /// The validation loss both runs are timed to.
    pub target_val_loss: f64,
    /// Samples (all peers) until the swarm's validation loss first reached the target.
    pub samples_to_target: Option<u64>,
    /// The same for the baseline.
    pub baseline_samples_to_target: Option<u64>,
    /// samples_to_target ÷ baseline_samples_to_target (null when either never reached it).
    pub samples_to_target_ratio: Option<f64>,
    /// The swarm's last validation loss (mean over peers).
    pub final_val_loss: Option<f64>,
    /// The baseline's last validation loss.
    pub baseline_final_val_loss: Option<f64>,
    /// The largest replica divergence at the end of the run.
    pub max_replica_divergence: f64,
    /// (encode + network + average) ÷ (compute + encode + network + average), summed over peers
    /// and rounds.
    pub comm_fraction: f64,
    /// (encode + link + average_fetch) ÷ the same: `comm_fraction` without the wait for
    /// partners still computing ([`RoundRow::link_s`], [`RoundRow::average_fetch_s`]; a round
    /// whose link time cannot be told counts whole).
    #[serde(default)]
    pub link_fraction: f64,
    /// Updates dropped, all peers, by reason.
    pub drops: DropCounts,
    /// The regroupings of every peer, summed: partners left out, replicas fetched and refused,
    /// and the farthest a replica taken lay from its holders' fingerprints.
    #[serde(default)]
    pub regroupings: RegroupReport,
    /// Wall time of the swarm run.
    pub wall_s: f64,
    /// Wall time of the baseline run.
    pub baseline_wall_s: Option<f64>,
    /// The attacks its attacker peers made (empty: an all-honest run).
    pub attacks: Vec<Attack>,
    /// The first evaluated round at which the honest peers' mean validation loss was at or below
    /// the target: how long the run took to get there, whatever the samples.
    pub rounds_to_target: Option<u64>,
    /// rounds_to_target ÷ that of the all-honest run (`swarm-harness adversity`).
    pub rounds_vs_honest: Option<f64>,
    /// samples_to_target of the same scenario run with every peer honest (`swarm-harness adversity`).
    pub honest_samples_to_target: Option<u64>,
    /// samples_to_target ÷ honest_samples_to_target: what the attack cost the honest peers (null
    /// when either run missed the target).
    pub samples_vs_honest: Option<f64>,
    /// The largest peak RSS of an honest peer that ran to the end (peer processes only).
    pub max_honest_rss_bytes: Option<u64>,
    /// max_honest_rss_bytes ÷ that of the all-honest run (`swarm-harness adversity`).
    pub rss_vs_honest: Option<f64>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The headline numbers.
    pub summary: Summary,
    /// What was run.
    pub scenario: Scenario,
    /// Per peer, per round.
    pub peers: Vec<PeerRow>,
    /// Replica divergence along the run.
    pub divergence: Vec<DivergenceRow>,
    /// The dense synchronous baseline, if trained.
    pub baseline: Option<Baseline>,
}

impl Report {
    /// Writes the report as pretty JSON to `path` (its folder created), atomically: a report
    /// half written by a killed run would read as a finished one.
    pub fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// The swarm's validation curve: per evaluated round, (samples of the honest peers so far, their
/// mean val loss). Attackers are left out: their samples were thrown away, and their θ is
/// whatever they chose to keep.
pub fn swarm_curve(peers: &[PeerRow]) -> Vec<(u64, u64, f64)> {
    let peers: Vec<&PeerRow> = peers.iter().filter(|p| p.attack.is_none()).collect();
    let mut by_round: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for p in &peers {
        for r in &p.rounds {
            if let Some(v) = r.val_loss {
                by_round.entry(r.round).or_default().push(v);
            }
        }
    }
    by_round
        .into_iter()
        .map(|(round, vals)| {
            // Samples of all peers by the end of `round`: each peer's count at its latest row ≤ round.
            let samples = peers
                .iter()
                .filter_map(|p| p.rounds.iter().rev().find(|r| r.round <= round))
                .map(|r| r.samples)
                .sum();
            (round, samples, vals.iter().sum::<f64>() / vals.len() as f64)
        })
        .collect()
}

/// The first point of `curve` (samples, loss) at or below `target`.
pub fn samples_to(curve: impl IntoIterator<Item = (u64, f64)>, target: f64) -> Option<u64> {
    curve
        .into_iter()
        .find(|&(_, loss)| loss <= target)
        .map(|(s, _)| s)
}

/// Builds the summary from the rows.
pub fn summarize(
    scenario: &Scenario,
    parameters: usize,
    peers: &[PeerRow],
    divergence: f64,
    baseline: Option<&Baseline>,
    wall_s: f64,
) -> Summary {
    let h = scenario.h();
    // Per peer, the mean of `f` per step over its rounds that `keep` takes; then over peers.
    let rate = |keep: &dyn Fn(&RoundRow) -> bool, f: &dyn Fn(&RoundRow) -> u64| -> f64 {
        let rates: Vec<f64> = peers
            .iter()
            .filter_map(|p| {
                let rows: Vec<&RoundRow> = p.rounds.iter().filter(|r| keep(r)).collect();
                let total: u64 = rows.iter().map(|r| f(r)).sum();
                (!rows.is_empty()).then(|| total as f64 / (rows.len() as u64 * h) as f64)
            })
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    };
    let per_peer = |f: &dyn Fn(&RoundRow) -> u64| rate(&|_| true, f);
    let wire = per_peer(&|r| r.wire_bytes_up);
    let (from, last) = (scenario.rounds / 10, scenario.rounds.saturating_sub(1));
    let steady_rounds = |r: &RoundRow| r.round >= from && r.round < last;
    let steady = rate(&steady_rounds, &|r| r.wire_bytes_up);
    let update = per_peer(&|r| r.update_bytes_up);
    // A rate per step times the steps of a round: the mean per round.
    let connections = h as f64 * rate(&steady_rounds, &|r| r.connections as u64);
    let protocols: std::collections::BTreeSet<&String> = peers
        .iter()
        .flat_map(|p| p.rounds.iter().flat_map(|r| r.wire_up_by_protocol.keys()))
        .collect();
    let by_protocol = protocols
        .into_iter()
        .map(|name| {
            let of = |r: &RoundRow| r.wire_up_by_protocol.get(name).copied().unwrap_or(0);
            (name.clone(), per_peer(&of))
        })
        .collect();
    let dense = 4.0 * parameters as f64;
    let curve = swarm_curve(peers);
    let samples_to_target = samples_to(
        curve.iter().map(|&(_, s, l)| (s, l)),
        scenario.target_val_loss,
    );
    let baseline_samples_to_target = baseline.and_then(|b| {
        samples_to(
            b.rounds.iter().map(|r| (r.samples, r.val_loss)),
            scenario.target_val_loss,
        )
    });
    let (mut comm, mut link, mut all) = (0.0, 0.0, 0.0);
    let mut drops = DropCounts::default();
    let mut regroupings = RegroupReport::default();
    for p in peers {
        drops.merge(&p.drops);
        for r in &p.rounds {
            if let Some(regroup) = &r.regroup {
                regroupings.merge(regroup);
            }
            // A regrouping's wait counts as network time; of it only the fetching is the links'.
            comm += r.encode_s + r.network_s + r.average_s;
            link += r.encode_s + r.link_s.unwrap_or(r.network_s) + r.average_fetch_s;
            all += r.compute_s + r.encode_s + r.network_s + r.average_s;
        }
    }
    Summary {
        peers: scenario.peers,
        rounds: scenario.rounds,
        local_steps: h,
        parameters,
        dense_bytes_per_peer_per_step: dense,
        wire_bytes_per_peer_per_step: wire,
        steady_wire_bytes_per_peer_per_step: steady,
        connections_per_peer: connections,
        update_bytes_per_peer_per_step: update,
        wire_bytes_per_peer_per_step_by_protocol: by_protocol,
        bytes_ratio_vs_dense: if wire > 0.0 { dense / wire } else { 0.0 },
        target_val_loss: scenario.target_val_loss,
        samples_to_target,
        baseline_samples_to_target,
        samples_to_target_ratio: samples_to_target
            .zip(baseline_samples_to_target)
            .map(|(a, b)| a as f64 / b.max(1) as f64),
        final_val_loss: curve.last().map(|&(_, _, l)| l),
        baseline_final_val_loss: baseline.and_then(|b| b.rounds.last().map(|r| r.val_loss)),
        max_replica_divergence: divergence,
        comm_fraction: if all > 0.0 { comm / all } else { 0.0 },
        link_fraction: if all > 0.0 { link / all } else { 0.0 },
        drops,
        regroupings,
        wall_s,
        baseline_wall_s: baseline.map(|b| b.wall_s),
        attacks: peers
            .iter()
            .filter_map(|p| p.attack)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        rounds_to_target: curve
            .iter()
            .find(|&&(_, _, l)| l <= scenario.target_val_loss)
            .map(|&(r, _, _)| r + 1),
        rounds_vs_honest: None,
        honest_samples_to_target: None,
        samples_vs_honest: None,
        max_honest_rss_bytes: peers
            .iter()
            .filter(|p| p.attack.is_none())
            .filter_map(|p| p.max_rss_bytes)
            .max(),
        rss_vs_honest: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_to_target_is_the_first_point_at_or_below_it() {
        let curve = [(10, 3.0), (20, 2.4), (30, 2.6), (40, 2.0)];
        assert_eq!(samples_to(curve, 2.5), Some(20));
        assert_eq!(samples_to(curve, 1.0), None);
    }

    fn row(round: u64, network_s: f64, sent: f64, arrived: &[(&str, f64)]) -> RoundRow {
        RoundRow {
            round,
            loss: None,
            val_loss: None,
            samples: 0,
            wire_bytes_up: 0,
            wire_bytes_down: 0,
            wire_up_by_protocol: BTreeMap::new(),
            update_bytes_up: 0,
            connections: 0,
            update_bytes_down: 0,
            staleness_histogram: Vec::new(),
            drops: DropCounts::default(),
            peers: 2,
            compute_s: 1.0,
            encode_s: 0.0,
            network_s,
            average_s: 0.0,
            average_fetch_s: 0.0,
            regroup: None,
            link_s: None,
            sent_at_ms: Some(sent),
            arrived_ms: arrived.iter().map(|(p, t)| (p.to_string(), *t)).collect(),
            awaited_in: true,
            missing: Vec::new(),
        }
    }

    fn peer(id: &str, rounds: Vec<RoundRow>) -> PeerRow {
        PeerRow {
            index: 0,
            peer_id: id.into(),
            start_round: 0,
            synced_from: None,
            resyncs: 0,
            lingered_out: false,
            states_not_taken: 0,
            reconciled_with: BTreeMap::new(),
            weighed_down: BTreeMap::new(),
            killed: false,
            resumed_from: None,
            attack: None,
            max_rss_bytes: None,
            rounds,
            drops: DropCounts::default(),
        }
    }

    #[test]
    fn link_time_is_the_flight_not_the_wait_for_a_partner_still_computing() {
        // Round 0: a handed over at 1 000 ms, b at 1 400 (b computed longer); each update flew
        // 50 ms. a waited 450 ms for b, of which 50 were the network's; b waited for nothing
        // (a's update was in at 1 050). Round 1: c's hand-over is unknown: counted whole.
        let mut peers = vec![
            peer(
                "a",
                vec![
                    row(0, 0.45, 1_000.0, &[("b", 1_450.0)]),
                    row(1, 0.3, 3_000.0, &[("c", 3_300.0)]),
                ],
            ),
            peer("b", vec![row(0, 0.0, 1_400.0, &[("a", 1_050.0)])]),
        ];
        // Round 2: the wait ended without every awaited update, and nobody says whose: counted
        // whole.
        let mut short = row(2, 0.2, 5_000.0, &[]);
        short.awaited_in = false;
        peers[0].rounds.push(short);
        // Round 3: a waited 2 s (its deadline) for b, which handed its update over only after
        // (it started late): none of it was the links'. Round 4: b's update left 100 ms before
        // a's wait ended and had not arrived: 100 ms of flight.
        for (round, b_left) in [(3, 9_500.0), (4, 8_900.0)] {
            let mut late = row(round, 2.0, 7_000.0, &[]);
            late.awaited_in = false;
            late.missing = vec!["b".into()];
            peers[0].rounds.push(late);
            peers[1].rounds.push(row(round, 0.0, b_left, &[]));
        }
        link_times(&mut peers);
        let a = &peers[0].rounds;
        assert_eq!(a[2].link_s, Some(0.2));
        assert_eq!(a[3].link_s, Some(0.0));
        assert!(
            (a[4].link_s.unwrap() - 0.1).abs() < 1e-9,
            "{:?}",
            a[4].link_s
        );
        assert!(
            (a[0].link_s.unwrap() - 0.05).abs() < 1e-9,
            "{:?}",
            a[0].link_s
        );
        assert_eq!(a[1].link_s, Some(0.3));
        assert_eq!(peers[1].rounds[0].link_s, Some(0.0));
    }
}
