//! Replica drift: a small linear sketch of θ that heartbeats carry, so that peers can tell how far
//! apart two replicas are without sending θ, and the pairwise-averaging rule that pulls them back.
//!
//! Why a sketch and not only the checksum: replicas that took the same updates in a different
//! order (an update late at one peer and in time at another) differ in the last bits forever, so
//! their checksums never match again although they are one replica for every purpose. Fetching θ
//! whenever checksums differ would cost a full model per round. The sketch is a count sketch
//! (AMS): coordinate j adds `sign(j) · θ_j` to bucket `h(j)`, so the sketch of a difference is the
//! difference of sketches and `‖S(a) − S(b)‖²` is an unbiased estimate of `‖a − b‖²`
//! (relative standard deviation √(2/[`SKETCH_BUCKETS`]) ≈ 25%): last-bit noise reads as ~1e-7,
//! a missed update as ~1e-3, and only the latter is worth a state transfer.

use serde::{Deserialize, Serialize};

use crate::DecodeError;

/// Buckets of a [`DriftSketch`]: 128 bytes in every heartbeat.
pub const SKETCH_BUCKETS: usize = 32;

/// Buckets of a keyed sketch ([`DriftSketch::keyed`]): twice a heartbeat's, so that the distance
/// it reads is within ~18 % (one standard deviation) of the exact one, not ~25 %.
pub const KEYED_BUCKETS: usize = 64;

/// A count sketch of a parameter vector and its L2 norm.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftSketch {
    /// Bucket sums (empty: no sketch, e.g. before the first round).
    pub buckets: Vec<f32>,
    /// ‖θ‖₂, the scale relative distances are measured against.
    pub norm: f32,
}

/// A fixed 64-bit mix (SplitMix64's finalizer): bucket and sign of a coordinate index.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl DriftSketch {
    /// The sketch of `params` (sums in f64, so that rounding stays far below any drift that matters).
    pub fn of(params: &[f32]) -> Self {
        Self::summed(params, SKETCH_BUCKETS, |j| {
            (Self::bucket_of(j), Self::sign_of(j))
        })
    }

    /// A sketch of `params` under a secret `key`: buckets and signs drawn from the key, so that
    /// whoever does not know it cannot build a vector it does not see. How a peer checks a
    /// replica one holder served against another holder of the same replica: it asks the other
    /// for this sketch of its own under a key the server never learns, so that what hides from
    /// the public sketch ([`DriftSketch::of`]) shows here.
    pub fn keyed(params: &[f32], key: u64) -> Self {
        let salt = mix(key ^ 0xD1B5_4A32_D192_ED03);
        Self::summed(params, KEYED_BUCKETS, |j| {
            let h = mix(j as u64 ^ salt);
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            ((h as usize) % KEYED_BUCKETS, sign)
        })
    }

    /// The count sketch over `buckets` where coordinate `j` adds `sign · θ_j` to `bucket`, as
    /// `place(j)` says.
    fn summed(params: &[f32], buckets: usize, place: impl Fn(usize) -> (usize, f32)) -> Self {
        let mut sums = vec![0.0f64; buckets];
        let mut norm = 0.0f64;
        for (j, &v) in params.iter().enumerate() {
            let v = f64::from(v);
            let (bucket, sign) = place(j);
            sums[bucket] += f64::from(sign) * v;
            norm += v * v;
        }
        Self {
            buckets: sums.iter().map(|&s| s as f32).collect(),
            norm: norm.sqrt() as f32,
        }
    }

    /// The bucket coordinate `j` adds to. Public and fixed, so anyone can build a vector the
    /// sketch does not see (what cancels within a bucket): a sketch tells replicas apart, it
    /// does not vouch for one alone (a served replica's norm is checked too).
    pub fn bucket_of(j: usize) -> usize {
        (mix(j as u64) as usize) % SKETCH_BUCKETS
    }

    /// The sign (±1) coordinate `j` adds to its bucket with.
    pub fn sign_of(j: usize) -> f32 {
        if mix(j as u64) >> 63 == 0 { 1.0 } else { -1.0 }
    }

    /// Whether this is a real sketch (heartbeats before the first round carry none).
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Checks a sketch from the network: the right bucket count (or none), finite, a norm ≥ 0.
    pub fn check(&self) -> Result<(), DecodeError> {
        self.check_buckets(SKETCH_BUCKETS)
    }

    /// Checks a keyed sketch from the network ([`DriftSketch::keyed`]), as [`DriftSketch::check`].
    pub fn check_keyed(&self) -> Result<(), DecodeError> {
        self.check_buckets(KEYED_BUCKETS)
    }

    fn check_buckets(&self, buckets: usize) -> Result<(), DecodeError> {
        if !self.buckets.is_empty() && self.buckets.len() != buckets {
            return Err(DecodeError::BadHeader(
                "drift sketch has the wrong bucket count",
            ));
        }
        if let Some(at) = self.buckets.iter().position(|b| !b.is_finite()) {
            return Err(DecodeError::NonFinite { at });
        }
        if !self.norm.is_finite() || self.norm < 0.0 {
            return Err(DecodeError::BadHeader(
                "drift sketch norm is not a finite length",
            ));
        }
        Ok(())
    }

    /// Estimated ‖a − b‖ / ‖a‖ of the vectors behind two sketches; None when either is empty.
    pub fn relative_distance(&self, other: &Self) -> Option<f64> {
        if self.is_empty() || other.is_empty() || self.buckets.len() != other.buckets.len() {
            return None;
        }
        let d2: f64 = self
            .buckets
            .iter()
            .zip(&other.buckets)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        Some(d2.sqrt() / f64::from(self.norm).max(1e-30))
    }
}

