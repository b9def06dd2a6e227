//! Finding peers: the DHT, identify's listen addresses, mDNS, and dialling the peers of the run.

use std::time::Duration;

use libp2p::{PeerId, identify, kad};
use tracing::debug;

use super::Driver;
use crate::behaviour::BehaviourEvent;
use crate::{PROTOCOL_VERSION, Role};

/// Whether `addr` is a loopback address.
fn is_loopback(addr: &libp2p::Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// How long before a peer that could not be reached directly is looked for again.
const FIND_BACKOFF: Duration = Duration::from_secs(10);

impl Driver {
    /// Learns addresses from identify, the DHT and mDNS, and connects to the peers found.
    pub(super) fn on_discovery(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != PROTOCOL_VERSION {
                    return;
                }
                if info.listen_addrs.is_empty() && self.sparse() {
                    self.undialable.insert(peer_id);
                }
                // A peer's loopback addresses reach it only from its own machine: when it sees us
                // elsewhere, dialling them would reach ourselves (or another process here), and
                // such a dial can win the race against the address that reaches it (measured in
                // the NAT test: every relayed dial lost to a loopback one that hit the dialler).
                let same_host = is_loopback(&info.observed_addr);
                let kad = &mut self.swarm.behaviour_mut().kad;
                for addr in info.listen_addrs {
                    if same_host || !is_loopback(&addr) {
                        kad.add_address(&peer_id, addr);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. }) => self.connect(peer),
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            }) => {
                if step.last && self.lookup == Some(id) {
                    self.lookup = None;
                }
                let Ok(found) = result else { return };
                // The answer to `find`: dial the peers looked for that the DHT knows where they
                // are (not only its target: others wait while one lookup runs).
                for info in found.peers {
                    if self.finding.contains_key(&info.peer_id) && !info.addrs.is_empty() {
                        let kad = &mut self.swarm.behaviour_mut().kad;
                        for addr in info.addrs {
                            kad.add_address(&info.peer_id, addr);
                        }
                        self.dial(info.peer_id);
                    }
                }
            }
            #[cfg(not(target_arch = "wasm32"))]
            BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    self.connect(peer);
                }
            }
            BehaviourEvent::Allow(never) => match never {},
            _ => {}
        }
    }

    /// Connects to a peer just learned of, so gossip meshes form: every one on a full mesh, a few
    /// otherwise (`sparse`). Bootstrap nodes only answer.
    pub(super) fn connect(&mut self, peer: PeerId) {
        if self.wants_connections() {
            self.dial(peer);
        }
    }

    /// Dials `peer` (a peer's own dials only: bootstrap nodes only answer).
    fn dial(&mut self, peer: PeerId) {
        if self.config.role == Role::Peer
            && peer != *self.swarm.local_peer_id()
            && !self.swarm.is_connected(&peer)
            && let Err(e) = self.swarm.dial(peer)
        {
            debug!("dial {peer}: {e}");
        }
    }

    /// Dials `peer` if not connected; without an address for it, asks the DHT where it is (and
    /// dials it once the answer says). At most once per [`FIND_BACKOFF`] per peer, and one
    /// lookup at a time: each of 32 peers looking up each of the others it heard of before it
    /// knew their addresses made 12 lookups of 20 requests each, and kad half of every peer's
    /// uplink in the run's first rounds (bench/thirty-two, by protocol). A peer not in the running
    /// lookup's answer is looked up again when its backoff has passed and it is heard of again.
    pub(super) fn find(&mut self, peer: PeerId) {
        if self.config.role != Role::Peer
            || peer == *self.swarm.local_peer_id()
            || self.swarm.is_connected(&peer)
            || self
                .finding
                .get(&peer)
                .is_some_and(|t| t.elapsed() < FIND_BACKOFF)
        {
            return;
        }
        if self.finding.len() >= 1024 {
            // Sources are cheap to mint: forget the lookups whose backoff has passed.
            self.finding.retain(|_, t| t.elapsed() < FIND_BACKOFF);
        }
        self.finding.insert(peer, web_time::Instant::now());
        if self.swarm.dial(peer).is_err() && self.lookup.is_none() {
            self.lookup = Some(self.swarm.behaviour_mut().kad.get_closest_peers(peer));
        }
    }
}
