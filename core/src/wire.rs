//! The update message: a compact, versioned binary header around a codec payload.
//!
//! Bytes on the wire: `[FORMAT_VERSION] ++ postcard(Update)`. The version byte comes first so a
//! future format can be told apart before anything else is parsed. [`Update::from_bytes`] checks the
//! message size before parsing and every field after, so hostile bytes give a [`DecodeError`].
//!
//! The updates topic carries an [`UpdateGossip`]: a small update whole, or the [`Announce`] of a
//! larger one, which receivers pull once over request-response ([`Request::Update`]). Gossipsub
//! forwards every message to every mesh peer, so a payload gossiped whole crosses each link of the
//! mesh, several times per receiver; an announcement is a hundred bytes and the payload then
//! travels once to each peer that wants it (DESIGN.md §4).

use serde::{Deserialize, Serialize};

use crate::codec::{CodecDescriptor, DecodedUpdate, decode_payload};
use crate::drift::DriftSketch;
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
            return Err(DecodeError::BadHeader("sample count out of range"));
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
            return Err(DecodeError::BadHeader("sample count out of range"));
        }
        self.codec.validate()
    }

    /// Decodes the payload into the values it carries (checking them against `limits.model_len`).
    pub fn decode_payload(&self, limits: &WireLimits) -> Result<DecodedUpdate, DecodeError> {
        decode_payload(&self.codec, &self.payload, limits.model_len)
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

/// Largest accepted heartbeat, in bytes.
pub const MAX_HEARTBEAT_BYTES: usize = 512;

/// A peer's periodic "I am here": its round, a checksum of its parameters and its latest loss.
/// Peers count the live swarm from these and spot replicas that drifted apart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The run.
    pub run_id: String,
    /// Hash of the model configuration.
    pub model_hash: ModelHash,
    /// The sender's peer id bytes.
    pub peer_id: Vec<u8>,
    /// The round the sender is on (its parameters are θ_round).
    pub round: u64,
    /// [`params_checksum`] of θ_round.
    pub checksum: u64,
    /// The sender's latest training loss (nats per byte); NaN before its first step.
    pub loss: f32,
    /// A sketch of θ_round, to estimate how far replicas drifted apart (empty before round 0 closes).
    pub sketch: DriftSketch,
}

impl Heartbeat {
    /// Serializes the heartbeat, version byte first.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses and checks a heartbeat from untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let hb: Heartbeat = decode_versioned(bytes, MAX_HEARTBEAT_BYTES)?;
        check_ids(&hb.run_id, &hb.peer_id)?;
        hb.sketch.check()?;
        Ok(hb)
    }
}

/// A checksum of a parameter vector's exact bits: equal replicas give equal checksums.
pub fn params_checksum(params: &[f32]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for chunk in params.chunks(4096) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        h.update(&bytes);
    }
    h.digest()
}

/// A replica's whole training state, what a late joiner fetches: the round, θ and the optimizer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    /// The round θ belongs to.
    pub round: u64,
    /// Optimizer steps taken (the learning-rate schedule's position).
    pub step: u64,
    /// θ, flat (the model's documented order).
    pub params: Vec<f32>,
    /// Named optimizer tensors (AdamW moments, outer momentum), each flat.
    pub optimizer: Vec<(String, Vec<f32>)>,
    /// Updates the optimizer has applied (AdamW's bias correction).
    pub optimizer_steps: u64,
}

impl PeerState {
    /// Serializes the state, version byte first.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses a state of a model with `model_len` parameters from untrusted bytes, checking every
    /// vector's length.
    pub fn from_bytes(bytes: &[u8], model_len: usize) -> Result<Self, DecodeError> {
        let state: PeerState = decode_versioned(bytes, Self::max_bytes(model_len))?;
        if state.params.len() != model_len {
            return Err(DecodeError::BadHeader(
                "state parameter count differs from the model",
            ));
        }
        if state.optimizer.len() > MAX_STATE_TENSORS
            || state
                .optimizer
                .iter()
                .any(|(n, v)| n.len() > 256 || v.len() > model_len)
        {
            return Err(DecodeError::BadHeader(
                "state optimizer tensors out of range",
            ));
        }
        if !state.params.iter().all(|v| v.is_finite()) {
            return Err(DecodeError::BadHeader("state parameters are not finite"));
        }
        Ok(state)
    }

    /// Largest encoding of a state of a model with `model_len` parameters (θ and two moments,
    /// plus an outer momentum and names).
    pub fn max_bytes(model_len: usize) -> usize {
        4 * (4 * model_len + 64) + 64 * 1024
    }
}

/// Most named optimizer tensors a state may carry.
pub const MAX_STATE_TENSORS: usize = 1024;

/// Bytes of state per chunk of a state transfer.
pub const STATE_CHUNK_BYTES: usize = 1 << 20;

/// A request to a peer: state chunks over `/gradswarm/state/1`, announced updates over
/// `/gradswarm/update/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The encoded update with this digest (announced on the updates topic).
    Update {
        /// The run.
        run_id: String,
        /// The announced digest.
        digest: Digest,
    },
    /// Chunk `chunk` of the peer's state snapshot `snapshot` (0: its latest; the answer names it).
    State {
        /// The run, so a peer of another run answers with an error rather than its state.
        run_id: String,
        /// Hash of the model configuration.
        model_hash: ModelHash,
        /// Snapshot id (0 for the latest).
        snapshot: u64,
        /// Chunk index.
        chunk: u32,
    },
    /// Chunk `chunk` of the peer's θ at the start of round `round` (f32 little-endian, the
    /// model's flat order), for pairwise averaging: both peers of a pair read each other's
    /// replica of the same round, so that their two halves of the averaging meet exactly.
    Params {
        /// The run.
        run_id: String,
        /// Hash of the model configuration.
        model_hash: ModelHash,
        /// The round whose starting θ is asked for.
        round: u64,
        /// Chunk index.
        chunk: u32,
    },
}

