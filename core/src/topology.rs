//! Averaging topologies: whose updates a peer's round waits for (docs/architecture.md).
//!
//! The round loop asks an [`Averaging`] strategy which of the live peers are its partners in a
//! round, and collects until all of theirs are in (or the deadline passes). Broadcast — every live
//! peer, over gossip — is exact and fits small swarms; group averaging (Moshpit) or pairwise gossip
//! (AD-PSGD), which keep per-peer traffic flat in large swarms, are further strategies behind the
//! same trait, so the round loop does not change when they come.

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
}
