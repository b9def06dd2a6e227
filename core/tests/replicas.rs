//! Replicas that end a run holding the same updates end with the same θ, however late some of
//! those updates reached them: the round book, both screens, the weighted mean and the outer
//! optimizer's late corrections together, as a peer runs them (`peer/src/runtime/round.rs`).
//! Their sealed marks agree too, which is what drift repair compares (`peer/src/runtime/drift.rs`),
//! and a joiner that missed updates for good is told apart there and pulled back. And they count
//! the same updates: a late one can change the screens' verdict on one already in.

use std::collections::BTreeSet;
use std::sync::Arc;

use gradswarm_core::aggregate::WeightedMean;
use gradswarm_core::drift::{Verdict, relative_distance, verdict};
use gradswarm_core::marks::pull_replica;
use gradswarm_core::outer::OuterConfig;
use gradswarm_core::synthetic::{SplitMix, sparse_around};
use gradswarm_core::{
    Accepted, Aggregator, Correction, DecodedUpdate, DirectionScreen, DriftSketch, DropReason,
    Marks, NormScreen, OuterOptimizer, RoundBook, StalenessPolicy, screen_round,
};

const LEN: usize = 4096;
const PEERS: usize = 8;
const ROUNDS: u64 = 40;

/// One replica: its book, θ, outer optimizer and marks, and the updates it counted.
struct Replica {
    book: RoundBook<Arc<DecodedUpdate>>,
    theta: Vec<f32>,
    outer: OuterOptimizer,
    marks: Marks,
    /// (round, sender) of every update counting now, as a peer's credit ledger counts them.
    counted: BTreeSet<(u64, Vec<u8>)>,
    /// Updates already in whose verdict a late one changed.
    recounted: usize,
}

/// Senders the screens dropped from a round, with why.
type Dropped = Vec<(Vec<u8>, DropReason)>;

/// A round's aggregate (None: nothing counts), and whose updates the screens dropped.
fn aggregate(entries: &[Accepted<Arc<DecodedUpdate>>]) -> (Option<Vec<f32>>, Dropped) {
    let screened = screen_round(
        entries,
        LEN,
        &NormScreen::default(),
        Some(&DirectionScreen::default()),
    );
    let dropped = screened
        .dropped
        .iter()
        .map(|&(i, reason)| (entries[i].peer.clone(), reason))
        .collect();
    if screened.kept.is_empty() {
        return (None, dropped);
    }
    (WeightedMean.aggregate(&screened.inputs()).ok(), dropped)
}

/// Why `peer`'s update was dropped, if it was.
fn why(dropped: &Dropped, peer: &[u8]) -> Option<DropReason> {
    dropped.iter().find(|(p, _)| p == peer).map(|&(_, r)| r)
}

impl Replica {
    fn new(outer: OuterConfig) -> Self {
        let book = RoundBook::new(StalenessPolicy::default(), 0);
        let marks = Marks::new(outer, book.horizon(), 64);
        Self {
            book,
            theta: vec![1.0; LEN],
            outer: OuterOptimizer::new(outer),
            marks,
            counted: BTreeSet::new(),
            recounted: 0,
        }
    }

    /// Closes the open round as a peer does: corrections first, then the round's aggregate,
    /// then the mark of the round that opens. Returns the rounds whose marks it sealed.
    fn close(&mut self) -> Vec<u64> {
        let closed = self.book.close();
        self.correct(&closed.corrections, closed.round);
        let (aggregate, dropped) = aggregate(&closed.accepted);
        if let Some(a) = aggregate {
            self.outer.apply(&mut self.theta, &a);
        }
        for a in &closed.accepted {
            if why(&dropped, &a.peer).is_none() {
                self.counted.insert((a.round, a.peer.clone()));
            }
        }
        let applied = self.book.applied_digest();
        self.marks.mark(
            self.book.round(),
            self.theta.clone(),
            self.outer.momentum(),
            applied,
        )
    }

    /// Takes in the late updates without closing a round (a peer past its last round).
    fn settle(&mut self) {
        let (corrections, _) = self.book.settle();
        let open = self.book.round();
        self.correct(&corrections, open);
    }

