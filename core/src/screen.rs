//! Screens that run over a round's updates before any rule aggregates them: by norm first, then
//! by direction. Both look at the round's set of updates only, never at the order they came in,
//! so every replica that holds the same set screens it the same way.

use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::aggregate::l2_norm;
use crate::{Accepted, DecodedUpdate, DropReason, Weighted};

/// A round's updates as they count, after both screens.
#[derive(Clone, Debug, Default)]
pub struct Screened {
    /// The kept updates, dense and scaled by the norm screen, with their weights.
    pub kept: Vec<(f32, Vec<f32>)>,
    /// The dropped ones: their index among the round's updates, and why.
    pub dropped: Vec<(usize, DropReason)>,
    /// For each kept update, in `kept`'s order: its index among the round's updates, and the
    /// norm screen's factor (what [`crate::standing::Standing`] averages, and whose weight
    /// [`crate::standing::Factors::weigh`] sets).
    pub sources: Vec<(usize, f32)>,
}

impl Screened {
    /// The kept updates as the aggregation rules take them.
    pub fn inputs(&self) -> Vec<Weighted<'_>> {
        self.kept
            .iter()
            .map(|(weight, values)| Weighted {
                weight: *weight,
                values,
            })
            .collect()
    }
}

/// Runs a round's accepted updates (of vectors of `len`) through the norm screen, then the
/// direction screen where there is one: what every replica, and the simulator, aggregates.
pub fn screen_round<T: Deref<Target = DecodedUpdate>>(
    accepted: &[Accepted<T>],
    len: usize,
    norm: &NormScreen,
    direction: Option<&DirectionScreen>,
) -> Screened {
    let norms: Vec<f64> = accepted
        .iter()
        .map(|a| l2_norm(&a.payload.values))
        .collect();
    let mut out = Screened::default();
    // The kept updates: their index, and the norm screen's factor.
    let mut index = Vec::new();
    for (i, (a, scale)) in accepted.iter().zip(norm.screen(&norms)).enumerate() {
        let Some(scale) = scale else {
            out.dropped.push((i, DropReason::NormOutlier));
            continue;
        };
        let mut v = vec![0.0f32; len];
        a.payload.add_to(scale, &mut v);
        out.kept.push((a.weight as f32, v));
        index.push((i, scale));
    }
    let Some(direction) = direction else {
        out.sources = index;
        return out;
    };
    // Judged over the updates' own coordinates: the same sums, in the same order, as over the
    // dense vectors (a coordinate one of the two lacks adds a zero), so the same verdicts, at a
    // hundredth of the work for top-1 % updates.
    let views: Vec<(&DecodedUpdate, f32)> = index
        .iter()
        .map(|&(i, scale)| (&*accepted[i].payload, scale))
        .collect();
    let aligned = direction.judge(
        views.len(),
        |i| views[i].0.values.iter().any(|&v| views[i].1 * v != 0.0),
        |i, j| scaled_dot(views[i], views[j]),
    );
    let kept = std::mem::take(&mut out.kept);
    for ((source, x), aligned) in index.into_iter().zip(kept).zip(aligned) {
        if aligned {
            out.kept.push(x);
            out.sources.push(source);
        } else {
            let (i, _) = source;
            out.dropped.push((i, DropReason::Unaligned));
        }
    }
    out
}

