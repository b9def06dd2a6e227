//! Joining a run: waiting for peers, then fetching the run's state (θ, optimizer moments, round)
//! from the most advanced connected peer; and the snapshots this peer serves to joiners.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gradswarm_core::wire::{
    MAX_STATE_DECODED_BYTES, MAX_STATE_RECENT_ROUNDS, MAX_STATE_SKETCHES, MAX_STATE_UPDATE_BYTES,
    MAX_STATE_UPDATES, RecentRound, params_checksum, recent_decoded_bytes,
};
use gradswarm_core::{DecodedUpdate, DriftSketch, HEARTBEAT_FLAT_FROM, Held, PeerState};
use gradswarm_net::{NetEvent, PeerId};
use tracing::{debug, info, warn};
use web_time::Instant;

use super::Peer;

/// How long a joiner keeps going through the peers ahead before it gives up. Long, since
/// giving up ends the peer: on a loaded machine a pass can take seconds (measured in CI: the
/// scenario test's joiner failed three one-second passes in a row).
const JOIN_PATIENCE: Duration = Duration::from_secs(90);

/// How long a joiner waits for the other peers to vouch for a fetched state: one a round behind
/// the server holds no fingerprint of its round until it gets there, which a ten-times slower
/// peer on a loaded machine takes seconds to do.
const VERIFY_PATIENCE: Duration = Duration::from_secs(20);

/// How far (relative L2, by sketch) a fetched θ may be from another peer's of the same round and
/// still count as agreeing with it. Honest replicas at one round differ by the updates still on
/// their way to one of them: measured up to 8e-2 with a peer ten times slower than the others
/// (harness/tests/harness.rs). A lie worth telling moves θ further; one that stays under this is
/// found by reconciliation, which follows the majority at `drift_tolerance` (1e-4).
const JOIN_TOLERANCE: f64 = 0.25;

/// How often a replica that fell too far behind tries to fetch the run's state again.
const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// How often a joining peer heartbeats in a swarm of up to [`HEARTBEAT_FLAT_FROM`] peers.
const JOIN_HEARTBEAT: Duration = Duration::from_millis(250);
use crate::error::PeerError;
use crate::state;

/// One recent round's set as a state carries it, decoded for the round book.
type HeldSet = (u64, Vec<Held<Arc<DecodedUpdate>>>);

