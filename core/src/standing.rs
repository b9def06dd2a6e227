//! A peer's standing: what its updates did over many rounds, so that liars who keep pushing one
//! way together lose their weight, though each of their updates passed the round's screens.
//!
//! Why: the screens judge one round at a time, and within a round an omniscient liar is as
//! plausible as a noisy honest update (bench/README.md, "Crafted updates"). It sends the negated
//! sum of the half of the round's honest updates that point most along their sum, at an honest
//! norm: each honest update is mostly noise, so at 64 peers sixteen such liars outweighed the
//! honest signal and broadcast never reached the target. What no liar can hide is *consistency*:
//! to move θ somewhere the honest peers do not, liars must push the same way round after round,
//! while honest noise averages out. So each peer's counted updates over the last
//! [`StandingConfig::window`] sealed rounds are kept as count sketches ([`SKETCH_DIM`] buckets);
//! each peer's mean deviation from its rounds' means goes through the spectral filter of robust
//! mean estimation (Diakonikolas et al. 2017, "Being robust (in high dimensions) can be
//! practical"), which, while the points spread along one direction far more than one point's own
//! deviation explains, takes weight from the points furthest along it; and a peer whose mean
//! update lies beyond the swarm's along such a direction by more than [`CUT`] is weighed out of
//! the round ([`Factors`]).
//!
//! - Honest averages are near-orthogonal deviations around one mean (their noise), so their
//!   spread has no direction much larger than one peer's: nothing is filtered. A lone peer that
//!   deviates is at most one update of the round, which the screens already bound.
//! - Colluding liars share their deviation (that is how they add up), and their weighted spread
//!   along it grows with their number and their consistency: they are filtered, whatever decoys
//!   they add elsewhere (a decoy adds spread; it cannot hide the shared part).
//! - A liar that keeps under the cut must keep its consistent push within about twice the
//!   honest spread of a mean over the window, which shrinks as `1/√rounds`: little, where the
//!   bound of the round's screens alone was the whole clip. Mixing its own update with a share
//!   of the lie did not get past it; colluders that watch their verdicts and push hard through
//!   the rounds a verdict takes to come cost the most measured (1.6–1.7× the rounds in the
//!   simulator, bench/README.md "Standing").
//!
//! It sees only what replicas agree on (each round's counted updates, once the round is sealed:
//! no late update can change it), iterates in a fixed order with f64 sums, and so gives every
//! replica holding the same rounds the same weights. A replica that missed a round (a joiner)
//! differs for a while; drift repair brings its θ back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::rng::splitmix64;
use crate::{Accepted, DecodedUpdate, Screened};

/// Buckets of the count sketch a peer's updates are averaged in. Honest averages' noise is
/// near-orthogonal in it as in θ (cosines ~1/√1024 ≈ 0.03), so n peers' spread stays near one
/// peer's (Marchenko–Pastur: (1 + √(n/1024))², 2.25 at 256 peers), which the filter allows for.
pub const SKETCH_DIM: usize = 1024;

/// Updates of one round taken in at most (4 KiB each): identities are free, and a flood of them
/// must not grow an honest peer's memory without bound.
pub const MAX_PER_ROUND: usize = 1024;

/// Peers judged in a round at most: those with the most rounds in the window. The filter's work
/// is about `MAX_PASSES × n² × SKETCH_DIM`, ~0.4 s at this many on one core.
pub const MAX_JUDGED: usize = 256;

/// Passes of the spectral filter at most: each one finds a direction colluders share.
pub const MAX_PASSES: usize = 8;

/// How standing is judged.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandingConfig {
    /// Sealed rounds a peer's average is taken over: the last this many. A finite window, not
    /// a decaying average, so that a replica that joined later holds exactly the others'
    /// standing once it has sealed this many rounds itself, and their weights agree again.
    pub window: usize,
    /// The filter acts while the peers' spread along one direction exceeds this many times the
    /// upper-quartile spread of one peer, and times what noise alone spreads at their number.
    pub ratio: f64,
    /// Fewer peers than this are not judged (of two that differ, which is wrong?).
    pub min_peers: usize,
}

