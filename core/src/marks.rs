//! Marks: a replica's θ at the start of each recent round, kept current as late updates land, so
//! that drift repair compares what replicas will hold for good, not where they stand now.
//!
//! Why: a mark taken when its round opens lacks the updates of earlier rounds still on their way.
//! Two honest replicas that get one late update at different times then differ at every round
//! until it lands, and a peer whose update is always late somewhere keeps them apart at every
//! round (which switched drift repair off: it only compares replicas that applied the same
//! updates). And a replica that missed an update for good (a joiner, whose book starts at the
//! round it synced to, cannot take updates of earlier rounds) must be told apart from one that is
//! merely waiting for it.
//!
//! So every late correction of round q is applied to the marks of rounds after q as well, with
//! the effect it has on θ there ([`OuterConfig::late_gain`]), and the digest of the updates each
//! mark holds ([`crate::RoundBook::applied_digest`]) takes it in. A round book corrects rounds at
//! most [`crate::RoundBook::horizon`] rounds back, so a mark that many rounds old is *sealed*: no
//! late update can change it. Replicas that took the same updates hold the same sealed marks (to
//! rounding) whatever order those updates came in; ones that differ there differ for good.
//!
//! Where the outer optimizer keeps a momentum (Nesterov), a mark carries it after θ: replicas
//! that took the same updates hold the same momentum, and one that missed an update lacks its
//! momentum too, which would keep moving it apart after θ alone was repaired.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::drift::pull_toward;
use crate::outer::{OuterConfig, OuterOptimizer};

/// A replica's θ at the start of `round`, with every update it took for earlier rounds so far.
#[derive(Clone, Debug)]
pub struct Mark {
    /// The round whose start θ is.
    pub round: u64,
    /// θ at the start of `round`, then the outer momentum where the optimizer keeps one
    /// ([`OuterConfig::has_momentum`]), corrected by every late update taken since. What drift
    /// repair fingerprints and fetches.
    pub params: Arc<Vec<f32>>,
    /// The digest of the updates of the rounds before `round` that θ holds, corrections included.
    pub applied: u64,
    /// No late update can change this mark any more.
    pub sealed: bool,
    /// How many of `params` are θ.
    theta_len: usize,
}

impl Mark {
    /// θ at the start of the round (without the momentum).
    pub fn theta(&self) -> &[f32] {
        &self.params[..self.theta_len]
    }
}

/// Moves a replica `share` of the way from `mine`, its mark of a round, to `theirs`, another
/// replica's mark of that round ([`Mark::params`]), `rounds` rounds later (applied since): θ as
/// [`pull_toward`] moves it, and where marks carry the momentum, the momentum with what its
/// difference did to θ since ([`OuterOptimizer::pull_momentum`]). Updates applied since carry
/// over unchanged.
pub fn pull_replica(
    outer: &mut OuterOptimizer,
    theta: &mut [f32],
    mine: &[f32],
    theirs: &[f32],
    share: f32,
    rounds: u64,
) {
    let n = theta.len();
    pull_toward(
        theta,
        &mine[..n.min(mine.len())],
        &theirs[..n.min(theirs.len())],
        share,
    );
    if mine.len() == 2 * n && theirs.len() == 2 * n {
        let dm: Vec<f32> = mine[n..]
            .iter()
            .zip(&theirs[n..])
            .map(|(m, t)| share * (t - m))
            .collect();
        outer.pull_momentum(theta, &dm, rounds);
    }
}

/// The marks a replica keeps: the newest one always, and older ones on a stride of rounds that
/// fits its memory budget until they are sealed and a while after.
#[derive(Clone, Debug)]
pub struct Marks {
    marks: VecDeque<Mark>,
    keep: usize,
    horizon: u64,
    outer: OuterConfig,
}

impl Marks {
    /// Marks of at most `keep` rounds (at least two), sealed `horizon` rounds after their own,
    /// corrected as `outer` applies late updates.
    pub fn new(outer: OuterConfig, horizon: u64, keep: usize) -> Self {
        Self {
            marks: VecDeque::new(),
            keep: keep.max(2),
            horizon,
            outer,
        }
    }