impl Peer {
    /// Waits for peers; if most of them are ahead of round 0, fetches the run's state from one
    /// the others agree with.
    pub(super) async fn join(&mut self) -> Result<(), PeerError> {
        let started = Instant::now();
        let mut held = Vec::new();
        let mut next_beat = Instant::now();
        let mut counted = 0;
        loop {
            if Instant::now() >= next_beat {
                self.heartbeat();
                // Quick, so that peers count each other soon; spaced out as the joining swarm
                // grows, so that it sends as many as four peers would (every heartbeat reaches
                // every peer: 32 peers joining at 4 a second took 300 KB of each one's uplink).
                let heard = self.peers.len() + 1;
                let spacing = (heard / HEARTBEAT_FLAT_FROM).max(1) as u32;
                next_beat = Instant::now() + JOIN_HEARTBEAT * spacing;
            }
            let enough = self.peers.len() >= self.min_peers;
            let typical = self.typical_round();
            if self.peers.len() != counted {
                counted = self.peers.len();
                debug!(
                    "joining: heard {counted} of {} peers in {:.2} s, typical round {typical}",
                    self.min_peers,
                    started.elapsed().as_secs_f64()
                );
            }
            let ahead = typical > self.book.round();
            // State comes from a peer that can be asked for it.
            let ahead_here = self
                .peers
                .iter()
                .any(|(p, s)| s.round >= typical && self.askable(p));
            // However far ahead the first peer heard says it is, the others get `join_wait` to
            // be heard too: one voice alone cannot be checked.
            let waited = started.elapsed() >= self.config.join_wait;
            let waited_long =
                started.elapsed() >= self.config.join_wait * 4 + Duration::from_secs(20);
            if self.stopped || (enough && ((waited && (ahead_here || !ahead)) || waited_long)) {
                break;
            }
            if let Some(event) = self.next_event(next_beat).await {
                self.hold_or_take(event, &mut held);
            }
        }
        let syncing = Instant::now();
        while !(self.sync_from_ahead().await? || self.stopped) {
            if syncing.elapsed() >= JOIN_PATIENCE {
                if self.resumed {
                    // Its own checkpoint is a replica too: better than none (reconciliation
                    // follows the majority later), and a liar claiming rounds ahead cannot
                    // keep it out.
                    warn!(
                        "no peer served a state the others agree with: going on from the checkpoint"
                    );
                    break;
                }
                // Training from θ₀ in a swarm that is ahead would only produce too-stale updates.
                return Err(PeerError::Sync(
                    "no peer served a state the others agree with".into(),
                ));
            }
            // Between passes the swarm moves on: heartbeats tell who is ahead now and who left.
            let until = Instant::now() + Duration::from_secs(1);
            while let Some(event) = self.next_event(until).await {
                self.hold_or_take(event, &mut held);
            }
        }
        let synced = self.book.round();
        for event in held {
            // Updates of rounds before the snapshot's are in the θ installed, or late ones that
            // correct it if the state carried their rounds' sets; older ones are too late.
            if let NetEvent::Update { update, .. } = &event {
                let too_old = update.round < synced && !self.book.holds(update.round);
                // Already in a set the state carried: not a duplicate from the network.
                let carried = self
                    .recent
                    .get(&(update.round, update.peer_id.clone()))
                    .is_some_and(|u| u.content_digest() == update.content_digest());
                if too_old || carried {
                    continue;
                }
            }
            self.on_event(event);
        }
        Ok(())
    }

    /// Mid-run: when most live peers are further ahead than the round book keeps updates
    /// for ([`gradswarm_core::RoundBook::horizon`]), this replica can no longer count theirs nor
    /// they its (a laptop that slept, a link that was down): it fetches the run's state again,
    /// verified as a joiner's. At most once per [`RESYNC_EVERY`], so that a peer nobody serves a
    /// good state to trains on meanwhile.
    pub(super) async fn resync_if_far_behind(&mut self) -> Result<(), PeerError> {
        let own = self.book.round();
        let horizon = own + self.book.horizon();
        // A majority of the live peers, those behind counted: one liar claiming rounds far
        // ahead must not send a replica off fetching and verifying (up to `VERIFY_PATIENCE`).
        let claims: Vec<u64> = self
            .live()
            .filter_map(|p| self.peers.get(p))
            .map(|s| s.round)
            .collect();
        let ahead = claims.iter().filter(|&&r| r > horizon).count();
        if 2 * ahead <= claims.len() || self.resynced_at.is_some_and(|t| t.elapsed() < RESYNC_EVERY)
        {
            return Ok(());
        }
        let typical = self.typical_round();
        self.resynced_at = Some(Instant::now());
        warn!(
            "round {own}, the others at {typical}: too far behind to count their updates; \
             fetching the run's state again"
        );
        if self.sync_from_ahead().await? && self.book.round() > own {
            self.summary.resyncs += 1;
            let params = self.trainer.parameters_async().await?;
            self.mark(params);
        }
        Ok(())
    }

    /// While joining: an update waits until the round is known (the book is not at the swarm's
    /// round yet), but the round it names counts at once as its sender's claim, as a heartbeat's
    /// would. Heartbeats go out every few seconds; without this, a peer restarted a few rounds
    /// behind heard no claim within `join_wait`, skipped the sync, and closed the rounds it had
    /// missed with none of the others' updates (the churn test's failure, a replica 8e-2 apart).
    fn hold_or_take(&mut self, event: NetEvent, held: &mut Vec<NetEvent>) {
        if let NetEvent::Update { from, update, .. } = &event {
            self.touch(*from, Some(update.round));
            held.push(event);
        } else {
            self.on_event(event);
        }
    }

