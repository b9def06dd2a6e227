//! Compressed gossip over hash rings (CHOCO-gossip, Koloskova, Stich and Jaggi, 2019): a peer
//! keeps a few fixed neighbours, and instead of replicas it sends them each round a compressed
//! difference between its parameters and its *public copy* x̂ — the copy every one of its
//! neighbours holds, since they all add the same decoded differences to it. Each peer then moves
//! its parameters toward its neighbours' public copies. Mixing rides on update-sized payloads, so
//! unlike regrouping ([`crate::Groups`]) no round ever moves a whole replica but when a neighbour
//! changes. Today the simulator runs it (bench/README.md, "Compressed gossip, simulated").

use serde::{Deserialize, Serialize};

/// A peer's neighbours over `rings` hash rings: on each ring the peers sit in the order of a hash
/// of the ring's number and their id, and a peer sends to its successor and hears from its
/// predecessor. Every peer sends and hears `rings` times, so the mixing matrix of uniform weights
/// is doubly stochastic (the swarm's mean moves only by the training steps), and a peer joining or
/// leaving changes only its ring neighbours' neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rings {
    /// How many rings: the number of peers a peer sends to and hears from.
    pub rings: usize,
}

/// Whom a peer sends its differences to and whose it hears, one entry per ring (a peer may stand
/// in several entries in a small swarm, and then counts as often in the mixing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Neighbours<'a> {
    /// Its successor on each ring.
    pub sends_to: Vec<&'a [u8]>,
    /// Its predecessor on each ring.
    pub hears_from: Vec<&'a [u8]>,
}

impl Rings {
    /// `me`'s neighbours among `peers` (every live peer, `me` included or not, in any order). A
    /// pure function of the set, so every peer with the same view draws the same rings.
    pub fn neighbours<'a>(&self, me: &[u8], peers: &[&'a [u8]]) -> Neighbours<'a> {
        let mut out = Neighbours::default();
        for ring in 0..self.rings as u64 {
            let key = |p: &[u8]| {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&ring.to_le_bytes());
                h.update(p);
                h.digest()
            };
            let mut others: Vec<(u64, &'a [u8])> = peers
                .iter()
                .filter(|p| **p != me)
                .map(|&p| (key(p), p))
                .collect();
            if others.is_empty() {
                return Neighbours::default();
            }
            others.sort_unstable();
            let mine = (key(me), me);
            // The first after me, and the last before me, around the ring.
            let after = others.partition_point(|o| *o <= (mine.0, mine.1));
            out.sends_to.push(others[after % others.len()].1);
            out.hears_from
                .push(others[(after + others.len() - 1) % others.len()].1);
        }
        out
    }
}

/// The gossip step: θ ← θ + γ (mean of the heard public copies − my public copy). With γ = 1 and
/// exact copies this is plain neighbour averaging; compressed copies lag the parameters, and a
/// γ below 1 keeps their error from piling up (CHOCO's consensus step size).
pub fn mix(theta: &mut [f32], own_public: &[f32], heard: &[&[f32]], gamma: f32) {
    if heard.is_empty() {
        return;
    }
    let w = gamma / heard.len() as f32;
    for (i, (t, &mine)) in theta.iter_mut().zip(own_public).enumerate() {
        let sum: f32 = heard.iter().map(|h| h[i] - mine).sum();
        *t += w * sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<Vec<u8>> {
        (0..n).map(|i| i.to_le_bytes().to_vec()).collect()
    }

    #[test]
    fn every_peer_sends_and_hears_once_a_ring_and_the_rings_are_one_set() {
        let r = Rings { rings: 3 };
        for n in [2u32, 3, 8, 32, 500] {
            let live = ids(n);
            let refs: Vec<&[u8]> = live.iter().map(Vec::as_slice).collect();
            let mut sent = std::collections::HashMap::<&[u8], usize>::new();
            let mut heard = std::collections::HashMap::<&[u8], usize>::new();
            for &me in &refs {
                let nb = r.neighbours(me, &refs);
                assert_eq!((nb.sends_to.len(), nb.hears_from.len()), (3, 3));
                assert!(!nb.sends_to.contains(&me) && !nb.hears_from.contains(&me));
                for (ring, &to) in nb.sends_to.iter().enumerate() {
                    // My successor hears from me on that ring.
                    assert_eq!(r.neighbours(to, &refs).hears_from[ring], me);
                    *heard.entry(to).or_default() += 1;
                }
                *sent.entry(me).or_default() += 3;
                // The order of the view does not matter.
                let mut reversed = refs.clone();
                reversed.reverse();
                assert_eq!(r.neighbours(me, &reversed), nb);
            }
            assert!(heard.values().all(|&h| h == 3) && sent.values().all(|&s| s == 3));
        }
        assert_eq!(r.neighbours(b"me", &[]), Neighbours::default());
    }

    #[test]
    fn one_peer_leaving_changes_only_its_ring_neighbours_neighbours() {
        let r = Rings { rings: 3 };
        let live = ids(64);
        let refs: Vec<&[u8]> = live.iter().map(Vec::as_slice).collect();
        let gone = refs[5];
        let rest: Vec<&[u8]> = refs.iter().copied().filter(|p| *p != gone).collect();
        let changed = rest
            .iter()
            .filter(|&&p| r.neighbours(p, &refs) != r.neighbours(p, &rest))
            .count();
        // Its predecessor and successor on each ring at most.
        assert!(changed <= 6, "{changed} peers' neighbours changed");
    }

    #[test]
    fn mixing_with_exact_copies_keeps_the_mean_and_pulls_toward_it() {
        // A ring of four with exact copies: the mean stays, the spread shrinks.
        let mut thetas = [vec![4.0f32], vec![0.0], vec![0.0], vec![0.0]];
        let copies = thetas.clone();
        for i in 0..4 {
            let heard = [copies[(i + 3) % 4].as_slice()];
            mix(&mut thetas[i], &copies[i], &heard, 0.5);
        }
        let mean: f32 = thetas.iter().map(|t| t[0]).sum::<f32>() / 4.0;
        assert!((mean - 1.0).abs() < 1e-6);
        assert_eq!(thetas[0][0], 2.0);
        assert_eq!(thetas[1][0], 2.0);
        mix(&mut thetas[0], &copies[0], &[], 0.5);
        assert_eq!(thetas[0][0], 2.0);
    }
}
