//! End-to-end: a bootstrap node and real peers on loopback train one model together.
//!
//! Every wait is on a round report with a deadline. The model is tiny so that 20+ rounds of three
//! peers take seconds on two cores.

use std::time::Duration;

use gradswarm_core::drift::relative_distance;
use gradswarm_core::{Announce, DropCounts, DropReason, Update, UpdateGossip, WireLimits};
use gradswarm_harness::{LocalSwarm, Report, max_divergence};
use gradswarm_model::Trainer;
use gradswarm_model::burn::prelude::Device;
use gradswarm_peer::{Mode, PeerConfig, PeerSummary};

mod common;
use common::*;

#[test]
fn three_peers_train_together_and_agree() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-three").unwrap();
    let corpus = corpus();
    let summaries = run_together(&mut swarm, vec![config("e2e-three", 20); 3], &corpus);
    for s in &summaries {
        assert_eq!(
            s.rounds.len(),
            20,
            "peer {} ran {} rounds",
            s.peer_id,
            s.rounds.len()
        );
        let (first, last) = loss_fell(s);
        assert!(
            last < first - 0.5,
            "loss of {} went {first} → {last}",
            s.peer_id
        );
        for other in &summaries {
            if other.peer_id != s.peer_id {
                let counted = s.counted_from.get(&other.peer_id).copied().unwrap_or(0);
                assert!(
                    counted >= 18,
                    "{} counted {counted} updates of {}",
                    s.peer_id,
                    other.peer_id
                );
            }
        }
    }
    let divergence = final_divergence(&summaries);
    assert!(divergence < 1e-4, "replicas diverged: {divergence}");
}

/// Replicas must not part when updates arrive after their round closed (a loaded machine, a slow
/// peer): every late update is applied as a correction of its round, the last round's included,
/// and pairwise averaging does not act on a gap that a late update is about to close. Without the
/// settling after the last round, or with averaging on differing update sets, the fast peers end
/// a share of the slow peer's last update apart from it (~1e-2).
#[test]
fn a_straggler_leaves_no_replica_behind() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-straggler").unwrap();
    let corpus = corpus();
    // Every update of the slow peer counts, most of them late, as corrections of their rounds.
    let (fast, slow) = fast_and_slow(config("e2e-straggler", 16), 8, 4.0);
    let summaries = run_together(&mut swarm, vec![fast.clone(), fast, slow], &corpus);
    let late: usize = summaries
        .iter()
        .flat_map(|s| &s.rounds)
        .map(|r| r.staleness.iter().filter(|&&t| t >= 1).count())
        .sum();
    for s in &summaries {
        eprintln!(
            "{}: drops {:?}, reconciled with {:?}, counted {:?}",
            s.peer_id, s.drops, s.reconciled_with, s.counted_from
        );
    }
    assert!(late >= 1, "no update was late: the test shows nothing");
    for s in &summaries {
        assert!(
            s.reconciled_with.is_empty(),
            "{} averaged with a replica that a late update was about to catch up: {:?}",
            s.peer_id,
            s.reconciled_with
        );
    }
    let divergence = final_divergence(&summaries);
    assert!(divergence < 1e-4, "replicas parted: {divergence}");
}

