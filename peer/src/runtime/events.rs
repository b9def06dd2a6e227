//! The network's events as the round loop sees them: updates offered to the round book,
//! heartbeats, peers joining and leaving, and which peers count as live.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use gradswarm_core::DropReason;
use gradswarm_core::drift::Verdict;
use gradswarm_net::{NetEvent, PeerId};
use tracing::{debug, info, warn};
use web_time::Instant;

use super::{MISSED_LIMIT, Peer, Seen};
use crate::error::PeerError;
use crate::state::Fingerprint;

/// How long a peer that left is not brought back by gossip still in flight from it.
const GONE_GRACE: Duration = Duration::from_secs(5);

/// Arrival times kept for reports at most (a flood beyond it marks the round's times as
/// incomplete, see `RoundReport::awaited_in`).
const MAX_ARRIVALS: usize = 4096;

/// Wall-clock now in Unix milliseconds (the harness compares it across peer processes of one
/// machine); 0 where the clock is before 1970.
pub(super) fn unix_ms() -> f64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The output of the future in `slot`, or never when there is none (a branch of `select!` that
/// is idle until a transfer or a poll is under way).
async fn in_flight<F: std::future::Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => futures::future::pending().await,
    }
}

impl Peer {
    /// The peers heard from within [`Peer::peer_timeout`]: whose updates a round waits for.
    pub(super) fn live(&self) -> impl Iterator<Item = &PeerId> {
        let timeout = self.peer_timeout();
        self.peers
            .iter()
            .filter(move |(_, s)| s.last.elapsed() < timeout)
            .map(|(p, _)| p)
    }

    /// Whether `peer` may be asked for its state or its fingerprint: under broadcast, a peer this
    /// one is connected to (a full mesh; one heard of only through others' gossip may not be
    /// dialable yet); under groups, where a peer connects to a few, any peer: it is dialled to
    /// be asked.
    pub(super) fn askable(&self, peer: &PeerId) -> bool {
        self.averaging.to_partners_only() || self.joined.contains(peer)
    }

    /// The live peers this peer waits for and shares the data with: those that have not left
    /// [`MISSED_LIMIT`] more rounds waiting for an update that never came than it sent updates,
    /// and do not say they train only part of the time (`throttled`).
    pub(super) fn contributors(&self) -> impl Iterator<Item = &PeerId> {
        let timeout = self.peer_timeout();
        self.peers
            .iter()
            .filter(move |(_, s)| {
                s.last.elapsed() < timeout && s.missed < MISSED_LIMIT && !s.throttled
            })
            .map(|(p, _)| p)
    }

    /// After a round ran to its deadline: every partner whose update for it is missing missed it.
    /// Returns their ids.
    pub(super) fn count_missed(&mut self, partners: &[&[u8]]) -> Vec<String> {
        let mut missing = Vec::new();
        let arrived: Vec<Vec<u8>> = self.book.arrived().map(<[u8]>::to_vec).collect();
        for p in partners {
            if arrived.iter().any(|a| a == p) {
                continue;
            }
            let Ok(peer) = PeerId::from_bytes(p) else {
                continue;
            };
            // Every partner whose update is missing is named (the harness measures what the
            // wait cost by them); only those still heard from are counted as missing it.
            missing.push(peer.to_base58());
            if let Some(seen) = self.peers.get_mut(&peer) {
                seen.missed += 1;
                if seen.missed == MISSED_LIMIT {
                    info!(
                        "{peer} sent no usable update for {MISSED_LIMIT} rounds: not waiting for it"
                    );
                }
            }
        }
        missing
    }

    /// Records that `peer` was heard from, at `round` when the message names one.
    pub(super) fn touch(&mut self, peer: PeerId, round: Option<u64>) {
        if self
            .gone
            .get(&peer)
            .is_some_and(|t| t.elapsed() < GONE_GRACE)
        {
            return;
        }
        let seen = self.peers.entry(peer).or_insert(Seen {
            last: Instant::now(),
            round: 0,
            published: (0, 0),
            settled: false,
            throttled: false,
            heard: 0,
            sequence: 0,
            missed: 0,
        });
        seen.last = Instant::now();
        if let Some(r) = round {
            seen.round = seen.round.max(r);
        }
    }