/// Removes from `v` what the public sketch ([`DriftSketch::of`]) sees: afterwards every bucket of
/// `v`'s sketch sums to zero (within f32 rounding), so `θ + v` has θ's sketch. What a liar can
/// hide in a replica that only public fingerprints vouch for: the harness's attacker builds one
/// with it, and the tests show the keyed sketch sees it.
pub fn unseen_by_sketch(v: &mut [f32]) {
    let (mut sums, mut counts) = ([0.0f64; SKETCH_BUCKETS], [0usize; SKETCH_BUCKETS]);
    for (j, &x) in v.iter().enumerate() {
        let b = DriftSketch::bucket_of(j);
        sums[b] += f64::from(DriftSketch::sign_of(j)) * f64::from(x);
        counts[b] += 1;
    }
    // v_j − s_j · S_b / |b| takes S_b out of bucket b: Σ s_j (v_j − s_j S_b/|b|) = S_b − S_b.
    for (j, x) in v.iter_mut().enumerate() {
        let b = DriftSketch::bucket_of(j);
        let mean = sums[b] / counts[b].max(1) as f64;
        *x -= (f64::from(DriftSketch::sign_of(j)) * mean) as f32;
    }
}

/// Exact ‖a − b‖ / ‖a‖ (f64 sums); vectors of different lengths are infinitely far apart.
pub fn relative_distance(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut d2, mut n2) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d2 += (f64::from(x) - f64::from(y)).powi(2);
        n2 += f64::from(x).powi(2);
    }
    d2.sqrt() / n2.sqrt().max(1e-30)
}

/// What a replica does about another replica of the same round that looks drifted from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: it is close enough, or no majority stands behind it.
    Keep,
    /// Move all the way to it: a majority of the round's replicas agree with it, and not with us.
    Adopt,
    /// Meet halfway: the replicas are split in two equal camps, ours and its (two peers, say).
    Halfway,
}

/// The sizes of `partner`'s camp and ours among one round's replicas: how many of `others`
/// (`partner` included) lie within `tolerance` of it, and of ours (ours counted).
pub fn camps(
    mine: &DriftSketch,
    partner: &DriftSketch,
    others: &[&DriftSketch],
    tolerance: f64,
) -> (usize, usize) {
    let near =
        |a: &DriftSketch, b: &DriftSketch| a.relative_distance(b).is_some_and(|d| d <= tolerance);
    let with = |x: &DriftSketch| others.iter().filter(|o| near(x, o)).count();
    (with(partner), 1 + with(mine))
}