#[test]
fn a_late_joiner_syncs_the_swarm_state() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-join").unwrap();
    let corpus = corpus();
    // The early peers train until stopped, so the joiner always has someone to sync from.
    let early: Vec<_> = (0..3)
        .map(|_| {
            let mut c = config("e2e-join", 0);
            c.rounds = None;
            swarm
                .spawn_peer(c, &tiny_model(), &tiny_train(), corpus.clone(), 2)
                .unwrap()
                .1
        })
        .collect();
    let mut log = Vec::new();
    swarm
        .wait_for(&mut log, DEADLINE, |r| r.round.round >= 10)
        .unwrap();
    let mut late_config = config("e2e-join", 0);
    late_config.rounds = None;
    let (late_index, late) = swarm
        .spawn_peer(late_config, &tiny_model(), &tiny_train(), corpus.clone(), 1)
        .unwrap();
    let first_late = swarm
        .wait_for(&mut log, DEADLINE, |r| {
            r.peer == late_index && !r.round.catch_up
        })
        .unwrap();
    let late_summary = late.stop().unwrap();
    let early: Vec<PeerSummary> = early.into_iter().map(|p| p.stop().unwrap()).collect();
    assert!(
        late_summary.synced_from.is_some(),
        "the joiner did not sync"
    );
    assert!(
        late_summary.start_round >= 10,
        "joined at round {}",
        late_summary.start_round
    );
    // The swarm's loss around the round whose state the joiner fetched, from the early peers:
    // its first local steps start from that state, and if the swarm moved on meanwhile, the
    // rounds it missed are closed only after them (so its first report is of a later round).
    let at = late_summary.start_round;
    let swarm_loss = mean(
        log.iter()
            .filter(|r: &&Report| {
                r.peer != late_index && r.round.round + 2 >= at && r.round.round <= at
            })
            .map(|r| r.round.loss),
    );
    let fresh_loss = mean(early.iter().map(|s| s.rounds[0].loss));
    let joined_loss = first_late.round.loss;
    assert!(
        (joined_loss - swarm_loss).abs() < 0.25 * (fresh_loss - swarm_loss),
        "joiner's first loss {joined_loss}: swarm {swarm_loss}, fresh model {fresh_loss}"
    );
}

/// A joiner holds the rounds before its state as its server held them (`PeerState::recent`), so
/// the late updates that still come for them correct its θ as they correct the others'. One peer
/// is behind a link of 120 ms round trip while rounds are paced at 40 ms: its updates arrive a
/// round or two after the others closed theirs, at every round, so some are always on their way
/// when a state is served. With drift repair off nothing else can bring the joiner back: without
/// the sets (a snapshot with `recent` empty) it missed those updates for good and ended 1e-2
/// apart.
#[test]
fn a_joiner_takes_the_late_updates_of_the_rounds_before_its_state() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-join-late").unwrap();
    let corpus = corpus();
    let mut c = config("e2e-join-late", 60);
    c.drift_tolerance = None;
    let (mut fast, _) = fast_and_slow(c, 8, 1.0);
    fast.round_floor = Duration::from_millis(40);
    let mut early = Vec::new();
    for far in [false, false, true] {
        swarm.link = far.then_some(gradswarm_net::LinkShape {
            up_bps: 1e9,
            down_bps: 1e9,
            rtt: Duration::from_millis(120),
        });
        let (_, peer) = swarm
            .spawn_peer(
                fast.clone(),
                &tiny_model(),
                &tiny_train(),
                corpus.clone(),
                2,
            )
            .unwrap();
        early.push(peer);
    }
    swarm.link = None;
    let mut log = Vec::new();
    swarm
        .wait_for(&mut log, DEADLINE, |r| r.round.round >= 10)
        .unwrap();
    let (_, joiner) = swarm
        .spawn_peer(fast, &tiny_model(), &tiny_train(), corpus.clone(), 1)
        .unwrap();
    let joined = joiner.join().unwrap();
    let mut summaries: Vec<PeerSummary> = early.into_iter().map(|p| p.join().unwrap()).collect();
    eprintln!(
        "joiner: start {}, drops {:?}",
        joined.start_round, joined.drops
    );
    assert!(joined.synced_from.is_some(), "the joiner did not sync");
    assert!(
        joined.start_round + 20 <= 60,
        "the joiner synced at round {}, too near the end to show anything",
        joined.start_round
    );
    summaries.push(joined);
    let divergence = final_divergence(&summaries);
    assert!(divergence < 1e-4, "the joiner ended apart: {divergence}");
}

