//! Encoding on the device: `u = Δ + e`, the range check, radix select of the top-k threshold,
//! ordered compaction, int8 quantization and the error-feedback update, then the host packs the
//! k read-back entries with core's own packer.

use gradswarm_core::EncodeError;
use gradswarm_core::codec::{Codec, Quantize, RngKey, Sparsify, pack_payload, quant};

use crate::ShaderError;
use crate::codec::GpuCodec;
use crate::pipelines::{
    BAD, HIST_CHUNK, TILES, WG, bind_group, bytes_words, floats_bytes, staging, storage, tiles,
    uniform, words_bytes,
};

/// An encode submitted to the device: what its staging bytes hold, and where.
struct EncodeJob {
    /// The buffer its results were copied to.
    staging: wgpu::Buffer,
    k: usize,
    nblocks: usize,
    int8: bool,
    block: u32,
    top_k: bool,
    /// Where the indices and the residual start in the staging buffer.
    idx_at: u64,
    res_at: u64,
    /// How many staging bytes to read back.
    bytes: u64,
}

/// Device buffers for vectors of up to `cap` values, reused across calls.
pub(crate) struct EncodeBuffers {
    cap: usize,
    params: wgpu::Buffer,
    delta: wgpu::Buffer,
    residual: wgpu::Buffer,
    ubuf: wgpu::Buffer,
    scratch: wgpu::Buffer,
    indices: wgpu::Buffer,
    vals: wgpu::Buffer,
    exps: wgpu::Buffer,
    staging: wgpu::Buffer,
    bind: wgpu::BindGroup,
}

impl GpuCodec {
    pub(crate) fn ensure_encode_buffers(&mut self, n: usize) {
        if self.encode_buffers.as_ref().is_some_and(|b| b.cap >= n) {
            return;
        }
        let d = &self.device;
        let k = self.descriptor.max_entries(n).max(n.min(1));
        let block = match self.descriptor.quantize {
            Quantize::Int8 { block } => usize::from(block),
            Quantize::F32 => 1,
        };
        let nt = tiles(n);
        let params = uniform(d, "encode params");
        let delta = storage(d, "delta", n, wgpu::BufferUsages::empty());
        let residual = storage(d, "residual", n, wgpu::BufferUsages::empty());
        let ubuf = storage(d, "u", n, wgpu::BufferUsages::empty());
        let scratch = storage(
            d,
            "scratch",
            TILES as usize + 4 * nt,
            wgpu::BufferUsages::empty(),
        );
        // Dense chains send every coordinate, so the value stream holds n entries then.
        let entries = n.max(k);
        let indices = storage(d, "indices", entries, wgpu::BufferUsages::empty());
        let vals = storage(d, "vals", entries, wgpu::BufferUsages::empty());
        let exps = storage(
            d,
            "exps",
            entries.div_ceil(block),
            wgpu::BufferUsages::empty(),
        );
        let staging = staging(d, "encode staging", 1 + 3 * entries + n);
        let bind = bind_group(
            d,
            "encode",
            &self.pipelines.encode_layout,
            &[
                &params, &delta, &residual, &ubuf, &scratch, &indices, &vals, &exps,
            ],
        );
        self.encode_buffers = Some(EncodeBuffers {
            cap: n,
            params,
            delta,
            residual,
            ubuf,
            scratch,
            indices,
            vals,
            exps,
            staging,
            bind,
        });
    }

