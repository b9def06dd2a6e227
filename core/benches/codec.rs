//! Codec throughput and compression ratio on gradient-like vectors of 1M and 10M floats.
//!
//! `cargo bench -p gradswarm-core` prints, per size and codec: the wire bytes and the ratio vs
//! dense fp32 (the baseline, computed in the same run), then criterion's encode and decode
//! throughput in GB/s of dense f32 input.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gradswarm_core::codec::decode_payload;
use gradswarm_core::synthetic::gradient_like;
use gradswarm_core::{Codec, CodecDescriptor, CpuCodec, RngKey};

/// (label, top-k fraction in ppm, the ratio the foundation issue asks for)
const CODECS: [(&str, u32, f64); 2] = [
    ("top1%+int8+zstd", 10_000, 150.0),
    ("top0.1%+int8+zstd", 1_000, 1000.0),
];
const SIZES: [usize; 2] = [1_000_000, 10_000_000];

fn bench(c: &mut Criterion) {
    for len in SIZES {
        let delta = gradient_like(len, 42);
        let dense_bytes = 4 * len;
        for (label, ppm, goal) in CODECS {
            let descriptor = CodecDescriptor::top_k_int8_zstd(ppm);
            let mut codec = CpuCodec::new(descriptor).expect("valid descriptor");
            let mut residual = vec![0.0f32; len];
            let payload = codec
                .encode(&delta, &mut residual, RngKey::new(1, 0))
                .expect("encodes");
            let ratio = dense_bytes as f64 / payload.len() as f64;
            println!(
                "ratio {label} n={len}: {} B vs dense fp32 {dense_bytes} B = {ratio:.0}x (goal >= {goal:.0}x: {})",
                payload.len(),
                if ratio >= goal { "met" } else { "NOT MET" }
            );

            let mut group = c.benchmark_group(format!("{label}/n={len}"));
            group.throughput(Throughput::Bytes(dense_bytes as u64));
            group.sample_size(10);
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(if len > 1_000_000 { 8 } else { 3 }));
            group.bench_function("encode", |b| {
                b.iter_batched_ref(
                    || vec![0.0f32; len],
                    |res| codec.encode(black_box(&delta), res, RngKey::new(1, 0)),
                    BatchSize::LargeInput,
                )
            });
            let mut out = vec![0.0f32; len];
            group.bench_function("decode+scatter-add", |b| {
                b.iter(|| {
                    let d = decode_payload(&descriptor, black_box(&payload), len).expect("decodes");
                    d.add_to(0.5, &mut out);
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
