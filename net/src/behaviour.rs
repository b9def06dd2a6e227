//! The composed behaviour: one struct, one field per protocol (docs/architecture.md).

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, kad,
    ping, relay, request_response,
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
    /// A private run's allow-list: connections to or from any other peer are denied.
    pub allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    /// Caps connections (pending, established, per peer) before any other protocol sees them.
    pub limits: connection_limits::Behaviour,
    /// Exchanges listen addresses and protocol versions.
    pub identify: identify::Behaviour,
    /// Keeps connections alive and measures round-trip time.
    pub ping: ping::Behaviour,
    /// The DHT: bootstrap nodes serve it; peers find each other through it.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Updates and heartbeats.
    pub gossipsub: gossipsub::Behaviour,
    /// State transfer to late joiners.
    pub state: request_response::Behaviour<RpcCodec>,
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
                .with_interval(Duration::from_secs(60))
                // A relayed (`/p2p-circuit`) address reaches the others as soon as it is reserved.
                .with_push_listen_addr_updates(true),
        );
        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_config.set_query_timeout(Duration::from_secs(30));
        // A lookup ends once the 8 closest peers answered, not 20: a walk costs a third of the
        // requests (each answered with up to 20 peers and their addresses), and 8 is still
        // O(log N) hops' worth of redundancy for finding peers, the only thing the DHT does here.
        kad_config.set_replication_factor(LOOKUP_CLOSEST);
        // The driver bootstraps on its own timer, and only peers do.
        kad_config.set_periodic_bootstrap_interval(None);
        let mut kad = kad::Behaviour::with_config(id, MemoryStore::new(id), kad_config);
        // Native nodes answer DHT queries: on a LAN or loopback autonat cannot confirm an external
        // address, and in client mode nobody would add them to a routing table.
        #[cfg(not(target_arch = "wasm32"))]
        kad.set_mode(Some(kad::Mode::Server));
        #[cfg(target_arch = "wasm32")]
        kad.set_mode(Some(kad::Mode::Client));

        let heartbeat_topic =
            gossipsub::IdentTopic::new(gradswarm_core::wire::heartbeat_topic(&config.run_id))
                .hash();
        let mut gossip_builder = gossipsub::ConfigBuilder::default();
        if let Some(lazy) = config.gossip_lazy {
            // Exactly `lazy` peers: the default's quarter of the topic's non-mesh peers grows
            // with the swarm.
            gossip_builder.gossip_lazy(lazy).gossip_factor(0.0);
        }
        if !config.full_mesh {
            // Without a full mesh (group averaging) nothing is gossiped on the updates topic: its
            // mesh only holds connections open, so it is as thin as the heartbeats'.
            let updates_topic =
                gossipsub::IdentTopic::new(gradswarm_core::wire::updates_topic(&config.run_id))
                    .hash();
            gossip_builder
                .mesh_n_for_topic(HEARTBEAT_MESH.1, updates_topic.clone())
                .mesh_n_low_for_topic(HEARTBEAT_MESH.0, updates_topic.clone())
                .mesh_n_high_for_topic(HEARTBEAT_MESH.2, updates_topic.clone())
                .mesh_outbound_min_for_topic(HEARTBEAT_MESH.0 - 1, updates_topic);
        }
        let gossip_config = gossip_builder
            // Heartbeats travel over a thinner mesh than updates: every peer forwards each one
            // to its mesh, so the mesh's degree multiplies the whole topic's bytes (32 peers in
            // groups: 7 KB of a 19 KB steady round), and a heartbeat a hop later costs nothing.
            .mesh_n_for_topic(HEARTBEAT_MESH.1, heartbeat_topic.clone())
            .mesh_n_low_for_topic(HEARTBEAT_MESH.0, heartbeat_topic.clone())
            .mesh_n_high_for_topic(HEARTBEAT_MESH.2, heartbeat_topic.clone())
            .mesh_outbound_min_for_topic(HEARTBEAT_MESH.0 - 1, heartbeat_topic)
            .flood_publish(config.flood_publish)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(config.max_message_bytes)
            .heartbeat_interval(config.gossip_heartbeat)
            // An announcement is forwarded only once its payload is pulled, so the IDONTWANTs
            // the other receivers send on receipt arrive first and spare most forwards; an
            // IDONTWANT (a 16-byte id, below) is far smaller than any message above this size.
            // Measured on bench/four-peers-sparse with the short ids: 2% less uplink (17.1 → 16.8
            // kB per peer per step) than with gossipsub's 1000-byte default.
            .idontwant_message_size_threshold(IDONTWANT_ABOVE_BYTES)
            .message_id_fn(message_id)
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

        let state = request_response::Behaviour::with_codec(
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
        // A relayed connection carries a run's traffic until hole punching replaces it (or for
        // good where the NATs do not allow that): libp2p's default limits (128 KiB, 2 minutes a
        // circuit) cut it within a second of gossip, and hole punching with it.
        let relay_server = (config.role == Role::Bootstrap).then(|| {
            relay::Behaviour::new(
                id,
                relay::Config {
                    max_circuit_bytes: RELAY_CIRCUIT_BYTES,
                    max_circuit_duration: RELAY_CIRCUIT_DURATION,
                    ..Default::default()
                },
            )
        });
        let autonat = autonat::Behaviour::new(
            id,
            autonat::Config {
                // A peer behind a NAT learns it within seconds, and reserves a relay slot.
                boot_delay: Duration::from_secs(3),
                retry_interval: Duration::from_secs(20),
                // A bootstrap node on the internet dials back public addresses only; one on a
                // private network (a LAN, the NAT test's namespaces) serves that network.
                only_global_ips: config.role == Role::Bootstrap
                    && config.listen.iter().all(listens_publicly),
                ..Default::default()
            },
        );
        let allow = config.allow.as_ref().map(|peers| {
            let mut list = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
            let bootstraps = config.bootstrap.iter().filter_map(crate::peer_of);
            for peer in peers.iter().copied().chain(bootstraps) {
                list.allow_peer(peer);
            }
            list
        });
        Ok(Self {
            allow: allow.into(),
            limits: connection_limits::Behaviour::new(connection_limits(config.role)),
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            gossipsub,
            state,
            pull,
            relay_client,
            relay_server: relay_server.into(),
            dcutr: dcutr::Behaviour::new(id),
            autonat,
            mdns: mdns(config, id)?.into(),
        })
    }
}