    /// Fetches the run's state from the peers ahead, connected ones and the most advanced first,
    /// and installs the first one the others agree with ([`Peer::verify`]). Returns whether it
    /// installed one, or nobody was ahead (false: try again).
    async fn sync_from_ahead(&mut self) -> Result<bool, PeerError> {
        let typical = self.typical_round();
        if typical <= self.book.round() {
            return Ok(true);
        }
        // A peer claiming a round far past the others' is not asked.
        let mut ahead: Vec<(bool, u64, PeerId)> = self
            .peers
            .iter()
            .filter(|(_, s)| {
                s.round > self.book.round() && s.round <= typical + self.book.horizon()
            })
            .map(|(p, s)| (self.joined.contains(p), s.round, *p))
            .collect();
        ahead.sort_by(|a, b| b.cmp(a));
        let n = self.trainer.num_params();
        for (_, _, peer) in &ahead {
            info!("fetching the run's state from {peer}");
            let fetched =
                state::fetch(&self.net, *peer, &self.config.run_id, self.model_hash, n).await;
            let checked = match fetched {
                Ok(state) => self.verify(*peer, &state).await.map(|()| state),
                Err(e) => Err(e),
            };
            let installed = match checked {
                Ok(state) => self.install(&state).await.map(|()| state),
                Err(e) => Err(e),
            };
            match installed {
                Ok(state) => {
                    self.summary.synced_from = Some(peer.to_base58());
                    let updates: usize = state.recent.iter().map(|r| r.updates.len()).sum();
                    info!(
                        "synced to round {} from {peer}, with {} recent rounds' sets ({updates} updates)",
                        state.round,
                        state.recent.len()
                    );
                    return Ok(true);
                }
                Err(PeerError::Net(gradswarm_net::NetError::Stopped)) => {
                    return Err(gradswarm_net::NetError::Stopped.into());
                }
                // One peer's bad state is no reason to give up: the next may serve a good one.
                Err(e) => {
                    self.summary.states_not_taken += 1;
                    warn!("state from {peer} not taken: {e}")
                }
            }
        }
        Ok(false)
    }

    /// The round the peers heard from are on, by their heartbeats: the lower median of their
    /// claims, which a minority claiming later rounds cannot move. Claims behind this peer's own
    /// round do not count: they cannot show the swarm is ahead, and a peer resumed from a
    /// checkpoint heartbeats that checkpoint's round until it has caught up itself (two peers
    /// restarted together would otherwise each hold the other back, and close the rounds they
    /// missed without their updates).
    fn typical_round(&self) -> u64 {
        let own = self.book.round();
        let mut claimed: Vec<u64> = self
            .peers
            .values()
            .map(|s| s.round)
            .filter(|&r| r >= own)
            .collect();
        claimed.sort_unstable();
        claimed
            .get(claimed.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0)
    }