/// Screens a round's updates by norm before any rule aggregates them: an update far above the
/// round's median norm is dropped, and the rest are scaled down to the round's upper-quartile
/// norm, so that no single update moves θ further than an honest one of the round, whatever it
/// claims.
///
/// Why the upper quartile, not twice the median (the default until session 24): an update
/// crafted from the round's honest ones passes the direction screen (see [`DirectionScreen`]),
/// and then the clip is all that bounds it. At twice the median two such liars of eight cancelled
/// the round's honest progress (0.06–0.13 of it left, `crafted_updates_pass_the_direction_
/// screen_and_the_clip_bounds_them`); at an honest norm about half is left. With at most a
/// quarter of the updates hostile, the upper quartile lies between the honest median and the
/// largest honest norm wherever the liars put theirs; clipping at the median instead scaled
/// down half of the honest updates, and cost the long honest run 0.017 of final loss
/// (bench/README.md, "Crafted updates").
///
/// It looks at the round's set of updates only, never at the order they came in: every replica
/// that holds the same set screens it the same way (a per-receiver history of norms would not,
/// and replicas would part). The median and the quartile are the lower ones, so with up to a
/// quarter of the updates hostile both are honest norms from the first round on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormScreen {
    /// Updates with a norm above this many times the round's median are dropped (`NormOutlier`).
    pub max_ratio: f64,
    /// The others are scaled down to at most this many times the round's upper-quartile norm.
    pub clip_ratio: f64,
}

impl Default for NormScreen {
    fn default() -> Self {
        Self {
            max_ratio: 10.0,
            clip_ratio: 1.0,
        }
    }
}

impl NormScreen {
    /// For each of a round's update norms: `None` to drop it, or the factor (≤ 1) to scale it by.
    pub fn screen(&self, norms: &[f64]) -> Vec<Option<f32>> {
        let mut sorted: Vec<f64> = norms.iter().copied().filter(|n| n.is_finite()).collect();
        sorted.sort_unstable_by(f64::total_cmp);
        let last = sorted.len().saturating_sub(1);
        let (Some(&median), Some(&quartile)) = (sorted.get(last / 2), sorted.get(last * 3 / 4))
        else {
            return vec![None; norms.len()];
        };
        let clip = self.clip_ratio * quartile;
        norms
            .iter()
            .map(|&n| {
                if !n.is_finite() || n > self.max_ratio * median {
                    None
                } else if n > clip && n > 0.0 {
                    Some((clip / n) as f32)
                } else {
                    Some(1.0)
                }
            })
            .collect()
    }
}

/// Screens a round's updates by direction, after the norm screen: an update that more than half
/// of the round's other updates point against (a negative inner product) is dropped
/// (`Unaligned`), and so is a zero update, which points nowhere. Pairs that share no coordinate
/// (sparse updates) have an inner product of 0 and cast no vote.
///
/// Why: the norm screen bounds how far an update moves θ, not where. A sign-flipped update at an
/// honest norm passed it and cancelled an honest one (1.25× the rounds to the target with a
/// quarter of eight peers flipping, bench/README.md "Adversity"). Honest updates of one round are
/// computed from one θ and point alike: over the adversity run every pair of honest updates had a
/// positive cosine (0.06–0.19 early, 0.014–0.03 by round 36); a flipped one is the mirror.
///
/// Why pairs, not a mean: each pair's verdict depends on that pair alone, so liars cannot turn
/// honest updates against one another. Judged against the mean of the others, they could: sparse
/// honest updates are nearly orthogonal, so their sum grows like √n while colluding liars add up,
/// and two liars of eight at twice the median norm, pointing against the honest sum, made every
/// honest update look opposed and only their own aligned (`colluders_cannot_get_honest_updates_
/// dropped`). Here an honest update is dropped only where more than half of the others oppose
/// it: the liars, at most a quarter, cannot do that while honest pairs agree. A liar is dropped
/// where most of the others oppose it: a vector made to oppose the honest sum while agreeing
/// with, or missing, enough honest updates still passes, bounded by the norm screen. Opposition
/// is counted, not agreement, so that pairs without a shared coordinate, common where updates
/// are very sparse, keep an update rather than drop it.
///
/// A round with fewer than `min_updates` updates is not screened (of two that disagree, which is
/// wrong?), nor one where no update would be kept. Like the norm screen it sees the round's set
/// only, so replicas holding the same updates keep the same ones.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectionScreen {
    /// Rounds with fewer updates than this are not screened.
    pub min_updates: usize,
}

impl Default for DirectionScreen {
    fn default() -> Self {
        Self { min_updates: 3 }
    }
}

