//! Shared set-up of the model tests: a tiny model on the bundled corpus.
#![allow(dead_code)]

use gradswarm_core::shard::ShardKey;
use gradswarm_model::burn::prelude::Device;
use gradswarm_model::data::validation_batches;
use gradswarm_model::{Corpus, DataConfig, ModelConfig, TrainConfig, Trainer};

/// A model small enough for 30 steps in seconds on 2 cores.
pub fn tiny_model() -> ModelConfig {
    ModelConfig::tiny()
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
        // Where cargo says at run time: a binary built in another checkout may be reused.
        path: std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
            .join("../data/shakespeare.txt"),
        ..DataConfig::default()
    };
    Corpus::load(&data, context).expect("bundled corpus loads")
}

/// The key of the single local peer.
pub fn me() -> ShardKey {
    ShardKey::of(b"test-peer")
}

/// Trains the tiny model for 30 steps on `device` and asserts that training and validation loss fall.
pub fn assert_loss_falls(device: &Device) {
    let (m, t) = (tiny_model(), tiny_train());
    let corpus = corpus(m.context);
    let sampler = corpus.sampler(me(), &[me()], 0, t.seed);
    let val = validation_batches(&corpus, t.eval_batches, t.batch_size, m.context);
    let mut trainer = Trainer::new(&m, &t, device).expect("trainer");
    let before = trainer.evaluate(&val).expect("eval");
    // An untrained byte model predicts about uniformly: ln 256 ≈ 5.55 nats.
    assert!((before - 256f64.ln()).abs() < 0.3, "initial loss {before}");
    let reports = trainer.local_steps(&sampler, 30).expect("trains");
    let after = trainer.evaluate(&val).expect("eval");
    let first: f32 = reports[..5].iter().map(|r| r.loss).sum::<f32>() / 5.0;
    let last: f32 = reports[25..].iter().map(|r| r.loss).sum::<f32>() / 5.0;
    assert!(
        last < first - 1.0,
        "training loss went from {first} to {last}"
    );
    assert!(
        after < before - 1.0,
        "validation loss went from {before} to {after}"
    );
}
