//! Averaging topologies: whose updates a peer's round waits for (docs/architecture.md).
//!
//! The round loop asks an [`Averaging`] strategy which of the live peers are its partners in a
//! round, and collects until all of theirs are in (or the deadline passes). Broadcast — every live
//! peer, over gossip — is exact and fits small swarms. [`Groups`] (Moshpit SGD's regrouping) keeps
//! per-peer traffic flat in large swarms: the simulator (`sim/`) runs it, the peer runtime not yet
//! (its gossip still carries every update to every peer).

use serde::{Deserialize, Serialize};

/// Chooses a round's averaging partners.
pub trait Averaging: Send + Sync {
    /// The strategy's name, for logs and reports.
    fn name(&self) -> &'static str;

    /// Out of the live peers `live` (peer id bytes, `me` excluded), those whose update for
    /// `round` peer `me` waits for. Must be a pure function of its inputs, so that every peer
    /// derives the same partnerships from the same view.
    fn partners<'a>(&self, round: u64, me: &[u8], live: &'a [Vec<u8>]) -> Vec<&'a [u8]>;
}

/// Every live peer is a partner every round: the exact average, O(N) download per peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Broadcast;

impl Averaging for Broadcast {
    fn name(&self) -> &'static str {
        "broadcast"
    }

    fn partners<'a>(&self, _round: u64, me: &[u8], live: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
        live.iter()
            .map(Vec::as_slice)
            .filter(|p| *p != me)
            .collect()
    }
}

/// Groups of about `size` peers drawn afresh every `every` rounds from the epoch (`round / every`)
/// and the live set (Moshpit SGD's groups, regrouped at random): a peer waits for and averages
/// with its group only, so its traffic and connections stay flat as the swarm grows. Replicas in
/// different groups differ; when the groups change, the new group averages its members'
/// parameters, so what one peer sent reaches the whole swarm within about log_size(N) epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Groups {
    /// The group size aimed at (groups hold between about 2/3 and 3/2 of it).
    pub size: usize,
    /// Rounds a grouping lasts (0 is taken as 1).
    pub every: u64,
}

impl Groups {
    /// Whether `round` starts a new grouping (its groups average their parameters first).
    pub fn regroups_at(&self, round: u64) -> bool {
        round.is_multiple_of(self.every.max(1))
    }

    /// The groups of `round` over `peers` (every live peer, in any order, without repeats): the
    /// peers ordered by a hash of the epoch and their id, dealt in turn into
    /// `max(1, round(N / size))` groups, whose sizes differ by one at most. A pure function, so
    /// every peer with the same view forms the same groups.
    pub fn groups<'a>(&self, round: u64, peers: &[&'a [u8]]) -> Vec<Vec<&'a [u8]>> {
        let size = self.size.max(1);
        let count = ((peers.len() + size / 2) / size).max(1);
        let mut order: Vec<(u64, &'a [u8])> = peers
            .iter()
            .map(|&p| {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&(round / self.every.max(1)).to_le_bytes());
                h.update(p);
                (h.digest(), p)
            })
            .collect();
        order.sort_unstable();
        let mut groups = vec![Vec::new(); count.min(peers.len()).max(1)];
        let n = groups.len();
        for (i, (_, p)) in order.into_iter().enumerate() {
            groups[i % n].push(p);
        }
        groups
    }
}

impl Averaging for Groups {
    fn name(&self) -> &'static str {
        "groups"
    }

    fn partners<'a>(&self, round: u64, me: &[u8], live: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
        let mut all: Vec<&[u8]> = live.iter().map(Vec::as_slice).collect();
        if !all.contains(&me) {
            all.push(me);
        }
        let groups = self.groups(round, &all);
        let Some(mine) = groups.into_iter().find(|g| g.contains(&me)) else {
            return Vec::new();
        };
        // The group's members as slices of `live` (me aside), for the caller's lifetime.
        live.iter()
            .map(Vec::as_slice)
            .filter(|p| *p != me && mine.contains(p))
            .collect()
    }
}

/// The configured topology (TOML: `averaging = "broadcast"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AveragingConfig {
    /// [`Broadcast`].
    #[default]
    Broadcast,
}

