//! gradswarm's runnable examples, the programs a newcomer reads first (`cargo test` builds them):
//!
//! - `codec.rs`: one peer's update through the codec (top-k + int8 + zstd with error feedback),
//!   onto the wire and back: `cargo run -p gradswarm-examples --example codec`.
//! - `two_peers.rs`: a bootstrap node and two peers training one model together in one process,
//!   over real libp2p on loopback: `cargo run --release -p gradswarm-examples --example two_peers`.
