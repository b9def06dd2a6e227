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
    let mut index = Vec::new();
    for (i, (a, scale)) in accepted.iter().zip(norm.screen(&norms)).enumerate() {
        let Some(scale) = scale else {
            out.dropped.push((i, DropReason::NormOutlier));
            continue;
        };
        let mut v = vec![0.0f32; len];
        a.payload.add_to(scale, &mut v);
        out.kept.push((a.weight as f32, v));
        index.push(i);
    }
    let Some(direction) = direction else {
        return out;
    };
    let aligned = direction.screen(&out.inputs());
    let kept = std::mem::take(&mut out.kept);
    for ((i, x), aligned) in index.into_iter().zip(kept).zip(aligned) {
        if aligned {
            out.kept.push(x);
        } else {
            out.dropped.push((i, DropReason::Unaligned));
        }
    }
    out
}

/// Screens a round's updates by norm before any rule aggregates them: an update far above the
/// round's median norm is dropped, and the rest are scaled down to a few times that median, so
/// that no single update moves θ much further than an honest one, whatever it claims.
///
/// It looks at the round's set of updates only, never at the order they came in: every replica
/// that holds the same set screens it the same way (a per-receiver history of norms would not,
/// and replicas would part). The median is the lower one, so with up to a quarter of the updates
/// hostile it is an honest norm from the first round on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormScreen {
    /// Updates with a norm above this many times the round's median are dropped (`NormOutlier`).
    pub max_ratio: f64,
    /// The others are scaled down to at most this many times the median.
    pub clip_ratio: f64,
}

impl Default for NormScreen {
    fn default() -> Self {
        Self {
            max_ratio: 10.0,
            clip_ratio: 2.0,
        }
    }
}

impl NormScreen {
    /// For each of a round's update norms: `None` to drop it, or the factor (≤ 1) to scale it by.
    pub fn screen(&self, norms: &[f64]) -> Vec<Option<f32>> {
        let mut sorted: Vec<f64> = norms.iter().copied().filter(|n| n.is_finite()).collect();
        sorted.sort_unstable_by(f64::total_cmp);
        let Some(&median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
            return vec![None; norms.len()];
        };
        norms
            .iter()
            .map(|&n| {
                if !n.is_finite() || n > self.max_ratio * median {
                    None
                } else if n > self.clip_ratio * median && n > 0.0 {
                    Some((self.clip_ratio * median / n) as f32)
                } else {
                    Some(1.0)
                }
            })
            .collect()
    }
}

/// Screens a round's updates by direction, after the norm screen: an update that does not point
/// the way the round's other updates point (a cosine ≤ 0 to their weighted mean) is dropped
/// (`Unaligned`).
///
/// Why: the norm screen bounds how far an update moves θ, not where. A sign-flipped update at an
/// honest norm passed it and cancelled an honest one (1.25× the rounds to the target with a
/// quarter of eight peers flipping, bench/README.md "Adversity"). Honest updates of one round
/// are computed on one θ and point alike: their cosine to the others' mean was 0.05–0.87 over
/// the adversity run (falling as training goes on), a flipped one's −0.03 to −0.85.
///
/// Two passes, so that hostile updates cannot steer the reference they are judged against:
/// the first judges each update against the mean of all the others; the second judges every
/// update again against the mean of those the first kept (itself left out). With at most a
/// quarter of the updates hostile, the first pass keeps honest ones whose mean points the honest
/// way, and the second is judged against that. A round with fewer than `min_updates` updates (4:
/// with three, one of them flipped, each honest update's others cancel out), or whose first pass
/// keeps none, is not screened.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectionScreen {
    /// Rounds with fewer updates than this are not screened.
    pub min_updates: usize,
}

impl Default for DirectionScreen {
    fn default() -> Self {
        Self { min_updates: 4 }
    }
}