impl AveragingConfig {
    /// The strategy this configuration names.
    pub fn build(self) -> Box<dyn Averaging> {
        match self {
            Self::Broadcast => Box::new(Broadcast),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_partners_are_every_live_peer_but_me() {
        let live = vec![b"a".to_vec(), b"b".to_vec(), b"me".to_vec()];
        let a = AveragingConfig::default().build();
        assert_eq!(a.name(), "broadcast");
        assert_eq!(a.partners(3, b"me", &live), vec![&b"a"[..], &b"b"[..]]);
        assert!(a.partners(0, b"me", &[]).is_empty());
    }

    fn ids(n: u32) -> Vec<Vec<u8>> {
        (0..n).map(|i| i.to_le_bytes().to_vec()).collect()
    }

    #[test]
    fn groups_cover_every_peer_once_at_about_the_size_and_change_every_round() {
        let g = Groups { size: 8, every: 1 };
        for n in [1u32, 5, 8, 12, 13, 100, 1000] {
            let live = ids(n);
            let refs: Vec<&[u8]> = live.iter().map(Vec::as_slice).collect();
            let groups = g.groups(7, &refs);
            let mut all: Vec<&[u8]> = groups.iter().flatten().copied().collect();
            all.sort_unstable();
            let mut want = refs.clone();
            want.sort_unstable();
            assert_eq!(all, want, "every peer in exactly one group (n = {n})");
            let (lo, hi) = (
                groups.iter().map(Vec::len).min().unwrap_or(0),
                groups.iter().map(Vec::len).max().unwrap_or(0),
            );
            assert!(hi - lo <= 1, "sizes {lo}..{hi} (n = {n})");
            if n >= 8 {
                assert!(
                    (6..=12).contains(&lo) && hi <= 12,
                    "sizes {lo}..{hi} (n = {n})"
                );
            }
            // The order peers are listed in does not matter; the round does.
            let mut shuffled = refs.clone();
            shuffled.reverse();
            assert_eq!(g.groups(7, &shuffled), groups);
            if n >= 16 {
                assert_ne!(g.groups(8, &refs), groups);
            }
        }
    }

    #[test]
    fn a_peers_partners_are_its_group_and_partnership_is_mutual() {
        let g = Groups { size: 4, every: 1 };
        let live = ids(20);
        for round in 0..5 {
            for me in &live {
                let others: Vec<Vec<u8>> = live.iter().filter(|p| *p != me).cloned().collect();
                let partners = g.partners(round, me, &others);
                assert!((2..=5).contains(&partners.len()), "{}", partners.len());
                for p in partners {
                    let theirs: Vec<Vec<u8>> =
                        live.iter().filter(|q| q.as_slice() != p).cloned().collect();
                    assert!(g.partners(round, p, &theirs).contains(&me.as_slice()));
                }
            }
        }
    }

    #[test]
    fn regrouping_mixes_the_swarm_in_a_few_rounds() {
        // Who has heard (through group averages) from peer 0, round after round.
        let g = Groups { size: 8, every: 1 };
        let live = ids(1000);
        let refs: Vec<&[u8]> = live.iter().map(Vec::as_slice).collect();
        let mut heard: std::collections::BTreeSet<&[u8]> = [refs[0]].into();
        let mut rounds = 0;
        while heard.len() < refs.len() {
            let groups = g.groups(rounds, &refs);
            for group in groups {
                if group.iter().any(|p| heard.contains(p)) {
                    heard.extend(group);
                }
            }
            rounds += 1;
            assert!(rounds <= 10, "{} of 1000 after 10 rounds", heard.len());
        }
        // log_8(1000) ≈ 3.3: a few rounds past it.
        assert!(rounds <= 6, "{rounds} rounds to reach everyone");
    }

    #[test]
    fn a_grouping_lasts_its_epoch() {
        let g = Groups { size: 4, every: 10 };
        let live = ids(40);
        let refs: Vec<&[u8]> = live.iter().map(Vec::as_slice).collect();
        assert!(g.regroups_at(0) && !g.regroups_at(9) && g.regroups_at(10));
        assert_eq!(g.groups(0, &refs), g.groups(9, &refs));
        assert_ne!(g.groups(9, &refs), g.groups(10, &refs));
    }
}
