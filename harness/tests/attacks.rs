//! A quarter of the swarm hostile: three honest peers and one attacker (`gradswarm_harness::attack`),
//! all real peers on loopback. Each test runs one kind of attack and asserts that the honest
//! peers' loss falls, their replicas agree, and (where the defence is to refuse) the attacker's
//! messages are dropped and counted with their reason. docs/security.md says which defence each
//! one meets, and what the same test measured before it.

use std::sync::Arc;

use gradswarm_core::DropReason;
use gradswarm_harness::attack::{self, Attack};
use gradswarm_harness::{LocalSwarm, PeerProc, identity};
use gradswarm_model::Corpus;
use gradswarm_net::PeerId;
use gradswarm_peer::{PeerConfig, PeerSummary};

mod common;
use common::*;

const HONEST: usize = 3;
const ROUNDS: u64 = 20;

/// What an attacked run left: the honest peers' summaries and the attackers' ids.
struct Attacked {
    honest: Vec<PeerSummary>,
    /// The first (in most tests the only) attacker.
    attacker: String,
    /// Every attacker identity.
    attackers: Vec<String>,
}

/// Runs three honest peers and one `attack`er for [`ROUNDS`] rounds.
fn attacked(name: &str, attack: Attack) -> Attacked {
    attacked_by(name, &[attack])
}

/// Starts [`HONEST`] honest peers and one attacker identity per entry of `attacks`, all of
/// config `c`; returns the honest peers, the attackers and the attackers' peer ids.
fn spawn_attacked(
    swarm: &mut LocalSwarm,
    c: &PeerConfig,
    corpus: &Arc<Corpus>,
    attacks: &[Attack],
) -> (Vec<PeerProc>, Vec<PeerProc>, Vec<String>) {
    let mut spawn = |attack: Option<Attack>| {
        swarm
            .spawn_as(
                attack,
                c.clone(),
                &tiny_model(),
                &tiny_train(),
                corpus.clone(),
                HONEST,
            )
            .unwrap()
            .1
    };
    let honest: Vec<PeerProc> = (0..HONEST).map(|_| spawn(None)).collect();
    let attackers: Vec<PeerProc> = attacks.iter().map(|&a| spawn(Some(a))).collect();
    let ids = attackers
        .iter()
        .map(|a| a.net.local_peer_id().to_base58())
        .collect();
    (honest, attackers, ids)
}

/// Runs three honest peers and one attacker identity per entry of `attacks` for [`ROUNDS`]
/// rounds.
fn attacked_by(name: &str, attacks: &[Attack]) -> Attacked {
    attacked_with(config(name, ROUNDS), attacks)
}

/// [`attacked_by`], every peer of config `c`.
fn attacked_with(c: PeerConfig, attacks: &[Attack]) -> Attacked {
    let _serial = serial();
    let name = c.run_id.clone();
    let mut swarm = LocalSwarm::start(&name).unwrap();
    let corpus = corpus();
    let (honest, attackers, attacker_ids) = spawn_attacked(&mut swarm, &c, &corpus, attacks);
    let honest: Vec<PeerSummary> = honest.into_iter().map(|p| p.join().unwrap()).collect();
    // The attackers' own runs may end any way they like.
    for attacker in attackers {
        let _ = attacker.join();
    }
    for s in &honest {
        let waited_out = s.rounds.iter().filter(|r| r.waited_out).count();
        eprintln!(
            "{}: loss {:?}, drops {:?}, counted {:?}, reconciled {:?}, {waited_out} rounds waited out",
            s.peer_id,
            loss_fell(s),
            s.drops,
            s.counted_from,
            s.reconciled_with
        );
    }
    Attacked {
        honest,
        attacker: attacker_ids[0].clone(),
        attackers: attacker_ids,
    }
}

impl Attacked {
    /// The honest peers trained (loss fell by ≥ 0.5 nats/byte over the run) and agree (< 1e-3).
    fn honest_trained_and_agree(&self) -> &Self {
        for s in &self.honest {
            assert_eq!(
                s.rounds.iter().filter(|r| !r.catch_up).count() as u64,
                ROUNDS,
                "{} ran its rounds as catch-ups",
                s.peer_id
            );
            let (first, last) = loss_fell(s);
            assert!(
                last < first - 0.5,
                "loss of {} went {first} → {last}",
                s.peer_id
            );
        }
        let divergence = final_divergence(&self.honest);
        assert!(divergence < 1e-3, "honest replicas parted: {divergence}");
        self
    }

