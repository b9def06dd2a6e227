//! Round bookkeeping: which updates count in which round, with what weight, and what is dropped.
//!
//! A peer on round `r` collects updates (docs/architecture.md). Every update belongs to the round
//! it was published for, and counts there with weight `samples × s(τ)`, `τ = round − base_round`,
//! or is dropped past `τ_max`: both fixed by the publisher, so every receiver weighs it the same.
//! An update for a round this peer already closed is *late*: it is added to that round as a
//! [`Correction`] (the round's set before and after), which the outer optimizer applies as if it
//! had been there in time ([`crate::OuterOptimizer::apply_late`]). So replicas that end up with
//! the same updates end up with the same θ whatever order they arrived in — counting a late update
//! in the round it happens to arrive in would make each replica's θ depend on its own arrival times.
//! Closing a round hands back its entries in a fixed order (base round, then peer id), so replicas
//! that hold the same set aggregate it to the same bits.

use std::collections::{BTreeMap, BTreeSet};

use crate::staleness::{DropCounts, DropReason, StalenessPolicy};

/// One update that counts in a closed round.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted<T> {
    /// The sender's peer id bytes.
    pub peer: Vec<u8>,
    /// The round it was published for (and counts in).
    pub round: u64,
    /// The round its parameters came from.
    pub base_round: u64,
    /// Its staleness, `round − base_round`.
    pub tau: u64,
    /// The training samples it claims (capped by the run: one honest round's at most).
    pub samples: u64,
    /// Its aggregation weight: samples × s(τ).
    pub weight: f64,
    /// Its content digest ([`crate::Update::content_digest`]).
    pub digest: u64,
    /// The decoded update.
    pub payload: T,
}

impl<T> Accepted<T> {
    /// This update's term in [`RoundBook::applied_digest`], a wrapping sum of such terms so that
    /// a mark's digest can take a late update in ([`crate::marks::Marks::correct`]).
    pub fn applied_term(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(self.peer.len() as u64).to_le_bytes());
        h.update(&self.peer);
        h.update(&self.round.to_le_bytes());
        h.update(&self.base_round.to_le_bytes());
        h.update(&self.weight.to_bits().to_le_bytes());
        // Two replicas that took different versions of an equivocator's update differ by more
        // than drift until both drop it: their digests must differ too.
        h.update(&self.digest.to_le_bytes());
        h.digest()
    }
}

/// Late updates added to a round closed earlier: its set before and after they came.
#[derive(Clone, Debug, PartialEq)]
pub struct Correction<T> {
    /// The earlier round.
    pub round: u64,
    /// Its updates as they were aggregated (in deterministic order).
    pub before: Vec<Accepted<T>>,
    /// Its updates with the late ones (in deterministic order).
    pub after: Vec<Accepted<T>>,
}

impl<T> Correction<T> {
    /// The updates taken back out of the round (their senders equivocated).
    pub fn removed(&self) -> impl Iterator<Item = &Accepted<T>> {
        missing_from(&self.before, &self.after)
    }

    /// What this correction changes [`RoundBook::applied_digest`] by (wrapping): the late
    /// updates' terms added, those taken back subtracted.
    pub fn applied_change(&self) -> u64 {
        let added = self.added().map(Accepted::applied_term);
        let removed = self.removed().map(Accepted::applied_term);
        added
            .fold(0u64, u64::wrapping_add)
            .wrapping_sub(removed.fold(0u64, u64::wrapping_add))
    }

    /// The late updates themselves.
    pub fn added(&self) -> impl Iterator<Item = &Accepted<T>> {
        missing_from(&self.after, &self.before)
    }

    /// The updates in the round both before and after (as they are after).
    pub fn stayed(&self) -> impl Iterator<Item = &Accepted<T>> {
        self.after.iter().filter(move |a| {
            self.before
                .iter()
                .any(|b| b.peer == a.peer && b.round == a.round)
        })
    }
}

/// How a correction changes which of its round's updates count, as the screens judged the
/// round's set before and after ([`Correction::recount`]).
#[derive(Debug)]
pub struct Recount<'a, T> {
    /// Updates that count now and did not: late ones the screens kept, and ones already in that
    /// a late update let through.
    pub counted: Vec<&'a Accepted<T>>,
    /// Updates that counted and no longer do: dropped by the screens now (with why), or taken
    /// back out of the round (an equivocator's; no reason).
    pub uncounted: Vec<(&'a Accepted<T>, Option<DropReason>)>,
    /// Late updates the screens dropped, with why.
    pub dropped: Vec<(&'a Accepted<T>, DropReason)>,
}

impl<T> Correction<T> {
    /// Which updates start or stop counting, given why the screens dropped each sender's update
    /// from the round's set `before` and `after` the correction (None: it counted). The screens
    /// judge a round's whole set (its quartile norm, the others' directions), so a late update
    /// can change the verdict on one already in; counting that change keeps what a replica
    /// counted the same as what a replica that took every update in time counted.
    pub fn recount(
        &self,
        before: impl Fn(&[u8]) -> Option<DropReason>,
        after: impl Fn(&[u8]) -> Option<DropReason>,
    ) -> Recount<'_, T> {
        let mut recount = Recount {
            counted: Vec::new(),
            uncounted: Vec::new(),
            dropped: Vec::new(),
        };
        for added in self.added() {
            match after(&added.peer) {
                Some(reason) => recount.dropped.push((added, reason)),
                None => recount.counted.push(added),
            }
        }
        for stayed in self.stayed() {
            match (before(&stayed.peer), after(&stayed.peer)) {
                (None, Some(reason)) => recount.uncounted.push((stayed, Some(reason))),
                (Some(_), None) => recount.counted.push(stayed),
                _ => {}
            }
        }
        for gone in self.removed() {
            if before(&gone.peer).is_none() {
                recount.uncounted.push((gone, None));
            }
        }
        recount
    }
}

