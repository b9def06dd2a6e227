//! One round: local steps from the round's θ, encode with error feedback, publish, collect the
//! others' updates until the round can close, then apply the aggregate (and late corrections of
//! earlier rounds) through the outer optimizer.

use std::sync::Arc;
use std::time::Duration;

use gradswarm_core::wire::params_checksum;
use gradswarm_core::{
    Accepted, Correction, DecodedUpdate, DropReason, Factors, RngKey, Screened, ShardKey, Update,
    screen_round,
};
use gradswarm_model::ModelError;
use gradswarm_net::PeerId;
use tracing::{debug, warn};
use web_time::Instant;

use super::Peer;
use crate::error::PeerError;
use crate::report::RoundReport;

/// An update a screen dropped: its sender's peer id bytes, and why.
type Dropped = (Vec<u8>, DropReason);

/// Why the screens dropped `peer`'s update, if they did.
fn verdict(dropped: &[Dropped], peer: &[u8]) -> Option<DropReason> {
    dropped
        .iter()
        .find(|(p, _)| p == peer)
        .map(|&(_, reason)| reason)
}

/// A late correction of an earlier round: how θ and the marks after it move.
struct LateMove {
    /// The round it corrects.
    round: u64,
    /// How many rounds were applied since that round's aggregate.
    ago: u64,
    /// Its aggregate after the late updates minus before (None: nothing counts either way).
    delta: Option<Vec<f32>>,
    /// What it changes the applied digest by ([`Correction::applied_change`]).
    applied_change: u64,
}

impl Peer {
    /// When a round's collection ends: `deadline_factor` median compute times after `publish`, within `min_wait`..`max_wait`.
    pub(super) fn deadline_after(&self, publish: Instant) -> Instant {
        let median = self.median_compute_s();
        let wait = Duration::from_secs_f64((median * self.config.deadline_factor).max(0.0))
            .clamp(self.config.min_wait, self.config.max_wait);
        publish + wait
    }

    /// The median of this peer's last compute times (seconds; 0 before the first), by which
    /// waits for others scale with the pace of its rounds.
    pub(super) fn median_compute_s(&self) -> f64 {
        let mut times: Vec<f64> = self.compute_times.iter().copied().collect();
        times.sort_by(f64::total_cmp);
        times.get(times.len() / 2).copied().unwrap_or(0.0)
    }

    /// Local steps from the anchor θ_r (or ahead of it, see `feedback_lookahead`); returns
    /// Δ = start − θ_local, and θ is reset to the anchor.
    pub(super) async fn compute(&mut self) -> Result<(Vec<f32>, f32, u64), PeerError> {
        let anchor = self.trainer.parameters_async().await?;
        let mut keys: Vec<ShardKey> = self
            .contributors()
            .map(|p| ShardKey::of(&p.to_bytes()))
            .chain([ShardKey::of(&self.me.to_bytes())])
            .collect();
        keys.sort_by_key(|k| k.value());
        let me = ShardKey::of(&self.me.to_bytes());
        let seed = self.trainer.config().seed;
        let corpus = self.corpus.clone();
        let sampler = corpus.sampler(me, &keys, 0, seed);
        self.trainer
            .set_replicas(if self.config.global_second_moment {
                keys.len()
            } else {
                1
            });
        let ahead = if self.config.feedback_lookahead {
            // This peer's share of the mean, as if every live peer's update came in.
            let c = self.config.outer.eventual_step() / keys.len() as f32;
            let ahead = self.feedback.ahead_of(&anchor, c)?;
            self.trainer.set_parameters(&ahead)?;
            Some(ahead)
        } else {
            None
        };
        let reports = match self
            .trainer
            .local_steps_async(&sampler, self.config.steps_per_round())
            .await
        {
            Ok(reports) => reports,
            Err(e) => {
                // A diverged step leaves θ where the steps before it (or the look-ahead) put
                // it: back to the anchor, so this replica stays the swarm's.
                self.trainer.set_parameters(&anchor)?;
                return Err(e.into());
            }
        };
        let local = self.trainer.parameters_async().await?;
        self.trainer.set_parameters(&anchor)?;
        let start = ahead.as_deref().unwrap_or(&anchor);
        let delta = start.iter().zip(&local).map(|(a, l)| a - l).collect();
        let loss = reports.iter().map(|r| r.loss).sum::<f32>() / reports.len().max(1) as f32;
        let samples = reports.len() as u64 * self.trainer.config().batch_size as u64;
        Ok((delta, loss, samples))
    }

