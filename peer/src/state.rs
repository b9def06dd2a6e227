//! State transfer: a peer serves snapshots of its replica in chunks; a late joiner fetches one.
//!
//! Snapshots are made lazily: a request for chunk 0 marks one as wanted, and the round loop
//! serializes its replica at the end of the next round. A joiner that asks in between is told to
//! retry, so a snapshot it receives is never older than the round the server is on.
//!
//! For pairwise averaging, a peer also serves θ at the start of each of its last few rounds
//! (its *marks*), by round: the two peers of a pair read each other's replica of one round.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) use gradswarm_core::Fingerprint;
use gradswarm_core::wire::STATE_CHUNK_BYTES;
use gradswarm_core::{DriftSketch, Marks, ModelHash, PeerState, Request, Response};
use gradswarm_net::{NetHandle, PeerId};
use tracing::debug;
use web_time::Instant;

use crate::error::PeerError;

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
    /// The marks drift repair fetches ([`gradswarm_core::Marks`]), as the round loop holds them.
    marks: Mutex<Vec<(u64, Arc<Vec<f32>>)>>,
    /// This replica at the start of the latest round a new group formed at, encoded for it.
    replica: Mutex<Option<Served>>,
    /// Fingerprints of this replica's last [`FINGERPRINTS`] round starts, kept whether or not
    /// marks are: joiners check the state another peer served against them.
    fingerprints: Mutex<VecDeque<Fingerprint>>,
    /// Fingerprints of this replica's last [`FINGERPRINTS`] sealed marks, for drift repair's polls.
    sealed: Mutex<VecDeque<Fingerprint>>,
}

/// Round starts whose fingerprints a peer serves (32 × ~140 bytes).
const FINGERPRINTS: usize = 32;

/// Keyed checks ([`Request::Check`]) a peer answers each of its new partners for one replica:
/// each costs a pass over θ on the network task, and an honest partner asks one. Only the new
/// group's members are answered, so nobody else can use up a replica's checks.
const CHECKS_PER_ASKER: u32 = 2;