    /// The rounds whose marks live past the newest: every `stride`-th. With at most `keep` marks,
    /// one of them the newest, a mark must survive `horizon` rounds to be sealed.
    pub fn stride(&self) -> u64 {
        (self.horizon + 1).div_ceil(self.keep as u64 - 1).max(1)
    }

    /// How many vectors of θ's length a mark holds: 2 where it carries the momentum.
    pub fn parts(&self) -> usize {
        if self.outer.has_momentum() { 2 } else { 1 }
    }

    /// Takes `theta`, θ at the start of `round` holding updates of digest `applied`, and the outer
    /// optimizer's `momentum` then (empty: none yet), as the newest mark (replacing any of that
    /// round or later, as after a rollback), and seals the marks `horizon` rounds old. Returns
    /// the rounds newly sealed, oldest first.
    pub fn mark(
        &mut self,
        round: u64,
        theta: Vec<f32>,
        momentum: &[f32],
        applied: u64,
    ) -> Vec<u64> {
        let theta_len = theta.len();
        let mut params = theta;
        if self.outer.has_momentum() {
            if momentum.len() == theta_len {
                params.extend_from_slice(momentum);
            } else {
                params.resize(2 * theta_len, 0.0);
            }
        }
        self.marks.retain(|m| m.round < round);
        // The newest mark only lives on if it falls on the stride.
        let stride = self.stride();
        if self
            .marks
            .back()
            .is_some_and(|m| !m.round.is_multiple_of(stride))
        {
            self.marks.pop_back();
        }
        self.marks.push_back(Mark {
            round,
            params: Arc::new(params),
            applied,
            sealed: false,
            theta_len,
        });
        while self.marks.len() > self.keep {
            self.marks.pop_front();
        }
        self.seal(round)
    }

    /// Seals the marks that no late update can change once `open` is the open round.
    fn seal(&mut self, open: u64) -> Vec<u64> {
        let mut sealed = Vec::new();
        for m in &mut self.marks {
            // Corrections reach back to round open − horizon and change the marks after it.
            if !m.sealed && m.round + self.horizon <= open {
                m.sealed = true;
                sealed.push(m.round);
            }
        }
        sealed
    }

    /// Applies a late correction of `round` (its aggregate after minus before, `delta`, or None
    /// where neither counts) to the marks of later rounds, and `applied_change` (what its updates
    /// added to minus took from the digest, wrapping) to their digests.
    pub fn correct(&mut self, round: u64, delta: Option<&[f32]>, applied_change: u64) {
        for m in self.marks.iter_mut().filter(|m| m.round > round) {
            debug_assert!(!m.sealed, "a correction reached a sealed mark");
            m.applied = m.applied.wrapping_add(applied_change);
            if let Some(delta) = delta {
                let ago = m.round - round;
                let (gain, momentum_gain) = (
                    self.outer.late_gain(ago),
                    self.outer.late_momentum_gain(ago),
                );
                let n = m.theta_len;
                let params = Arc::make_mut(&mut m.params);
                let (theta, momentum) = params.split_at_mut(n);
                for (p, &d) in theta.iter_mut().zip(delta) {
                    *p -= gain * d;
                }
                for (p, &d) in momentum.iter_mut().zip(delta) {
                    *p += momentum_gain * d;
                }
            }
        }
    }

    /// Moves the marks of `round` and later as drift repair moved the replica from `mine`, its
    /// mark of `round`, toward `theirs` ([`pull_replica`]): as if the repair had happened at
    /// `round`. Sealed ones among them are sealed again at the next mark, so that their
    /// fingerprints are taken anew.
    pub fn shift(&mut self, round: u64, mine: &[f32], theirs: &[f32], share: f32) {
        for m in self.marks.iter_mut().filter(|m| m.round >= round) {
            let n = m.theta_len;
            let params = Arc::make_mut(&mut m.params);
            let (theta, momentum) = params.split_at_mut(n);
            let mut outer = OuterOptimizer::new(self.outer);
            outer.set_momentum(momentum.to_vec());
            pull_replica(&mut outer, theta, mine, theirs, share, m.round - round);
            if !momentum.is_empty() {
                momentum.copy_from_slice(outer.momentum());
            }
            m.sealed = false;
        }
    }