    /// No honest peer ran more than `rounds` rounds to their deadline waiting for an attacker
    /// identity (rounds a loaded machine made late, with no attacker missing, do not count).
    fn waited_for_attackers_at_most(&self, rounds: usize) -> &Self {
        for s in &self.honest {
            let waited = s
                .rounds
                .iter()
                .filter(|r| self.attackers.iter().any(|a| r.missing.contains(a)))
                .count();
            assert!(
                waited <= rounds,
                "{}: {waited} rounds ran to their deadline waiting for the attackers",
                s.peer_id
            );
        }
        self
    }

    /// Every honest peer dropped the attacker's updates for one of `reasons`, and counted at
    /// most `counted_at_most` of them. (A few drops suffice: four rejections graylist the
    /// attacker, whose messages gossipsub then discards before validation.)
    fn attacker_dropped_for(&self, reasons: &[DropReason], counted_at_most: u64) -> &Self {
        for s in &self.honest {
            let dropped: u64 = reasons.iter().map(|&r| s.drops.get(r)).sum();
            assert!(
                dropped >= 2,
                "{} dropped {dropped} updates for {reasons:?}",
                s.peer_id
            );
            let counted = s.counted_from.get(&self.attacker).copied().unwrap_or(0);
            assert!(
                counted <= counted_at_most,
                "{} counted {counted} of the attacker's",
                s.peer_id
            );
        }
        self
    }
}

#[test]
fn sign_flipped_updates_are_dropped_by_the_direction_screen() {
    attacked("attack-sign-flip", Attack::SignFlip)
        .honest_trained_and_agree()
        // Its first update included: round 0's updates point alike most of all.
        .attacker_dropped_for(&[DropReason::Unaligned], 0);
}

#[test]
fn scaled_updates_are_dropped_from_the_first() {
    attacked("attack-scale", Attack::Scale)
        .honest_trained_and_agree()
        .attacker_dropped_for(&[DropReason::NormOutlier], 0);
}

#[test]
fn nan_updates_are_dropped() {
    attacked("attack-nan", Attack::Nan)
        .honest_trained_and_agree()
        // Refused for its codec (raw f32, not the run's int8) before its values are read.
        .attacker_dropped_for(&[DropReason::NonFinite, DropReason::Malformed], 0);
}

#[test]
fn noise_updates_do_not_stop_training() {
    attacked("attack-noise", Attack::Noise).honest_trained_and_agree();
}

#[test]
fn crafted_updates_do_not_stop_training() {
    // The attack the screens cannot see (docs/security.md §5): made from the round's honest
    // updates to oppose one of the three, it passes the direction screen and counts, bounded by
    // the norm screen's clip. Whether the attacker has heard the round in time depends on the
    // tiny model's millisecond rounds (in one run of four it heard too little in all 20 and
    // flipped its own instead), so what it got counted is not asserted here: core's
    // `a_crafted_update_passes_both_screens_and_opposes_the_honest_sum` and `crafted_updates_
    // pass_the_direction_screen_and_the_clip_bounds_them` judge it deterministically.
    attacked("attack-crafted", Attack::Crafted).honest_trained_and_agree();
}

#[test]
fn a_free_rider_does_not_stop_training() {
    attacked("attack-zero", Attack::Zero).honest_trained_and_agree();
}

#[test]
fn replayed_updates_are_dropped() {
    attacked("attack-replay", Attack::Replay)
        .honest_trained_and_agree()
        // Its first three updates were honest ones, and counted.
        .attacker_dropped_for(&[DropReason::TooStale, DropReason::Duplicate], 3);
}

#[test]
fn a_copycat_does_not_stop_training() {
    attacked("attack-copycat", Attack::Copycat).honest_trained_and_agree();
}

#[test]
fn inflated_samples_are_dropped() {
    attacked("attack-samples", Attack::SamplesInflation)
        .honest_trained_and_agree()
        .attacker_dropped_for(&[DropReason::Overclaimed], 0);
}

