//! gradswarm's algorithms and wire types, shared by the desktop node and the browser peer.
//!
//! Plain Rust with no I/O, no async runtime, no burn and no libp2p types, so that every rule of the
//! training protocol (docs/architecture.md) is unit-tested deterministically and compiles to
//! `wasm32-unknown-unknown` unchanged.
//!
//! - [`codec`]: top-k → int8 → zstd with error feedback, behind the [`Codec`] trait.
//! - [`wire`]: the [`Update`] message and its hostile-input-safe decoder.
//! - [`staleness`]: staleness weights, the τ_max cut-off and drop counters.
//! - [`aggregate`]: weighted mean, trimmed mean, centered clipping, and update validation.
//! - [`screen`]: the norm and direction screens a round's updates pass before any rule.
//! - [`standing`]: peers' updates averaged over rounds, and the filter that weighs colluders down.
//! - [`outer`]: the outer optimizer (SGD, DiLoCo-style Nesterov) over flat parameter vectors.
//! - [`shard`]: rendezvous hashing of data chunks over live peers.
//! - [`synthetic`]: seeded gradient-like vectors for tests and benchmarks.
//! - [`drift`]: the drift sketch heartbeats carry and pairwise averaging of drifted replicas.
//! - [`marks`]: a replica's θ at recent round starts, corrected by late updates until sealed.
//! - [`credit`]: who contributed what, as the peers that aggregated it attest.
//! - [`topology`]: averaging topologies (whose updates a round waits for): broadcast, groups.
//! - [`gossip`]: compressed gossip over hash rings (CHOCO-gossip), simulated so far.

pub mod adversary;
pub mod aggregate;
pub mod codec;
pub mod credit;
pub mod drift;
mod error;
pub mod gossip;
pub mod marks;
pub mod outer;
pub mod round;
pub mod screen;
pub mod shard;
pub mod staleness;
pub mod standing;
pub mod synthetic;
pub mod topology;
pub mod view;
pub mod wire;

pub use aggregate::{
    AggregateError, AggregationRule, Aggregator, ClippedMean, UpdateValidator, Weighted,
    median_clipped_mean,
};
pub use codec::{
    Codec, CodecDescriptor, Compress, CpuCodec, DecodedUpdate, ErrorFeedback, Quantize, RngKey,
    Sparsify,
};
pub use drift::DriftSketch;
pub use error::{DecodeError, EncodeError};
pub use marks::{Mark, Marks};
pub use outer::{OuterConfig, OuterOptimizer};
pub use round::{Accepted, Closed, Correction, Held, Recount, RestoreError, RoundBook};
pub use screen::{DirectionScreen, NormScreen, Screened, screen_round};
pub use shard::ShardKey;
pub use staleness::{DropCounts, DropReason, StalenessPolicy};
pub use standing::{Factors, Standing, StandingConfig};
pub use topology::{
    Averaging, AveragingConfig, Broadcast, Groups, HEARTBEAT_FLAT_FROM, swarm_size,
};
pub use wire::{
    Announce, Digest, FORMAT_VERSION, Fingerprint, Heartbeat, Manifest, ModelHash, PeerState,
    Request, Response, RunFiles, Update, UpdateGossip, WireLimits,
};

/// The usage example of `core/README.md`, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