/// The swarm settings native and browser peers share.
///
/// Substreams settle on their protocol lazily (multistream-select `V1Lazy`): where a handler
/// proposes one protocol, as every push, pull and state request does, its first bytes go out with
/// the proposal instead of a round trip later. On a 60 ms home link that round trip was half of
/// an update's flight. A peer that does not speak the protocol still answers "na", which the
/// dialer reads as the stream's failure, so nothing is accepted that was not agreed.
pub(crate) fn swarm_config(config: libp2p::swarm::Config) -> libp2p::swarm::Config {
    config
        .with_idle_connection_timeout(Duration::from_secs(120))
        .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
}

/// Whether a listen address is on the internet: a global IP, or every interface (`0.0.0.0`).
fn listens_publicly(addr: &libp2p::Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            ip.is_unspecified() || !(ip.is_private() || ip.is_loopback() || ip.is_link_local())
        }
        Some(Protocol::Ip6(ip)) => {
            ip.is_unspecified() || !(ip.is_loopback() || ip.is_unique_local())
        }
        _ => true,
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

/// Connection limits: a peer keeps connections to the peers it trains with and the bootstrap; a
/// bootstrap node is everyone's first contact and relay. Without them a stranger opening
/// connections (1,500 in issue 26's test) had every one accepted. Per peer: one per transport and
/// a relayed one, with room for a redial.
fn connection_limits(role: Role) -> connection_limits::ConnectionLimits {
    let (incoming, total) = match role {
        Role::Peer | Role::Client | Role::Watcher => (MAX_INCOMING_PEER, 2 * MAX_INCOMING_PEER),
        Role::Bootstrap => (MAX_INCOMING_BOOTSTRAP, 2 * MAX_INCOMING_BOOTSTRAP),
    };
    connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_established_incoming(Some(incoming))
        .with_max_established(Some(total))
        .with_max_established_per_peer(Some(4))
}

/// The heartbeat topic's mesh degree: (low, target, high), gossipsub's (5, 6, 12) for updates.
const HEARTBEAT_MESH: (usize, usize, usize) = (3, 4, 6);

/// How many closest peers a DHT lookup seeks (Kademlia's k is 20).
const LOOKUP_CLOSEST: std::num::NonZeroUsize = std::num::NonZeroUsize::new(8).expect("8 > 0");

/// Bytes one relayed connection may carry before the relay closes it (peers reconnect through it).
const RELAY_CIRCUIT_BYTES: u64 = 64 << 20;
/// How long one relayed connection may last before the relay closes it.
const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);

/// Connections a peer accepts that have not finished their handshake.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Established incoming connections of a peer.
const MAX_INCOMING_PEER: u32 = 256;
/// Established incoming connections of a bootstrap node.
const MAX_INCOMING_BOOTSTRAP: u32 = 2048;

/// Messages larger than this are answered with an IDONTWANT to the mesh on receipt.
const IDONTWANT_ABOVE_BYTES: usize = 128;

