//! Credit: the training samples of a peer's updates that counted in the others' aggregates, as
//! the peers that aggregated them attest, not as the peer claims.
//!
//! Every peer keeps a [`CreditLedger`]: per sender, the samples of its updates that counted in
//! this peer's aggregates (an update's samples are capped by the run at one honest round's, and
//! an update the norm screen dropped counts for nothing). Heartbeats carry these counts a few at a
//! time ([`MAX_ATTESTATIONS`], taking the ledger in turn), so that anyone who hears the run's
//! heartbeats can put each peer's attestations side by side.
//!
//! [`credit`] turns them into a figure: of the `n` peers attesting to a peer, the
//! (⌊(n+1)/4⌋+1)-th largest count, and no more than the peer claims. If at most a quarter of the
//! swarm lies, the `n + 1` peers involved hold at most ⌊(n+1)/4⌋ liars, so the figure is at most
//! what some honest peer counted (liars attesting high cannot lift it) and at least what all but
//! ⌊(n+1)/4⌋ of the attesters counted (liars attesting 0 cannot sink it). A peer's word about itself
//! is never one of its attestations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Attestations one heartbeat carries at most (a ledger larger than this goes out in turns).
pub const MAX_ATTESTATIONS: usize = 8;

/// Senders a [`CreditLedger`] counts at most: identities are free, so past it the one with the
/// fewest samples counted is forgotten.
pub const MAX_LEDGER_PEERS: usize = 4096;

/// A peer named in an attestation: the first 8 bytes of a hash of its id bytes ([`peer_tag`]).
/// Every heartbeat carries up to [`MAX_ATTESTATIONS`] of them, so the ~38-byte id would be most
/// of a heartbeat (measured at 32 peers: ~300 of ~700 bytes); the receiver knows the ids of the
/// peers it heard from, and an attestation of a peer it never heard from counts for nothing.
pub type PeerTag = [u8; 8];

/// `peer_id`'s [`PeerTag`]. Two ids with one tag take ~2³² tries to find, but only between the
/// finder's own ids; hitting a given peer's tag takes ~2⁶⁴ (and the first id heard keeps it).
pub fn peer_tag(peer_id: &[u8]) -> PeerTag {
    xxhash_rust::xxh3::xxh3_64(peer_id).to_le_bytes()
}

/// One peer's word on another: the samples of `peer`'s updates that counted in its aggregates
/// so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The peer whose updates counted ([`peer_tag`] of its id bytes).
    pub peer: PeerTag,
    /// Their samples, summed over the updates that counted.
    pub samples: u64,
}

/// What this peer counted of each sender's updates: what its heartbeats attest.
#[derive(Clone, Debug, Default)]
pub struct CreditLedger {
    counted: BTreeMap<Vec<u8>, u64>,
    /// Where the next heartbeat's attestations start (the first key at or after it).
    cursor: Vec<u8>,
}

impl CreditLedger {
    /// Counts an update of `peer` with `samples` samples that counted in an aggregate.
    pub fn count(&mut self, peer: &[u8], samples: u64) {
        if self.counted.len() >= MAX_LEDGER_PEERS && !self.counted.contains_key(peer) {
            let least = self
                .counted
                .iter()
                .min_by_key(|&(_, &n)| n)
                .map(|(p, _)| p.clone());
            if let Some(least) = least {
                self.counted.remove(&least);
            }
        }
        let n = self.counted.entry(peer.to_vec()).or_default();
        *n = n.saturating_add(samples);
    }

    /// Takes back an update counted before (its sender equivocated: it counts nowhere).
    pub fn uncount(&mut self, peer: &[u8], samples: u64) {
        if let Some(n) = self.counted.get_mut(peer) {
            *n = n.saturating_sub(samples);
        }
    }

    /// The samples counted of `peer` so far.
    pub fn counted(&self, peer: &[u8]) -> u64 {
        self.counted.get(peer).copied().unwrap_or(0)
    }

