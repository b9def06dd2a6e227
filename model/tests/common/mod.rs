//! Shared set-up of the model tests: a tiny model on the bundled corpus.
#![allow(dead_code)]

use gradswarm_core::shard::ShardKey;
use gradswarm_model::{Corpus, DataConfig, ModelConfig, TrainConfig};

/// A model small enough for 30 steps in seconds on 2 cores.
pub fn tiny_model() -> ModelConfig {
    ModelConfig {
        layers: 1,
        d_model: 32,
        heads: 2,
        context: 32,
        mlp_ratio: 2,
        tied_head: false,
    }
}

/// Training settings for the tiny model.
pub fn tiny_train() -> TrainConfig {
    TrainConfig {
        steps: 30,
        batch_size: 8,
        micro_batch_size: 8,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 3,
        eval_batches: 4,
        ..TrainConfig::default()
    }
}

/// The bundled corpus.
pub fn corpus(context: usize) -> Corpus {
    let data = DataConfig {
        path: concat!(env!("CARGO_MANIFEST_DIR"), "/../data/shakespeare.txt").into(),
        ..DataConfig::default()
    };
    Corpus::load(&data, context).expect("bundled corpus loads")
}

/// The key of the single local peer.
pub fn me() -> ShardKey {
    ShardKey::of(b"test-peer")
}
