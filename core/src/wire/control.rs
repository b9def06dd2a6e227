//! The control messages: heartbeats, a replica's whole state (what a late joiner fetches), and
//! the requests and responses of the state and pull protocols.

use serde::{Deserialize, Serialize};

use super::{Digest, ModelHash, check_ids, decode_versioned, encode_versioned};
use crate::credit::{Attestation, MAX_ATTESTATIONS};
use crate::drift::DriftSketch;
use crate::error::DecodeError;

/// Largest accepted heartbeat, in bytes.
pub const MAX_HEARTBEAT_BYTES: usize = 1280;

/// Longest [`Heartbeat::agent`], in bytes.
pub const MAX_AGENT_LEN: usize = 64;

/// A replica's fingerprint at a round's start: what heartbeats carry and
/// [`Request::Fingerprint`] answers, so that peers compare replicas without sending θ.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The round whose start θ is.
    pub round: u64,
    /// [`params_checksum`] of θ.
    pub checksum: u64,
    /// θ's drift sketch.
    pub sketch: DriftSketch,
    /// [`crate::RoundBook::applied_digest`]: the updates of recent rounds θ holds.
    pub applied: u64,
}

/// A peer's periodic "I am here": its round, a checksum of its parameters and its latest loss.
/// Peers count the live swarm from these and spot replicas that drifted apart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The sender's latest validation loss (nats per byte); NaN before its first evaluation.
    pub val_loss: f32,
    /// A sketch of θ_round, to estimate how far replicas drifted apart (empty before round 0 closes).
    pub sketch: DriftSketch,
    /// [`crate::RoundBook::applied_digest`] at the start of `round`: which recent updates θ_round
    /// holds, so that a partner tells drift from an update still on its way.
    pub applied: u64,
    /// The fingerprint of the sender's latest sealed mark ([`crate::marks`]): θ at the start of
    /// an older round with every update it will ever take for the rounds before, which drift
    /// repair compares. None before the first mark is sealed.
    pub sealed: Option<Fingerprint>,
    /// The rounds the sender published an update for: bit `i` is round `round − 1 − i`. A peer
    /// past its last round waits until it holds each of these (or refused it for what it is).
    pub published: u64,
    /// The sender has run its last round and holds every update it knows was published before
    /// it (or refused it for what it is): peers that wait on it may leave.
    pub settled: bool,
    /// Training samples the sender computed so far (its own claim: the run's view shows it,
    /// nothing weighs by it).
    pub samples: u64,
    /// The sender's training throughput over its last round, tokens per second of compute.
    pub tokens_per_s: f32,
    /// What the sender runs: `gradswarm/<version> <desktop|browser> <device>`, at most
    /// [`MAX_AGENT_LEN`] printable ASCII bytes.
    pub agent: String,
    /// The sender trains only part of the time (a duty cycle below 1, or paused): partners do not
    /// wait for its updates, and count them when they come.
    pub throttled: bool,
    /// How many peers the sender heard from within its peer timeout, itself counted: the
    /// swarm's size as it sees it, of whose claims peers take the median to draw as many groups
    /// ([`crate::swarm_size`]). 0 from a sender that has not counted.
    pub heard: u32,
    /// Bytes the sender has published so far (its updates), as it says.
    pub bytes_sent: u64,
    /// Bytes of gossip the sender has received so far, as it says.
    pub bytes_received: u64,
    /// What the sender counted of others' updates, a few peers at a time ([`crate::credit`]).
    pub attests: Vec<Attestation>,
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
        if let Some(sealed) = &hb.sealed {
            sealed.sketch.check()?;
        }
        if !(hb.tokens_per_s.is_finite() && hb.tokens_per_s >= 0.0) {
            return Err(DecodeError::BadHeader("tokens_per_s is not a number ≥ 0"));
        }
        if hb.agent.len() > MAX_AGENT_LEN {
            return Err(DecodeError::FieldTooLong {
                field: "agent",
                len: hb.agent.len(),
                max: MAX_AGENT_LEN,
            });
        }
        if !hb.agent.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            // It ends up on terminals and pages: no control characters.
            return Err(DecodeError::BadHeader("agent is not printable ASCII"));
        }
        if hb.attests.len() > MAX_ATTESTATIONS {
            return Err(DecodeError::TooManyEntries {
                count: hb.attests.len() as u64,
                max: MAX_ATTESTATIONS,
            });
        }
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
    /// The server's standing ([`crate::standing`]): its recent rounds' sketches by round, sealed
    /// ones and the closed rounds not sealed yet, so that the joiner weighs peers as the others
    /// do from its first round instead of a window of rounds later. Taken on trust, as θ's
    /// drift is: a joiner whose weights differ drifts, and drift repair brings it back.
    pub standing: Vec<(u64, crate::standing::RoundSketches)>,
    /// The server's closed rounds not sealed yet, each with the updates that count in it as
    /// they stand, oldest first ([`crate::RoundBook::restore`]): late updates then correct the
    /// joiner's θ as they correct the server's, and the rounds seal alike. Empty when the server
    /// does not hold every update's wire form, or they would not fit; then `standing` carries
    /// those rounds sketched as they stand instead. Checked as updates off the network are
    /// ([`Update::check`], then decoded and screened by the joiner).
    pub recent: Vec<RecentRound>,
}