impl Default for StandingConfig {
    fn default() -> Self {
        Self {
            window: 16,
            ratio: 3.0,
            min_peers: 5,
        }
    }
}

/// A peer's sums over a window's rounds: of its updates' deviations from their rounds' means, of
/// its updates, and how many.
struct Sums {
    deviation: Vec<f64>,
    update: Vec<f64>,
    count: f64,
}

/// One round's counted updates as standing holds them: each sender and its update's sketch.
pub type RoundSketches = Vec<(Vec<u8>, Vec<f32>)>;

/// The peers' updates over recent sealed rounds, and the weights the filter gives them.
#[derive(Clone, Debug)]
pub struct Standing {
    config: StandingConfig,
    /// By round: each counted update's sender and sketch (the last two windows of rounds, so
    /// that rounds a lag behind the newest still have a whole window).
    rounds: BTreeMap<u64, RoundSketches>,
}

/// A peer further than this beyond the swarm along a direction the filter acted along, in squared
/// distance over the median peer's deviation ([`distances`]: 4 is twice as far), is weighed out;
/// any other keeps its whole weight. A cut, not a weight that falls with distance, so that
/// replicas whose standings differ a little (a joiner's, which missed a late update of a round
/// before it joined) still weigh alike. Measured: honest peers at most 1.2, crafted liars 8–64
/// in the adversity run and over 300 in `colluding_liars_lose_their_weight_and_the_round_goes_
/// forward_again`.
pub const CUT: f64 = 4.0;

/// The filter's verdict on each peer it judged: its squared distance from the filtered mean
/// over the median peer's ([`distances`]). Peers it did not name keep their whole weight.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Factors(BTreeMap<Vec<u8>, f32>);

impl Factors {
    /// `peer`'s weight factor: 0 if its distance is beyond [`CUT`], else 1.
    pub fn of(&self, peer: &[u8]) -> f32 {
        match self.0.get(peer) {
            Some(&d) if f64::from(d) > CUT => 0.0,
            _ => 1.0,
        }
    }

    /// The peers weighed out, with their distances.
    pub fn reduced(&self) -> impl Iterator<Item = (&[u8], f32)> {
        self.0
            .iter()
            .filter(|(_, d)| f64::from(**d) > CUT)
            .map(|(p, d)| (p.as_slice(), *d))
    }

    /// Every judged peer's distance, weighed out or not (for logs).
    pub fn distances(&self) -> impl Iterator<Item = (&[u8], f32)> {
        self.0.iter().map(|(p, d)| (p.as_slice(), *d))
    }

    /// Multiplies the weight of each of a round's kept updates by its sender's factor.
    pub fn weigh<T>(&self, accepted: &[Accepted<T>], screened: &mut Screened) {
        if self.reduced().next().is_none() {
            return;
        }
        for ((weight, _), &(i, _)) in screened.kept.iter_mut().zip(&screened.sources) {
            if let Some(a) = accepted.get(i) {
                *weight *= self.of(&a.peer);
            }
        }
    }
}

impl Standing {
    /// Nobody judged yet.
    pub fn new(config: StandingConfig) -> Self {
        Self {
            config,
            rounds: BTreeMap::new(),
        }
    }

    /// Forgets every round (a state sync with none).
    pub fn clear(&mut self) {
        self.rounds.clear();
    }

    /// Rounds held.
    pub fn len(&self) -> usize {
        self.rounds.len()
    }

    /// Whether no round is held.
    pub fn is_empty(&self) -> bool {
        self.rounds.is_empty()
    }

    /// Takes in `round`: each update that counted in it (`screened`, of the round's
    /// `accepted`), scaled as it counted. Rounds two windows older than the newest leave.
    pub fn observe<T: std::ops::Deref<Target = DecodedUpdate>>(
        &mut self,
        round: u64,
        accepted: &[Accepted<T>],
        screened: &Screened,
    ) {
        let sketches = screened
            .sources
            .iter()
            .take(MAX_PER_ROUND)
            .filter_map(|&(i, scale)| {
                let a = accepted.get(i)?;
                let mut sketch = vec![0.0; SKETCH_DIM];
                sketch_into(&a.payload, scale, &mut sketch);
                Some((a.peer.clone(), sketch))
            })
            .collect();
        self.insert(round, sketches);
    }

