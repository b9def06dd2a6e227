//! Replica fingerprints and pairwise averaging: every round's θ is marked with a checksum and a
//! drift sketch, heartbeats carry them, and a partner whose sketch is too far from ours at the
//! same round is averaged with (each side moves halfway).

use std::sync::Arc;

use futures::FutureExt;
use gradswarm_core::drift::{pull_halfway, relative_distance};
use gradswarm_core::wire::params_checksum;
use gradswarm_core::{DriftSketch, Heartbeat};
use gradswarm_net::PeerId;
use tracing::{debug, info};

use super::{Fingerprint, Mark, Peer};
use crate::error::PeerError;
use crate::state;

/// After a pairwise averaging, heartbeats of the next this many rounds are not looked at: they
/// may predate the partners' halves of the averaging, and acting on them would overshoot.
const RECONCILE_BACKOFF: u64 = 3;

impl Peer {
    /// Remembers this replica, θ = `params`, at the start of the open round, for pairwise
    /// averaging later.
    pub(super) fn mark(&mut self, params: Vec<f32>) {
        let round = self.book.round();
        let fingerprint = Fingerprint {
            round,
            checksum: params_checksum(&params),
            sketch: DriftSketch::of(&params),
            applied: self.book.applied_digest(),
        };
        self.fingerprint = Some(fingerprint.clone());
        if self.config.drift_tolerance.is_none() {
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
    }

    /// Starts a pairwise averaging with `from` when its heartbeat's sketch puts its replica
    /// further from ours, at the same round, than the drift tolerance.
    pub(super) fn check_drift(&mut self, from: PeerId, heartbeat: &Heartbeat) {
        let Some(tolerance) = self.config.drift_tolerance else {
            return;
        };
        // State comes from a peer we are connected to, one transfer at a time.
        if !self.running || self.reconciling.is_some() || !self.joined.contains(&from) {
            return;
        }
        if heartbeat.round < self.quiet_until
            || self
                .reconcile_after
                .get(&from)
                .is_some_and(|&r| heartbeat.round < r)
        {
            return;
        }
        let Some(mark) = self
            .marks
            .iter()
            .map(|m| &m.fingerprint)
            .find(|m| m.round == heartbeat.round)
        else {
            if heartbeat.round > self.book.round() {
                self.early_heartbeats.insert(from, heartbeat.clone());
            }
            return;
        };
        if mark.checksum == heartbeat.checksum {
            return;
        }
        if mark.applied != heartbeat.applied {
            // Different recent updates: one of them is still on its way to one replica, and
            // arrives as a correction. Averaging now would make the gap it closes permanent.
            return;
        }
        let Some(drift) = mark.sketch.relative_distance(&heartbeat.sketch) else {
            return;
        };
        if drift <= tolerance {
            return;
        }
        info!(
            "replica of {from} is ~{drift:.1e} from ours at round {}: averaging with it",
            heartbeat.round
        );
        self.reconcile_after
            .insert(from, self.book.round() + RECONCILE_BACKOFF);
        let net = self.net.clone();
        let run_id = self.config.run_id.clone();
        let (model_hash, n) = (self.model_hash, self.trainer.num_params());
        let round = heartbeat.round;
        self.reconciling = Some(
            async move {
                let theirs = state::fetch_params(&net, from, &run_id, model_hash, round, n).await;
                (from, round, theirs)
            }
            .boxed(),
        );
    }

    /// Applies this peer's half of a pairwise averaging with `peer` (docs/architecture.md: replicas that
    /// drift reconcile pairwise): θ moves halfway to the partner's replica, as of `round`. The
    /// partner, having seen the same two heartbeats, applies the other half with our θ of the
    /// same round, so the difference of that round vanishes and updates applied since carry over.
    pub(super) async fn finish_reconcile(
        &mut self,
        peer: PeerId,
        round: u64,
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
        let mut theta = self.trainer.parameters_async().await?;
        pull_halfway(&mut theta, &mine, &theirs);
        self.trainer.set_parameters(&theta)?;
        self.quiet_until = self.book.round() + RECONCILE_BACKOFF;
        info!("averaged with {peer}'s replica of round {round} (it was {drift:.1e} from ours)");
        self.reconciled_pending += 1;
        *self
            .summary
            .reconciled_with
            .entry(peer.to_base58())
            .or_default() += 1;
        Ok(())
    }
}
