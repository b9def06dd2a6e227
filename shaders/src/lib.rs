//! gradswarm's update codec on the GPU: WGSL compute shaders (`shaders/wgsl/`) that implement
//! core's [`Codec`] on any wgpu device, byte for byte equal to the CPU reference [`CpuCodec`].
//!
//! Encode runs the O(n) work on the device — `u = Δ + e`, the range check, the exact top-k threshold
//! by radix select, ordered compaction, int8 quantization with the reference's counter-based RNG,
//! and the error-feedback update `e ← u − D(c)` — and reads back the k sent entries and the new
//! residual. The host then packs the entries (varint gaps, zstd) with core's own packer, so the
//! bytes cannot drift.
//! Decode parses on the host (O(k), hostile-input checks in one place) and dequantizes and
//! scatter-adds on the device.
//!
//! The codec accepts an existing `wgpu::Device`/`Queue` (burn's, from `init_with_setup`) so that it
//! shares the trainer's device. Buffers grow to the largest vector seen and are reused after that.
//!
//! [`CpuCodec`]: gradswarm_core::CpuCodec

mod codec;
mod decode;
mod encode;
mod pipelines;

use gradswarm_core::EncodeError;
use gradswarm_core::codec::{Codec, CodecDescriptor, CpuCodec};

pub use codec::GpuCodec;

/// The shared helpers every kernel is compiled with.
pub const COMMON_WGSL: &str = include_str!("../wgsl/common.wgsl");
/// The encode kernels.
pub const ENCODE_WGSL: &str = include_str!("../wgsl/encode.wgsl");
/// The decode (dequantize + scatter-add) kernel.
pub const DECODE_WGSL: &str = include_str!("../wgsl/decode.wgsl");

/// Why the GPU codec could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum ShaderError {
    /// wgpu found no adapter.
    #[error("no wgpu adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused a device.
    #[error("wgpu device request failed: {0}")]
    Device(String),
    /// A buffer could not be read back.
    #[error("GPU readback failed: {0}")]
    Readback(String),
}

/// Opens wgpu's preferred adapter (hardware first, software such as lavapipe otherwise) with the
/// adapter's own limits; for tests, benchmarks and tools that have no trainer device to share.
pub fn request_device() -> Result<(wgpu::Device, wgpu::Queue, wgpu::AdapterInfo), ShaderError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    // GL adds nothing for compute here and its probing only prints noise.
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| ShaderError::NoAdapter(e.to_string()))?;
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("gradswarm-codec"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| ShaderError::Device(e.to_string()))?;
    Ok((device, queue, info))
}

/// Which implementation [`codec_for`] picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecKind {
    /// The WGSL kernels on a wgpu device.
    Gpu,
    /// core's CPU reference.
    Cpu,
}

impl std::fmt::Display for CodecKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CodecKind::Gpu => "WGSL kernels on the training device",
            CodecKind::Cpu => "CPU",
        })
    }
}

/// The codec for a peer: the GPU codec on `device` (the trainer's, when it trains on wgpu), else
/// the CPU reference, saying so in the log. Both produce the same bytes.
pub fn codec_for(
    descriptor: CodecDescriptor,
    device: Option<(wgpu::Device, wgpu::Queue)>,
) -> Result<(Box<dyn Codec + Send>, CodecKind), EncodeError> {
    match device {
        Some((device, queue)) => {
            let codec = GpuCodec::new(descriptor, device, queue)?;
            tracing::info!(
                max_len = codec.max_len(),
                "codec: WGSL kernels on the training device"
            );
            Ok((Box::new(codec), CodecKind::Gpu))
        }
        None => {
            tracing::info!("codec: no wgpu device, so the CPU codec (same bytes, more CPU time)");
            Ok((Box::new(CpuCodec::new(descriptor)?), CodecKind::Cpu))
        }
    }
}
