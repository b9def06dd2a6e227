//! Replicas that end a run holding the same updates end with the same θ, however late some of
//! those updates reached them: the round book, both screens, the weighted mean and the outer
//! optimizer's late corrections together, as a peer runs them (`peer/src/runtime/round.rs`).

use std::sync::Arc;

use gradswarm_core::aggregate::WeightedMean;
use gradswarm_core::outer::OuterConfig;
use gradswarm_core::synthetic::{SplitMix, sparse_around};
use gradswarm_core::{
    Accepted, Aggregator, Correction, DecodedUpdate, DirectionScreen, NormScreen, OuterOptimizer,
    RoundBook, StalenessPolicy, screen_round,
};

const LEN: usize = 4096;
const PEERS: usize = 8;
const ROUNDS: u64 = 40;

/// One replica: its book, θ and outer optimizer.
struct Replica {
    book: RoundBook<Arc<DecodedUpdate>>,
    theta: Vec<f32>,
    outer: OuterOptimizer,
}

fn aggregate(entries: &[Accepted<Arc<DecodedUpdate>>]) -> Option<Vec<f32>> {
    let screened = screen_round(
        entries,
        LEN,
        &NormScreen::default(),
        Some(&DirectionScreen::default()),
    );
    if screened.kept.is_empty() {
        return None;
    }
    WeightedMean.aggregate(&screened.inputs()).ok()
}

impl Replica {
    fn new(outer: OuterConfig) -> Self {
        Self {
            book: RoundBook::new(StalenessPolicy::default(), 0),
            theta: vec![1.0; LEN],
            outer: OuterOptimizer::new(outer),
        }
    }

    /// Closes the open round as a peer does: corrections first, then the round's aggregate.
    fn close(&mut self) {
        let closed = self.book.close();
        self.correct(&closed.corrections, closed.round);
        if let Some(a) = aggregate(&closed.accepted) {
            self.outer.apply(&mut self.theta, &a);
        }
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
            let delta = match (aggregate(&c.after), aggregate(&c.before)) {
                (Some(mut a), Some(b)) => {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x -= y);
                    a
                }
                (Some(a), None) => a,
                (None, Some(b)) => b.into_iter().map(|x| -x).collect(),
                (None, None) => continue,
            };
            self.outer
                .apply_late(&mut self.theta, &delta, applied_until - c.round);
        }
    }
}

/// Runs two replicas, one taking every update in its round and one a third of them one to three
/// rounds late; returns how far apart they end (max |Δθ| over max |θ|).
fn apart(outer: OuterConfig, seed: u64) -> f64 {
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
    for round in 0..ROUNDS {
        let shared: Vec<f32> = (0..LEN).map(|_| rng.normal() as f32).collect();
        for p in 0..PEERS {
            let peer = vec![p as u8];
            let u = Arc::new(sparse_around(&mut rng, &shared, LEN / 100, 2.0));
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
        on_time.close();
        late.close();
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
    f64::from(gap / scale)
}

#[test]
fn late_updates_land_where_they_would_have_on_time() {
    for seed in 0..5 {
        for outer in [
            OuterConfig::Sgd { lr: 2.0 },
            OuterConfig::Nesterov {
                lr: 0.7,
                momentum: 0.9,
            },
        ] {
            let apart = apart(outer, seed);
            assert!(apart < 1e-5, "seed {seed}, {outer:?}: {apart} apart");
        }
    }
}
