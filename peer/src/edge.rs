//! Where a peer's messages leave it. Honest peers send what they computed ([`Honest`]); the
//! harness's attacker peers (`harness/src/attack.rs`) rewrite it here, so that an attacker runs
//! every other line of the peer code, on real sockets, and only lies where a stranger could.

use gradswarm_core::{Heartbeat, PeerState, Update};

/// Rewrites what a peer is about to send. Every method's default sends it unchanged.
pub trait Edge: Send {
    /// The update about to be published and the Δ it encodes; returns the updates to publish
    /// instead (none, the same, or several).
    fn update(&mut self, update: Update, _delta: &[f32]) -> Vec<Update> {
        vec![update]
    }

    /// The heartbeat about to be published; returns the heartbeats to publish instead.
    fn heartbeat(&mut self, heartbeat: Heartbeat) -> Vec<Heartbeat> {
        vec![heartbeat]
    }

    /// θ at the start of `round` as this peer describes it to others: what its heartbeats
    /// fingerprint and what partners fetch when they reconcile (its own training is unchanged).
    fn mark(&mut self, _round: u64, _params: &mut Vec<f32>) {}

    /// The replica this peer serves its new group at `round`, where that is not `params` (its
    /// θ as [`Edge::mark`] left it, and as its fingerprint describes it); None serves `params`.
    fn replica(&mut self, _round: u64, _params: &[f32]) -> Option<Vec<f32>> {
        None
    }

    /// The state this peer serves to joiners.
    fn snapshot(&mut self, _state: &mut PeerState) {}

    /// An update this peer received (after validation), as an attacker that copies others' sees it.
    fn received(&mut self, _update: &Update) {}
}

/// Sends everything as computed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Honest;

impl Edge for Honest {}
