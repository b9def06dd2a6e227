//! Writes valid update messages under every descriptor shape into a folder, as a seed corpus for
//! the `decode_update` fuzz target: `cargo run -p gradswarm-core --example fuzz_seeds -- DIR`.

use gradswarm_core::synthetic::gradient_like;
use gradswarm_core::{
    CodecDescriptor, Compress, CpuCodec, ErrorFeedback, Quantize, RngKey, Sparsify, Update,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?;
    std::fs::create_dir_all(&dir)?;
    let len = 4096; // the fuzz target's model size
    let mut n = 0;
    for sparsify in [
        Sparsify::Dense,
        Sparsify::TopK {
            per_million: 50_000,
        },
    ] {
        for quantize in [Quantize::F32, Quantize::Int8 { block: 32 }] {
            for compress in [Compress::None, Compress::Zstd { level: 3 }] {
                let codec = CodecDescriptor {
                    sparsify,
                    quantize,
                    compress,
                };
                let mut cpu = CpuCodec::new(codec)?;
                let mut ef = ErrorFeedback::new(len);
                let payload = ef.encode(&mut cpu, &gradient_like(len, n), RngKey::new(n, 1))?;
                let update = Update {
                    run_id: "fuzz".into(),
                    model_hash: [0; 32],
                    peer_id: vec![1; 38],
                    round: 3,
                    base_round: 2,
                    samples: 128,
                    codec,
                    payload,
                };
                std::fs::write(format!("{dir}/seed-{n}"), update.to_bytes())?;
                n += 1;
            }
        }
    }
    println!("wrote {n} seeds to {dir}");
    Ok(())
}