    /// Takes in a round's sketches as another replica held them (a synced state's).
    pub fn insert(&mut self, round: u64, sketches: RoundSketches) {
        self.rounds.insert(round, sketches);
        let keep = 2 * self.config.window.max(1) as u64;
        if let Some(&newest) = self.rounds.keys().next_back() {
            self.rounds = self.rounds.split_off(&newest.saturating_sub(keep - 1));
        }
    }

    /// The rounds held, oldest first: what a joiner takes with the state it syncs.
    pub fn rounds(&self) -> impl DoubleEndedIterator<Item = (u64, &RoundSketches)> {
        self.rounds.iter().map(|(r, s)| (*r, s))
    }

    /// The weight factor of each peer: the spectral filter over the peers' averages.
    /// Over the last window of rounds up to `upto`: a replica aggregating round r judges by the
    /// rounds it had sealed then, so that every replica holding them weighs alike.
    pub fn factors(&self, upto: u64) -> Factors {
        let from = (upto + 1).saturating_sub(self.config.window.max(1) as u64);
        // Each peer's mean deviation from its rounds' means, over the rounds it counted in,
        // weighted by how many (a peer that counted in fewer rounds is noisier, and weighs less
        // in the filter's mean). Deviations, not the updates themselves: the swarm's direction
        // moves as training goes, so a joiner's updates, all from the window's later rounds,
        // pointed elsewhere than the others' and it was weighed out (in 7 to 12 of 27 rounds of
        // the adversity run), though it pushed where everyone did in each round.
        let mut sums: BTreeMap<&[u8], Sums> = BTreeMap::new();
        for (_, round) in self.rounds.range(from..=upto) {
            if round.is_empty() {
                continue;
            }
            let mut mean = vec![0.0f64; SKETCH_DIM];
            for (_, sketch) in round {
                mean.iter_mut()
                    .zip(sketch)
                    .for_each(|(m, &x)| *m += f64::from(x) / round.len() as f64);
            }
            for (peer, sketch) in round {
                let sums = sums.entry(peer.as_slice()).or_insert_with(|| Sums {
                    deviation: vec![0.0; SKETCH_DIM],
                    update: vec![0.0; SKETCH_DIM],
                    count: 0.0,
                });
                for ((x, m), (d, u)) in sketch
                    .iter()
                    .zip(&mean)
                    .zip(sums.deviation.iter_mut().zip(sums.update.iter_mut()))
                {
                    *d += f64::from(*x) - m;
                    *u += f64::from(*x);
                }
                sums.count += 1.0;
            }
        }
        let mut peers: Vec<(&[u8], Sums)> = sums.into_iter().collect();
        if peers.len() > MAX_JUDGED {
            // The peers with the most rounds (then by id): identities are free, and the filter's
            // work grows with the square of the peers judged.
            peers.sort_by(|a, b| b.1.count.total_cmp(&a.1.count).then(a.0.cmp(b.0)));
            peers.truncate(MAX_JUDGED);
            peers.sort_by(|a, b| a.0.cmp(b.0));
        }
        let n = peers.len();
        if n < self.config.min_peers.max(3) {
            return Factors::default();
        }
        let mean = |v: &[f64], count: f64| v.iter().map(|s| s / count).collect::<Vec<f64>>();
        let points: Vec<Vec<f64>> = peers
            .iter()
            .map(|(_, s)| mean(&s.deviation, s.count))
            .collect();
        let updates: Vec<Vec<f64>> = peers
            .iter()
            .map(|(_, s)| mean(&s.update, s.count))
            .collect();
        let start: Vec<f64> = peers.iter().map(|(_, s)| s.count).collect();
        let filtered = filter(&points, &start, self.config.ratio);
        if filtered.directions.is_empty() {
            return Factors::default();
        }
        let distances = distances(&points, &updates, &start, &filtered);
        Factors(
            peers
                .iter()
                .zip(distances)
                .map(|((p, _), d)| (p.to_vec(), d as f32))
                .collect(),
        )
    }
}

