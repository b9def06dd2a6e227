//! Fuzzes the whole receive path of an update: header parse, limits, payload decode.
//! Run: `cd core/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_update -- -max_total_time=600`.
#![no_main]

use gradswarm_core::codec::decode_payload;
use gradswarm_core::{CodecDescriptor, Compress, Quantize, Sparsify, Update, WireLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = WireLimits::for_model(4096, 1 << 20);
    if let Ok(update) = Update::from_bytes(data, &limits) {
        let _ = update.decode_payload(&limits);
    }
    // The same bytes as a bare payload under each descriptor shape, so the fuzzer reaches the
    // payload decoder directly rather than only through a parsed header.
    if let Some((&selector, rest)) = data.split_first() {
        let descriptor = CodecDescriptor {
            sparsify: if selector & 1 == 0 {
                Sparsify::Dense
            } else {
                Sparsify::TopK { per_million: 50_000 }
            },
            quantize: if selector & 2 == 0 {
                Quantize::F32
            } else {
                Quantize::Int8 { block: 32 }
            },
            compress: if selector & 4 == 0 {
                Compress::None
            } else {
                Compress::Zstd { level: 3 }
            },
        };
        if let Ok(d) = decode_payload(&descriptor, rest, 256) {
            assert!(d.values.iter().all(|v| v.is_finite()));
        }
    }
});
