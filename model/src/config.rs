//! The model, training and data configurations (the `[model]`, `[train]` and `[data]` tables of a
//! gradswarm TOML file). Every field has a default, so an empty file is the default job.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Byte-level vocabulary: every byte value is a token, so no tokenizer file is needed.
pub const VOCAB: usize = 256;

/// Shape of the GPT-style decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads (must divide `d_model`).
    pub heads: usize,
    /// Context length in bytes.
    pub context: usize,
    /// MLP hidden width as a multiple of `d_model`.
    pub mlp_ratio: usize,
    /// Share the token embedding with the output head.
    pub tied_head: bool,
    /// The MLP's non-linearity.
    pub activation: Activation,
}

/// The MLP's non-linearity (`model.activation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x)², as in Primer and modded-nanogpt: two cheap element-wise passes each way. On
    /// the CPU backend exact GELU spends most of its time in `erf`, more so as training widens
    /// the pre-activations (measured: 28% of the step by the end of the default job).
    #[default]
    Relu2,
    /// Exact GELU, x·Φ(x), as in GPT-2 (with erf).
    Gelu,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            layers: 4,
            d_model: 128,
            heads: 4,
            context: 128,
            mlp_ratio: 4,
            tied_head: false,
            activation: Activation::default(),
        }
    }
}

impl ModelConfig {
    /// A one-layer model of about 20k parameters whose steps take milliseconds on a CPU: for
    /// tests and examples, where what is shown is the protocol, not the model.
    pub fn tiny() -> Self {
        Self {
            layers: 1,
            d_model: 32,
            heads: 2,
            context: 32,
            mlp_ratio: 2,
            ..Self::default()
        }
    }

    /// Checks the shape is buildable.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.layers == 0 || self.d_model == 0 || self.heads == 0 || self.context == 0 {
            return bad("model.layers, d_model, heads and context must be positive".into());
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return bad(format!(
                "model.d_model ({}) must be a multiple of model.heads ({})",
                self.d_model, self.heads
            ));
        }
        if self.mlp_ratio == 0 || self.mlp_ratio > 16 {
            return bad("model.mlp_ratio must be in 1..=16".into());
        }
        if self.context > 8192 || self.d_model > 16384 || self.layers > 256 {
            return bad("model is larger than gradswarm supports (context ≤ 8192, d_model ≤ 16384, layers ≤ 256)".into());
        }
        Ok(())
    }

    /// A stable hash of the shape: peers only mix updates of models with equal hashes.
    pub fn hash(&self) -> [u8; 32] {
        use sha2::Digest;
        let canonical = format!(
            "gradswarm-gpt/1 layers={} d_model={} heads={} context={} mlp_ratio={} tied_head={} vocab={} activation={:?}",
            self.layers,
            self.d_model,
            self.heads,
            self.context,
            self.mlp_ratio,
            self.tied_head,
            VOCAB,
            self.activation
        );
        sha2::Sha256::digest(canonical.as_bytes()).into()
    }
}

/// The most threads [`TrainConfig::threads`] may ask for.
pub const MAX_THREADS: usize = 64;

/// How one peer trains locally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps of the default job.
    pub steps: u64,
    /// Sequences per optimizer step (the target batch).
    pub batch_size: usize,
    /// Sequences per forward/backward pass; `batch_size` must be a multiple. Smaller values
    /// accumulate gradients over several passes and save memory.
    pub micro_batch_size: usize,
    /// On the CPU backend, each micro-batch is split into this many shards whose forward and
    /// backward passes run on their own threads (1: one thread). The split, not the machine,
    /// decides the numerics, so a run reproduces on any core count. Ignored on wgpu, whose
    /// device runs one queue.
    pub threads: usize,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// AdamW's decoupled weight decay (applied to matrices, not to norms, biases or positions).
    pub weight_decay: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub epsilon: f64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    pub grad_clip: f64,
    /// Seed of the initial weights and of batch sampling.
    pub seed: u64,
    /// Validation every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// A checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch_size: 32,
            micro_batch_size: 32,
            threads: 2,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            grad_clip: 1.0,
            seed: 1,
            eval_every: 250,
            eval_batches: 16,
            checkpoint_every: 500,
        }
    }
}

impl TrainConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: &str| Err(ModelError::Config(m.to_string()));
        if self.batch_size == 0 || self.micro_batch_size == 0 {
            return bad("train.batch_size and train.micro_batch_size must be positive");
        }
        if !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return bad("train.batch_size must be a multiple of train.micro_batch_size");
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(ModelError::Config(format!(
                "train.threads must be between 1 and {MAX_THREADS}"
            )));
        }
        if !positive(self.lr) || !non_negative(self.min_lr) {
            return bad("train.lr must be positive and train.min_lr non-negative");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("train.beta1 and train.beta2 must be in [0, 1)");
        }
        if !positive(self.epsilon) {
            return bad("train.epsilon must be positive");
        }
        if !non_negative(self.weight_decay) || !non_negative(self.grad_clip) {
            return bad("train.weight_decay and train.grad_clip must be non-negative");
        }
        if self.eval_batches == 0 {
            return bad("train.eval_batches must be positive");
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step`: linear warm-up, then cosine decay to `min_lr`
    /// at `steps` (and `min_lr` after).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr
            + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// A finite number above zero.
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// A finite number at or above zero.
fn non_negative(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// Where the corpus is and how it is cut.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The training text (any bytes; UTF-8 text in practice).
    pub path: std::path::PathBuf,
    /// Share of the corpus, taken from its end, held out for validation.
    pub val_fraction: f64,
    /// Size of the chunks that rendezvous hashing deals out to peers.
    pub chunk_bytes: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: "data/shakespeare.txt".into(),
            val_fraction: 0.05,
            chunk_bytes: 64 * 1024,
        }
    }
}

impl DataConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.val_fraction > 0.0 && self.val_fraction < 0.5) {
            return Err(ModelError::Config(
                "data.val_fraction must be in (0, 0.5)".into(),
            ));
        }
        if self.chunk_bytes < 1024 {
            return Err(ModelError::Config(
                "data.chunk_bytes must be at least 1024".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let t = TrainConfig {
            steps: 1100,
            warmup_steps: 100,
            ..TrainConfig::default()
        };
        assert!((t.lr_at(0) - t.lr / 100.0).abs() < 1e-12);
        assert!((t.lr_at(99) - t.lr).abs() < 1e-12);
        assert!((t.lr_at(100) - t.lr).abs() < 1e-12);
        assert!((t.lr_at(600) - (t.min_lr + t.lr) / 2.0).abs() < 1e-9);
        assert!((t.lr_at(1100) - t.min_lr).abs() < 1e-12);
        assert!((t.lr_at(5000) - t.min_lr).abs() < 1e-12);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let m = ModelConfig {
            heads: 3,
            ..ModelConfig::default()
        };
        assert!(matches!(m.validate(), Err(ModelError::Config(_))));
        assert!(ModelConfig::default().validate().is_ok());
        assert_ne!(ModelConfig::default().hash(), m.hash());
    }
}