/// Adds `scale · update`'s count sketch into `out`: coordinate j goes to one of [`SKETCH_DIM`]
/// buckets with a sign, both from a fixed hash of j, the same at every replica.
fn sketch_into(update: &DecodedUpdate, scale: f32, out: &mut [f32]) {
    let mut add = |j: u64, v: f32| {
        let h = splitmix64(j ^ 0x5374_616e_6469_6e67);
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        out[(h % SKETCH_DIM as u64) as usize] += sign * scale * v;
    };
    match &update.indices {
        Some(ix) => ix
            .iter()
            .zip(&update.values)
            .for_each(|(&j, &v)| add(u64::from(j), v)),
        None => update
            .values
            .iter()
            .enumerate()
            .for_each(|(j, &v)| add(j as u64, v)),
    }
}

/// What the soft spectral filter left: each point's weight, and the directions it acted along
/// (unit vectors in the points' space), each with every point's part in it.
struct Filtered {
    weights: Vec<f64>,
    directions: Vec<Direction>,
}

/// A direction the filter acted along: `Σ_i part_i`, each point's part `√w_i α_i dev_i / √λ`.
struct Direction {
    sum: Vec<f64>,
    parts: Vec<Vec<f64>>,
}

/// The soft spectral filter: the weights left to `points` (starting at `start`) once their
/// weighted spread along its largest direction is at most `ratio` times the upper quartile of
/// one point's weighted squared deviation (and times the spread noise alone shows at this many
/// points). Each pass takes from each point a share of its weight
/// equal to its squared distance along that direction over the furthest one's.
fn filter(points: &[Vec<f64>], start: &[f64], ratio: f64) -> Filtered {
    let n = points.len();
    let mut w = start.to_vec();
    let mut directions = Vec::new();
    // The largest spread n points of pure noise show in SKETCH_DIM dimensions, over one point's
    // (Marchenko–Pastur's edge, (1 + √(n/d))²): without it, 256 honest simulated peers set the
    // filter off and 4 % of them were weighed out each round (84 → 91 rounds to the target).
    let noise_edge = (1.0 + (n as f64 / SKETCH_DIM as f64).sqrt()).powi(2);
    // Each pass zeroes at least the furthest point, and a cluster of colluders goes in one pass
    // (they share their direction): a few passes catch a few clusters.
    for _ in 0..MAX_PASSES {
        let Some(mean) = weighted_mean(points, &w) else {
            break;
        };
        let dev: Vec<Vec<f64>> = points.iter().map(|p| minus(p, &mean)).collect();
        // Unweighted inner products of the deviations, and the weighted Gram matrix.
        let mut dots = vec![vec![0.0; n]; n];
        for i in 0..n {
            for j in i..n {
                let d = dot(&dev[i], &dev[j]);
                dots[i][j] = d;
                dots[j][i] = d;
            }
        }
        let root: Vec<f64> = w.iter().map(|x| x.max(0.0).sqrt()).collect();
        let gram: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|j| root[i] * root[j] * dots[i][j]).collect())
            .collect();
        let mut own: Vec<f64> = (0..n).map(|i| gram[i][i]).collect();
        own.sort_unstable_by(f64::total_cmp);
        let quartile = own[(n - 1) * 3 / 4];
        let (lambda, alpha) = top_eigen(&gram);
        if lambda <= ratio * noise_edge * quartile || lambda <= 0.0 {
            break;
        }
        // Each point's deviation along the top direction v = Σ √w_i α_i dev_i / √λ.
        let scores: Vec<f64> = (0..n)
            .map(|j| {
                let p: f64 = (0..n).map(|i| root[i] * alpha[i] * dots[i][j]).sum();
                p * p / lambda
            })
            .collect();
        let top = scores.iter().copied().fold(0.0, f64::max);
        if top <= 0.0 {
            break;
        }
        let parts: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let c = root[i] * alpha[i] / lambda.sqrt();
                dev[i].iter().map(|d| c * d).collect()
            })
            .collect();
        let mut sum = vec![0.0; mean.len()];
        for part in &parts {
            sum.iter_mut().zip(part).for_each(|(s, x)| *s += x);
        }
        directions.push(Direction { sum, parts });
        w.iter_mut()
            .zip(&scores)
            .for_each(|(wi, s)| *wi *= (1.0 - s / top).max(0.0));
    }
    Filtered {
        weights: w,
        directions,
    }
}

