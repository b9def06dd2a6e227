//! The run as its heartbeats show it: who is online, at which round, with what loss and
//! throughput, and each peer's credit as the others attest it ([`crate::credit`]). What
//! `gradswarm status` prints and a dashboard draws. A claim is shown as a claim (a heartbeat is
//! signed by its sender, not checked against anything); credit alone is not the peer's own word.
//! Bounded in size, since identities are free.

use std::collections::BTreeMap;

use crate::credit::{PeerTag, credit, peer_tag};
use crate::wire::Heartbeat;

/// Peers a view keeps at most: past it, the one heard from longest ago is forgotten.
pub const MAX_VIEW_PEERS: usize = 4096;

/// Attesters a view keeps per peer at most: past it, one not heard from for [`STALE_MS`] makes
/// room, else the newcomer is not kept (so that fresh identities cannot push out attesters that
/// are still heartbeating).
pub const MAX_ATTESTERS: usize = 64;

/// An attester silent this long (ms) may give up its place to a new one.
pub const STALE_MS: u64 = 60_000;

/// One peer as its latest heartbeat describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerView {
    /// The peer's id bytes.
    pub peer_id: Vec<u8>,
    /// Its round.
    pub round: u64,
    /// Its latest training loss (NaN before its first step).
    pub loss: f32,
    /// Its latest validation loss (NaN before its first evaluation).
    pub val_loss: f32,
    /// Training samples it says it computed.
    pub samples: u64,
    /// Its tokens per second of compute over its last round.
    pub tokens_per_s: f32,
    /// What it runs (`gradswarm/<version> <desktop|browser> <device>`).
    pub agent: String,
    /// Bytes it says it published so far.
    pub bytes_sent: u64,
    /// Bytes of gossip it says it received so far.
    pub bytes_received: u64,
    /// When its latest heartbeat arrived, in the caller's milliseconds.
    pub heard_ms: u64,
}

/// The run at a glance, over the peers online.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Peers heard from within the timeout.
    pub peers: usize,
    /// The median round they are on (a minority claiming far-off rounds cannot move it).
    pub round: u64,
    /// The median of their latest losses (NaN when none has trained yet).
    pub loss: f32,
    /// The median of their latest validation losses (NaN when none has evaluated yet).
    pub val_loss: f32,
    /// Their tokens per second, summed.
    pub tokens_per_s: f64,
    /// The samples they say they computed, summed.
    pub samples: u64,
    /// Their credit as the others attest it ([`RunView::credit`]), summed.
    pub credit: u64,
}

/// A peer's credit and how many peers attest to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credit {
    /// Samples of its updates that counted in the others' aggregates ([`crate::credit::credit`]).
    pub samples: u64,
    /// Peers whose attestations it rests on.
    pub attesters: usize,
}

/// The latest heartbeat of each peer, for one run, and what each attested of the others.
#[derive(Clone, Debug, Default)]
pub struct RunView {
    peers: BTreeMap<Vec<u8>, PeerView>,
    /// Per peer, what each attester said it counted of that peer's updates.
    attested: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, u64>>,
    /// The peers in `peers` by [`PeerTag`], which attestations name them by. A tag stays with
    /// the first peer heard under it.
    tags: BTreeMap<PeerTag, Vec<u8>>,
}

impl RunView {
    /// Takes a heartbeat that arrived at `now_ms`; an older round of a known peer changes nothing
    /// (gossip may deliver heartbeats out of order).
    pub fn take(&mut self, hb: &Heartbeat, now_ms: u64) {
        if self
            .peers
            .get(&hb.peer_id)
            .is_some_and(|p| p.round > hb.round)
        {
            return;
        }
        if !self.peers.contains_key(&hb.peer_id) && self.peers.len() >= MAX_VIEW_PEERS {
            let oldest = self
                .peers
                .values()
                .min_by_key(|p| p.heard_ms)
                .map(|p| p.peer_id.clone());
            if let Some(oldest) = oldest {
                self.peers.remove(&oldest);
                self.attested.remove(&oldest);
                let tag = peer_tag(&oldest);
                if self.tags.get(&tag) == Some(&oldest) {
                    self.tags.remove(&tag);
                }
            }
        }
        self.tags
            .entry(peer_tag(&hb.peer_id))
            .or_insert_with(|| hb.peer_id.clone());
        self.peers.insert(
            hb.peer_id.clone(),
            PeerView {
                peer_id: hb.peer_id.clone(),
                round: hb.round,
                loss: hb.loss,
                val_loss: hb.val_loss,
                samples: hb.samples,
                tokens_per_s: hb.tokens_per_s,
                agent: hb.agent.clone(),
                bytes_sent: hb.bytes_sent,
                bytes_received: hb.bytes_received,
                heard_ms: now_ms,
            },
        );
        for a in &hb.attests {
            // A peer's word about itself is no attestation; nor is one about a peer never heard.
            let Some(peer) = self.tags.get(&a.peer) else {
                continue;
            };
            if *peer == hb.peer_id {
                continue;
            }
            let attesters = self.attested.entry(peer.clone()).or_default();
            if !attesters.contains_key(&hb.peer_id) && attesters.len() >= MAX_ATTESTERS {
                let heard = |p: &[u8]| self.peers.get(p).map_or(0, |v| v.heard_ms);
                let stale = attesters
                    .keys()
                    .min_by_key(|p| heard(p))
                    .filter(|p| now_ms.saturating_sub(heard(p)) > STALE_MS)
                    .cloned();
                match stale {
                    Some(stale) => {
                        attesters.remove(&stale);
                    }
                    None => continue,
                }
            }
            attesters.insert(hb.peer_id.clone(), a.samples);
        }
    }

