//! Fetching a run over the network: its manifest from one address, then the pieces of its data,
//! each checked against the manifest's hash. Executor-agnostic (the desktop node and a browser
//! tab share it); where the pieces go is the caller's.

use gradswarm_core::{Manifest, Request, Response};
use libp2p::PeerId;
use tracing::warn;

use crate::{NetError, NetHandle};

/// How many times one piece is asked for (of the servers in turn) before the fetch gives up:
/// a corrupted or refused piece is asked again of the next server.
pub const MAX_PIECE_TRIES: usize = 6;

/// The pause before asking again after a request failed (rather than was answered badly).
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// What a fetch of pieces met on its way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Pieces received and kept.
    pub pieces: usize,
    /// Pieces that arrived but did not match their hash (or size), and were asked again.
    pub corrupt: usize,
    /// Requests that failed or were refused, and were asked again.
    pub failed: usize,
}

/// Asks `server` for the manifest of the run it publishes or takes part in: a transport failure
/// is [`NetError::Request`] (it may be reachable later), anything it answered but a good manifest
/// [`NetError::Refused`].
pub async fn fetch_manifest(net: &NetHandle, server: PeerId) -> Result<Manifest, NetError> {
    let refused = |reason: String| NetError::Refused {
        peer: server,
        reason,
    };
    match net.request(server, Request::Manifest).await? {
        Response::Manifest { bytes } => {
            Manifest::from_bytes(&bytes).map_err(|e| refused(format!("a bad manifest: {e}")))
        }
        Response::Error(e) => Err(refused(e)),
        _ => Err(refused(
            "answered with something else than a manifest".into(),
        )),
    }
}

/// Fetches the pieces `wanted` of `manifest`'s data from `servers`, each checked against its
/// hash before `keep` gets it; a piece that fails, is refused or does not match is asked again of
/// the next server, up to [`MAX_PIECE_TRIES`] times. `keep` returning an error (a full disk)
/// stops the fetch.
pub async fn fetch_pieces(
    net: &NetHandle,
    servers: &[PeerId],
    manifest: &Manifest,
    wanted: &[u32],
    mut keep: impl FnMut(u32, &[u8]) -> Result<(), String>,
) -> Result<FetchStats, NetError> {
    let Some(&first) = servers.first() else {
        return Err(NetError::Transport(
            "no server to fetch the run from".into(),
        ));
    };
    let id = manifest.id();
    let mut stats = FetchStats::default();
    let mut turn = 0usize;
    for &index in wanted {
        let mut last = String::new();
        let mut done = false;
        for _ in 0..MAX_PIECE_TRIES {
            let server = servers[turn % servers.len()];
            let request = Request::Piece {
                manifest: id,
                index,
            };
            match net.request(server, request).await {
                Ok(Response::Piece { index: got, bytes }) if got == index => {
                    match manifest.check_piece(index, &bytes) {
                        Ok(()) => {
                            keep(index, &bytes).map_err(|e| NetError::Request {
                                peer: server,
                                reason: format!("piece {index} could not be kept: {e}"),
                            })?;
                            stats.pieces += 1;
                            done = true;
                            break;
                        }
                        Err(e) => {
                            warn!("{server}: {e}; asking again");
                            stats.corrupt += 1;
                            last = e.to_string();
                        }
                    }
                }
                Ok(Response::Error(e)) => {
                    stats.failed += 1;
                    last = e;
                }
                Ok(_) => {
                    stats.failed += 1;
                    last = format!("answered piece {index} with something else");
                }
                Err(NetError::Stopped) => return Err(NetError::Stopped),
                Err(e) => {
                    // Not connected yet, or the server went away: give the connection a moment.
                    stats.failed += 1;
                    last = e.to_string();
                    futures_timer::Delay::new(RETRY_PAUSE).await;
                }
            }
            turn += 1;
        }
        if !done {
            return Err(NetError::Request {
                peer: first,
                reason: format!("piece {index}: {MAX_PIECE_TRIES} tries failed, the last: {last}"),
            });
        }
    }
    Ok(stats)
}
