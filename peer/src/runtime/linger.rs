//! The end of a run. Past its last round a peer stays until its replica holds every update the
//! others published before they closed theirs, and until they hold its own: an update published
//! just before a round's deadline passed reaches some peers after they closed that round, and a
//! peer that left at once would keep it (and its own last update, which others pull from it) from
//! the replicas that have not taken it in yet.

use std::time::Duration;

use gradswarm_net::PeerId;
use web_time::Instant;

use super::Peer;
use crate::error::PeerError;
use crate::report::RoundReport;

/// How often a lingering peer repeats its heartbeat, so that partners waiting on its `settled`
/// learn it even if one heartbeat is lost; spaced out like its heartbeats in a large swarm
/// (`heartbeat_spacing`): every lingering peer's heartbeat goes to the whole swarm, and 32 peers
/// repeating theirs every half second cost each peer 190 kB in its last round.
const LINGER_HEARTBEAT: Duration = Duration::from_millis(500);

impl Peer {
    /// After the last round: takes in late updates as corrections of their rounds until this
    /// replica holds every update the live peers say they published before this round (then it
    /// is *settled* and says so in its heartbeats), and every live peer is settled too or has
    /// moved past this round. Bounded by twice `peer_timeout`: a peer that stops answering is no
    /// longer live after one.
    pub(super) async fn linger(&mut self) -> Result<(), PeerError> {
        let round = self.book.round();
        let until = Instant::now() + self.config.peer_timeout * 2;
        // Late updates taken in here count in the summary, not in a round's report.
        let mut report = RoundReport::default();
        let mut next_beat = Instant::now();
        while !self.stopped && Instant::now() < until {
            self.settle(&mut report).await?;
            let settled = self.live().all(|p| self.holds_all_of(p, round));
            if settled != self.settled {
                self.settled = settled;
                next_beat = Instant::now();
            }
            let done = settled
                && self.live().all(|p| {
                    self.peers
                        .get(p)
                        .is_some_and(|s| s.round > round || (s.round == round && s.settled))
                });
            if done {
                break;
            }
            if self.snapshots.wanted() {
                // A joiner asking now still gets this replica, not a wait until it leaves.
                let state = self.snapshot().await?;
                self.snapshots.publish(&state);
            }
            if Instant::now() >= next_beat {
                self.heartbeat();
                next_beat = Instant::now() + LINGER_HEARTBEAT * self.heartbeat_spacing;
            }
            if let Some(event) = self.next_event(next_beat.min(until)).await {
                self.on_event(event);
            }
        }
        Ok(())
    }

    /// Whether `peer` has closed the round before `round`, and this replica holds (or refused
    /// for what it is) every update `peer`'s latest heartbeat says it published for the rounds
    /// before `round` that can still be corrected.
    fn holds_all_of(&self, peer: &PeerId, round: u64) -> bool {
        let Some(seen) = self.peers.get(peer) else {
            return true;
        };
        let (at, mask) = seen.published;
        if at < round {
            return false;
        }
        let id = peer.to_bytes();
        let oldest = round.saturating_sub(self.book.horizon());
        (0..64u64)
            .filter(|i| (mask >> i) & 1 == 1)
            .filter_map(|i| at.checked_sub(1 + i))
            .filter(|&r| r < round && r >= oldest)
            // Under group averaging, only the rounds it was in this peer's group come here.
            .filter(|&r| self.counts_update_of(peer, r))
            .all(|r| self.book.decided(&id, r))
    }
}
