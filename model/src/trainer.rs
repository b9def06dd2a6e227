//! The backend-agnostic trainer: AdamW steps with warm-up + cosine, global-norm clipping and
//! gradient accumulation; plus what the peer runtime needs: H local steps, the parameters as one
//! flat vector, and applying an aggregated update through an outer optimizer.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::Transaction;
use gradswarm_core::OuterOptimizer;
use gradswarm_core::synthetic::SplitMix;

use crate::adamw::AdamW;
use crate::config::{ModelConfig, TrainConfig};
use crate::data::{Batch, Sampler};
use crate::error::ModelError;
use crate::gpt::Gpt;
use crate::params::{self, ParamSpec};
use crate::readback;

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
    /// Whether the device is burn's CPU backend, where shards of a batch run on threads.
    on_cpu: bool,
    /// Parameter tensors in the model: every step must bring a gradient for each.
    tensors: usize,
    step: u64,
    /// One single-thread rayon pool per shard thread (CPU backend, native only).
    #[cfg(not(target_arch = "wasm32"))]
    pools: Vec<rayon::ThreadPool>,
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
        let on_cpu = device.clone().without_autodiff() == Device::flex();
        let device = device.clone().autodiff();
        let model = Gpt::new(model_config, &device);
        // Overwrite burn's draws (from a process-global RNG) with θ₀ that every peer computes alike.
        let init = params::initial(model_config, &params::layout(&model), config.seed);
        let model = params::from_flat(model, &init)?;
        let tensors = params::layout(&model).len();
        #[cfg(not(target_arch = "wasm32"))]
        let pools = if on_cpu && config.threads > 1 {
            shard_pools(config.threads)
        } else {
            Vec::new()
        };
        Ok(Self {
            model,
            optimizer: AdamW::new(config),
            model_config: model_config.clone(),
            config: config.clone(),
            device,
            on_cpu,
            tensors,
            step: 0,
            #[cfg(not(target_arch = "wasm32"))]
            pools,
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

    /// Normalizes AdamW's steps for the global batch of `n` peers (see [`AdamW::set_replicas`]).
    pub fn set_replicas(&mut self, n: usize) {
        self.optimizer.set_replicas(n);
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.model.num_params()
    }

    /// One optimizer step on `batch` (`config.batch_size` sequences, accumulated over micro-batches).
    /// A non-finite loss is an error and leaves the model and optimizer untouched.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepReport, ModelError> {
        let (grads, tx) = self.backward(batch)?;
        let read = readback::execute(tx)?;
        self.finish_step(batch, grads, read)
    }

    /// [`Trainer::train_step`] without blocking on the device (the browser's WebGPU).
    pub async fn train_step_async(&mut self, batch: &Batch) -> Result<StepReport, ModelError> {
        let (grads, tx) = self.backward(batch)?;
        let read = readback::execute_async(tx).await?;
        self.finish_step(batch, grads, read)
    }

    /// Forward and backward passes over `batch`'s micro-batches: the accumulated gradients, and
    /// the one read the optimizer step waits for (the mean loss, then Σ‖g‖² for clipping).
    fn backward(&mut self, batch: &Batch) -> Result<(GradientsParams, Transaction), ModelError> {
        if batch.batch == 0 {
            return Err(ModelError::Config("empty batch".into()));
        }
        let micro = self.config.micro_batch_size.min(batch.batch).max(1);
        let threads = if self.on_cpu { self.config.threads } else { 1 };
        let mut accumulator = GradientsAccumulator::<Gpt>::new();
        let mut total: Option<Tensor<1>> = None;
        for start in (0..batch.batch).step_by(micro) {
            let rows = batch.rows(start..(start + micro).min(batch.batch));
            for (grads, loss) in self.shard_passes(&rows, batch.batch, threads) {
                accumulator.accumulate(&self.model, grads);
                total = Some(match total {
                    Some(t) => t + loss,
                    None => loss,
                });
            }
        }
        let Some(total) = total else {
            return Err(ModelError::Config("empty batch".into()));
        };
        let grads = accumulator.grads();
        // One transaction holds tensors of one kind: the loss leaves the autodiff graph like Σ‖g‖².
        let mut tx = Transaction::default().register(total.inner());
        if let Some(sq) = AdamW::squared_norm(&self.model, &grads) {
            tx = tx.register(sq);
        }
        Ok((grads, tx))
    }

    /// The passes over one micro-batch, split into up to `threads` shards of rows: each shard's
    /// gradients of its share of the step's loss (rows / `of` of the mean), and that share,
    /// detached. In shard order, so the sum does not depend on scheduling.
    fn shard_passes(
        &self,
        rows: &Batch,
        of: usize,
        threads: usize,
    ) -> Vec<(GradientsParams, Tensor<1>)> {
        let shards = threads.min(rows.batch).max(1);
        let per = rows.batch.div_ceil(shards);
        let parts: Vec<Batch> = (0..rows.batch)
            .step_by(per)
            .map(|s| rows.rows(s..(s + per).min(rows.batch)))
            .collect();
        let pass = |model: &Gpt, part: &Batch| {
            let (ids, targets) = part.to_tensors(&self.device);
            let share = model
                .loss(ids, targets)
                .mul_scalar(part.batch as f32 / of as f32);
            let grads = GradientsParams::from_grads(share.clone().backward(), model);
            (grads, share.detach())
        };
        #[cfg(not(target_arch = "wasm32"))]
        if parts.len() > 1 {
            // Each thread works on a fork of the model: the same parameter ids, but its own
            // autodiff graph, so that the backward passes do not serialise on one graph's lock.
            return std::thread::scope(|scope| {
                let pools = (0..parts.len()).map(|i| self.pools.get(i));
                let handles: Vec<_> = parts
                    .iter()
                    .zip(pools)
                    .map(|(part, pool)| {
                        let model = self.model.clone().fork(&self.device);
                        // Each shard's ops (gemm included) stay on its own thread: on the shared
                        // global pool, the shards' threads and rayon's workers oversubscribed
                        // the cores and handed every large op across threads.
                        scope.spawn(move || match pool {
                            Some(pool) => pool.install(|| pass(&model, part)),
                            None => pass(&model, part),
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            });
        }
        parts.iter().map(|part| pass(&self.model, part)).collect()
    }

    /// The optimizer step of [`Trainer::backward`]'s gradients, once its read has arrived.
    fn finish_step(
        &mut self,
        batch: &Batch,
        grads: GradientsParams,
        read: Vec<TensorData>,
    ) -> Result<StepReport, ModelError> {
        let mut read = read.into_iter();
        let loss = readback::scalar(
            read.next()
                .ok_or_else(|| ModelError::Readback("no loss read".into()))?,
        )?;
        let grad_norm = match read.next() {
            Some(sq) => readback::scalar(sq)?.sqrt(),
            None => 0.0,
        };
        if !loss.is_finite() {
            return Err(ModelError::Diverged {
                step: self.step,
                loss,
            });
        }
        // A lost gradient would silently freeze a tensor: refuse the step instead.
        if grads.len() != self.tensors {
            return Err(ModelError::MissingGradients {
                got: grads.len(),
                expected: self.tensors,
            });
        }
        let lr = self.config.lr_at(self.step);
        self.model = self
            .optimizer
            .step(lr, self.model.clone(), grads, grad_norm);
        let report = StepReport {
            step: self.step,
            loss,
            lr,
            grad_norm,
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

    /// [`Trainer::local_steps`] without blocking on the device.
    pub async fn local_steps_async(
        &mut self,
        sampler: &Sampler<'_>,
        h: u64,
    ) -> Result<Vec<StepReport>, ModelError> {
        let (b, t) = (self.config.batch_size, self.model_config.context);
        let mut reports = Vec::with_capacity(h as usize);
        for _ in 0..h {
            let batch = sampler.batch(self.step, b, t);
            reports.push(self.train_step_async(&batch).await?);
        }
        Ok(reports)
    }

    /// Mean loss in nats per byte over `batches`, weighted by the bytes each predicts.
    pub fn evaluate(&self, batches: &[Batch]) -> Result<f64, ModelError> {
        let read = readback::execute(self.eval_losses(batches))?;
        Self::mean_loss(batches, read)
    }

    /// [`Trainer::evaluate`] without blocking on the device.
    pub async fn evaluate_async(&self, batches: &[Batch]) -> Result<f64, ModelError> {
        let read = readback::execute_async(self.eval_losses(batches)).await?;
        Self::mean_loss(batches, read)
    }

    /// Every batch's mean loss, as one read.
    fn eval_losses(&self, batches: &[Batch]) -> Transaction {
        let model = self.model.valid();
        let device = self.device.clone().without_autodiff();
        batches.iter().fold(Transaction::default(), |tx, batch| {
            let (ids, targets) = batch.to_tensors(&device);
            tx.register(model.loss(ids, targets))
        })
    }

    fn mean_loss(batches: &[Batch], read: Vec<TensorData>) -> Result<f64, ModelError> {
        if read.len() != batches.len() {
            return Err(ModelError::Readback(format!(
                "read {} losses for {} batches",
                read.len(),
                batches.len()
            )));
        }
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (batch, loss) in batches.iter().zip(read) {
            let n = batch.batch * batch.time;
            sum += f64::from(readback::scalar(loss)?) * n as f64;
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

    /// [`Trainer::parameters`] without blocking on the device.
    pub async fn parameters_async(&self) -> Result<Vec<f32>, ModelError> {
        params::to_flat_async(&self.model).await
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
        let (names, tx) = self.moments_read();
        self.named(names, readback::execute(tx)?)
    }

    /// [`Trainer::optimizer_state`] without blocking on the device.
    pub async fn optimizer_state_async(&self) -> Result<(u64, NamedVectors), ModelError> {
        let (names, tx) = self.moments_read();
        let read = readback::execute_async(tx).await?;
        self.named(names, read)
    }

    /// Every moment tensor as one read, with the names they are stored under.
    fn moments_read(&self) -> (Vec<String>, Transaction) {
        let mut names = Vec::new();
        let mut tx = Transaction::default();
        for (name, m) in &self.optimizer.moments {
            for (kind, t) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
                names.push(format!("optimizer.{kind}.{name}"));
                tx = tx.register(t.clone());
            }
        }
        (names, tx)
    }

    fn named(
        &self,
        names: Vec<String>,
        read: Vec<TensorData>,
    ) -> Result<(u64, NamedVectors), ModelError> {
        if read.len() != names.len() {
            return Err(ModelError::Readback(format!(
                "read {} optimizer tensors, expected {}",
                read.len(),
                names.len()
            )));
        }
        let out = names
            .into_iter()
            .zip(read)
            .map(|(name, data)| Ok((name, readback::floats(data)?)))
            .collect::<Result<_, ModelError>>()?;
        Ok((self.optimizer.steps, out))
    }

    /// Replaces the step counter and the optimizer's state with another replica's (a late joiner's
    /// warm start), keeping this trainer's replica count. Tensors of unknown names or wrong lengths are errors; nothing changes then.
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
        // The replica count is a setting of this peer, not state to take from another.
        optimizer.set_replicas(self.optimizer.replicas());
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

/// `n` single-thread rayon pools, one per shard thread; none when a pool cannot be built (the
/// shards then share rayon's global pool, which is slower but correct).
#[cfg(not(target_arch = "wasm32"))]
fn shard_pools(n: usize) -> Vec<rayon::ThreadPool> {
    (0..n)
        .map(|i| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(move |_| format!("gradswarm-shard-{i}"))
                .build()
        })
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            tracing::warn!("no per-shard thread pools ({e}): shards share the global pool");
            Vec::new()
        })
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