    /// Applies each correction, its round's aggregate after minus before, as of `applied_until`.
    fn correct(&mut self, corrections: &[Correction<Arc<DecodedUpdate>>], applied_until: u64) {
        for c in corrections {
            let ((after, dropped), (before, dropped_before)) =
                (aggregate(&c.after), aggregate(&c.before));
            let recount = c.recount(|p| why(&dropped_before, p), |p| why(&dropped, p));
            for a in recount.counted {
                self.recounted += usize::from(c.stayed().any(|s| s.peer == a.peer));
                self.counted.insert((a.round, a.peer.clone()));
            }
            for (a, _) in recount.uncounted {
                self.recounted += 1;
                self.counted.remove(&(a.round, a.peer.clone()));
            }
            let delta = match (after, before) {
                (Some(mut a), Some(b)) => {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x -= y);
                    Some(a)
                }
                (Some(a), None) => Some(a),
                (None, Some(b)) => Some(b.into_iter().map(|x| -x).collect()),
                (None, None) => None,
            };
            if let Some(delta) = &delta {
                self.outer
                    .apply_late(&mut self.theta, delta, applied_until - c.round);
            }
            self.marks
                .correct(c.round, delta.as_deref(), c.applied_change());
        }
    }

    /// The sketch and digest of this replica's sealed mark of `round`.
    fn sealed(&self, round: u64) -> (DriftSketch, u64) {
        let mark = self.marks.get(round).filter(|m| m.sealed).expect("sealed");
        (DriftSketch::of(&mark.params), mark.applied)
    }
}

/// How two replicas of one run compare: one takes every update in its round, the other a third
/// of them one to three rounds late.
struct Apart {
    /// How far apart they end (max |Δθ| over max |θ|).
    end: f64,
    /// The largest relative distance between their sealed marks of one round (on the sketch).
    sealed: f64,
    /// Rounds whose sealed marks were compared, and those with different digests.
    sealed_rounds: usize,
    sealed_digests_differ: usize,
    /// Rounds whose marks, as taken when the round opened, held different digests: where drift
    /// repair compared before marks were sealed, and could not.
    open_digests_differ: usize,
    /// Whether they end counting the same updates, and how many verdicts on updates already in
    /// late ones changed for the late replica.
    counted_alike: bool,
    recounted: usize,
}

/// Runs an on-time and a late replica for [`ROUNDS`] rounds of [`PEERS`] updates each.
fn apart(outer: OuterConfig, seed: u64) -> Apart {
    let mut rng = SplitMix::new(seed);
    let mut on_time = Replica::new(outer);
    let mut late = Replica::new(outer);
    // Updates held back from `late`: the round after whose close each arrives, and the update.
    type Held = (u64, u64, Vec<u8>, u64, Arc<DecodedUpdate>);
    let mut held: Vec<Held> = Vec::new();
    let deliver = |late: &mut Replica, h: &Held| {
        let (_, round, peer, digest, u) = h;
        late.book
            .offer(peer, *round, *round, 8, *digest, u.clone())
            .expect("within the horizon");
    };
    let mut out = Apart {
        end: 0.0,
        sealed: 0.0,
        sealed_rounds: 0,
        sealed_digests_differ: 0,
        open_digests_differ: 0,
        counted_alike: false,
        recounted: 0,
    };
    for round in 0..ROUNDS {
        let shared: Vec<f32> = (0..LEN).map(|_| rng.normal() as f32).collect();
        for p in 0..PEERS {
            let peer = vec![p as u8];
            let mut u = sparse_around(&mut rng, &shared, LEN / 100, 2.0);
            if p == PEERS - 1 {
                // A sign-flipper, which the direction screen drops where enough others are in.
                u.values.iter_mut().for_each(|v| *v = -*v);
            }
            let u = Arc::new(u);
            let digest = rng.next_u64();
            on_time
                .book
                .offer(&peer, round, round, 8, digest, u.clone())
                .expect("on time");
            if rng.next_u64().is_multiple_of(3) {
                held.push((round + rng.next_u64() % 3, round, peer, digest, u));
            } else {
                late.book
                    .offer(&peer, round, round, 8, digest, u)
                    .expect("in time");
            }
        }
        let sealed = on_time.close();
        assert_eq!(late.close(), sealed, "both seal the same rounds");
        if on_time.book.applied_digest() != late.book.applied_digest() {
            out.open_digests_differ += 1;
        }
        for &s in &sealed {
            let ((a, da), (b, db)) = (on_time.sealed(s), late.sealed(s));
            out.sealed_rounds += 1;
            out.sealed_digests_differ += usize::from(da != db);
            out.sealed = out
                .sealed
                .max(a.relative_distance(&b).unwrap_or(f64::INFINITY));
        }
        for h in held.iter().filter(|h| h.0 == round) {
            deliver(&mut late, h);
        }
        held.retain(|h| h.0 != round);
    }
    for h in &held {
        deliver(&mut late, h);
    }
    late.settle();
    let scale = on_time.theta.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let gap = on_time
        .theta
        .iter()
        .zip(&late.theta)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    out.end = f64::from(gap / scale);
    out.counted_alike = on_time.counted == late.counted;
    out.recounted = late.recounted;
    out
}

