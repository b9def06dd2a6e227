//! The GPU codec against the CPU reference on a real wgpu device (lavapipe in CI): encoded bytes
//! and residuals equal byte for byte, decode + scatter-add equal bit for bit, for awkward lengths,
//! many seeds, ties, denormals, signed zeros and every codec chain.

use gradswarm_core::codec::{
    Codec, CodecDescriptor, Compress, CpuCodec, ErrorFeedback, Quantize, RngKey, Sparsify,
};
use gradswarm_core::synthetic::{SplitMix, gradient_like};
use gradswarm_shaders::GpuCodec;

/// Every chain the wire allows, the default one first.
fn chains() -> Vec<CodecDescriptor> {
    let mut out = vec![
        CodecDescriptor::top_k_int8_zstd(10_000),
        CodecDescriptor::top_k_int8_zstd(1_000),
    ];
    for sparsify in [
        Sparsify::Dense,
        Sparsify::TopK {
            per_million: 50_000,
        },
    ] {
        for quantize in [Quantize::F32, Quantize::Int8 { block: 7 }] {
            out.push(CodecDescriptor {
                sparsify,
                quantize,
                compress: Compress::None,
            });
        }
    }
    out
}

/// A hostile mix: gradient-like values, exact ties, denormals, ±0, values around the 2^-100 edge
/// of the GPU's exact-addition path, and large ones.
fn awkward(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix::new(seed);
    let base = gradient_like(len, seed);
    base.into_iter()
        .map(|g| match rng.next_u64() % 16 {
            0 => f32::from_bits((rng.next_u64() % 0x0080_0000) as u32),
            1 => -f32::from_bits((rng.next_u64() % 64) as u32),
            2 => 0.0,
            3 => -0.0,
            4 => 0.125,
            5 => -0.125,
            6 => f32::from_bits(0x0d80_0000 + (rng.next_u64() % 0x0100_0000) as u32),
            7 => g * 1e30,
            8 => f32::from_bits(0x0080_0000 + (rng.next_u64() % 0x0080_0000) as u32),
            _ => g,
        })
        .collect()
}

