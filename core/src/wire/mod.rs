//! The wire: every gradswarm message is `[FORMAT_VERSION] ++ postcard(message)`. The version byte
//! comes first so a future format can be told apart before anything else is parsed; every decoder
//! checks the message size before parsing and every field after, so hostile bytes give a
//! [`DecodeError`], never a panic or an unbounded allocation.
//!
//! [`update`] holds what the updates topic carries ([`Update`], [`Announce`], [`UpdateGossip`]);
//! [`control`] the heartbeats, the state a late joiner fetches, and the request-response messages;
//! [`manifest`] what defines a run, as a joiner fetches it.

mod control;
mod manifest;
mod update;

use serde::Serialize;

use crate::CodecDescriptor;
use crate::error::DecodeError;

pub use control::{
    Fingerprint, Heartbeat, MAX_AGENT_LEN, MAX_HEARTBEAT_BYTES, MAX_RPC_BYTES,
    MAX_STATE_DECODED_BYTES, MAX_STATE_RECENT_ROUNDS, MAX_STATE_SKETCHES,
    MAX_STATE_STANDING_ROUNDS, MAX_STATE_TENSORS, MAX_STATE_UPDATE_BYTES, MAX_STATE_UPDATES,
    PeerState, RecentRound, Request, Response, STATE_CHUNK_BYTES, UPDATE_CHUNK_BYTES,
    params_checksum, recent_decoded_bytes, update_chunks,
};
pub use manifest::{
    MAX_MANIFEST_BYTES, MAX_PIECES, MAX_RUN_NAME_LEN, Manifest, ManifestError, ManifestId,
    PIECE_BYTES, RunFiles, sha256,
};
pub use update::{Announce, Digest, MAX_ANNOUNCE_BYTES, Update, UpdateGossip, digest};

/// The update format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Longest accepted run id, in bytes.
pub const MAX_RUN_ID_LEN: usize = 64;
/// Longest accepted peer id, in bytes (a libp2p `PeerId` is 38 for ed25519 keys).
pub const MAX_PEER_ID_LEN: usize = 64;

/// Hash of a model configuration: updates for another architecture are never mixed in.
pub type ModelHash = [u8; 32];

/// Hard limits a receiver applies to updates before and while parsing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest accepted message in bytes.
    pub max_message_bytes: usize,
    /// Largest accepted sample count (caps a liar's aggregation weight).
    pub max_samples: u64,
    /// The model's parameter count: every payload must decode to exactly this length.
    pub model_len: usize,
    /// The run's codec, when the receiver knows it: an update in any other is refused before
    /// its payload is decoded (a dense f32 update is 4n bytes to decode and hold).
    pub codec: Option<CodecDescriptor>,
}

impl WireLimits {
    /// Limits for a model of `model_len` parameters: a message may be at most as large as the dense
    /// f32 vector plus headroom, and claim at most `max_samples` samples.
    pub fn for_model(model_len: usize, max_samples: u64) -> Self {
        Self {
            max_message_bytes: 4 * model_len + 4096,
            max_samples,
            model_len,
            codec: None,
        }
    }

    /// These limits, accepting updates in `codec` only.
    pub fn with_codec(self, codec: CodecDescriptor) -> Self {
        Self {
            codec: Some(codec),
            ..self
        }
    }
}

/// `[FORMAT_VERSION] ++ postcard(value)`: the framing of every gradswarm message.
pub fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain owned data into a Vec cannot fail; fall back to the bare version byte if
    // postcard ever disagrees, which every receiver rejects as malformed.
    postcard::to_extend(value, vec![FORMAT_VERSION]).unwrap_or_else(|_| vec![FORMAT_VERSION])
}

/// Parses `[FORMAT_VERSION] ++ postcard(T)` from untrusted bytes of at most `max_bytes`, with no
/// trailing bytes. Allocation is bounded by the input's size (postcard never pre-allocates more
/// than the bytes it has).
pub fn decode_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: max_bytes,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (value, rest): (T, _) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// The gossipsub topic that carries a run's updates.
pub fn updates_topic(run_id: &str) -> String {
    format!("/gradswarm/{run_id}/updates/1")
}

/// The gossipsub topic that carries a run's heartbeats.
pub fn heartbeat_topic(run_id: &str) -> String {
    format!("/gradswarm/{run_id}/heartbeat/1")
}

/// Checks the run and peer ids every message carries against their hard limits.
pub(crate) fn check_ids(run_id: &str, peer_id: &[u8]) -> Result<(), DecodeError> {
    if run_id.len() > MAX_RUN_ID_LEN {
        return Err(DecodeError::FieldTooLong {
            field: "run_id",
            len: run_id.len(),
            max: MAX_RUN_ID_LEN,
        });
    }
    if peer_id.len() > MAX_PEER_ID_LEN {
        return Err(DecodeError::FieldTooLong {
            field: "peer_id",
            len: peer_id.len(),
            max: MAX_PEER_ID_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
