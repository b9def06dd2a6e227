//! Data sharding by rendezvous (highest-random-weight) hashing.
//!
//! The corpus is cut into fixed chunks. In each epoch, chunk `c` belongs to the
//! [`DATA_REPLICAS`] live peers with the highest scores `h(peer, c, epoch)`. When a peer leaves,
//! only its chunks move (each to the next in line); when one joins, it takes ≈ r/N of the chunks
//! and nothing else moves. Any peer computes any peer's shard from the peer list alone (Thaler &
//! Ravishankar 1998).
//!
//! Two owners rather than one because identities are free: a sybil that looks live takes its
//! share of the chunks, and what it takes no honest peer trains on. With one owner a fraction f of
//! sybil identities takes f of the data; with two, only the chunks whose owners are both sybils
//! are lost, about f² (a quarter of sybils: 1/16 instead of 1/4). A peer's shard is twice as
//! large; it still trains on the same number of samples per round, drawn from it.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::codec::rng::splitmix64;

/// A peer's identity as the sharding sees it: a stable hash of its id bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardKey(u64);

impl ShardKey {
    /// The key of a peer id (libp2p `PeerId` bytes, or any stable byte string).
    pub fn of(peer_id: &[u8]) -> Self {
        Self(xxh3_64_with_seed(peer_id, 0x6772_6164_7377_726d))
    }

    /// The key as a number (to fold a peer into seeds).
    pub fn value(self) -> u64 {
        self.0
    }
}

/// The rendezvous score of `peer` for `chunk` in `epoch`.
#[inline]
fn score(peer: ShardKey, chunk: u64, epoch: u64) -> u64 {
    splitmix64(peer.0 ^ splitmix64(chunk ^ splitmix64(epoch)))
}

/// Peers that own each chunk (all of them when fewer are live).
pub const DATA_REPLICAS: usize = 2;

/// The index in `peers` of the first owner of `chunk` in `epoch` (ties by lower key), or `None`
/// if empty.
pub fn owner(peers: &[ShardKey], chunk: u64, epoch: u64) -> Option<usize> {
    owners(peers, chunk, epoch, 1).first().copied()
}

/// The indices in `peers` of the `replicas` owners of `chunk` in `epoch`, highest score first
/// (ties by lower key); all of them when there are fewer.
pub fn owners(peers: &[ShardKey], chunk: u64, epoch: u64, replicas: usize) -> Vec<usize> {
    let mut ranked: Vec<(u64, std::cmp::Reverse<ShardKey>, usize)> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| (score(*p, chunk, epoch), std::cmp::Reverse(*p), i))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked
        .into_iter()
        .take(replicas)
        .map(|(_, _, i)| i)
        .collect()
}

/// The chunks of `0..num_chunks` that `me` owns (as one of their [`DATA_REPLICAS`] owners) in
/// `epoch` among `peers` (which should include `me`; if it does not, `me` is counted as live too).
pub fn shard(me: ShardKey, peers: &[ShardKey], num_chunks: u64, epoch: u64) -> Vec<u64> {
    let mut all: Vec<ShardKey> = peers.to_vec();
    if !all.contains(&me) {
        all.push(me);
    }
    let Some(mine) = all.iter().position(|&p| p == me) else {
        return Vec::new();
    };
    (0..num_chunks)
        .filter(|&c| owners(&all, c, epoch, DATA_REPLICAS).contains(&mine))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<ShardKey> {
        (0..n)
            .map(|i| ShardKey::of(format!("peer-{i}").as_bytes()))
            .collect()
    }

    #[test]
    fn every_chunk_has_exactly_its_replicas_of_owners() {
        let ps = peers(5);
        let total: usize = ps.iter().map(|&p| shard(p, &ps, 1000, 3).len()).sum();
        assert_eq!(total, DATA_REPLICAS * 1000);
        assert_eq!(owner(&[], 1, 1), None);
        // Two peers own everything between them, each all of it.
        let two = peers(2);
        assert_eq!(shard(two[0], &two, 50, 0).len(), 50);
    }

    #[test]
    fn a_quarter_of_sybils_takes_about_a_sixteenth_of_the_data_not_a_quarter() {
        let honest = peers(12);
        let sybils: Vec<ShardKey> = (0..4)
            .map(|i| ShardKey::of(format!("sybil-{i}").as_bytes()))
            .collect();
        let all: Vec<ShardKey> = honest.iter().chain(&sybils).copied().collect();
        let chunks = 20_000u64;
        let lost = |replicas: usize| {
            (0..chunks)
                .filter(|&c| {
                    owners(&all, c, 7, replicas)
                        .iter()
                        .all(|&i| sybils.contains(&all[i]))
                })
                .count() as f64
                / chunks as f64
        };
        // One owner: a sybil's share is lost to the honest peers (4/16). Two: both must be
        // sybils, (4/16)(3/15) = 1/20.
        let (single, double) = (lost(1), lost(DATA_REPLICAS));
        assert!((0.22..0.28).contains(&single), "one owner lost {single}");
        assert!((0.035..0.065).contains(&double), "two owners lost {double}");
        // And what the honest peers' shards cover is exactly what is not lost.
        let covered: std::collections::BTreeSet<u64> = honest
            .iter()
            .flat_map(|&h| shard(h, &all, chunks, 7))
            .collect();
        let lost_chunks = (double * chunks as f64).round() as usize;
        assert_eq!(covered.len(), chunks as usize - lost_chunks);
    }

    #[test]
    fn a_lone_peer_owns_everything() {
        let me = ShardKey::of(b"alone");
        assert_eq!(shard(me, &[], 10, 0), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn epochs_reshuffle() {
        let ps = peers(4);
        assert_ne!(shard(ps[0], &ps, 200, 0), shard(ps[0], &ps, 200, 1));
    }
}