fn gpu(descriptor: CodecDescriptor) -> GpuCodec {
    let (codec, info) = GpuCodec::on_default_adapter(descriptor)
        .expect("a wgpu adapter (CI installs Mesa's lavapipe: mesa-vulkan-drivers)");
    eprintln!("adapter: {} ({:?})", info.name, info.backend);
    codec
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Three rounds of encode with error feedback on both codecs; bytes and residuals must agree.
fn assert_encode_matches(gpu: &mut GpuCodec, len: usize, seed: u64) {
    let descriptor = gpu.descriptor();
    let mut cpu = CpuCodec::new(descriptor).expect("valid chain");
    let (mut ef_cpu, mut ef_gpu) = (ErrorFeedback::new(len), ErrorFeedback::new(len));
    for round in 0..3 {
        let delta = awkward(len, seed * 1000 + round);
        let key = RngKey::new(seed, round);
        let a = ef_cpu.encode(&mut cpu, &delta, key).expect("cpu encodes");
        let b = ef_gpu.encode(gpu, &delta, key).expect("gpu encodes");
        assert!(
            a == b,
            "{descriptor:?} len {len} seed {seed} round {round}: payloads differ ({} vs {} bytes)",
            a.len(),
            b.len()
        );
        assert!(
            bits(ef_cpu.residual()) == bits(ef_gpu.residual()),
            "{descriptor:?} len {len} seed {seed} round {round}: residuals differ"
        );
    }
}

#[test]
fn encode_matches_the_cpu_byte_for_byte_on_awkward_lengths() {
    for descriptor in chains() {
        let mut codec = gpu(descriptor);
        for len in [0, 1, 2, 255, 256, 257, 4097, 65_537] {
            for seed in 1..=3 {
                assert_encode_matches(&mut codec, len, seed);
            }
        }
    }
}

#[test]
fn encode_matches_the_cpu_on_a_million_and_three() {
    let mut codec = gpu(CodecDescriptor::top_k_int8_zstd(10_000));
    for seed in [7, 8] {
        assert_encode_matches(&mut codec, 1_000_003, seed);
    }
}

#[test]
fn encode_matches_the_cpu_over_many_seeds() {
    let mut codec = gpu(CodecDescriptor::top_k_int8_zstd(10_000));
    for seed in 100..164 {
        assert_encode_matches(&mut codec, 3000 + seed as usize * 7, seed);
    }
}

#[test]
fn all_ties_take_the_lowest_indices() {
    // Every magnitude equal: the reference takes the first k; so must the GPU.
    let mut codec = gpu(CodecDescriptor::top_k_int8_zstd(100_000));
    let mut cpu = CpuCodec::new(codec.descriptor()).expect("valid");
    let delta: Vec<f32> = (0..5000)
        .map(|i| if i % 3 == 0 { -0.5 } else { 0.5 })
        .collect();
    let key = RngKey::new(1, 1);
    let (mut e1, mut e2) = (vec![0.0; 5000], vec![0.0; 5000]);
    let a = cpu.encode(&delta, &mut e1, key).expect("cpu");
    let b = codec.encode(&delta, &mut e2, key).expect("gpu");
    assert_eq!(a, b);
    assert_eq!(bits(&e1), bits(&e2));
    // The first 500 coordinates were sent exactly, the rest are still owed.
    assert!(e2[..500].iter().all(|&x| x == 0.0));
    assert!(e2[500..].iter().all(|&x| x.abs() == 0.5));
}

#[test]
fn a_bad_delta_is_the_same_error_and_leaves_the_residual_untouched() {
    let mut codec = gpu(CodecDescriptor::top_k_int8_zstd(10_000));
    let mut cpu = CpuCodec::new(codec.descriptor()).expect("valid");
    for bad in [f32::NAN, f32::INFINITY, f32::MAX] {
        let mut delta = awkward(10_000, 3);
        delta[1234] = bad;
        delta[5678] = bad;
        let before = awkward(10_000, 4);
        let (mut e1, mut e2) = (before.clone(), before.clone());
        let key = RngKey::new(2, 2);
        let a = cpu.encode(&delta, &mut e1, key).expect_err("cpu refuses");
        let b = codec.encode(&delta, &mut e2, key).expect_err("gpu refuses");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(bits(&e2), bits(&before), "residual changed on error");
    }
}

#[test]
fn decode_add_matches_the_cpu_bit_for_bit() {
    for descriptor in chains() {
        let mut codec = gpu(descriptor);
        let mut cpu = CpuCodec::new(descriptor).expect("valid");
        for (len, seed) in [(1, 1), (255, 2), (257, 3), (65_537, 4), (1_000_003, 5)] {
            let mut residual = vec![0.0; len];
            let payload = cpu
                .encode(&awkward(len, seed), &mut residual, RngKey::new(seed, 0))
                .expect("encodes");
            for weight in [1.0, 0.37, -2.5e-3, 3e-39, 1e6] {
                let start = awkward(len, seed + 99);
                let (mut a, mut b) = (start.clone(), start);
                cpu.decode_add(&descriptor, &payload, weight, &mut a)
                    .expect("cpu decodes");
                codec
                    .decode_add(&descriptor, &payload, weight, &mut b)
                    .expect("gpu decodes");
                assert!(
                    bits(&a) == bits(&b),
                    "{descriptor:?} len {len} weight {weight}: dense results differ"
                );
            }
        }
    }
}

#[test]
fn hostile_payloads_are_the_same_errors() {
    let descriptor = CodecDescriptor::top_k_int8_zstd(10_000);
    let mut codec = gpu(descriptor);
    let mut cpu = CpuCodec::new(descriptor).expect("valid");
    let mut residual = vec![0.0; 1000];
    let good = cpu
        .encode(&awkward(1000, 1), &mut residual, RngKey::new(1, 1))
        .expect("encodes");
    for cut in [0, 1, good.len() / 2, good.len() - 1] {
        let (mut a, mut b) = (vec![0.0; 1000], vec![0.0; 1000]);
        let ea = cpu.decode_add(&descriptor, &good[..cut], 1.0, &mut a);
        let eb = codec.decode_add(&descriptor, &good[..cut], 1.0, &mut b);
        assert!(eb.is_err());
        assert_eq!(ea, eb);
        assert!(b.iter().all(|&x| x == 0.0), "output touched on error");
    }
}

#[test]
fn without_a_device_the_cpu_codec_is_used_and_with_one_the_gpu_codec() {
    let descriptor = CodecDescriptor::top_k_int8_zstd(10_000);
    let (_, kind) = gradswarm_shaders::codec_for(descriptor, None).expect("cpu codec");
    assert_eq!(kind, gradswarm_shaders::CodecKind::Cpu);
    let (device, queue, _) = gradswarm_shaders::request_device().expect("an adapter");
    let (mut codec, kind) =
        gradswarm_shaders::codec_for(descriptor, Some((device, queue))).expect("gpu codec");
    assert_eq!(kind, gradswarm_shaders::CodecKind::Gpu);
    let mut residual = vec![0.0; 300];
    let mut cpu_residual = vec![0.0; 300];
    let delta = awkward(300, 9);
    let key = RngKey::new(3, 3);
    assert_eq!(
        codec.encode(&delta, &mut residual, key).expect("encodes"),
        CpuCodec::new(descriptor)
            .expect("valid")
            .encode(&delta, &mut cpu_residual, key)
            .expect("encodes")
    );
}

/// The path a browser takes (the readback awaited, not waited for) gives the same bytes and
/// residuals: rounds alternate between it and the blocking one, against the CPU reference.
#[test]
fn the_awaited_encode_matches_the_cpu_byte_for_byte() {
    let len = 50_003;
    let mut gpu = gpu(CodecDescriptor::top_k_int8_zstd(10_000));
    let mut cpu = CpuCodec::new(gpu.descriptor()).expect("valid chain");
    let (mut ef_cpu, mut ef_gpu) = (ErrorFeedback::new(len), ErrorFeedback::new(len));
    for round in 0..4 {
        let delta = awkward(len, 77 + round);
        let key = RngKey::new(77, round);
        let a = ef_cpu.encode(&mut cpu, &delta, key).expect("cpu encodes");
        let b = if round % 2 == 0 {
            pollster::block_on(ef_gpu.encode_async(&mut gpu, &delta, key)).expect("gpu encodes")
        } else {
            ef_gpu.encode(&mut gpu, &delta, key).expect("gpu encodes")
        };
        assert!(a == b, "round {round}: payloads differ");
        assert_eq!(
            bits(ef_cpu.residual()),
            bits(ef_gpu.residual()),
            "round {round}"
        );
    }
}
