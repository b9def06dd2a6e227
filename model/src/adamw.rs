//! AdamW with global-norm gradient clipping, over burn tensors, with state keyed by parameter name.
//!
//! burn ships an AdamW, but its state is keyed by random parameter ids, saved only in burn's own
//! record format, and its norm clipping is per tensor. gradswarm's checkpoints are safetensors
//! readable from Python and must resume bit-for-bit, and training wants PyTorch's global-norm
//! clipping; so the update (Loshchilov & Hutter 2019) is written here, as tensor ops on the
//! parameters' own device.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::config::TrainConfig;
use crate::gpt::Gpt;
use crate::params::PathTracker;

/// First and second moments of one parameter, flattened.
#[derive(Clone, Debug)]
pub struct Moments {
    /// Exponential average of gradients (PyTorch's `exp_avg`).
    pub exp_avg: Tensor<1>,
    /// Exponential average of squared gradients (`exp_avg_sq`).
    pub exp_avg_sq: Tensor<1>,
}

/// The optimizer: hyper-parameters, step count and per-parameter moments.
#[derive(Clone, Debug)]
pub struct AdamW {
    beta1: f64,
    beta2: f64,
    epsilon: f64,
    weight_decay: f64,
    grad_clip: f64,
    /// Updates applied so far (bias correction uses it).
    pub steps: u64,
    /// Peers whose batches make the global batch this optimizer normalizes for (1: its own batch
    /// alone; see [`AdamW::set_replicas`]).
    replicas: usize,
    /// Moments by parameter name.
    pub moments: BTreeMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimizer from the training configuration.
    pub fn new(config: &TrainConfig) -> Self {
        Self {
            beta1: config.beta1,
            beta2: config.beta2,
            epsilon: config.epsilon,
            weight_decay: config.weight_decay,
            grad_clip: config.grad_clip,
            steps: 0,
            replicas: 1,
            moments: BTreeMap::new(),
        }
    }

    /// Normalizes each step by an estimate of the second moment of the gradient of `n` peers'
    /// batches together rather than of this peer's batch alone (1: plain AdamW).
    ///
    /// Why: when peers average their AdamW updates, each has divided its gradient by
    /// `√(g² + σ²/b)` for its own batch b, where data-parallel AdamW divides by `√(g² + σ²/(n·b))`;
    /// where noise dominates, the swarm's mean step is then up to `√n` times too short. With the
    /// bias-corrected moments, `m̂²` estimates g² and `v̂ − m̂²` the noise `σ²/b`, so
    /// `m̂² + (v̂ − m̂²)/n` estimates what the global batch's `v` would have been.
    pub fn set_replicas(&mut self, n: usize) {
        self.replicas = n.max(1);
    }

    /// The replica count set by [`AdamW::set_replicas`] (1: plain AdamW).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Σ‖g‖² over every parameter of `model` that has a gradient, as a one-element device tensor
    /// (None when none has): the trainer reads it back together with the loss, in one transfer.
    pub fn squared_norm(model: &Gpt, grads: &GradientsParams) -> Option<Tensor<1>> {
        let mut norm = SquaredNorm { grads, acc: None };
        model.visit(&mut norm);
        norm.acc
    }

    /// Applies one update with learning rate `lr` and returns the updated model; `grad_norm` is
    /// the global gradient norm (the square root of [`AdamW::squared_norm`]), for clipping.
    pub fn step(&mut self, lr: f64, model: Gpt, mut grads: GradientsParams, grad_norm: f32) -> Gpt {
        let clip = if self.grad_clip > 0.0 && f64::from(grad_norm) > self.grad_clip {
            (self.grad_clip / (f64::from(grad_norm) + 1e-6)) as f32
        } else {
            1.0
        };
        self.steps += 1;
        let t = self.steps.min(i32::MAX as u64) as i32;
        let (bias1, bias2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        let mut update = Update {
            opt: self,
            grads: &mut grads,
            path: PathTracker::default(),
            lr,
            clip,
            bias1,
            bias2,
        };
        model.map(&mut update)
    }
}

/// Σ‖g‖² over all parameters, as a device tensor.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    acc: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.acc = Some(match self.acc.take() {
                Some(a) => a + s,
                None => s,
            });
        }
    }
}

struct Update<'a> {
    opt: &'a mut AdamW,
    grads: &'a mut GradientsParams,
    path: PathTracker,
    lr: f64,
    clip: f32,
    bias1: f64,
    bias2: f64,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return param;
        };
        let name = self.path.name();
        let (b1, b2) = (self.opt.beta1, self.opt.beta2);
        let replicas = self.opt.replicas;
        let (lr, eps, wd) = (self.lr, self.opt.epsilon, self.opt.weight_decay);
        let (clip, bias1, bias2) = (self.clip, self.bias1, self.bias2);
        let moments = &mut self.opt.moments;
        param.map(|tensor| {
            let require_grad = tensor.is_require_grad();
            let x = tensor.inner();
            let dims = x.dims();
            let n: usize = dims.iter().product();
            let g = grad.inner().mul_scalar(clip).reshape([n]);
            let (m, v) = match moments.remove(&name) {
                Some(Moments {
                    exp_avg,
                    exp_avg_sq,
                }) => (
                    exp_avg.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1),
                    exp_avg_sq.mul_scalar(b2) + g.square().mul_scalar(1.0 - b2),
                ),
                None => (
                    g.clone().mul_scalar(1.0 - b1),
                    g.square().mul_scalar(1.0 - b2),
                ),
            };
            let m_hat = m.clone().div_scalar(bias1);
            let v_hat = v.clone().div_scalar(bias2);
            let v_hat = if replicas > 1 {
                // g² + σ²/(n·b), estimated: m̂² for g², v̂ − m̂² (never below 0) for σ²/b.
                let g2 = m_hat.clone().square();
                let noise = (v_hat - g2.clone()).clamp_min(0.0);
                g2 + noise.div_scalar(replicas as f64)
            } else {
                v_hat
            };
            let denom = v_hat.sqrt().add_scalar(eps);
            let step = m_hat.div(denom).reshape(dims);
            // Decoupled weight decay on matrices only: norms' gains, biases stay undecayed.
            let x = if D >= 2 && wd > 0.0 {
                x.mul_scalar(1.0 - lr * wd)
            } else {
                x
            };
            let x = x - step.mul_scalar(lr);
            moments.insert(
                name,
                Moments {
                    exp_avg: m,
                    exp_avg_sq: v,
                },
            );
            let out = Tensor::from_inner(x);
            if require_grad {
                out.require_grad()
            } else {
                out
            }
        })
    }
}