/// The replica a peer serves its new group.
struct Served {
    /// The round the group forms at.
    round: u64,
    /// Its encoding, as [`Request::Replica`] serves it.
    bytes: Arc<Vec<u8>>,
    /// The same decoded, as the group reads it: what [`Request::Check`] sketches.
    values: Arc<Vec<f32>>,
    /// The new group's members, who may ask for checks, and how many each has had
    /// ([`CHECKS_PER_ASKER`]).
    checkers: Vec<(PeerId, u32)>,
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
            marks: Mutex::new(Vec::new()),
            replica: Mutex::new(None),
            fingerprints: Mutex::new(VecDeque::new()),
            sealed: Mutex::new(VecDeque::new()),
        })
    }

    /// Serves these marks, θ at the start of each round named, and forgets any other.
    pub(crate) fn marks(&self, marks: &Marks) {
        *self.marks.lock().unwrap_or_else(|p| p.into_inner()) =
            marks.iter().map(|m| (m.round, m.params.clone())).collect();
    }

    /// Serves this replica at the start of `round`, encoded for the group that forms then
    /// (`bytes`) and decoded again (`values`, what the group reads and `partners` check).
    pub(crate) fn replica(
        &self,
        round: u64,
        bytes: Arc<Vec<u8>>,
        values: Arc<Vec<f32>>,
        partners: &[PeerId],
    ) {
        *self.replica.lock().unwrap_or_else(|p| p.into_inner()) = Some(Served {
            round,
            bytes,
            values,
            checkers: partners.iter().map(|&p| (p, 0)).collect(),
        });
    }

    /// Serves the fingerprint of θ at the start of its round.
    pub(crate) fn fingerprint(&self, print: Fingerprint) {
        keep_print(&self.fingerprints, print);
    }

    /// Serves the fingerprint of a sealed mark (one sealed again after a repair replaces it).
    pub(crate) fn sealed(&self, print: Fingerprint) {
        keep_print(&self.sealed, print);
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

    /// Answers `from`'s state request (called on the network task).
    pub(crate) fn serve(&self, from: PeerId, request: &Request) -> Response {
        let (run_id, model_hash, snapshot, chunk) = match request {
            Request::State {
                run_id,
                model_hash,
                snapshot,
                chunk,
            } => (run_id, model_hash, snapshot, chunk),
            Request::Params {
                run_id,
                model_hash,
                round,
                chunk,
            } => {
                if *run_id != self.run_id || *model_hash != self.model_hash {
                    return Response::Error("another run or model".into());
                }
                return self.serve_mark(*round, *chunk);
            }
            Request::Replica {
                run_id,
                model_hash,
                round,
                chunk,
            } => {
                if *run_id != self.run_id || *model_hash != self.model_hash {
                    return Response::Error("another run or model".into());
                }
                let replica = self.replica.lock().unwrap_or_else(|p| p.into_inner());
                return match replica.as_ref() {
                    Some(s) if s.round == *round => serve_chunk(*round, &s.bytes, *chunk),
                    _ => Response::Error(format!("no replica of round {round} here")),
                };
            }
            Request::Check {
                run_id,
                model_hash,
                round,
                key,
            } => {
                if *run_id != self.run_id || *model_hash != self.model_hash {
                    return Response::Error("another run or model".into());
                }
                return self.serve_check(from, *round, *key);
            }
            Request::Fingerprint {
                run_id,
                model_hash,
                round,
                sealed,
            } => {
                if *run_id != self.run_id || *model_hash != self.model_hash {
                    return Response::Error("another run or model".into());
                }
                let prints = if *sealed {
                    &self.sealed
                } else {
                    &self.fingerprints
                };
                let prints = prints.lock().unwrap_or_else(|p| p.into_inner());
                return match prints.iter().find(|p| p.round == *round) {
                    Some(print) => Response::Fingerprint {
                        round: print.round,
                        checksum: print.checksum,
                        sketch: print.sketch.clone(),
                        applied: print.applied,
                    },
                    None => match prints.back().map(|p| p.round) {
                        Some(latest) if latest > *round => {
                            Response::Error(format!("no fingerprint of round {round} here"))
                        }
                        latest => Response::NotReached {
                            latest: latest.unwrap_or(0),
                        },
                    },
                };
            }
            Request::Update { .. }
            | Request::Push { .. }
            | Request::Manifest
            | Request::Piece { .. } => {
                return Response::Error("not a state request".into());
            }
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

impl Snapshots {
    /// The keyed sketch of the replica served for `round`, for a new partner within its
    /// [`CHECKS_PER_ASKER`].
    fn serve_check(&self, from: PeerId, round: u64, key: u64) -> Response {
        let values = {
            let mut replica = self.replica.lock().unwrap_or_else(|p| p.into_inner());
            let Some(s) = replica.as_mut().filter(|s| s.round == round) else {
                return Response::Error(format!("no replica of round {round} here"));
            };
            match s.checkers.iter_mut().find(|(p, _)| *p == from) {
                Some((_, asked)) if *asked < CHECKS_PER_ASKER => *asked += 1,
                Some(_) => return Response::Error(format!("no more checks of round {round}")),
                None => return Response::Error(format!("not a partner at round {round}")),
            }
            s.values.clone()
        };
        // Sketched outside the lock: the round loop may be serving the next replica meanwhile.
        Response::Check {
            round,
            sketch: DriftSketch::keyed(&values, key),
        }
    }

    fn serve_mark(&self, round: u64, chunk: u32) -> Response {
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let Some((_, params)) = marks.iter().find(|(r, _)| *r == round) else {
            return Response::Error(format!("no replica of round {round} here"));
        };
        let floats_per_chunk = STATE_CHUNK_BYTES / 4;
        let chunks = params.len().div_ceil(floats_per_chunk).max(1);
        let index = chunk as usize;
        if index >= chunks {
            return Response::Error("no such chunk".into());
        }
        let start = index * floats_per_chunk;
        let end = (start + floats_per_chunk).min(params.len());
        Response::StateChunk {
            snapshot: round,
            round,
            chunk,
            chunks: chunks as u32,
            total_bytes: params.len() as u64 * 4,
            bytes: params[start..end]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        }
    }
}

/// Chunk `chunk` of `bytes`, the encoding of something of `round`, as a state chunk.
fn serve_chunk(round: u64, bytes: &[u8], chunk: u32) -> Response {
    let chunks = bytes.len().div_ceil(STATE_CHUNK_BYTES).max(1);
    let index = chunk as usize;
    if index >= chunks {
        return Response::Error("no such chunk".into());
    }
    let start = index * STATE_CHUNK_BYTES;
    let end = (start + STATE_CHUNK_BYTES).min(bytes.len());
    Response::StateChunk {
        snapshot: round,
        round,
        chunk,
        chunks: chunks as u32,
        total_bytes: bytes.len() as u64,
        bytes: bytes[start..end].to_vec(),
    }
}

/// Fetches `peer`'s replica at the start of `round` encoded for its new group, and decodes it.
pub(crate) async fn fetch_replica(
    net: &NetHandle,
    peer: PeerId,
    run_id: &str,
    model_hash: ModelHash,
    round: u64,
    model_len: usize,
) -> Result<Vec<f32>, PeerError> {
    let request = |_, chunk| Request::Replica {
        run_id: run_id.to_string(),
        model_hash,
        round,
        chunk,
    };
    // zstd may grow incompressible bytes a little past their raw size.
    let raw =
        gradswarm_core::codec::raw_size_bound(&gradswarm_core::topology::REPLICA_CODEC, model_len);
    let max = raw + raw / 64 + 1024;
    let fetched = fetch_chunks(net, peer, request, max, false);
    let (got, bytes) = within(STATE_DEADLINE, peer, fetched).await?;
    if got != round {
        return Err(PeerError::Sync(format!(
            "{peer} sent its replica of round {got} for round {round}"
        )));
    }
    gradswarm_core::topology::decode_replica(&bytes, model_len)
        .map_err(|e| PeerError::Sync(format!("{peer} sent a replica that does not decode: {e}")))
}

/// Fetches `peer`'s state, chunk by chunk, retrying while it prepares a snapshot.
pub(crate) async fn fetch(
    net: &NetHandle,
    peer: PeerId,
    run_id: &str,
    model_hash: ModelHash,
    model_len: usize,
) -> Result<PeerState, PeerError> {
    let request = |snapshot, chunk| Request::State {
        run_id: run_id.to_string(),
        model_hash,
        snapshot,
        chunk,
    };
    let max = PeerState::max_bytes(model_len);
    let fetched = fetch_chunks(net, peer, request, max, true);
    let (_, bytes) = within(STATE_DEADLINE, peer, fetched).await?;
    PeerState::from_bytes(&bytes, model_len)
        .map_err(|e| PeerError::Sync(format!("state from {peer}: {e}")))
}

/// How long a joiner waits for a peer's fingerprint: a peer that does not answer by then does
/// not vote, and holds nobody up.
pub(crate) const FINGERPRINT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps `print` as the newest of `prints` (replacing any of its round or later), and at most
/// [`FINGERPRINTS`] of them.
fn keep_print(prints: &Mutex<VecDeque<Fingerprint>>, print: Fingerprint) {
    let mut prints = prints.lock().unwrap_or_else(|p| p.into_inner());
    prints.retain(|p| p.round < print.round);
    prints.push_back(print);
    while prints.len() > FINGERPRINTS {
        prints.pop_front();
    }
}

/// `peer`'s answer to one small `request`: one try, at most [`FINGERPRINT_TIMEOUT`].
async fn ask_once(net: &NetHandle, peer: PeerId, request: Request) -> Result<Response, PeerError> {
    let request = net.request(peer, request);
    within(FINGERPRINT_TIMEOUT, peer, async {
        request.await.map_err(PeerError::from)
    })
    .await
}

/// Asks `peer` for the fingerprint of its θ at the start of `round`, as it was then or, if
/// `sealed`, of its sealed mark of that round; one request, no retry, at most
/// [`FINGERPRINT_TIMEOUT`].
pub(crate) async fn fetch_fingerprint(
    net: &NetHandle,
    peer: PeerId,
    run_id: &str,
    model_hash: ModelHash,
    round: u64,
    sealed: bool,
) -> Result<Fingerprint, PeerError> {
    let request = Request::Fingerprint {
        run_id: run_id.to_string(),
        model_hash,
        round,
        sealed,
    };
    match ask_once(net, peer, request).await? {
        Response::Fingerprint {
            round: got,
            checksum,
            sketch,
            applied,
        } if got == round && sketch.check().is_ok() => Ok(Fingerprint {
            round,
            checksum,
            sketch,
            applied,
        }),
        Response::NotReached { latest } if latest < round => Err(PeerError::NotReached { latest }),
        Response::Error(e) => Err(PeerError::Sync(format!("{peer}: {e}"))),
        _ => Err(PeerError::Sync(format!("{peer} sent another fingerprint"))),
    }
}

/// Asks `peer` for the keyed sketch ([`DriftSketch::keyed`]) of the replica it serves for
/// `round`, under `key`; one request, no retry, at most [`FINGERPRINT_TIMEOUT`].
pub(crate) async fn fetch_check(
    net: &NetHandle,
    peer: PeerId,
    run_id: &str,
    model_hash: ModelHash,
    round: u64,
    key: u64,
) -> Result<DriftSketch, PeerError> {
    let request = Request::Check {
        run_id: run_id.to_string(),
        model_hash,
        round,
        key,
    };
    match ask_once(net, peer, request).await? {
        Response::Check { round: got, sketch }
            if got == round && !sketch.is_empty() && sketch.check_keyed().is_ok() =>
        {
            Ok(sketch)
        }
        Response::Error(e) => Err(PeerError::Sync(format!("{peer}: {e}"))),
        _ => Err(PeerError::Sync(format!("{peer} sent another check"))),
    }
}

/// Fetches `peer`'s θ at the start of `round` (one of its marks), for pairwise averaging.
pub(crate) async fn fetch_params(
    net: &NetHandle,
    peer: PeerId,
    run_id: &str,
    model_hash: ModelHash,
    round: u64,
    model_len: usize,
) -> Result<Vec<f32>, PeerError> {
    let request = |_, chunk| Request::Params {
        run_id: run_id.to_string(),
        model_hash,
        round,
        chunk,
    };
    let fetched = fetch_chunks(net, peer, request, model_len * 4, false);
    let (got, bytes) = within(STATE_DEADLINE, peer, fetched).await?;
    if got != round || bytes.len() != model_len * 4 {
        return Err(PeerError::Sync(format!(
            "{peer} sent θ of round {got} ({} bytes) for round {round}",
            bytes.len()
        )));
    }
    let params: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if params.iter().any(|v| !v.is_finite()) {
        return Err(PeerError::Sync(format!("{peer} sent a non-finite θ")));
    }
    Ok(params)
}

/// How long one peer may take to serve a whole state or θ: past it the joiner (or the
/// reconciling peer) moves on. Before, a peer that never answered held a joiner for up to 100
/// attempts of the protocol's 30 s timeout each.
const STATE_DEADLINE: Duration = Duration::from_secs(60);

/// How long one chunk may take to come: a peer silent for longer is given up on, so that a
/// joiner facing a peer that never answers moves on in seconds (it held the joiner for the
/// protocol's 30 s timeout, twice, before). A 1 MiB chunk takes about a second at 10 Mbit/s.
const CHUNK_DEADLINE: Duration = Duration::from_secs(10);

/// `fetch`, or an error once `deadline` has passed.
async fn within<T>(
    deadline: Duration,
    peer: PeerId,
    fetch: impl std::future::Future<Output = Result<T, PeerError>>,
) -> Result<T, PeerError> {
    let timeout = futures_timer::Delay::new(deadline);
    futures::pin_mut!(fetch);
    match futures::future::select(fetch, timeout).await {
        futures::future::Either::Left((result, _)) => result,
        futures::future::Either::Right(_) => Err(PeerError::Unanswered {
            peer: peer.to_string(),
            within: deadline,
        }),
    }
}

/// Fetches a chunked answer from `peer`: `request(snapshot, chunk)` asks for one chunk; at most
/// `max` bytes in all. Error answers are retried (a snapshot being prepared) when `retry`.
/// Returns the answer's round and its bytes.
async fn fetch_chunks(
    net: &NetHandle,
    peer: PeerId,
    request: impl Fn(u64, u32) -> Request,
    max: usize,
    retry: bool,
) -> Result<(u64, Vec<u8>), PeerError> {
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
            let asked = within(CHUNK_DEADLINE, peer, async {
                net.request(peer, request(snapshot, chunk))
                    .await
                    .map_err(PeerError::from)
            });
            let response = match asked.await {
                Ok(r) => r,
                Err(PeerError::Net(gradswarm_net::NetError::Stopped)) => {
                    return Err(gradswarm_net::NetError::Stopped.into());
                }
                // Silent past the deadline: the next peer is asked.
                Err(e @ (PeerError::Sync(_) | PeerError::Unanswered { .. })) => return Err(e),
                Err(e) => {
                    // Not dialable yet: the connection may come up; try again shortly.
                    debug!("state request to {peer}: {e}");
                    futures_timer::Delay::new(Duration::from_millis(500)).await;
                    continue 'again;
                }
            };
            match response {
                Response::StateChunk {
                    snapshot: id,
                    round,
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
                        return Ok((round, buf));
                    }
                }
                Response::Update { .. }
                | Response::Taken
                | Response::NotReached { .. }
                | Response::Fingerprint { .. }
                | Response::Check { .. }
                | Response::Manifest { .. }
                | Response::Piece { .. } => {
                    return Err(PeerError::Sync(format!(
                        "{peer} answered a state request with something else"
                    )));
                }
                // Over budget: asking this peer again soon only deepens the debt; the joiner
                // asks the next peer instead.
                Response::Error(reason) if !retry || reason == gradswarm_net::OVER_BUDGET => {
                    return Err(PeerError::Sync(format!("{peer}: {reason}")));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params_request(run_id: &str, round: u64, chunk: u32) -> Request {
        Request::Params {
            run_id: run_id.into(),
            model_hash: [7; 32],
            round,
            chunk,
        }
    }

    /// A new partner gets its keyed checks of the replica, [`CHECKS_PER_ASKER`] of them;
    /// anyone else gets none, so nobody outside the group can use them up.
    #[test]
    fn checks_are_answered_to_new_partners_only_and_a_few_each() {
        let snapshots = Snapshots::new("run", [7; 32]);
        let values: Vec<f32> = (0..1000).map(|j| (j as f32).sin()).collect();
        let (partner, stranger) = (PeerId::random(), PeerId::random());
        snapshots.replica(5, Arc::new(vec![1]), Arc::new(values.clone()), &[partner]);
        let ask = |round, key| Request::Check {
            run_id: "run".into(),
            model_hash: [7; 32],
            round,
            key,
        };
        for key in 0..CHECKS_PER_ASKER as u64 {
            match snapshots.serve(partner, &ask(5, key)) {
                Response::Check { round: 5, sketch } => {
                    assert_eq!(sketch, DriftSketch::keyed(&values, key));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            snapshots.serve(partner, &ask(5, 9)),
            Response::Error(_)
        ));
        assert!(matches!(
            snapshots.serve(stranger, &ask(5, 0)),
            Response::Error(_)
        ));
        assert!(matches!(
            snapshots.serve(partner, &ask(4, 0)),
            Response::Error(_)
        ));
    }

    #[test]
    fn marks_are_served_by_round_in_chunks_and_forgotten_in_order() {
        let snapshots = Snapshots::new("run", [7; 32]);
        // Two and a bit chunks' worth of floats.
        let n = STATE_CHUNK_BYTES / 2 + 3;
        let mut marks = Marks::new(gradswarm_core::OuterConfig::default(), 1, 3);
        for round in 0..4u64 {
            let theta: Vec<f32> = (0..n).map(|j| (j as f32) + round as f32 * 0.5).collect();
            marks.mark(round, theta, &[], 0);
            snapshots.marks(&marks);
        }
        let mut bytes = Vec::new();
        for chunk in 0..3 {
            match snapshots.serve(PeerId::random(), &params_request("run", 2, chunk)) {
                Response::StateChunk {
                    round,
                    chunks,
                    total_bytes,
                    bytes: b,
                    ..
                } => {
                    assert_eq!((round, chunks, total_bytes), (2, 3, n as u64 * 4));
                    bytes.extend_from_slice(&b);
                }
                other => panic!("chunk {chunk}: {other:?}"),
            }
        }
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got.len(), n);
        assert!(got.iter().enumerate().all(|(j, &v)| v == j as f32 + 1.0));
        // Round 0 was forgotten (three kept), round 9 never was; another run is refused.
        for refused in [
            params_request("run", 0, 0),
            params_request("run", 9, 0),
            params_request("run", 2, 3),
            params_request("other", 2, 0),
        ] {
            assert!(
                matches!(
                    snapshots.serve(PeerId::random(), &refused),
                    Response::Error(_)
                ),
                "{refused:?} was served"
            );
        }
    }

    #[test]
    fn a_fingerprint_not_reached_yet_is_told_apart_from_one_forgotten() {
        let snapshots = Snapshots::new("run", [7; 32]);
        let ask = |round| Request::Fingerprint {
            run_id: "run".into(),
            model_hash: [7; 32],
            round,
            sealed: false,
        };
        // Nothing marked yet: every round is still to come.
        assert!(matches!(
            snapshots.serve(PeerId::random(), &ask(5)),
            Response::NotReached { latest: 0 }
        ));
        for round in 0..FINGERPRINTS as u64 + 8 {
            snapshots.fingerprint(Fingerprint {
                round,
                checksum: round,
                sketch: DriftSketch::of(&[round as f32, 1.0]),
                applied: 0,
            });
        }
        let latest = FINGERPRINTS as u64 + 7;
        assert!(matches!(
            snapshots.serve(PeerId::random(), &ask(latest)),
            Response::Fingerprint { round, checksum, .. } if round == latest && checksum == latest
        ));
        // A round ahead says where this peer is, so that a new group waits for it while it
        // moves; one it has forgotten (past the 32 kept) is refused as any other.
        assert!(matches!(
            snapshots.serve(PeerId::random(), &ask(latest + 3)),
            Response::NotReached { latest: l } if l == latest
        ));
        assert!(matches!(
            snapshots.serve(PeerId::random(), &ask(2)),
            Response::Error(_)
        ));
    }
}
