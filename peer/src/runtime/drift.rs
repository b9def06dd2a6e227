//! Replica fingerprints and pairwise averaging: every round's θ is marked with a checksum and a
//! drift sketch, and once no late update can change a mark any more (it is *sealed*,
//! [`gradswarm_core::marks`]) heartbeats carry its fingerprint. A replica whose sealed mark is
//! too far from those of a majority holding the same updates moves to theirs (each side of two
//! equal camps halfway).

use std::sync::Arc;

use futures::FutureExt;
use gradswarm_core::drift::{Verdict, camps, check_served, verdict};
use gradswarm_core::marks::pull_replica;
use gradswarm_core::topology::{decode_replica, encode_replica};
use gradswarm_core::wire::params_checksum;
use gradswarm_core::{DriftSketch, EncodeError, Heartbeat};
use gradswarm_net::PeerId;
use tracing::{debug, info, warn};

use super::Peer;
use crate::error::PeerError;
use crate::state::{self, Fingerprint};

/// Distances a report's divergence is the median of at most (a flood of heartbeats between two
/// rounds must not grow them).
const MAX_DIVERGENCES: usize = 256;

/// After a pairwise averaging, heartbeats of the next this many rounds are not looked at: they
/// may predate the partners' halves of the averaging, and acting on them would overshoot.
const RECONCILE_BACKOFF: u64 = 3;

impl Peer {
    /// Remembers this replica, θ = `params`, at the start of the open round, for pairwise
    /// averaging later.
    pub(super) fn mark(&mut self, mut params: Vec<f32>) {
        let round = self.book.round();
        self.edge.mark(round, &mut params);
        let fingerprint = Fingerprint {
            round,
            checksum: params_checksum(&params),
            sketch: DriftSketch::of(&params),
            applied: self.book.applied_digest(),
        };
        if self.averaging.averages_parameters_at(round) {
            // Served before the fingerprint: a new partner that sees the fingerprint of this
            // round asks for the replica next.
            let served = self.edge.replica(round, &params);
            let served = served.as_deref().unwrap_or(&params);
            let encoded = encode_replica(served, round).and_then(|bytes| {
                let values = decode_replica(&bytes, served.len())
                    .map_err(|e| EncodeError::Compress(e.to_string()))?;
                Ok((bytes, values))
            });
            match encoded {
                Ok((bytes, values)) => {
                    // The new group checks it: its members, as this peer acts on them.
                    let partners = self.commit_partners(round);
                    let (bytes, values) = (Arc::new(bytes), Arc::new(values));
                    self.snapshots.replica(round, bytes, values, &partners);
                }
                Err(e) => warn!("replica of round {round} not encoded for the group: {e}"),
            }
        }
        let applied = fingerprint.applied;
        self.fingerprint = Some(fingerprint.clone());
        self.snapshots.fingerprint(fingerprint);
        // Marks serve pairwise averaging (drift) and a new group's averaging.
        if self.config.drift_tolerance.is_none() && !self.averaging.to_partners_only() {
            return;
        }
        let sealed = self
            .marks
            .mark(round, params, self.outer.momentum(), applied);
        self.snapshots.marks(&self.marks);
        for &s in &sealed {
            let Some(mark) = self.marks.get(s) else {
                continue;
            };
            let print = Fingerprint {
                round: s,
                checksum: params_checksum(&mark.params),
                sketch: DriftSketch::of(&mark.params),
                applied: mark.applied,
            };
            self.snapshots.sealed(print.clone());
            self.sealed.insert(s, print);
        }
        if let Some(oldest) = self.marks.oldest() {
            self.votes = self.votes.split_off(&oldest);
            self.sealed = self.sealed.split_off(&oldest);
        }
        // Votes for these rounds that came before they sealed here.
        for s in sealed {
            self.reconsider(s);
        }
    }

    /// Measures how far `heartbeat`'s sealed mark is from this replica's of the same round when
    /// both hold the same updates there (a gap then is drift for good, not an update still on its
    /// way); the next report's `divergence` is the median of these, one per sender (a peer
    /// heartbeating often counts once).
    pub(super) fn measure_divergence(&mut self, from: PeerId, heartbeat: &Heartbeat) {
        let Some(theirs) = heartbeat.sealed.as_ref() else {
            return;
        };
        let Some(mine) = self.sealed.get(&theirs.round) else {
            return;
        };
        if mine.applied != theirs.applied {
            return;
        }
        if let Some(d) = mine.sketch.relative_distance(&theirs.sketch)
            && (self.divergences.len() < MAX_DIVERGENCES || self.divergences.contains_key(&from))
        {
            self.divergences.insert(from, d);
        }
    }