#[test]
fn credit_is_what_the_others_attest_not_what_a_peer_claims() {
    let run = attacked("attack-credit", Attack::CreditInflation);
    run.honest_trained_and_agree();
    // Every peer of the run trained the same rounds on the same batches: what one honest peer
    // computed is what the attacker computed too, and 1/64 of what it claimed.
    let trained = run.honest.iter().map(final_samples).max().unwrap_or(0);
    for s in &run.honest {
        let theirs = s.credits.get(&run.attacker).copied().unwrap_or(0);
        eprintln!(
            "{}: own credit {} of {} samples; credits {:?}",
            s.peer_id,
            s.credit,
            final_samples(s),
            s.credits
        );
        // Its updates counted, so it has credit; but no more than it trained, whatever it claims
        // (credit = the claim would give 64 × that).
        assert!(
            theirs > 0 && theirs <= trained,
            "{} credits the attacker {theirs} for {trained} samples trained",
            s.peer_id
        );
        // Its attesting none of the others' updates does not sink them.
        assert!(
            s.credit >= final_samples(s) / 2 && s.credit <= final_samples(s),
            "{} is credited {} of its {} samples",
            s.peer_id,
            s.credit,
            final_samples(s)
        );
    }
}

/// The samples a peer trained on over its run.
fn final_samples(s: &PeerSummary) -> u64 {
    s.rounds.iter().map(|r| r.samples).max().unwrap_or(0)
}

#[test]
fn an_inflated_round_does_not_move_the_clock() {
    attacked("attack-round", Attack::RoundInflation).honest_trained_and_agree();
}

#[test]
fn a_poisoned_replica_is_not_followed() {
    let run = attacked("attack-drift", Attack::DriftPoison);
    run.honest_trained_and_agree();
    for s in &run.honest {
        assert!(
            !s.reconciled_with.contains_key(&run.attacker),
            "{} averaged with the attacker's replica",
            s.peer_id
        );
    }
}

/// The config of run `name` in groups of four regrouped every 5 rounds: one group of the three
/// honest peers and the attacker, whose replicas a regrouping averages.
fn in_groups(name: &str) -> PeerConfig {
    let mut c = config(name, ROUNDS);
    c.averaging = gradswarm_core::AveragingConfig::Groups { size: 4, every: 5 };
    c
}

/// How each of `s`'s regroupings went.
fn regroupings(s: &PeerSummary) -> Vec<&gradswarm_peer::RegroupReport> {
    s.rounds.iter().filter_map(|r| r.regroup.as_ref()).collect()
}

/// In groups (one group of four, regrouped every 5 rounds), an attacker serves a replica a
/// hundred times θ with a fingerprint to match. Before session 18 it was taken: the honest
/// peers' θ became ~26 times itself at the first regrouping and training broke. Now it lies
/// past `REPLICA_REACH` from every honest peer's own and is refused at every regrouping.
#[test]
fn a_blown_up_replica_is_not_averaged_in_by_its_new_group() {
    let c = in_groups("attack-replica-blowup");
    let run = attacked_with(c, &[Attack::ReplicaBlowup]);
    run.honest_trained_and_agree();
    for s in &run.honest {
        let regroupings = regroupings(s);
        let refused: u64 = regroupings.iter().map(|g| g.refused).sum();
        let averaged: u64 = regroupings.iter().map(|g| g.averaged).sum();
        assert!(
            regroupings.len() >= 3 && refused as usize >= regroupings.len() && averaged > 0,
            "{}: {regroupings:?}",
            s.peer_id
        );
    }
}

/// In groups (one group of four, regrouped every 5 rounds), an attacker serves a replica just
/// within `REPLICA_REACH`: θ plus noise of 1.9 times its norm, with a fingerprint to match. It is
/// taken, but clipped to `REPLICA_CLIP` (‖θ‖) of the replicas' coordinate-wise median, so a
/// regrouping moves an honest peer by a quarter of ‖θ‖ plus the 6-bit rounding, not by the
/// ~0.48 the plain mean gave it (measured by this test with the clip off: it fails).
#[test]
fn a_replica_within_reach_moves_its_group_no_further_than_the_clip() {
    let c = in_groups("attack-replica-reach");
    let run = attacked_with(c, &[Attack::ReplicaReach]);
    run.honest_trained_and_agree();
    for s in &run.honest {
        let regroupings = regroupings(s);
        let clipped: u64 = regroupings.iter().map(|g| g.clipped).sum();
        let moved = regroupings
            .iter()
            .filter_map(|g| g.max_moved)
            .fold(0.0, f64::max);
        let reach = regroupings
            .iter()
            .filter_map(|g| g.max_reach)
            .fold(0.0, f64::max);
        eprintln!(
            "{}: {} regroupings, {clipped} replicas clipped (the farthest taken {reach:.2} \
             away), moved by {moved:.3} at most",
            s.peer_id,
            regroupings.len()
        );
        assert!(
            regroupings.len() >= 3 && clipped >= 1 && moved <= 0.35,
            "{}: moved by {moved:.3} at most, {clipped} clipped: {regroupings:?}",
            s.peer_id
        );
    }
}

