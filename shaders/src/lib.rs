//! gradswarm's update codec on the GPU: WGSL compute shaders (`shaders/wgsl/`) that implement
//! core's [`Codec`] on any wgpu device, byte for byte equal to the CPU reference [`CpuCodec`].
//!
//! Encode runs the O(n) work on the device — `u = Δ + e`, the range check, the exact top-k threshold
//! by radix select, ordered compaction, int8 quantization with the reference's counter-based RNG,
//! and the error-feedback update `e ← u − D(c)` — and reads back only the k sent entries. The host
//! then packs them (varint gaps, zstd) with core's own packer, so the bytes cannot drift.
//! Decode parses on the host (O(k), hostile-input checks in one place) and dequantizes and
//! scatter-adds on the device.
//!
//! The codec accepts an existing `wgpu::Device`/`Queue` (burn's, from `init_with_setup`) so that it
//! shares the trainer's device. Buffers grow to the largest vector seen and are reused after that.
//!
//! [`CpuCodec`]: gradswarm_core::CpuCodec

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gradswarm_core::codec::{
    Codec, CodecDescriptor, CpuCodec, ParsedValues, Quantize, RngKey, Sparsify, pack_payload,
    parse_payload, quant,
};
use gradswarm_core::{DecodeError, EncodeError};

/// The shared helpers every kernel is compiled with.
pub const COMMON_WGSL: &str = include_str!("../wgsl/common.wgsl");
/// The encode kernels.
pub const ENCODE_WGSL: &str = include_str!("../wgsl/encode.wgsl");
/// The decode (dequantize + scatter-add) kernel.
pub const DECODE_WGSL: &str = include_str!("../wgsl/decode.wgsl");

/// Threads per workgroup in every kernel.
const WG: u32 = 256;
/// Coordinates each histogram workgroup reads (`WG` threads × 16).
const HIST_CHUNK: u32 = WG * 16;
/// First per-tile word in the scratch buffer (after the 2048 bins and the state words).
const TILES: u64 = 2064;
/// Scratch word holding the first out-of-range index (`u32::MAX`: none).
const BAD: u64 = 2048;

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

/// Runs a future that completes without waiting on anything external (native wgpu), on this thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// Opens wgpu's preferred adapter (hardware first, software such as lavapipe otherwise) with the
/// adapter's own limits; for tests, benchmarks and tools that have no trainer device to share.
pub fn request_device() -> Result<(wgpu::Device, wgpu::Queue, wgpu::AdapterInfo), ShaderError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    // GL adds nothing for compute here and its probing only prints noise.
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapter = block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| ShaderError::NoAdapter(e.to_string()))?;
    let info = adapter.get_info();
    let (device, queue) = block_on(adapter.request_device(&wgpu::DeviceDescriptor {
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

/// Kernels compiled once per device.
struct Pipelines {
    encode_layout: wgpu::BindGroupLayout,
    decode_layout: wgpu::BindGroupLayout,
    add_hist: wgpu::ComputePipeline,
    hist: [wgpu::ComputePipeline; 2],
    walk: [wgpu::ComputePipeline; 3],
    tile_count: wgpu::ComputePipeline,
    tile_scan: wgpu::ComputePipeline,
    compact: wgpu::ComputePipeline,
    quantize: wgpu::ComputePipeline,
    commit: wgpu::ComputePipeline,
    feedback: wgpu::ComputePipeline,
    scatter_add: wgpu::ComputePipeline,
}

fn layout_entries(kinds: &[wgpu::BufferBindingType]) -> Vec<wgpu::BindGroupLayoutEntry> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, &ty)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect()
}

impl Pipelines {
    fn new(device: &wgpu::Device) -> Self {
        use wgpu::BufferBindingType::{Storage, Uniform};
        let rw = Storage { read_only: false };
        let ro = Storage { read_only: true };
        let encode_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("encode"),
            entries: &layout_entries(&[Uniform, ro, rw, rw, rw, rw, rw, rw]),
        });
        let decode_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("decode"),
            entries: &layout_entries(&[Uniform, ro, ro, ro, rw]),
        });
        let module = |label: &str, src: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(format!("{COMMON_WGSL}\n{src}").into()),
            })
        };
        let encode = module("encode", ENCODE_WGSL);
        let decode = module("decode", DECODE_WGSL);
        let pipeline = |layout: &wgpu::BindGroupLayout, m: &wgpu::ShaderModule, entry: &str| {
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pl),
                module: m,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let e = |entry: &str| pipeline(&encode_layout, &encode, entry);
        Self {
            add_hist: e("add_hist"),
            hist: [e("hist_1"), e("hist_2")],
            walk: [e("walk_0"), e("walk_1"), e("walk_2")],
            tile_count: e("tile_count"),
            tile_scan: e("tile_scan"),
            compact: e("compact"),
            quantize: e("quantize_blocks"),
            commit: e("commit"),
            feedback: e("feedback"),
            scatter_add: pipeline(&decode_layout, &decode, "scatter_add"),
            encode_layout,
            decode_layout,
        }
    }
}

