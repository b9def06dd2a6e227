//! The end of a run. Past its last round a peer stays until its replica holds every update the
//! peers it shares updates with (all under broadcast, its partners under groups) published before
//! they closed theirs, and until they hold its own: an update published just before a round's
//! deadline passed reaches some peers after they closed that round, and a peer that left at once
//! would keep it (and its own last update, which others pull from it) from the replicas that have
//! not taken it in yet.

use std::collections::BTreeSet;
use std::time::Duration;

use gradswarm_net::PeerId;
use tracing::{debug, warn};
use web_time::Instant;

use super::Peer;
use crate::error::PeerError;
use crate::report::RoundReport;

/// How often a lingering peer repeats its heartbeat, so that partners waiting on its `settled`
/// learn it even if one heartbeat is lost; spaced out like its heartbeats in a large swarm
/// (`heartbeat_spacing`): every lingering peer's heartbeat goes to the whole swarm, and 32 peers
/// repeating theirs every half second cost each peer 190 kB in its last round.
const LINGER_HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a peer stays on after the heartbeat that told the others it is settled, taking
/// events, so that the heartbeat is sent before its network stops.
const FAREWELL: Duration = Duration::from_millis(200);

impl Peer {
    /// After the last round: takes in late updates as corrections of their rounds until this
    /// replica holds every update the peers it shares updates with ([`Peer::sharing_updates`])
    /// say they published before this round (then it is *settled* and says so in its
    /// heartbeats), and each of them is settled too or has moved past this round. Bounded by
    /// twice `peer_timeout`: a peer that stops answering is no longer live after one.
    pub(super) async fn linger(&mut self) -> Result<(), PeerError> {
        let round = self.book.round();
        let began = Instant::now();
        let until = began + self.config.peer_timeout * 2;
        // Late updates taken in here count in the summary, not in a round's report.
        let mut report = RoundReport::default();
        let mut next_beat = Instant::now();
        // When the last heartbeat went out, if it told the others this peer is settled.
        let mut told: Option<Instant> = None;
        let mut finished = false;
        while !self.stopped && Instant::now() < until {
            self.settle(&mut report).await?;
            let sharing = self.sharing_updates(round);
            let settled = sharing.iter().all(|p| self.holds_all_of(p, round));
            if settled != self.settled {
                self.settled = settled;
                next_beat = Instant::now();
            }
            let done = settled && sharing.iter().all(|p| self.is_through(p, round));
            if done {
                // The others may wait for this peer's `settled` (the last peer to settle is done
                // as soon as it is, and used to leave without saying so): it tells them, and
                // leaves only once that heartbeat had time to go out, as a node shuts its
                // network down right after.
                match told {
                    Some(at) if at.elapsed() >= FAREWELL => {
                        finished = true;
                        break;
                    }
                    Some(_) => {}
                    None => {
                        self.heartbeat();
                        told = Some(Instant::now());
                        next_beat = Instant::now() + LINGER_HEARTBEAT;
                    }
                }
            }
            if self.snapshots.wanted() {
                // A joiner asking now still gets this replica, not a wait until it leaves.
                let state = self.snapshot().await?;
                self.snapshots.publish(&state);
            }
            if Instant::now() >= next_beat {
                if !done {
                    debug!("lingering: {}", self.blockers(round, &sharing));
                }
                self.heartbeat();
                told = self.settled.then(Instant::now);
                next_beat = Instant::now() + LINGER_HEARTBEAT * self.heartbeat_spacing;
            }
            let wake = match told.filter(|_| done) {
                Some(at) => next_beat.min(at + FAREWELL),
                None => next_beat,
            };
            if let Some(event) = self.next_event(wake.min(until)).await {
                self.on_event(event);
            }
        }
        debug!(
            "lingered {:.2} s past round {round}",
            began.elapsed().as_secs_f64()
        );
        if !self.stopped && !finished {
            self.summary.lingered_out = true;
            let sharing = self.sharing_updates(round);
            warn!(
                "left after lingering {:?} past round {round}: {}",
                self.config.peer_timeout * 2,
                self.blockers(round, &sharing)
            );
        }
        Ok(())
    }

    /// Who keeps a lingering peer: the peers of `sharing` whose updates it lacks, and those not
    /// settled yet.
    fn blockers(&self, round: u64, sharing: &BTreeSet<PeerId>) -> String {
        let lacking: Vec<String> = sharing
            .iter()
            .filter(|p| !self.holds_all_of(p, round))
            .map(|p| format!("{p} (rounds {:?})", self.lacking_of(p, round)))
            .collect();
        let unsettled: Vec<String> = sharing
            .iter()
            .filter(|p| !self.is_through(p, round))
            .filter_map(|p| Some(format!("{p} at round {}", self.peers.get(p)?.round)))
            .collect();
        format!("updates lacking from {lacking:?}, not settled: {unsettled:?}")
    }

    /// Whether `peer` says it is settled at `round` (holds every update it shares with others)
    /// or has moved past it.
    fn is_through(&self, peer: &PeerId, round: u64) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|s| s.round > round || (s.round == round && s.settled))
    }

    /// The live peers whose updates this peer counts, and which count its own, in the rounds
    /// before `round` a late update can still correct: all of them under broadcast; under group
    /// averaging its partners of those rounds only, as each sent its updates to its partners
    /// alone. A lingering peer waits on these alone, to hold their updates and for them to say
    /// they hold its own (`settled`).
    fn sharing_updates(&self, round: u64) -> BTreeSet<PeerId> {
        let live = self.live().copied();
        if !self.averaging.to_partners_only() {
            return live.collect();
        }
        let oldest = round.saturating_sub(self.book.horizon());
        let partners: BTreeSet<PeerId> =
            (oldest..round).flat_map(|r| self.partners_at(r)).collect();
        live.filter(|p| partners.contains(p)).collect()
    }

    /// Whether `peer` has closed the round before `round`, and this replica holds (or refused
    /// for what it is) every update `peer`'s latest heartbeat says it published for the rounds
    /// before `round` that can still be corrected.
    fn holds_all_of(&self, peer: &PeerId, round: u64) -> bool {
        self.lacking_of(peer, round).is_some_and(|r| r.is_empty())
    }

    /// The rounds before `round` (those that can still be corrected) for which `peer`'s latest
    /// heartbeat says it published an update this replica has neither taken nor refused; `None`
    /// while `peer` has not closed the round before `round`.
    fn lacking_of(&self, peer: &PeerId, round: u64) -> Option<Vec<u64>> {
        let Some(seen) = self.peers.get(peer) else {
            return Some(Vec::new());
        };
        let (at, mask) = seen.published;
        if at < round {
            return None;
        }
        let id = peer.to_bytes();
        let oldest = round.saturating_sub(self.book.horizon());
        Some(
            (0..64u64)
                .filter(|i| (mask >> i) & 1 == 1)
                .filter_map(|i| at.checked_sub(1 + i))
                .filter(|&r| r < round && r >= oldest)
                // Under group averaging, only the rounds it was in this peer's group come here.
                .filter(|&r| self.counts_update_of(peer, r))
                .filter(|&r| !self.book.decided(&id, r))
                .collect(),
        )
    }
}