    /// The next network event before `until`; None on timeout, stop, or when a pairwise
    /// averaging's state transfer completed (it is applied here, between two events).
    pub(super) async fn next_event(&mut self, until: Instant) -> Option<NetEvent> {
        enum Wake {
            Net(Option<NetEvent>),
            Timeout,
            Stop,
            Reconciled(PeerId, u64, Verdict, Result<(Vec<f32>, f64), PeerError>),
            Polled(u64, Vec<(PeerId, Fingerprint)>),
        }
        let remaining = until.saturating_duration_since(Instant::now());
        let mut timeout = futures_timer::Delay::new(remaining).fuse();
        let events = &mut self.events;
        let stop = &mut self.stop;
        let wake = {
            let reconciled = in_flight(&mut self.reconciling).fuse();
            futures::pin_mut!(reconciled);
            let polled = in_flight(&mut self.polling).fuse();
            futures::pin_mut!(polled);
            futures::select! {
                event = events.next() => Wake::Net(event),
                _ = timeout => Wake::Timeout,
                _ = stop.next() => Wake::Stop,
                (peer, round, verdict, theirs) = reconciled => Wake::Reconciled(peer, round, verdict, theirs),
                (round, answers) = polled => Wake::Polled(round, answers),
            }
        };
        match wake {
            Wake::Net(event) => {
                if event.is_none() {
                    // The network task ended: nothing more will arrive.
                    self.stopped = true;
                }
                event
            }
            Wake::Timeout => None,
            Wake::Stop => {
                self.stopped = true;
                None
            }
            Wake::Polled(round, answers) => {
                self.take_poll(round, answers);
                None
            }
            Wake::Reconciled(peer, round, verdict, theirs) => {
                self.reconciling = None;
                if let Err(e) = self.finish_reconcile(peer, round, verdict, theirs).await {
                    warn!("pairwise averaging with {peer} not applied: {e}");
                    // Its vote may predate a repair of its own, which moved the mark it serves:
                    // forgotten, so that its next fingerprint counts instead.
                    if let Some(votes) = self.votes.get_mut(&round) {
                        votes.remove(&peer);
                    }
                }
                None
            }
        }
    }

