//! What every dispatch needs: the compiled kernels, the buffers they bind, and the host-side
//! conversions between words, floats and bytes.

use crate::{COMMON_WGSL, DECODE_WGSL, ENCODE_WGSL};

/// Threads per workgroup in every kernel.
pub(crate) const WG: u32 = 256;
/// Coordinates each histogram workgroup reads (`WG` threads × 16).
pub(crate) const HIST_CHUNK: u32 = WG * 16;
/// First per-tile word in the scratch buffer (after the 2048 bins and the state words).
pub(crate) const TILES: u64 = 2064;
/// Scratch word holding the first out-of-range index (`u32::MAX`: none).
pub(crate) const BAD: u64 = 2048;

/// Kernels compiled once per device.
pub(crate) struct Pipelines {
    pub(crate) encode_layout: wgpu::BindGroupLayout,
    pub(crate) decode_layout: wgpu::BindGroupLayout,
    pub(crate) add_hist: wgpu::ComputePipeline,
    pub(crate) hist: [wgpu::ComputePipeline; 2],
    pub(crate) walk: [wgpu::ComputePipeline; 3],
    pub(crate) tile_count: wgpu::ComputePipeline,
    pub(crate) tile_scan: wgpu::ComputePipeline,
    pub(crate) compact: wgpu::ComputePipeline,
    pub(crate) quantize: wgpu::ComputePipeline,
    pub(crate) commit: wgpu::ComputePipeline,
    pub(crate) feedback: wgpu::ComputePipeline,
    pub(crate) scatter_add: wgpu::ComputePipeline,
}

/// Binds `buffers` in order (binding 0, 1, …) to `layout`.
pub(crate) fn bind_group(
    device: &wgpu::Device,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<_> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &entries,
    })
}

pub(crate) fn layout_entries(kinds: &[wgpu::BufferBindingType]) -> Vec<wgpu::BindGroupLayoutEntry> {
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
    pub(crate) fn new(device: &wgpu::Device) -> Self {
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

pub(crate) fn storage(
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

pub(crate) fn staging(device: &wgpu::Device, label: &str, words: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 4 * words.max(1) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

pub(crate) fn uniform(device: &wgpu::Device, label: &str) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 32,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

pub(crate) fn words_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

pub(crate) fn floats_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn bytes_words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub(crate) fn tiles(n: usize) -> usize {
    n.div_ceil(WG as usize)
}