/// A peer's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// One chunk of a serialized [`PeerState`].
    StateChunk {
        /// The snapshot these bytes belong to; later chunks must ask for it.
        snapshot: u64,
        /// The snapshot's round.
        round: u64,
        /// This chunk's index.
        chunk: u32,
        /// Total chunks.
        chunks: u32,
        /// Total bytes of the serialized state.
        total_bytes: u64,
        /// The chunk's bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// An encoded update, as pulled with [`Request::Update`].
    Update(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The request could not be served (another run, no snapshot yet, a snapshot since replaced).
    Error(String),
}

/// Largest request or response frame on the wire.
pub const MAX_RPC_BYTES: usize = STATE_CHUNK_BYTES + 4096;

fn check_ids(run_id: &str, peer_id: &[u8]) -> Result<(), DecodeError> {
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

    #[test]
    fn announcements_round_trip_match_only_their_update_and_stay_small() {
        let limits = WireLimits::for_model(1000, 1 << 20);
        let update = sample();
        let bytes = update.to_bytes();
        let announce = Announce::of(&update, &bytes);
        assert!(announce.matches(&update, &bytes));
        let message = UpdateGossip::Announce(announce.clone());
        let wire = message.to_bytes();
        assert!(wire.len() < MAX_ANNOUNCE_BYTES, "{} bytes", wire.len());
        assert_eq!(UpdateGossip::from_bytes(&wire, &limits), Ok(message));
        let inline = UpdateGossip::Inline(update.clone());
        assert_eq!(
            UpdateGossip::from_bytes(&inline.to_bytes(), &limits),
            Ok(inline)
        );

        // Another payload, another header, or a cut-off copy is not what was announced.
        let mut other = update.clone();
        other.payload[0] ^= 1;
        assert!(!announce.matches(&other, &other.to_bytes()));
        let mut later = update.clone();
        later.round += 1;
        assert!(!announce.matches(&later, &bytes));
        assert!(!announce.matches(&update, &bytes[..bytes.len() - 1]));

        // Lying headers are refused before anything is pulled.
        for bad in [
            Announce {
                bytes: limits.max_message_bytes as u64 + 1,
                ..announce.clone()
            },
            Announce {
                bytes: 0,
                ..announce.clone()
            },
            Announce {
                base_round: announce.round + 1,
                ..announce.clone()
            },
            Announce {
                samples: 0,
                ..announce.clone()
            },
        ] {
            let wire = UpdateGossip::Announce(bad).to_bytes();
            assert!(UpdateGossip::from_bytes(&wire, &limits).is_err());
        }
        // An "announcement" padded past the announcement limit is refused whole.
        let padded = UpdateGossip::Announce(Announce {
            run_id: "r".repeat(64),
            peer_id: vec![1; 64],
            ..announce
        });
        let mut wire = padded.to_bytes();
        assert!(UpdateGossip::from_bytes(&wire, &limits).is_ok());
        wire.resize(MAX_ANNOUNCE_BYTES + 1, 0);
        assert!(UpdateGossip::from_bytes(&wire, &limits).is_err());
    }

    #[test]
    fn heartbeats_and_states_round_trip_and_reject_lies() {
        let hb = Heartbeat {
            run_id: "r".into(),
            model_hash: [1; 32],
            peer_id: vec![4; 38],
            round: 7,
            checksum: params_checksum(&[1.0, 2.0]),
            loss: 2.5,
            sketch: DriftSketch::of(&[1.0, 2.0]),
        };
        assert_eq!(Heartbeat::from_bytes(&hb.to_bytes()), Ok(hb.clone()));
        assert!(Heartbeat::from_bytes(&[FORMAT_VERSION; 600]).is_err());
        // The largest honest heartbeat fits its limit; a sketch with a NaN is refused.
        let largest = Heartbeat {
            run_id: "r".repeat(MAX_RUN_ID_LEN),
            peer_id: vec![0xff; MAX_PEER_ID_LEN],
            round: u64::MAX,
            checksum: u64::MAX,
            sketch: DriftSketch::of(&vec![1e30; 10_000]),
            ..hb.clone()
        };
        assert!(largest.to_bytes().len() <= MAX_HEARTBEAT_BYTES);
        assert!(Heartbeat::from_bytes(&largest.to_bytes()).is_ok());
        let mut nan = hb;
        nan.sketch.buckets[0] = f32::NAN;
        assert!(Heartbeat::from_bytes(&nan.to_bytes()).is_err());
        assert_ne!(params_checksum(&[1.0, 2.0]), params_checksum(&[1.0, 2.5]));

        let state = PeerState {
            round: 3,
            step: 9,
            params: vec![0.5; 10],
            optimizer: vec![("m".into(), vec![0.1; 10])],
            optimizer_steps: 9,
        };
        assert_eq!(
            PeerState::from_bytes(&state.to_bytes(), 10),
            Ok(state.clone())
        );
        assert!(PeerState::from_bytes(&state.to_bytes(), 11).is_err());
        let mut nan = state.clone();
        nan.params[3] = f32::NAN;
        assert!(PeerState::from_bytes(&nan.to_bytes(), 10).is_err());
        let mut long = state;
        long.optimizer[0].1 = vec![0.0; 11];
        assert!(PeerState::from_bytes(&long.to_bytes(), 10).is_err());
        let bytes = PeerState::default().to_bytes();
        assert!(PeerState::from_bytes(&bytes[..bytes.len() - 1], 0).is_err());
    }
}
