//! Aggregation rules and the validation every update passes before it counts.
//!
//! Rules are pluggable through [`Aggregator`]: the weighted mean (exact data-parallel averaging),
//! the coordinate-wise trimmed mean (Yin et al. 2018) and centered clipping (Karimireddy, He &
//! Jaggi 2021), the last two robust to a minority of Byzantine peers.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::staleness::DropReason;

/// One input of an aggregation: a dense vector and its weight (samples × staleness weight).
#[derive(Clone, Copy, Debug)]
pub struct Weighted<'a> {
    /// Non-negative weight.
    pub weight: f32,
    /// The vector; every input has the same length.
    pub values: &'a [f32],
}

/// Why an aggregation could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AggregateError {
    /// Nothing to aggregate.
    #[error("no inputs to aggregate")]
    Empty,
    /// Inputs of different lengths.
    #[error("input {index} has length {len}, expected {expected}")]
    LengthMismatch {
        /// Which input.
        index: usize,
        /// Its length.
        len: usize,
        /// The first input's length.
        expected: usize,
    },
    /// A weight is negative or not finite, or all weights are zero.
    #[error("weights must be finite, non-negative and not all zero")]
    BadWeights,
}

/// The configured rule (TOML: `rule = "weighted_mean"` and so on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum AggregationRule {
    /// Σ wᵢxᵢ / Σ wᵢ.
    #[default]
    WeightedMean,
    /// Per coordinate: drop the `trim` smallest and `trim` largest values, weighted mean of the rest.
    TrimmedMean {
        /// Values dropped at each end; tolerates up to `trim` Byzantine inputs.
        trim: usize,
    },
    /// Iterated `v ← v + Σ wᵢ clip_τ(xᵢ − v) / Σ wᵢ`, starting from the coordinate-wise median.
    CenteredClip {
        /// Clipping radius τ; `None` uses the median distance of the inputs to the centre at each
        /// iteration, which adapts to the honest spread without tuning.
        tau: Option<f32>,
        /// Iterations (the paper finds 1–3 enough when starting from a good centre).
        iterations: u32,
    },
}

impl AggregationRule {
    /// The aggregator implementing this rule.
    pub fn build(self) -> Box<dyn Aggregator + Send> {
        match self {
            Self::WeightedMean => Box::new(WeightedMean),
            Self::TrimmedMean { trim } => Box::new(TrimmedMean { trim }),
            Self::CenteredClip { tau, iterations } => Box::new(CenteredClip { tau, iterations }),
        }
    }
}