impl DirectionScreen {
    /// For each of a round's updates (finite, of one length, scaled as they will count):
    /// whether it is kept.
    pub fn screen(&self, inputs: &[Weighted<'_>]) -> Vec<bool> {
        match self.passes(inputs) {
            Passes::Kept(kept) => kept,
            Passes::TooFew | Passes::NoneAligned => vec![true; inputs.len()],
        }
    }

    /// The two passes, or why there were none.
    fn passes(&self, inputs: &[Weighted<'_>]) -> Passes {
        let len = inputs.first().map_or(0, |x| x.values.len());
        if inputs.len() < self.min_updates.max(2) || inputs.iter().any(|x| x.values.len() != len) {
            return Passes::TooFew;
        }
        let first = aligned(inputs, &vec![true; inputs.len()]);
        if !first.iter().any(|&k| k) {
            return Passes::NoneAligned;
        }
        Passes::Kept(aligned(inputs, &first))
    }
}

/// What [`DirectionScreen::passes`] found.
enum Passes {
    /// Fewer updates than the screen needs (or of unequal lengths): nothing screened.
    TooFew,
    /// No update points the way of the others' mean.
    NoneAligned,
    /// Which updates the second pass kept.
    Kept(Vec<bool>),
}

/// Whether each input has a positive cosine to the weighted sum of the `reference` inputs other
/// than itself. An input that is the reference's only member is kept (its own first-pass
/// judgement stands); a zero input points nowhere and is not kept.
fn aligned(inputs: &[Weighted<'_>], reference: &[bool]) -> Vec<bool> {
    let len = inputs.first().map_or(0, |x| x.values.len());
    let mut sum = vec![0.0f64; len];
    for (x, _) in inputs.iter().zip(reference).filter(|(_, r)| **r) {
        let w = f64::from(x.weight);
        sum.iter_mut()
            .zip(x.values)
            .for_each(|(s, &v)| *s += w * f64::from(v));
    }
    let sum_sq: f64 = sum.iter().map(|s| s * s).sum();
    let members = reference.iter().filter(|&&r| r).count();
    inputs
        .iter()
        .zip(reference)
        .map(|(x, &in_reference)| {
            let (dot, own_sq) =
                x.values
                    .iter()
                    .zip(&sum)
                    .fold((0.0f64, 0.0f64), |(d, o), (&v, &s)| {
                        let v = f64::from(v);
                        (d + v * s, o + v * v)
                    });
            if own_sq <= 0.0 {
                return false;
            }
            if !in_reference {
                return dot > 0.0;
            }
            if members == 1 {
                return true;
            }
            // Leave itself out of the reference: ⟨x, S − w·x⟩ and ‖S − w·x‖².
            let w = f64::from(x.weight);
            let others_dot = dot - w * own_sq;
            let others_sq = sum_sq - 2.0 * w * dot + w * w * own_sq;
            others_dot > 0.0 && others_sq > 0.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SplitMix;

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
        // 4× the median: kept, scaled to 2× the median.
        assert_eq!(screen.screen(&[1.0, 1.0, 1.0, 4.0])[3], Some(0.5));
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
        for (n, flipped) in [(8, 2), (4, 1), (5, 1), (16, 4)] {
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
        // Three updates, one flipped: fewer than `min_updates`, all kept.
        let mut three = xs[..3].to_vec();
        three[1] = xs[0].iter().map(|v| -v).collect();
        assert_eq!(screen.screen(&weighted(&three)), vec![true; 3]);
        assert!(screen.screen(&[]).is_empty());
        // A first pass that keeps nothing (all zero): not screened.
        let zeros = vec![vec![0.0f32; 4]; 4];
        assert_eq!(screen.screen(&weighted(&zeros)), vec![true; 4]);
    }

    #[test]
    fn weights_count_in_the_reference() {
        // Three honest updates and one flipped with 1.5 times their weight: the flipped one is
        // still the one that points against the others.
        let mut rng = SplitMix::new(3);
        let mut xs = honest(&mut rng, 4, 1024, 2.0);
        xs[3].iter_mut().for_each(|v| *v = -*v);
        let mut inputs = weighted(&xs);
        inputs[3].weight = 1.5;
        assert_eq!(
            DirectionScreen::default().screen(&inputs),
            vec![true, true, true, false]
        );
    }
}
