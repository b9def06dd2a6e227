//! Group averaging in the round loop ([`gradswarm_core::Groups`]): a peer's update goes to its
//! group only, updates from outside its group do not count, and when the groups change the new
//! group first averages its members' parameters, so that what one group learned spreads through
//! the swarm as groups mix.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use gradswarm_core::topology::{REPLICA_CLIP, decode_replica, encode_replica};
use gradswarm_core::{DriftSketch, EncodeError, drift, median_clipped_mean};
use gradswarm_net::{NetError, NetHandle, PeerId};
use tracing::{debug, info, warn};
use web_time::Instant;

use super::Peer;
use crate::error::PeerError;
use crate::report::RegroupReport;
use crate::state;

mod held;
use held::{Asked, fetch_held_replica};

/// How often a partner that has not reached the regrouping round yet is asked again.
const MARK_POLL: Duration = Duration::from_millis(50);

/// How far (relative, on the drift sketch) a replica served to the group may lie from the
/// fingerprint its sender gave for that round: its coarse rounding
/// ([`gradswarm_core::topology::REPLICA_HEADROOM`]) moves it by about 4 %, which the sketch
/// reads to within a quarter; more is a replica other than the one the sender trained on
/// (other groups' lie 40–55 % away).
const REPLICA_TOLERANCE: f64 = 0.08;

/// How far (relative) a served replica's norm may lie from each holder's fingerprint's norm. A
/// sketch of 32 buckets cannot see what cancels within a bucket, so a replica with a large
/// vector hidden in that null space would match the holders' sketches; its norm does not
/// (rounding moves an honest replica's norm by ~0.1 %, members of one holding differ by
/// less than `SAME_REPLICA`). What still hides, with the sketch's 8 %, is a replica αθ + v with
/// α ≥ 0.92 and ‖v‖ up to √(1.02² − 0.92²) ≈ 44 % of ‖θ‖; [`REPLICA_REACH`] bounds it too.
const REPLICA_NORM_TOLERANCE: f64 = 0.02;

/// How far (exact, relative to the norm of this peer's own replica) a replica taken may lie from
/// this peer's own: honest old groups' replicas lay at most 0.59 apart at 32 peers of the small
/// model regrouped every 20 rounds, and 0.77 at 8 peers of the default model regrouped every 40
/// (`RegroupReport::max_reach`, bench/README.md). A replica farther is refused, so whatever a
/// partner serves moves its group's mean by a bounded share of ‖θ‖, never by an arbitrary vector.
const REPLICA_REACH: f64 = 2.0;

/// How close (relative, on the drift sketch) two members' replicas must lie to count as one old
/// group's, fetched once: members of one group differ by the few updates some took late, far
/// below this; replicas of different groups lay 0.4–0.55 apart at 32 peers in groups of 4.
const SAME_REPLICA: f64 = 0.005;

/// How far (relative, on the keyed sketch) a holder's check of its own replica may read from a
/// replica another holder served, for the holder to support it ([`supports`]). Both are 6-bit
/// roundings of replicas within [`SAME_REPLICA`] of each other, whose rounding then differs by
/// ~1.1 % (measured on 200 000 synthetic weights; 1.8 % at twice that spread). A vector a liar
/// hides from the public sketch shows here at its size, so what it can still hide is ~4 % of ‖θ‖
/// (up to ~6 % on an unlucky key), not ~44 %.
const CHECK_TOLERANCE: f64 = 0.04;

/// How long a holder's keyed check may take: one small request, answered after a pass over θ.
/// Past it the holder does not support the replica served and is fetched from itself.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// How long checks still out may come after the replica they check came (or as long as that
/// replica took, if longer): a check answered behind the holder's own uploads comes late.
const CHECK_GRACE: Duration = Duration::from_secs(1);

/// How long before the regrouping's deadline fetching a holding's replicas stops, so that the
/// replicas taken are kept while a later fetch from another holder runs late.
const FETCH_MARGIN: Duration = Duration::from_millis(200);

