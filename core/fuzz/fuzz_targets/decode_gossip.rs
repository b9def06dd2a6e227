//! Fuzzes what the updates topic carries: an inline update or an announcement, parsed under a
//! 4096-parameter model's limits, and an announcement's own checks.
//! Run: `cd core/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_gossip corpus/decode_gossip seeds/decode_gossip`.
#![no_main]

use gradswarm_core::{UpdateGossip, WireLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = WireLimits::for_model(4096, 1 << 20);
    match UpdateGossip::from_bytes(data, &limits) {
        Ok(UpdateGossip::Inline(update)) => {
            let _ = update.decode_payload(&limits);
        }
        Ok(UpdateGossip::Announce(announce)) => {
            assert!(announce.check(&limits).is_ok(), "parsed announcements are checked");
        }
        Err(_) => {}
    }
});