    /// Takes in a heartbeat's fingerprint of its sender's latest sealed mark as a vote on that
    /// round, and looks at the round again if this replica has sealed it.
    pub(super) fn check_drift(&mut self, from: PeerId, heartbeat: &Heartbeat) {
        let Some(print) = heartbeat.sealed.as_ref() else {
            return;
        };
        if self.config.drift_tolerance.is_none() || print.sketch.is_empty() {
            return;
        }
        let round = self.book.round();
        // Votes are kept for the rounds this peer holds marks of, and a horizon ahead.
        let oldest = self.marks.oldest().unwrap_or(round);
        if print.round < oldest || print.round > round + self.book.horizon() {
            return;
        }
        self.votes
            .entry(print.round)
            .or_default()
            .insert(from, print.clone());
        self.reconsider(print.round);
    }

    /// Starts a reconciliation when the votes for `round` put a majority of the swarm's replicas
    /// (or, between two camps of equal size, the other camp) further from this one than the
    /// drift tolerance ([`verdict`]): this replica follows agreement, never one peer.
    pub(super) fn reconsider(&mut self, round: u64) {
        let Some(tolerance) = self.config.drift_tolerance else {
            return;
        };
        // State comes from a peer we are connected to, one transfer at a time.
        if !self.running || self.reconciling.is_some() || round < self.quiet_until {
            return;
        }
        let Some(mark) = self.sealed.get(&round) else {
            return;
        };
        let Some(votes) = self.votes.get(&round) else {
            return;
        };
        // Replicas whose sealed mark holds other updates of the rounds before it than ours took
        // different updates (another group's, under groups): not drift. They do not vote.
        let same: Vec<(&PeerId, &Fingerprint)> = votes
            .iter()
            .filter(|(_, v)| v.applied == mark.applied)
            .collect();
        let sketches: Vec<&DriftSketch> = same.iter().map(|(_, v)| &v.sketch).collect();
        // Every live replica should vote, not only the peers rounds wait for: a slow honest peer
        // that rounds stopped waiting for still heartbeats, and leaving it out let two voters of
        // three decide for a joiner in an adversity run (bench/README.md "Sealed marks"), a
        // majority two liars could have made. Silence counts against moving.
        let voters = self.live().count() + 1;
        let choice = same.iter().find_map(|&(peer, vote)| {
            if vote.checksum == mark.checksum
                || !self.askable(peer)
                || self.reconcile_after.get(peer).is_some_and(|&r| round < r)
            {
                return None;
            }
            match verdict(&mark.sketch, &vote.sketch, &sketches, voters, tolerance) {
                Verdict::Keep => None,
                v => Some((*peer, v, vote.checksum, vote.sketch.clone())),
            }
        });
        let Some((from, verdict, checksum, their_print)) = choice else {
            // Heartbeats go out every few seconds, so when rounds are short the votes heard for
            // one round rarely include every replica, and a replica that is alone in being far
            // off never hears the majority it needs. Ask the silent ones for theirs.
            let far = same.iter().any(|(_, v)| {
                v.checksum != mark.checksum
                    && mark
                        .sketch
                        .relative_distance(&v.sketch)
                        .is_some_and(|d| d > tolerance)
            });
            if far && votes.len() + 1 < voters {
                // Under groups only the partners' replicas took the same updates (the others'
                // votes fail `same`): asking all 31 of 32 peers kept each peer connected to
                // nearly all of them for the run's first minute.
                let partners = self
                    .averaging
                    .to_partners_only()
                    .then(|| self.partners_at(round));
                let silent: Vec<PeerId> = self
                    .live()
                    .filter(|p| !votes.contains_key(p))
                    .filter(|p| partners.as_ref().is_none_or(|g| g.contains(p)))
                    .copied()
                    .collect();
                self.poll(round, silent);
            }
            return;
        };
        let (theirs, ours) = camps(&mark.sketch, &their_print, &sketches, tolerance);
        info!(
            "replica of {from} at round {round} is where the swarm agrees ({verdict:?}: {theirs} \
             of {voters} voters with it, {ours} with ours, {} heard): fetching it",
            sketches.len() + 1,
        );
        self.reconcile_after
            .insert(from, self.book.round() + RECONCILE_BACKOFF);
        let net = self.net.clone();
        let run_id = self.config.run_id.clone();
        // A mark is θ, then the outer momentum where the optimizer keeps one.
        let n = self.trainer.num_params() * self.marks.parts();
        let model_hash = self.model_hash;
        let my_print = mark.sketch.clone();
        let Some(mine) = self.marks.get(round).map(|m| m.params.clone()) else {
            return;
        };
        self.reconciling = Some(
            async move {
                let theirs = state::fetch_params(&net, from, &run_id, model_hash, round, n)
                    .await
                    .and_then(|theta| {
                        // What it serves must be what it signed in its heartbeat, and what that
                        // fingerprint described: not a vector hidden from the sketch.
                        if params_checksum(&theta) != checksum {
                            return Err(PeerError::Sync(format!(
                                "{from} served a replica of round {round} other than its heartbeat's"
                            )));
                        }
                        let drift =
                            check_served(&mine, &theta, &my_print, &their_print, tolerance)
                                .map_err(|why| {
                                    PeerError::Sync(format!(
                                        "{from}'s replica of round {round} refused: {why}"
                                    ))
                                })?;
                        Ok((theta, drift))
                    });
                (from, round, verdict, theirs)
            }
            .boxed(),
        );
    }

