//! The outer optimizer: how an aggregated update moves the shared parameters.
//!
//! In gradient mode (H = 1) the update is an averaged gradient already shaped by each peer's inner
//! optimizer step, so plain SGD with lr 1 reproduces data-parallel training. In local-steps mode
//! the update is a pseudo-gradient `Δ = θ_anchor − θ_local`, and DiLoCo (Douillard et al. 2023)
//! applies it with Nesterov momentum (lr 0.7, momentum 0.9).

use serde::{Deserialize, Serialize};

/// The outer optimizer's configuration (TOML: `outer = { kind = "nesterov", lr = 0.7, momentum = 0.9 }`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OuterConfig {
    /// `θ ← θ − lr · Δ`.
    Sgd {
        /// Step size.
        lr: f32,
    },
    /// `m ← μ m + Δ; θ ← θ − lr (Δ + μ m)` (PyTorch's Nesterov form).
    Nesterov {
        /// Step size.
        lr: f32,
        /// Momentum μ.
        momentum: f32,
    },
}

impl Default for OuterConfig {
    fn default() -> Self {
        Self::Sgd { lr: 1.0 }
    }
}

impl OuterConfig {
    /// How far θ eventually moves per unit of aggregate applied once: `lr` for SGD, and
    /// `lr / (1 − μ)` for Nesterov (the step and the momentum it leaves behind).
    pub fn eventual_step(&self) -> f32 {
        match *self {
            Self::Sgd { lr } => lr,
            Self::Nesterov { lr, momentum } if momentum < 1.0 => lr / (1.0 - momentum),
            Self::Nesterov { lr, .. } => lr,
        }
    }
}

impl OuterConfig {
    /// How far θ has moved, per unit of aggregate, `rounds_ago` rounds after that aggregate was
    /// applied (at least 1: the round right after it): what a late part of that round moves θ
    /// by now ([`OuterOptimizer::apply_late`]). `lr` for SGD; `lr (1 + μ + … + μ^d)` for Nesterov.
    pub fn late_gain(&self, rounds_ago: u64) -> f32 {
        self.gains(rounds_ago).0
    }

    /// Whether the optimizer keeps a momentum, which replicas that took the same updates share
    /// and drift repair must carry with θ.
    pub fn has_momentum(&self) -> bool {
        matches!(self, Self::Nesterov { .. })
    }

    /// What a momentum difference `Δm` held `rounds` rounds (applied since) did: θ moved by
    /// `theta_gain · Δm` (Nesterov: `−lr (μ² + … + μ^(D+1))`), and `left · Δm` (`μ^D`) is still in
    /// the momentum. (0, 1) for no momentum at all and for none of its rounds.
    pub fn momentum_carry(&self, rounds: u64) -> (f32, f32) {
        match *self {
            Self::Sgd { .. } => (0.0, 1.0),
            Self::Nesterov { lr, momentum } => {
                let mu = f64::from(momentum);
                let d = rounds.min(1 << 16);
                let moved = (2..=d + 1).fold(0.0, |acc, j| acc + mu.powi(j as i32));
                ((-f64::from(lr) * moved) as f32, mu.powi(d as i32) as f32)
            }
        }
    }

    /// θ's and the momentum's gains for a late aggregate `rounds_ago` rounds back
    /// ([`OuterOptimizer::apply_late`]).
    fn gains(&self, rounds_ago: u64) -> (f32, f32) {
        let d = rounds_ago.max(1);
        match *self {
            Self::Sgd { lr } => (lr, 0.0),
            Self::Nesterov { lr, momentum } => {
                let mu = f64::from(momentum);
                let steps = (1..=d.min(1 << 16)).fold(1.0, |acc, j| acc + mu.powi(j as i32));
                let momentum_gain = mu.powi((d - 1).min(1 << 16) as i32);
                ((f64::from(lr) * steps) as f32, momentum_gain as f32)
            }
        }
    }

    /// What the momentum holds of a late aggregate `rounds_ago` rounds back, per unit: `μ^(d−1)`
    /// (0 without momentum).
    pub fn late_momentum_gain(&self, rounds_ago: u64) -> f32 {
        self.gains(rounds_ago).1
    }
}

