//! The backend-agnostic trainer: AdamW steps with warm-up + cosine, global-norm clipping and
//! gradient accumulation; plus what the peer runtime needs: H local steps, the parameters as one
//! flat vector, and applying an aggregated update through an outer optimizer.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use gradswarm_core::OuterOptimizer;
use gradswarm_core::synthetic::SplitMix;

use crate::adamw::AdamW;
use crate::config::{ModelConfig, TrainConfig};
use crate::data::{Batch, Sampler};
use crate::error::ModelError;
use crate::gpt::Gpt;
use crate::params::{self, ParamSpec};

/// Named flat f32 vectors (optimizer state, in the order and names of checkpoints).
pub type NamedVectors = Vec<(String, Vec<f32>)>;

/// What one optimizer step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The step's index (0-based) in the run.
    pub step: u64,
    /// Mean training loss of the step's batch, in nats per byte.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Bytes (tokens) processed.
    pub tokens: usize,
}

/// One peer's model and optimizer on one device.
pub struct Trainer {
    model: Gpt,
    optimizer: AdamW,
    model_config: ModelConfig,
    config: TrainConfig,
    device: Device,
    step: u64,
}

impl Trainer {
    /// A fresh model (weights [`params::initial`] from `config.seed`) on `device` (autodiff is
    /// added here).
    pub fn new(
        model_config: &ModelConfig,
        config: &TrainConfig,
        device: &Device,
    ) -> Result<Self, ModelError> {
        model_config.validate()?;
        config.validate()?;
        let device = device.clone().autodiff();
        let model = Gpt::new(model_config, &device);
        // Overwrite burn's draws (from a process-global RNG) with θ₀ that every peer computes alike.
        let init = params::initial(model_config, &params::layout(&model), config.seed);
        let model = params::from_flat(model, &init)?;
        Ok(Self {
            model,
            optimizer: AdamW::new(config),
            model_config: model_config.clone(),
            config: config.clone(),
            device,
            step: 0,
        })
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model's shape.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The training device (with autodiff).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model.
    pub fn model(&self) -> &Gpt {
        &self.model
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.model.num_params()
    }

    /// One optimizer step on `batch` (`config.batch_size` sequences, accumulated over micro-batches).
    /// A non-finite loss is an error and leaves the model and optimizer untouched.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepReport, ModelError> {
        let micro = self.config.micro_batch_size.min(batch.batch).max(1);
        let parts = batch.batch.div_ceil(micro);
        let mut accumulator = GradientsAccumulator::<Gpt>::new();
        let mut total: Option<Tensor<1>> = None;
        for p in 0..parts {
            let rows = batch.rows(p * micro..((p + 1) * micro).min(batch.batch));
            let (ids, targets) = rows.to_tensors(&self.device);
            let loss = self.model.loss(ids, targets);
            let scaled = loss.clone().div_scalar(parts as f32);
            accumulator.accumulate(
                &self.model,
                GradientsParams::from_grads(scaled.backward(), &self.model),
            );
            let value = loss.detach();
            total = Some(match total {
                Some(t) => t + value,
                None => value,
            });
        }
        let loss = match total {
            Some(t) => t
                .div_scalar(parts as f32)
                .try_into_scalar::<f32>()
                .map_err(|e| ModelError::Readback(format!("{e:?}")))?,
            None => return Err(ModelError::Config("empty batch".into())),
        };
        if !loss.is_finite() {
            return Err(ModelError::Diverged {
                step: self.step,
                loss,
            });
        }
        let lr = self.config.lr_at(self.step);
        let (model, stats) = self
            .optimizer
            .step(lr, self.model.clone(), accumulator.grads())?;
        self.model = model;
        let report = StepReport {
            step: self.step,
            loss,
            lr,
            grad_norm: stats.grad_norm,
            tokens: batch.batch * batch.time,
        };
        self.step += 1;
        Ok(report)
    }

    /// `h` local optimizer steps on batches drawn from `sampler` (H = 1 is gradient mode).
    pub fn local_steps(
        &mut self,
        sampler: &Sampler<'_>,
        h: u64,
    ) -> Result<Vec<StepReport>, ModelError> {
        let (b, t) = (self.config.batch_size, self.model_config.context);
        (0..h)
            .map(|_| {
                let batch = sampler.batch(self.step, b, t);
                self.train_step(&batch)
            })
            .collect()
    }

    /// Mean loss in nats per byte over `batches`, weighted by the bytes each predicts.
    pub fn evaluate(&self, batches: &[Batch]) -> Result<f64, ModelError> {
        let model = self.model.valid();
        let device = self.device.clone().without_autodiff();
        let (mut sum, mut count) = (0.0f64, 0usize);
        for batch in batches {
            let (ids, targets) = batch.to_tensors(&device);
            let loss = model
                .loss(ids, targets)
                .try_into_scalar::<f32>()
                .map_err(|e| ModelError::Readback(format!("{e:?}")))?;
            let n = batch.batch * batch.time;
            sum += f64::from(loss) * n as f64;
            count += n;
        }
        Ok(if count == 0 {
            f64::NAN
        } else {
            sum / count as f64
        })
    }

