//! NAT traversal: a peer that autonat finds private reserves a slot on the relays it knows (the
//! bootstrap nodes it was given), so that its `/p2p-circuit` address reaches it, and relayed
//! connections are upgraded to direct ones by hole punching (dcutr) where the NATs allow it.

use libp2p::multiaddr::Protocol;
use libp2p::{autonat, dcutr, relay};
use tracing::{info, warn};

use super::Driver;
use crate::Role;

impl Driver {
    /// Reacts to autonat's verdict: behind a NAT, listens through every bootstrap node's relay.
    pub(super) fn on_autonat(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { new, .. } = event else {
            return;
        };
        match new {
            autonat::NatStatus::Private if self.config.role == Role::Peer && !self.relayed => {
                self.relayed = true;
                for addr in self.config.bootstrap.clone() {
                    let circuit = addr.with(Protocol::P2pCircuit);
                    info!("behind a NAT (autonat): reserving a relay slot at {circuit}");
                    if let Err(e) = self.swarm.listen_on(circuit.clone()) {
                        warn!("listening through {circuit}: {e}");
                    }
                }
            }
            autonat::NatStatus::Public(addr) => info!("publicly reachable at {addr} (autonat)"),
            _ => {}
        }
    }

    /// Says what the relay client did: reservations, and circuits through a relay.
    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                ..
            } => info!("relay slot reserved on {relay_peer_id}"),
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                info!("connected to {src_peer_id} through a relay (it dialled)")
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                info!("connected through the relay {relay_peer_id} (we dialled)")
            }
            _ => {}
        }
    }

    /// Says how hole punching went.
    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
        match event.result {
            Ok(_) => info!(
                "direct connection to {} after hole punching",
                event.remote_peer_id
            ),
            Err(e) => warn!("hole punching to {}: {e}", event.remote_peer_id),
        }
    }
}
