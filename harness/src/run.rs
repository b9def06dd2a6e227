//! Runs a scenario: the swarm (bootstrap + peers on loopback), then the baseline, then the report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gradswarm_core::DropCounts;
use gradswarm_model::Trainer;
use gradswarm_model::burn::prelude::Device;

use crate::child::ChildProc;
use crate::report::{DivergenceRow, PeerRow, Report, RoundRow, summarize};
use crate::scenario::Scenario;
use crate::{LocalSwarm, PeerProc, load_corpus, max_divergence};

/// How long the run may go without any peer closing a round before it is called stuck.
const STALL: Duration = Duration::from_secs(600);

/// What a counter that was `before` (at the previous report) added by `now`; a counter that
/// went back started over (a restarted process).
fn since(now: u64, before: Option<u64>) -> u64 {
    match before {
        Some(b) if b <= now => now - b,
        _ => now,
    }
}

/// For each peer a run's reports weighed down for its standing, in how many of its rounds.
fn weighed_down(rows: &[crate::Report]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for peer in rows.iter().flat_map(|r| r.round.weighed_down.keys()) {
        *out.entry(peer.clone()).or_default() += 1;
    }
    out
}

fn row(r: &crate::Report, previous: Option<&crate::Report>) -> RoundRow {
    let rr = &r.round;
    let mut hist = Vec::new();
    for &tau in &rr.staleness {
        let tau = tau as usize;
        if hist.len() <= tau {
            hist.resize(tau + 1, 0);
        }
        hist[tau] += 1;
    }
    RoundRow {
        round: rr.round,
        loss: rr.loss.is_finite().then_some(rr.loss),
        val_loss: rr.val_loss,
        samples: rr.samples,
        // A restarted peer process counts from zero again.
        wire_bytes_up: since(r.wire_sent, previous.map(|p| p.wire_sent)),
        wire_bytes_down: since(r.wire_received, previous.map(|p| p.wire_received)),
        wire_up_by_protocol: r
            .wire_sent_by_protocol
            .iter()
            .map(|(name, &now)| {
                let before = previous.and_then(|p| p.wire_sent_by_protocol.get(name).copied());
                (name.clone(), since(now, before))
            })
            .filter(|&(_, n)| n > 0)
            .collect(),
        connections: r.connections,
        update_bytes_up: rr.bytes_up,
        update_bytes_down: rr.bytes_down,
        staleness_histogram: hist,
        drops: rr.drops.clone(),
        peers: rr.peers,
        compute_s: rr.compute_s,
        encode_s: rr.encode_s,
        network_s: rr.network_s,
        average_s: rr.average_s,
        average_fetch_s: rr.average_fetch_s,
        regroup: rr.regroup.clone(),
        link_s: None,
        sent_at_ms: rr.sent_at_ms,
        arrived_ms: rr.arrived_ms.clone(),
        awaited_in: rr.awaited_in,
        missing: rr.missing.clone(),
    }
}

/// A scenario's peer, on a thread or in a process of its own (`processes = true`).
enum Running {
    Thread(PeerProc),
    Process(ChildProc),
}

