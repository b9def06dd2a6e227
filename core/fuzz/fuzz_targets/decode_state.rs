//! Fuzzes a state chunk stream as a joiner reassembles it: a whole `PeerState` of a 256-parameter
//! model, whose every vector and round must be checked before it is installed.
//! Run: `cd core/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_state corpus/decode_state seeds/decode_state`.
#![no_main]

use gradswarm_core::PeerState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = PeerState::from_bytes(data, 256) {
        assert_eq!(state.params.len(), 256);
        assert!(state.params.iter().all(|v| v.is_finite()));
        assert!(state.optimizer.iter().all(|(_, v)| v.iter().all(|x| x.is_finite())));
    }
});