/// Combines updates into one.
pub trait Aggregator {
    /// Aggregates `inputs` (same length, validated) into one vector.
    fn aggregate(&mut self, inputs: &[Weighted<'_>]) -> Result<Vec<f32>, AggregateError>;
}

/// Checks lengths and weights; returns the common length and Σ w.
fn check(inputs: &[Weighted<'_>]) -> Result<(usize, f64), AggregateError> {
    let first = inputs.first().ok_or(AggregateError::Empty)?;
    let expected = first.values.len();
    let mut total = 0.0f64;
    for (index, x) in inputs.iter().enumerate() {
        if x.values.len() != expected {
            return Err(AggregateError::LengthMismatch {
                index,
                len: x.values.len(),
                expected,
            });
        }
        if !(x.weight.is_finite() && x.weight >= 0.0) {
            return Err(AggregateError::BadWeights);
        }
        total += f64::from(x.weight);
    }
    if total <= 0.0 {
        return Err(AggregateError::BadWeights);
    }
    Ok((expected, total))
}

/// The weighted mean.
#[derive(Clone, Copy, Debug, Default)]
pub struct WeightedMean;

impl Aggregator for WeightedMean {
    fn aggregate(&mut self, inputs: &[Weighted<'_>]) -> Result<Vec<f32>, AggregateError> {
        let (len, total) = check(inputs)?;
        let mut acc = vec![0.0f64; len];
        for x in inputs {
            let w = f64::from(x.weight) / total;
            acc.iter_mut()
                .zip(x.values)
                .for_each(|(a, &v)| *a += w * f64::from(v));
        }
        Ok(acc.into_iter().map(|a| a as f32).collect())
    }
}

/// The coordinate-wise trimmed mean.
#[derive(Clone, Copy, Debug)]
pub struct TrimmedMean {
    /// Values dropped at each end of every coordinate.
    pub trim: usize,
}

impl Aggregator for TrimmedMean {
    fn aggregate(&mut self, inputs: &[Weighted<'_>]) -> Result<Vec<f32>, AggregateError> {
        let (len, _) = check(inputs)?;
        let n = inputs.len();
        // Never trim everything: keep at least one value per coordinate.
        let trim = self.trim.min((n - 1) / 2);
        let mut column: Vec<(f32, f32)> = Vec::with_capacity(n);
        let mut out = Vec::with_capacity(len);
        for i in 0..len {
            column.clear();
            column.extend(inputs.iter().map(|x| (x.values[i], x.weight)));
            column.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            let kept = &column[trim..n - trim];
            let w: f64 = kept.iter().map(|&(_, w)| f64::from(w)).sum();
            let v = if w > 0.0 {
                kept.iter()
                    .map(|&(v, w)| f64::from(v) * f64::from(w))
                    .sum::<f64>()
                    / w
            } else {
                kept.iter().map(|&(v, _)| f64::from(v)).sum::<f64>() / kept.len() as f64
            };
            out.push(v as f32);
        }
        Ok(out)
    }
}

/// Centered clipping.
#[derive(Clone, Copy, Debug)]
pub struct CenteredClip {
    /// Clipping radius, or `None` for the adaptive median distance.
    pub tau: Option<f32>,
    /// Iterations.
    pub iterations: u32,
}

impl Aggregator for CenteredClip {
    fn aggregate(&mut self, inputs: &[Weighted<'_>]) -> Result<Vec<f32>, AggregateError> {
        let (len, total) = check(inputs)?;
        let mut v = coordinate_median(inputs, len);
        let mut dist = vec![0.0f64; inputs.len()];
        for _ in 0..self.iterations.max(1) {
            for (d, x) in dist.iter_mut().zip(inputs) {
                *d = l2_distance(x.values, &v);
            }
            let tau = match self.tau {
                Some(t) => f64::from(t),
                None => median(&dist),
            };
            let mut step = vec![0.0f64; len];
            for (x, &d) in inputs.iter().zip(&dist) {
                let scale = if d > tau && d > 0.0 { tau / d } else { 1.0 };
                let w = f64::from(x.weight) / total * scale;
                step.iter_mut()
                    .zip(x.values.iter().zip(&v))
                    .for_each(|(s, (&xi, &vi))| *s += w * (f64::from(xi) - vi));
            }
            v.iter_mut().zip(&step).for_each(|(vi, s)| *vi += s);
        }
        Ok(v.into_iter().map(|x| x as f32).collect())
    }
}

/// A mean of replicas clipped around their coordinate-wise median ([`median_clipped_mean`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ClippedMean {
    /// The mean, each input clipped first.
    pub mean: Vec<f32>,
    /// How many inputs lay past the radius (or were not finite) and were clipped.
    pub clipped: usize,
}

/// The mean of `replicas`, each first clipped to within `radius` × ‖median‖ of their
/// coordinate-wise median: how a new group averages its members' parameters at a regrouping
/// (`peer/src/runtime/group/mod.rs`). Inputs within the radius count as they are, so while all are
/// (honest groups that learned apart, measured at most 0.77 ‖θ‖ from each other) this is their
/// plain mean, to the bit. One input far off moves the mean by at most `radius × ‖median‖ ÷ n`
/// past the median, whatever it is; the median itself stays inside the others' range in every
/// coordinate while they are more than half. An input that is not finite counts as the median.
/// The result depends on the set of inputs and their order only, so members that hold the same
/// replicas in the same order compute the same mean.
pub fn median_clipped_mean(
    replicas: &[&[f32]],
    radius: f64,
) -> Result<ClippedMean, AggregateError> {
    let inputs: Vec<Weighted<'_>> = replicas
        .iter()
        .map(|values| Weighted {
            weight: 1.0,
            values,
        })
        .collect();
    let (len, _) = check(&inputs)?;
    let center = coordinate_median(&inputs, len);
    let tau = radius.max(0.0) * center.iter().map(|c| c * c).sum::<f64>().sqrt();
    let mut sum = vec![0.0f64; len];
    let mut clipped = 0;
    for x in replicas {
        let d = l2_distance(x, &center);
        if d.is_finite() && d <= tau {
            sum.iter_mut()
                .zip(x.iter())
                .for_each(|(s, &v)| *s += f64::from(v));
        } else if d.is_finite() {
            // Pulled in to the radius along its own direction.
            clipped += 1;
            let scale = tau / d;
            sum.iter_mut()
                .zip(x.iter().zip(&center))
                .for_each(|(s, (&v, &c))| *s += c + scale * (f64::from(v) - c));
        } else {
            clipped += 1;
            sum.iter_mut().zip(&center).for_each(|(s, &c)| *s += c);
        }
    }
    let n = replicas.len() as f64;
    Ok(ClippedMean {
        mean: sum.into_iter().map(|s| (s / n) as f32).collect(),
        clipped,
    })
}

/// Coordinate-wise median (lower median for even counts), in f64.
fn coordinate_median(inputs: &[Weighted<'_>], len: usize) -> Vec<f64> {
    let mut column = Vec::with_capacity(inputs.len());
    (0..len)
        .map(|i| {
            column.clear();
            column.extend(inputs.iter().map(|x| f64::from(x.values[i])));
            median(&column)
        })
        .collect()
}

/// Median of a non-empty slice (mean of the two middle values for even counts).
fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_unstable_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn l2_distance(x: &[f32], v: &[f64]) -> f64 {
    x.iter()
        .zip(v)
        .map(|(&a, &b)| (f64::from(a) - b).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Validates one update before it counts: the right length and finite values. (How large an
/// update may be is a question about the round it is in, see [`crate::NormScreen`].)
#[derive(Clone, Debug)]
pub struct UpdateValidator {
    len: usize,
}

impl UpdateValidator {
    /// A validator for vectors of `len`.
    pub fn new(len: usize) -> Self {
        Self { len }
    }

    /// Checks one update (given its coordinates' values and the length it claims); returns its norm.
    pub fn validate(&self, len: usize, values: &[f32]) -> Result<f64, DropReason> {
        if len != self.len {
            return Err(DropReason::WrongShape);
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(DropReason::NonFinite);
        }
        Ok(l2_norm(values))
    }
}

/// ‖v‖₂ in f64.
pub fn l2_norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(weight: f32, values: &[f32]) -> Weighted<'_> {
        Weighted { weight, values }
    }

    #[test]
    fn weighted_mean_weights() {
        let a = [1.0, 2.0];
        let b = [4.0, 8.0];
        let out = WeightedMean
            .aggregate(&[w(1.0, &a), w(2.0, &b)])
            .expect("valid");
        assert_eq!(out, vec![3.0, 6.0]);
        assert_eq!(WeightedMean.aggregate(&[]), Err(AggregateError::Empty));
        assert_eq!(
            WeightedMean.aggregate(&[w(0.0, &a)]),
            Err(AggregateError::BadWeights)
        );
        assert!(matches!(
            WeightedMean.aggregate(&[w(1.0, &a), w(1.0, &[1.0])]),
            Err(AggregateError::LengthMismatch { index: 1, .. })
        ));
    }

    #[test]
    fn the_clipped_mean_is_the_mean_within_the_radius_and_bounds_one_far_input() {
        // Three honest replicas near each other: nothing clipped, exactly the plain mean.
        let (a, b, c) = ([1.0f32, 2.0, 3.0], [1.2f32, 1.8, 3.1], [0.9f32, 2.1, 2.8]);
        let plain: Vec<f32> = (0..3)
            .map(|i| ((f64::from(a[i]) + f64::from(b[i]) + f64::from(c[i])) / 3.0) as f32)
            .collect();
        let honest = median_clipped_mean(&[&a, &b, &c], 1.0).expect("valid");
        assert_eq!((honest.mean, honest.clipped), (plain, 0));

        // A fourth one far off: clipped to the radius, so the mean moves past the median by at
        // most radius × ‖median‖ ÷ 4, where the plain mean follows it.
        let liar = [1000.0f32, -1000.0, 1000.0];
        let median = [1.1f64, 1.95, 2.95];
        let norm = median.iter().map(|m| m * m).sum::<f64>().sqrt();
        let out = median_clipped_mean(&[&a, &b, &c, &liar], 0.5).expect("valid");
        assert_eq!(out.clipped, 1);
        let moved = l2_distance(&out.mean, &median);
        let honest_spread = [&a, &b, &c]
            .iter()
            .map(|x| l2_distance(x.as_slice(), &median))
            .fold(0.0, f64::max);
        assert!(
            moved <= 0.5 * norm / 4.0 + honest_spread,
            "moved {moved} past the median"
        );
        let unclipped = median_clipped_mean(&[&a, &b, &c, &liar], 1e9).expect("valid");
        assert_eq!(unclipped.clipped, 0);
        assert!(l2_distance(&unclipped.mean, &median) > 400.0);

        // Not finite: counted as the median, and the mean stays finite.
        let nan = [f32::NAN, f32::INFINITY, 0.0];
        let out = median_clipped_mean(&[&a, &b, &nan], 1.0).expect("valid");
        assert_eq!(out.clipped, 1);
        assert!(out.mean.iter().all(|v| v.is_finite()));

        // Three members of one old group and a fourth far off: the median is theirs.
        let out = median_clipped_mean(&[&a, &a, &a, &liar], 0.0).expect("valid");
        assert_eq!((out.mean, out.clipped), (a.to_vec(), 1));
        assert_eq!(
            median_clipped_mean(&[], 1.0).map(|m| m.clipped),
            Err(AggregateError::Empty)
        );
    }

    #[test]
    fn trimmed_mean_drops_extremes() {
        let xs = [[1.0f32], [2.0], [3.0], [1000.0], [-1000.0]];
        let inputs: Vec<_> = xs.iter().map(|x| w(1.0, x)).collect();
        let out = TrimmedMean { trim: 1 }.aggregate(&inputs).expect("valid");
        assert_eq!(out, vec![2.0]);
    }

    #[test]
    fn validator_rejects_shape_and_nan() {
        let v = UpdateValidator::new(2);
        assert_eq!(v.validate(3, &[1.0, 1.0]), Err(DropReason::WrongShape));
        assert_eq!(v.validate(2, &[f32::NAN, 1.0]), Err(DropReason::NonFinite));
        assert_eq!(v.validate(2, &[3.0, 4.0]), Ok(5.0));
    }
}
