//! Decoding: the payload is parsed on the host (O(k), every hostile-input check in one place),
//! then dequantized and scatter-added on the device.

use gradswarm_core::codec::{ParsedPayload, ParsedValues};

use crate::codec::GpuCodec;
use crate::pipelines::{
    WG, bind_group, bytes_words, floats_bytes, staging, storage, uniform, words_bytes,
};

/// Device buffers for decoding updates of up to `cap` entries into `len`-long accumulators.
pub(crate) struct DecodeBuffers {
    cap: usize,
    len: usize,
    params: wgpu::Buffer,
    indices: wgpu::Buffer,
    vals: wgpu::Buffer,
    exps: wgpu::Buffer,
    acc: wgpu::Buffer,
    staging: wgpu::Buffer,
    bind: wgpu::BindGroup,
}

impl GpuCodec {
    pub(crate) fn ensure_decode_buffers(&mut self, count: usize, len: usize) {
        if self
            .decode_buffers
            .as_ref()
            .is_some_and(|b| b.cap >= count && b.len >= len)
        {
            return;
        }
        let d = &self.device;
        let (cap, len) = match &self.decode_buffers {
            Some(b) => (b.cap.max(count), b.len.max(len)),
            None => (count, len),
        };
        let params = uniform(d, "decode params");
        let indices = storage(d, "decode indices", cap, wgpu::BufferUsages::empty());
        let vals = storage(d, "decode vals", cap, wgpu::BufferUsages::empty());
        let exps = storage(d, "decode exps", cap, wgpu::BufferUsages::empty());
        let acc = storage(d, "accumulator", len, wgpu::BufferUsages::empty());
        let staging = staging(d, "decode staging", len);
        let bind = bind_group(
            d,
            "decode",
            &self.pipelines.decode_layout,
            &[&params, &indices, &vals, &exps, &acc],
        );
        self.decode_buffers = Some(DecodeBuffers {
            cap,
            len,
            params,
            indices,
            vals,
            exps,
            acc,
            staging,
            bind,
        });
    }

    /// Dequantizes `parsed` and scatter-adds `weight` times it into `out` on the device; false,
    /// with `out` untouched, where the device cannot (the caller then runs the reference).
    pub(crate) fn decode_on_device(
        &mut self,
        parsed: &ParsedPayload,
        weight: f32,
        out: &mut [f32],
    ) -> bool {
        let n = out.len();
        let (mode_int8, block, vals, exps): (bool, u32, Vec<u32>, Vec<u32>) = match &parsed.values {
            ParsedValues::Int8 { block, exps, qs } => (
                true,
                *block as u32,
                qs.iter().map(|&q| i32::from(q) as u32).collect(),
                exps.iter().map(|&e| u32::from(e)).collect(),
            ),
            ParsedValues::F32(v) => (
                false,
                1,
                v.iter().map(|x| x.to_bits()).collect(),
                Vec::new(),
            ),
        };
        let count = vals.len();
        // The kernels assume a finite weight and a vector that fits; anything else goes to the
        // reference, which is what the kernels reproduce.
        if count == 0 || !weight.is_finite() || n > self.max_len {
            return false;
        }
        self.ensure_decode_buffers(count, n);
        let Some(b) = self.decode_buffers.as_ref() else {
            return false;
        };
        let sparse = parsed.indices.is_some();
        let q = &self.queue;
        let params = [
            count as u32,
            block,
            u32::from(sparse) | (u32::from(mode_int8) << 1),
            weight.to_bits(),
        ];
        q.write_buffer(&b.params, 0, &words_bytes(&params));
        if let Some(ix) = &parsed.indices {
            q.write_buffer(&b.indices, 0, &words_bytes(ix));
        }
        q.write_buffer(&b.vals, 0, &words_bytes(&vals));
        if !exps.is_empty() {
            q.write_buffer(&b.exps, 0, &words_bytes(&exps));
        }
        q.write_buffer(&b.acc, 0, &floats_bytes(out));
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("decode"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("scatter-add"),
                timestamp_writes: None,
            });
            pass.set_bind_group(0, &b.bind, &[]);
            self.dispatch(
                &mut pass,
                &self.pipelines.scatter_add,
                count.div_ceil(WG as usize),
            );
        }
        enc.copy_buffer_to_buffer(&b.acc, 0, &b.staging, 0, Some(4 * n as u64));
        self.queue.submit([enc.finish()]);
        let bytes = match self.read(&b.staging, 4 * n as u64) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "GPU decode failed; CPU codec for this update");
                return false;
            }
        };
        for (o, w) in out.iter_mut().zip(bytes_words(&bytes)) {
            *o = f32::from_bits(w);
        }
        true
    }
}
