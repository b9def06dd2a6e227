//! Training on burn's wgpu backend: on this machine a real Vulkan adapter from Mesa's lavapipe
//! (installed by scripts/setup), on a GPU machine the GPU. Its own test binary, because burn
//! initialises one wgpu runtime per process.

mod common;

use gradswarm_model::{BackendKind, DeviceChoice, device};

#[test]
fn loss_falls_over_30_steps_on_wgpu() {
    let selected = device::select(DeviceChoice::Gpu)
        .expect("a wgpu adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    assert_eq!(selected.kind, BackendKind::Wgpu);
    eprintln!("adapter: {}", selected.summary);
    common::assert_loss_falls(&selected.device);
}