impl Peer {
    /// This peer's partners for `round` (its group's other members; every contributing peer
    /// under broadcast), as [`gradswarm_core::Averaging::partners`] draws them; once this peer
    /// acted on its group for `round` ([`Peer::commit_partners`]), that group.
    pub(super) fn partners_at(&self, round: u64) -> Vec<PeerId> {
        match self.committed.get(&round) {
            Some(group) => group.clone(),
            None => self.group_of(self.me, round),
        }
    }

    /// This peer's partners for `round`, kept from now on: the peers it regroups with and
    /// pushes its update to are the ones whose updates it counts and waits for, in that round
    /// and in every later look back at it. Drawn afresh each time, a round's group moved with
    /// the live set: a peer that lingered after the run while others left drew past rounds'
    /// groups anew and waited, until its linger ran out, for updates of peers that had been in
    /// another group then (the groups test's 60 s ends).
    pub(super) fn commit_partners(&mut self, round: u64) -> Vec<PeerId> {
        if let Some(group) = self.committed.get(&round) {
            return group.clone();
        }
        let group = self.group_of(self.me, round);
        if self.averaging.to_partners_only() {
            self.committed.insert(round, group.clone());
            // The rounds a late update can still correct, and no more.
            let oldest = self.book.round().saturating_sub(self.book.horizon() + 1);
            self.committed.retain(|&r, _| r >= oldest);
        }
        group
    }

    /// `peer`'s partners for `round` as this peer sees the swarm. Groups are drawn from every
    /// peer heard from within `peer_timeout`, not only those this peer waits for: a partner that
    /// missed rounds stays a partner (its updates count again, which is how it makes up for
    /// them), and two peers that waited differently still form the same groups.
    pub(super) fn group_of(&self, peer: PeerId, round: u64) -> Vec<PeerId> {
        let me = self.me;
        let heard: Vec<Vec<u8>> = if self.averaging.to_partners_only() {
            self.live()
                .filter(|p| **p != peer && **p != me)
                .map(|p| p.to_bytes())
                .chain((peer != me).then(|| me.to_bytes()))
                .collect()
        } else {
            self.contributors().map(|p| p.to_bytes()).collect()
        };
        self.averaging
            .partners(round, &peer.to_bytes(), &heard, self.swarm_size())
            .into_iter()
            .filter_map(|p| PeerId::from_bytes(p).ok())
            .collect()
    }

    /// The swarm's size as the peers agree on it ([`gradswarm_core::swarm_size`]): the median of
    /// this peer's count of the live peers and the last count of every peer it heard of, by
    /// which every peer draws as many groups. Not only the live peers' counts: a peer that took
    /// no events for a while (verifying a joiner's state) has heard from nobody lately, and
    /// would draw a single group from its own count of one.
    pub(super) fn swarm_size(&self) -> usize {
        let claims = self.peers.values().map(|s| s.heard);
        gradswarm_core::swarm_size(self.live().count() + 1, claims)
    }

    /// The peers whose updates for `round` this peer waits for: its partners that have not left
    /// too many rounds waiting ([`Peer::contributors`]).
    pub(super) fn awaited(&self, round: u64) -> Vec<Vec<u8>> {
        let partners = self.partners_at(round);
        self.contributors()
            .filter(|p| partners.contains(p))
            .map(|p| p.to_bytes())
            .collect()
    }

    /// Whether an update `from` sent for `round` may count here: always under broadcast; under
    /// group averaging only from a member of this peer's group for that round.
    pub(super) fn counts_update_of(&self, from: &PeerId, round: u64) -> bool {
        !self.averaging.to_partners_only() || self.partners_at(round).contains(from)
    }