    /// Checks a state `from` served against the others, since any one peer may lie: at least
    /// half of the other peers that may vouch for it ([`Peer::vouchers`]) must hold a fingerprint
    /// of its round, and a majority of those (`from` counted) one within [`JOIN_TOLERANCE`] of
    /// it. A round nobody else reached has no such majority. Finer differences are left to
    /// reconciliation.
    async fn verify(&self, from: PeerId, state: &PeerState) -> Result<(), PeerError> {
        let others: Vec<PeerId> = self
            .vouchers(from, state.round)
            .into_iter()
            .filter(|p| self.askable(p))
            .collect();
        if others.is_empty() {
            if self.averaging.to_partners_only() && self.peers.keys().any(|p| *p != from) {
                // Under groups, only `from`'s group holds its θ; none of it is here to ask.
                return Err(PeerError::Sync(format!(
                    "no member of {from}'s group to vouch for its θ of round {}",
                    state.round
                )));
            }
            // Nobody else to ask: the only peer there is has to be trusted.
            return Ok(());
        }
        let sketch = DriftSketch::of(&state.params);
        let checksum = params_checksum(&state.params);
        // Who answered with a fingerprint of that round, and whether it is within tolerance. A
        // peer without one (a round behind, or too far ahead) is asked again every half second
        // for `VERIFY_PATIENCE`, unless a majority of all the peers already agrees.
        let mut votes: BTreeMap<PeerId, f64> = BTreeMap::new();
        let started = Instant::now();
        for attempt in 0.. {
            let asked: Vec<PeerId> = others
                .iter()
                .filter(|p| !votes.contains_key(p))
                .copied()
                .collect();
            let agree = votes.values().filter(|&&d| d <= JOIN_TOLERANCE).count();
            if asked.is_empty()
                || 2 * (agree + 1) > others.len() + 1
                || started.elapsed() >= VERIFY_PATIENCE
            {
                break;
            }
            if attempt > 0 {
                futures_timer::Delay::new(Duration::from_millis(500)).await;
            }
            let answers = futures::future::join_all(asked.iter().map(|p| {
                state::fetch_fingerprint(
                    &self.net,
                    *p,
                    &self.config.run_id,
                    self.model_hash,
                    state.round,
                    false,
                )
            }))
            .await;
            for (peer, answer) in asked.iter().zip(answers) {
                let distance = match answer {
                    Ok(print) if print.checksum == checksum => Some(0.0),
                    Ok(print) => sketch.relative_distance(&print.sketch),
                    Err(_) => None,
                };
                if let Some(d) = distance {
                    votes.insert(*peer, d);
                }
            }
        }
        let agree = votes.values().filter(|&&d| d <= JOIN_TOLERANCE).count();
        // The server counts for itself; half of the others at least must have spoken.
        if 2 * votes.len() >= others.len() && 2 * (agree + 1) > votes.len() + 1 {
            return Ok(());
        }
        let distances: Vec<String> = votes.values().map(|d| format!("{d:.1e}")).collect();
        Err(PeerError::Sync(format!(
            "its θ of round {} agrees with {agree} of the {} other peers that hold that round \
             ({} asked; distances {})",
            state.round,
            votes.len(),
            others.len(),
            distances.join(", ")
        )))
    }

    /// Who may vouch for `from`'s θ of `round`: every other peer heard of under broadcast, where
    /// all replicas agree; under group averaging, `from`'s group of the round before (a state of
    /// a regrouping round is the θ its old group ended on, marked before the new group averages),
    /// as this joiner sees the swarm, itself left out. Replicas of different groups differ by what
    /// their groups learned apart (0.4 to 0.55 apart, by sketch, at 32 peers in groups of 4),
    /// far past [`JOIN_TOLERANCE`].
    fn vouchers(&self, from: PeerId, round: u64) -> Vec<PeerId> {
        if !self.averaging.to_partners_only() {
            let others = self.peers.keys().filter(|p| **p != from && **p != self.me);
            return others.copied().collect();
        }
        // Drawn from the live peers, as the swarm draws its groups (`Peer::group_of`): under
        // groups a closed connection leaves a departed peer in `peers` until it is forgotten
        // (but at the run's end: `Peer::ran_to_end`).
        let others = self.live().filter(|p| **p != from && **p != self.me);
        let heard: Vec<Vec<u8>> = others.map(|p| p.to_bytes()).collect();
        self.averaging
            .partners(
                round.saturating_sub(1),
                &from.to_bytes(),
                &heard,
                self.swarm_size(),
            )
            .into_iter()
            .filter_map(|p| PeerId::from_bytes(p).ok())
            .collect()
    }

