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

use std::collections::VecDeque;
use std::sync::Arc;

use crate::outer::OuterConfig;

/// A replica's θ at the start of `round`, with every update it took for earlier rounds so far.
#[derive(Clone, Debug)]
pub struct Mark {
    /// The round whose start θ is.
    pub round: u64,
    /// θ at the start of `round`, corrected by every late update taken since.
    pub params: Arc<Vec<f32>>,
    /// The digest of the updates of the rounds before `round` that θ holds, corrections included.
    pub applied: u64,
    /// No late update can change this mark any more.
    pub sealed: bool,
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

    /// Takes `params`, θ at the start of `round` holding updates of digest `applied`, as the newest
    /// mark (replacing any of that round or later, as after a rollback), and seals the marks
    /// `horizon` rounds old. Returns the rounds newly sealed, oldest first.
    pub fn mark(&mut self, round: u64, params: Arc<Vec<f32>>, applied: u64) -> Vec<u64> {
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
            params,
            applied,
            sealed: false,
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
                let gain = self.outer.late_gain(m.round - round);
                let params = Arc::make_mut(&mut m.params);
                for (p, &d) in params.iter_mut().zip(delta) {
                    *p -= gain * d;
                }
            }
        }
    }

    /// Moves the marks of `round` and later by `share · (theirs − mine)`, as drift repair moved θ
    /// ([`crate::drift::pull_toward`]): as if the repair had happened at `round`. Sealed ones
    /// among them are sealed again at the next mark, so that their fingerprints are taken anew.
    pub fn shift(&mut self, round: u64, mine: &[f32], theirs: &[f32], share: f32) {
        for m in self.marks.iter_mut().filter(|m| m.round >= round) {
            let params: &mut Vec<f32> = Arc::make_mut(&mut m.params);
            crate::drift::pull_toward(params, mine, theirs, share);
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

    fn theta(v: f32) -> Arc<Vec<f32>> {
        Arc::new(vec![v; 3])
    }

    #[test]
    fn a_mark_is_sealed_a_horizon_after_its_round() {
        let mut m = marks(8);
        for round in 0..4 {
            assert!(m.mark(round, theta(0.0), 0).is_empty());
        }
        assert_eq!(m.mark(4, theta(0.0), 0), vec![0]);
        assert_eq!(m.mark(5, theta(0.0), 0), vec![1]);
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
            m.mark(round, theta(0.0), 10);
        }
        m.correct(1, Some(&[1.0, 0.0, -2.0]), 5);
        assert_eq!(*m.get(1).unwrap().params, vec![0.0; 3]);
        assert_eq!(m.get(1).unwrap().applied, 10);
        // Round 2 starts one round after round 1's aggregate: −(1 + ½) δ; round 3: −(1 + ½ + ¼) δ.
        assert_eq!(*m.get(2).unwrap().params, vec![-1.5, 0.0, 3.0]);
        assert_eq!(*m.get(3).unwrap().params, vec![-1.75, 0.0, 3.5]);
        assert_eq!(m.get(3).unwrap().applied, 15);
    }

    #[test]
    fn a_small_budget_keeps_marks_on_a_stride_long_enough_to_seal() {
        let mut m = marks(3);
        assert_eq!(m.stride(), 3);
        let mut sealed = Vec::new();
        for round in 0..20 {
            sealed.extend(m.mark(round, theta(round as f32), 0));
            assert!(m.iter().count() <= 3);
            assert_eq!(m.newest().map(|m| m.round), Some(round));
        }
        assert_eq!(sealed, vec![0, 3, 6, 9, 12, 15]);
    }

    #[test]
    fn a_shift_moves_the_marks_from_its_round_on_and_unseals_them() {
        let mut m = marks(8);
        for round in 0..6 {
            m.mark(round, theta(1.0), 0);
        }
        m.shift(1, &[1.0; 3], &[3.0; 3], 0.5);
        assert_eq!(*m.get(0).unwrap().params, vec![1.0; 3]);
        assert!(m.get(0).unwrap().sealed);
        assert_eq!(*m.get(1).unwrap().params, vec![2.0; 3]);
        assert!(!m.get(1).unwrap().sealed);
        assert_eq!(m.mark(6, theta(2.0), 0), vec![1, 2]);
    }
}