/// The entries of `these` whose sender has none in `those`.
fn missing_from<'a, T>(
    these: &'a [Accepted<T>],
    those: &'a [Accepted<T>],
) -> impl Iterator<Item = &'a Accepted<T>> {
    these
        .iter()
        .filter(move |a| !those.iter().any(|b| b.peer == a.peer && b.round == a.round))
}

/// What closing a round gives: the updates that count, corrections of earlier rounds, and what
/// was dropped at closing.
#[derive(Clone, Debug, PartialEq)]
pub struct Closed<T> {
    /// The round that was closed.
    pub round: u64,
    /// Updates that count in it, in deterministic order.
    pub accepted: Vec<Accepted<T>>,
    /// Earlier rounds that late updates joined, oldest first.
    pub corrections: Vec<Correction<T>>,
    /// Updates dropped when the round closed (too stale by then).
    pub dropped: DropCounts,
    /// Rounds this close sealed, with their final sets: past the horizon, no late update can
    /// change them any more, so every replica that took the same updates holds the same sets
    /// ([`crate::standing::Standing`] takes them in).
    pub sealed: Vec<(u64, Vec<Accepted<T>>)>,
}

/// An update as another replica held it in one of its closed rounds: what
/// [`RoundBook::restore`] rebuilds a joiner's recent rounds from.
#[derive(Clone, Debug, PartialEq)]
pub struct Held<T> {
    /// The sender's peer id bytes.
    pub peer: Vec<u8>,
    /// The round its parameters came from.
    pub base_round: u64,
    /// The training samples it claims.
    pub samples: u64,
    /// Its content digest ([`crate::Update::content_digest`]).
    pub digest: u64,
    /// The decoded update.
    pub payload: T,
}

/// Why another replica's closed rounds cannot be rebuilt ([`RoundBook::restore`]): no honest
/// replica holds such sets, so the state that carried them is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A set of a round that is not one of the closed rounds a book holds, or out of order.
    #[error("a set of round {round}, outside the closed rounds {from}..{to} or out of order")]
    OutOfRange {
        /// Its round.
        round: u64,
        /// The oldest closed round held.
        from: u64,
        /// The open round.
        to: u64,
    },
    /// Two updates of one sender for one round.
    #[error("two updates of one sender for round {0}")]
    Twice(u64),
    /// An update that could not have counted (too stale, from the future).
    #[error("an update of round {round} that cannot count: {reason}")]
    CannotCount {
        /// Its round.
        round: u64,
        /// Why.
        reason: DropReason,
    },
}

struct Pending<T> {
    base_round: u64,
    samples: u64,
    digest: u64,
    payload: T,
}

/// The updates a peer holds for its open and future rounds, the late ones, and the recent rounds'
/// sets (to correct them).
pub struct RoundBook<T> {
    policy: StalenessPolicy,
    current: u64,
    pending: BTreeMap<u64, BTreeMap<Vec<u8>, Pending<T>>>,
    late: BTreeMap<u64, BTreeMap<Vec<u8>, Pending<T>>>,
    closed: BTreeMap<u64, Vec<Accepted<T>>>,
    /// Closed rounds' updates whose senders equivocated since: taken out at the next settle.
    retracted: BTreeMap<u64, BTreeSet<Vec<u8>>>,
    seen: BTreeMap<(u64, Vec<u8>), Seen>,
}

/// What became of a sender's update for a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Kept (pending, late or counted), with its content digest.
    Kept(u64),
    /// Refused for what it is, with its content digest.
    Refused(u64),
    /// Its sender signed two different updates for the round: none of them counts.
    Equivocated,
}

impl<T: Clone> RoundBook<T> {
    /// An empty book whose open round is `round`.
    pub fn new(policy: StalenessPolicy, round: u64) -> Self {
        Self {
            policy,
            current: round,
            pending: BTreeMap::new(),
            late: BTreeMap::new(),
            closed: BTreeMap::new(),
            retracted: BTreeMap::new(),
            seen: BTreeMap::new(),
        }
    }

    /// The open round.
    pub fn round(&self) -> u64 {
        self.current
    }

    /// How far ahead of the open round an update may be published and still be kept (further
    /// ahead is a liar or a clock far off, and keeping it would let one peer fill our memory), and
    /// how many closed rounds late updates may still correct.
    pub fn horizon(&self) -> u64 {
        2 * self.policy.tau_max + 2
    }