    /// The aggregate of a round's updates (None for an empty round, or the rule refusing it), and
    /// the peers whose updates the screens dropped from it, with why: the norm screen first, then
    /// the direction screen over what the norm screen kept, scaled as it counts.
    pub(super) fn aggregate(
        &mut self,
        round: u64,
        entries: &[Accepted<Arc<DecodedUpdate>>],
    ) -> (Option<Vec<f32>>, Vec<Dropped>) {
        let mut screened = self.screen(entries);
        if self.judges_standing() {
            // A round is weighed with the standing as it stood when it closed, corrections too:
            // by the rounds sealed by then.
            let sealed = round.checked_sub(self.book.horizon() + 1);
            let factors = self.factors.entry(round).or_insert_with(|| {
                sealed.map_or_else(Factors::default, |upto| self.standing.factors(upto))
            });
            factors.weigh(entries, &mut screened);
        }
        let dropped = screened
            .dropped
            .iter()
            .filter_map(|&(i, reason)| Some((entries.get(i)?.peer.clone(), reason)))
            .collect();
        if screened.kept.is_empty() {
            return (None, dropped);
        }
        match self.aggregator.aggregate(&screened.inputs()) {
            Ok(aggregate) => (Some(aggregate), dropped),
            Err(e) => {
                warn!("round {round}: no aggregate ({e})");
                (None, dropped)
            }
        }
    }