/// Decides, from the sketches of one round's replicas, whether this replica (`mine`) should move
/// toward `partner`'s: all the way to a majority's, or, once every voter has spoken and the two
/// camps together are a majority, all the way to a larger camp and halfway to an equal one.
/// `others` are the sketches heard for that round besides ours (`partner`'s included); `voters`
/// is how many replicas should have spoken (this one included), so that silence counts against
/// moving. A replica follows agreement, never one peer: with at most a quarter of the voters
/// hostile, liars never form the majority that [`Verdict::Adopt`] needs, nor a camp at least as
/// large as an honest one that together with it is a majority.
pub fn verdict(
    mine: &DriftSketch,
    partner: &DriftSketch,
    others: &[&DriftSketch],
    voters: usize,
    tolerance: f64,
) -> Verdict {
    let near =
        |a: &DriftSketch, b: &DriftSketch| a.relative_distance(b).is_some_and(|d| d <= tolerance);
    if partner.relative_distance(mine).is_none() || near(mine, partner) {
        return Verdict::Keep;
    }
    let voters = voters.max(others.len() + 1);
    let (with_partner, with_me) = camps(mine, partner, others, tolerance);
    let spoken = others.len() + 1 >= voters;
    if 2 * with_partner > voters {
        Verdict::Adopt
    } else if spoken && 2 * (with_partner + with_me) > voters && with_partner >= with_me {
        // Every voter has spoken and no camp is a majority, but the two camps together are one.
        // A larger camp is followed all the way: halfway left half the gap, which the larger
        // camp, seeing us as the smaller, never closed (a joiner and a replica of eight under
        // two liars whose replicas agree with nobody, bench/README.md "Sealed marks"). Equal
        // camps meet halfway (two peers; three replicas each apart), each side moving half. A
        // quarter of the voters can be neither: ours would have to be smaller than a quarter
        // and the two together more than half.
        if with_partner > with_me {
            Verdict::Adopt
        } else {
            Verdict::Halfway
        }
    } else {
        Verdict::Keep
    }
}

/// How many times what the fingerprints estimate a served replica's exact distance from ours may
/// be (plus the tolerance): a 32-bucket sketch reads within ~25 % (one standard deviation).
pub const SERVED_DISTANCE_MARGIN: f64 = 2.0;

/// How far (relative) a served replica's norm may lie from its fingerprint's: the two are of
/// the same vector, so only rounding separates them.
pub const SERVED_NORM_TOLERANCE: f64 = 0.02;

/// Checks a replica `theirs` a partner served for drift repair against the fingerprints the
/// verdict was made on, `their_print` and this replica's own (`mine`, `my_print`), and returns
/// its exact distance from ours. The checksum binds what is served to what its sender signed,
/// but a liar signs what it likes: a fingerprint honest to the sketch can come with a vector the
/// public sketch does not see ([`unseen_by_sketch`]). Its norm would show it, or the distance,
/// which the sketch estimated: so a replica whose norm is not its fingerprint's, or which lies
/// further from ours than [`SERVED_DISTANCE_MARGIN`] times the estimate, is refused. What can
/// still hide is bounded by the drift being repaired (≤ √(margin² − 1) ≈ 1.7 times it).
pub fn check_served(
    mine: &[f32],
    theirs: &[f32],
    my_print: &DriftSketch,
    their_print: &DriftSketch,
    tolerance: f64,
) -> Result<f64, &'static str> {
    let norm = theirs
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt();
    let signed = f64::from(their_print.norm);
    if (norm - signed).abs() > SERVED_NORM_TOLERANCE * signed.max(1e-30) {
        return Err("its norm is not its fingerprint's");
    }
    let estimate = my_print
        .relative_distance(their_print)
        .ok_or("no fingerprint to check it against")?;
    let exact = relative_distance(mine, theirs);
    if exact > SERVED_DISTANCE_MARGIN * estimate + tolerance {
        return Err("it lies further from ours than its fingerprint says");
    }
    Ok(exact)
}