/// Eight peers in groups of four, one of them an attacker that trains honestly and, where its
/// new group forms (round 10), serves θ with 24 % of ‖θ‖ hidden from the public sketch
/// (`Attack::ReplicaHidden`). Its fingerprint is its old group's, so it holds one replica with
/// that group's honest members who land in its new group, and the others of the new group fetch
/// that replica once. Where they asked the attacker, every public check passed (the unit test
/// `a_vector_hidden_from_the_fingerprints_is_seen_by_a_fellow_holders_check` shows it) and its
/// replica counted once for each of the holding's members. Now the other holders' keyed checks
/// do not support it, or (where an honest holder served first) its own check does not support
/// the honest replica (`RegroupReport::unsupported`); the honest replica, which two of the
/// three holders support, counts for all three, the attacker's set aside. The test measures how
/// far the honest members of the new group moved along the hidden vector (drawn from a public
/// seed for that): 0.0004–0.0006 of ‖θ‖. The peers' identities come from a seed chosen so that
/// the attacker shares its new group with two of its old group and with peers of the other one.
/// With every holder supporting every replica (the checks off) a member took 0.145 of ‖θ‖ (3/5
/// of the 24 % hidden) and this test fails; with the attacker's replica counted for itself alone
/// rather than outvoted, 0.048 (1/5), and it fails too.
#[test]
fn a_replica_hiding_a_vector_from_its_fingerprint_is_outvoted_by_its_holding() {
    let _serial = serial();
    let drawn = gradswarm_core::Groups { size: 4, every: 10 };
    const ATTACKER: usize = 7;
    let group_of = |ids: &[Vec<u8>], round: u64, peer: usize| -> Vec<usize> {
        let refs: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
        let groups = drawn.groups(round, &refs, refs.len());
        let group = groups.into_iter().find(|g| g.contains(&refs[peer]));
        let group = group.unwrap_or_default();
        (0..ids.len())
            .filter(|&i| group.contains(&refs[i]))
            .collect()
    };
    // The first identity seed under which the attacker's new group holds two of its old group
    // and some of the other: the holding whose replica those others fetch has three members.
    let (seed, ids, new, outsiders) = (0..10_000u64)
        .find_map(|seed| {
            let ids: Vec<Vec<u8>> = (0..=ATTACKER)
                .map(|i| identity(seed, i).public().to_peer_id().to_bytes())
                .collect();
            let old = group_of(&ids, drawn.every - 1, ATTACKER);
            let new = group_of(&ids, drawn.every, ATTACKER);
            let holding = new.iter().filter(|i| old.contains(i)).count();
            let outsiders: Vec<usize> = new.iter().filter(|i| !old.contains(i)).copied().collect();
            (holding == 3 && !outsiders.is_empty()).then_some((seed, ids, new, outsiders))
        })
        .expect("some seed draws such groups");
    let mut c = config("attack-replica-hidden", ROUNDS);
    // The old groups' members must hold one replica at the regrouping, or the holding of three
    // this test sets up is two holdings (one of them the attacker's with a single fellow, no
    // majority): an update a round late leaves them up to ~1 % apart on this tiny model, and
    // at 300 ms a partner that starts late, or that 2 shared cores hold up, sent one in about
    // one run in five. So rounds wait up to 2 s for every partner's update, the peers all start
    // together (2 s to find each other), and a new partner may stand still at a round for
    // 10 s (a third of `peer_timeout`) before it is left out.
    c.min_wait = std::time::Duration::from_secs(2);
    c.join_wait = std::time::Duration::from_secs(2);
    c.peer_timeout = std::time::Duration::from_secs(30);
    c.averaging = gradswarm_core::AveragingConfig::Groups {
        size: drawn.size,
        every: drawn.every,
    };
    let mut swarm = LocalSwarm::start(&c.run_id).unwrap();
    swarm.identities = Some(seed);
    // θ at the end of every round: rounds 9 and 10 are the ones either side of the regrouping.
    swarm.snapshot_every = 1;
    let corpus = corpus();
    let mut spawn = |attack: Option<Attack>| {
        let model = (tiny_model(), tiny_train());
        let peer = swarm.spawn_as(attack, c.clone(), &model.0, &model.1, corpus.clone(), 7);
        peer.unwrap().1
    };
    let honest: Vec<PeerProc> = (0..ATTACKER).map(|_| spawn(None)).collect();
    let attacker = spawn(Some(Attack::ReplicaHidden));
    let (mut log, mut ended) = (Vec::new(), std::collections::BTreeSet::new());
    swarm
        .wait_for(&mut log, DEADLINE, |r| {
            if r.round.round == drawn.every {
                ended.insert(r.peer);
            }
            ended.len() > ATTACKER
        })
        .unwrap();
    let honest: Vec<PeerSummary> = honest.into_iter().map(|p| p.join().unwrap()).collect();
    let _ = attacker.join();
    for s in &honest {
        let (first, last) = loss_fell(s);
        assert!(
            last < first - 0.5,
            "loss of {} went {first} → {last}",
            s.peer_id
        );
    }
    // How much of the hidden vector reached the honest members of the attacker's new group:
    // the regrouping round's move of θ (the end of round 9 to the end of round 10) along it,
    // relative to ‖θ‖. Counted for the attacker's whole holding of three (of five), it is
    // ~0.146 (3/5 of 0.243) where the attacker served first; counted for the attacker alone,
    // ~0.049; outvoted, nothing beyond the honest move's chance share (~‖move‖/√n, 0.002).
    let theta = |peer: usize, round: u64| -> &[f32] {
        let at = log
            .iter()
            .find(|r| r.peer == peer && r.round.round == round);
        at.and_then(|r| r.params.as_deref())
            .map_or(&[], Vec::as_slice)
    };
    let hidden = attack::hidden_direction(theta(0, drawn.every).len(), drawn.every);
    for &i in new.iter().filter(|&&i| i != ATTACKER) {
        let (before, after) = (theta(i, drawn.every - 1), theta(i, drawn.every));
        assert!(!before.is_empty() && before.len() == hidden.len() && after.len() == hidden.len());
        let along: f64 = after
            .iter()
            .zip(before)
            .zip(&hidden)
            .map(|((a, b), u)| f64::from(a - b) * f64::from(*u))
            .sum();
        let share = along / gradswarm_core::aggregate::l2_norm(before);
        eprintln!("peer {i} took {share:.4} of ‖θ‖ along the hidden vector");
        assert!(
            share.abs() < 0.02,
            "peer {i} took {share:.4} of ‖θ‖ of the hidden vector"
        );
    }
    for &i in &outsiders {
        let s = &honest[i];
        assert_eq!(s.peer_id.parse::<PeerId>().unwrap().to_bytes(), ids[i]);
        let report = s
            .rounds
            .iter()
            .find(|r| r.round == drawn.every)
            .and_then(|r| r.regroup.as_ref())
            .expect("a regrouping at round 10");
        eprintln!("{} fetched the attacker's holding: {report:?}", s.peer_id);
        // The attacker's replica was not supported (where it served first) or did not support
        // the honest one; the honest one, which two of the three holders support, counted for
        // all three.
        assert!(
            report.unsupported >= 1 && report.alone == 0 && report.fetched >= 1,
            "{}: the attacker's holding was not decided as it should be: {report:?}",
            s.peer_id
        );
    }
}