    /// Installs a fetched state: θ, the optimizer moments, the outer momentum and the round. A
    /// peer resumed from its own checkpoint keeps its own moments ([`Peer::resume_at`]).
    pub(super) async fn install(&mut self, state: &PeerState) -> Result<(), PeerError> {
        let (outer, inner): (Vec<_>, Vec<_>) = state
            .optimizer
            .iter()
            .cloned()
            .partition(|(name, _)| name == super::MOMENTUM_KEY);
        let (optimizer_steps, inner) = if self.resumed {
            self.trainer.optimizer_state_async().await?
        } else {
            (state.optimizer_steps, inner)
        };
        // The server's recent rounds, checked whole before anything here changes.
        let equivocators: Vec<(u64, Vec<u8>)> = state
            .recent
            .iter()
            .flat_map(|r| r.equivocators.iter().map(|p| (r.round, p.clone())))
            .collect();
        let sets = self.held_sets(state, &equivocators)?;
        self.trainer.set_parameters(&state.params)?;
        self.trainer
            .set_optimizer_state(state.step, optimizer_steps, &inner)?;
        if let Some((_, m)) = outer.into_iter().next() {
            self.outer.set_momentum(m);
        }
        // Pending updates of the rounds from the state's on are still this replica's to serve.
        self.recent.retain(|(r, _), _| *r >= state.round);
        if sets.is_empty() {
            self.book.reset(state.round);
        } else {
            self.book
                .restore(state.round, sets, &equivocators)
                .map_err(|e| PeerError::Sync(format!("the state's recent rounds: {e}")))?;
            for update in state.recent.iter().flat_map(|r| &r.updates) {
                let key = (update.round, update.peer_id.clone());
                self.recent.insert(key, Arc::new(update.clone()));
            }
        }
        // θ no longer descends from the marks it held: drift repair starts over from here.
        self.marks.clear();
        self.snapshots.marks(&self.marks);
        self.sealed.clear();
        self.votes.clear();
        // The server's standing, so that this replica weighs peers as the others do.
        self.standing.clear();
        self.factors.clear();
        if self.judges_standing() {
            for (round, sketches) in &state.standing {
                self.standing.insert(*round, sketches.clone());
            }
        }
        Ok(())
    }

    /// The recent rounds' sets a state carries, checked before a payload is decoded (rounds
    /// the book could hold, one update per sender, what they take decoded), then each update as
    /// one off the network is (its header, its payload decoded, its values): an honest server
    /// sends only updates its own book took, within those bounds, so one that fails refuses
    /// the state.
    fn held_sets(
        &self,
        state: &PeerState,
        equivocators: &[(u64, Vec<u8>)],
    ) -> Result<Vec<HeldSet>, PeerError> {
        let refused = |why: String| PeerError::Sync(format!("the state's recent rounds: {why}"));
        let headers: Vec<(u64, Vec<Held<()>>)> = state
            .recent
            .iter()
            .map(|r| {
                let held = r.updates.iter().map(|u| Held {
                    peer: u.peer_id.clone(),
                    base_round: u.base_round,
                    samples: u.samples,
                    digest: 0,
                    payload: (),
                });
                (r.round, held.collect())
            })
            .collect();
        self.book
            .check_restore(state.round, &headers, equivocators)
            .map_err(|e| refused(e.to_string()))?;
        let count: usize = headers.iter().map(|(_, set)| set.len()).sum();
        let decoded = recent_decoded_bytes(count, self.max_entries());
        if decoded > MAX_STATE_DECODED_BYTES {
            return Err(refused(format!("{decoded} bytes decoded, past the bound")));
        }
        let mut sets = Vec::with_capacity(state.recent.len());
        for RecentRound { round, updates, .. } in &state.recent {
            let mut held = Vec::with_capacity(updates.len());
            for update in updates {
                let refuse = |why: String| {
                    PeerError::Sync(format!("the state's update of round {round}: {why}"))
                };
                if update.run_id != self.config.run_id || update.model_hash != self.model_hash {
                    return Err(refuse("of another run or model".into()));
                }
                if update.round != *round || PeerId::from_bytes(&update.peer_id).is_err() {
                    return Err(refuse("a wrong round or sender".into()));
                }
                update
                    .check(&self.limits)
                    .map_err(|e| refuse(e.to_string()))?;
                let decoded = update
                    .decode_payload(&self.limits)
                    .map_err(|e| refuse(e.to_string()))?;
                self.validator
                    .validate(decoded.len, &decoded.values)
                    .map_err(|e| refuse(e.to_string()))?;
                held.push(Held {
                    peer: update.peer_id.clone(),
                    base_round: update.base_round,
                    samples: update.samples,
                    digest: update.content_digest(),
                    payload: Arc::new(decoded),
                });
            }
            sets.push((*round, held));
        }
        Ok(sets)
    }

