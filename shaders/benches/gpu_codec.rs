//! GPU codec vs the CPU reference, same run, same vectors: encode (top-1% + int8 + zstd, with error
//! feedback) and decode + scatter-add, for 1M and 16M floats.
//!
//! `cargo bench -p gradswarm-shaders` prints criterion's throughput (dense f32 GB/s) for both codecs
//! through the `Codec` trait (host slices in and out, so transfers count), then one summary line
//! per size with the GPU/CPU ratios and the device-only encode throughput (buffers resident, no
//! transfers) that a trainer sharing its device would see.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use gradswarm_core::synthetic::gradient_like;
use gradswarm_core::{Codec, CodecDescriptor, CpuCodec, RngKey};
use gradswarm_shaders::GpuCodec;

const SIZES: [usize; 2] = [1 << 20, 16 << 20];

/// Median seconds of `runs` calls of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn main() {
    let descriptor = CodecDescriptor::top_k_int8_zstd(10_000);
    let (mut gpu, info) = GpuCodec::on_default_adapter(descriptor).expect("a wgpu adapter");
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    let mut cpu = CpuCodec::new(descriptor).expect("valid");
    let mut c = Criterion::default().configure_from_args();
    let mut summary = Vec::new();
    for len in SIZES {
        let delta = gradient_like(len, 42);
        let bytes = 4 * len as u64;
        let key = RngKey::new(1, 0);
        let mut group = c.benchmark_group(format!("n={len}"));
        group.throughput(Throughput::Bytes(bytes));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(4));
        for (name, codec) in [("cpu", &mut cpu as &mut dyn Codec), ("gpu", &mut gpu)] {
            group.bench_function(format!("{name}/encode"), |b| {
                b.iter_batched_ref(
                    || vec![0.0f32; len],
                    |res| codec.encode(black_box(&delta), res, key).expect("encodes"),
                    BatchSize::LargeInput,
                )
            });
        }
        let mut residual = vec![0.0; len];
        let payload = cpu.encode(&delta, &mut residual, key).expect("encodes");
        let mut out = vec![0.0f32; len];
        for (name, codec) in [("cpu", &mut cpu as &mut dyn Codec), ("gpu", &mut gpu)] {
            group.bench_function(format!("{name}/decode+scatter-add"), |b| {
                b.iter(|| {
                    codec
                        .decode_add(&descriptor, black_box(&payload), 0.5, &mut out)
                        .expect("decodes")
                })
            });
        }
        group.finish();

        // The ratios, measured again here so that one line holds both sides of each.
        let enc = |codec: &mut dyn Codec| {
            let mut res = vec![0.0f32; len];
            median(5, || {
                res.iter_mut().for_each(|x| *x = 0.0);
                codec.encode(&delta, &mut res, key).expect("encodes");
            })
        };
        let (cpu_enc, gpu_enc) = (enc(&mut cpu), enc(&mut gpu));
        let dec = |codec: &mut dyn Codec| {
            let mut out = vec![0.0f32; len];
            median(5, || {
                codec
                    .decode_add(&descriptor, &payload, 0.5, &mut out)
                    .expect("decodes");
            })
        };
        let (cpu_dec, gpu_dec) = (dec(&mut cpu), dec(&mut gpu));
        let iters = 10;
        let device = gpu
            .time_device_encode(&delta, iters)
            .expect("device timing")
            .as_secs_f64()
            / f64::from(iters);
        let gbs = |s: f64| bytes as f64 / s / 1e9;
        summary.push(format!(
            "n={len}: encode cpu {:.2} GB/s, gpu {:.2} GB/s (gpu/cpu {:.2}x); device-only encode {:.2} GB/s; \
             decode+scatter-add cpu {:.2} GB/s, gpu {:.2} GB/s (gpu/cpu {:.2}x)",
            gbs(cpu_enc),
            gbs(gpu_enc),
            cpu_enc / gpu_enc,
            gbs(device),
            gbs(cpu_dec),
            gbs(gpu_dec),
            cpu_dec / gpu_dec,
        ));
    }
    c.final_summary();
    for line in summary {
        println!("{line}");
    }
}