    /// At a round where the groups change: θ becomes the mean of the group's replicas at the
    /// start of this round as encoded for the group ([`gradswarm_core::topology::
    /// encode_replica`], 6-bit levels, this peer's own too), summed in the order of their peer
    /// ids, so that every member that holds the same replicas computes the same θ. Members of
    /// one old group hold one replica (to within 0.5 %): it is fetched once, from one of them,
    /// and counts once per member, so a new group drawn from two old ones moves one replica to
    /// each member, not one from each partner. A partner still getting to `round` is waited for
    /// while its rounds move; one that stands still, gives no fingerprint, or whose replica
    /// nobody serves is left out, and the whole regrouping ends within five sixths of
    /// `peer_timeout`. Returns the seconds it took once every partner had reached `round`
    /// (fetching the replicas: what the network costs, not the wait for an old group that ran
    /// behind), and how it went.
    pub(super) async fn average_with_group(
        &mut self,
        round: u64,
    ) -> Result<(f64, RegroupReport), PeerError> {
        let partners = self.commit_partners(round);
        let mut report = RegroupReport {
            partners: partners.len() as u64,
            ..RegroupReport::default()
        };
        let mark = self.marks.newest().filter(|m| m.round == round);
        let print = self.fingerprint.as_ref().filter(|f| f.round == round);
        let (Some(mark), Some(print)) = (mark, print) else {
            warn!("no replica of round {round} marked; not averaging with the new group");
            report.unreached = report.partners;
            return Ok((0.0, report));
        };
        if partners.is_empty() {
            return Ok((0.0, report));
        }
        let (marked, checksum) = (mark.theta().to_vec(), print.checksum);
        let own_sketch = print.sketch.clone();
        let mine = encode_replica(&marked, round)
            .and_then(|bytes| {
                decode_replica(&bytes, marked.len())
                    .map_err(|e| EncodeError::Compress(e.to_string()))
            })
            .map_err(|e| PeerError::Sync(format!("own replica of round {round}: {e}")))?;
        let mine = Arc::new(mine);
        // A partner still getting to this round is waited for while its rounds move (an old
        // group that ran behind: a group of 5 fell 10 s behind one of 3 over 40 rounds on
        // shared cores; with this wait cut to 15 s, a CI run of the late joiner test failed);
        // one whose rounds stand still for `patience` is left out. Waiting for fingerprints
        // ends within two thirds of `peer_timeout`; the fetching then has until then or a
        // sixth of it after, whichever is later, so that a partner coming one round at a time
        // cannot leave it no time (heartbeats go on meanwhile, so nobody takes this peer for
        // gone).
        let reach_by = Instant::now() + self.config.peer_timeout * 2 / 3;
        let patience = self.regroup_patience();
        let (run_id, model_hash) = (self.config.run_id.clone(), self.model_hash);
        let prints = partners.iter().map(|&peer| {
            let (net, run_id) = (self.net.clone(), run_id.clone());
            async move {
                let print =
                    reached_fingerprint(&net, peer, &run_id, model_hash, round, patience).await;
                (peer, print)
            }
            .boxed()
        });
        let prints = self.drive_until(reach_by, prints.collect()).await;
        let reached = Instant::now();
        let deadline = reach_by.max(reached + self.config.peer_timeout / 6);
        // Who holds which replica: members of one old group hold one, to within the updates
        // some of them took late (bit-equal checksums were rare at 32 peers, so each peer
        // fetched one replica from every partner). Partners whose sketches lie within
        // `SAME_REPLICA` of each other form one holding, fetched once; those within it of this
        // peer's own hold its replica.
        let mut same: Vec<(PeerId, DriftSketch)> = Vec::new();
        let mut holdings: Vec<Vec<(PeerId, DriftSketch)>> = Vec::new();
        for (peer, print) in prints {
            let print = match print {
                // A fingerprint without a sketch names no replica that could be checked.
                Ok(print) if print.sketch.is_empty() => {
                    warn!("left {peer} out of the group's averaging at round {round}: no sketch");
                    continue;
                }
                Ok(print) => print,
                Err(e) => {
                    warn!("left {peer} out of the group's averaging at round {round}: {e}");
                    continue;
                }
            };
            let near = |a: &DriftSketch| one_replica(a, &print.sketch);
            if print.checksum == checksum || near(&own_sketch) {
                same.push((peer, print.sketch));
            } else if let Some(h) = holdings.iter_mut().find(|h| near(&h[0].1)) {
                h.push((peer, print.sketch));
            } else {
                holdings.push(vec![(peer, print.sketch)]);
            }
        }
        // Partners whose fingerprint did not come back by `reach_by` are left out too.
        let heard = same.len() + holdings.iter().map(Vec::len).sum::<usize>();
        report.unreached = report.partners.saturating_sub(heard as u64);
        let holdings_count = holdings.len() as u64;
        let me = self.me;
        // Everyone heard, this peer included: each holding's fetchers are those not in it.
        let members: Vec<PeerId> = std::iter::once(me)
            .chain(same.iter().map(|(p, _)| *p))
            .chain(holdings.iter().flatten().map(|(p, _)| *p))
            .collect();
        // Done a little before the regrouping's deadline, so that what was taken by then is
        // not cut off with what was not.
        let margin = FETCH_MARGIN.min(deadline.saturating_duration_since(Instant::now()) / 4);
        let by = deadline.checked_sub(margin).unwrap_or(deadline);
        let fetches = holdings.into_iter().map(|mut held| {
            let (net, run_id, own) = (self.net.clone(), run_id.clone(), mine.clone());
            // Holders in id order, and this peer's rank among the holding's fetchers: the
            // fetchers of one holding, which agree on both, ask its holders in turn, so that no
            // holder's uplink serves two while another's serves none (a replica is ~0.5 s of a
            // 10 Mbit/s uplink).
            held.sort_by_key(|(p, _)| *p);
            let mut fetchers: Vec<PeerId> = members
                .iter()
                .filter(|m| !held.iter().any(|(p, _)| p == *m))
                .copied()
                .collect();
            fetchers.sort();
            let rank = fetchers.iter().position(|f| *f == me).unwrap_or(0);
            async move {
                let asked = Asked {
                    net: &net,
                    rank,
                    run_id: &run_id,
                    model_hash,
                    round,
                    by,
                };
                let theta = fetch_held_replica(asked, &held, &own).await;
                (held, theta)
            }
            .boxed()
        });
        let fetched = self.drive_until(deadline, fetches.collect()).await;
        let mut replicas: Vec<(Vec<u8>, Arc<Vec<f32>>)> = std::iter::once(me)
            .chain(same.iter().map(|(p, _)| *p))
            .map(|p| (p.to_bytes(), mine.clone()))
            .collect();
        let mut served_holdings = 0;
        for (held, replica) in fetched {
            report.refused += replica.refused;
            report.unsupported += replica.unsupported;
            report.alone += replica.alone;
            report.outvoted += replica.outvoted;
            report.checked(replica.max_check);
            if let Some(e) = replica.failure {
                warn!("a replica left out of the group's averaging at round {round}: {e}");
            }
            if replica.unsupported > 0 {
                warn!(
                    "round {round}: {} of {} holders of one replica did not support the one served",
                    replica.unsupported,
                    held.len()
                );
            }
            served_holdings += u64::from(!replica.taken.is_empty());
            for taken in replica.taken {
                report.fetched += 1;
                report.took(Some(taken.fit.off), Some(taken.fit.reach));
                let theta = Arc::new(taken.theta);
                replicas.extend(
                    taken
                        .supporters
                        .iter()
                        .map(|p| (p.to_bytes(), theta.clone())),
                );
            }
        }
        // Holdings whose fetch failed, or that the deadline cut short, are left out.
        report.unfetched = holdings_count - served_holdings;
        report.averaged = replicas.len() as u64 - 1;
        if replicas.len() < 2 {
            return Ok((reached.elapsed().as_secs_f64(), report));
        }
        replicas.sort_by(|a, b| a.0.cmp(&b.0));
        let inputs: Vec<&[f32]> = replicas.iter().map(|(_, theta)| theta.as_slice()).collect();
        let clipped = median_clipped_mean(&inputs, REPLICA_CLIP)
            .map_err(|e| PeerError::Sync(format!("the group's mean at round {round}: {e}")))?;
        report.clipped = clipped.clipped as u64;
        let mean = clipped.mean;
        report.moved(drift::relative_distance(&marked, &mean));
        // Updates applied since the mark (none when this runs at the round's start) carry over.
        let mut theta = self.trainer.parameters_async().await?;
        for ((t, m), was) in theta.iter_mut().zip(&mean).zip(marked.iter()) {
            *t += m - was;
        }
        if let Some(at) = theta.iter().position(|v| !v.is_finite()) {
            // Cannot come of replicas within reach of a finite θ; kept as the last guard of θ.
            warn!("round {round}: the group's mean is not finite at {at}; θ kept");
            report.averaged = 0;
            return Ok((reached.elapsed().as_secs_f64(), report));
        }
        self.trainer.set_parameters(&theta)?;
        info!(
            "round {round}: averaged θ with {} of {} partners ({} replicas fetched, {} refused)",
            report.averaged, report.partners, report.fetched, report.refused
        );
        Ok((reached.elapsed().as_secs_f64(), report))
    }