impl DirectionScreen {
    /// For each of a round's updates (finite, of one length, scaled as they will count):
    /// whether it is kept.
    pub fn screen(&self, inputs: &[Weighted<'_>]) -> Vec<bool> {
        let len = inputs.first().map_or(0, |x| x.values.len());
        if inputs.iter().any(|x| x.values.len() != len) {
            return vec![true; inputs.len()];
        }
        self.judge(
            inputs.len(),
            |i| inputs[i].values.iter().any(|&v| v != 0.0),
            |i, j| dot(inputs[i].values, inputs[j].values),
        )
    }

    /// The rule over `n` updates, given whether each is non-zero and each pair's inner product.
    fn judge(
        &self,
        n: usize,
        nonzero: impl Fn(usize) -> bool,
        dot: impl Fn(usize, usize) -> f64,
    ) -> Vec<bool> {
        let all = vec![true; n];
        if n < self.min_updates.max(3) {
            return all;
        }
        let mut opposed = vec![0usize; n];
        for i in 0..n {
            for j in i + 1..n {
                if dot(i, j) < 0.0 {
                    opposed[i] += 1;
                    opposed[j] += 1;
                }
            }
        }
        let kept: Vec<bool> = (0..n).map(|i| 2 * opposed[i] < n && nonzero(i)).collect();
        if kept.iter().any(|&k| k) { kept } else { all }
    }
}

/// ⟨s·a, t·b⟩ over the coordinates both hold, for `(a, s)` and `(b, t)`: each scaled value
/// rounded to f32 as densifying rounds it, the products summed in f64 in index order.
fn scaled_dot((a, s): (&DecodedUpdate, f32), (b, t): (&DecodedUpdate, f32)) -> f64 {
    let term = |x: f32, y: f32| f64::from(s * x) * f64::from(t * y);
    match (&a.indices, &b.indices) {
        (Some(ia), Some(ib)) => {
            let (mut p, mut q, mut sum) = (0, 0, 0.0);
            while p < ia.len() && q < ib.len() {
                match ia[p].cmp(&ib[q]) {
                    std::cmp::Ordering::Less => p += 1,
                    std::cmp::Ordering::Greater => q += 1,
                    std::cmp::Ordering::Equal => {
                        sum += term(a.values[p], b.values[q]);
                        p += 1;
                        q += 1;
                    }
                }
            }
            sum
        }
        (Some(ia), None) => ia
            .iter()
            .zip(&a.values)
            .map(|(&i, &x)| b.values.get(i as usize).map_or(0.0, |&y| term(x, y)))
            .sum(),
        (None, Some(ib)) => ib
            .iter()
            .zip(&b.values)
            .map(|(&i, &y)| a.values.get(i as usize).map_or(0.0, |&x| term(x, y)))
            .sum(),
        (None, None) => a
            .values
            .iter()
            .zip(&b.values)
            .map(|(&x, &y)| term(x, y))
            .sum(),
    }
}

/// ⟨a, b⟩ in f64, summed in index order (the same at every replica).
fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::synthetic::{SplitMix, sparse_around};

    /// Peer `p`'s update `u` as a round of equal weights holds it.
    pub(crate) fn accepted(
        (p, u): (usize, DecodedUpdate),
    ) -> Accepted<std::sync::Arc<DecodedUpdate>> {
        Accepted {
            peer: vec![p as u8],
            round: 1,
            base_round: 1,
            tau: 0,
            samples: 8,
            weight: 8.0,
            digest: p as u64,
            payload: std::sync::Arc::new(u),
        }
    }

