//! Data sharding by rendezvous (highest-random-weight) hashing.
//!
//! The corpus is cut into fixed chunks. In each epoch, chunk `c` belongs to the live peer with the
//! highest score `h(peer, c, epoch)`. When a peer leaves, only its chunks move (each to the
//! runner-up); when one joins, it takes ≈ 1/N of the chunks from the others and nothing else moves.
//! Any peer computes any peer's shard from the peer list alone (Thaler & Ravishankar 1998).

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

/// The index in `peers` of the owner of `chunk` in `epoch` (ties by lower key), or `None` if empty.
pub fn owner(peers: &[ShardKey], chunk: u64, epoch: u64) -> Option<usize> {
    peers
        .iter()
        .enumerate()
        .max_by_key(|(_, p)| (score(**p, chunk, epoch), std::cmp::Reverse(**p)))
        .map(|(i, _)| i)
}

/// The chunks of `0..num_chunks` that `me` owns in `epoch` among `peers` (which should include
/// `me`; if it does not, `me` is counted as live too).
pub fn shard(me: ShardKey, peers: &[ShardKey], num_chunks: u64, epoch: u64) -> Vec<u64> {
    let mut all: Vec<ShardKey> = peers.to_vec();
    if !all.contains(&me) {
        all.push(me);
    }
    (0..num_chunks)
        .filter(|&c| owner(&all, c, epoch).map(|i| all[i]) == Some(me))
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
    fn every_chunk_has_exactly_one_owner() {
        let ps = peers(5);
        let total: usize = ps.iter().map(|&p| shard(p, &ps, 1000, 3).len()).sum();
        assert_eq!(total, 1000);
        assert_eq!(owner(&[], 1, 1), None);
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
