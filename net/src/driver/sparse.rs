//! A few connections, not a full mesh (`NetConfig::full_mesh` off, as under group averaging): a
//! peer connects to a handful of the peers it learns of and closes, now and then, the
//! connections nothing needs. It keeps its gossip mesh (through which heartbeats reach
//! everyone), its group partners (the peers it pushes its updates to), the bootstrap nodes (its
//! relay and its way back into the DHT), peers that listen nowhere (browser tabs, which could not
//! be dialled again) and whatever carried a request lately; anyone else is dialled when a request
//! or a push goes to it, at an address the DHT knows or looks up. Under broadcast every peer
//! pulls every update from its publisher, so it stays connected to all; a node that listens
//! nowhere itself (a browser tab) does too, since nobody could dial it back.

use std::time::Duration;

use libp2p::PeerId;
use tracing::debug;
use web_time::Instant;

use super::Driver;

/// Connections a peer opens to peers it merely learned of, and keeps while nothing needs more:
/// more than a gossip mesh's degree (4–6), so that gossipsub has peers to graft from.
pub(super) const SPARSE_DEGREE: usize = 8;

/// How often connections nothing needs are looked for.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// How long a connection stays after it last carried a request or a push: longer than a round
/// of most runs, so that a partner's connection is seldom closed between two rounds (it is
/// dialled again if it was), and as long as the state protocol waits for an answer, so that a
/// replica being sent is not cut off.
pub(super) const USED_LATELY: Duration = Duration::from_secs(30);

/// How long a new connection stays though nothing uses it: long enough for gossipsub to graft it
/// into a mesh. DHT walks open most of them (at 32 peers, each peer was connected to all 31 in
/// its first rounds, the walks' connections kept for 30 s like used ones).
pub(super) const NEW_CONNECTION: Duration = Duration::from_secs(10);

impl Driver {
    /// Whether this node keeps a few connections. Not on a full mesh, nor where it listens nowhere
    /// (a browser tab): nobody can dial such a node, so a connection it closed could not be
    /// reopened by a partner pushing to it.
    pub(super) fn sparse(&self) -> bool {
        !self.config.full_mesh && !self.config.listen.is_empty()
    }

    /// Whether this peer dials a peer it merely learned of: always on a full mesh, otherwise
    /// while it holds fewer than [`SPARSE_DEGREE`] connections, dials under way counted: a DHT
    /// walk names a dozen peers at once, all dialled before the first dial completes (at 32
    /// peers every peer was connected to all 31 others in its first rounds).
    pub(super) fn wants_connections(&self) -> bool {
        let dialling = self
            .swarm
            .network_info()
            .connection_counters()
            .num_pending_outgoing() as usize;
        !self.sparse() || self.swarm.connected_peers().count() + dialling < SPARSE_DEGREE
    }

    /// Keeps the connection to `peer` for `how_long` at least, and for longer if so noted before.
    pub(super) fn keep(&mut self, peer: PeerId, how_long: Duration) {
        if self.sparse() {
            let until = Instant::now() + how_long;
            let kept = self.keep_until.entry(peer).or_insert(until);
            *kept = (*kept).max(until);
        }
    }

    /// Notes that a request or a push went to or came from `peer`.
    pub(super) fn used(&mut self, peer: PeerId) {
        self.keep(peer, USED_LATELY);
    }

    /// Readies the connection a request or a push to `peer` is about to take: kept as used, and
    /// dialled (or looked up) if there is none.
    pub(super) fn reach(&mut self, peer: PeerId) {
        self.used(peer);
        self.find(peer);
    }

    /// Closes connections beyond [`SPARSE_DEGREE`] that nothing needs (see the module), those
    /// whose keep ran out first. A peer closed here is not gone: its heartbeats still arrive by
    /// gossip. Nor are closed the connections of peers that listen nowhere (browser tabs): they
    /// could not be dialled again.
    pub(super) fn prune(&mut self) {
        if !self.sparse() {
            return;
        }
        let now = Instant::now();
        let swarm = &self.swarm;
        // A keep noted for a peer being dialled (a push, a request) holds once it is connected.
        self.keep_until
            .retain(|p, until| swarm.is_connected(p) || *until > now);
        self.undialable.retain(|p| swarm.is_connected(p));
        let connected = self.swarm.connected_peers().count();
        if connected <= SPARSE_DEGREE {
            return;
        }
        let behaviour = self.swarm.behaviour();
        let mesh: Vec<PeerId> = behaviour.gossipsub.all_mesh_peers().copied().collect();
        let bootstraps: Vec<PeerId> = self
            .config
            .bootstrap
            .iter()
            .filter_map(crate::peer_of)
            .collect();
        // The keep that ran out first, first; a connection never noted (`None`) before all.
        let mut idle: Vec<(Option<Instant>, PeerId)> = self
            .swarm
            .connected_peers()
            .filter(|p| {
                !mesh.contains(p)
                    && !bootstraps.contains(p)
                    && !self.partners.contains(p)
                    && !self.undialable.contains(p)
            })
            .map(|p| (self.keep_until.get(p).copied(), *p))
            .filter(|(until, _)| until.is_none_or(|t| t <= now))
            .collect();
        idle.sort();
        for (_, peer) in idle.into_iter().take(connected - SPARSE_DEGREE) {
            debug!("closing the idle connection to {peer}");
            let _ = self.swarm.disconnect_peer_id(peer);
            self.keep_until.remove(&peer);
        }
    }
}