const OUTERS: [OuterConfig; 2] = [
    OuterConfig::Sgd { lr: 2.0 },
    OuterConfig::Nesterov {
        lr: 0.7,
        momentum: 0.9,
    },
];

#[test]
fn late_updates_land_where_they_would_have_on_time() {
    for seed in 0..5 {
        for outer in OUTERS {
            let apart = apart(outer, seed).end;
            assert!(apart < 1e-5, "seed {seed}, {outer:?}: {apart} apart");
        }
    }
}

/// A late update can change the screens' verdict on one already in its round (a flipper kept in
/// a round too small to screen is dropped once enough others come): the late replica counts
/// that change, and ends counting what the on-time one counts (`Correction::recount`).
#[test]
fn replicas_count_the_same_updates_however_late_they_came() {
    let mut recounted = 0;
    for seed in 0..5 {
        for outer in OUTERS {
            let a = apart(outer, seed);
            assert!(a.counted_alike, "seed {seed}, {outer:?}");
            recounted += a.recounted;
        }
    }
    assert!(recounted > 0, "no late update changed a verdict");
}

/// Drift repair compares sealed marks: replicas that took the same updates, however late, hold
/// the same ones (to rounding), while the marks as taken when their rounds opened differed in
/// nearly every round, digest and all.
#[test]
fn sealed_marks_agree_however_late_the_updates_came() {
    for seed in 0..5 {
        for outer in OUTERS {
            let a = apart(outer, seed);
            assert!(
                a.sealed_rounds >= ROUNDS as usize - 12,
                "{}",
                a.sealed_rounds
            );
            assert_eq!(a.sealed_digests_differ, 0, "seed {seed}, {outer:?}");
            assert!(
                a.sealed < 1e-5,
                "seed {seed}, {outer:?}: {} apart",
                a.sealed
            );
            assert!(
                a.open_digests_differ > ROUNDS as usize / 2,
                "the late replica was rarely behind: {}",
                a.open_digests_differ
            );
        }
    }
}

