//! Group averaging in the round loop ([`gradswarm_core::Groups`]): a peer's update goes to its
//! group only, updates from outside its group do not count, and when the groups change the new
//! group first averages its members' parameters, so that what one group learned spreads through
//! the swarm as groups mix.

use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use gradswarm_core::topology::{decode_replica, encode_replica};
use gradswarm_core::{DriftSketch, EncodeError};
use gradswarm_net::{NetHandle, PeerId};
use tracing::{debug, info, warn};
use web_time::Instant;

use super::Peer;
use crate::error::PeerError;
use crate::state;

/// How often a partner that has not reached the regrouping round yet is asked again.
const MARK_POLL: Duration = Duration::from_millis(50);

/// How far (relative, on the drift sketch) a replica served to the group may lie from the
/// fingerprint its sender gave for that round: int8 moves it by well under 1 %; more is a
/// replica other than the one the sender trained on.
const REPLICA_TOLERANCE: f64 = 0.02;

impl Peer {
    /// This peer's partners for `round` (its group's other members; every contributing peer
    /// under broadcast), as [`gradswarm_core::Averaging::partners`] draws them.
    pub(super) fn partners_at(&self, round: u64) -> Vec<PeerId> {
        self.group_of(self.me, round)
    }

    /// `peer`'s partners for `round` as this peer sees the swarm. Groups are drawn from every
    /// peer heard from within `peer_timeout`, not only those this peer waits for: a partner that
    /// missed rounds stays a partner (its updates count again, which is how it makes up for
    /// them), and two peers that waited differently still form the same groups.
    pub(super) fn group_of(&self, peer: PeerId, round: u64) -> Vec<PeerId> {
        let me = self.me;
        let heard: Vec<Vec<u8>> = if self.averaging.to_partners_only() {
            self.live()
                .filter(|p| **p != peer && **p != me)
                .map(|p| p.to_bytes())
                .chain((peer != me).then(|| me.to_bytes()))
                .collect()
        } else {
            self.contributors().map(|p| p.to_bytes()).collect()
        };
        self.averaging
            .partners(round, &peer.to_bytes(), &heard)
            .into_iter()
            .filter_map(|p| PeerId::from_bytes(p).ok())
            .collect()
    }

    /// The peers whose updates for `round` this peer waits for: its partners that have not left
    /// too many rounds waiting ([`Peer::contributors`]).
    pub(super) fn awaited(&self, round: u64) -> Vec<Vec<u8>> {
        let partners = self.partners_at(round);
        self.contributors()
            .filter(|p| partners.contains(p))
            .map(|p| p.to_bytes())
            .collect()
    }

    /// Whether an update `from` sent for `round` may count here: always under broadcast; under
    /// group averaging only from a member of this peer's group for that round.
    pub(super) fn counts_update_of(&self, from: &PeerId, round: u64) -> bool {
        !self.averaging.to_partners_only() || self.partners_at(round).contains(from)
    }