#[test]
fn a_stalling_peer_does_not_hold_rounds() {
    attacked("attack-stall", Attack::Stall)
        .honest_trained_and_agree()
        .waited_for_attackers_at_most(2);
}

/// A sybil: one attacker with three identities, as many as there are honest peers, each of them
/// heartbeating and never sending an update. Rounds wait for a silent identity at most
/// `MISSED_LIMIT` (2) rounds, and for all three at once, not one after another; after that they
/// are neither waited for nor given a share of the data. With the rule switched off
/// (`MISSED_LIMIT` raised to 1000) this test fails: the rounds ran to their deadlines waiting.
#[test]
fn a_sybil_of_three_silent_identities_holds_two_rounds_at_most() {
    attacked_by("attack-sybil", &[Attack::Stall; 3])
        .honest_trained_and_agree()
        .waited_for_attackers_at_most(2);
}

#[test]
fn a_flood_is_rate_limited() {
    let run = attacked("attack-flood", Attack::Flood);
    run.honest_trained_and_agree();
    for s in &run.honest {
        let limited = s.drops.get(DropReason::RateLimited);
        assert!(limited >= 1, "{} rate-limited nothing", s.peer_id);
    }
}

/// Two signed versions of each round's update: every honest peer drops both, whichever came
/// first, so the replicas keep the same set.
#[test]
fn an_equivocator_counts_nowhere() {
    attacked("attack-equivocate", Attack::Equivocate)
        .honest_trained_and_agree()
        .attacker_dropped_for(&[DropReason::Equivocation], 0);
}