    /// `peer`'s credit: what its attesters counted of its updates, robust to a quarter of them
    /// lying, and at most `claimed` (the samples it says it computed).
    pub fn credit(&self, peer: &[u8], claimed: u64) -> Credit {
        let mut counts: Vec<u64> = self
            .attested
            .get(peer)
            .map(|a| a.values().copied().collect())
            .unwrap_or_default();
        Credit {
            attesters: counts.len(),
            samples: credit(&mut counts, claimed),
        }
    }

    /// The peers heard from within `timeout_ms` of `now_ms`, most advanced first.
    pub fn online(&self, now_ms: u64, timeout_ms: u64) -> Vec<&PeerView> {
        let mut online: Vec<&PeerView> = self
            .peers
            .values()
            .filter(|p| now_ms.saturating_sub(p.heard_ms) <= timeout_ms)
            .collect();
        online.sort_by(|a, b| b.round.cmp(&a.round).then(a.peer_id.cmp(&b.peer_id)));
        online
    }

    /// The run over the peers online.
    pub fn summary(&self, now_ms: u64, timeout_ms: u64) -> RunSummary {
        let online = self.online(now_ms, timeout_ms);
        let mut rounds: Vec<u64> = online.iter().map(|p| p.round).collect();
        rounds.sort_unstable();
        RunSummary {
            peers: online.len(),
            round: rounds
                .get(rounds.len().saturating_sub(1) / 2)
                .copied()
                .unwrap_or(0),
            loss: median(online.iter().map(|p| p.loss)),
            val_loss: median(online.iter().map(|p| p.val_loss)),
            tokens_per_s: online.iter().map(|p| f64::from(p.tokens_per_s)).sum(),
            samples: online
                .iter()
                .map(|p| p.samples)
                .fold(0, u64::saturating_add),
            credit: online
                .iter()
                .map(|p| self.credit(&p.peer_id, p.samples).samples)
                .fold(0, u64::saturating_add),
        }
    }
}