/// One of a server's closed rounds not sealed yet, as its state carries it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentRound {
    /// The round.
    pub round: u64,
    /// The updates that count in it.
    pub updates: Vec<super::Update>,
    /// The senders caught signing two updates for it: no version of theirs counts.
    pub equivocators: Vec<Vec<u8>>,
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
        if !state
            .optimizer
            .iter()
            .all(|(_, v)| v.iter().all(|x| x.is_finite()))
        {
            return Err(DecodeError::BadHeader(
                "state optimizer tensors are not finite",
            ));
        }
        let sketches: usize = state.standing.iter().map(|(_, s)| s.len()).sum();
        if state.standing.len() > MAX_STATE_STANDING_ROUNDS
            || sketches > MAX_STATE_SKETCHES
            || state
                .standing
                .iter()
                .flat_map(|(_, s)| s)
                .any(|(peer, sketch)| {
                    peer.len() > MAX_PEER_ID_BYTES
                        || sketch.len() != crate::standing::SKETCH_DIM
                        || !sketch.iter().all(|x| x.is_finite())
                })
        {
            return Err(DecodeError::BadHeader("state standing out of range"));
        }
        let updates: usize = state
            .recent
            .iter()
            .map(|r| r.updates.len() + r.equivocators.len())
            .sum();
        let payload: usize = state
            .recent
            .iter()
            .flat_map(|r| &r.updates)
            .map(|u| u.payload.len())
            .sum();
        if state.recent.len() > MAX_STATE_RECENT_ROUNDS
            || updates > MAX_STATE_UPDATES
            || payload > MAX_STATE_UPDATE_BYTES
        {
            return Err(DecodeError::BadHeader("state recent rounds out of range"));
        }
        for recent in &state.recent {
            for update in &recent.updates {
                super::check_ids(&update.run_id, &update.peer_id)?;
            }
            for peer in &recent.equivocators {
                super::check_ids("", peer)?;
            }
        }
        // A round near u64::MAX would overflow the round counter of whoever installed it.
        if state.round > MAX_ROUND {
            return Err(DecodeError::BadHeader("state round out of range"));
        }
        Ok(state)
    }

    /// Largest encoding of a state of a model with `model_len` parameters (θ and two moments,
    /// plus an outer momentum and names).
    pub fn max_bytes(model_len: usize) -> usize {
        let standing = MAX_STATE_SKETCHES
            * (4 * crate::standing::SKETCH_DIM + 16 + MAX_PEER_ID_BYTES)
            + 16 * MAX_STATE_STANDING_ROUNDS;
        // Each update's header: ids, rounds, the codec's descriptor.
        let recent =
            MAX_STATE_UPDATE_BYTES + MAX_STATE_UPDATES * 256 + 16 * MAX_STATE_RECENT_ROUNDS;
        4 * (4 * model_len + 64) + 64 * 1024 + standing + recent
    }
}

/// Closed rounds a state may carry the sets of (the default horizon is 10).
pub const MAX_STATE_RECENT_ROUNDS: usize = 64;

/// Updates (and equivocators) a state may carry in its recent rounds' sets, in all.
pub const MAX_STATE_UPDATES: usize = 4096;

/// Bytes a state's recent rounds' sets may take once decoded, at most ([`recent_decoded_bytes`]):
/// their payloads are compressed, and a hostile server could otherwise make a joiner decode
/// 4 096 updates of the run's largest size. A server whose sets would take more sends none.
pub const MAX_STATE_DECODED_BYTES: usize = 256 << 20;

/// The most bytes `updates` updates of `max_entries` values each take decoded (an index and a
/// value each): what [`MAX_STATE_DECODED_BYTES`] bounds.
pub fn recent_decoded_bytes(updates: usize, max_entries: usize) -> usize {
    updates.saturating_mul(max_entries).saturating_mul(8)
}

/// Payload bytes a state may carry in its recent rounds' sets, in all (a server whose sets are
/// larger sends none, and the joiner starts as it did before states carried them).
pub const MAX_STATE_UPDATE_BYTES: usize = 64 << 20;

/// Rounds of standing a state may carry (two windows of the default 16, and more).
pub const MAX_STATE_STANDING_ROUNDS: usize = 64;

/// Update sketches of standing a state may carry in all (4 KiB each: 16 MiB).
pub const MAX_STATE_SKETCHES: usize = 4096;

/// Bytes of a peer id in a state's standing at most (libp2p's are 38).
const MAX_PEER_ID_BYTES: usize = 64;

/// Most named optimizer tensors a state may carry.
pub const MAX_STATE_TENSORS: usize = 1024;

/// Bytes of state per chunk of a state transfer.
pub const STATE_CHUNK_BYTES: usize = 1 << 20;

