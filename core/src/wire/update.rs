//! The updates topic: one peer's compressed [`Update`] for one round, sent whole when small, or
//! its [`Announce`] when large, which receivers pull once over request-response
//! ([`super::Request::Update`]). Gossipsub forwards every message to every mesh peer, so a payload
//! gossiped whole crosses each link of the mesh, several times per receiver; an announcement is a
//! hundred bytes and the payload then travels once to each peer that wants it.

use serde::{Deserialize, Serialize};

use super::{ModelHash, WireLimits, check_ids, decode_versioned, encode_versioned};
use crate::codec::{CodecDescriptor, DecodedUpdate, decode_payload};
use crate::error::DecodeError;

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

/// SHA-256 of an update's bytes: what an announcement promises and a pulled payload must match.
pub type Digest = [u8; 32];

/// The digest of an encoded update.
pub fn digest(bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// Largest accepted message on the updates topic when it is an announcement: it is all header.
pub const MAX_ANNOUNCE_BYTES: usize = 512;

/// "I have an update for round `round`, `bytes` long, with this digest: pull it from me."
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Announce {
    /// The run.
    pub run_id: String,
    /// Hash of the model configuration.
    pub model_hash: ModelHash,
    /// The publisher's peer id bytes (the update's `peer_id`).
    pub peer_id: Vec<u8>,
    /// The update's round.
    pub round: u64,
    /// The update's base round.
    pub base_round: u64,
    /// The update's sample count.
    pub samples: u64,
    /// Length of the encoded update.
    pub bytes: u64,
    /// [`digest`] of the encoded update.
    pub digest: Digest,
}

impl Announce {
    /// The announcement of `update`, whose encoding is `bytes`.
    pub fn of(update: &Update, bytes: &[u8]) -> Self {
        Self {
            run_id: update.run_id.clone(),
            model_hash: update.model_hash,
            peer_id: update.peer_id.clone(),
            round: update.round,
            base_round: update.base_round,
            samples: update.samples,
            bytes: bytes.len() as u64,
            digest: digest(bytes),
        }
    }

    /// Checks the header against `limits` (the same bounds an update's header must meet).
    pub fn check(&self, limits: &WireLimits) -> Result<(), DecodeError> {
        check_ids(&self.run_id, &self.peer_id)?;
        if self.base_round > self.round {
            return Err(DecodeError::BadHeader("base round after round"));
        }
        if self.samples == 0 || self.samples > limits.max_samples {
            return Err(DecodeError::Overclaimed {
                samples: self.samples,
                max: limits.max_samples,
            });
        }
        if self.bytes == 0 || self.bytes > limits.max_message_bytes as u64 {
            return Err(DecodeError::BadHeader("announced size out of range"));
        }
        Ok(())
    }

    /// Whether `bytes`, parsed as `update`, is what this announcement promised.
    pub fn matches(&self, update: &Update, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.bytes
            && digest(bytes) == self.digest
            && update.run_id == self.run_id
            && update.model_hash == self.model_hash
            && update.peer_id == self.peer_id
            && update.round == self.round
            && update.base_round == self.base_round
            && update.samples == self.samples
    }
}

/// One message on the updates topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UpdateGossip {
    /// A small update, whole.
    Inline(Update),
    /// A larger update's announcement; its payload is pulled from the sender.
    Announce(Announce),
}

impl UpdateGossip {
    /// Serializes the message, version byte first.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses and checks a message of the updates topic from untrusted bytes.
    pub fn from_bytes(bytes: &[u8], limits: &WireLimits) -> Result<Self, DecodeError> {
        let message: UpdateGossip = decode_versioned(bytes, limits.max_message_bytes)?;
        match &message {
            UpdateGossip::Inline(update) => update.check(limits)?,
            UpdateGossip::Announce(announce) => {
                if bytes.len() > MAX_ANNOUNCE_BYTES {
                    return Err(DecodeError::TooLarge {
                        size: bytes.len(),
                        max: MAX_ANNOUNCE_BYTES,
                    });
                }
                announce.check(limits)?
            }
        }
        Ok(message)
    }
}

impl Update {
    /// Serializes the update, version byte first.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses and checks an update from untrusted bytes.
    pub fn from_bytes(bytes: &[u8], limits: &WireLimits) -> Result<Self, DecodeError> {
        let update: Update = decode_versioned(bytes, limits.max_message_bytes)?;
        update.check(limits)?;
        Ok(update)
    }

    /// Checks the header fields against `limits`.
    pub fn check(&self, limits: &WireLimits) -> Result<(), DecodeError> {
        check_ids(&self.run_id, &self.peer_id)?;
        if self.base_round > self.round {
            return Err(DecodeError::BadHeader("base round after round"));
        }
        if self.samples == 0 || self.samples > limits.max_samples {
            return Err(DecodeError::Overclaimed {
                samples: self.samples,
                max: limits.max_samples,
            });
        }
        if limits.codec.is_some_and(|c| c != self.codec) {
            return Err(DecodeError::BadCodec("not the run's codec"));
        }
        self.codec.validate()
    }

    /// What its sender signed for its round, as one number: two updates of one sender for one
    /// round with different content digests are an equivocation ([`crate::RoundBook::offer`]).
    pub fn content_digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.base_round.to_le_bytes());
        h.update(&self.samples.to_le_bytes());
        h.update(&self.payload);
        h.digest()
    }

    /// Decodes the payload into the values it carries (checking them against `limits.model_len`).
    pub fn decode_payload(&self, limits: &WireLimits) -> Result<DecodedUpdate, DecodeError> {
        decode_payload(&self.codec, &self.payload, limits.model_len)
    }
}
