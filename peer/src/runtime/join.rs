//! Joining a run: waiting for peers, then fetching the run's state (θ, optimizer moments, round)
//! from the most advanced connected peer; and the snapshots this peer serves to joiners.

use std::time::Duration;

use gradswarm_core::PeerState;
use gradswarm_net::{NetEvent, PeerId};
use tracing::{info, warn};
use web_time::Instant;

use super::Peer;
use crate::error::PeerError;
use crate::state;

impl Peer {
    /// Waits for peers; if one is ahead of round 0, fetches the run's state from the most advanced.
    pub(super) async fn join(&mut self) -> Result<(), PeerError> {
        let started = Instant::now();
        let mut held = Vec::new();
        let mut next_beat = Instant::now();
        loop {
            if Instant::now() >= next_beat {
                self.heartbeat();
                next_beat = Instant::now() + Duration::from_millis(250);
            }
            let enough = self.peers.len() >= self.min_peers;
            let round = self.book.round();
            let ahead = self.peers.values().any(|s| s.round > round);
            // State comes from a peer we are connected to: one only heard of through gossip
            // forwarded by others may not be dialable yet.
            let ahead_here = self
                .peers
                .iter()
                .any(|(p, s)| s.round > round && self.joined.contains(p));
            let waited = started.elapsed() >= self.config.join_wait;
            let waited_long =
                started.elapsed() >= self.config.join_wait * 4 + Duration::from_secs(20);
            if self.stopped || (enough && (ahead_here || (waited && !ahead) || waited_long)) {
                break;
            }
            if let Some(event) = self.next_event(next_beat).await {
                // Updates wait until the round is known: a joiner's book is not at the swarm's round yet.
                if matches!(event, NetEvent::Update { .. }) {
                    held.push(event);
                } else {
                    self.on_event(event);
                }
            }
        }
        let mut ahead: Vec<(bool, u64, PeerId)> = self
            .peers
            .iter()
            .filter(|(_, s)| s.round > self.book.round())
            .map(|(p, s)| (self.joined.contains(p), s.round, *p))
            .collect();
        // Connected peers first, the most advanced first.
        ahead.sort_by(|a, b| b.cmp(a));
        let mut failures = Vec::new();
        for (_, _, peer) in &ahead {
            info!("fetching the run's state from {peer}");
            let n = self.trainer.num_params();
            match state::fetch(&self.net, *peer, &self.config.run_id, self.model_hash, n).await {
                Ok(state) => {
                    self.install(&state)?;
                    self.summary.synced_from = Some(peer.to_base58());
                    info!("synced to round {} from {peer}", state.round);
                    break;
                }
                Err(e) => {
                    warn!("state from {peer}: {e}");
                    failures.push(e.to_string());
                }
            }
        }
        if !ahead.is_empty() && self.summary.synced_from.is_none() {
            // Training from θ₀ in a swarm that is ahead would only produce too-stale updates.
            return Err(PeerError::Sync(format!(
                "no peer served the run's state ({})",
                failures.join("; ")
            )));
        }
        let synced = self.book.round();
        for event in held {
            // Updates of rounds before the snapshot's are already in the θ we installed.
            if matches!(&event, NetEvent::Update { update, .. } if update.round < synced) {
                continue;
            }
            self.on_event(event);
        }
        Ok(())
    }

    /// Installs a fetched state: θ, the optimizer moments, the outer momentum and the round.
    pub(super) fn install(&mut self, state: &PeerState) -> Result<(), PeerError> {
        self.trainer.set_parameters(&state.params)?;
        let (outer, inner): (Vec<_>, Vec<_>) = state
            .optimizer
            .iter()
            .cloned()
            .partition(|(name, _)| name == super::MOMENTUM_KEY);
        self.trainer
            .set_optimizer_state(state.step, state.optimizer_steps, &inner)?;
        if let Some((_, m)) = outer.into_iter().next() {
            self.outer.set_momentum(m);
        }
        self.book.reset(state.round);
        Ok(())
    }

    /// This replica's whole state, as a joiner fetches it.
    pub(super) async fn snapshot(&self) -> Result<PeerState, PeerError> {
        let (optimizer_steps, mut optimizer) = self.trainer.optimizer_state_async().await?;
        if !self.outer.momentum().is_empty() {
            optimizer.push((super::MOMENTUM_KEY.into(), self.outer.momentum().to_vec()));
        }
        Ok(PeerState {
            round: self.book.round(),
            step: self.trainer.step(),
            params: self.trainer.parameters_async().await?,
            optimizer,
            optimizer_steps,
        })
    }
}