    /// How long a new partner that has not reached the regrouping round may stay at one round
    /// before it is left out: a third of `peer_timeout`, or twice this peer's median compute
    /// time where that is longer (a round takes at least its compute).
    fn regroup_patience(&self) -> Duration {
        let compute = self.median_compute_s().max(0.0);
        (self.config.peer_timeout / 3).max(Duration::from_secs_f64(2.0 * compute))
    }

    /// Runs `pending` until all are done, the deadline passes or the peer stops, taking events
    /// (heartbeats, early updates) meanwhile and heartbeating, so that the others do not take
    /// this peer for gone. Returns the outputs of those done.
    async fn drive_until<T>(
        &mut self,
        deadline: Instant,
        mut pending: FuturesUnordered<BoxFuture<'static, T>>,
    ) -> Vec<T> {
        let mut done = Vec::new();
        while !pending.is_empty() && !self.stopped && Instant::now() < deadline {
            let tick = futures_timer::Delay::new(MARK_POLL).fuse();
            futures::pin_mut!(tick);
            futures::select! {
                out = pending.select_next_some() => done.push(out),
                _ = tick => {}
            }
            // Bounded by the deadline too: events that keep arriving (a flood, each one passing
            // the rate limits) must not hold the regrouping past it.
            while Instant::now() < deadline
                && let Some(event) = self.next_event(Instant::now()).await
            {
                self.on_event(event);
            }
            if self
                .last_heartbeat
                .is_none_or(|t| t.elapsed() >= self.heartbeat_every())
            {
                self.heartbeat();
            }
        }
        done
    }
}

