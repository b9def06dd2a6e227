//! The runtime of one gradswarm peer: the round loop of docs/architecture.md.
//!
//! A [`Peer`] owns a [`Trainer`](gradswarm_model::Trainer), a codec with error feedback and a
//! [`RoundBook`](gradswarm_core::RoundBook), and talks to the network only through
//! [`gradswarm_net::NetHandle`] and its event stream. [`Peer::run`] is a plain future that uses
//! nothing but `futures` and `futures-timer`: the desktop node runs it on a thread of its own
//! (training blocks), the browser on wasm-bindgen-futures.

mod config;
mod edge;
mod error;
pub mod metrics;
mod report;
mod runtime;
pub mod settings;
mod state;

pub use config::{DEFAULT_LOCAL_STEPS, Mode, PeerConfig, ROUND_FLOOR, agent};
pub use edge::{Edge, Honest};
pub use error::PeerError;
pub use report::{MAX_REPORTS, PeerSummary, RegroupReport, RoundReport};
pub use runtime::{
    CheckpointSink, MOMENTUM_KEY, Observer, PauseHandle, Peer, RESIDUAL_KEY, StopHandle, stop_pair,
};
pub use settings::{NodeConfig, SettingsError};