/// Device buffers for vectors of up to `cap` values, reused across calls.
struct EncodeBuffers {
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

/// Device buffers for decoding updates of up to `cap` entries into `len`-long accumulators.
struct DecodeBuffers {
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

fn storage(
    device: &wgpu::Device,
    label: &str,
    words: usize,
    extra: wgpu::BufferUsages,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 4 * words.max(1) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC
            | extra,
        mapped_at_creation: false,
    })
}

fn staging(device: &wgpu::Device, label: &str, words: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 4 * words.max(1) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn uniform(device: &wgpu::Device, label: &str) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 32,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn words_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn floats_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn tiles(n: usize) -> usize {
    n.div_ceil(WG as usize)
}

/// The update codec on a wgpu device; implements core's [`Codec`] with the CPU reference's bytes.
pub struct GpuCodec {
    descriptor: CodecDescriptor,
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: Pipelines,
    encode_buffers: Option<EncodeBuffers>,
    decode_buffers: Option<DecodeBuffers>,
    max_groups: u32,
    max_len: usize,
    /// The reference, for what the device does not run (f32 payloads are decoded on the host).
    cpu: CpuCodec,
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
    fn grid(&self, groups: usize) -> (u32, u32) {
        let x = groups.min(self.max_groups as usize).max(1);
        (x as u32, groups.div_ceil(x) as u32)
    }

    fn ensure_encode_buffers(&mut self, n: usize) {
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
        let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("encode"),
            layout: &self.pipelines.encode_layout,
            entries: &[
                &params, &delta, &residual, &ubuf, &scratch, &indices, &vals, &exps,
            ]
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect::<Vec<_>>(),
        });
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

    fn ensure_decode_buffers(&mut self, count: usize, len: usize) {
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
        let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("decode"),
            layout: &self.pipelines.decode_layout,
            entries: &[&params, &indices, &vals, &exps, &acc]
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect::<Vec<_>>(),
        });
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

    /// Records the encode kernels for an `n`-long vector whose inputs are already on the device.
    #[allow(clippy::too_many_arguments)]
    fn record_encode(
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

    /// Maps `buffer`'s first `bytes` bytes, waits for the device, and copies them out.
    fn read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, ShaderError> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = buffer.slice(..bytes);
        let ok = Arc::new(AtomicBool::new(false));
        let flag = ok.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            flag.store(r.is_ok(), Ordering::SeqCst)
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| ShaderError::Readback(e.to_string()))?;
        if !ok.load(Ordering::SeqCst) {
            return Err(ShaderError::Readback("buffer map failed".into()));
        }
        let out = slice
            .get_mapped_range()
            .map_err(|e| ShaderError::Readback(e.to_string()))?
            .to_vec();
        buffer.unmap();
        Ok(out)
    }

    fn dispatch(
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
            return self.cpu.encode(delta, residual, key);
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
            return self.cpu.encode(delta, residual, key);
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
        let bytes = match self.read(&b.staging, res_at + 4 * n as u64) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Nothing on the host has changed yet: the reference gives the same bytes.
                tracing::warn!(error = %e, "GPU encode failed; CPU codec for this update");
                return self.cpu.encode(delta, residual, key);
            }
        };

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

    fn decode_add(
        &mut self,
        descriptor: &CodecDescriptor,
        payload: &[u8],
        weight: f32,
        out: &mut [f32],
    ) -> Result<(), DecodeError> {
        let parsed = parse_payload(descriptor, payload, out.len())?;
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
            return self.cpu.decode_add(descriptor, payload, weight, out);
        }
        self.ensure_decode_buffers(count, n);
        let Some(b) = self.decode_buffers.as_ref() else {
            return self.cpu.decode_add(descriptor, payload, weight, out);
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
                return self.cpu.decode_add(descriptor, payload, weight, out);
            }
        };
        for (o, w) in out.iter_mut().zip(bytes_words(&bytes)) {
            *o = f32::from_bits(w);
        }
        Ok(())
    }
}
