//! Heartbeats: this peer's round, loss and replica fingerprint, published every
//! `heartbeat_every` and at the last round.

use std::time::Duration;

use gradswarm_core::Heartbeat;
use gradswarm_net::Topic;
use tracing::debug;
use web_time::Instant;

use super::Peer;

impl Peer {
    /// At a round's close: a heartbeat if the last is `heartbeat_every` old, or this was the
    /// last round (peers lingering after their own last round wait for it).
    pub(super) fn heartbeat_at_close(&mut self) {
        let last_round = self.config.rounds.is_some_and(|r| self.book.round() >= r);
        let due = self
            .last_heartbeat
            .is_none_or(|t| t.elapsed() >= self.heartbeat_every());
        if due || last_round || self.stopped {
            self.heartbeat();
        }
    }

    /// How long apart this peer heartbeats: `heartbeat_every`, spaced out in a large swarm under
    /// group averaging ([`gradswarm_core::Averaging::heartbeat_spacing`]).
    pub(super) fn heartbeat_every(&self) -> Duration {
        self.config.heartbeat_every * self.heartbeat_spacing
    }

    /// How long a peer may go unheard before it counts as gone: `peer_timeout`, or three
    /// heartbeats where they are spaced out further.
    pub(super) fn peer_timeout(&self) -> Duration {
        self.config.peer_timeout.max(self.heartbeat_every() * 3)
    }

    /// Publishes a heartbeat: this peer's round, loss, and the fingerprint of θ at that round.
    pub(super) fn heartbeat(&mut self) {
        self.last_heartbeat = Some(Instant::now());
        self.heartbeat_spacing = self.averaging.heartbeat_spacing(self.swarm_size());
        // No read of θ here: in a browser that would block on the GPU. Before the first round
        // (or between a catch-up and its mark) there is no fingerprint, and partners skip the check.
        let round = self.book.round();
        let (checksum, sketch, applied) = match &self.fingerprint {
            Some(f) if f.round == round => (f.checksum, f.sketch.clone(), f.applied),
            _ => Default::default(),
        };
        let published = self
            .published
            .iter()
            .filter_map(|&r| round.checked_sub(r + 1))
            .filter(|&i| i < 64)
            .fold(0u64, |mask, i| mask | (1 << i));
        let hb = Heartbeat {
            run_id: self.config.run_id.clone(),
            model_hash: self.model_hash,
            peer_id: self.me.to_bytes(),
            round,
            checksum,
            loss: self.last_loss,
            val_loss: self.last_val_loss,
            sketch,
            applied,
            sealed: self.sealed.values().next_back().cloned(),
            published,
            settled: self.settled,
            samples: self.samples,
            tokens_per_s: self.tokens_per_s,
            agent: self.config.agent.clone(),
            throttled: self.throttled(),
            // A joining peer's count is still climbing: 0 (not counted) keeps it out of the
            // others' median, which draws their groups, until its first heartbeat as a runner.
            heard: if self.running {
                u32::try_from(self.live().count() + 1).unwrap_or(u32::MAX)
            } else {
                0
            },
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            attests: self.ledger.attestations(),
        };
        // This peer's own entry in its view of the run, which others' attestations of it need.
        self.take_attestations(&hb);
        for hb in self.edge.heartbeat(hb) {
            if let Err(e) = self.net.publish(Topic::Heartbeat, hb.to_bytes()) {
                debug!("heartbeat: {e}");
            }
        }
    }
}
