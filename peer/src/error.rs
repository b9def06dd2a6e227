//! Why a peer stopped: one error type for the round loop and state sync alike.

use gradswarm_core::EncodeError;
use gradswarm_model::ModelError;
use gradswarm_net::NetError;
use thiserror::Error;

/// Why a peer stopped with an error.
#[derive(Debug, Error)]
pub enum PeerError {
    /// Training failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The network task failed or stopped.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Encoding this peer's own update failed.
    #[error("encoding the update: {0}")]
    Encode(#[from] EncodeError),
    /// Fetching the run's state from a peer failed.
    #[error("state sync: {0}")]
    Sync(String),
    /// A peer asked for something answered nothing whole in time.
    #[error("{peer} answered nothing whole within {within:?}")]
    Unanswered {
        /// The peer asked (base58).
        peer: String,
        /// How long it was given.
        within: std::time::Duration,
    },
    /// A partner asked for its fingerprint of a round has not reached that round yet.
    #[error("not at that round yet (its latest is {latest})")]
    NotReached {
        /// The latest round start it has a fingerprint of.
        latest: u64,
    },
}