/// A gossip message's id: 16 bytes of hash over its signer and sequence number, which identify a
/// signed message as gossipsub's default id does (the signer in base58 and the number in decimal,
/// ~70 bytes), but shorter in every IDONTWANT, IHAVE and IWANT that names it.
fn message_id(message: &gossipsub::Message) -> gossipsub::MessageId {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    if let Some(source) = &message.source {
        h.update(&source.to_bytes());
    }
    match message.sequence_number {
        Some(seqno) => h.update(&seqno.to_be_bytes()),
        // Unsigned messages are refused by strict validation; their content names them.
        None => h.update(&message.data),
    }
    gossipsub::MessageId::from(h.digest128().to_be_bytes().to_vec())
}

/// Peer scoring: a peer whose messages fail validation sinks below the gossip and publish
/// thresholds and is graylisted, so one broken or hostile peer cannot keep flooding. What a peer
/// earns by behaving (time in the mesh, first deliveries) is capped small, so that it cannot bank
/// credit to spend on lies: with gossipsub's defaults (1 point per millisecond in the mesh, up to
/// 3600 per topic) a mesh member needed ~30 outstanding rejections to be graylisted.
fn score_params(run_id: &str) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut params = gossipsub::PeerScoreParams {
        topic_score_cap: MAX_TOPIC_CREDIT * 2.0,
        // Peers on one IP beyond 10 are penalised (a sybil's identities share its address), but
        // peers on loopback are processes of one machine: a harness of 16 peers on 127.0.0.1
        // graylisted every one of them and no heartbeat got through.
        ip_colocation_factor_whitelist: [
            std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]
        .into(),
        ..Default::default()
    };
    for topic in [
        gradswarm_core::wire::updates_topic(run_id),
        gradswarm_core::wire::heartbeat_topic(run_id),
    ] {
        let topic = gossipsub::IdentTopic::new(topic).hash();
        let topic_params = gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            // Credit: a point per second in the mesh, up to 10; half a point per first delivery,
            // up to 5 outstanding.
            time_in_mesh_weight: 1.0,
            time_in_mesh_quantum: Duration::from_secs(1),
            time_in_mesh_cap: 10.0,
            first_message_deliveries_weight: 0.5,
            first_message_deliveries_cap: 10.0,
            // Deliveries are not required: a peer may be slow, and that is not misbehaviour.
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            // Squared count × weight: one bad message costs -10 and is forgiven (×0.9 a second);
            // four outstanding (-160) graylist (-80) even a peer holding all the credit above.
            invalid_message_deliveries_weight: -10.0,
            invalid_message_deliveries_decay: 0.9,
            ..Default::default()
        };
        params.topics.insert(topic, topic_params);
    }
    (params, gossipsub::PeerScoreThresholds::default())
}

/// The most a peer can earn on one topic by behaving (time in the mesh and first deliveries).
const MAX_TOPIC_CREDIT: f64 = 10.0 * 1.0 + 10.0 * 0.5;

#[cfg(test)]
mod tests {
    use super::*;

    fn message(
        source: Option<libp2p::PeerId>,
        seqno: Option<u64>,
        data: &[u8],
    ) -> gossipsub::Message {
        gossipsub::Message {
            source,
            data: data.to_vec(),
            sequence_number: seqno,
            topic: gossipsub::IdentTopic::new("t").hash(),
        }
    }

    #[test]
    fn four_invalid_messages_graylist_a_peer_whatever_its_credit_and_one_is_forgiven() {
        let (params, thresholds) = score_params("run");
        assert!(params.validate().is_ok() && thresholds.validate().is_ok());
        let mut credit = 0.0;
        for topic in params.topics.values() {
            assert!(topic.validate().is_ok());
            credit += topic.topic_weight
                * (topic.time_in_mesh_weight * topic.time_in_mesh_cap
                    + topic.first_message_deliveries_weight * topic.first_message_deliveries_cap);
        }
        let credit = credit.min(params.topic_score_cap);
        assert!((credit - 2.0 * MAX_TOPIC_CREDIT).abs() < 1e-9);
        let penalty = |k: f64| {
            params
                .topics
                .values()
                .map(|t| t.invalid_message_deliveries_weight)
                .fold(0.0, f64::min)
                * k
                * k
        };
        assert!(credit + penalty(4.0) < thresholds.graylist_threshold);
        assert!(penalty(1.0) > thresholds.gossip_threshold - 1e-9);
    }

    #[test]
    fn message_ids_are_short_and_name_signer_and_number() {
        let a = libp2p::PeerId::random();
        let b = libp2p::PeerId::random();
        let id = message_id(&message(Some(a), Some(1), b"x"));
        assert_eq!(id.0.len(), 16);
        // The same signed message names itself the same, whatever path brought it.
        assert_eq!(id, message_id(&message(Some(a), Some(1), b"x")));
        assert_ne!(id, message_id(&message(Some(a), Some(2), b"x")));
        assert_ne!(id, message_id(&message(Some(b), Some(1), b"x")));
        // Unsigned (refused later by strict validation): named by content.
        assert_ne!(
            message_id(&message(None, None, b"x")),
            message_id(&message(None, None, b"y"))
        );
    }
}