    /// Counts the updates of a round that count (in the report and in whose counted), and the
    /// ones the screens `dropped` as drops.
    fn count_all<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a Accepted<Arc<DecodedUpdate>>>,
        dropped: &[Dropped],
        report: &mut RoundReport,
    ) {
        for accepted in entries {
            match verdict(dropped, &accepted.peer) {
                Some(reason) => {
                    debug!("round {}: an update dropped: {reason}", accepted.round);
                    self.record_drop(reason);
                }
                None => self.count_from(accepted, report),
            }
        }
    }

    /// Takes back what [`Peer::count_from`] counted for an update that no longer counts.
    fn uncount(&mut self, accepted: &Accepted<Arc<DecodedUpdate>>) {
        if accepted.peer != self.me.to_bytes() {
            self.ledger.uncount(&accepted.peer, accepted.samples);
            if let Some(n) = self
                .summary
                .counted_from
                .get_mut(&peer_name(&accepted.peer))
            {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Counts an accepted update in the round's report and in whose updates counted.
    pub(super) fn count_from(
        &mut self,
        accepted: &Accepted<Arc<DecodedUpdate>>,
        report: &mut RoundReport,
    ) {
        report.updates += 1;
        report.staleness.push(accepted.tau);
        if accepted.peer != self.me.to_bytes() {
            crate::report::count_peer(&mut self.summary.counted_from, peer_name(&accepted.peer), 1);
            self.ledger.count(&accepted.peer, accepted.samples);
        }
    }

    /// Closes the open round: late parts of earlier rounds are applied as if they had been in time,
    /// then this round's aggregate (θ is read and written once, whatever the number of parts).
    pub(super) async fn close_round(&mut self, report: &mut RoundReport) -> Result<(), PeerError> {
        let closed = self.book.close();
        // Wire forms of rounds sealed now are no longer served to joiners.
        let book = &self.book;
        self.recent
            .retain(|(r, _), _| *r >= book.round() || book.holds(*r));
        self.drops.merge(&closed.dropped);
        self.drops_pending.merge(&closed.dropped);
        report.round = closed.round;
        // Rounds correction.round ..= closed.round − 1 have been applied since each correction's.
        let late = self.correction_moves(&closed.corrections, closed.round, report);
        let (aggregate, dropped) = self.aggregate(closed.round, &closed.accepted);
        self.count_all(&closed.accepted, &dropped, report);
        if let Some(factors) = self.factors.get(&closed.round) {
            report.weighed_down = factors.reduced().map(|(p, d)| (peer_name(p), d)).collect();
            let judged: Vec<(String, f32)> = factors
                .distances()
                .map(|(p, d)| (peer_name(p), d))
                .collect();
            if !judged.is_empty() {
                debug!("round {}: standing distances {judged:?}", closed.round);
            }
        }
        self.take_in(&closed.sealed);
        self.apply_moves(&late, aggregate.as_deref()).await
    }

    /// Takes the rounds a close sealed into standing: their sets are final, the same at every
    /// replica that took the same updates.
    fn take_in(&mut self, sealed: &[(u64, Vec<Accepted<Arc<DecodedUpdate>>>)]) {
        let Some(&(last, _)) = sealed.last() else {
            return;
        };
        self.factors = self.factors.split_off(&(last + 1));
        if !self.judges_standing() {
            return;
        }
        for (round, set) in sealed {
            let screened = self.screen(set);
            self.standing.observe(*round, set, &screened);
        }
    }

    /// Whether this peer weighs updates by their senders' standing: configured, and under
    /// broadcast only. A grouping of 20 rounds leaves its members at most 10 sealed rounds they
    /// all held, and judging on those cost groups of 8 at 256 simulated peers under crafting
    /// 381 rounds to the target against 321 without (bench/README.md, "Standing").
    pub(super) fn judges_standing(&self) -> bool {
        self.config.standing.is_some() && !self.averaging.to_partners_only()
    }

    /// A round's set through the norm screen, then the direction screen.
    pub(super) fn screen(&self, entries: &[Accepted<Arc<DecodedUpdate>>]) -> Screened {
        screen_round(
            entries,
            self.trainer.num_params(),
            &self.config.norm_screen,
            self.config.direction_screen.as_ref(),
        )
    }

    /// Applies the late updates that came in since the last close, without closing a round (a
    /// peer past its last round); they count in `report`.
    pub(super) async fn settle(&mut self, report: &mut RoundReport) -> Result<(), PeerError> {
        let (corrections, dropped) = self.book.settle();
        self.drops.merge(&dropped);
        self.drops_pending.merge(&dropped);
        // Every round before the open one has been applied.
        let late = self.correction_moves(&corrections, self.book.round(), report);
        self.apply_moves(&late, None).await
    }

    /// What each correction changes: its round's aggregate after the late updates minus before,
    /// and how many rounds were applied since (`applied_until` − its round).
    fn correction_moves(
        &mut self,
        corrections: &[Correction<Arc<DecodedUpdate>>],
        applied_until: u64,
        report: &mut RoundReport,
    ) -> Vec<LateMove> {
        let mut moves = Vec::new();
        for correction in corrections {
            let (after, dropped) = self.aggregate(correction.round, &correction.after);
            let (before, dropped_before) = self.aggregate(correction.round, &correction.before);
            let recount = correction.recount(
                |peer| verdict(&dropped_before, peer),
                |peer| verdict(&dropped, peer),
            );
            for (late, reason) in recount.dropped {
                debug!("round {}: a late update dropped: {reason}", late.round);
                self.record_drop(reason);
            }
            for counted in recount.counted {
                self.count_from(counted, report);
            }
            for (uncounted, reason) in recount.uncounted {
                self.uncount(uncounted);
                if let Some(reason) = reason {
                    self.record_drop(reason);
                }
            }
            // An equivocator's update taken back can leave a round with nothing that counts.
            let delta = match (after, before) {
                (Some(mut delta), Some(before)) => {
                    delta.iter_mut().zip(&before).for_each(|(d, b)| *d -= b);
                    Some(delta)
                }
                (Some(after), None) => Some(after),
                (None, Some(before)) => Some(before.into_iter().map(|b| -b).collect()),
                (None, None) => None,
            };
            moves.push(LateMove {
                round: correction.round,
                ago: applied_until - correction.round,
                delta,
                applied_change: correction.applied_change(),
            });
        }
        moves
    }

    /// Moves θ through the outer optimizer by each late correction, then by the closed round's
    /// `aggregate` (if any), and corrects the marks of the rounds after each late one the same
    /// way (θ is read and written once).
    async fn apply_moves(
        &mut self,
        late: &[LateMove],
        aggregate: Option<&[f32]>,
    ) -> Result<(), PeerError> {
        let deltas = late.iter().filter_map(|l| l.delta.as_deref());
        if deltas.clone().next().is_some() || aggregate.is_some() {
            let mut theta = self.trainer.parameters_async().await?;
            if let Some(delta) = deltas.chain(aggregate).find(|d| d.len() != theta.len()) {
                return Err(ModelError::ParamLength {
                    got: delta.len(),
                    expected: theta.len(),
                }
                .into());
            }
            for l in late {
                if let Some(delta) = &l.delta {
                    self.outer.apply_late(&mut theta, delta, l.ago);
                }
            }
            if let Some(aggregate) = aggregate {
                self.outer.apply(&mut theta, aggregate);
            }
            self.trainer.set_parameters(&theta)?;
        }
        for l in late {
            self.marks
                .correct(l.round, l.delta.as_deref(), l.applied_change);
        }
        if !late.is_empty() {
            self.snapshots.marks(&self.marks);
        }
        Ok(())
    }

    /// Ends a closed round: evaluation, the new mark, drift checks held for it, snapshots for joiners, a heartbeat, the observer.
    pub(super) async fn finish_report(&mut self, mut report: RoundReport) -> Result<(), PeerError> {
        let params = self.trainer.parameters_async().await?;
        report.checksum = params_checksum(&params);
        report.peers = self.live().count();
        report.samples = self.samples;
        report.bytes_down = std::mem::take(&mut self.bytes_down);
        self.bytes_sent += report.bytes_up;
        self.bytes_received += report.bytes_down;
        report.credit = self.own_credit();
        let mut divergences: Vec<f64> = std::mem::take(&mut self.divergences)
            .into_values()
            .collect();
        divergences.sort_by(f64::total_cmp);
        report.divergence = divergences.get(divergences.len() / 2).copied();
        report.drops = std::mem::take(&mut self.drops_pending);
        report.reconciled = std::mem::take(&mut self.reconciled_pending);
        report.arrived_ms = self
            .arrivals
            .iter()
            .filter(|(round, _, _)| *round == report.round)
            .map(|(_, from, at)| (from.to_base58(), *at))
            .collect();
        self.arrivals.retain(|(round, _, _)| *round > report.round);
        if std::mem::take(&mut self.arrivals_overflowed) {
            report.awaited_in = false;
        }
        if self.config.eval_every > 0 && (report.round + 1).is_multiple_of(self.config.eval_every) {
            let val_loss = self.trainer.evaluate_async(&self.val).await?;
            self.last_val_loss = val_loss as f32;
            report.val_loss = Some(val_loss);
        }
        debug!(
            "round {} closed: loss {:.3}, {} updates, staleness {:?}, {} live peers, a swarm of {}",
            report.round,
            report.loss,
            report.updates,
            report.staleness,
            report.peers,
            self.swarm_size()
        );
        self.mark(params);
        let round = self.book.round();
        self.snapshots.set_round(round);
        if self.snapshots.wanted() {
            let state = self.snapshot().await?;
            self.snapshots.publish(&state);
            debug!("snapshot of round {} ready for joiners", state.round);
        }
        self.heartbeat_at_close();
        if let Some(observer) = self.observer.as_mut() {
            let state = super::local_state(&self.feedback, &self.outer);
            observer(&report, &self.trainer, &state);
        }
        self.summary.keep(report);
        if self
            .checkpoints
            .as_ref()
            .is_some_and(|(every, _)| *every > 0 && round.is_multiple_of(*every))
        {
            self.checkpoint().await;
        }
        self.forget_the_long_gone();
        Ok(())
    }

    /// One round: local work, catch up, encode, publish, collect, aggregate, apply; then, below
    /// a duty cycle of 1, rest. A paused peer sits the round out instead.
    pub(super) async fn run_round(&mut self) -> Result<(), PeerError> {
        if self.pause.is_paused() != self.sitting_out {
            // Paused or resumed: partners learn at once whether to wait for this peer.
            self.sitting_out = self.pause.is_paused();
            self.heartbeat();
        }
        if self.sitting_out {
            return self.sit_out().await;
        }
        if self.config.duty_cycle < 1.0 {
            // After a rest the swarm is rounds ahead: start from where it is.
            self.catch_up(false).await?;
        }
        let base = self.book.round();
        let averaging = Instant::now();
        let (average_fetch_s, regroup) = if self.averaging.averages_parameters_at(base) {
            let (fetch_s, regroup) = self.average_with_group(base).await?;
            (fetch_s, Some(regroup))
        } else {
            (0.0, None)
        };
        let average_s = averaging.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let floor = t0 + self.config.round_floor;
        let computed = match self.compute().await {
            Ok(c) => Some(c),
            Err(PeerError::Model(ModelError::Diverged { step, loss })) => {
                // A NaN or infinite loss: send nothing this round, keep θ and the residual.
                warn!("local step {step} diverged (loss {loss}); skipping this round's update");
                None
            }
            Err(e) => return Err(e),
        };
        let compute_s = t0.elapsed().as_secs_f64();
        if self.config.slowdown > 1.0 {
            let extra = compute_s * (self.config.slowdown - 1.0);
            futures_timer::Delay::new(Duration::from_secs_f64(extra)).await;
        }
        self.compute_times.push_back(t0.elapsed().as_secs_f64());
        if self.compute_times.len() > 9 {
            self.compute_times.pop_front();
        }

        // Take in what arrived while computing; if the swarm moved on, close the rounds we missed.
        while let Some(event) = self.next_event(Instant::now()).await {
            self.on_event(event);
        }
        self.catch_up(false).await?;

        let mut report = RoundReport {
            compute_s,
            average_s,
            average_fetch_s,
            regroup,
            ..Default::default()
        };
        let t1 = Instant::now();
        let trained = computed.is_some();
        if let Some((delta, loss, samples)) = computed {
            self.last_loss = loss;
            if compute_s > 0.0 {
                let tokens = samples as f64 * self.trainer.model_config().context as f64;
                self.tokens_per_s = (tokens / compute_s) as f32;
            }
            report.loss = loss;
            self.samples += samples;
            let round = self.book.round();
            let key = RngKey::new(shard_seed(&self.me), round);
            let payload = self
                .feedback
                .encode_async(self.codec.as_mut(), &delta, key)
                .await?;
            let update = Update {
                run_id: self.config.run_id.clone(),
                model_hash: self.model_hash,
                peer_id: self.me.to_bytes(),
                round,
                base_round: base,
                samples,
                codec: self.codec.descriptor(),
                payload,
            };
            // Our own update counts as the others will see it: D(C(u)), not Δ.
            let own = update
                .decode_payload(&self.limits)
                .map_err(|e| PeerError::Sync(format!("own update does not decode: {e}")))?;
            let digest = update.content_digest();
            match self
                .book
                .offer(&update.peer_id, round, base, samples, digest, Arc::new(own))
            {
                Ok(()) => {
                    let key = (round, update.peer_id.clone());
                    self.recent.insert(key, Arc::new(update.clone()));
                }
                Err(reason) => self.record_drop(reason),
            }
            let partners = self
                .averaging
                .to_partners_only()
                .then(|| self.commit_partners(round));
            for update in self.edge.update(update, &delta) {
                report.bytes_up += match &partners {
                    Some(to) => self.net.push_update(update, to.clone())?,
                    None => self.net.publish_update(update)?,
                } as u64;
            }
            self.published.push_back(round);
            if self.published.len() > 64 {
                self.published.pop_front();
            }
        }
        report.encode_s = t1.elapsed().as_secs_f64();
        if trained {
            report.sent_at_ms = Some(super::events::unix_ms());
        }

        // Collect until every partner's update is in (every live peer's, with broadcast),
        // someone moved on, or the deadline.
        let t2 = Instant::now();
        let deadline = self.deadline_after(t2);
        loop {
            let round = self.book.round();
            let awaited = self.awaited(round);
            let partners: Vec<&[u8]> = awaited.iter().map(Vec::as_slice).collect();
            if self.book.has_all(partners.iter().copied()) {
                report.awaited_in = true;
                break;
            }
            if self.swarm_moved_on() || self.stopped {
                break;
            }
            match self.next_event(deadline).await {
                Some(event) => self.on_event(event),
                None if self.stopped => break,
                None if Instant::now() >= deadline => {
                    report.waited_out = true;
                    report.missing = self.count_missed(&partners);
                    break;
                }
                None => {}
            }
        }
        report.network_s = t2.elapsed().as_secs_f64();
        // Paced (see `PeerConfig::round_floor`): what arrives meanwhile is taken in.
        self.idle_until(floor, |_| false).await;
        self.close_round(&mut report).await?;
        self.finish_report(report).await?;
        if trained && self.config.duty_cycle < 1.0 {
            // Train at most that share of the time: the round lasts compute / duty cycle.
            let cycle = Duration::from_secs_f64(compute_s / self.config.duty_cycle);
            self.idle_until(t0 + cycle, |_| false).await;
        }
        Ok(())
    }

    /// Closes the rounds the swarm moved on from, each reported as caught up (and as `skipped`
    /// when this peer sat them out paused).
    async fn catch_up(&mut self, skipped: bool) -> Result<(), PeerError> {
        while self.swarm_moved_on() {
            let mut report = RoundReport {
                loss: f32::NAN,
                catch_up: true,
                skipped,
                ..Default::default()
            };
            self.close_round(&mut report).await?;
            self.finish_report(report).await?;
        }
        Ok(())
    }

    /// A paused peer's turn: it takes in events and heartbeats until the swarm moves on (or
    /// [`SIT_OUT_POLL`] passes, or it is resumed), then closes the rounds it sat out.
    async fn sit_out(&mut self) -> Result<(), PeerError> {
        let until = Instant::now() + SIT_OUT_POLL;
        self.idle_until(until, |p| !p.pause.is_paused() || p.swarm_moved_on())
            .await;
        self.catch_up(true).await
    }

    /// Takes in events until `until`, a stop, or `done` says so, heartbeating every
    /// `heartbeat_every` (at least [`IDLE_HEARTBEAT_MIN`] apart): a resting or paused peer must
    /// still be heard, or the others take it for gone.
    async fn idle_until(&mut self, until: Instant, done: impl Fn(&Self) -> bool) {
        let every = self.heartbeat_every().max(IDLE_HEARTBEAT_MIN);
        while !self.stopped && Instant::now() < until && !done(self) {
            let beat = self.last_heartbeat.map_or(until, |t| t + every);
            if let Some(event) = self.next_event(until.min(beat)).await {
                self.on_event(event);
            }
            if self.last_heartbeat.is_none_or(|t| t.elapsed() >= every) {
                self.heartbeat();
            }
        }
    }
}

/// How long a paused peer waits for the swarm to move on before looking again.
const SIT_OUT_POLL: Duration = Duration::from_secs(1);

/// The shortest gap between a resting peer's heartbeats (runs that heartbeat every round ask 0).
const IDLE_HEARTBEAT_MIN: Duration = Duration::from_millis(250);

impl Peer {
    /// Whether a majority of the peers this one waits for (its group, under group averaging:
    /// the only updates it hears) have published for a later round
    /// ([`gradswarm_core::RoundBook::moved_on`]): then the rounds in between are closed.
    fn swarm_moved_on(&self) -> bool {
        let others = self.awaited(self.book.round());
        self.book
            .moved_on(others.iter().map(Vec::as_slice))
            .is_some_and(|r| r > self.book.round())
    }
}

/// A peer id's bytes as reports name it (base58).
fn peer_name(bytes: &[u8]) -> String {
    PeerId::from_bytes(bytes)
        .map(|p| p.to_base58())
        .unwrap_or_else(|_| "?".into())
}

/// A per-peer seed for the codec's stochastic rounding, so peers round independently.
fn shard_seed(peer: &PeerId) -> u64 {
    ShardKey::of(&peer.to_bytes()).value()
}