    /// Generates `n` bytes after `prompt` (temperature 0 is greedy), reproducibly from `seed`.
    pub fn sample(
        &self,
        prompt: &[u8],
        n: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<Vec<u8>, ModelError> {
        let model = self.model.valid();
        let device = self.device.clone().without_autodiff();
        let context = self.model_config.context;
        let mut rng = SplitMix::new(seed);
        let mut text: Vec<u8> = if prompt.is_empty() {
            b"\n".to_vec()
        } else {
            prompt.to_vec()
        };
        let start = text.len();
        for _ in 0..n {
            let window = &text[text.len().saturating_sub(context)..];
            let ids: Vec<i64> = window.iter().map(|&b| i64::from(b)).collect();
            let t = ids.len();
            let logits = model.forward(Tensor::from_data(TensorData::new(ids, [1, t]), &device));
            let last = logits
                .slice([0..1, t - 1..t])
                .reshape([crate::config::VOCAB])
                .try_into_vec_as::<f32>()
                .map_err(|e| ModelError::Readback(format!("{e:?}")))?;
            text.push(pick(&last, temperature, &mut rng));
        }
        Ok(text.split_off(start))
    }

    /// The flat layout of the parameters (names, shapes, offsets).
    pub fn layout(&self) -> Vec<ParamSpec> {
        params::layout(&self.model)
    }

    /// The parameters as one flat vector (order: [`crate::params`]).
    pub fn parameters(&self) -> Result<Vec<f32>, ModelError> {
        params::to_flat(&self.model)
    }

    /// Replaces the parameters with `flat`; optimizer state is kept.
    pub fn set_parameters(&mut self, flat: &[f32]) -> Result<(), ModelError> {
        self.model = params::from_flat(self.model.clone(), flat)?;
        Ok(())
    }

    /// Adds `delta` to the aggregate of a round applied `rounds_ago` rounds back, as if it had
    /// been there in time (late updates; see `OuterOptimizer::apply_late`).
    pub fn apply_late_update(
        &mut self,
        outer: &mut OuterOptimizer,
        delta: &[f32],
        rounds_ago: u64,
    ) -> Result<(), ModelError> {
        self.move_theta(delta.len(), |theta| {
            outer.apply_late(theta, delta, rounds_ago)
        })
    }

    /// θ ← OuterOpt(θ, aggregate): applies an aggregated update to the parameters.
    pub fn apply_update(
        &mut self,
        outer: &mut OuterOptimizer,
        aggregate: &[f32],
    ) -> Result<(), ModelError> {
        self.move_theta(aggregate.len(), |theta| outer.apply(theta, aggregate))
    }

    /// Reads θ, checks an update of length `len` fits it, lets `step` move it, and writes it back.
    fn move_theta(&mut self, len: usize, step: impl FnOnce(&mut [f32])) -> Result<(), ModelError> {
        let mut theta = self.parameters()?;
        if len != theta.len() {
            return Err(ModelError::ParamLength {
                got: len,
                expected: theta.len(),
            });
        }
        step(&mut theta);
        self.set_parameters(&theta)
    }

    /// The optimizer's state as named flat vectors (`optimizer.exp_avg.<param>`,
    /// `optimizer.exp_avg_sq.<param>`, as in checkpoints) and its update count.
    pub fn optimizer_state(&self) -> Result<(u64, NamedVectors), ModelError> {
        let mut out = Vec::new();
        for (name, m) in &self.optimizer.moments {
            for (kind, t) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
                let values = t
                    .clone()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| ModelError::Readback(format!("{e:?}")))?;
                out.push((format!("optimizer.{kind}.{name}"), values));
            }
        }
        Ok((self.optimizer.steps, out))
    }

    /// Replaces the step counter and the optimizer's state with another replica's (a late joiner's
    /// warm start). Tensors of unknown names or wrong lengths are errors; nothing changes then.
    pub fn set_optimizer_state(
        &mut self,
        step: u64,
        optimizer_steps: u64,
        tensors: &[(String, Vec<f32>)],
    ) -> Result<(), ModelError> {
        let sizes: std::collections::BTreeMap<String, usize> = self
            .layout()
            .into_iter()
            .map(|s| {
                let n = s.len();
                (s.name, n)
            })
            .collect();
        let dev = self.device.clone().without_autodiff();
        let mut optimizer = AdamW::new(&self.config);
        optimizer.steps = optimizer_steps;
        let mut halves: std::collections::BTreeMap<String, (Option<Tensor<1>>, Option<Tensor<1>>)> =
            Default::default();
        for (key, values) in tensors {
            let (kind, name) = key
                .strip_prefix("optimizer.exp_avg_sq.")
                .map(|n| (1, n))
                .or_else(|| key.strip_prefix("optimizer.exp_avg.").map(|n| (0, n)))
                .ok_or_else(|| ModelError::Config(format!("unknown optimizer tensor {key}")))?;
            if sizes.get(name) != Some(&values.len()) {
                return Err(ModelError::Config(format!(
                    "optimizer tensor {key} does not fit the model"
                )));
            }
            let t = Tensor::from_data(TensorData::new(values.clone(), [values.len()]), &dev);
            let slot = halves.entry(name.to_string()).or_default();
            if kind == 0 {
                slot.0 = Some(t)
            } else {
                slot.1 = Some(t)
            }
        }
        for (name, pair) in halves {
            if let (Some(exp_avg), Some(exp_avg_sq)) = pair {
                optimizer.moments.insert(
                    name,
                    crate::adamw::Moments {
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
        self.restore(step, optimizer);
        Ok(())
    }

    /// Restores the step counter and optimizer (from a checkpoint).
    pub(crate) fn restore(&mut self, step: u64, optimizer: AdamW) {
        self.step = step;
        self.optimizer = optimizer;
    }
}

/// Samples a byte from logits at `temperature` (0: argmax).
fn pick(logits: &[f32], temperature: f64, rng: &mut SplitMix) -> u8 {
    let argmax = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    if temperature <= 0.0 {
        return argmax as u8;
    }
    let max = f64::from(logits[argmax]);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - max) / temperature).exp())
        .collect();
    let mut u = rng.uniform() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as u8;
        }
        u -= w;
    }
    argmax as u8
}