    /// Asks `peers` for their fingerprints of `round`, once per round and one poll at a time:
    /// their answers count as their heartbeats would have ([`Self::take_poll`]).
    fn poll(&mut self, round: u64, peers: Vec<PeerId>) {
        if self.polling.is_some() || round <= self.polled || peers.is_empty() {
            return;
        }
        self.polled = round;
        debug!(
            "asking {} silent replicas for their round {round}",
            peers.len()
        );
        let net = self.net.clone();
        let run_id = self.config.run_id.clone();
        let model_hash = self.model_hash;
        self.polling = Some(
            async move {
                let answers =
                    futures::future::join_all(peers.iter().map(|&p| {
                        state::fetch_fingerprint(&net, p, &run_id, model_hash, round, true)
                    }))
                    .await;
                let votes = peers
                    .into_iter()
                    .zip(answers)
                    .filter_map(|(p, a)| a.ok().map(|print| (p, print)))
                    .collect();
                (round, votes)
            }
            .boxed(),
        );
    }

    /// Takes the answers to a poll as votes on their round, and looks at that round again.
    pub(super) fn take_poll(&mut self, round: u64, answers: Vec<(PeerId, Fingerprint)>) {
        self.polling = None;
        if round < self.marks.oldest().unwrap_or(round) {
            return;
        }
        let votes = self.votes.entry(round).or_default();
        for (peer, print) in answers {
            votes.entry(peer).or_insert(print);
        }
        self.reconsider(round);
    }

    /// Applies a reconciliation with `peer`'s replica of `round` (docs/architecture.md): θ moves
    /// all the way to it when a majority agreed with it ([`Verdict::Adopt`]), halfway between two
    /// equal camps (the partner, having seen the same heartbeats, applies the other half). The
    /// difference of that round vanishes and updates applied since carry over.
    pub(super) async fn finish_reconcile(
        &mut self,
        peer: PeerId,
        round: u64,
        verdict: Verdict,
        theirs: Result<(Vec<f32>, f64), PeerError>,
    ) -> Result<(), PeerError> {
        let (theirs, drift) = theirs?;
        let Some(mark) = self.marks.get(round).filter(|m| m.sealed) else {
            return Err(PeerError::Sync(format!(
                "this peer no longer remembers its replica of round {round}"
            )));
        };
        let mine = mark.params.clone();
        if self.config.drift_tolerance.is_none_or(|t| drift <= t) {
            debug!("replica of {peer} at round {round} is {drift:.1e} from ours: close enough");
            return Ok(());
        }
        let share = match verdict {
            Verdict::Adopt => 1.0,
            Verdict::Halfway => 0.5,
            Verdict::Keep => return Ok(()),
        };
        let mut theta = self.trainer.parameters_async().await?;
        let since = self.book.round().saturating_sub(round);
        pull_replica(&mut self.outer, &mut theta, &mine, &theirs, share, since);
        self.trainer.set_parameters(&theta)?;
        // The marks since move with θ; their fingerprints are taken again as they seal again.
        self.marks.shift(round, &mine, &theirs, share);
        self.snapshots.marks(&self.marks);
        self.sealed.split_off(&round);
        self.quiet_until = self.book.round() + RECONCILE_BACKOFF;
        info!(
            "moved {share} of the way to {peer}'s replica of round {round} (it was {drift:.1e} from ours)"
        );
        self.reconciled_pending += 1;
        crate::report::count_peer(&mut self.summary.reconciled_with, peer.to_base58(), 1);
        Ok(())
    }
}
