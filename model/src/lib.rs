//! gradswarm's model and trainer on burn 0.22: a GPT-style byte-level decoder, AdamW training
//! with warm-up + cosine, gradient clipping and accumulation, the corpus and its shards, and
//! safetensors checkpoints. Backend-agnostic: the `Device` (see [`device`]) picks wgpu or burn's
//! CPU backend at run time.

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
mod error;
pub mod gpt;
pub mod params;
mod readback;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use config::{Activation, DataConfig, ModelConfig, TrainConfig, VOCAB};
pub use data::{Batch, Corpus, Sampler};
pub use device::{BackendKind, DeviceChoice, SelectedDevice};
pub use error::ModelError;
pub use gpt::Gpt;
pub use trainer::{NamedVectors, StepReport, Trainer};

/// Re-exported so that dependants name the same burn.
pub use burn;