impl Running {
    fn kill(self) {
        match self {
            Running::Thread(p) => p.kill(),
            Running::Process(p) => p.kill(),
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) a peer process; a thread peer cannot be (the
    /// scenario's validation sees to that).
    fn signal(&self, pause: bool) -> Result<()> {
        match self {
            Running::Thread(_) => bail!("only a peer process can be paused"),
            Running::Process(p) => p.signal(if pause { "STOP" } else { "CONT" }),
        }
    }

    /// Its summary, and its peak RSS when it ran in a process of its own.
    fn join(self) -> Result<(gradswarm_peer::PeerSummary, Option<u64>)> {
        match self {
            Running::Thread(p) => Ok((p.join()?, None)),
            Running::Process(p) => p.join().map(|f| (f.summary, f.max_rss_bytes)),
        }
    }
}

/// Where a run with peer processes keeps their files (the scenario they read, θ snapshots);
/// removed when the run ends.
struct ProcessDir(std::path::PathBuf);

impl Drop for ProcessDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `scenario`; `log` hears one line per evaluation (progress for long runs).
pub fn run(scenario: &Scenario, mut log: impl FnMut(&str)) -> Result<Report> {
    scenario.validate()?;
    let corpus = load_corpus(scenario.model.context)?;
    let train = scenario.train_config();
    let parameters = Trainer::new(&scenario.model, &train, &Device::flex())?.num_params();
    let started = Instant::now();
    let mut swarm = LocalSwarm::start(&scenario.name)?;
    swarm.snapshot_every = scenario.eval_every;
    let dir = ProcessDir(std::env::temp_dir().join(format!(
        "swarm-harness-{}-{}",
        std::process::id(),
        scenario.name
    )));
    let scenario_file = dir.0.join("scenario.json");
    if scenario.processes {
        std::fs::create_dir_all(&dir.0)?;
        std::fs::write(&scenario_file, serde_json::to_string(scenario)?)?;
    }
    let spawn = |swarm: &mut LocalSwarm, index: usize, min_peers: usize| {
        swarm.link = scenario.link_of(index);
        if scenario.processes {
            swarm
                .spawn_process(&scenario_file, index, min_peers, &dir.0)
                .map(|(h, p)| (h, Running::Process(p)))
        } else {
            swarm
                .spawn_as(
                    scenario.spec(index).and_then(|p| p.attack),
                    scenario.peer_config(index),
                    &scenario.model,
                    &train,
                    corpus.clone(),
                    min_peers,
                )
                .map(|(h, p)| (h, Running::Thread(p)))
        }
    };

    let initial = scenario.initial_peers();
    let mut procs: BTreeMap<usize, Running> = BTreeMap::new();
    let mut pending: Vec<usize> = Vec::new();
    for index in 0..scenario.peers {
        if scenario.spec(index).and_then(|p| p.join_at_round).is_some() {
            pending.push(index);
        }
    }
    // Peers start in index order; the harness's own numbering follows spawn order.
    let mut harness_index: BTreeMap<usize, usize> = BTreeMap::new();
    for index in (0..scenario.peers).filter(|i| !pending.contains(i)) {
        let (h, p) = spawn(&mut swarm, index, initial - 1)?;
        harness_index.insert(h, index);
        procs.insert(index, p);
    }

    let mut reports: BTreeMap<usize, Vec<crate::Report>> = BTreeMap::new();
    let mut thetas: BTreeMap<u64, Vec<Arc<Vec<f32>>>> = BTreeMap::new();
    let mut divergence = Vec::new();
    let mut killed = BTreeSet::new();
    // Killed peers waiting to come back, and those that did (with their checkpoint's round).
    let mut restarting: Vec<usize> = Vec::new();
    let mut resumed: BTreeMap<usize, u64> = BTreeMap::new();
    // Peers paused at their `pause_at_round`: true while asleep.
    let mut paused: BTreeMap<usize, bool> = BTreeMap::new();
    let mut finished = BTreeSet::new();
    let mut log_rows = Vec::new();
    let last = scenario.rounds - 1;
    while finished.len() + killed.len() < scenario.peers {
        let r = swarm
            .wait_for(&mut log_rows, STALL, |_| true)
            .with_context(|| {
                // Where each peer got to, so that a stall says who stalled and where.
                let at: Vec<String> = procs
                    .keys()
                    .map(|i| {
                        let last = reports.get(i).and_then(|r| r.last());
                        let round = last.map_or("none".into(), |r| r.round.round.to_string());
                        format!("peer {i}: {round}")
                    })
                    .collect();
                format!(
                    "waiting for the next round (last rounds reported: {})",
                    at.join(", ")
                )
            })?;
        log_rows.clear();
        let Some(&index) = harness_index.get(&r.peer) else {
            bail!("a report from unknown peer {}", r.peer);
        };
        let round = r.round.round;
        let attacker = |i: &usize| scenario.spec(*i).and_then(|p| p.attack).is_some();
        // Replica agreement is the honest peers': an attacker's θ is whatever it chose to keep.
        if let Some(theta) = r.params.as_ref().filter(|_| !attacker(&index)) {
            let set = thetas.entry(round).or_default();
            set.push(theta.clone());
            if set.len() >= procs.keys().filter(|i| !attacker(i)).count() {
                let views: Vec<&[f32]> = set.iter().map(|t| t.as_slice()).collect();
                divergence.push(DivergenceRow {
                    round,
                    peers: views.len(),
                    divergence: max_divergence(&views),
                });
                thetas.remove(&round);
            }
        }
        if let Some(v) = r.round.val_loss
            && index == *procs.keys().next().unwrap_or(&0)
        {
            log(&format!(
                "round {round}/{} val loss {v:.3} loss {:.3} ({:.0} s)",
                scenario.rounds,
                r.round.loss,
                started.elapsed().as_secs_f64()
            ));
        }
        if round >= last {
            finished.insert(index);
        }
        reports.entry(index).or_default().push(r);
        // Late joiners and kills, once the swarm is far enough.
        let swarm_round = round;
        for joiner in pending.clone() {
            let at = scenario
                .spec(joiner)
                .and_then(|p| p.join_at_round)
                .unwrap_or(0);
            if swarm_round >= at {
                log(&format!("peer {joiner} joins at round {swarm_round}"));
                let (h, p) = spawn(&mut swarm, joiner, 1)?;
                harness_index.insert(h, joiner);
                procs.insert(joiner, p);
                pending.retain(|&j| j != joiner);
            }
        }
        for index in restarting.clone() {
            let at = scenario
                .spec(index)
                .and_then(|p| p.restart_at_round)
                .unwrap_or(0);
            if swarm_round >= at {
                let path = crate::child::checkpoint_path(&dir.0, index);
                let from = gradswarm_model::Checkpoint::load(&path)
                    .with_context(|| format!("peer {index}'s checkpoint"))?
                    .meta
                    .round;
                log(&format!(
                    "peer {index} restarts at round {swarm_round} from its checkpoint of round {from}"
                ));
                let (h, p) = spawn(&mut swarm, index, 1)?;
                harness_index.insert(h, index);
                procs.insert(index, p);
                killed.remove(&index);
                resumed.insert(index, from);
                restarting.retain(|&j| j != index);
            }
        }
        if scenario
            .spec(index)
            .and_then(|p| p.pause_at_round)
            .is_some_and(|at| at <= round)
            && !paused.contains_key(&index)
            && let Some(p) = procs.get(&index)
        {
            log(&format!("peer {index} paused at round {round}"));
            p.signal(true)?;
            paused.insert(index, true);
        }
        for (&index, asleep) in paused.iter_mut() {
            if *asleep
                && scenario
                    .spec(index)
                    .and_then(|p| p.resume_at_round)
                    .is_some_and(|at| at <= swarm_round)
                && let Some(p) = procs.get(&index)
            {
                log(&format!("peer {index} resumed at round {swarm_round}"));
                p.signal(false)?;
                *asleep = false;
            }
        }
        if let Some(kill_at) = scenario.spec(index).and_then(|p| p.kill_at_round)
            && round >= kill_at
            && !resumed.contains_key(&index)
            && let Some(p) = procs.remove(&index)
        {
            // Its rows so far stay in the report.
            log(&format!("peer {index} killed at round {round}"));
            killed.insert(index);
            p.kill();
            if scenario
                .spec(index)
                .is_some_and(|p| p.restart_at_round.is_some())
            {
                restarting.push(index);
            }
        }
    }
    let wall_s = started.elapsed().as_secs_f64();

    let mut peers = Vec::new();
    let mut finals = Vec::new();
    for (index, p) in std::mem::take(&mut procs) {
        let (summary, max_rss_bytes) = p.join().with_context(|| format!("peer {index}"))?;
        if scenario.spec(index).and_then(|p| p.attack).is_none() {
            finals.push(summary.final_params.clone());
        }
        let rows = reports.remove(&index).unwrap_or_default();
        peers.push(PeerRow {
            index,
            peer_id: summary.peer_id,
            start_round: summary.start_round,
            synced_from: summary.synced_from,
            resyncs: summary.resyncs,
            lingered_out: summary.lingered_out,
            states_not_taken: summary.states_not_taken,
            reconciled_with: summary.reconciled_with,
            weighed_down: weighed_down(&rows),
            killed: false,
            resumed_from: resumed.get(&index).copied(),
            attack: scenario.spec(index).and_then(|p| p.attack),
            max_rss_bytes,
            rounds: rows
                .iter()
                .enumerate()
                .map(|(i, r)| row(r, i.checked_sub(1).map(|j| &rows[j])))
                .collect(),
            drops: summary.drops,
        });
    }
    for index in killed {
        let rows = reports.remove(&index).unwrap_or_default();
        let mut drops = DropCounts::default();
        for r in &rows {
            drops.merge(&r.round.drops);
        }
        peers.push(PeerRow {
            index,
            peer_id: String::new(),
            start_round: rows.first().map_or(0, |r| r.round.round),
            synced_from: None,
            resyncs: 0,
            lingered_out: false,
            states_not_taken: 0,
            reconciled_with: Default::default(),
            weighed_down: weighed_down(&rows),
            killed: true,
            resumed_from: None,
            attack: scenario.spec(index).and_then(|p| p.attack),
            max_rss_bytes: None,
            rounds: rows
                .iter()
                .enumerate()
                .map(|(i, r)| row(r, i.checked_sub(1).map(|j| &rows[j])))
                .collect(),
            drops,
        });
    }
    peers.sort_by_key(|p| p.index);
    crate::report::link_times(&mut peers);
    let views: Vec<&[f32]> = finals.iter().map(Vec::as_slice).collect();
    let final_divergence = max_divergence(&views);
    drop(swarm);

    let baseline = if scenario.baseline {
        log(&format!(
            "baseline ({:?}): dense fp32, the same peers' batches",
            scenario.baseline_method
        ));
        let b = crate::baseline::run(scenario, &corpus, |r| {
            log(&format!(
                "baseline round {}/{} val loss {:.3}",
                r.round, scenario.rounds, r.val_loss
            ))
        })?;
        Some(b)
    } else {
        None
    };
    let summary = summarize(
        scenario,
        parameters,
        &peers,
        final_divergence,
        baseline.as_ref(),
        wall_s,
    );
    Ok(Report {
        summary,
        scenario: scenario.clone(),
        peers,
        divergence,
        baseline,
    })
}