/// A peer alone runs rounds as fast as nothing holds them back; a joiner must still be able to
/// train in step with it. Without the round floor (`ROUND_FLOOR` set to zero) the lone peer ran
/// ~100 rounds a second, past the rate the joiner takes its updates at: they were dropped as a
/// flood, each took the other for a staller, and their rounds parted for good (0 counted).
#[test]
fn a_joiner_trains_in_step_with_a_peer_that_ran_alone() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-alone").unwrap();
    let corpus = corpus();
    let unbounded = || {
        let mut c = config("e2e-alone", 0);
        c.rounds = None;
        c
    };
    let (_, alone) = swarm
        .spawn_peer(unbounded(), &tiny_model(), &tiny_train(), corpus.clone(), 0)
        .unwrap();
    let mut log = Vec::new();
    swarm
        .wait_for(&mut log, DEADLINE, |r| r.round.round >= 60)
        .unwrap();
    // The node's default: the joiner heartbeats for 3 s before it syncs, and the lone peer,
    // after waiting out two rounds for it, runs on alone meanwhile.
    let mut joiner = unbounded();
    joiner.join_wait = Duration::from_secs(3);
    let (late_index, late) = swarm
        .spawn_peer(joiner, &tiny_model(), &tiny_train(), corpus.clone(), 1)
        .unwrap();
    let mut trained = 0;
    swarm
        .wait_for(&mut log, DEADLINE, |r| {
            trained += usize::from(r.peer == late_index && !r.round.catch_up);
            trained >= 40
        })
        .unwrap();
    let late = late.stop().unwrap();
    let alone = alone.stop().unwrap();
    assert!(late.synced_from.is_some(), "the joiner did not sync");
    for (me, other) in [(&alone, &late), (&late, &alone)] {
        let counted = me.counted_from.get(&other.peer_id).copied().unwrap_or(0);
        assert!(
            counted >= 20,
            "{} counted {counted} of {}'s updates in {} rounds",
            me.peer_id,
            other.peer_id,
            me.rounds.len()
        );
    }
}

/// A paused peer stays in the swarm without holding it back. Paused, its heartbeats say
/// `throttled`, so the others' rounds stop waiting for it at once: none of theirs from two rounds
/// after the pause runs to its deadline. It closes the rounds it sits out as skipped, and resumed,
/// it trains on from the swarm's round and ends on the others' replica. Without the flag (the
/// others wait for it as for any live peer) their rounds ran to the deadline until it counted as
/// a staller.
#[test]
fn a_paused_peer_does_not_hold_the_others_and_resumes_in_step() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-pause").unwrap();
    let corpus = corpus();
    let peers: Vec<_> = (0..3)
        .map(|_| {
            // To round 120: the pause, 30 rounds of it and 10 trained after fit well before.
            let c = config("e2e-pause", 120);
            swarm
                .spawn_peer(c, &tiny_model(), &tiny_train(), corpus.clone(), 2)
                .unwrap()
        })
        .collect();
    let (paused, others) = (peers[2].0, [peers[0].0, peers[1].0]);
    let mut log = Vec::new();
    swarm
        .wait_for(&mut log, DEADLINE, |r| r.round.round >= 10)
        .unwrap();
    let pause_round = log.iter().map(|r| r.round.round).max().unwrap_or(0);
    peers[2].1.pause.set(true);
    swarm
        .wait_for(&mut log, DEADLINE, |r| {
            others.contains(&r.peer) && r.round.round >= pause_round + 30
        })
        .unwrap();
    let resume_round = log.iter().map(|r| r.round.round).max().unwrap_or(0);
    peers[2].1.pause.set(false);
    let mut trained_after = 0;
    swarm
        .wait_for(&mut log, DEADLINE, |r| {
            trained_after +=
                usize::from(r.peer == paused && !r.round.catch_up && r.round.round > resume_round);
            trained_after >= 10
        })
        .unwrap();
    let summaries: Vec<PeerSummary> = peers.into_iter().map(|(_, p)| p.join().unwrap()).collect();
    let held: Vec<u64> = log
        .iter()
        .filter(|r| others.contains(&r.peer) && r.round.waited_out)
        .map(|r| r.round.round)
        .filter(|&round| round >= pause_round + 2 && round <= resume_round)
        .collect();
    assert!(
        held.is_empty(),
        "the others waited out rounds {held:?} for the paused peer"
    );
    let skipped = log
        .iter()
        .filter(|r| r.peer == paused && r.round.skipped)
        .count();
    assert!(skipped >= 20, "the paused peer sat out {skipped} rounds");
    let divergence = final_divergence(&summaries);
    assert!(divergence < 1e-4, "replicas parted: {divergence}");
}

