//! The update message: a compact, versioned binary header around a codec payload.
//!
//! Bytes on the wire: `[FORMAT_VERSION] ++ postcard(Update)`. The version byte comes first so a
//! future format can be told apart before anything else is parsed. [`Update::from_bytes`] checks the
//! message size before parsing and every field after, so hostile bytes give a [`DecodeError`].

use serde::{Deserialize, Serialize};

use crate::codec::{CodecDescriptor, DecodedUpdate, decode_payload};
use crate::error::DecodeError;

/// The update format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Longest accepted run id, in bytes.
pub const MAX_RUN_ID_LEN: usize = 64;
/// Longest accepted peer id, in bytes (a libp2p `PeerId` is 38 for ed25519 keys).
pub const MAX_PEER_ID_LEN: usize = 64;

/// Hash of a model configuration: updates for another architecture are never mixed in.
pub type ModelHash = [u8; 32];

/// One peer's compressed update for one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The run this update belongs to.
    pub run_id: String,
    /// Hash of the model configuration it was computed for.
    pub model_hash: ModelHash,
    /// The sender's peer id bytes.
    pub peer_id: Vec<u8>,
    /// The round the sender published it in.
    pub round: u64,
    /// The round whose parameters it was computed from (`base_round ≤ round`); staleness is
    /// measured from here.
    pub base_round: u64,
    /// Training samples behind it (the aggregation weight before staleness).
    pub samples: u64,
    /// How `payload` is encoded.
    pub codec: CodecDescriptor,
    /// The codec's output.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Hard limits a receiver applies to updates before and while parsing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest accepted message in bytes.
    pub max_message_bytes: usize,
    /// Largest accepted sample count (caps a liar's aggregation weight).
    pub max_samples: u64,
    /// The model's parameter count: every payload must decode to exactly this length.
    pub model_len: usize,
}

impl WireLimits {
    /// Limits for a model of `model_len` parameters: a message may be at most as large as the dense
    /// f32 vector plus headroom, and claim at most `max_samples` samples.
    pub fn for_model(model_len: usize, max_samples: u64) -> Self {
        Self {
            max_message_bytes: 4 * model_len + 4096,
            max_samples,
            model_len,
        }
    }
}

impl Update {
    /// Serializes the update, version byte first.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain owned data into a Vec cannot fail; fall back to an empty body if
        // postcard ever disagrees, which the receiver then rejects as malformed.
        postcard::to_extend(self, vec![FORMAT_VERSION]).unwrap_or_else(|_| vec![FORMAT_VERSION])
    }

    /// Parses and checks an update from untrusted bytes.
    pub fn from_bytes(bytes: &[u8], limits: &WireLimits) -> Result<Self, DecodeError> {
        if bytes.len() > limits.max_message_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                max: limits.max_message_bytes,
            });
        }
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let (update, rest): (Update, _) =
            postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        update.check(limits)?;
        Ok(update)
    }

    /// Checks the header fields against `limits`.
    pub fn check(&self, limits: &WireLimits) -> Result<(), DecodeError> {
        if self.run_id.len() > MAX_RUN_ID_LEN {
            return Err(DecodeError::FieldTooLong {
                field: "run_id",
                len: self.run_id.len(),
                max: MAX_RUN_ID_LEN,
            });
        }
        if self.peer_id.len() > MAX_PEER_ID_LEN {
            return Err(DecodeError::FieldTooLong {
                field: "peer_id",
                len: self.peer_id.len(),
                max: MAX_PEER_ID_LEN,
            });
        }
        if self.base_round > self.round {
            return Err(DecodeError::BadHeader("base round after round"));
        }
        if self.samples == 0 || self.samples > limits.max_samples {
            return Err(DecodeError::BadHeader("sample count out of range"));
        }
        self.codec.validate()
    }

    /// Decodes the payload into the values it carries (checking them against `limits.model_len`).
    pub fn decode_payload(&self, limits: &WireLimits) -> Result<DecodedUpdate, DecodeError> {
        decode_payload(&self.codec, &self.payload, limits.model_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Update {
        Update {
            run_id: "shakespeare-1".into(),
            model_hash: [7; 32],
            peer_id: vec![1, 2, 3],
            round: 12,
            base_round: 11,
            samples: 4096,
            codec: CodecDescriptor::top_k_int8_zstd(10_000),
            payload: vec![9, 8, 7],
        }
    }

    #[test]
    fn round_trips_with_version_first() {
        let limits = WireLimits::for_model(1000, 1 << 20);
        let bytes = sample().to_bytes();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(Update::from_bytes(&bytes, &limits), Ok(sample()));
    }

    #[test]
    fn rejects_bad_headers() {
        let limits = WireLimits::for_model(1000, 1 << 20);
        let mut bytes = sample().to_bytes();
        bytes[0] = 2;
        assert_eq!(
            Update::from_bytes(&bytes, &limits),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(Update::from_bytes(&[], &limits), Err(DecodeError::Empty));
        let mut u = sample();
        u.base_round = 13;
        assert!(matches!(
            Update::from_bytes(&u.to_bytes(), &limits),
            Err(DecodeError::BadHeader(_))
        ));
        let mut u = sample();
        u.samples = (1 << 20) + 1;
        assert!(matches!(
            Update::from_bytes(&u.to_bytes(), &limits),
            Err(DecodeError::BadHeader(_))
        ));
        let mut u = sample();
        u.run_id = "x".repeat(65);
        assert!(matches!(
            Update::from_bytes(&u.to_bytes(), &limits),
            Err(DecodeError::FieldTooLong { .. })
        ));
        let mut big = sample().to_bytes();
        big.resize(limits.max_message_bytes + 1, 0);
        assert!(matches!(
            Update::from_bytes(&big, &limits),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut trailing = sample().to_bytes();
        trailing.push(0);
        assert_eq!(
            Update::from_bytes(&trailing, &limits),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}
