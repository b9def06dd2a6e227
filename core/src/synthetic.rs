//! Deterministic synthetic vectors for tests and benchmarks, shaped like real gradients.
//!
//! Real gradients are heavy-tailed and their scale differs by orders of magnitude between layers;
//! a top-k codec measured on Gaussian noise would look worse and one measured on a constant vector
//! better than on training. These generators model both effects with a fixed seed.

use crate::DecodedUpdate;
use crate::codec::rng::splitmix64;

/// A SplitMix64 stream: small, seedable, identical on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Student's t with 3 degrees of freedom: finite variance, heavy tails.
    pub fn student_t3(&mut self) -> f64 {
        let z = self.normal();
        let chi2: f64 = (0..3).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / 3.0).sqrt()
    }
}

/// A gradient-like vector: blocks of 4096 "layer" coordinates, each with a log-uniform scale over
/// three decades, filled with Student-t(3) noise.
pub fn gradient_like(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let scale = 10f64.powf(-3.0 - 3.0 * rng.uniform());
        let n = (len - out.len()).min(4096);
        out.extend((0..n).map(|_| (scale * rng.student_t3()) as f32));
    }
    out
}

/// One of a round's sparse updates around a direction they share: `count` coordinates of
/// `shared.len()` drawn at random (repeats merged), each `shared[i]` plus Gaussian noise of
/// `noise`. The tests of the screens and of late updates draw their rounds from it.
pub fn sparse_around(
    rng: &mut SplitMix,
    shared: &[f32],
    count: usize,
    noise: f32,
) -> DecodedUpdate {
    let len = shared.len();
    let mut indices: Vec<u32> = (0..count)
        .map(|_| (rng.next_u64() % len as u64) as u32)
        .collect();
    indices.sort_unstable();
    indices.dedup();
    let values = indices
        .iter()
        .map(|&i| shared[i as usize] + noise * rng.normal() as f32)
        .collect();
    DecodedUpdate {
        len,
        indices: Some(indices),
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_heavy_tailed() {
        let a = gradient_like(100_000, 1);
        assert_eq!(a, gradient_like(100_000, 1));
        assert_ne!(a, gradient_like(100_000, 2));
        // Kurtosis far above the Gaussian's 3 within one layer block.
        let b = &a[..4096];
        let m2 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / 4096.0;
        let m4 = b.iter().map(|&x| f64::from(x).powi(4)).sum::<f64>() / 4096.0;
        assert!(m4 / (m2 * m2) > 5.0, "kurtosis {}", m4 / (m2 * m2));
    }
}