#[test]
fn a_killed_peer_leaves_the_others_training() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-kill").unwrap();
    let corpus = corpus();
    let mut peers: Vec<_> = (0..3)
        .map(|_| {
            swarm
                .spawn_peer(
                    config("e2e-kill", 20),
                    &tiny_model(),
                    &tiny_train(),
                    corpus.clone(),
                    2,
                )
                .unwrap()
                .1
        })
        .collect();
    let mut log = Vec::new();
    swarm
        .wait_for(&mut log, DEADLINE, |r| r.peer == 2 && r.round.round >= 8)
        .unwrap();
    peers.pop().unwrap().kill();
    let survivors: Vec<PeerSummary> = peers.into_iter().map(|p| p.join().unwrap()).collect();
    for s in &survivors {
        assert_eq!(s.rounds.last().map(|r| r.round), Some(19));
        assert_eq!(
            s.rounds.last().map(|r| r.peers),
            Some(1),
            "the dead peer is still counted live"
        );
        let (first, last) = loss_fell(s);
        assert!(last < first - 0.5, "loss went {first} → {last}");
    }
}

#[test]
fn a_drifted_replica_rejoins_the_replica_the_others_agree_on() {
    drifted_replica_rejoins("e2e-drift", Mode::Gradient);
}

/// The same in local-steps mode, whose outer Nesterov momentum the marks carry after θ: the
/// fetched mark is θ and the momentum, and the repair moves both.
#[test]
fn a_drifted_replica_rejoins_the_others_in_local_steps_mode() {
    drifted_replica_rejoins("e2e-drift-local", Mode::LocalSteps);
}

fn drifted_replica_rejoins(name: &str, mode: Mode) {
    let _serial = serial();
    let mut swarm = LocalSwarm::start(name).unwrap();
    let corpus = corpus();
    let mut peers = Vec::new();
    for i in 0..3 {
        let mut trainer =
            Trainer::new(&tiny_model(), &tiny_train(), &Device::flex()).expect("trainer");
        if i == 2 {
            // This replica starts 1% (relative L2) away from the others', as after a restart from
            // another checkpoint. The same aggregates applied to every replica keep that gap.
            let theta = trainer.parameters().expect("θ");
            let moved: Vec<f32> = theta
                .iter()
                .enumerate()
                .map(|(j, v)| if j % 2 == 0 { v * 1.01 } else { v * 0.99 })
                .collect();
            assert!((relative_distance(&theta, &moved) - 0.01).abs() < 1e-4);
            trainer.set_parameters(&moved).expect("θ");
        }
        // Rounds of the tiny model take milliseconds, a state transfer several of them: 40
        // rounds leave room for a second averaging when the first pairs did not all meet.
        let mut config = config(name, 40);
        if mode == Mode::LocalSteps {
            let defaults = PeerConfig::new(name, Mode::LocalSteps);
            (config.mode, config.outer) = (defaults.mode, defaults.outer);
            config.local_steps = 2;
        }
        peers.push(
            swarm
                .spawn_trainer(config, trainer, corpus.clone(), 2)
                .unwrap()
                .1,
        );
    }
    let summaries: Vec<PeerSummary> = peers.into_iter().map(|p| p.join().unwrap()).collect();
    for s in &summaries {
        let (first, last) = loss_fell(s);
        assert!(
            last < first - 0.5,
            "loss of {} went {first} → {last}",
            s.peer_id
        );
    }
    // The drifted peer moved to the replica the other two agree on; they had no reason to move.
    let drifted = &summaries[2];
    assert!(
        !drifted.reconciled_with.is_empty(),
        "the drifted peer never moved"
    );
    assert!(
        summaries[..2].iter().all(|s| s.reconciled_with.is_empty()),
        "a peer of the majority moved: {:?}",
        summaries
            .iter()
            .map(|s| &s.reconciled_with)
            .collect::<Vec<_>>()
    );
    let params: Vec<&[f32]> = summaries
        .iter()
        .map(|s| s.final_params.as_slice())
        .collect();
    let divergence = max_divergence(&params);
    eprintln!(
        "final replica divergence {divergence:.3e}; averagings {:?}",
        summaries
            .iter()
            .map(|s| &s.reconciled_with)
            .collect::<Vec<_>>()
    );
    assert!(divergence < 1e-3, "replicas still apart: {divergence}");
}