/// Moves this replica toward another, applied late: `theta += share · (theirs_then − mine_then)`.
///
/// `mine_then` and `theirs_then` are both replicas at the same earlier round; `theta` is this
/// replica now. With `share` 1 (adopting a majority's replica) the difference at that round
/// vanishes; with ½ on both sides of a pair it vanishes too. Updates applied since (the same on
/// both) carry over unchanged: rounds need not stop for it.
pub fn pull_toward(theta: &mut [f32], mine_then: &[f32], theirs_then: &[f32], share: f32) {
    for ((t, &m), &o) in theta.iter_mut().zip(mine_then).zip(theirs_then) {
        *t += share * (o - m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic;

    #[test]
    fn the_sketch_tells_real_drift_from_rounding_noise() {
        let a = synthetic::gradient_like(100_000, 7);
        let norm = relative_distance(&a, &vec![0.0; a.len()]);
        assert!((norm - 1.0).abs() < 1e-12);
        // Last-bit noise: one ulp on every coordinate.
        let noisy: Vec<f32> = a.iter().map(|v| f32::from_bits(v.to_bits() ^ 1)).collect();
        // A real drift: a tenth of an update's worth on 1% of the coordinates.
        let mut drifted = a.clone();
        for (j, v) in drifted.iter_mut().enumerate().step_by(100) {
            *v += 0.3 * a[(j * 7) % a.len()];
        }
        let sa = DriftSketch::of(&a);
        let noise = sa.relative_distance(&DriftSketch::of(&noisy)).unwrap();
        let exact = relative_distance(&a, &drifted);
        let estimate = sa.relative_distance(&DriftSketch::of(&drifted)).unwrap();
        assert!(noise < 1e-6, "rounding noise read as {noise}");
        assert!(exact > 1e-2, "the drift is {exact}");
        assert!(
            estimate > exact / 3.0 && estimate < exact * 3.0,
            "estimate {estimate} of {exact}"
        );
        assert_eq!(sa.relative_distance(&DriftSketch::default()), None);
    }

    #[test]
    fn both_halves_of_a_pair_meet_and_keep_later_updates() {
        let mine = synthetic::gradient_like(1000, 1);
        let theirs = synthetic::gradient_like(1000, 2);
        let later = synthetic::gradient_like(1000, 3);
        // Both applied the same update since the round they compare.
        let mut a: Vec<f32> = mine.iter().zip(&later).map(|(m, l)| m + l).collect();
        let mut b: Vec<f32> = theirs.iter().zip(&later).map(|(t, l)| t + l).collect();
        pull_toward(&mut a, &mine, &theirs, 0.5);
        pull_toward(&mut b, &theirs, &mine, 0.5);
        assert!(relative_distance(&a, &b) < 1e-6);
        let mid: Vec<f32> = mine
            .iter()
            .zip(&theirs)
            .zip(&later)
            .map(|((m, t), l)| 0.5 * (m + t) + l)
            .collect();
        assert!(relative_distance(&mid, &a) < 1e-6);
    }

    #[test]
    fn replicas_follow_a_majority_never_one_peer() {
        let honest = DriftSketch::of(&synthetic::gradient_like(1000, 1));
        let other = DriftSketch::of(&synthetic::gradient_like(1000, 2));
        let tol = 1e-4;
        // Four replicas, one liar: the liar is one voice against three.
        assert_eq!(
            verdict(&honest, &other, &[&other, &honest, &honest], 4, tol),
            Verdict::Keep
        );
        // We are the odd one out: the three others agree with the partner.
        assert_eq!(
            verdict(&other, &honest, &[&honest, &honest, &honest], 4, tol),
            Verdict::Adopt
        );
        // Only the partner has spoken yet, of four: silence counts against moving.
        assert_eq!(verdict(&other, &honest, &[&honest], 4, tol), Verdict::Keep);
        // Two replicas that drifted apart meet halfway, as pairwise averaging did.
        assert_eq!(
            verdict(&honest, &other, &[&other], 2, tol),
            Verdict::Halfway
        );
        // Of three, only the drifted one has spoken: the silent one may agree with us.
        assert_eq!(verdict(&honest, &other, &[&other], 3, tol), Verdict::Keep);
        // Three replicas all apart: no majority, but pairs meet halfway.
        let third = DriftSketch::of(&synthetic::gradient_like(1000, 3));
        assert_eq!(
            verdict(&honest, &other, &[&other, &third], 3, tol),
            Verdict::Halfway
        );
        // Of six, all spoken: a camp of three against ours of one (two more elsewhere, liars
        // whose replicas agree with nobody) is followed all the way, not halfway.
        assert_eq!(
            verdict(
                &other,
                &honest,
                &[&honest, &honest, &honest, &third, &third],
                6,
                tol
            ),
            Verdict::Adopt
        );
        // A liar alone among four replicas all apart is no such pair.
        assert_eq!(
            verdict(&honest, &other, &[&other, &third, &third], 4, tol),
            Verdict::Keep
        );
        // Close enough, or no sketch: nothing to do.
        assert_eq!(verdict(&honest, &honest, &[&honest], 2, tol), Verdict::Keep);
        assert_eq!(
            verdict(&honest, &DriftSketch::default(), &[], 2, tol),
            Verdict::Keep
        );
    }

    /// A served replica passes against its fingerprint when it is the replica fingerprinted,
    /// and not when it carries a vector the sketch does not see, large (its norm shows it) or
    /// not (its distance from ours does).
    #[test]
    fn a_served_replica_must_be_its_fingerprints() {
        let mine = synthetic::gradient_like(50_000, 21);
        let step = synthetic::gradient_like(50_000, 22);
        let scale = |v: &[f32], by: f32| -> Vec<f32> { v.iter().map(|x| x * by).collect() };
        // Theirs lies 4 % from ours.
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let d = scale(&step, (0.04 * norm(&mine) / norm(&step)) as f32);
        let theirs: Vec<f32> = mine.iter().zip(&d).map(|(m, x)| m + x).collect();
        let (my_print, their_print) = (DriftSketch::of(&mine), DriftSketch::of(&theirs));
        let exact = check_served(&mine, &theirs, &my_print, &their_print, 1e-4).expect("honest");
        assert!((exact - 0.04).abs() < 1e-3, "{exact}");
        for (hidden, why) in [(0.3, "norm"), (0.1, "further")] {
            let mut v = synthetic::gradient_like(50_000, 23);
            unseen_by_sketch(&mut v);
            let v = scale(&v, (hidden * norm(&mine) / norm(&v)) as f32);
            let lie: Vec<f32> = theirs.iter().zip(&v).map(|(t, x)| t + x).collect();
            // The sketch cannot tell the lie from theirs.
            assert!(
                their_print
                    .relative_distance(&DriftSketch::of(&lie))
                    .unwrap()
                    < 1e-3
            );
            let refused = check_served(&mine, &lie, &my_print, &their_print, 1e-4);
            assert!(
                refused.is_err_and(|e| e.contains(why)),
                "{hidden}: {refused:?}"
            );
        }
    }

    /// A vector hidden from the public sketch (what a liar's replica can carry past public
    /// fingerprints) reads as nothing there and as its true size under a key.
    #[test]
    fn a_keyed_sketch_sees_what_hides_from_the_public_one() {
        let theta = synthetic::gradient_like(50_000, 11);
        let mut hidden = synthetic::gradient_like(50_000, 12);
        unseen_by_sketch(&mut hidden);
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let scale = (0.3 * norm(&theta) / norm(&hidden)) as f32;
        let poisoned: Vec<f32> = theta
            .iter()
            .zip(&hidden)
            .map(|(t, h)| t + scale * h)
            .collect();
        let exact = relative_distance(&theta, &poisoned);
        assert!((exact - 0.3).abs() < 0.01, "hidden vector of {exact}");
        let public = DriftSketch::of(&theta)
            .relative_distance(&DriftSketch::of(&poisoned))
            .unwrap();
        assert!(public < 1e-4, "the public sketch read {public}");
        for key in [1, 2, 0xdead_beef, u64::MAX] {
            let keyed = DriftSketch::keyed(&theta, key)
                .relative_distance(&DriftSketch::keyed(&poisoned, key))
                .unwrap();
            assert!(
                keyed > 0.15 && keyed < 0.6,
                "key {key} read {keyed} of {exact}"
            );
            assert_eq!(DriftSketch::keyed(&theta, key).check_keyed(), Ok(()));
        }
        // One key, one sketch; another key, other buckets.
        assert_eq!(DriftSketch::keyed(&theta, 5), DriftSketch::keyed(&theta, 5));
        assert_ne!(DriftSketch::keyed(&theta, 5), DriftSketch::keyed(&theta, 6));
        assert!(DriftSketch::keyed(&theta, 5).check().is_err());
    }

    #[test]
    fn hostile_sketches_are_refused() {
        let good = DriftSketch::of(&[1.0, -2.0, 3.0]);
        assert_eq!(good.check(), Ok(()));
        assert_eq!(DriftSketch::default().check(), Ok(()));
        let short = DriftSketch {
            buckets: vec![0.0; 3],
            norm: 1.0,
        };
        assert!(short.check().is_err());
        let mut nan = good.clone();
        nan.buckets[5] = f32::NAN;
        assert_eq!(nan.check(), Err(DecodeError::NonFinite { at: 5 }));
        let mut negative = good;
        negative.norm = -1.0;
        assert!(negative.check().is_err());
    }
}
