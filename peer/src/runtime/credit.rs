//! Credit ([`gradswarm_core::credit`]): what this peer counted of the others' updates (its
//! heartbeats attest it), and what the others attest of this peer's updates and of each other's.

use std::collections::BTreeMap;

use gradswarm_core::Heartbeat;
use gradswarm_net::PeerId;

use super::Peer;

impl Peer {
    /// Takes in a heartbeat's claims and attestations.
    pub(super) fn take_attestations(&mut self, heartbeat: &Heartbeat) {
        let now = self.born.elapsed().as_millis() as u64;
        self.view.take(heartbeat, now);
    }

    /// This peer's credit: the samples of its updates that counted in the others' aggregates, as
    /// they attest it.
    pub(super) fn own_credit(&self) -> u64 {
        self.view.credit(&self.me.to_bytes(), self.samples).samples
    }

    /// Every peer's credit (its own included) as this peer's view of the run has it, by id (base58).
    pub(super) fn credits(&self) -> BTreeMap<String, u64> {
        self.view
            .online(u64::MAX, u64::MAX)
            .into_iter()
            .map(|p| {
                let name = PeerId::from_bytes(&p.peer_id)
                    .map(|id| id.to_base58())
                    .unwrap_or_else(|_| "?".into());
                (name, self.view.credit(&p.peer_id, p.samples).samples)
            })
            .collect()
    }
}
