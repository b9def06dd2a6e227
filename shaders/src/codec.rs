//! [`GpuCodec`]: core's [`Codec`] on a wgpu device. Encoding lives in `encode.rs`, decoding in
//! `decode.rs`; this module holds the device, the dispatch grid and the readback.

use gradswarm_core::codec::{
    Codec, CodecDescriptor, CpuCodec, EncodeFuture, RngKey, parse_payload,
};
use gradswarm_core::{DecodeError, EncodeError};

use crate::decode::DecodeBuffers;
use crate::encode::EncodeBuffers;
use crate::pipelines::{Pipelines, WG};
use crate::{ShaderError, request_device};

/// The update codec on a wgpu device; implements core's [`Codec`] with the CPU reference's bytes.
pub struct GpuCodec {
    pub(crate) descriptor: CodecDescriptor,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) pipelines: Pipelines,
    pub(crate) encode_buffers: Option<EncodeBuffers>,
    pub(crate) decode_buffers: Option<DecodeBuffers>,
    pub(crate) max_groups: u32,
    pub(crate) max_len: usize,
    /// The reference, for what the device does not run (empty or too-long vectors, a failed readback).
    pub(crate) cpu: CpuCodec,
}

impl GpuCodec {
    /// A GPU codec for `descriptor` on `device`/`queue` (e.g. the trainer's, shared).
    pub fn new(
        descriptor: CodecDescriptor,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Self, EncodeError> {
        let cpu = CpuCodec::new(descriptor)?;
        let limits = device.limits();
        let max_groups = limits.max_compute_workgroups_per_dimension;
        // The longest vector whose buffers fit one binding and whose grids fit two dimensions.
        let by_binding = (limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            / 4) as usize;
        let by_grid = (max_groups as usize).saturating_mul(max_groups as usize) * WG as usize;
        let max_len = by_binding.min(by_grid).min(u32::MAX as usize - 1);
        let pipelines = Pipelines::new(&device);
        Ok(Self {
            descriptor,
            device,
            queue,
            pipelines,
            encode_buffers: None,
            decode_buffers: None,
            max_groups,
            max_len,
            cpu,
        })
    }

    /// A codec on wgpu's preferred adapter (see [`request_device`]), with the adapter's description.
    pub fn on_default_adapter(
        descriptor: CodecDescriptor,
    ) -> Result<(Self, wgpu::AdapterInfo), ShaderError> {
        let (device, queue, info) = request_device()?;
        let codec =
            Self::new(descriptor, device, queue).map_err(|e| ShaderError::Device(e.to_string()))?;
        Ok((codec, info))
    }

    /// The longest vector this device can encode.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// A 2-D grid of `groups` workgroups within the device's per-dimension limit.
    pub(crate) fn grid(&self, groups: usize) -> (u32, u32) {
        let x = groups.min(self.max_groups as usize).max(1);
        (x as u32, groups.div_ceil(x) as u32)
    }

    /// Maps `buffer`'s first `bytes` bytes, waits for the device, and copies them out. In a
    /// browser nothing may wait for WebGPU: an error there (callers fall back to the CPU).
    pub(crate) fn read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, ShaderError> {
        if cfg!(target_arch = "wasm32") {
            return Err(ShaderError::Readback(
                "a browser's WebGPU reads back only asynchronously".into(),
            ));
        }
        // Natively `read_async` polls the device to completion first: this returns at once.
        pollster::block_on(self.read_async(buffer, bytes))
    }

    /// [`GpuCodec::read`] without blocking: the map's callback completes a channel. A browser's
    /// WebGPU runs it once the page's event loop turns; native wgpu, when the device is polled.
    pub(crate) async fn read_async(
        &self,
        buffer: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>, ShaderError> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = buffer.slice(..bytes);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r.is_ok());
        });
        if cfg!(not(target_arch = "wasm32")) {
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| ShaderError::Readback(e.to_string()))?;
        }
        if rx.await != Ok(true) {
            return Err(ShaderError::Readback("buffer map failed".into()));
        }
        let out = slice
            .get_mapped_range()
            .map_err(|e| ShaderError::Readback(e.to_string()))?
            .to_vec();
        buffer.unmap();
        Ok(out)
    }

    pub(crate) fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        pipeline: &wgpu::ComputePipeline,
        groups: usize,
    ) {
        if groups == 0 {
            return;
        }
        let (x, y) = self.grid(groups);
        pass.set_pipeline(pipeline);
        pass.dispatch_workgroups(x, y, 1);
    }
}

impl Codec for GpuCodec {
    fn descriptor(&self) -> CodecDescriptor {
        self.descriptor
    }

    fn encode(
        &mut self,
        delta: &[f32],
        residual: &mut [f32],
        key: RngKey,
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode_on_device(delta, residual, key)
    }

    fn encode_async<'a>(
        &'a mut self,
        delta: &'a [f32],
        residual: &'a mut [f32],
        key: RngKey,
    ) -> EncodeFuture<'a> {
        Box::pin(self.encode_on_device_async(delta, residual, key))
    }

    fn decode_add(
        &mut self,
        descriptor: &CodecDescriptor,
        payload: &[u8],
        weight: f32,
        out: &mut [f32],
    ) -> Result<(), DecodeError> {
        let parsed = parse_payload(descriptor, payload, out.len())?;
        // Where the device cannot, the reference does: the kernels reproduce it bit for bit.
        if !self.decode_on_device(&parsed, weight, out) {
            self.cpu.decode_add(descriptor, payload, weight, out)?;
        }
        Ok(())
    }
}
