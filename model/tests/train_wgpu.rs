//! Training on burn's wgpu backend: on this machine a real Vulkan adapter from Mesa's lavapipe
//! (installed by scripts/setup), on a GPU machine the GPU. Its own test binary, because burn
//! initialises one wgpu runtime per process.

mod common;

use common::{corpus, me, tiny_model, tiny_train};
use gradswarm_model::data::validation_batches;
use gradswarm_model::{BackendKind, DeviceChoice, Trainer, device};

#[test]
fn loss_falls_over_30_steps_on_wgpu() {
    let selected = device::select(DeviceChoice::Gpu)
        .expect("a wgpu adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    assert_eq!(selected.kind, BackendKind::Wgpu);
    eprintln!("adapter: {}", selected.summary);
    let (m, t) = (tiny_model(), tiny_train());
    let corpus = corpus(m.context);
    let sampler = corpus.sampler(me(), &[me()], 0, t.seed);
    let val = validation_batches(&corpus, t.eval_batches, t.batch_size, m.context);
    let mut trainer = Trainer::new(&m, &t, &selected.device).expect("trainer");
    let before = trainer.evaluate(&val).expect("eval");
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