    /// The next [`MAX_ATTESTATIONS`] counts, in turn: after `⌈peers / MAX_ATTESTATIONS⌉`
    /// heartbeats every sender counted here has been attested.
    pub fn attestations(&mut self) -> Vec<Attestation> {
        let after = self.counted.range(self.cursor.clone()..);
        let before = self.counted.range(..self.cursor.clone());
        let out: Vec<(&Vec<u8>, u64)> = after
            .chain(before)
            .take(MAX_ATTESTATIONS)
            .map(|(p, &samples)| (p, samples))
            .collect();
        if let Some((last, _)) = out.last() {
            // The key right after the last one sent: `last ++ [0]` sorts just past it.
            self.cursor = [last.as_slice(), &[0]].concat();
        }
        out.into_iter()
            .map(|(p, samples)| Attestation {
                peer: peer_tag(p),
                samples,
            })
            .collect()
    }
}

/// A peer's credit from what its attesters counted (`attested`, in any order) and what it claims
/// itself: the (⌊(n+1)/4⌋+1)-th largest of the `n` counts, at most `claimed`, 0 when there are too
/// few attesters to outvote the liars among them.
pub fn credit(attested: &mut [u64], claimed: u64) -> u64 {
    attested.sort_unstable_by(|a, b| b.cmp(a));
    let liars = (attested.len() + 1) / 4;
    attested.get(liars).copied().unwrap_or(0).min(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_attests_every_sender_in_turn() {
        let mut ledger = CreditLedger::default();
        for p in 0..20u8 {
            ledger.count(&[p], u64::from(p) * 10);
            ledger.count(&[p], 1);
        }
        ledger.uncount(&[3], 1);
        assert_eq!(ledger.counted(&[3]), 30);
        let mut seen = BTreeMap::new();
        for _ in 0..3 {
            let batch = ledger.attestations();
            assert!(batch.len() <= MAX_ATTESTATIONS);
            for a in batch {
                seen.insert(a.peer, a.samples);
            }
        }
        assert_eq!(seen.len(), 20, "three heartbeats of 8 cover 20 senders");
        assert_eq!(seen.get(&peer_tag(&[3])), Some(&30));
        assert_eq!(seen.get(&peer_tag(&[19])), Some(&191));
        // And it wraps around.
        assert_eq!(ledger.attestations().len(), MAX_ATTESTATIONS);
    }

    #[test]
    fn a_flood_of_identities_keeps_the_ledger_bounded_and_the_largest_counts() {
        let mut ledger = CreditLedger::default();
        ledger.count(b"honest", 10_000);
        for i in 0..2 * MAX_LEDGER_PEERS as u64 {
            ledger.count(&i.to_le_bytes(), 1);
        }
        assert_eq!(ledger.counted.len(), MAX_LEDGER_PEERS);
        assert_eq!(ledger.counted(b"honest"), 10_000);
    }

    #[test]
    fn liars_among_the_attesters_neither_lift_nor_sink_a_credit() {
        // Two peers: the one other peer's count is the credit.
        assert_eq!(credit(&mut [640], 10_000), 640);
        // Four peers, one liar attesting far too much: the honest counts decide.
        assert_eq!(credit(&mut [u64::MAX, 640, 600], 10_000), 640);
        // …or nothing at all.
        assert_eq!(credit(&mut [0, 640, 600], 10_000), 600);
        // Eight peers, two liars colluding for a third: they cannot lift it past the honest counts.
        let mut attested = [u64::MAX, u64::MAX, 300, 320, 310, 290, 305];
        assert_eq!(credit(&mut attested, u64::MAX), 320);
        // A peer never credited more than it claims, whatever its attesters say.
        assert_eq!(credit(&mut [640, 640, 640], 100), 100);
        // Nobody attesting: no credit.
        assert_eq!(credit(&mut [], 1000), 0);
    }
}