/// The lower median of the finite values (NaN when there is none): a minority claiming far-off
/// values cannot move it.
fn median(values: impl Iterator<Item = f32>) -> f32 {
    let mut finite: Vec<f32> = values.filter(|v| v.is_finite()).collect();
    finite.sort_by(f32::total_cmp);
    finite
        .get(finite.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f32::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DriftSketch;
    use crate::credit::Attestation;

    fn hb(peer: u8, round: u64, loss: f32, samples: u64) -> Heartbeat {
        Heartbeat {
            run_id: "r".into(),
            model_hash: [0; 32],
            peer_id: vec![peer; 4],
            round,
            checksum: 0,
            loss,
            val_loss: loss + 0.5,
            sketch: DriftSketch::default(),
            applied: 0,
            published: 0,
            settled: false,
            samples,
            tokens_per_s: 100.0,
            agent: format!("gradswarm/0.1.0 desktop {peer}"),
            throttled: false,
            heard: 0,
            ..Default::default()
        }
    }

    #[test]
    fn the_view_keeps_each_peers_latest_round_and_sums_the_online_ones() {
        let mut view = RunView::default();
        view.take(&hb(1, 5, 3.0, 40), 0);
        view.take(&hb(2, 6, 2.0, 48), 100);
        view.take(&hb(3, 7, f32::NAN, 8), 200);
        // Out of order: peer 1's round 4 arrives after its round 5.
        view.take(&hb(1, 4, 9.0, 32), 300);
        // A liar claiming a far-off round is one voice of three.
        view.take(&hb(4, 1_000_000, 1.0, 1 << 40), 300);
        let s = view.summary(300, 1000);
        assert_eq!(s.peers, 4);
        assert_eq!(s.round, 6);
        assert_eq!(s.loss, 2.0);
        assert_eq!(s.val_loss, 2.5);
        assert_eq!(s.tokens_per_s, 400.0);
        let online = view.online(300, 1000);
        assert_eq!(online[0].round, 1_000_000);
        assert_eq!(
            online
                .iter()
                .find(|p| p.peer_id == vec![1; 4])
                .map(|p| p.round),
            Some(5)
        );
        // Peer 1, last heard at 0, is past a 250 ms timeout at 300.
        assert_eq!(view.summary(300, 250).peers, 3);
    }

    #[test]
    fn a_flood_of_identities_keeps_the_view_bounded() {
        let mut view = RunView::default();
        for i in 0..(MAX_VIEW_PEERS as u64 + 100) {
            let mut h = hb(0, 1, 1.0, 1);
            h.peer_id = i.to_le_bytes().to_vec();
            view.take(&h, i);
        }
        assert_eq!(view.online(u64::MAX, u64::MAX).len(), MAX_VIEW_PEERS);
        // The oldest went first.
        assert!(
            view.online(u64::MAX, u64::MAX)
                .iter()
                .all(|p| p.heard_ms >= 100)
        );
        // Attestations name peers by tag: the forgotten peers' tags go with them.
        assert_eq!(view.tags.len(), MAX_VIEW_PEERS);
        assert!(!view.tags.contains_key(&peer_tag(&0u64.to_le_bytes())));
    }

    fn attesting(mut h: Heartbeat, counts: &[(u8, u64)]) -> Heartbeat {
        h.attests = counts
            .iter()
            .map(|&(p, samples)| Attestation {
                peer: peer_tag(&[p; 4]),
                samples,
            })
            .collect();
        h
    }

    #[test]
    fn credit_is_what_the_others_attest_not_what_a_peer_claims() {
        let mut view = RunView::default();
        // Peer 4 lies: it claims 100× the samples it trained on, attests itself and its
        // friend peer 3 as much, and peers 1 and 2 as nothing.
        for p in 1..=4 {
            view.take(&hb(p, 5, 2.0, if p == 4 { 64_000 } else { 640 }), 0);
        }
        view.take(
            &attesting(hb(1, 6, 2.0, 640), &[(2, 600), (3, 620), (4, 640)]),
            10,
        );
        view.take(
            &attesting(hb(2, 6, 2.0, 640), &[(1, 610), (3, 600), (4, 630)]),
            10,
        );
        view.take(
            &attesting(hb(3, 6, 2.0, 640), &[(1, 640), (2, 640), (4, 600)]),
            10,
        );
        view.take(
            &attesting(
                hb(4, 6, 2.0, 64_000),
                &[(4, 64_000), (3, 1 << 40), (1, 0), (2, 0)],
            ),
            10,
        );
        let of = |p: u8| view.credit(&[p; 4], 640);
        // The liar gets what its three attesters counted (the middle one), not its claim.
        assert_eq!(
            view.credit(&[4; 4], 64_000),
            Credit {
                samples: 630,
                attesters: 3
            }
        );
        // Its friend is not lifted past what an honest peer counted, the others are not sunk.
        assert_eq!(of(3).samples, 620);
        assert_eq!(of(1).samples, 610);
        assert_eq!(of(2).samples, 600);
        // A peer nobody heard of, or an attestation about one, credits nothing.
        assert_eq!(of(9), Credit::default());
        // Without the rule (credit = the claim) the liar would have 64 000.
        let s = view.summary(10, 1000);
        assert_eq!(s.samples, 3 * 640 + 64_000);
        assert_eq!(s.credit, 630 + 620 + 610 + 600);
    }

    #[test]
    fn a_flood_of_attesters_neither_grows_the_view_nor_pushes_out_live_ones() {
        let mut view = RunView::default();
        view.take(&hb(1, 1, 1.0, 640), 0);
        // Peer 2 attests honestly and keeps heartbeating.
        view.take(&attesting(hb(2, 1, 1.0, 640), &[(1, 600)]), 1);
        for i in 0..(3 * MAX_ATTESTERS as u64) {
            let mut h = attesting(hb(0, 1, 1.0, 1), &[(1, 0)]);
            h.peer_id = (i + 1000).to_le_bytes().to_vec();
            view.take(&h, i + 2);
            if i % 10 == 0 {
                view.take(&attesting(hb(2, 1, 1.0, 640), &[(1, 600)]), i + 2);
            }
        }
        let c = view.credit(&[1; 4], 640);
        assert_eq!(c.attesters, MAX_ATTESTERS);
        assert!(view.attested[&vec![1u8; 4]].contains_key(&vec![2u8; 4]));
        // Once the flood's identities fall silent, newcomers take their places.
        let later = 3 * MAX_ATTESTERS as u64 + STALE_MS + 10;
        let mut h = attesting(hb(0, 1, 1.0, 1), &[(1, 5)]);
        h.peer_id = b"newcomer".to_vec();
        view.take(&h, later);
        assert!(view.attested[&vec![1u8; 4]].contains_key(b"newcomer".as_slice()));
    }
}
