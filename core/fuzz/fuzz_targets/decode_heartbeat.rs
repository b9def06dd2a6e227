//! Fuzzes a heartbeat from the network: parse, sketch checks, and the distance a peer computes
//! from it (which must stay a number or None, never a panic).
//! Run: `cd core/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_heartbeat corpus/decode_heartbeat seeds/decode_heartbeat`.
#![no_main]

use gradswarm_core::{DriftSketch, Heartbeat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(heartbeat) = Heartbeat::from_bytes(data) {
        assert!(heartbeat.sketch.check().is_ok(), "parsed heartbeats carry checked sketches");
        let mine = DriftSketch::of(&[1.0; 64]);
        if let Some(d) = mine.relative_distance(&heartbeat.sketch) {
            assert!(!d.is_nan());
        }
    }
});
