//! The scenario runner end to end: a small scenario with a late joiner and a killed peer gives a
//! report whose numbers hang together, and the report plots.

use gradswarm_core::Groups;
use gradswarm_harness::report::Report;
use gradswarm_harness::scenario::Scenario;
use gradswarm_net::PeerId;

// One test at a time, as in the other end-to-end files: nine swarms of 4–16 peers at once on two
// cores stalled peers long enough that their views of the swarm parted (the groups test counted
// updates of a group it was not in, twice in ~15 runs).
mod common;

const SCENARIO: &str = r#"
name = "harness-smoke"
peers = 4
rounds = 60
mode = "gradient"
top_k_per_million = 100000
eval_every = 10
eval_batches = 2
target_val_loss = 4.5

[model]
layers = 1
d_model = 32
heads = 2
context = 32
mlp_ratio = 2

[train]
batch_size = 8
micro_batch_size = 8
lr = 0.01
min_lr = 0.001
warmup_steps = 3

[[peer]]
index = 3
join_at_round = 5

[[peer]]
index = 1
kill_at_round = 20

# Slow enough that rounds take ~0.1 s, so the joiner has a swarm to join.
[[peer]]
index = 2
slowdown = 10.0
"#;

#[test]
fn a_scenario_runs_to_a_consistent_report_and_plots() {
    let _serial = common::serial();
    let scenario: Scenario = toml::from_str(SCENARIO).unwrap();
    let mut lines = Vec::new();
    let report: Report = gradswarm_harness::run::run(&scenario, |l| lines.push(l.to_string()))
        .expect("the scenario runs");
    let s = &report.summary;
    assert_eq!(report.peers.len(), 4);
    // The killed peer stopped early; the others ran to the end; the joiner synced.
    let killed = &report.peers[1];
    assert!(killed.killed && killed.rounds.len() < 60);
    let joiner = &report.peers[3];
    assert!(joiner.synced_from.is_some() && joiner.start_round >= 5);
    for p in [&report.peers[0], &report.peers[2], joiner] {
        assert_eq!(p.rounds.last().map(|r| r.round), Some(59));
    }
    // Bytes: measured at the transport, so at least the update messages, and far below dense.
    assert!(s.wire_bytes_per_peer_per_step >= s.update_bytes_per_peer_per_step);
    assert!(s.update_bytes_per_peer_per_step > 0.0);
    // The bytes by protocol are substream payloads: their sum is below the transport's count
    // (noise and yamux framing), and each protocol the run used has its share: pulls of
    // updates, gossip, and the joiner's state.
    let by = &s.wire_bytes_per_peer_per_step_by_protocol;
    let counted: f64 = by.values().sum();
    assert!(counted < s.wire_bytes_per_peer_per_step, "{by:?}");
    for used in [
        "/gradswarm/update/1",
        "/meshsub/1.2.0",
        "/gradswarm/state/1",
    ] {
        assert!(by.get(used).is_some_and(|&b| b > 0.0), "{used}: {by:?}");
    }
    assert!(s.bytes_ratio_vs_dense > 1.0, "{s:?}");
    // The baseline trained in the same run and both reached the loose target.
    let baseline = report.baseline.as_ref().expect("baseline");
    assert_eq!(baseline.rounds.last().map(|r| r.round), Some(59));
    assert!(s.samples_to_target_ratio.is_some(), "{s:?}");
    assert!(s.max_replica_divergence < 1e-3, "{s:?}");
    assert!(!report.divergence.is_empty());
    assert!(s.comm_fraction > 0.0 && s.comm_fraction < 1.0);
    assert!(lines.iter().any(|l| l.contains("joins")));

    let dir = std::env::temp_dir().join(format!("gradswarm-harness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_string(&report).unwrap()).unwrap();
    let png = dir.join("report.png");
    gradswarm_harness::plot::plot(&json, &png).expect("the report plots");
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Local-steps mode with the peers' defaults (outer step and residual): three peers, H = 4, a
/// sparse codec. Every peer's validation loss falls, the replicas stay identical, and the swarm's
/// bytes per step are well below dense.
#[test]
fn local_steps_mode_trains_with_the_peer_defaults() {
    let _serial = common::serial();
    let text = SCENARIO
        .split("[[peer]]")
        .next()
        .unwrap()
        .replace("name = \"harness-smoke\"", "name = \"harness-local-steps\"")
        .replace("peers = 4", "peers = 3")
        .replace("rounds = 60", "rounds = 16\nlocal_steps = 4")
        .replace("mode = \"gradient\"", "mode = \"local_steps\"")
        .replace("eval_every = 10", "eval_every = 5");
    let mut scenario: Scenario = toml::from_str(&text).unwrap();
    scenario.baseline = false;
    let report = gradswarm_harness::run::run(&scenario, |_| {}).expect("the scenario runs");
    assert_eq!(report.peers.len(), 3);
    for p in &report.peers {
        let vals: Vec<f64> = p.rounds.iter().filter_map(|r| r.val_loss).collect();
        assert!(vals.len() >= 3, "{vals:?}");
        assert!(vals[vals.len() - 1] < vals[0] - 0.2, "{vals:?}");
        assert_eq!(p.rounds.last().map(|r| r.round), Some(15));
    }
    let s = &report.summary;
    assert!(s.max_replica_divergence < 1e-3, "{s:?}");
    assert!(s.bytes_ratio_vs_dense > 4.0, "{s:?}");
}

/// Three peers behind modelled home links (10 Mbit/s up, 50 down, 60 ms RTT, in user space on
/// their TCP connections): every byte still arrives, in order, so they train in step and end on
/// one replica. What the link costs in time is measured, not asserted (bench/README.md).
#[test]
fn peers_behind_home_links_train_in_step() {
    let _serial = common::serial();
    let text = SCENARIO
        .split("[[peer]]")
        .next()
        .unwrap()
        .replace("name = \"harness-smoke\"", "name = \"harness-home-links\"")
        .replace("peers = 4", "peers = 3")
        .replace("rounds = 60", "rounds = 12\nlocal_steps = 4")
        .replace("mode = \"gradient\"", "mode = \"local_steps\"")
        .replace("eval_every = 10", "eval_every = 4")
        + "\n[link]\nuplink_mbit = 10.0\ndownlink_mbit = 50.0\nrtt_ms = 60.0\n";
    let mut scenario: Scenario = toml::from_str(&text).unwrap();
    scenario.baseline = false;
    let report = gradswarm_harness::run::run(&scenario, |_| {}).expect("the scenario runs");
    for p in &report.peers {
        assert_eq!(p.rounds.last().map(|r| r.round), Some(11));
        let counted: u64 = p
            .rounds
            .iter()
            .map(|r| r.staleness_histogram.iter().sum::<u64>())
            .sum();
        // Its own update and the two others' in (nearly) every round.
        assert!(counted >= 3 * 12 - 4, "{} counted {counted}", p.peer_id);
    }
    let s = &report.summary;
    assert!(s.max_replica_divergence < 1e-3, "{s:?}");
    assert!(s.wire_bytes_per_peer_per_step > 0.0, "{s:?}");
}

/// Eight peers in groups of four, regrouped every five rounds: each round counts its own group's
/// four updates and no others, the groups average their parameters when they change (so the
/// replicas are one again at the end of each grouping), the validation loss falls, and each peer
/// moves fewer bytes than the same swarm with broadcast.
#[test]
fn groups_average_within_the_group_and_move_fewer_bytes_than_broadcast() {
    let _serial = common::serial();
    let scenario = |averaging: &str| {
        let text = SCENARIO
            .split("[[peer]]")
            .next()
            .unwrap()
            .replace("name = \"harness-smoke\"", "name = \"harness-groups\"")
            .replace("peers = 4", "peers = 8")
            .replace("rounds = 60", "rounds = 20")
            .replace(
                "eval_every = 10",
                &format!("eval_every = 5\naveraging = {averaging}"),
            );
        let mut scenario: Scenario = toml::from_str(&text).unwrap();
        scenario.baseline = false;
        scenario
    };
    let groups =
        gradswarm_harness::run::run(&scenario("{ groups = { size = 4, every = 5 } }"), |_| {})
            .expect("the groups scenario runs");
    // The groups every peer forms from the same eight, by which each counts its group's updates.
    let ids: Vec<Vec<u8>> = groups
        .peers
        .iter()
        .map(|p| p.peer_id.parse::<PeerId>().unwrap().to_bytes())
        .collect();
    let refs: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
    let drawn = Groups { size: 4, every: 5 };
    for (p, me) in groups.peers.iter().zip(&refs) {
        assert_eq!(p.rounds.last().map(|r| r.round), Some(19));
        // Its run ended once it held its partners' updates, not when its linger ran out (60 s,
        // measured when a peer drew past rounds' groups anew as others left: it waited for
        // updates of peers that had not been its partners).
        assert!(!p.lingered_out, "{} lingered until it timed out", p.peer_id);
        let size = |round: u64| -> u64 {
            let groups = drawn.groups(round, &refs, refs.len());
            groups.iter().find(|g| g.contains(me)).map_or(0, Vec::len) as u64
        };
        let counted: Vec<u64> = p
            .rounds
            .iter()
            .map(|r| r.staleness_histogram.iter().sum::<u64>())
            .collect();
        // Its own and its partners' (late ones count a round later), never the others'.
        let most = p
            .rounds
            .iter()
            .map(|r| 2 * size(r.round))
            .max()
            .unwrap_or(0);
        assert!(
            counted.iter().all(|&c| c <= most),
            "{} counted {counted:?}",
            p.peer_id
        );
        let total: u64 = counted.iter().sum();
        let expected: u64 = (0..20).map(size).sum();
        // Two more at most: a peer whose view of the swarm was short at a round (CI, loaded:
        // 71 of 70) drew another grouping for it, and so did a partner of that grouping.
        assert!(
            expected < 8 * 20 && (expected - 8..=expected + 2).contains(&total),
            "{} counted {total} of its groups' {expected}; by round (counted, group): {:?}",
            p.peer_id,
            p.rounds
                .iter()
                .zip(&counted)
                .map(|(r, &c)| (r.round, c, size(r.round)))
                .collect::<Vec<_>>()
        );
        let vals: Vec<f64> = p.rounds.iter().filter_map(|r| r.val_loss).collect();
        assert!(vals[vals.len() - 1] < vals[0] - 0.2, "{vals:?}");
    }
    // Eight peers make two groups, so a new group holds at most two old groups' replicas, and
    // members of one old group hold one (to within updates some took late): each regrouping
    // (rounds 5, 10, 15) moves at most one int8 replica (~1.06 bytes a parameter) to each peer,
    // not one from each partner (3.3 measured at 32 peers when holdings were told apart by
    // equal checksums: replicas of one group rarely match bit for bit).
    let state: Vec<u64> = groups
        .peers
        .iter()
        .map(|p| {
            p.rounds
                .iter()
                .filter_map(|r| r.wire_up_by_protocol.get("/gradswarm/state/1"))
                .sum()
        })
        .collect();
    let replica = 1.1 * groups.summary.parameters as f64;
    let per_regrouping = state.iter().sum::<u64>() as f64 / state.len() as f64 / 3.0 / replica;
    assert!(
        per_regrouping < 1.8,
        "{per_regrouping:.2} replicas a peer a regrouping: {state:?}"
    );
    // Every regrouping took its new partners' replicas: none left out, none refused by the
    // fingerprint check, every holder's keyed check supporting the replica served, honest replicas well inside its tolerance and the reach (2).
    let regrouped = &groups.summary.regroupings;
    eprintln!("regroupings: {regrouped:?}");
    // (Two left out at most: a peer whose view was short at a regrouping drew another group.)
    assert!(
        regrouped.partners >= 8 * 3 * 2
            && regrouped.averaged + 2 >= regrouped.partners
            && regrouped.fetched > 0
            && regrouped.refused == 0
            && regrouped.unsupported == 0
            && regrouped.alone == 0
            && regrouped.max_off.is_some_and(|d| d < 0.06)
            && regrouped.max_reach.is_some_and(|d| d < 1.0),
        "{regrouped:?}"
    );
    let broadcast = gradswarm_harness::run::run(&scenario("\"broadcast\""), |_| {})
        .expect("the broadcast scenario runs");
    let (g, b) = (&groups.summary, &broadcast.summary);
    eprintln!(
        "wire bytes per peer per step: groups {:.0}, broadcast {:.0}; final val loss {:?} vs {:?}",
        g.wire_bytes_per_peer_per_step,
        b.wire_bytes_per_peer_per_step,
        g.final_val_loss,
        b.final_val_loss
    );
    assert!(
        g.wire_bytes_per_peer_per_step < 0.8 * b.wire_bytes_per_peer_per_step,
        "groups {g:?}\nbroadcast {b:?}"
    );
}

/// A peer joining a swarm in groups syncs from a state its server's group vouches for: the
/// replicas of other groups differ by what their groups learned apart, so they cannot (the
/// whole swarm vouching refused every state at 32 peers). It then trains in a group to the end.
#[test]
fn a_late_joiner_under_groups_syncs_from_a_state_its_servers_group_vouches_for() {
    let _serial = common::serial();
    let text = SCENARIO
        .split("[[peer]]")
        .next()
        .unwrap()
        .replace("name = \"harness-smoke\"", "name = \"harness-groups-join\"")
        .replace("peers = 4", "peers = 8")
        .replace("rounds = 60", "rounds = 40")
        .replace(
            "eval_every = 10",
            "eval_every = 10\naveraging = { groups = { size = 4, every = 10 } }",
        )
        .replace("\nlr = 0.01", "\nlr = 0.05")
        + "[[peer]]\nindex = 7\njoin_at_round = 18\n\n[[peer]]\nindex = 0\nslowdown = 10.0\n";
    let mut scenario: Scenario = toml::from_str(&text).unwrap();
    scenario.baseline = false;
    let report = gradswarm_harness::run::run(&scenario, |_| {}).expect("the scenario runs");
    let joiner = &report.peers[7];
    // It starts once the first peers closed round 18; a server a round or two behind them
    // serves a good state too (CI, loaded: synced at round 17).
    assert!(
        joiner.synced_from.is_some() && joiner.start_round >= 10,
        "the joiner did not sync: {:?} from round {}",
        joiner.synced_from,
        joiner.start_round
    );
    eprintln!(
        "the joiner synced at round {} from {:?}",
        joiner.start_round, joiner.synced_from
    );
    // Synced on its first pass or second: a refused state costs a pass each (over a second).
    // Counted in passes, not rounds: the swarm's rounds here are ~60 ms, so the round it
    // syncs at says how loaded the machine is (13 to 24 locally, 39 once in CI).
    assert!(
        joiner.states_not_taken <= 1,
        "{} states not taken before one was (synced at round {})",
        joiner.states_not_taken,
        joiner.start_round
    );
    // Every peer ends on the last round, none past it. The slow peer may fall too far behind
    // and fetch the run's state again; fetched at the end, it ran a round past the end (CI: a
    // peer's last round 40 of 0..39), and once that was stopped, it never reported the last
    // round and the harness waited for it (CI: "no matching round report within 600s").
    let last: Vec<Option<u64>> = report
        .peers
        .iter()
        .map(|p| p.rounds.last().map(|r| r.round))
        .collect();
    assert!(last.iter().all(|&r| r == Some(39)), "last rounds {last:?}");
    // In a group from its first round on: its partners' updates count there.
    let counted: u64 = joiner
        .rounds
        .iter()
        .map(|r| r.staleness_histogram.iter().sum::<u64>())
        .sum();
    let rounds = joiner.rounds.len() as u64;
    assert!(
        counted >= 2 * rounds,
        "{counted} updates in {rounds} rounds"
    );
}

/// Sixteen peers on one address (127.0.0.1): gossipsub penalises more than ten peers sharing an IP,
/// which graylisted every one of them until loopback was exempted, and no heartbeat got through
/// (the run stalled in its join). Now each peer counts the others' updates round after round.
#[test]
fn sixteen_peers_on_one_address_train_together() {
    let _serial = common::serial();
    let text = SCENARIO
        .split("[[peer]]")
        .next()
        .unwrap()
        .replace("name = \"harness-smoke\"", "name = \"harness-sixteen\"")
        .replace("peers = 4", "peers = 16")
        .replace("rounds = 60", "rounds = 6")
        .replace("eval_every = 10", "eval_every = 3");
    let mut scenario: Scenario = toml::from_str(&text).unwrap();
    scenario.baseline = false;
    let report = gradswarm_harness::run::run(&scenario, |_| {}).expect("the scenario runs");
    assert_eq!(report.peers.len(), 16);
    for p in &report.peers {
        assert_eq!(p.rounds.last().map(|r| r.round), Some(5));
        let counted: u64 = p
            .rounds
            .iter()
            .map(|r| r.staleness_histogram.iter().sum::<u64>())
            .sum();
        // A third of the sixteen updates of each of the six rounds at least: on two loaded
        // cores round deadlines pass before every update is in (64 of 96 seen under CI), but
        // without the exemption no round is run at all.
        assert!(counted >= 16 * 6 / 3, "{} counted {counted}", p.peer_id);
    }
}

/// Runs [`SCENARIO`]'s settings as `name` with `peers` peers, each in a process of its own, for
/// `rounds` rounds, with `peer_sections` (`[[peer]]` tables) in place of its own, and no baseline.
fn run_in_processes(name: &str, peers: usize, rounds: u64, peer_sections: &str) -> Report {
    // SAFETY: set before any thread of these tests reads it, and always to the same value.
    unsafe { std::env::set_var("SWARM_HARNESS_EXE", env!("CARGO_BIN_EXE_swarm-harness")) };
    let text = SCENARIO
        .split("[[peer]]")
        .next()
        .unwrap()
        .replace("name = \"harness-smoke\"", &format!("name = \"{name}\""))
        .replace("peers = 4", &format!("peers = {peers}\nprocesses = true"))
        .replace("rounds = 60", &format!("rounds = {rounds}"))
        .replace("eval_every = 10", "eval_every = 5")
        + "\n"
        + peer_sections;
    let mut scenario: Scenario = toml::from_str(&text).unwrap();
    scenario.baseline = false;
    gradswarm_harness::run::run(&scenario, |_| {}).expect("the scenario runs")
}

/// Peers in processes of their own (`processes = true`): three `swarm-harness peer` processes
/// train, one is killed with SIGKILL at round 8, and the two others run to the end with losses
/// that fall, replicas that agree, and a peak RSS each that the report carries.
#[test]
fn peer_processes_train_and_survive_a_sigkill() {
    let _serial = common::serial();
    let report = run_in_processes(
        "harness-processes",
        3,
        20,
        "[[peer]]\nindex = 2\nkill_at_round = 8\n",
    );
    let killed = &report.peers[2];
    assert!(
        killed.killed && killed.rounds.len() < 20,
        "{:?}",
        killed.rounds.len()
    );
    for p in &report.peers[..2] {
        let vals: Vec<f64> = p.rounds.iter().filter_map(|r| r.val_loss).collect();
        assert!(
            vals.len() >= 3 && vals[vals.len() - 1] < vals[0] - 0.2,
            "{vals:?}"
        );
        assert_eq!(p.rounds.last().map(|r| r.round), Some(19));
        // A peer process of the tiny model holds at least its corpus and runtime: megabytes.
        assert!(
            p.max_rss_bytes.is_some_and(|b| b > 1 << 20),
            "{:?}",
            p.max_rss_bytes
        );
    }
    let s = &report.summary;
    assert!(s.max_replica_divergence < 1e-3, "{s:?}");
    assert!(s.max_honest_rss_bytes.is_some(), "{s:?}");
    assert!(!report.divergence.is_empty());
}

/// Churn: half the peers are SIGKILLed and come back from their own checkpoints a few rounds
/// later; each resumes at its checkpoint's round, catches up with the swarm, and ends on the
/// replica the others hold. It failed about 1 run in 10 before a joiner counted the rounds named
/// by the updates it heard (a restart skipped its sync) and before replicas polled the silent
/// ones for their fingerprints (the majority that reconciliation needs was never heard).
#[test]
fn killed_peers_resume_from_their_checkpoints_and_catch_up() {
    let _serial = common::serial();
    // Every peer 20× slower than the tiny model's compute: a restarted process takes about a
    // second to start, a few rounds rather than the whole run.
    let report = run_in_processes(
        "harness-churn",
        4,
        60,
        "[[peer]]\nindex = 0\nslowdown = 20\n\n\
         [[peer]]\nindex = 1\nslowdown = 20\n\n\
         [[peer]]\nindex = 2\nslowdown = 20\nkill_at_round = 5\nrestart_at_round = 8\n\n\
         [[peer]]\nindex = 3\nslowdown = 20\nkill_at_round = 8\nrestart_at_round = 11\n",
    );
    for (index, kill, restart) in [(2, 5, 8), (3, 8, 11)] {
        let p = &report.peers[index];
        let from = p.resumed_from.expect("it restarted from its checkpoint");
        // The checkpoint of the last round it closed before the SIGKILL (or one it closed
        // while the kill was on its way): not θ₀, not the swarm's round at the restart.
        assert!(
            (kill + 1..=restart).contains(&from),
            "peer {index} resumed from round {from}"
        );
        assert!(!p.killed, "peer {index} is reported as gone");
        assert_eq!(p.rounds.last().map(|r| r.round), Some(59), "peer {index}");
    }
    for p in &report.peers {
        let vals: Vec<f64> = p.rounds.iter().filter_map(|r| r.val_loss).collect();
        assert!(
            vals.len() >= 2 && vals[vals.len() - 1] < vals[0] - 0.2,
            "peer {}: {vals:?}",
            p.index
        );
    }
    let s = &report.summary;
    assert!(s.max_replica_divergence < 1e-3, "{s:?}");
}

/// A laptop that slept: a peer process is paused (SIGSTOP) at round 10 while the two others run
/// on to round 40, further ahead than the round book keeps updates for (τ_max 4: 10 rounds).
/// Resumed, it can count none of their updates, nor they its; it fetches the run's state again
/// (verified as a joiner's) and ends on the others' replica. Without the re-sync
/// (`resync_if_far_behind` returning at once) it trained alone from then on and ended far apart.
#[test]
fn a_peer_that_slept_fetches_the_state_again_and_ends_on_the_others_replica() {
    let _serial = common::serial();
    let report = run_in_processes(
        "harness-sleep",
        3,
        60,
        "[[peer]]\nindex = 2\npause_at_round = 10\nresume_at_round = 40\n",
    );
    let slept = &report.peers[2];
    assert!(slept.resyncs >= 1, "it never fetched the state again");
    assert!(slept.synced_from.is_some());
    assert_eq!(slept.rounds.last().map(|r| r.round), Some(59));
    let s = &report.summary;
    assert!(s.max_replica_divergence < 1e-3, "{s:?}");
}