#[test]
fn a_slow_peer_is_weighted_and_too_stale_updates_are_dropped() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-slow").unwrap();
    let corpus = corpus();
    // The slow peer computes for ~5 fast compute phases while a fast round takes ~2: its updates
    // arrive 2–4 rounds late, on both sides of τ_max.
    let (fast, slow) = fast_and_slow(config("e2e-slow", 60), 3, 5.0);
    let (_, a) = swarm
        .spawn_peer(
            fast.clone(),
            &tiny_model(),
            &tiny_train(),
            corpus.clone(),
            2,
        )
        .unwrap();
    let (_, b) = swarm
        .spawn_peer(fast, &tiny_model(), &tiny_train(), corpus.clone(), 2)
        .unwrap();
    let (_, s) = swarm
        .spawn_peer(slow, &tiny_model(), &tiny_train(), corpus.clone(), 2)
        .unwrap();
    let slow_id = s.net.local_peer_id().to_base58();
    let fast: Vec<PeerSummary> = [a, b].into_iter().map(|p| p.join().unwrap()).collect();
    s.stop().expect("the slow peer ended with an error");
    for f in &fast {
        eprintln!(
            "fast peer: staleness per round {:?}, drops {:?}",
            f.rounds
                .iter()
                .map(|r| r.staleness.clone())
                .collect::<Vec<_>>(),
            f.drops,
        );
        let stale_counted: usize = f
            .rounds
            .iter()
            .map(|r| r.staleness.iter().filter(|&&t| t >= 1).count())
            .sum();
        assert!(stale_counted >= 1, "no late update was weighted in");
        assert!(f.counted_from.get(&slow_id).copied().unwrap_or(0) >= 1);
        assert!(
            f.drops.get(DropReason::TooStale) >= 1,
            "nothing was too stale: {:?}",
            f.drops
        );
        let (first, last) = loss_fell(f);
        assert!(last < first - 0.5, "loss went {first} → {last}");
    }
}

#[test]
fn foreign_and_malformed_messages_are_rejected_and_counted() {
    let _serial = serial();
    let mut swarm = LocalSwarm::start("e2e-rogue").unwrap();
    let corpus = corpus();
    let (_, honest) = swarm
        .spawn_peer(
            config("e2e-rogue", 16),
            &tiny_model(),
            &tiny_train(),
            corpus.clone(),
            1,
        )
        .unwrap();
    // The rogue is a real libp2p node of the same run that publishes garbage and a foreign update.
    let mut rogue_config = config("e2e-rogue", 1_000_000);
    rogue_config.codec = gradswarm_core::CodecDescriptor::top_k_int8_zstd(100_000);
    let (_, rogue) = swarm
        .spawn_peer(
            rogue_config,
            &tiny_model(),
            &tiny_train(),
            corpus.clone(),
            1,
        )
        .unwrap();
    let mut log = Vec::new();
    swarm
        .wait_for(&mut log, DEADLINE, |r| r.peer == 0 && r.round.round >= 3)
        .unwrap();
    let me = rogue.net.local_peer_id().to_bytes();
    let foreign = Update {
        run_id: "another-run".into(),
        model_hash: tiny_model().hash(),
        peer_id: me.clone(),
        round: 4,
        base_round: 4,
        samples: 8,
        codec: gradswarm_core::CodecDescriptor::top_k_int8_zstd(100_000),
        payload: vec![],
    };
    rogue
        .net
        .publish(gradswarm_net::Topic::Updates, vec![1, 2, 3, 4, 5])
        .unwrap();
    rogue
        .net
        .publish(
            gradswarm_net::Topic::Updates,
            UpdateGossip::Inline(foreign).to_bytes(),
        )
        .unwrap();
    rogue
        .net
        .publish(gradswarm_net::Topic::Heartbeat, vec![0xff; 40])
        .unwrap();
    let honest = honest.join().unwrap();
    rogue.kill();
    assert_eq!(honest.rounds.len(), 16, "the honest peer stopped early");
    assert!(
        honest.drops.get(DropReason::Malformed) >= 2,
        "{:?}",
        honest.drops
    );
    assert!(
        honest.drops.get(DropReason::ForeignRun) >= 1,
        "{:?}",
        honest.drops
    );
}