    /// The wire form of every update this replica's unsealed rounds hold, by round, oldest
    /// first, with the senders caught equivocating in each: None when one is missing (taken in
    /// before this peer kept them) or they would not fit a state.
    fn recent_sets(&self) -> Option<Vec<RecentRound>> {
        let (mut count, mut bytes) = (0, 0);
        let mut sets = Vec::new();
        for (round, set) in self.book.unsealed() {
            let equivocators: Vec<Vec<u8>> = self
                .book
                .equivocators()
                .filter(|(r, _)| *r == round)
                .map(|(_, p)| p.to_vec())
                .collect();
            count += equivocators.len();
            let mut updates = Vec::with_capacity(set.len());
            for accepted in set {
                let update = self
                    .recent
                    .get(&(round, accepted.peer.clone()))
                    .filter(|u| u.content_digest() == accepted.digest)?;
                count += 1;
                bytes += update.payload.len();
                updates.push(update.as_ref().clone());
            }
            sets.push(RecentRound {
                round,
                updates,
                equivocators,
            });
        }
        let updates: usize = sets.iter().map(|r| r.updates.len()).sum();
        let fits = sets.len() <= MAX_STATE_RECENT_ROUNDS
            && count <= MAX_STATE_UPDATES
            && bytes <= MAX_STATE_UPDATE_BYTES
            && recent_decoded_bytes(updates, self.max_entries()) <= MAX_STATE_DECODED_BYTES;
        fits.then_some(sets)
    }

    /// The most values one of the run's updates decodes to.
    fn max_entries(&self) -> usize {
        self.config.codec.max_entries(self.trainer.num_params())
    }

    /// This replica's whole state, as a joiner fetches it (through the [`crate::Edge`]).
    pub(super) async fn snapshot(&mut self) -> Result<PeerState, PeerError> {
        let (optimizer_steps, mut optimizer) = self.trainer.optimizer_state_async().await?;
        if !self.outer.momentum().is_empty() {
            optimizer.push((super::MOMENTUM_KEY.into(), self.outer.momentum().to_vec()));
        }
        let mut state = PeerState {
            round: self.book.round(),
            step: self.trainer.step(),
            params: self.trainer.parameters_async().await?,
            optimizer,
            optimizer_steps,
            standing: Vec::new(),
            recent: self.recent_sets().unwrap_or_default(),
        };
        // Standing's sealed rounds, then, unless the joiner takes their sets and seals them
        // itself, the closed ones not sealed yet as they stand; the newest that fit a state's
        // bound.
        if self.judges_standing() {
            let mut standing = self.standing.clone();
            if state.recent.is_empty() {
                for (round, set) in self.book.unsealed() {
                    standing.observe(round, set, &self.screen(set));
                }
            }
            let mut sketches = 0;
            state.standing = standing
                .rounds()
                .rev()
                .take_while(|(_, s)| {
                    sketches += s.len();
                    sketches <= MAX_STATE_SKETCHES
                })
                .map(|(r, s)| (r, s.clone()))
                .collect();
            state.standing.reverse();
        }
        self.edge.snapshot(&mut state);
        Ok(state)
    }
}
