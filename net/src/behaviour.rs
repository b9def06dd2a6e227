//! The composed behaviour: one struct, one field per protocol (DESIGN.md §5).

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, dcutr, gossipsub, identify, kad, ping, relay, request_response,
};

use crate::rpc::RpcCodec;
use crate::{
    KAD_PROTOCOL, NetConfig, NetError, PROTOCOL_VERSION, Role, STATE_PROTOCOL, UPDATE_PROTOCOL,
};

#[cfg(not(target_arch = "wasm32"))]
type Mdns = libp2p::mdns::tokio::Behaviour;
#[cfg(target_arch = "wasm32")]
type Mdns = libp2p::swarm::dummy::Behaviour;

/// Every protocol a gradswarm node speaks. Peers and bootstrap nodes share the struct; a bootstrap
/// node turns the relay server on, and only native peers turn mDNS on.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Exchanges listen addresses and protocol versions.
    pub identify: identify::Behaviour,
    /// Keeps connections alive and measures round-trip time.
    pub ping: ping::Behaviour,
    /// The DHT: bootstrap nodes serve it; peers find each other through it.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Updates and heartbeats.
    pub gossipsub: gossipsub::Behaviour,
    /// State transfer to late joiners.
    pub rpc: request_response::Behaviour<RpcCodec>,
    /// Pulls of announced updates.
    pub pull: request_response::Behaviour<RpcCodec>,
    /// Reservations on relays, for peers behind NAT.
    pub relay_client: relay::client::Behaviour,
    /// Circuit relay v2 server (bootstrap nodes).
    pub relay_server: Toggle<relay::Behaviour>,
    /// Hole punching through a relayed connection.
    pub dcutr: dcutr::Behaviour,
    /// Learns whether this node is publicly reachable.
    pub autonat: autonat::Behaviour,
    /// LAN discovery (native peers).
    pub mdns: Toggle<Mdns>,
}

impl Behaviour {
    /// Builds the behaviour for `config` (the relay client comes from the swarm builder).
    pub fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &NetConfig,
    ) -> Result<Self, NetError> {
        let id = key.public().to_peer_id();
        let identify = identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                .with_interval(Duration::from_secs(60)),
        );
        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_config.set_query_timeout(Duration::from_secs(30));
        // The driver bootstraps on its own timer, and only peers do.
        kad_config.set_periodic_bootstrap_interval(None);
        let mut kad = kad::Behaviour::with_config(id, MemoryStore::new(id), kad_config);
        // Native nodes answer DHT queries: on a LAN or loopback autonat cannot confirm an external
        // address, and in client mode nobody would add them to a routing table.
        #[cfg(not(target_arch = "wasm32"))]
        kad.set_mode(Some(kad::Mode::Server));
        #[cfg(target_arch = "wasm32")]
        kad.set_mode(Some(kad::Mode::Client));

        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(config.max_message_bytes)
            .heartbeat_interval(config.gossip_heartbeat)
            // Inline updates are small (larger ones are announced and pulled), but a peer that
            // already holds one still says so rather than receive it again.
            .idontwant_message_size_threshold(1024)
            .build()
            .map_err(|e| NetError::Gossip(e.to_string()))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| NetError::Gossip(e.to_string()))?;
        let (params, thresholds) = score_params(&config.run_id);
        gossipsub
            .with_peer_score(params, thresholds)
            .map_err(|e| NetError::Gossip(e.to_string()))?;

        let rpc = request_response::Behaviour::with_codec(
            RpcCodec,
            [(
                StreamProtocol::new(STATE_PROTOCOL),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
        );
        // A pull is one update (≤ a dense copy of θ): it either comes quickly or from someone else.
        let pull = request_response::Behaviour::with_codec(
            RpcCodec,
            [(
                StreamProtocol::new(UPDATE_PROTOCOL),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        );
        let relay_server = (config.role == Role::Bootstrap)
            .then(|| relay::Behaviour::new(id, relay::Config::default()));
        let autonat = autonat::Behaviour::new(
            id,
            autonat::Config {
                only_global_ips: config.role == Role::Bootstrap,
                ..Default::default()
            },
        );
        Ok(Self {
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            gossipsub,
            rpc,
            pull,
            relay_client,
            relay_server: relay_server.into(),
            dcutr: dcutr::Behaviour::new(id),
            autonat,
            mdns: mdns(config, id)?.into(),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn mdns(config: &NetConfig, id: libp2p::PeerId) -> Result<Option<Mdns>, NetError> {
    if !config.mdns {
        return Ok(None);
    }
    Mdns::new(libp2p::mdns::Config::default(), id)
        .map(Some)
        .map_err(|e| NetError::Transport(format!("mdns: {e}")))
}

#[cfg(target_arch = "wasm32")]
fn mdns(_: &NetConfig, _: libp2p::PeerId) -> Result<Option<Mdns>, NetError> {
    Ok(None)
}

/// Peer scoring: a peer whose messages fail validation sinks below the gossip and publish
/// thresholds and is eventually graylisted, so one broken or hostile peer cannot keep flooding.
fn score_params(run_id: &str) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut params = gossipsub::PeerScoreParams::default();
    for topic in [
        gradswarm_core::wire::updates_topic(run_id),
        gradswarm_core::wire::heartbeat_topic(run_id),
    ] {
        let topic = gossipsub::IdentTopic::new(topic).hash();
        let topic_params = gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            // Deliveries are not required: a peer may be slow, and that is not misbehaviour.
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            // Squared count × weight: one bad message costs -10, three reach the graylist (-80),
            // so a transient fault is forgiven but a peer that keeps sending garbage is cut off.
            invalid_message_deliveries_weight: -10.0,
            invalid_message_deliveries_decay: 0.9,
            ..Default::default()
        };
        params.topics.insert(topic, topic_params);
    }
    (params, gossipsub::PeerScoreThresholds::default())
}