/// How far each point lies from the filtered points' mean along the directions the filter acted
/// along, in units of the typical point's distance: the largest over the directions of its
/// squared distance over the median point's. Each point is measured along the direction less
/// its own part in it (drawn from the points, a direction holds a little of each point's own
/// noise, which made honest points look further than they are; a colluder's distance comes
/// from the others like it).
///
/// Each squared distance is multiplied by the rounds `counts` the point's mean is over: the
/// noise of a mean of k rounds is 1/k of one round's, so this is the evidence against it (a
/// chi-square), not its noise. A joiner's mean of its first two or three rounds lay 12–59
/// times the median's distance away unscaled, and one in 27 rounds was judged differently by
/// the joiner and the others, which parted their replicas.
///
/// A peer whose mean update lies between nothing and twice the swarm's along the direction (it
/// pushes the swarm's way, less or more hard) is at no distance: a joiner's error feedback takes many rounds to
/// fill, so its updates are weaker along the swarm's direction, and it lay 4–19 times the
/// median's distance away, on the colluders' side, in every round of an adversity run. Pushing
/// less is a free rider's harm at most; what is weighed out is pushing elsewhere.
fn distances(
    points: &[Vec<f64>],
    updates: &[Vec<f64>],
    counts: &[f64],
    filtered: &Filtered,
) -> Vec<f64> {
    let n = points.len();
    let mut out = vec![0.0; n];
    let (Some(mean), Some(swarm)) = (
        weighted_mean(points, &filtered.weights),
        weighted_mean(updates, &filtered.weights),
    ) else {
        return out;
    };
    for direction in &filtered.directions {
        // Along the direction less the point's own part in it.
        let along = |i: usize, v: &[f64]| dot(v, &direction.sum) - dot(v, &direction.parts[i]);
        let squared: Vec<f64> = (0..n)
            .map(|i| counts[i] * along(i, &minus(&points[i], &mean)).powi(2))
            .collect();
        let mut sorted = squared.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        let typical = sorted[n / 2].max(f64::MIN_POSITIVE);
        let theirs = dot(&swarm, &direction.sum);
        // Up to twice as hard the swarm's way is not pushing elsewhere either: half of the honest
        // peers push harder than the swarm's mean, and where the swarm pushes far along the
        // direction (the colluders' direction is against it) they lay beyond it by noise alone.
        let (low, high) = ((2.0 * theirs).min(0.0), (2.0 * theirs).max(0.0));
        for (i, o) in out.iter_mut().enumerate() {
            let at = along(i, &updates[i]);
            let beyond = (low - at).max(at - high).max(0.0);
            *o = o.max(counts[i] * beyond * beyond / typical);
        }
    }
    out
}

/// The mean of `points` weighted by `w`, None when no weight is left.
fn weighted_mean(points: &[Vec<f64>], w: &[f64]) -> Option<Vec<f64>> {
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut mean = vec![0.0; points.first().map_or(0, Vec::len)];
    for (p, &wi) in points.iter().zip(w) {
        mean.iter_mut()
            .zip(p)
            .for_each(|(m, x)| *m += wi * x / total);
    }
    Some(mean)
}