    #[test]
    fn the_screen_drops_far_outliers_and_clips_the_rest_from_the_first_round() {
        let screen = NormScreen::default();
        // Three honest norms and one 100× liar: the liar is dropped, the honest pass unscaled.
        assert_eq!(
            screen.screen(&[1.0, 1.2, 0.9, 100.0]),
            vec![Some(1.0), Some(1.0), Some(1.0), None]
        );
        // Two updates only (the liar's and ours): the lower median is the honest one.
        assert_eq!(screen.screen(&[1.0, 100.0]), vec![Some(1.0), None]);
        // 4× the median: kept, scaled to the upper quartile (the third of four, 2).
        assert_eq!(screen.screen(&[1.0, 1.0, 2.0, 4.0])[3], Some(0.5));
        // Two liars of eight at the top: scaled to the largest honest norm.
        let round = [1.0, 1.1, 0.9, 1.0, 1.2, 1.05, 5.0, 5.0];
        assert_eq!(screen.screen(&round)[6], Some((1.2 / 5.0) as f32));
        assert_eq!(screen.screen(&round)[..6], [Some(1.0); 6]);
        // A free rider's zero norm is the lowest, not the median, while it is a minority.
        assert_eq!(screen.screen(&[0.0, 1.0, 1.0, 1.0]), vec![Some(1.0); 4]);
        assert_eq!(screen.screen(&[]), Vec::<Option<f32>>::new());
    }

    /// `n` updates of `len` that share a direction: each is `shared + noise` with the noise
    /// `spread` times as large, so that two of them have a cosine of about 1 / (1 + spread²).
    fn honest(rng: &mut SplitMix, n: usize, len: usize, spread: f64) -> Vec<Vec<f32>> {
        let shared: Vec<f64> = (0..len).map(|_| rng.normal()).collect();
        (0..n)
            .map(|_| {
                shared
                    .iter()
                    .map(|s| (s + spread * rng.normal()) as f32)
                    .collect()
            })
            .collect()
    }