    /// Offers an update that `peer` published for `round`, computed from `base_round`'s parameters
    /// with `samples` samples; `digest` names its content ([`crate::Update::content_digest`]).
    /// Kept for its round (or as a late part of it), or dropped with a reason.
    ///
    /// A second update of `peer` for `round` with another digest is an equivocation: gossip
    /// forwards both versions, so every replica sees both, whatever the order; each then drops
    /// both, taking back the one it kept (from a closed round, as a correction), and the
    /// replicas end with the same set whichever version reached them first.
    pub fn offer(
        &mut self,
        peer: &[u8],
        round: u64,
        base_round: u64,
        samples: u64,
        digest: u64,
        payload: T,
    ) -> Result<(), DropReason> {
        if base_round > round || round > self.current.saturating_add(self.horizon()) {
            return Err(DropReason::FromFuture);
        }
        let key = (round, peer.to_vec());
        match self.seen.get(&key).copied() {
            Some(Seen::Kept(d) | Seen::Refused(d)) if d == digest => {
                return Err(DropReason::Duplicate);
            }
            Some(Seen::Equivocated) => return Err(DropReason::Duplicate),
            Some(Seen::Kept(_)) => {
                self.retract(round, peer);
                self.seen.insert(key, Seen::Equivocated);
                return Err(DropReason::Equivocation);
            }
            Some(Seen::Refused(_)) => {
                self.seen.insert(key, Seen::Equivocated);
                return Err(DropReason::Equivocation);
            }
            None => {}
        }
        if let Err(reason) = self.policy.weight(round, base_round) {
            // A verdict on the update alone, the same at every receiver: it is decided.
            self.refuse(peer, round, digest);
            return Err(reason);
        }
        let entry = Pending {
            base_round,
            samples,
            digest,
            payload,
        };
        let slot = if round >= self.current {
            &mut self.pending
        } else if self.closed.contains_key(&round) {
            &mut self.late
        } else {
            // Closed so long ago that we no longer hold its set: too late to correct.
            return Err(DropReason::TooStale);
        };
        slot.entry(round).or_default().insert(peer.to_vec(), entry);
        self.seen.insert(key, Seen::Kept(digest));
        Ok(())
    }

    /// Takes `peer`'s kept update for `round` back out: from its pending or late set, or from
    /// its closed round at the next settle (as a correction).
    fn retract(&mut self, round: u64, peer: &[u8]) {
        for slot in [&mut self.pending, &mut self.late] {
            if let Some(entries) = slot.get_mut(&round)
                && entries.remove(peer).is_some()
            {
                if entries.is_empty() {
                    slot.remove(&round);
                }
                return;
            }
        }
        if self
            .closed
            .get(&round)
            .is_some_and(|set| set.iter().any(|a| a.peer == peer))
        {
            self.retracted
                .entry(round)
                .or_default()
                .insert(peer.to_vec());
        }
    }