fn minus(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The largest eigenvalue of the symmetric positive semi-definite `m` and its unit eigenvector,
/// by power iteration from a fixed start (the diagonal, which has a part along any direction a
/// group of points shares), a fixed number of times: the same bits at every replica.
fn top_eigen(m: &[Vec<f64>]) -> (f64, Vec<f64>) {
    let n = m.len();
    let mut v: Vec<f64> = (0..n).map(|i| m[i][i] + 1e-12 * (i + 1) as f64).collect();
    let mut lambda = 0.0;
    for _ in 0..100 {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm <= 0.0 || !norm.is_finite() {
            return (0.0, vec![0.0; n]);
        }
        v.iter_mut().for_each(|x| *x /= norm);
        let next: Vec<f64> = (0..n)
            .map(|i| m[i].iter().zip(&v).map(|(a, b)| a * b).sum())
            .collect();
        lambda = next.iter().zip(&v).map(|(a, b)| a * b).sum();
        v = next;
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm <= 0.0 || !norm.is_finite() {
        return (0.0, vec![0.0; n]);
    }
    v.iter_mut().for_each(|x| *x /= norm);
    (lambda, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, WeightedMean};
    use crate::screen::tests::accepted;
    use crate::synthetic::{SplitMix, sparse_around};
    use crate::{NormScreen, adversary, screen_round};
    use std::sync::Arc;

    const LEN: usize = 8192;

    /// One round of `n` peers, the first `liars` of them sending the update
    /// [`adversary::crafted`] makes of the honest ones (all liars the same, as the simulator's
    /// do): sparse updates around `shared`, each mostly noise.
    fn round(
        rng: &mut SplitMix,
        shared: &[f32],
        n: usize,
        liars: usize,
    ) -> Vec<Accepted<Arc<DecodedUpdate>>> {
        let honest: Vec<DecodedUpdate> = (liars..n)
            .map(|_| sparse_around(rng, shared, LEN / 50, 3.0))
            .collect();
        let refs: Vec<&DecodedUpdate> = honest.iter().collect();
        let lie = adversary::crafted(&refs, n - 1, LEN, LEN / 50, 1.0);
        let mut out = Vec::new();
        for p in 0..n {
            let u = if p < liars {
                let lie = lie.clone().expect("honest updates heard");
                let indices: Vec<u32> = (0..LEN as u32)
                    .filter(|&j| lie[j as usize] != 0.0)
                    .collect();
                let values = indices.iter().map(|&j| lie[j as usize]).collect();
                DecodedUpdate {
                    len: LEN,
                    indices: Some(indices),
                    values,
                }
            } else {
                honest[p - liars].clone()
            };
            out.push(accepted((p, u)));
        }
        out
    }

    /// Runs `rounds` rounds through the screens and standing; returns the last factors and how
    /// far the last round's aggregate went along `shared`, weighed by them and not.
    fn run(seed: u64, n: usize, liars: usize, rounds: usize) -> (Factors, f64, f64) {
        let mut rng = SplitMix::new(seed);
        let shared: Vec<f32> = (0..LEN).map(|_| rng.normal() as f32).collect();
        let mut standing = Standing::new(StandingConfig::default());
        let mut last = (Factors::default(), 0.0, 0.0);
        for r in 0..rounds as u64 {
            let set = round(&mut rng, &shared, n, liars);
            let screened =
                screen_round(&set, LEN, &NormScreen::default(), Some(&Default::default()));
            let factors = standing.factors(r.saturating_sub(1));
            let mut weighed = screened.clone();
            factors.weigh(&set, &mut weighed);
            let along = |s: &Screened| {
                let mean = WeightedMean.aggregate(&s.inputs()).expect("a mean");
                mean.iter()
                    .zip(&shared)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>()
            };
            last = (factors, along(&weighed), along(&screened));
            standing.observe(r, &set, &screened);
        }
        last
    }

    #[test]
    fn colluding_liars_lose_their_weight_and_the_round_goes_forward_again() {
        for seed in 0..3 {
            let (factors, weighed, plain) = run(seed, 32, 8, 12);
            // The soft filter takes a little from the honest peers nearest the liars' side too
            // (the liars pull the mean their way), far less than the cut.
            let distances: BTreeMap<Vec<u8>, f32> =
                factors.distances().map(|(p, d)| (p.to_vec(), d)).collect();
            // Measured: liars 320–385 times the median peer's squared deviation, honest peers
            // at most 1.2.
            for p in 0..32u8 {
                let d = f64::from(distances.get(&vec![p]).copied().unwrap_or(0.0));
                if p < 8 {
                    assert!(d > 4.0 * CUT, "seed {seed}: liar {p} at {d}");
                    assert_eq!(factors.of(&[p]), 0.0);
                } else {
                    assert!(d < CUT / 2.0, "seed {seed}: honest {p} at {d}");
                    assert_eq!(factors.of(&[p]), 1.0);
                }
            }
            assert!(
                plain < 0.0,
                "seed {seed}: unweighed, the liars win ({plain})"
            );
            assert!(
                weighed > 0.0,
                "seed {seed}: weighed, the round goes forward ({weighed})"
            );
        }
    }

    #[test]
    fn honest_peers_keep_their_weight() {
        for (seed, n) in [(1, 5), (2, 8), (3, 32), (4, 64)] {
            let (factors, _, _) = run(seed, n, 0, 24);
            let low: Vec<_> = factors.reduced().collect();
            assert!(low.is_empty(), "seed {seed}, {n} peers: {low:?}");
        }
    }

    #[test]
    fn a_joiner_given_the_rounds_weighs_as_the_replica_that_sealed_them() {
        // One replica seals 30 rounds of 16 peers, 4 of them colluding; a joiner takes its
        // rounds as a state carries them: both weigh every later round alike, and both weigh
        // the colluders out.
        let mut rng = SplitMix::new(9);
        let shared: Vec<f32> = (0..LEN).map(|_| rng.normal() as f32).collect();
        let mut server = Standing::new(StandingConfig::default());
        for r in 0..30 {
            let set = round(&mut rng, &shared, 16, 4);
            let screened =
                screen_round(&set, LEN, &NormScreen::default(), Some(&Default::default()));
            server.observe(r, &set, &screened);
        }
        // All 30 are kept: fewer than two windows.
        assert_eq!(server.len(), 30);
        let mut joiner = Standing::new(StandingConfig::default());
        for (r, sketches) in server.rounds() {
            joiner.insert(r, sketches.clone());
        }
        for upto in 15..30 {
            assert_eq!(server.factors(upto), joiner.factors(upto), "round {upto}");
        }
        let factors = server.factors(29);
        assert!((0..4u8).all(|p| factors.of(&[p]) == 0.0));
        assert!((4..16u8).all(|p| factors.of(&[p]) == 1.0));
    }

    #[test]
    fn a_flood_of_identities_is_judged_within_bounds() {
        // Each of 40 rounds: 60 peers that stay (12 of them colluding) and 300 fresh identities.
        // A window then holds 4 860 peers; the filter judges the MAX_JUDGED with the most rounds
        // (every peer that stayed among them), weighs the colluders out, and two windows of
        // rounds are kept.
        let mut standing = Standing::new(StandingConfig::default());
        let mut rng = SplitMix::new(4);
        let shared: Vec<f32> = (0..LEN).map(|_| rng.normal() as f32).collect();
        for r in 0..40u64 {
            let mut set = round(&mut rng, &shared, 60, 12);
            for p in 0..300u64 {
                let mut a = accepted((0, sparse_around(&mut rng, &shared, LEN / 50, 3.0)));
                a.peer = (1000 + r * 1000 + p).to_le_bytes().to_vec();
                set.push(a);
            }
            let screened = screen_round(&set, LEN, &NormScreen::default(), None);
            standing.observe(r, &set, &screened);
        }
        assert_eq!(standing.len(), 2 * StandingConfig::default().window);
        let factors = standing.factors(39);
        assert_eq!(factors.distances().count(), MAX_JUDGED);
        assert!((0..12u8).all(|p| factors.of(&[p]) == 0.0));
        assert!((12..60u8).all(|p| factors.of(&[p]) == 1.0));
    }
}