    fn weighted(xs: &[Vec<f32>]) -> Vec<Weighted<'_>> {
        xs.iter()
            .map(|values| Weighted {
                weight: 1.0,
                values,
            })
            .collect()
    }

    #[test]
    fn flipped_updates_are_dropped_and_honest_ones_kept() {
        let screen = DirectionScreen::default();
        // Cosines between honest updates of about 0.06 (spread 4): late in a run, where the
        // adversity run's fell to 0.03–0.08.
        for (n, flipped) in [(8, 2), (3, 1), (4, 1), (5, 1), (16, 4)] {
            for seed in 0..20 {
                let mut rng = SplitMix::new(seed);
                let mut xs = honest(&mut rng, n, 4096, 4.0);
                for x in xs.iter_mut().take(flipped) {
                    x.iter_mut().for_each(|v| *v = -*v);
                }
                let kept = screen.screen(&weighted(&xs));
                let expected: Vec<bool> = (0..n).map(|i| i >= flipped).collect();
                assert_eq!(
                    kept, expected,
                    "{n} updates, {flipped} flipped, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn an_all_honest_round_keeps_every_update() {
        let screen = DirectionScreen::default();
        for seed in 0..50 {
            let mut rng = SplitMix::new(seed);
            let xs = honest(&mut rng, 6, 4096, 4.0);
            assert!(
                screen.screen(&weighted(&xs)).iter().all(|&k| k),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn zero_updates_are_dropped_and_small_rounds_are_not_screened() {
        let screen = DirectionScreen::default();
        let mut rng = SplitMix::new(7);
        let mut xs = honest(&mut rng, 4, 256, 1.0);
        xs[1] = vec![0.0; 256];
        assert_eq!(screen.screen(&weighted(&xs)), vec![true, false, true, true]);
        // Three updates, one flipped: the two that agree outvote it.
        let mut three = xs[..3].to_vec();
        three[1] = xs[0].iter().map(|v| -v).collect();
        assert_eq!(screen.screen(&weighted(&three)), vec![true, false, true]);
        // Two that disagree: fewer than `min_updates`, no telling which is wrong; both kept.
        assert_eq!(screen.screen(&weighted(&three[..2])), vec![true; 2]);
        assert!(screen.screen(&[]).is_empty());
        // No update kept (all zero): not screened.
        let zeros = vec![vec![0.0f32; 4]; 4];
        assert_eq!(screen.screen(&weighted(&zeros)), vec![true; 4]);
    }

    #[test]
    fn colluders_cannot_get_honest_updates_dropped() {
        // Six honest updates nearly orthogonal to one another (pairwise cosines ~0.03, as late in
        // a run) and two colluding liars at twice their norm, half against the honest sum and
        // half along a direction of their own. Judged against the mean of the others, every
        // honest update looked opposed (the liars outweigh the honest sum) and only the liars
        // aligned; pair by pair, the honest agree with one another whatever the liars send.
        let screen = DirectionScreen::default();
        let len = 4096;
        for seed in 0..20 {
            let mut rng = SplitMix::new(seed);
            let mut xs = honest(&mut rng, 6, len, 5.7);
            let sum: Vec<f64> = (0..len)
                .map(|i| xs.iter().map(|x| f64::from(x[i])).sum())
                .collect();
            let sum_norm = sum.iter().map(|s| s * s).sum::<f64>().sqrt();
            let along: Vec<f64> = sum.iter().map(|s| s / sum_norm).collect();
            // A unit direction of their own, orthogonal to the honest sum.
            let mut own: Vec<f64> = (0..len).map(|_| rng.normal()).collect();
            let proj: f64 = own.iter().zip(&along).map(|(o, a)| o * a).sum();
            own.iter_mut().zip(&along).for_each(|(o, a)| *o -= proj * a);
            let own_norm = own.iter().map(|o| o * o).sum::<f64>().sqrt();
            let norm = 2.0 * f64::from(l2(&xs[0]));
            let liar: Vec<f32> = along
                .iter()
                .zip(&own)
                .map(|(a, o)| (norm * (-0.5 * a + 0.866 * o / own_norm)) as f32)
                .collect();
            xs.push(liar.clone());
            xs.push(liar);
            let kept = screen.screen(&weighted(&xs));
            let expected = [vec![true; 6], vec![false; 2]].concat();
            assert_eq!(kept, expected, "seed {seed}");
        }
    }

    /// The crafted update of the harness's `crafted` attacker, dense: the negated sum of
    /// `opposed`, with its components along each of `spared` taken out (so that they abstain),
    /// plus a hair of their sum (so that rounding cannot make one oppose it).
    fn crafted(opposed: &[Vec<f32>], spared: &[Vec<f32>]) -> Vec<f32> {
        let len = opposed[0].len();
        let mut x: Vec<f64> = (0..len)
            .map(|i| -opposed.iter().map(|o| f64::from(o[i])).sum::<f64>())
            .collect();
        // Gram–Schmidt over the spared, then x minus its projection on their span.
        let mut basis: Vec<Vec<f64>> = Vec::new();
        for s in spared {
            let mut b: Vec<f64> = s.iter().map(|&v| f64::from(v)).collect();
            for e in &basis {
                let p: f64 = b.iter().zip(e).map(|(u, v)| u * v).sum();
                b.iter_mut().zip(e).for_each(|(u, v)| *u -= p * v);
            }
            let n = b.iter().map(|v| v * v).sum::<f64>().sqrt();
            b.iter_mut().for_each(|v| *v /= n);
            basis.push(b);
        }
        for e in &basis {
            let p: f64 = x.iter().zip(e).map(|(u, v)| u * v).sum();
            x.iter_mut().zip(e).for_each(|(u, v)| *u -= p * v);
        }
        (0..len)
            .map(|i| (x[i] + 1e-3 * spared.iter().map(|s| f64::from(s[i])).sum::<f64>()) as f32)
            .collect()
    }

    /// The round's sum after both screens, along the honest updates' sum, over the honest sum's
    /// own: 1 where the liars change nothing, below 0 where they reverse the round.
    fn progress(norm: &NormScreen, xs: &[Vec<f32>], honest: usize) -> f64 {
        let norms: Vec<f64> = xs.iter().map(|x| f64::from(l2(x))).collect();
        let scaled: Vec<Vec<f32>> = xs
            .iter()
            .zip(norm.screen(&norms))
            .map(|(x, s)| x.iter().map(|v| v * s.unwrap_or(0.0)).collect())
            .collect();
        let kept = DirectionScreen::default().screen(&weighted(&scaled));
        assert_eq!(
            kept,
            vec![true; xs.len()],
            "crafted updates pass the screen"
        );
        let len = xs[0].len();
        let sum = |ys: &[Vec<f32>]| -> Vec<f32> {
            (0..len).map(|i| ys.iter().map(|y| y[i]).sum()).collect()
        };
        let honest_sum = sum(&xs[..honest]);
        dot(&sum(&scaled), &honest_sum) / dot(&honest_sum, &honest_sum)
    }

    #[test]
    fn crafted_updates_pass_the_direction_screen_and_the_clip_bounds_them() {
        // Six honest updates (pairwise cosines ~0.03, as late in a run) and two liars that have
        // seen them: each sends the negated sum of the three honest updates that point most
        // along the honest sum, made orthogonal to the other three so that those abstain. Three
        // of seven oppose it, fewer than half: the direction screen keeps it, and the norm
        // screen's clip is all that bounds it (docs/security.md §5). Clipped at twice the median
        // norm (the default before session 24), the two cancelled nearly all of the round's
        // progress; at an honest norm (the upper quartile), a liar weighs one honest update.
        let len = 4096;
        let at = |clip_ratio| NormScreen {
            clip_ratio,
            ..NormScreen::default()
        };
        for seed in 0..10 {
            let mut rng = SplitMix::new(seed);
            let mut xs = honest(&mut rng, 6, len, 5.7);
            let liar = crafted(&xs[..3], &xs[3..]);
            xs.push(liar.clone());
            xs.push(liar);
            let clipped = progress(&NormScreen::default(), &xs, 6);
            let loose = progress(&at(2.0), &xs, 6);
            assert!(
                clipped > 0.4,
                "seed {seed}: {clipped} of the honest progress"
            );
            assert!(loose < 0.2, "seed {seed}: {loose} at twice the median");
        }
    }

    #[test]
    fn the_round_screen_judges_sparse_updates_as_the_dense_screen_does() {
        // Sparse updates (1 % of the coordinates, some shared), a quarter flipped, one zero,
        // one far above the others' norms (scaled down first): `screen_round` judges over the
        // coordinates each holds, `DirectionScreen::screen` over the dense vectors.
        let len = 2048;
        let mut judged = 0;
        for seed in 0..40 {
            let mut rng = SplitMix::new(seed);
            let shared: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
            let n = 3 + (seed as usize % 10);
            let round: Vec<_> = (0..n)
                .map(|p| {
                    let mut u = sparse_around(&mut rng, &shared, len / 50, 3.0);
                    let sign = if p % 4 == 3 { -1.0 } else { 1.0 };
                    let size = if p == 1 { 5.0 } else { 1.0 };
                    for v in &mut u.values {
                        *v = if p == 2 && n > 6 {
                            0.0
                        } else {
                            sign * size * *v
                        };
                    }
                    accepted((p, u))
                })
                .collect();
            let screen = DirectionScreen::default();
            let sparse = screen_round(&round, len, &NormScreen::default(), Some(&screen));
            let dense = screen_round(&round, len, &NormScreen::default(), None);
            let verdicts = screen.screen(&dense.inputs());
            let dropped: Vec<usize> = sparse
                .dropped
                .iter()
                .filter(|d| d.1 == DropReason::Unaligned)
                .map(|d| d.0)
                .collect();
            let expected: Vec<usize> = verdicts
                .iter()
                .enumerate()
                .filter(|(_, kept)| !**kept)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(dropped, expected, "seed {seed}, {n} updates");
            judged += dropped.len();
        }
        assert!(judged > 20, "only {judged} drops: the rounds test nothing");
    }

    fn l2(x: &[f32]) -> f32 {
        x.iter().map(|v| v * v).sum::<f32>().sqrt()
    }
}