    /// Whether the open round has decided on an update from every peer in `peers` (holds it, or
    /// refused it): nothing more is worth waiting for.
    pub fn has_all<'a>(&self, peers: impl IntoIterator<Item = &'a [u8]>) -> bool {
        peers.into_iter().all(|p| self.decided(p, self.current))
    }

    /// Peers whose update for the open round is in.
    pub fn arrived(&self) -> impl Iterator<Item = &[u8]> {
        self.pending
            .get(&self.current)
            .into_iter()
            .flat_map(|m| m.keys().map(Vec::as_slice))
    }

    /// The round the swarm has moved on to, when it is past the open one: the latest round that
    /// more than half of `peers` (the others this peer waits for) have published an update for.
    /// One liar claiming a later round cannot make the others close the rounds in between (and
    /// drop their own updates as too stale): it is a minority of one.
    pub fn moved_on<'a>(&self, peers: impl IntoIterator<Item = &'a [u8]>) -> Option<u64> {
        let mut total = 0usize;
        // Each peer's latest round past the open one (peers with none count against).
        let mut ahead: Vec<u64> = Vec::new();
        for p in peers {
            total += 1;
            if let Some((&r, _)) = self
                .pending
                .range(self.current + 1..)
                .rev()
                .find(|(_, m)| m.contains_key(p))
            {
                ahead.push(r);
            }
        }
        let quorum = total / 2 + 1;
        ahead.sort_unstable_by(|a, b| b.cmp(a));
        ahead.get(quorum - 1).copied()
    }

    fn accept(
        &self,
        round: u64,
        entries: BTreeMap<Vec<u8>, Pending<T>>,
        into: &mut Vec<Accepted<T>>,
        dropped: &mut DropCounts,
    ) {
        for (peer, p) in entries {
            match self.policy.weight(round, p.base_round) {
                Ok(s) => into.push(Accepted {
                    peer,
                    round,
                    base_round: p.base_round,
                    tau: round - p.base_round,
                    samples: p.samples,
                    weight: p.samples as f64 * f64::from(s),
                    digest: p.digest,
                    payload: p.payload,
                }),
                Err(reason) => dropped.record(reason),
            }
        }
        into.sort_by(|a, b| (a.base_round, &a.peer).cmp(&(b.base_round, &b.peer)));
    }

    /// Closes the open round: its updates count, weighted by samples × s(τ); late updates join
    /// their earlier rounds as corrections. The next round opens.
    pub fn close(&mut self) -> Closed<T> {
        let round = self.current;
        let mut dropped = DropCounts::default();
        let mut accepted = Vec::new();
        let open = self.pending.remove(&round).unwrap_or_default();
        self.accept(round, open, &mut accepted, &mut dropped);
        let corrections = self.settle_into(&mut dropped);
        self.closed.insert(round, accepted.clone());
        self.current += 1;
        // Rounds past the horizon can no longer be corrected, nor their duplicates told apart.
        let oldest = self.current.saturating_sub(self.horizon());
        let open = self.closed.split_off(&oldest);
        let sealed = std::mem::replace(&mut self.closed, open)
            .into_iter()
            .collect();
        self.seen = self.seen.split_off(&(oldest, Vec::new()));
        self.retracted = self.retracted.split_off(&oldest);
        Closed {
            round,
            accepted,
            corrections,
            dropped,
            sealed,
        }
    }

    /// Adds the late updates that arrived since the last close to their rounds, without closing
    /// the open one: a peer past its last round still takes in what others published before
    /// they closed theirs, so that its replica ends where theirs do.
    pub fn settle(&mut self) -> (Vec<Correction<T>>, DropCounts) {
        let mut dropped = DropCounts::default();
        let corrections = self.settle_into(&mut dropped);
        (corrections, dropped)
    }

    fn settle_into(&mut self, dropped: &mut DropCounts) -> Vec<Correction<T>> {
        let mut late = std::mem::take(&mut self.late);
        let mut retracted = std::mem::take(&mut self.retracted);
        let rounds: BTreeSet<u64> = late.keys().chain(retracted.keys()).copied().collect();
        let mut corrections = Vec::new();
        for earlier in rounds {
            let entries = late.remove(&earlier).unwrap_or_default();
            let gone = retracted.remove(&earlier).unwrap_or_default();
            let Some(before) = self.closed.get(&earlier).cloned() else {
                continue;
            };
            let mut after: Vec<Accepted<T>> = before
                .iter()
                .filter(|a| !gone.contains(&a.peer))
                .cloned()
                .collect();
            self.accept(earlier, entries, &mut after, dropped);
            self.closed.insert(earlier, after.clone());
            corrections.push(Correction {
                round: earlier,
                before,
                after,
            });
        }
        corrections
    }

    /// Whether `peer`'s update for `round` is in (counted, waiting for its round, or late) or was
    /// refused for what it is, so that no later arrival of it can change this replica.
    pub fn decided(&self, peer: &[u8], round: u64) -> bool {
        self.seen.contains_key(&(round, peer.to_vec()))
    }

    /// Marks `peer`'s update for `round`, of content `digest`, as refused by a check outside the
    /// book (a wrong shape, say), so that [`RoundBook::decided`] holds for it and another
    /// version of it is an equivocation.
    pub fn refuse(&mut self, peer: &[u8], round: u64, digest: u64) {
        if round + self.horizon() >= self.current && round <= self.current + self.horizon() {
            self.seen
                .entry((round, peer.to_vec()))
                .or_insert(Seen::Refused(digest));
        }
    }

    /// The closed rounds still held (the last [`RoundBook::horizon`]), with their sets as they
    /// stand: not sealed yet, so a late update may still join them.
    pub fn unsealed(&self) -> impl Iterator<Item = (u64, &[Accepted<T>])> {
        self.closed.iter().map(|(r, set)| (*r, set.as_slice()))
    }

    /// An order-independent digest of the updates the closed rounds still held (the last
    /// [`RoundBook::horizon`] rounds) count, corrections included: replicas at the same round with
    /// the same digest applied the same updates recently, so a difference of their θ is drift,
    /// not a late update still on its way to one of them.
    pub fn applied_digest(&self) -> u64 {
        self.closed
            .values()
            .flatten()
            .map(Accepted::applied_term)
            .fold(0u64, u64::wrapping_add)
    }

    /// Whether [`RoundBook::restore`] would take `sets` and `equivocators` as the rounds before
    /// `round`: rounds this book could hold, in order, one update per sender, each one that can
    /// count. Read-only, and blind to payloads: a joiner checks a state's sets before it
    /// decodes a payload or changes anything.
    pub fn check_restore<U>(
        &self,
        round: u64,
        sets: &[(u64, Vec<Held<U>>)],
        equivocators: &[(u64, Vec<u8>)],
    ) -> Result<(), RestoreError> {
        let from = round.saturating_sub(self.horizon());
        let out_of_range = |r: u64| RestoreError::OutOfRange {
            round: r,
            from,
            to: round,
        };
        let mut last = None;
        for (r, set) in sets {
            if *r < from || *r >= round || last.is_some_and(|l| l >= *r) {
                return Err(out_of_range(*r));
            }
            last = Some(*r);
            let mut senders = BTreeSet::new();
            for held in set {
                if !senders.insert(held.peer.as_slice()) {
                    return Err(RestoreError::Twice(*r));
                }
                if held.base_round > *r {
                    return Err(RestoreError::CannotCount {
                        round: *r,
                        reason: DropReason::FromFuture,
                    });
                }
                if let Err(reason) = self.policy.weight(*r, held.base_round) {
                    return Err(RestoreError::CannotCount { round: *r, reason });
                }
            }
        }
        match equivocators.iter().find(|(r, _)| *r < from || *r >= round) {
            Some((r, _)) => Err(out_of_range(*r)),
            None => Ok(()),
        }
    }

    /// Opens `round` with the closed rounds before it (at most [`RoundBook::horizon`]) holding
    /// `sets`, the updates another replica held in them when it served its state, and
    /// `equivocators`, the senders it caught signing two updates for them: late updates then
    /// correct those rounds as they correct that replica's, and they seal here as they seal
    /// there. A joiner that started from `round` with no sets took no late update of an earlier
    /// round and sealed nothing the others sealed (its θ and its standing drifted from theirs
    /// until drift repair). Checked whole ([`RoundBook::check_restore`]) before anything
    /// changes: on an error the book is as it was.
    pub fn restore(
        &mut self,
        round: u64,
        sets: Vec<(u64, Vec<Held<T>>)>,
        equivocators: &[(u64, Vec<u8>)],
    ) -> Result<(), RestoreError> {
        self.check_restore(round, &sets, equivocators)?;
        self.reset(round);
        self.seen = self.seen.split_off(&(round, Vec::new()));
        // Only the rounds the other replica held: one it had no set of (it joined after that
        // round) takes no late update there either.
        let mut dropped = DropCounts::default();
        for (r, set) in sets {
            let mut entries = BTreeMap::new();
            for held in set {
                self.seen
                    .insert((r, held.peer.clone()), Seen::Kept(held.digest));
                let pending = Pending {
                    base_round: held.base_round,
                    samples: held.samples,
                    digest: held.digest,
                    payload: held.payload,
                };
                entries.insert(held.peer, pending);
            }
            let mut accepted = Vec::new();
            self.accept(r, entries, &mut accepted, &mut dropped);
            self.closed.insert(r, accepted);
        }
        // Senders the other replica caught equivocating: any version of theirs that comes later
        // is refused here as there, and one still in its round (caught since that replica's
        // last close) is taken out at the next close here as there.
        for (r, peer) in equivocators {
            self.seen.insert((*r, peer.clone()), Seen::Equivocated);
            if self
                .closed
                .get(r)
                .is_some_and(|set| set.iter().any(|a| &a.peer == peer))
            {
                self.retracted.entry(*r).or_default().insert(peer.clone());
            }
        }
        Ok(())
    }

    /// The senders caught signing two updates for a closed round still held, by round: what a
    /// joiner's [`RoundBook::restore`] needs beside the sets.
    pub fn equivocators(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let from = self.closed.keys().next().copied().unwrap_or(self.current);
        self.seen
            .range((from, Vec::new())..(self.current, Vec::new()))
            .filter(|(_, s)| **s == Seen::Equivocated)
            .map(|((r, p), _)| (*r, p.as_slice()))
    }

    /// Whether a late update of `round` can still join it here: the round is closed and its set
    /// still held.
    pub fn holds(&self, round: u64) -> bool {
        self.closed.contains_key(&round)
    }

    /// Moves the open round to `round` (after a state sync), forgetting what belongs before it.
    pub fn reset(&mut self, round: u64) {
        self.current = round;
        self.pending = self.pending.split_off(&round);
        self.late.clear();
        self.closed.clear();
        self.retracted.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> RoundBook<u32> {
        RoundBook::new(
            StalenessPolicy {
                alpha: 1.0,
                tau_max: 2,
            },
            5,
        )
    }

    #[test]
    fn a_round_closes_with_its_updates_in_peer_order() {
        let mut b = book();
        b.offer(b"b", 5, 5, 10, 2, 2).unwrap();
        b.offer(b"a", 5, 5, 30, 1, 1).unwrap();
        assert!(b.has_all([&b"a"[..], &b"b"[..]]));
        assert!(!b.has_all([&b"a"[..], &b"c"[..]]));
        let closed = b.close();
        assert_eq!(closed.round, 5);
        let got: Vec<_> = closed
            .accepted
            .iter()
            .map(|a| (a.peer.clone(), a.weight, a.payload))
            .collect();
        assert_eq!(
            got,
            vec![(b"a".to_vec(), 30.0, 1), (b"b".to_vec(), 10.0, 2)]
        );
        assert_eq!(b.round(), 6);
    }

    #[test]
    fn a_round_is_sealed_with_its_late_updates_once_none_can_come() {
        // Horizon 6 (τ_max 2): round 5 is handed back sealed by the close of round 11, with
        // the late update that joined it, and never before.
        let mut b = book();
        b.offer(b"a", 5, 5, 4, 1, 1).unwrap();
        assert!(b.close().sealed.is_empty());
        b.offer(b"slow", 5, 4, 8, 9, 9).unwrap();
        for round in 6..11 {
            assert!(b.close().sealed.is_empty(), "round {round}");
        }
        let sealed = b.close().sealed;
        let peers: Vec<(u64, Vec<Vec<u8>>)> = sealed
            .iter()
            .map(|(r, set)| (*r, set.iter().map(|a| a.peer.clone()).collect()))
            .collect();
        // In the order closing gives (base round, then peer).
        assert_eq!(peers, vec![(5, vec![b"slow".to_vec(), b"a".to_vec()])]);
        assert_eq!(b.offer(b"later", 5, 5, 8, 7, 7), Err(DropReason::TooStale));
    }

    #[test]
    fn late_updates_correct_their_round_and_too_old_ones_drop() {
        let mut b = book();
        b.offer(b"a", 5, 5, 4, 1, 1).unwrap();
        b.close(); // round 5 closes with a's update
        b.close(); // round 6 closes empty
        // On round 7: an update published for round 5 (computed on 4, τ = 1) is late: it joins 5.
        b.offer(b"slow", 5, 4, 8, 9, 9).unwrap();
        // Computed on 2: τ = 3 > τ_max: dropped at once.
        assert_eq!(b.offer(b"older", 5, 2, 8, 9, 9), Err(DropReason::TooStale));
        let closed = b.close();
        assert!(closed.accepted.is_empty());
        assert_eq!(closed.corrections.len(), 1);
        let c = &closed.corrections[0];
        assert_eq!(c.round, 5);
        assert_eq!(c.before.len(), 1);
        // Ordered by base round: the late one (base 4) comes first.
        assert_eq!(c.after[0].peer, b"slow".to_vec());
        assert_eq!(c.after[0].tau, 1);
        assert!((c.after[0].weight - 8.0 / 2.0).abs() < 1e-6);
        assert_eq!(c.added().count(), 1);
        // A round past the horizon can no longer be corrected.
        for _ in 0..b.horizon() {
            b.close();
        }
        assert_eq!(b.offer(b"z", 5, 5, 1, 0, 0), Err(DropReason::TooStale));
        // A future update waits for its round; one past the horizon is refused.
        let r = b.round();
        b.offer(b"fast", r + 3, r + 3, 1, 0, 0).unwrap();
        assert_eq!(b.moved_on([&b"fast"[..]]), Some(r + 3));
        assert_eq!(
            b.offer(b"liar", r + 100, r + 100, 1, 0, 0),
            Err(DropReason::FromFuture)
        );
        assert_eq!(b.offer(b"liar", 8, 9, 1, 0, 0), Err(DropReason::FromFuture));
    }

    #[test]
    fn one_peer_ahead_does_not_move_the_clock_a_majority_does() {
        let mut b = book();
        let peers = [&b"a"[..], &b"b"[..], &b"liar"[..]];
        // The liar claims a round near the horizon: one of three is no majority.
        b.offer(b"liar", 9, 9, 1, 0, 0).unwrap();
        assert_eq!(b.moved_on(peers), None);
        // a moves on to 6: two of three are past round 5, and the later of their rounds that a
        // majority reached is 6 (not the liar's 9).
        b.offer(b"a", 6, 5, 1, 0, 0).unwrap();
        assert_eq!(b.moved_on(peers), Some(6));
        b.offer(b"b", 7, 6, 1, 0, 0).unwrap();
        assert_eq!(b.moved_on(peers), Some(7));
        // With nobody else, or one other, that one's round is the swarm's.
        assert_eq!(b.moved_on([]), None);
        assert_eq!(b.moved_on([&b"liar"[..]]), Some(9));
    }

    #[test]
    fn settling_applies_late_updates_without_closing_a_round() {
        let mut b = book();
        b.offer(b"a", 5, 5, 4, 1, 1).unwrap();
        b.close();
        assert!(b.decided(b"a", 5));
        assert!(!b.decided(b"slow", 5));
        b.offer(b"slow", 5, 5, 4, 2, 2).unwrap();
        assert!(b.decided(b"slow", 5));
        let (corrections, dropped) = b.settle();
        assert_eq!(b.round(), 6, "settling closes nothing");
        assert_eq!(dropped, DropCounts::default());
        assert_eq!(corrections.len(), 1);
        assert_eq!(corrections[0].added().count(), 1);
        assert!(b.settle().0.is_empty(), "a late update is applied once");
        // Refused for what it is (τ > τ_max): decided too, so nobody waits for it.
        b.offer(b"old", 5, 1, 4, 3, 3).unwrap_err();
        assert!(b.decided(b"old", 5));
    }

    #[test]
    fn the_applied_digest_names_the_set_not_the_order_it_came_in() {
        let (mut x, mut y) = (book(), book());
        x.offer(b"a", 5, 5, 4, 1, 1).unwrap();
        x.offer(b"b", 5, 5, 4, 2, 2).unwrap();
        x.close();
        // y closes round 5 with only a's update; b's arrives late, as a correction.
        y.offer(b"a", 5, 5, 4, 1, 1).unwrap();
        y.close();
        assert_ne!(
            x.applied_digest(),
            y.applied_digest(),
            "b's update is still on its way"
        );
        y.offer(b"b", 5, 5, 4, 2, 2).unwrap();
        y.settle();
        assert_eq!(x.applied_digest(), y.applied_digest());
        // Rounds past the horizon leave the digest: an old difference no longer shows.
        for _ in 0..x.horizon() {
            x.close();
            y.close();
        }
        assert_eq!(x.applied_digest(), book().applied_digest());
    }

    #[test]
    fn an_update_computed_too_long_before_its_round_is_dropped() {
        let mut b = book();
        // Published for round 7 but computed on round 3: τ = 4 > τ_max.
        assert_eq!(b.offer(b"x", 7, 3, 1, 0, 0), Err(DropReason::TooStale));
        b.offer(b"y", 7, 5, 1, 0, 0).unwrap();
        b.close();
        b.close();
        let closed = b.close();
        assert_eq!(closed.accepted.len(), 1);
        assert_eq!(closed.accepted[0].tau, 2);
    }

    #[test]
    fn a_round_ends_with_the_same_set_whatever_the_arrival_order() {
        let mut early = book();
        let mut late = book();
        for b in [&mut early, &mut late] {
            b.offer(b"a", 5, 5, 1, 1, 1).unwrap();
        }
        early.offer(b"b", 5, 5, 1, 2, 2).unwrap();
        let on_time = early.close().accepted;
        late.close();
        late.close();
        late.offer(b"b", 5, 5, 1, 2, 2).unwrap();
        let closed = late.close();
        assert_eq!(closed.corrections[0].after, on_time);
    }

    #[test]
    fn an_equivocator_counts_nowhere_whichever_version_came_first() {
        // "liar" signs two versions (payload 1, digest 1; payload 2, digest 2) for round 5.
        let honest = |b: &mut RoundBook<u32>| b.offer(b"a", 5, 5, 1, 7, 7).unwrap();
        // x gets both before closing round 5.
        let mut x = book();
        honest(&mut x);
        x.offer(b"liar", 5, 5, 1, 1, 1).unwrap();
        assert_eq!(
            x.offer(b"liar", 5, 5, 1, 2, 2),
            Err(DropReason::Equivocation)
        );
        assert_eq!(x.offer(b"liar", 5, 5, 1, 3, 3), Err(DropReason::Duplicate));
        let on_time = x.close().accepted;
        assert_eq!(on_time.len(), 1, "only the honest update counts");
        // y counted version 1 in round 5 before version 2 came: it is taken back.
        let mut y = book();
        honest(&mut y);
        y.offer(b"liar", 5, 5, 1, 1, 1).unwrap();
        assert_eq!(y.close().accepted.len(), 2);
        assert!(y.decided(b"liar", 5));
        // w counted version 2 instead: until each sees the other version, their replicas differ
        // by more than drift, and their digests say so (reconciling now would make it last).
        let mut w = book();
        honest(&mut w);
        w.offer(b"liar", 5, 5, 1, 2, 2).unwrap();
        w.close();
        assert_ne!(w.applied_digest(), y.applied_digest());
        assert_eq!(
            y.offer(b"liar", 5, 5, 1, 2, 2),
            Err(DropReason::Equivocation)
        );
        let (corrections, _) = y.settle();
        assert_eq!(corrections.len(), 1);
        assert_eq!(corrections[0].after, on_time);
        // z saw version 2 first, refused for what it is (too stale), then version 1.
        let mut z = book();
        honest(&mut z);
        assert_eq!(z.offer(b"liar", 5, 1, 1, 2, 2), Err(DropReason::TooStale));
        assert_eq!(
            z.offer(b"liar", 5, 5, 1, 1, 1),
            Err(DropReason::Equivocation)
        );
        assert_eq!(z.close().accepted, on_time);
        x.close();
        y.close();
        z.close();
        assert_eq!(x.applied_digest(), y.applied_digest());
        assert_eq!(x.applied_digest(), z.applied_digest());
    }

    #[test]
    fn duplicates_are_refused() {
        let mut b = book();
        b.offer(b"a", 5, 5, 1, 0, 0).unwrap();
        assert_eq!(b.offer(b"a", 5, 5, 1, 0, 0), Err(DropReason::Duplicate));
        b.close();
        assert_eq!(b.offer(b"a", 5, 5, 1, 0, 0), Err(DropReason::Duplicate));
    }

    /// A book's unsealed sets as a state carries them.
    fn sets_of(b: &RoundBook<u32>) -> Vec<(u64, Vec<Held<u32>>)> {
        b.unsealed()
            .map(|(r, set)| {
                let held = set.iter().map(|a| Held {
                    peer: a.peer.clone(),
                    base_round: a.base_round,
                    samples: a.samples,
                    digest: a.digest,
                    payload: a.payload,
                });
                (r, held.collect())
            })
            .collect()
    }

    #[test]
    fn a_restored_book_corrects_and_seals_as_the_replica_it_came_from() {
        let mut server = book();
        server.offer(b"a", 5, 5, 10, 1, 1).unwrap();
        server.offer(b"b", 5, 4, 20, 2, 2).unwrap();
        server.close();
        // A sender that signs two versions of its late update for round 5: both dropped.
        server.offer(b"e", 5, 5, 1, 7, 7).unwrap();
        assert_eq!(
            server.offer(b"e", 5, 5, 1, 8, 8),
            Err(DropReason::Equivocation)
        );
        server.offer(b"a", 6, 6, 10, 3, 3).unwrap();
        server.close();
        let mut joiner = book();
        let equivocators: Vec<(u64, Vec<u8>)> = server
            .equivocators()
            .map(|(r, p)| (r, p.to_vec()))
            .collect();
        joiner.restore(7, sets_of(&server), &equivocators).unwrap();
        assert_eq!(joiner.round(), 7);
        assert_eq!(joiner.applied_digest(), server.applied_digest());
        assert_eq!(equivocators, [(5, b"e".to_vec())]);
        // A version of the equivocator's that reaches the joiner later is refused there as here
        // (without the equivocators it would count).
        for b in [&mut server, &mut joiner] {
            assert_eq!(b.offer(b"e", 5, 5, 1, 7, 7), Err(DropReason::Duplicate));
        }
        let mut unaware = book();
        unaware.restore(7, sets_of(&server), &[]).unwrap();
        assert_eq!(unaware.offer(b"e", 5, 5, 1, 7, 7), Ok(()));
        // The one it already holds is a duplicate; a late one corrects round 6 in both alike.
        assert_eq!(
            joiner.offer(b"a", 6, 6, 10, 3, 3),
            Err(DropReason::Duplicate)
        );
        for b in [&mut server, &mut joiner] {
            b.offer(b"c", 6, 6, 5, 4, 4).unwrap();
        }
        let (s, j) = (server.close(), joiner.close());
        assert_eq!(j.corrections, s.corrections);
        assert_eq!(j.corrections.len(), 1);
        let (mut s_sealed, mut j_sealed) = (Vec::new(), Vec::new());
        for _ in 0..6 {
            s_sealed.extend(server.close().sealed);
            j_sealed.extend(joiner.close().sealed);
        }
        assert_eq!(j_sealed, s_sealed);
        assert_eq!(
            j_sealed.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            [5, 6, 7]
        );
        // Without the sets, the late update is too late for a joiner that synced to round 7.
        let mut bare = book();
        bare.reset(7);
        assert_eq!(bare.offer(b"c", 6, 6, 5, 4, 4), Err(DropReason::TooStale));
    }

    #[test]
    fn an_equivocator_still_in_its_round_is_taken_out_at_the_next_close_as_there() {
        let mut server = book();
        server.offer(b"a", 5, 5, 10, 1, 1).unwrap();
        server.offer(b"e", 5, 5, 10, 7, 7).unwrap();
        server.close();
        // Its second version comes after the close: the server takes it out at its next one.
        assert_eq!(
            server.offer(b"e", 5, 5, 10, 8, 8),
            Err(DropReason::Equivocation)
        );
        let equivocators: Vec<(u64, Vec<u8>)> = server
            .equivocators()
            .map(|(r, p)| (r, p.to_vec()))
            .collect();
        let mut joiner = book();
        joiner
            .restore(6, sets_of(&server), &equivocators)
            .expect("an honest server's sets while a retraction is pending");
        assert_eq!(joiner.applied_digest(), server.applied_digest());
        let (s, j) = (server.close(), joiner.close());
        assert_eq!(j.corrections, s.corrections);
        assert_eq!(j.corrections[0].removed().count(), 1);
        assert_eq!(joiner.applied_digest(), server.applied_digest());
    }

    #[test]
    fn sets_no_replica_holds_are_refused_and_change_nothing() {
        let mut b = book();
        b.offer(b"a", 5, 5, 1, 1, 1).unwrap();
        let held = |peer: &[u8], base_round| Held {
            peer: peer.to_vec(),
            base_round,
            samples: 1,
            digest: 9,
            payload: 9,
        };
        let refused = [
            (
                vec![(9, vec![held(b"x", 9)])],
                "a round not closed before 9",
            ),
            (vec![(2, vec![held(b"x", 2)])], "a round past the horizon"),
            (vec![(7, vec![]), (6, vec![])], "rounds out of order"),
            (vec![(7, vec![held(b"x", 7), held(b"x", 7)])], "twice"),
            (vec![(7, vec![held(b"x", 3)])], "too stale"),
            (vec![(7, vec![held(b"x", 8)])], "from the future"),
        ];
        for (sets, what) in refused {
            assert!(b.restore(9, sets, &[]).is_err(), "{what}");
            assert_eq!(b.round(), 5, "{what}");
            assert!(b.has_all([&b"a"[..]]), "{what}");
        }
    }

    #[test]
    fn reset_jumps_to_a_synced_round() {
        let mut b = book();
        b.offer(b"a", 6, 6, 1, 0, 0).unwrap();
        b.offer(b"a", 9, 9, 1, 1, 1).unwrap();
        b.reset(9);
        assert_eq!(b.round(), 9);
        assert!(b.has_all([&b"a"[..]]));
        assert_eq!(b.close().accepted[0].payload, 1);
    }
}
