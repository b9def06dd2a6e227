//! State transfer: a peer serves snapshots of its replica in chunks; a late joiner fetches one.
//!
//! Snapshots are made lazily: a request for chunk 0 marks one as wanted, and the round loop
//! serializes its replica at the end of the next round. A joiner that asks in between is told to
//! retry, so a snapshot it receives is never older than the round the server is on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gradswarm_core::wire::STATE_CHUNK_BYTES;
use gradswarm_core::{ModelHash, PeerState, Request, Response};
use gradswarm_net::{NetHandle, PeerId};
use tracing::debug;
use web_time::Instant;

use crate::runtime::PeerError;

/// Rounds a served snapshot may lag the server's own round.
const MAX_SNAPSHOT_AGE: u64 = 2;

/// How long a snapshot made for a joiner is served whatever its round: rounds shorter than a
/// request's retry would otherwise make every snapshot too old by the time the joiner asks again.
const SNAPSHOT_TTL: Duration = Duration::from_secs(3);

/// How long a joiner waits before asking again for a snapshot being prepared.
const RETRY_DELAY: Duration = Duration::from_millis(100);

struct Snapshot {
    id: u64,
    round: u64,
    made: Instant,
    bytes: Vec<u8>,
}

/// The serving side, shared between the round loop and the network task.
pub(crate) struct Snapshots {
    run_id: String,
    model_hash: ModelHash,
    wanted: AtomicBool,
    round: AtomicU64,
    next_id: AtomicU64,
    current: Mutex<Option<Arc<Snapshot>>>,
}

impl Snapshots {
    pub(crate) fn new(run_id: &str, model_hash: ModelHash) -> Arc<Self> {
        Arc::new(Self {
            run_id: run_id.to_string(),
            model_hash,
            wanted: AtomicBool::new(false),
            round: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            current: Mutex::new(None),
        })
    }

    /// Whether a joiner is waiting for a fresh snapshot.
    pub(crate) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// The round loop moved to `round`.
    pub(crate) fn set_round(&self, round: u64) {
        self.round.store(round, Ordering::Release);
    }

    /// Installs a snapshot of `state`.
    pub(crate) fn publish(&self, state: &PeerState) {
        let snapshot = Arc::new(Snapshot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            round: state.round,
            made: Instant::now(),
            bytes: state.to_bytes(),
        });
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
        self.wanted.store(false, Ordering::Release);
    }

    /// Answers a state request (called on the network task).
    pub(crate) fn serve(&self, request: &Request) -> Response {
        let Request::State {
            run_id,
            model_hash,
            snapshot,
            chunk,
        } = request
        else {
            return Response::Error("not a state request".into());
        };
        if *run_id != self.run_id || *model_hash != self.model_hash {
            return Response::Error("another run or model".into());
        }
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A snapshot a few rounds old, or made moments ago, is fine (the joiner catches up from
        // the updates it buffered meanwhile); an older one is replaced first. Demanding the very
        // latest round would race rounds shorter than a request's round trip forever.
        let now = self.round.load(Ordering::Acquire);
        let fresh = current.as_ref().filter(|s| {
            *snapshot != 0 || s.round + MAX_SNAPSHOT_AGE >= now || s.made.elapsed() < SNAPSHOT_TTL
        });
        let Some(s) = fresh else {
            self.wanted.store(true, Ordering::Release);
            return Response::Error("preparing a snapshot; retry".into());
        };
        if *snapshot != 0 && *snapshot != s.id {
            return Response::Error("snapshot replaced; start again".into());
        }
        let chunks = s.bytes.len().div_ceil(STATE_CHUNK_BYTES).max(1);
        let index = *chunk as usize;
        if index >= chunks {
            return Response::Error("no such chunk".into());
        }
        let start = index * STATE_CHUNK_BYTES;
        let end = (start + STATE_CHUNK_BYTES).min(s.bytes.len());
        Response::StateChunk {
            snapshot: s.id,
            round: s.round,
            chunk: *chunk,
            chunks: chunks as u32,
            total_bytes: s.bytes.len() as u64,
            bytes: s.bytes[start..end].to_vec(),
        }
    }
}

/// Fetches `peer`'s state, chunk by chunk, retrying while it prepares a snapshot.
pub(crate) async fn fetch(
    net: &NetHandle,
    peer: PeerId,
    run_id: &str,
    model_hash: ModelHash,
    model_len: usize,
) -> Result<PeerState, PeerError> {
    let max = PeerState::max_bytes(model_len);
    let mut attempts = 0;
    'again: loop {
        attempts += 1;
        if attempts > 100 {
            return Err(PeerError::Sync(format!("{peer} did not serve its state")));
        }
        let mut snapshot = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = 0u32;
        loop {
            let request = Request::State {
                run_id: run_id.to_string(),
                model_hash,
                snapshot,
                chunk,
            };
            let response = match net.request(peer, request).await {
                Ok(r) => r,
                Err(gradswarm_net::NetError::Stopped) => {
                    return Err(gradswarm_net::NetError::Stopped.into());
                }
                Err(e) => {
                    // Not dialable yet, a timeout: the connection may come up; try again shortly.
                    debug!("state request to {peer}: {e}");
                    futures_timer::Delay::new(Duration::from_millis(500)).await;
                    continue 'again;
                }
            };
            match response {
                Response::StateChunk {
                    snapshot: id,
                    chunk: got,
                    chunks,
                    total_bytes,
                    bytes,
                    ..
                } => {
                    let total = usize::try_from(total_bytes).unwrap_or(usize::MAX);
                    let expected_chunks = total.div_ceil(STATE_CHUNK_BYTES).max(1);
                    if got != chunk
                        || total > max
                        || chunks as usize != expected_chunks
                        || buf.len() + bytes.len() > total
                        || (chunk > 0 && id != snapshot)
                    {
                        return Err(PeerError::Sync(format!(
                            "{peer} sent an inconsistent chunk"
                        )));
                    }
                    if chunk == 0 {
                        snapshot = id;
                        buf.reserve_exact(total);
                    }
                    buf.extend_from_slice(&bytes);
                    chunk += 1;
                    if chunk == chunks {
                        if buf.len() != total {
                            return Err(PeerError::Sync(format!("{peer} sent a short state")));
                        }
                        return PeerState::from_bytes(&buf, model_len)
                            .map_err(|e| PeerError::Sync(format!("state from {peer}: {e}")));
                    }
                }
                Response::Update(_) => {
                    return Err(PeerError::Sync(format!(
                        "{peer} answered a state request with an update"
                    )));
                }
                Response::Error(reason) => {
                    debug!("state from {peer}: {reason}");
                    futures_timer::Delay::new(RETRY_DELAY).await;
                    continue 'again;
                }
            }
        }
    }
}