/// An attacker that changes its kind every round: the honest peers must still take the same
/// updates and agree (the adversity benchmark once found them parted by 5e-2 under it).
#[test]
fn a_mixed_attacker_does_not_part_the_replicas() {
    attacked("attack-mixed", Attack::Mixed).honest_trained_and_agree();
}

/// A joiner asks the peer claiming the latest round first: the attacker. Its state must be
/// checked against the others and refused, and the joiner synced from an honest peer instead.
#[test]
fn a_joiner_does_not_install_a_poisoned_state() {
    joiner_refuses("attack-state", &[Attack::StatePoison]);
}

/// Two identities of one attacker serve the same poisoned θ and vouch for each other: the
/// joiner follows the majority of the peers, not the first one that agrees with its server.
/// With the check asking for one other voice instead of a majority, the joiner installed it.
#[test]
fn colluding_sybils_cannot_vouch_a_poisoned_state_in() {
    joiner_refuses("attack-sybil-state", &[Attack::Sybil; 2]);
}

/// Three honest peers and one peer per entry of `attacks` train; a joiner then arrives at round
/// 10 and must sync from an honest peer and start where the swarm is.
fn joiner_refuses(name: &str, attacks: &[Attack]) {
    let _serial = serial();
    let mut swarm = LocalSwarm::start(name).unwrap();
    let corpus = corpus();
    let mut c = config(name, 0);
    c.rounds = None;
    let (honest, attackers, attacker_ids) = spawn_attacked(&mut swarm, &c, &corpus, attacks);
    let mut log = Vec::new();
    swarm
        .wait_for(&mut log, DEADLINE, |r| r.round.round >= 10)
        .unwrap();
    let (late_index, late) = swarm
        .spawn_peer(c, &tiny_model(), &tiny_train(), corpus, 1)
        .unwrap();
    let first = swarm
        .wait_for(&mut log, DEADLINE, |r| {
            r.peer == late_index && !r.round.catch_up
        })
        .unwrap();
    let late = late.stop().unwrap();
    let honest: Vec<PeerSummary> = honest.into_iter().map(|p| p.stop().unwrap()).collect();
    for attacker in attackers {
        let _ = attacker.stop();
    }
    let synced = late.synced_from.clone().unwrap_or_default();
    eprintln!("joiner synced from {synced}; the attackers are {attacker_ids:?}");
    assert!(!synced.is_empty(), "the joiner did not sync");
    assert!(
        !attacker_ids.contains(&synced),
        "the joiner installed an attacker's state"
    );
    // Its first own round starts where the swarm is, not from a poisoned θ.
    let at = late.start_round;
    let swarm_loss = mean(
        log.iter()
            .filter(|r| r.peer != late_index && r.round.round + 2 >= at && r.round.round <= at)
            .map(|r| r.round.loss),
    );
    let fresh_loss = mean(honest.iter().map(|s| s.rounds[0].loss));
    assert!(
        (first.round.loss - swarm_loss).abs() < 0.25 * (fresh_loss - swarm_loss),
        "joiner's first loss {}: swarm {swarm_loss}, fresh model {fresh_loss}",
        first.round.loss
    );
}