    /// Takes in one network event: updates to the round book, heartbeats to liveness and drift.
    pub(super) fn on_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Update {
                from,
                update,
                decoded,
                bytes,
            } => {
                self.bytes_down += bytes as u64;
                self.touch(from, Some(update.round));
                if !self.counts_update_of(&from, update.round) {
                    debug!(
                        "update from {from} for round {}: not in this peer's group",
                        update.round
                    );
                    self.record_drop(DropReason::NotPartner);
                    // Decided: nobody waits for it (see `linger`).
                    self.book
                        .refuse(&update.peer_id, update.round, update.content_digest());
                    return;
                }
                // Stamped before it is judged: a refused update ends a partner's wait as well.
                if update.round >= self.book.round() {
                    if self.arrivals.len() < MAX_ARRIVALS {
                        self.arrivals.push((update.round, from, unix_ms()));
                    } else {
                        self.arrivals_overflowed = true;
                    }
                }
                if let Err(reason) = self.validator.validate(decoded.len, &decoded.values) {
                    debug!("update from {from} dropped: {reason}");
                    self.record_drop(reason);
                    // Refused: nobody waits for it any longer (see `linger`).
                    self.book
                        .refuse(&update.peer_id, update.round, update.content_digest());
                    return;
                }
                self.edge.received(&update);
                match self.book.offer(
                    &update.peer_id,
                    update.round,
                    update.base_round,
                    update.samples,
                    update.content_digest(),
                    decoded,
                ) {
                    Ok(()) => {
                        self.recent
                            .insert((update.round, update.peer_id.clone()), update);
                        // Each update that counts, late or not, makes up for one round missed: a
                        // slow peer whose updates arrive after the deadline is still waited for;
                        // one that sends nothing usable is not.
                        if let Some(seen) = self.peers.get_mut(&from) {
                            seen.missed = seen.missed.saturating_sub(1);
                        }
                    }
                    Err(reason) => {
                        debug!(
                            "update from {from} for round {} dropped: {reason}",
                            update.round
                        );
                        self.record_drop(reason);
                    }
                }
            }
            NetEvent::Heartbeat {
                from,
                heartbeat,
                sequence,
            } => {
                self.bytes_down += heartbeat.to_bytes().len() as u64;
                self.touch(from, Some(heartbeat.round));
                // Only a newer heartbeat than the last taken says where its peer is now: one
                // sent before it may come later by another path. A peer's last two (its last
                // round's, then its lingering `settled`) came the other way round in about one
                // run of the groups test in ten, and the others waited for it to time out.
                if let Some(seen) = self.peers.get_mut(&from)
                    && heartbeat.round >= seen.published.0
                    && sequence >= seen.sequence
                {
                    seen.sequence = sequence;
                    seen.published = (heartbeat.round, heartbeat.published);
                    seen.settled = heartbeat.settled;
                    seen.throttled = heartbeat.throttled;
                    seen.heard = heartbeat.heard;
                }
                self.take_attestations(&heartbeat);
                self.measure_divergence(from, &heartbeat);
                self.check_drift(from, &heartbeat);
            }
            NetEvent::Dropped { from, reason } => {
                debug!("message from {from} rejected: {reason}");
                self.record_drop(reason);
            }
            NetEvent::PeerJoined(peer) => {
                // Joined the topic: a peer, or a bootstrap node that only forwards. Only heartbeats
                // and updates make a peer one whose update a round waits for.
                self.gone.remove(&peer);
                self.joined.insert(peer);
            }
            NetEvent::PeerLeft(peer)
                if self.averaging.to_partners_only() && !self.ran_to_end(&peer) =>
            {
                // Under groups a peer keeps a few connections (`NetConfig::full_mesh`) and closes
                // idle ones, a partner's too when a round outlasts the driver's keep (or when
                // the partner closed it): only silence says a peer left (`live`), so that every
                // peer keeps drawing the groups from the same set, and a partner that died is
                // waited for until it missed `MISSED_LIMIT` rounds. At the run's end, once no
                // group is drawn any more, a finished peer's closed connection is its departure
                // (`ran_to_end`).
                debug!("no connection to {peer} now");
                self.joined.remove(&peer);
            }
            NetEvent::PeerLeft(peer) => {
                info!("peer {peer} left");
                self.peers.remove(&peer);
                self.joined.remove(&peer);
                for votes in self.votes.values_mut() {
                    votes.remove(&peer);
                }
                self.reconcile_after.remove(&peer);
                self.gone.insert(peer, Instant::now());
            }
            NetEvent::Listening(addr) => info!("listening on {addr}"),
        }
    }

    /// Whether a connection to `peer` that closed is its departure at the run's end rather than
    /// an idle connection closed: this peer lingers past the last round itself (every group it
    /// still counts by is committed, so the live set no longer draws any), and `peer` finished
    /// too (its heartbeat says it is past the last round, or this peer holds its update for
    /// it). Lingering peers wait for each other's late updates and `settled`; one that left by
    /// then has nothing more to send, and was waited for until it timed out (30 s).
    fn ran_to_end(&self, peer: &PeerId) -> bool {
        let Some(last) = self.config.rounds.filter(|&last| self.book.round() >= last) else {
            return false;
        };
        self.peers.get(peer).is_some_and(|s| {
            s.round >= last
                || last
                    .checked_sub(1)
                    .is_some_and(|r| self.book.decided(&peer.to_bytes(), r))
        })
    }

    /// Forgets peers not heard from for four `peer_timeout`s, and departures older than
    /// [`GONE_GRACE`]: identities are free, and a churn of them would otherwise grow both maps
    /// for the life of the process.
    pub(super) fn forget_the_long_gone(&mut self) {
        let timeout = self.peer_timeout() * 4;
        self.peers.retain(|_, s| s.last.elapsed() < timeout);
        self.gone.retain(|_, t| t.elapsed() < GONE_GRACE);
        let peers = &self.peers;
        self.reconcile_after.retain(|p, _| peers.contains_key(p));
    }

    /// Counts a dropped update in the run's total and in the next round report.
    pub(super) fn record_drop(&mut self, reason: DropReason) {
        self.drops.record(reason);
        self.drops_pending.record(reason);
    }
}