    /// At a round where the groups change: θ becomes the mean of the group's replicas at the
    /// start of this round as encoded for the group (int8, [`gradswarm_core::topology::
    /// REPLICA_CODEC`], this peer's own too), summed in the order of their peer ids, so that
    /// every member that holds the same replicas computes the same θ. A partner whose replica
    /// has the same checksum as this one (it was in the same group) costs one fingerprint, not a
    /// transfer. A partner that does not serve its replica within `peer_timeout` is left out.
    pub(super) async fn average_with_group(&mut self, round: u64) -> Result<(), PeerError> {
        let partners = self.partners_at(round);
        let Some(mark) = self.marks.back().filter(|m| m.fingerprint.round == round) else {
            warn!("no replica of round {round} marked; not averaging with the new group");
            return Ok(());
        };
        if partners.is_empty() {
            return Ok(());
        }
        let (marked, checksum) = (mark.params.clone(), mark.fingerprint.checksum);
        let mine = encode_replica(&marked, round)
            .and_then(|bytes| {
                decode_replica(&bytes, marked.len())
                    .map_err(|e| EncodeError::Compress(e.to_string()))
            })
            .map_err(|e| PeerError::Sync(format!("own replica of round {round}: {e}")))?;
        let mine = std::sync::Arc::new(mine);
        // Well inside `peer_timeout`, so that the others do not take this peer for gone.
        let deadline = Instant::now() + self.config.peer_timeout / 3;
        let mut pending: FuturesUnordered<_> = partners
            .iter()
            .map(|&peer| {
                let net = self.net.clone();
                let (run_id, model_hash) = (self.config.run_id.clone(), self.model_hash);
                let n = mine.len();
                async move {
                    let theirs =
                        fetch_replica(&net, peer, &run_id, model_hash, round, n, checksum).await;
                    (peer, theirs)
                }
                .boxed()
            })
            .collect();
        // What arrived by the deadline counts; a partner that has not served by then is left
        // out. Events (heartbeats, early updates) are taken in meanwhile, and this peer goes on
        // heartbeating.
        let mut fetched = Vec::new();
        while !pending.is_empty() && !self.stopped && Instant::now() < deadline {
            let tick = futures_timer::Delay::new(MARK_POLL).fuse();
            futures::pin_mut!(tick);
            futures::select! {
                done = pending.select_next_some() => fetched.push(done),
                _ = tick => {}
            }
            while let Some(event) = self.next_event(Instant::now()).await {
                self.on_event(event);
            }
            if self
                .last_heartbeat
                .is_none_or(|t| t.elapsed() >= self.config.heartbeat_every)
            {
                self.heartbeat();
            }
        }
        for peer in partners
            .iter()
            .filter(|p| !fetched.iter().any(|(q, _)| q == *p))
        {
            warn!("{peer} served no replica of round {round} in time: left out of the average");
        }
        let mut replicas: Vec<(Vec<u8>, std::sync::Arc<Vec<f32>>)> =
            vec![(self.me.to_bytes(), mine.clone())];
        for (peer, theirs) in fetched {
            match theirs {
                Ok(Some(theta)) => replicas.push((peer.to_bytes(), std::sync::Arc::new(theta))),
                Ok(None) => replicas.push((peer.to_bytes(), mine.clone())),
                Err(e) => warn!("left {peer} out of the group's averaging at round {round}: {e}"),
            }
        }
        if replicas.len() < 2 {
            return Ok(());
        }
        replicas.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sum = vec![0.0f64; mine.len()];
        for (_, theta) in &replicas {
            for (s, v) in sum.iter_mut().zip(theta.iter()) {
                *s += f64::from(*v);
            }
        }
        let k = replicas.len() as f64;
        let mean: Vec<f32> = sum.into_iter().map(|s| (s / k) as f32).collect();
        // Updates applied since the mark (none when this runs at the round's start) carry over.
        let mut theta = self.trainer.parameters_async().await?;
        for ((t, m), was) in theta.iter_mut().zip(&mean).zip(marked.iter()) {
            *t += m - was;
        }
        self.trainer.set_parameters(&theta)?;
        info!(
            "round {round}: averaged θ with {} of {} partners",
            replicas.len() - 1,
            partners.len()
        );
        Ok(())
    }
}

/// `peer`'s replica at the start of `round` as encoded for the group: `None` when its checksum
/// is `mine` (the same replica, so the same bytes), else the decoded replica, which must lie
/// within [`REPLICA_TOLERANCE`] of the fingerprint `peer` gave. Asks again every
/// [`MARK_POLL`] while `peer` has not reached `round` yet.
async fn fetch_replica(
    net: &NetHandle,
    peer: PeerId,
    run_id: &str,
    model_hash: gradswarm_core::ModelHash,
    round: u64,
    n: usize,
    mine: u64,
) -> Result<Option<Vec<f32>>, PeerError> {
    let print = loop {
        match state::fetch_fingerprint(net, peer, run_id, model_hash, round).await {
            Ok(print) => break print,
            // It answered that it has not reached that round yet: ask again. Any other failure
            // (no answer, a refusal) leaves it out.
            Err(PeerError::Sync(reason)) if reason.contains("no fingerprint of round") => {
                debug!("{peer} has no replica of round {round} yet ({reason})");
                futures_timer::Delay::new(MARK_POLL).await;
            }
            Err(e) => return Err(e),
        }
    };
    if print.checksum == mine {
        return Ok(None);
    }
    let theta = state::fetch_replica(net, peer, run_id, model_hash, round, n).await?;
    let off = DriftSketch::of(&theta).relative_distance(&print.sketch);
    if off.is_none_or(|d| d > REPLICA_TOLERANCE) {
        return Err(PeerError::Sync(format!(
            "{peer} served a replica of round {round} {off:?} from its fingerprint's"
        )));
    }
    Ok(Some(theta))
}