    /// Records the encode kernels for an `n`-long vector whose inputs are already on the device.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        b: &EncodeBuffers,
        n: usize,
        k: usize,
        top_k: bool,
        int8: bool,
        nblocks: usize,
    ) {
        let p = &self.pipelines;
        let nt = tiles(n);
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("select"),
                timestamp_writes: None,
            });
            pass.set_bind_group(0, &b.bind, &[]);
            let hist_groups = n.div_ceil(HIST_CHUNK as usize);
            self.dispatch(&mut pass, &p.add_hist, hist_groups);
            if top_k {
                self.dispatch(&mut pass, &p.walk[0], 1);
                self.dispatch(&mut pass, &p.hist[0], hist_groups);
                self.dispatch(&mut pass, &p.walk[1], 1);
                self.dispatch(&mut pass, &p.hist[1], hist_groups);
                self.dispatch(&mut pass, &p.walk[2], 1);
                self.dispatch(&mut pass, &p.tile_count, nt);
                self.dispatch(&mut pass, &p.tile_scan, 1);
                self.dispatch(&mut pass, &p.compact, nt);
            }
        }
        if !top_k {
            // Every coordinate is sent: the value stream is all of u.
            enc.copy_buffer_to_buffer(&b.ubuf, 0, &b.vals, 0, Some(4 * n as u64));
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("quantize"),
            timestamp_writes: None,
        });
        pass.set_bind_group(0, &b.bind, &[]);
        if int8 {
            self.dispatch(&mut pass, &p.quantize, nblocks.div_ceil(WG as usize));
        }
        self.dispatch(&mut pass, &p.commit, n.div_ceil(WG as usize));
        self.dispatch(&mut pass, &p.feedback, k.div_ceil(WG as usize));
    }

    /// Device time of `iters` encodes of `delta` with every buffer already on the device (no
    /// upload, no readback): the kernels' own throughput, for benchmarks.
    pub fn time_device_encode(
        &mut self,
        delta: &[f32],
        iters: u32,
    ) -> Result<std::time::Duration, ShaderError> {
        let n = delta.len();
        let desc = self.descriptor;
        let k = desc.max_entries(n);
        let top_k = matches!(desc.sparsify, Sparsify::TopK { .. }) && k < n;
        let (int8, block) = match desc.quantize {
            Quantize::Int8 { block } => (true, u32::from(block)),
            Quantize::F32 => (false, 1),
        };
        self.ensure_encode_buffers(n);
        let b = self
            .encode_buffers
            .as_ref()
            .ok_or_else(|| ShaderError::Device("no buffers".into()))?;
        let params = [
            n as u32,
            k as u32,
            block,
            u32::from(top_k) | (u32::from(int8) << 1),
            1,
            2,
            quant::MAX_ABS.to_bits(),
            tiles(n) as u32,
        ];
        self.queue.write_buffer(&b.params, 0, &words_bytes(&params));
        self.queue.write_buffer(&b.delta, 0, &floats_bytes(delta));
        self.queue
            .write_buffer(&b.residual, 0, &floats_bytes(&vec![0.0; n]));
        let mut header = vec![0u32; TILES as usize];
        header[BAD as usize] = u32::MAX;
        header[2050] = k as u32;
        let header = words_bytes(&header);
        let nblocks = k.div_ceil(block as usize);
        let run = |count: u32| -> Result<std::time::Duration, ShaderError> {
            let t0 = std::time::Instant::now();
            for _ in 0..count {
                self.queue.write_buffer(&b.scratch, 0, &header);
                let mut enc = self
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
                self.record_encode(&mut enc, b, n, k, top_k, int8, nblocks);
                self.queue.submit([enc.finish()]);
            }
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| ShaderError::Readback(e.to_string()))?;
            Ok(t0.elapsed())
        };
        run(1)?;
        run(iters)
    }

    /// Encodes on the device (see [`Codec::encode`]); the CPU reference where the device cannot.
    pub(crate) fn encode_on_device(
        &mut self,
        delta: &[f32],
        residual: &mut [f32],
        key: RngKey,
    ) -> Result<Vec<u8>, EncodeError> {
        let Some(job) = self.submit_encode(delta, residual, key)? else {
            return self.cpu.encode(delta, residual, key);
        };
        let read = self.read(&job.staging, job.bytes);
        self.finish_encode(&job, read, delta, residual, key)
    }

    /// [`GpuCodec::encode_on_device`], awaiting the readback instead of blocking on it.
    pub(crate) async fn encode_on_device_async(
        &mut self,
        delta: &[f32],
        residual: &mut [f32],
        key: RngKey,
    ) -> Result<Vec<u8>, EncodeError> {
        let Some(job) = self.submit_encode(delta, residual, key)? else {
            return self.cpu.encode(delta, residual, key);
        };
        let read = self.read_async(&job.staging, job.bytes).await;
        self.finish_encode(&job, read, delta, residual, key)
    }

    /// Checks the inputs, uploads them and submits the encode kernels and the copy of their
    /// results to the staging buffer; None where the device cannot (the CPU reference then).
    fn submit_encode(
        &mut self,
        delta: &[f32],
        residual: &[f32],
        key: RngKey,
    ) -> Result<Option<EncodeJob>, EncodeError> {
        let n = delta.len();
        if n != residual.len() {
            return Err(EncodeError::LengthMismatch {
                delta: n,
                residual: residual.len(),
            });
        }
        if n == 0 || n > self.max_len {
            if n > self.max_len {
                tracing::warn!(
                    n,
                    max = self.max_len,
                    "vector too long for the GPU; CPU codec"
                );
            }
            return Ok(None);
        }
        let desc = self.descriptor;
        let k = desc.max_entries(n);
        // Top-k of everything is every coordinate: the kernels then skip the selection.
        let top_k = matches!(desc.sparsify, Sparsify::TopK { .. }) && k < n;
        let (int8, block, limit) = match desc.quantize {
            Quantize::Int8 { block } => (true, u32::from(block), quant::MAX_ABS.to_bits()),
            Quantize::F32 => (false, 1, f32::MAX.to_bits()),
        };
        self.ensure_encode_buffers(n);
        let Some(b) = self.encode_buffers.as_ref() else {
            return Ok(None);
        };
        let nt = tiles(n);
        let q = &self.queue;
        let params = [
            n as u32,
            k as u32,
            block,
            u32::from(top_k) | (u32::from(int8) << 1),
            key.k0,
            key.k1,
            limit,
            nt as u32,
        ];
        q.write_buffer(&b.params, 0, &words_bytes(&params));
        q.write_buffer(&b.delta, 0, &floats_bytes(delta));
        q.write_buffer(&b.residual, 0, &floats_bytes(residual));
        let mut header = vec![0u32; TILES as usize];
        header[BAD as usize] = u32::MAX;
        header[2050] = k as u32;
        q.write_buffer(&b.scratch, 0, &words_bytes(&header));

        let nblocks = k.div_ceil(block as usize);
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("encode"),
            });
        self.record_encode(&mut enc, b, n, k, top_k, int8, nblocks);
        // Staging: [bad][vals: k][exps: nblocks][indices: k][residual: n].
        let (vals_at, exps_at) = (4u64, 4 + 4 * k as u64);
        let idx_at = exps_at + 4 * nblocks as u64;
        let res_at = idx_at + if top_k { 4 * k as u64 } else { 0 };
        enc.copy_buffer_to_buffer(&b.scratch, 4 * BAD, &b.staging, 0, Some(4));
        enc.copy_buffer_to_buffer(&b.vals, 0, &b.staging, vals_at, Some(4 * k as u64));
        if int8 && nblocks > 0 {
            enc.copy_buffer_to_buffer(&b.exps, 0, &b.staging, exps_at, Some(4 * nblocks as u64));
        }
        if top_k {
            enc.copy_buffer_to_buffer(&b.indices, 0, &b.staging, idx_at, Some(4 * k as u64));
        }
        enc.copy_buffer_to_buffer(&b.residual, 0, &b.staging, res_at, Some(4 * n as u64));
        self.queue.submit([enc.finish()]);
        Ok(Some(EncodeJob {
            staging: b.staging.clone(),
            k,
            nblocks,
            int8,
            block,
            top_k,
            idx_at,
            res_at,
            bytes: res_at + 4 * n as u64,
        }))
    }

    /// The payload from an encode's read-back staging bytes, the residual updated; the CPU
    /// reference when the readback failed.
    fn finish_encode(
        &mut self,
        job: &EncodeJob,
        read: Result<Vec<u8>, ShaderError>,
        delta: &[f32],
        residual: &mut [f32],
        key: RngKey,
    ) -> Result<Vec<u8>, EncodeError> {
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) => {
                // Nothing on the host has changed yet: the reference gives the same bytes.
                tracing::warn!(error = %e, "GPU encode failed; CPU codec for this update");
                return self.cpu.encode(delta, residual, key);
            }
        };
        let EncodeJob {
            k,
            nblocks,
            int8,
            block,
            top_k,
            idx_at,
            res_at,
            ..
        } = job;
        let (k, nblocks, int8, block, top_k, idx_at, res_at) =
            (*k, *nblocks, *int8, *block, *top_k, *idx_at, *res_at);
        let n = delta.len();
        let desc = self.descriptor;
        let words: Vec<u32> = bytes_words(&bytes).collect();
        let bad = words[0];
        if bad != u32::MAX {
            let index = bad as usize;
            return Err(EncodeError::OutOfRange {
                index,
                value: delta.get(index).copied().unwrap_or(f32::NAN),
            });
        }
        let vals = &words[1..1 + k];
        let exps: Vec<u8> = if int8 {
            words[1 + k..1 + k + nblocks]
                .iter()
                .map(|&e| e as u8)
                .collect()
        } else {
            Vec::new()
        };
        let ix_words = (idx_at / 4) as usize;
        let indices: Option<Vec<u32>> = match desc.sparsify {
            Sparsify::Dense => None,
            Sparsify::TopK { .. } if top_k => Some(words[ix_words..ix_words + k].to_vec()),
            Sparsify::TopK { .. } => Some((0..n as u32).collect()),
        };
        let res_words = (res_at / 4) as usize;
        for (e, &w) in residual.iter_mut().zip(&words[res_words..res_words + n]) {
            *e = f32::from_bits(w);
        }
        let (values, qs): (Vec<f32>, Vec<i8>) = if int8 {
            let qs: Vec<i8> = vals.iter().map(|&v| v as i32 as i8).collect();
            // The packer counts entries by the values; for int8 it writes only exps and qs.
            let values = qs
                .iter()
                .enumerate()
                .map(|(j, &q)| quant::dequantize(q, exps[j / block as usize]))
                .collect();
            (values, qs)
        } else {
            (
                vals.iter().map(|&v| f32::from_bits(v)).collect(),
                Vec::new(),
            )
        };
        pack_payload(&desc, n, indices.as_deref(), &values, &exps, &qs)
    }
}
