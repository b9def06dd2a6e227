//! The synthetic objective every simulated peer trains on: a quadratic
//! `f(θ) = ½ Σ a_k (θ_k − θ*_k)²` with curvatures `a_k` spread over two decades (an
//! ill-conditioned problem, as a network's loss is), and gradients with Gaussian noise (a
//! minibatch's). Losses are reported relative to `f(θ₀)`, so every run starts at 1.

use gradswarm_core::synthetic::SplitMix;

/// A quadratic with its optimum and curvatures, drawn from a seed.
#[derive(Clone, Debug)]
pub struct Quadratic {
    curvature: Vec<f32>,
    optimum: Vec<f32>,
    /// `f(0)`, the loss every peer starts from.
    start: f64,
    /// The gradient noise's standard deviation per coordinate.
    noise: f32,
    /// The direction along which a peer's data may pull its optimum off the common one
    /// ([`Quadratic::local_steps`]'s `shift`): standard normal per coordinate, so as long as the
    /// optimum.
    skew: Vec<f32>,
}

impl Quadratic {
    /// A quadratic over `dim` coordinates, curvatures log-uniform in [0.01, 1], the optimum
    /// standard normal, gradient noise `noise`.
    pub fn new(dim: usize, noise: f32, seed: u64) -> Self {
        let mut rng = SplitMix::new(seed);
        let curvature: Vec<f32> = (0..dim)
            .map(|_| 10f64.powf(-2.0 * rng.uniform()) as f32)
            .collect();
        let optimum: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        let skew: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        let mut q = Self {
            curvature,
            optimum,
            start: 1.0,
            noise,
            skew,
        };
        q.start = q.loss(&vec![0.0; dim]).max(f64::MIN_POSITIVE);
        q
    }

    /// The number of coordinates.
    pub fn dim(&self) -> usize {
        self.curvature.len()
    }

    /// `f(θ) / f(0)`.
    pub fn relative_loss(&self, theta: &[f32]) -> f64 {
        self.loss(theta) / self.start
    }

    fn loss(&self, theta: &[f32]) -> f64 {
        theta
            .iter()
            .zip(&self.curvature)
            .zip(&self.optimum)
            .map(|((&t, &a), &o)| 0.5 * f64::from(a) * f64::from(t - o).powi(2))
            .sum()
    }

    /// `steps` steps of SGD at `lr` from `theta` on noisy gradients drawn from `rng`, toward
    /// the optimum moved `shift` times a direction (a peer whose data differ: 0 for the common
    /// optimum): the shared skew direction, or with `own` one drawn from that seed (a peer whose
    /// data differ its own way). Returns the pseudo-gradient `Δ = θ_start − θ_end` (what a
    /// peer's update carries).
    pub fn local_steps(
        &self,
        theta: &[f32],
        (steps, lr): (usize, f32),
        (shift, own): (f32, Option<u64>),
        rng: &mut SplitMix,
    ) -> Vec<f32> {
        let drawn: Vec<f32>;
        let direction = match own {
            Some(seed) if shift != 0.0 => {
                let mut draw = SplitMix::new(seed);
                drawn = (0..self.dim()).map(|_| draw.normal() as f32).collect();
                &drawn
            }
            _ => &self.skew,
        };
        let mut local = theta.to_vec();
        for _ in 0..steps {
            let optimum = self.optimum.iter().zip(direction);
            for ((t, &a), (&o, &s)) in local.iter_mut().zip(&self.curvature).zip(optimum) {
                let g = a * (*t - o - shift * s) + self.noise * rng.normal() as f32;
                *t -= lr * g;
            }
        }
        theta.iter().zip(&local).map(|(s, e)| s - e).collect()
    }

    /// Where `theta` lies along the skew direction from the common optimum, in units of that
    /// direction: 0 where the peers' shifts balance out, their shift where one kind of data won.
    pub fn skew_of(&self, theta: &[f64]) -> f64 {
        let (mut dot, mut norm) = (0.0, 0.0);
        for ((&t, &o), &s) in theta.iter().zip(&self.optimum).zip(&self.skew) {
            dot += (t - f64::from(o)) * f64::from(s);
            norm += f64::from(s).powi(2);
        }
        dot / norm.max(f64::MIN_POSITIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_descend_and_the_loss_starts_at_one() {
        let q = Quadratic::new(1000, 0.0, 1);
        let theta = vec![0.0; 1000];
        assert!((q.relative_loss(&theta) - 1.0).abs() < 1e-9);
        let delta = q.local_steps(&theta, (4, 0.5), (0.0, None), &mut SplitMix::new(2));
        let after: Vec<f32> = theta.iter().zip(&delta).map(|(t, d)| t - d).collect();
        assert!(q.relative_loss(&after) < 0.9);
    }
}
