//! Device-only encode time per chain on the default adapter, to see which stages cost what:
//! `cargo run --example kernel_times -p gradswarm-shaders --release -- 1048576`.
use gradswarm_core::codec::{CodecDescriptor, Compress, Quantize, Sparsify};
use gradswarm_core::synthetic::gradient_like;
use gradswarm_shaders::GpuCodec;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    let delta = gradient_like(n, 1);
    for (name, d) in [
        (
            "dense f32",
            CodecDescriptor {
                sparsify: Sparsify::Dense,
                quantize: Quantize::F32,
                compress: Compress::None,
            },
        ),
        (
            "dense int8",
            CodecDescriptor {
                sparsify: Sparsify::Dense,
                quantize: Quantize::Int8 { block: 32 },
                compress: Compress::None,
            },
        ),
        ("top-1% int8", CodecDescriptor::top_k_int8_zstd(10_000)),
    ] {
        let (mut codec, info) = GpuCodec::on_default_adapter(d).expect("adapter");
        let t = codec
            .time_device_encode(&delta, 5)
            .expect("runs")
            .as_secs_f64()
            / 5.0;
        println!(
            "{} n={n} {name}: {:.1} ms, {:.2} GB/s",
            info.name,
            t * 1e3,
            4.0 * n as f64 / t / 1e9
        );
    }
}
