//! Fuzzes the body of a request-response frame, both ways: what a peer is asked (`Request`) and
//! what it is answered (`Response`), under the frame limit `net/src/rpc.rs` reads with.
//! Run: `cd core/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_rpc corpus/decode_rpc seeds/decode_rpc`.
#![no_main]

use gradswarm_core::wire::{MAX_RPC_BYTES, decode_versioned};
use gradswarm_core::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_versioned::<Request>(data, MAX_RPC_BYTES);
    if let Ok(Response::Fingerprint { sketch, .. }) = decode_versioned::<Response>(data, MAX_RPC_BYTES) {
        // A joiner checks the sketch before it compares with it.
        let _ = sketch.check();
    }
});
