//! The simulator's claims at sizes a test can run (bench/sim has 8 to 1,000 peers): with group
//! averaging a peer's bytes and connections per round stay flat as the swarm grows while
//! broadcast's grow with N, and groups reach the synthetic target within 1.2× broadcast's rounds.

use gradswarm_sim::report::scaling;
use gradswarm_sim::{SimConfig, Strategy, run};

const SIZES: [usize; 3] = [8, 64, 256];

/// `name`'s growth figure in a report's list (bytes or connections, 8 → 256 peers).
fn growth(of: &[(String, f64)], name: &str) -> f64 {
    of.iter()
        .find(|(n, _)| n == name)
        .map(|(_, g)| *g)
        .expect("a growth figure")
}

fn base() -> SimConfig {
    SimConfig {
        dim: 2048,
        max_rounds: 300,
        ..SimConfig::default()
    }
}

#[test]
fn group_averaging_keeps_per_peer_cost_flat_and_converges_like_broadcast() {
    let groups = Strategy::Groups { size: 8, every: 20 };
    let report = scaling(&base(), &SIZES, &[Strategy::Broadcast, groups], |_, _| {}).expect("runs");
    for r in &report.runs {
        eprintln!(
            "{} × {}: {:.0} B/peer/round ({:.0} averaging parameters), {:.1} connections, target at {:?}, spread {:.3}",
            r.strategy,
            r.peers,
            r.bytes_per_round,
            r.sync_bytes_per_round,
            r.connections,
            r.rounds_to_target,
            r.final_spread
        );
    }
    // 8 → 256 peers: broadcast's bytes grow with N (255/7 = 36×), groups' stay within 1.5×.
    assert!(growth(&report.bytes_growth, "broadcast") > 18.0);
    assert!(growth(&report.bytes_growth, &groups.name()) <= 1.5);
    assert!(growth(&report.connections_growth, &groups.name()) <= 1.5);
    for (n, name, ratio) in &report.rounds_vs_broadcast {
        let ratio = ratio.unwrap_or(f64::INFINITY);
        assert!(ratio <= 1.2, "{name} × {n}: {ratio:.2}× broadcast's rounds");
    }
    for r in &report.runs {
        assert!(
            r.rounds_to_target.is_some(),
            "{} × {} missed the target",
            r.strategy,
            r.peers
        );
    }
}

#[test]
fn groups_that_only_average_updates_drift_apart() {
    // What a new group's parameter averaging is for: without it the replicas of different groups
    // random-walk apart (nothing pulls a replica back to the others).
    let config = |average_parameters| SimConfig {
        peers: 64,
        strategy: Strategy::Groups { size: 8, every: 20 },
        max_rounds: 100,
        target: 0.0,
        average_parameters,
        ..base()
    };
    let with = run(&config(true), |_| {}).expect("runs");
    let without = run(&config(false), |_| {}).expect("runs");
    eprintln!(
        "spread with averaging {:.3}, without {:.3}",
        with.final_spread, without.final_spread
    );
    assert!(with.final_spread < 0.5 * without.final_spread);
}

#[test]
fn pairwise_gossip_keeps_per_peer_cost_flat_and_reaches_the_target() {
    // Pairwise gossip (AD-PSGD's random partner, NoLoCo's pairwise averaging) is groups of 2
    // drawn afresh every round: each peer averages its parameters with one other and takes its
    // update. A whole replica a round is more bytes than sparse updates in a small swarm, but
    // they do not grow with it, and the dense exchange carries more than top-k updates do.
    let pairs = Strategy::Groups { size: 2, every: 1 };
    let report = scaling(&base(), &SIZES, &[Strategy::Broadcast, pairs], |_, _| {}).expect("runs");
    assert!(growth(&report.bytes_growth, &pairs.name()) <= 1.5);
    assert!(growth(&report.connections_growth, &pairs.name()) <= 1.5);
    for r in report.runs.iter().filter(|r| r.strategy == pairs.name()) {
        eprintln!(
            "pairs × {}: {:.0} B/peer/round, {:.1} connections, target at {:?}",
            r.peers, r.bytes_per_round, r.connections, r.rounds_to_target
        );
        // Partners drawn every round, in groups of 2 or (bounded loads) 3.
        assert!(r.connections <= 2.5, "{} connections", r.connections);
    }
    for (n, name, ratio) in report
        .rounds_vs_broadcast
        .iter()
        .filter(|(_, name, _)| *name == pairs.name())
    {
        let ratio = ratio.unwrap_or(f64::INFINITY);
        assert!(ratio <= 1.2, "{name} × {n}: {ratio:.2}× broadcast's rounds");
    }
}

#[test]
fn compressed_gossip_moves_update_sized_payloads_but_mixes_little_at_top_1_percent() {
    // CHOCO-gossip over 3 hash rings: every peer sends one top-1 % difference to 3 peers a
    // round, whatever N, and never a replica (no churn here); with noise 0.3 its replicas still
    // end about where training alone leaves them (γ ≈ 0), far from broadcast's, because a top-1 %
    // difference carries a hundredth of what a neighbour learned (bench/README.md, "Compressed
    // gossip, simulated").
    let gossip = Strategy::Gossip { rings: 3 };
    let noisy = SimConfig {
        noise: 0.3,
        max_rounds: 100,
        ..base()
    };
    let report = scaling(&noisy, &SIZES, &[Strategy::Broadcast, gossip], |_, _| {}).expect("runs");
    assert!(growth(&report.bytes_growth, &gossip.name()) <= 1.2);
    assert!(growth(&report.connections_growth, &gossip.name()) <= 1.5);
    for r in report.runs.iter().filter(|r| r.strategy == gossip.name()) {
        assert!(r.connections <= 6.0, "{} connections", r.connections);
        assert_eq!(r.sync_bytes_per_round, 0.0);
        // Up and down, three differences each way.
        assert!(r.bytes_per_round <= 7.0 * r.update_bytes, "{r:?}");
    }
    let at = |strategy: Strategy, gamma: f32| {
        run(
            &SimConfig {
                peers: 64,
                strategy,
                gamma,
                target: 0.0,
                ..noisy.clone()
            },
            |_| {},
        )
        .expect("runs")
    };
    let (mixed, alone) = (at(gossip, 0.05), at(gossip, 0.001));
    let broadcast = at(Strategy::Broadcast, 0.05);
    eprintln!(
        "loss after 100 rounds: gossip {:.3} (spread {:.3}), alone {:.3} (spread {:.3}), broadcast {:.3}",
        mixed.final_loss,
        mixed.final_spread,
        alone.final_loss,
        alone.final_spread,
        broadcast.final_loss
    );
    // Mixing pulls the replicas together a little, and the loss stays near training alone's.
    assert!(mixed.final_spread < alone.final_spread);
    assert!(mixed.final_loss > 0.7 * alone.final_loss);
    assert!(broadcast.final_loss < 0.5 * mixed.final_loss);
}
