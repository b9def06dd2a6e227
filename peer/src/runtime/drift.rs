//! Replica fingerprints and pairwise averaging: every round's θ is marked with a checksum and a
//! drift sketch, heartbeats carry them, and a partner whose sketch is too far from ours at the
//! same round is averaged with (each side moves halfway).

use std::sync::Arc;

use futures::FutureExt;
use gradswarm_core::drift::{Verdict, pull_toward, relative_distance, verdict};
use gradswarm_core::topology::{decode_replica, encode_replica};
use gradswarm_core::wire::params_checksum;
use gradswarm_core::{DriftSketch, EncodeError, Heartbeat};
use gradswarm_net::PeerId;
use tracing::{debug, info, warn};

use super::{Mark, Peer};
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
        self.fingerprint = Some(fingerprint.clone());
        self.snapshots.fingerprint(fingerprint.clone());
        // Marks serve pairwise averaging (drift) and a new group's averaging.
        if self.config.drift_tolerance.is_none() && !self.averaging.to_partners_only() {
            return;
        }
        let params = Arc::new(params);
        self.snapshots.mark(round, params.clone(), self.max_marks);
        self.marks.retain(|m| m.fingerprint.round < round);
        self.marks.push_back(Mark {
            fingerprint,
            params,
        });
        while self.marks.len() > self.max_marks {
            self.marks.pop_front();
        }
        if let Some(oldest) = self.marks.front().map(|m| m.fingerprint.round) {
            self.votes = self.votes.split_off(&oldest);
        }
    }

    /// Measures how far `heartbeat`'s replica is from this one when both describe the same round
    /// with the same recent updates (a gap then is drift, not an update still on its way); the
    /// next report's `divergence` is the median of these, one per sender (a peer heartbeating
    /// often counts once).
    pub(super) fn measure_divergence(&mut self, from: PeerId, heartbeat: &Heartbeat) {
        let Some(mine) = &self.fingerprint else {
            return;
        };
        if mine.round != heartbeat.round || mine.applied != heartbeat.applied {
            return;
        }
        if let Some(d) = mine.sketch.relative_distance(&heartbeat.sketch)
            && (self.divergences.len() < MAX_DIVERGENCES || self.divergences.contains_key(&from))
        {
            self.divergences.insert(from, d);
        }
    }

    /// Takes in a heartbeat's fingerprint of its sender's replica as a vote on that round, and
    /// looks at the round again if this replica has marked it.
    pub(super) fn check_drift(&mut self, from: PeerId, heartbeat: &Heartbeat) {
        if self.config.drift_tolerance.is_none() || heartbeat.sketch.is_empty() {
            return;
        }
        let round = self.book.round();
        // Votes are kept for the rounds this peer holds marks of, and a horizon ahead.
        let oldest = self.marks.front().map_or(round, |m| m.fingerprint.round);
        if heartbeat.round < oldest || heartbeat.round > round + self.book.horizon() {
            return;
        }
        self.votes.entry(heartbeat.round).or_default().insert(
            from,
            Fingerprint {
                round: heartbeat.round,
                checksum: heartbeat.checksum,
                sketch: heartbeat.sketch.clone(),
                applied: heartbeat.applied,
            },
        );
        self.reconsider(heartbeat.round);
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
        let Some(mark) = self
            .marks
            .iter()
            .map(|m| &m.fingerprint)
            .find(|m| m.round == round)
        else {
            return;
        };
        let Some(votes) = self.votes.get(&round) else {
            return;
        };
        // Replicas whose recent updates differ from ours are still taking one in (it arrives as
        // a correction): averaging now would make the gap it closes permanent. They do not vote.
        let same: Vec<(&PeerId, &Fingerprint)> = votes
            .iter()
            .filter(|(_, v)| v.applied == mark.applied)
            .collect();
        let sketches: Vec<&DriftSketch> = same.iter().map(|(_, v)| &v.sketch).collect();
        let voters = self.contributors().count() + 1;
        let choice = same.iter().find_map(|&(peer, vote)| {
            if vote.checksum == mark.checksum
                || !self.askable(peer)
                || self.reconcile_after.get(peer).is_some_and(|&r| round < r)
            {
                return None;
            }
            match verdict(&mark.sketch, &vote.sketch, &sketches, voters, tolerance) {
                Verdict::Keep => None,
                v => Some((*peer, v, vote.checksum)),
            }
        });
        let Some((from, verdict, checksum)) = choice else {
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
                    .contributors()
                    .filter(|p| !votes.contains_key(p))
                    .filter(|p| partners.as_ref().is_none_or(|g| g.contains(p)))
                    .copied()
                    .collect();
                self.poll(round, silent);
            }
            return;
        };
        info!(
            "replica of {from} at round {round} is where the swarm agrees ({verdict:?}): fetching it"
        );
        self.reconcile_after
            .insert(from, self.book.round() + RECONCILE_BACKOFF);
        let net = self.net.clone();
        let run_id = self.config.run_id.clone();
        let (model_hash, n) = (self.model_hash, self.trainer.num_params());
        self.reconciling = Some(
            async move {
                let theirs = state::fetch_params(&net, from, &run_id, model_hash, round, n)
                    .await
                    .and_then(|theta| {
                        // What it serves must be what it signed in its heartbeat.
                        if params_checksum(&theta) == checksum {
                            Ok(theta)
                        } else {
                            Err(PeerError::Sync(format!(
                                "{from} served a replica of round {round} other than its heartbeat's"
                            )))
                        }
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
                let answers = futures::future::join_all(
                    peers
                        .iter()
                        .map(|&p| state::fetch_fingerprint(&net, p, &run_id, model_hash, round)),
                )
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
        let oldest = self.marks.front().map_or(round, |m| m.fingerprint.round);
        if round < oldest {
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
        theirs: Result<Vec<f32>, PeerError>,
    ) -> Result<(), PeerError> {
        let theirs = theirs?;
        let Some(mark) = self.marks.iter().find(|m| m.fingerprint.round == round) else {
            return Err(PeerError::Sync(format!(
                "this peer no longer remembers its replica of round {round}"
            )));
        };
        let mine = mark.params.clone();
        let drift = relative_distance(&mine, &theirs);
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
        pull_toward(&mut theta, &mine, &theirs, share);
        self.trainer.set_parameters(&theta)?;
        self.quiet_until = self.book.round() + RECONCILE_BACKOFF;
        info!(
            "moved {share} of the way to {peer}'s replica of round {round} (it was {drift:.1e} from ours)"
        );
        self.reconciled_pending += 1;
        crate::report::count_peer(&mut self.summary.reconciled_with, peer.to_base58(), 1);
        Ok(())
    }
}
