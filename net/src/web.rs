//! Browser transport: WebSocket through the browser's own API (websocket-websys) + noise + yamux,
//! the swarm on wasm-bindgen-futures. A browser cannot listen, so it dials a node's `/ws` address.

use std::sync::Arc;

use futures::channel::mpsc;
use libp2p::core::{Transport, upgrade};
use libp2p::identity::Keypair;
use libp2p::{noise, websocket_websys, yamux};

use crate::behaviour::Behaviour;
use crate::{Counting, Driver, NetConfig, NetError, NetEvent, NetHandle, WireCounters};

/// Builds a browser swarm for `config` with identity `key`; spawn [`Driver::run`] with
/// `wasm_bindgen_futures::spawn_local`. `config.listen` is ignored: browsers only dial.
pub fn build(
    config: NetConfig,
    key: Keypair,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>, Driver), NetError> {
    let transport = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let mut config = config;
    config.listen.clear();
    config.mdns = false;
    let behaviour_config = config.clone();
    let wire = Arc::new(WireCounters::default());
    let counters = wire.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        // Bytes are counted below noise, as the native TCP transport counts them.
        .with_other_transport(move |key| {
            let noise = noise::Config::new(key)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                websocket_websys::Transport::default()
                    .map(move |stream, _| Counting::new(stream, counters.clone()))
                    .upgrade(upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .boxed(),
            )
        })
        .map_err(|e| transport(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| transport(&e))?
        .with_behaviour(|key, relay_client| {
            Behaviour::new(key, relay_client, &behaviour_config)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| transport(&e))?
        .with_swarm_config(crate::behaviour::swarm_config)
        .build();
    Driver::new(swarm, config, wire)
}