    /// The mark of `round`, if kept.
    pub fn get(&self, round: u64) -> Option<&Mark> {
        self.marks.iter().find(|m| m.round == round)
    }

    /// The newest mark.
    pub fn newest(&self) -> Option<&Mark> {
        self.marks.back()
    }

    /// The oldest round marked.
    pub fn oldest(&self) -> Option<u64> {
        self.marks.front().map(|m| m.round)
    }

    /// Every mark kept, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Mark> {
        self.marks.iter()
    }

    /// Forgets every mark: θ no longer descends from them (after a state sync).
    pub fn clear(&mut self) {
        self.marks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(keep: usize) -> Marks {
        Marks::new(OuterConfig::Sgd { lr: 1.0 }, 4, keep)
    }

    fn theta(v: f32) -> Vec<f32> {
        vec![v; 3]
    }

    #[test]
    fn a_mark_is_sealed_a_horizon_after_its_round() {
        let mut m = marks(8);
        for round in 0..4 {
            assert!(m.mark(round, theta(0.0), &[], 0).is_empty());
        }
        assert_eq!(m.mark(4, theta(0.0), &[], 0), vec![0]);
        assert_eq!(m.mark(5, theta(0.0), &[], 0), vec![1]);
        assert!(m.get(1).is_some_and(|m| m.sealed));
        assert!(m.get(2).is_some_and(|m| !m.sealed));
    }

    #[test]
    fn a_correction_reaches_the_later_marks_only() {
        let mut m = Marks::new(
            OuterConfig::Nesterov {
                lr: 1.0,
                momentum: 0.5,
            },
            4,
            8,
        );
        for round in 0..4 {
            m.mark(round, theta(0.0), &[], 10);
        }
        m.correct(1, Some(&[1.0, 0.0, -2.0]), 5);
        assert_eq!(*m.get(1).unwrap().params, vec![0.0; 6]);
        assert_eq!(m.get(1).unwrap().applied, 10);
        // Round 2 starts one round after round 1's aggregate: θ −(1 + ½) δ, the momentum δ;
        // round 3: θ −(1 + ½ + ¼) δ, the momentum ½ δ.
        assert_eq!(
            *m.get(2).unwrap().params,
            vec![-1.5, 0.0, 3.0, 1.0, 0.0, -2.0]
        );
        assert_eq!(m.get(3).unwrap().theta(), &[-1.75, 0.0, 3.5]);
        assert_eq!(m.get(3).unwrap().params[3..], [0.5, 0.0, -1.0]);
        assert_eq!(m.get(3).unwrap().applied, 15);
    }

    #[test]
    fn a_small_budget_keeps_marks_on_a_stride_long_enough_to_seal() {
        let mut m = marks(3);
        assert_eq!(m.stride(), 3);
        let mut sealed = Vec::new();
        for round in 0..20 {
            sealed.extend(m.mark(round, theta(round as f32), &[], 0));
            assert!(m.iter().count() <= 3);
            assert_eq!(m.newest().map(|m| m.round), Some(round));
        }
        assert_eq!(sealed, vec![0, 3, 6, 9, 12, 15]);
    }

    #[test]
    fn a_shift_moves_the_marks_from_its_round_on_and_unseals_them() {
        let mut m = marks(8);
        for round in 0..6 {
            m.mark(round, theta(1.0), &[], 0);
        }
        m.shift(1, &[1.0; 3], &[3.0; 3], 0.5);
        assert_eq!(*m.get(0).unwrap().params, vec![1.0; 3]);
        assert!(m.get(0).unwrap().sealed);
        assert_eq!(*m.get(1).unwrap().params, vec![2.0; 3]);
        assert!(!m.get(1).unwrap().sealed);
        assert_eq!(m.mark(6, theta(2.0), &[], 0), vec![1, 2]);
    }
}