/// The outer optimizer and its state over a flat parameter vector.
#[derive(Clone, Debug)]
pub struct OuterOptimizer {
    config: OuterConfig,
    momentum: Vec<f32>,
}

impl OuterOptimizer {
    /// An optimizer with zero momentum.
    pub fn new(config: OuterConfig) -> Self {
        Self {
            config,
            momentum: Vec::new(),
        }
    }

    /// Applies the aggregated update `delta` to `params` in place (both the same length).
    pub fn apply(&mut self, params: &mut [f32], delta: &[f32]) {
        debug_assert_eq!(params.len(), delta.len());
        match self.config {
            OuterConfig::Sgd { lr } => params
                .iter_mut()
                .zip(delta)
                .for_each(|(p, &d)| *p -= lr * d),
            OuterConfig::Nesterov { lr, momentum } => {
                if self.momentum.len() != params.len() {
                    self.momentum = vec![0.0; params.len()];
                }
                for ((p, &d), m) in params.iter_mut().zip(delta).zip(&mut self.momentum) {
                    *m = momentum * *m + d;
                    *p -= lr * (d + momentum * *m);
                }
            }
        }
    }

    /// Adds `delta` to the aggregate of a round applied `rounds_ago` rounds back (1 = the last one
    /// applied), as if it had been there then: the late part of a round (see [`crate::RoundBook`]).
    /// The optimizer is linear in the aggregate, so the effect is closed-form: SGD moves θ by
    /// `−lr δ`; Nesterov by `−lr (1 + μ + … + μ^d) δ` and its momentum by `μ^(d−1) δ`.
    pub fn apply_late(&mut self, params: &mut [f32], delta: &[f32], rounds_ago: u64) {
        debug_assert_eq!(params.len(), delta.len());
        let d = rounds_ago.max(1);
        match self.config {
            OuterConfig::Sgd { lr } => params
                .iter_mut()
                .zip(delta)
                .for_each(|(p, &x)| *p -= lr * x),
            OuterConfig::Nesterov { .. } => {
                if self.momentum.len() != params.len() {
                    self.momentum = vec![0.0; params.len()];
                }
                let (theta_gain, momentum_gain) = self.config.gains(d);
                for ((p, &x), m) in params.iter_mut().zip(delta).zip(&mut self.momentum) {
                    *m += momentum_gain * x;
                    *p -= theta_gain * x;
                }
            }
        }
    }

    /// Adds `dm` to the momentum as it was `rounds` rounds ago (applied since): θ moves as that
    /// momentum would have moved it, and the momentum keeps what is left of it
    /// ([`OuterConfig::momentum_carry`]). How drift repair moves a replica's momentum with θ.
    pub fn pull_momentum(&mut self, theta: &mut [f32], dm: &[f32], rounds: u64) {
        if !self.config.has_momentum() {
            return;
        }
        if self.momentum.len() != theta.len() {
            self.momentum = vec![0.0; theta.len()];
        }
        let (theta_gain, left) = self.config.momentum_carry(rounds);
        for ((t, m), &x) in theta.iter_mut().zip(&mut self.momentum).zip(dm) {
            *t += theta_gain * x;
            *m += left * x;
        }
    }

    /// The momentum buffer (empty until the first Nesterov step), for checkpoints.
    pub fn momentum(&self) -> &[f32] {
        &self.momentum
    }