/// Bytes of an encoded update per chunk of a pull: any update within the model's wire limits can
/// be pulled, each frame staying under [`MAX_RPC_BYTES`].
pub const UPDATE_CHUNK_BYTES: usize = STATE_CHUNK_BYTES;

/// The chunks an encoded update of `len` bytes is pulled in (at least one).
pub fn update_chunks(len: usize) -> usize {
    len.div_ceil(UPDATE_CHUNK_BYTES).max(1)
}

/// A request to a peer: state chunks over `/gradswarm/state/1`, announced updates over
/// `/gradswarm/update/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Chunk `chunk` of the encoded update with this digest (announced on the updates topic).
    Update {
        /// The run.
        run_id: String,
        /// The announced digest.
        digest: Digest,
        /// Chunk index ([`UPDATE_CHUNK_BYTES`] each).
        chunk: u32,
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
    /// The fingerprint of the peer's θ at the start of round `round`: how a joiner checks a
    /// state one peer served against what other peers hold for the same round.
    Fingerprint {
        /// The run.
        run_id: String,
        /// Hash of the model configuration.
        model_hash: ModelHash,
        /// The round.
        round: u64,
        /// The fingerprint of the round's sealed mark ([`Heartbeat::sealed`]), not of θ as it
        /// was when the round opened.
        sealed: bool,
    },
    /// The manifest of the run this node publishes or takes part in: how a joiner that knows
    /// one address learns the run.
    Manifest,
    /// Piece `index` of the data set of the run whose manifest hashes to `manifest`.
    Piece {
        /// [`super::Manifest::id`] of the run.
        manifest: super::ManifestId,
        /// Piece index ([`super::PIECE_BYTES`] each).
        index: u32,
    },
    /// An encoded update sent straight to a peer of the sender's group ([`crate::Groups`]),
    /// instead of announced on the updates topic to the whole swarm. Its sender is the peer at
    /// the other end of the connection, so it needs no signature of its own.
    Push {
        /// The run.
        run_id: String,
        /// The update's encoding ([`crate::Update::to_bytes`]), at most [`UPDATE_CHUNK_BYTES`].
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Chunk `chunk` of the peer's θ at the start of round `round` encoded for its new group
    /// ([`crate::topology::encode_replica`]): how a group averages its parameters when it forms.
    Replica {
        /// The run.
        run_id: String,
        /// Hash of the model configuration.
        model_hash: ModelHash,
        /// The round the group forms at.
        round: u64,
        /// Chunk index.
        chunk: u32,
    },
    /// The keyed sketch ([`crate::DriftSketch::keyed`]) of the replica the peer serves its new
    /// group at `round` ([`Request::Replica`], decoded), under the asker's secret `key`: how a
    /// peer checks the replica one holder served against another holder's, where a public
    /// fingerprint cannot see what a liar hides.
    Check {
        /// The run.
        run_id: String,
        /// Hash of the model configuration.
        model_hash: ModelHash,
        /// The round the group forms at.
        round: u64,
        /// The asker's key, drawn fresh for each check and told to nobody else.
        key: u64,
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
    /// One chunk of an encoded update, as pulled with [`Request::Update`].
    Update {
        /// This chunk's index.
        chunk: u32,
        /// Total chunks of the update.
        chunks: u32,
        /// The chunk's bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The request could not be served (another run, no snapshot yet, a snapshot since replaced).
    Error(String),
    /// The answer to [`Request::Fingerprint`].
    Fingerprint {
        /// The round.
        round: u64,
        /// [`params_checksum`] of θ at its start.
        checksum: u64,
        /// Its drift sketch.
        sketch: DriftSketch,
        /// [`crate::RoundBook::applied_digest`] at its start, as a heartbeat carries it.
        applied: u64,
    },
    /// The answer to [`Request::Manifest`]: an encoded [`super::Manifest`].
    Manifest {
        /// Its bytes ([`super::Manifest::from_bytes`] reads them).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The answer to [`Request::Piece`].
    Piece {
        /// The piece's index.
        index: u32,
        /// Its bytes, to check against the manifest ([`super::Manifest::check_piece`]).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    // Appended, so that the variants before keep their wire numbers.
    /// A [`Request::Push`] was taken in (it counts if it passes the receiver's checks).
    Taken,
    /// The answer to [`Request::Fingerprint`] for a round this peer has not reached yet: the
    /// latest round it holds a fingerprint of, so that a new group waits for a partner that is
    /// still getting there and not for one that stopped.
    NotReached {
        /// The latest round start it has a fingerprint of.
        latest: u64,
    },
    /// The answer to [`Request::Check`].
    Check {
        /// The round.
        round: u64,
        /// The keyed sketch of the replica served for it.
        sketch: DriftSketch,
    },
}

/// The largest round a state may be of: far beyond any run, far below overflow.
pub const MAX_ROUND: u64 = 1 << 48;

/// Largest request or response frame on the wire.
pub const MAX_RPC_BYTES: usize = STATE_CHUNK_BYTES + 4096;