/// A joiner syncs to a replica's θ of round [`JOINED`] while updates of the round before are
/// still on their way; they reach it too late to count (its book starts at [`JOINED`]), so it
/// differs from the others for good. Meanwhile one peer's update reaches replica `b` a round late,
/// every round, so that no two of the three ever open a round with the same updates. Their sealed
/// marks agree all the same: where the joiner's digest matches the others', its sketch does not,
/// the others agree, and it adopts their replica, momentum included. Without marks corrected by late updates, `b`'s
/// sealed digests differ from `a`'s, the joiner hears one vote, and never moves (measured).
#[test]
fn a_joiner_that_missed_updates_for_good_is_pulled_to_the_others() {
    const JOINED: u64 = 12;
    const RUN: u64 = 60;
    const TOLERANCE: f64 = 1e-4;
    type Late = (Vec<u8>, u64, u64, Arc<DecodedUpdate>);
    let offer = |r: &mut Replica, (peer, round, digest, u): &Late| {
        r.book.offer(peer, *round, *round, 8, *digest, u.clone())
    };
    for outer in OUTERS {
        let mut rng = SplitMix::new(7);
        // a, b, and from JOINED on the joiner.
        let mut swarm = vec![Replica::new(outer), Replica::new(outer)];
        let (mut held, mut late_to_b): (Vec<Late>, Vec<Late>) = (Vec::new(), Vec::new());
        let (mut repairs, mut apart_before) = (0, 0.0);
        for round in 0..RUN {
            let shared: Vec<f32> = (0..LEN).map(|_| rng.normal() as f32).collect();
            for p in 0..PEERS {
                let u = Arc::new(sparse_around(&mut rng, &shared, LEN / 100, 2.0));
                let late = (vec![p as u8], round, rng.next_u64(), u);
                if round == JOINED - 1 && p < 2 {
                    // They reach everyone after the joiner synced.
                    held.push(late);
                    continue;
                }
                for (i, r) in swarm.iter_mut().enumerate() {
                    if i == 1 && p == PEERS - 1 {
                        continue;
                    }
                    offer(r, &late).expect("in time");
                }
                if p == PEERS - 1 {
                    late_to_b.push(late);
                }
            }
            let sealed: Vec<Vec<u64>> = swarm.iter_mut().map(Replica::close).collect();
            for late in late_to_b.drain(..) {
                offer(&mut swarm[1], &late).expect("a round late");
            }
            if round == JOINED - 1 {
                // The joiner installs a's state of round JOINED, as a peer does after a sync.
                let a = &swarm[0];
                let mut joiner = Replica {
                    book: RoundBook::new(StalenessPolicy::default(), JOINED),
                    theta: a.theta.clone(),
                    outer: a.outer.clone(),
                    marks: Marks::new(outer, a.book.horizon(), 64),
                    counted: BTreeSet::new(),
                    recounted: 0,
                };
                let theta = joiner.theta.clone();
                joiner.marks.mark(JOINED, theta, joiner.outer.momentum(), 0);
                for late in held.drain(..) {
                    assert!(
                        offer(&mut joiner, &late).is_err(),
                        "too stale for the joiner"
                    );
                    offer(&mut swarm[0], &late).expect("late");
                    offer(&mut swarm[1], &late).expect("late");
                }
                swarm.push(joiner);
            }
            if round == JOINED + 5 {
                apart_before = relative_distance(&swarm[2].theta, &swarm[0].theta);
            }
            // Each replica looks at each round it sealed as drift repair does: the votes of the
            // replicas that sealed it with the same digest.
            for (i, rounds) in sealed.iter().enumerate() {
                for &s in rounds {
                    let Some(mine) = swarm[i].marks.get(s).filter(|m| m.sealed).cloned() else {
                        continue;
                    };
                    let votes: Vec<(usize, DriftSketch, Arc<Vec<f32>>)> = (0..swarm.len())
                        .filter(|&k| k != i)
                        .filter_map(|k| {
                            let m = swarm[k].marks.get(s).filter(|m| m.sealed)?;
                            (m.applied == mine.applied)
                                .then(|| (k, DriftSketch::of(&m.params), m.params.clone()))
                        })
                        .collect();
                    let own = DriftSketch::of(&mine.params);
                    let others: Vec<&DriftSketch> = votes.iter().map(|v| &v.1).collect();
                    let adopt = votes.iter().find(|(_, sketch, _)| {
                        verdict(&own, sketch, &others, 3, TOLERANCE) == Verdict::Adopt
                    });
                    if let Some((k, _, theirs)) = adopt {
                        assert_eq!(i, 2, "replica {i} moved to {k}'s at round {s}");
                        let r = &mut swarm[i];
                        let since = r.book.round() - s;
                        pull_replica(&mut r.outer, &mut r.theta, &mine.params, theirs, 1.0, since);
                        r.marks.shift(s, &mine.params, theirs, 1.0);
                        repairs += 1;
                    }
                }
            }
        }
        // b takes the last round's late update in, as a peer past its last round does.
        swarm[1].settle();
        let end = relative_distance(&swarm[2].theta, &swarm[0].theta);
        eprintln!("{outer:?}: {apart_before:.2e} apart before, {end:.2e} after {repairs} repairs");
        assert!(apart_before > 10.0 * TOLERANCE, "{apart_before}");
        assert!(repairs >= 1, "the joiner never moved");
        // One repair closes the gap, Nesterov's momentum included: the marks carry it, and the
        // repair moves it with what its difference did to θ since.
        assert_eq!(repairs, 1, "{outer:?}");
        assert!(end < TOLERANCE, "{outer:?}: {end} apart");
        assert!(relative_distance(&swarm[0].theta, &swarm[1].theta) < 1e-6);
    }
}