/// `peer`'s fingerprint of its replica at the start of `round`, asked again every
/// [`MARK_POLL`] while it has not reached `round` yet and its latest round moved within
/// `patience`, or while it has answered nothing for less than [`SILENCE`] (a poll lost, a
/// connection being redialled, must not cost the group a member).
async fn reached_fingerprint(
    net: &NetHandle,
    peer: PeerId,
    run_id: &str,
    model_hash: gradswarm_core::ModelHash,
    round: u64,
    patience: Duration,
) -> Result<state::Fingerprint, PeerError> {
    let mut approach = Approach::starting(Instant::now());
    loop {
        match state::fetch_fingerprint(net, peer, run_id, model_hash, round, false).await {
            // It has not reached that round yet: ask again while it keeps getting there. No
            // answer: ask again for a while. A refusal leaves it out.
            Err(PeerError::NotReached { latest }) => {
                if !approach.still_coming(Some(latest), Instant::now(), patience) {
                    return Err(PeerError::Sync(format!(
                        "{peer} stayed at round {latest} for {patience:?}, short of {round}"
                    )));
                }
                debug!("{peer} is at round {latest}, not yet at {round}");
                futures_timer::Delay::new(MARK_POLL).await;
            }
            Err(e) if unanswered(&e) => {
                if !approach.still_coming(None, Instant::now(), patience) {
                    return Err(e);
                }
                debug!("{peer} gave no fingerprint of round {round} yet: {e}");
                // A request that failed at once (no address yet) is not asked 20 times a second.
                futures_timer::Delay::new(MARK_POLL * 10).await;
            }
            answer => return answer,
        }
    }
}

/// Whether two fingerprints name one replica (one holding): their sketches and their norms
/// within [`SAME_REPLICA`]. The norm too, or a liar that copied an honest holding's buckets
/// with another norm would join it and have every holder's replica refused ([`fits`] checks the
/// norm against each holder's): a veto, where now it forms a holding of its own.
fn one_replica(a: &DriftSketch, b: &DriftSketch) -> bool {
    let base = f64::from(a.norm).max(1e-30);
    let norms = (f64::from(a.norm) - f64::from(b.norm)).abs() / base;
    norms <= SAME_REPLICA && a.relative_distance(b).is_some_and(|d| d <= SAME_REPLICA)
}

