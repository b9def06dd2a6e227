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
}