#[test]
fn announced_updates_that_lie_or_vanish_are_dropped_and_counted() {
    let _serial = serial();
    let run = "e2e-pull";
    let mut swarm = LocalSwarm::start(run).unwrap();
    let (_, honest) = swarm
        .spawn_peer(
            config(run, 100_000),
            &tiny_model(),
            &tiny_train(),
            corpus(),
            0,
        )
        .unwrap();
    // The rogue is a bare libp2p node of the run: it announces updates and serves what it likes.
    let mut net_config = gradswarm_net::NetConfig::peer(
        run,
        tiny_model().hash(),
        WireLimits::for_model(1 << 20, 1 << 20),
    );
    net_config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    net_config.bootstrap = vec![swarm.bootstrap.clone()];
    net_config.gossip_heartbeat = Duration::from_millis(200);
    let key = gradswarm_net::Keypair::generate_ed25519();
    let (rogue, mut rogue_events, driver) = swarm
        .block_on(gradswarm_net::native::build(net_config, key))
        .unwrap();
    swarm.spawn(driver.run());
    // It can reach the honest peer once it has seen it join the updates topic.
    let honest_id = honest.net.local_peer_id();
    swarm
        .block_on(async {
            use futures::StreamExt;
            let joined = async {
                while let Some(event) = rogue_events.next().await {
                    if matches!(event, gradswarm_net::NetEvent::PeerJoined(p) if p == honest_id) {
                        return;
                    }
                }
            };
            tokio::time::timeout(DEADLINE, joined).await
        })
        .expect("the rogue never saw the honest peer");

    // 1. A real announcement of an update whose payload is garbage: pulled, then malformed.
    let garbage = Update {
        run_id: run.into(),
        model_hash: tiny_model().hash(),
        peer_id: rogue.local_peer_id().to_bytes(),
        round: 1,
        base_round: 1,
        samples: 8,
        codec: gradswarm_core::CodecDescriptor::top_k_int8_zstd(100_000),
        payload: vec![0xA5; 4000],
    };
    rogue.publish_update(garbage.clone()).unwrap();
    // 2. An announcement whose header lies about the payload the rogue serves for its digest.
    let bytes = garbage.to_bytes();
    let lie = Announce {
        round: 2,
        base_round: 2,
        ..Announce::of(&garbage, &bytes)
    };
    rogue
        .publish(
            gradswarm_net::Topic::Updates,
            UpdateGossip::Announce(lie).to_bytes(),
        )
        .unwrap();
    // 3. An announcement of a payload nobody holds.
    let vanished = Announce {
        digest: [0xAB; 32],
        round: 3,
        base_round: 3,
        ..Announce::of(&garbage, &bytes)
    };
    rogue
        .publish(
            gradswarm_net::Topic::Updates,
            UpdateGossip::Announce(vanished).to_bytes(),
        )
        .unwrap();

    let mut seen = DropCounts::default();
    let mut log = Vec::new();
    swarm
        .wait_for(&mut log, DEADLINE, |r| {
            seen.merge(&r.round.drops);
            [
                DropReason::Malformed,
                DropReason::PayloadMismatch,
                DropReason::Unfetchable,
            ]
            .iter()
            .all(|&reason| seen.get(reason) >= 1)
        })
        .unwrap_or_else(|e| panic!("{e}; drops so far {seen:?}"));
    let honest = honest.stop().unwrap();
    rogue.shutdown();
    // It trained on through all of it (and stopped only when asked).
    assert!(
        !honest.rounds.is_empty(),
        "the honest peer never closed a round"
    );
    for reason in [
        DropReason::Malformed,
        DropReason::PayloadMismatch,
        DropReason::Unfetchable,
    ] {
        assert_eq!(honest.drops.get(reason), 1, "{reason}: {:?}", honest.drops);
    }
    assert_eq!(honest.drops.total(), 3, "{:?}", honest.drops);
}