/// Whether a poll failed without an answer (none in time, or the request lost on the way: a
/// connection closed or being dialled), so that asking again may get one; not a refusal.
fn unanswered(e: &PeerError) -> bool {
    matches!(
        e,
        PeerError::Unanswered { .. } | PeerError::Net(NetError::Request { .. })
    )
}

/// How long a new partner may leave polls unanswered before it is left out: one poll's own
/// timeout, so that a partner gone since its last heartbeat (churn) costs its new group what
/// one unanswered poll did before, while a poll lost or a connection being redialled is asked
/// again within it.
const SILENCE: Duration = state::FINGERPRINT_TIMEOUT;

/// A new partner on its way to the regrouping round, as its answers show it.
struct Approach {
    /// The latest round it reported.
    at: Option<u64>,
    /// When it last made progress (reported a later round), or was first asked.
    progress: Instant,
    /// When it last answered, or was first asked.
    answered: Instant,
}

impl Approach {
    /// A partner first asked at `now`.
    fn starting(now: Instant) -> Self {
        Self {
            at: None,
            progress: now,
            answered: now,
        }
    }

    /// Takes in the latest round it reported at `now` (None: no answer this time); false once
    /// it has made no progress for `patience`, or answered nothing for [`SILENCE`]. An old
    /// group that runs behind moves a round every few seconds and is waited for; a partner
    /// that stopped, left, or lies that it is coming is not, for long.
    fn still_coming(&mut self, latest: Option<u64>, now: Instant, patience: Duration) -> bool {
        match latest {
            Some(latest) => {
                self.answered = now;
                if self.at.is_none_or(|at| latest > at) {
                    self.at = Some(latest);
                    self.progress = now;
                }
            }
            None if now.duration_since(self.answered) >= SILENCE => return false,
            None => {}
        }
        now.duration_since(self.progress) < patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_whose_rounds_move_is_waited_for_and_one_that_stands_still_is_not() {
        let (start, patience) = (Instant::now(), Duration::from_secs(10));
        let at = |s: u64| start + Duration::from_secs(s);
        // An old group 3 rounds behind, 4 s a round: 12 s, past the patience, and still waited for.
        let mut behind = Approach::starting(at(0));
        assert!(behind.still_coming(Some(37), at(0), patience));
        assert!(behind.still_coming(Some(37), at(3), patience));
        assert!(behind.still_coming(Some(38), at(4), patience));
        assert!(behind.still_coming(Some(39), at(8), patience));
        assert!(behind.still_coming(Some(39), at(12), patience));
        // A partner that stays at one round (stopped, or only saying it is coming) is left out
        // once it has stood still for the patience.
        let mut stuck = Approach::starting(at(0));
        assert!(stuck.still_coming(Some(37), at(0), patience));
        assert!(stuck.still_coming(Some(37), at(9), patience));
        assert!(!stuck.still_coming(Some(37), at(10), patience));
        // Reporting an earlier round is no progress.
        let mut back = Approach::starting(at(0));
        assert!(back.still_coming(Some(37), at(0), patience));
        assert!(!back.still_coming(Some(36), at(11), patience));
        // Polls left unanswered (lost, or a connection redialled) are asked again for up to a
        // poll's timeout since the last answer: a partner that answers within it is still
        // coming, one gone (churn) is left out after it, as one unanswered poll was before.
        let mut lossy = Approach::starting(at(0));
        assert!(lossy.still_coming(None, at(0), patience));
        assert!(lossy.still_coming(None, at(4), patience));
        assert!(lossy.still_coming(Some(39), at(4), patience));
        assert!(lossy.still_coming(None, at(8), patience));
        assert!(!lossy.still_coming(None, at(9), patience));
        // Answers that show no progress do not keep it past the patience.
        let mut mute = Approach::starting(at(0));
        for s in [0, 3, 6, 9] {
            assert!(mute.still_coming(Some(39), at(s), patience));
        }
        assert!(!mute.still_coming(Some(39), at(10), patience));
    }
}