    /// Restores a momentum buffer from a checkpoint.
    pub fn set_momentum(&mut self, momentum: Vec<f32>) {
        self.momentum = momentum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_with_lr_one_subtracts_the_update() {
        let mut p = vec![1.0, 2.0];
        OuterOptimizer::new(OuterConfig::default()).apply(&mut p, &[0.5, -1.0]);
        assert_eq!(p, vec![0.5, 3.0]);
    }

    #[test]
    fn nesterov_accumulates_momentum() {
        let mut o = OuterOptimizer::new(OuterConfig::Nesterov {
            lr: 1.0,
            momentum: 0.5,
        });
        let mut p = vec![0.0];
        o.apply(&mut p, &[1.0]); // m = 1, step = 1 + 0.5 = 1.5
        assert_eq!(p, vec![-1.5]);
        o.apply(&mut p, &[1.0]); // m = 1.5, step = 1 + 0.75 = 1.75
        assert_eq!(p, vec![-3.25]);
        assert_eq!(o.momentum(), &[1.5]);
    }

    /// A momentum difference pulled in `rounds` rounds late leaves θ and the momentum where
    /// they would be had it been there all along.
    #[test]
    fn a_momentum_pulled_late_lands_where_it_would_have_been() {
        let config = OuterConfig::Nesterov {
            lr: 0.7,
            momentum: 0.9,
        };
        let aggregates = [[1.0f32, -2.0], [0.5, 0.25], [-1.0, 1.0]];
        let (mut a, mut b) = (OuterOptimizer::new(config), OuterOptimizer::new(config));
        let (mut ta, mut tb) = (vec![0.0f32; 2], vec![0.0f32; 2]);
        a.apply(&mut ta, &[0.0, 0.0]);
        b.apply(&mut tb, &[0.0, 0.0]);
        // `a` holds a momentum of (3, −1) more from the start; `b` is told so three rounds on.
        a.momentum
            .iter_mut()
            .zip([3.0, -1.0])
            .for_each(|(m, x)| *m += x);
        for g in &aggregates {
            a.apply(&mut ta, g);
            b.apply(&mut tb, g);
        }
        b.pull_momentum(&mut tb, &[3.0, -1.0], 3);
        for (x, y) in ta
            .iter()
            .zip(&tb)
            .chain(a.momentum().iter().zip(b.momentum()))
        {
            assert!((x - y).abs() < 1e-5, "{ta:?} {tb:?}");
        }
    }

    #[test]
    fn the_eventual_step_is_where_one_aggregate_leaves_theta() {
        for config in [
            OuterConfig::Sgd { lr: 2.0 },
            OuterConfig::Nesterov {
                lr: 0.7,
                momentum: 0.9,
            },
        ] {
            // One aggregate of 1, then zeros until the momentum has died out.
            let mut o = OuterOptimizer::new(config);
            let mut p = vec![0.0f32];
            o.apply(&mut p, &[1.0]);
            for _ in 0..400 {
                o.apply(&mut p, &[0.0]);
            }
            let moved = -p[0];
            assert!(
                (moved - config.eventual_step()).abs() < 1e-3 * moved,
                "{config:?}: moved {moved}, eventual step {}",
                config.eventual_step()
            );
        }
    }

    #[test]
    fn a_late_part_of_a_round_lands_where_it_would_have_inline() {
        for config in [
            OuterConfig::Sgd { lr: 0.7 },
            OuterConfig::Nesterov {
                lr: 0.7,
                momentum: 0.9,
            },
        ] {
            let rounds = [[0.3f32, -1.0], [0.5, 0.25], [-0.2, 0.1], [1.0, 2.0]];
            let late = [0.125f32, -0.5];
            // Inline: the late part was in round 0's aggregate.
            let mut inline = OuterOptimizer::new(config);
            let mut p_inline = vec![1.0f32, 2.0];
            for (i, r) in rounds.iter().enumerate() {
                let mut agg = *r;
                if i == 0 {
                    agg[0] += late[0];
                    agg[1] += late[1];
                }
                inline.apply(&mut p_inline, &agg);
            }
            // Late: it arrives after round 2 was applied, and is added before round 3.
            let mut later = OuterOptimizer::new(config);
            let mut p_late = vec![1.0f32, 2.0];
            for (i, r) in rounds.iter().enumerate() {
                if i == 3 {
                    later.apply_late(&mut p_late, &late, 3);
                }
                later.apply(&mut p_late, r);
            }
            for (a, b) in p_inline.iter().zip(&p_late) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{config:?}: {p_inline:?} vs {p_late:?}"
                );
            }
            for (a, b) in inline.momentum().iter().zip(later.momentum()) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }
}
