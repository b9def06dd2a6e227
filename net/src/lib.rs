//! gradswarm's network: one libp2p [`NetworkBehaviour`](libp2p::swarm::NetworkBehaviour) and the
//! task that drives it.
//!
//! The peer runtime never touches libp2p types. It talks to a [`NetHandle`] (commands in) and a
//! stream of [`NetEvent`]s (validated messages out), while [`Driver::run`] polls the swarm as a
//! plain future, so the same code runs under tokio on the desktop and under wasm-bindgen-futures in
//! the browser. What arrives from the network is checked here, before the peer sees it: gossipsub
//! runs in strict, application-validated mode, and every update is parsed and decoded against the
//! model's wire limits; what fails is rejected (the sender's gossipsub score drops), counted and
//! reported as [`NetEvent::Dropped`].

mod behaviour;
mod counting;
mod driver;
pub mod protocol_bytes;
mod rpc;
pub mod run;
mod store;

#[cfg(not(target_arch = "wasm32"))]
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
#[cfg(not(target_arch = "wasm32"))]
pub mod shaping;
#[cfg(target_arch = "wasm32")]
pub mod web;

use std::sync::Arc;

use futures::channel::{mpsc, oneshot};
use gradswarm_core::{DecodedUpdate, DropReason, Heartbeat, ModelHash, Request, Response, Update};

/// Updates up to this many encoded bytes are gossiped whole; larger ones are announced and pulled.
/// A gossiped message reaches every mesh member, the bootstrap node included, and is forwarded
/// again by each before IDONTWANTs can stop it, while a pulled one travels once per peer that wants
/// it after a ~300-byte announcement: measured (bench/four-peers-top01), gossiping 1.8 kB updates
/// whole cost more uplink than announcing and pulling them, so only tiny updates go inline.
pub const DEFAULT_INLINE_UPDATE_BYTES: usize = 512;
use thiserror::Error;

pub use behaviour::{Behaviour, BehaviourEvent, MAX_PENDING_INCOMING};
pub use counting::{Counting, WireCounters};
pub use driver::rate::RATE_PER_SECOND;
pub use driver::{Driver, peer_of};
pub use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr::Protocol};
pub use rpc::RpcCodec;
pub use store::UpdateStore;

/// Identify's protocol version: peers of other protocol versions are not added to the routing table.
pub const PROTOCOL_VERSION: &str = "/gradswarm/1.0.0";
/// The Kademlia protocol name: gradswarm's DHT is separate from the public IPFS one.
pub const KAD_PROTOCOL: &str = "/gradswarm/kad/1.0.0";
/// The request-response protocol that serves state to late joiners.
pub const STATE_PROTOCOL: &str = "/gradswarm/state/1";
/// The request-response protocol that serves announced updates.
pub const UPDATE_PROTOCOL: &str = "/gradswarm/update/1";

/// The error a node answers a state request with once the requester has had its share of the
/// node's upload; it may ask again later, or ask another peer.
pub const OVER_BUDGET: &str = "over your share of this peer's upload; ask again later";

/// What a node is in the swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A training peer: gossips updates, serves its state.
    Peer,
    /// A bootstrap node: Kademlia server, circuit relay server, forwards the run's gossip.
    Bootstrap,
    /// A node that only asks, on no run's topics: a joiner fetching a run before it trains.
    Client,
    /// A node that only listens to a run's heartbeats (`gradswarm status`): no updates, no
    /// listeners, no dials beyond the nodes it is given.
    Watcher,
}

/// How to set a node's network up.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Peer or bootstrap.
    pub role: Role,
    /// The run whose topics to join.
    pub run_id: String,
    /// The model's configuration hash; `None` (bootstrap nodes) accepts any model's updates.
    pub model_hash: Option<ModelHash>,
    /// Limits every update must meet; `None` (bootstrap nodes) only checks headers.
    pub limits: Option<gradswarm_core::WireLimits>,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap nodes to dial (with their `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS (native only).
    pub mdns: bool,
    /// Largest gossipsub message (an encoded update).
    pub max_message_bytes: usize,
    /// How often gossipsub's mesh maintenance runs; short in tests so meshes form quickly.
    pub gossip_heartbeat: std::time::Duration,
    /// Updates up to this size are gossiped whole, larger ones announced and pulled (0: always pull).
    pub inline_update_bytes: usize,
    /// A private run's allow-list: `Some` refuses connections with any other peer and drops
    /// messages they signed (`not_allowed`), even when an allowed peer forwards them. The
    /// bootstrap nodes dialled are allowed too. `None`: an open run.
    pub allow: Option<Vec<PeerId>>,
    /// A certificate for WebSocket over TLS (`/tls/ws` listen addresses, which browsers dial as
    /// `wss://`): native nodes only; `None`, plain WebSocket only.
    pub tls: Option<TlsCertificate>,
    /// Where libp2p's own metrics go (connections, gossipsub, kad, identify, ping RTT, relay,
    /// dcutr), named `libp2p_…`; `None`: none are kept.
    pub metrics: Option<SharedRegistry>,
    /// A home link modelled in user space on this node's TCP connections (the harness's shaped
    /// scenarios; native only); `None`: the real network as it is.
    pub link: Option<LinkShape>,
    /// Whether this node sends its own gossip to every peer on the topic (gossipsub's flood
    /// publishing: one hop to all, which broadcast's update announcements want) or to its mesh
    /// only (group averaging, where only heartbeats travel the topics).
    pub flood_publish: bool,
    /// How many peers outside its mesh this node tells, each gossip heartbeat, which messages it
    /// has (gossipsub's IHAVE): `None`, gossipsub's default (at least 6, or a quarter of the
    /// topic's peers outside the mesh); `Some(n)`, exactly `n`.
    pub gossip_lazy: Option<usize>,
    /// Whether this peer connects to every peer of the run it hears of (broadcast, where each
    /// update is pulled from its publisher and a closed connection means the peer left) or keeps
    /// a few connections (group averaging: its gossip mesh, its partners, the bootstrap nodes;
    /// anyone else is dialled when a request goes to it, at an address the DHT knows). A node
    /// that listens nowhere (a browser tab) keeps connecting to all: nobody can dial it.
    pub full_mesh: bool,
}

/// A link's bandwidths and round-trip time (see `shaping`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkShape {
    /// Uplink, bits per second.
    pub up_bps: f64,
    /// Downlink, bits per second.
    pub down_bps: f64,
    /// Round-trip time to another such node: each direction carries half of it.
    pub rtt: std::time::Duration,
}

/// A Prometheus registry that the network, the peer and the `/metrics` server share.
pub type SharedRegistry = std::sync::Arc<std::sync::Mutex<prometheus_client::registry::Registry>>;

/// A TLS certificate chain and its private key, DER-encoded.
#[derive(Clone, Debug)]
pub struct TlsCertificate {
    /// The chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Vec<u8>,
}

impl NetConfig {
    /// A peer's network for `run_id`, listening on loopback TCP (any port).
    pub fn peer(run_id: &str, model_hash: ModelHash, limits: gradswarm_core::WireLimits) -> Self {
        Self {
            role: Role::Peer,
            run_id: run_id.to_string(),
            model_hash: Some(model_hash),
            max_message_bytes: limits.max_message_bytes,
            limits: Some(limits),
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            gossip_heartbeat: std::time::Duration::from_millis(500),
            inline_update_bytes: DEFAULT_INLINE_UPDATE_BYTES,
            allow: None,
            tls: None,
            metrics: None,
            link: None,
            flood_publish: true,
            gossip_lazy: None,
            full_mesh: true,
        }
    }

    /// A bootstrap node's network, forwarding `run_id`'s gossip up to `max_message_bytes`.
    pub fn bootstrap(run_id: &str, max_message_bytes: usize) -> Self {
        Self {
            role: Role::Bootstrap,
            run_id: run_id.to_string(),
            model_hash: None,
            limits: None,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            max_message_bytes,
            gossip_heartbeat: std::time::Duration::from_millis(500),
            inline_update_bytes: DEFAULT_INLINE_UPDATE_BYTES,
            allow: None,
            tls: None,
            metrics: None,
            link: None,
            flood_publish: true,
            gossip_lazy: None,
            full_mesh: true,
        }
    }
}

impl NetConfig {
    /// A node that only asks (`Role::Client`): it dials `servers`, listens nowhere and joins no
    /// run's topics; [`run::fetch_manifest`] and [`run::fetch_pieces`] use it.
    pub fn client(servers: Vec<Multiaddr>) -> Self {
        Self {
            role: Role::Client,
            bootstrap: servers,
            ..Self::bootstrap("", MAX_RPC_CLIENT_MESSAGE)
        }
    }
}

impl NetConfig {
    /// A node that watches `run_id`'s heartbeats (`Role::Watcher`) through `servers`.
    pub fn watcher(run_id: &str, servers: Vec<Multiaddr>) -> Self {
        Self {
            role: Role::Watcher,
            bootstrap: servers,
            ..Self::bootstrap(run_id, gradswarm_core::wire::MAX_HEARTBEAT_BYTES)
        }
    }
}

/// The largest gossip message a [`Role::Client`] would take: it takes none.
const MAX_RPC_CLIENT_MESSAGE: usize = 1024;

/// Parses an allow-list's peer ids (as `gradswarm id` prints them).
pub fn parse_peer_ids(ids: &[String]) -> Result<Vec<PeerId>, NetError> {
    ids.iter()
        .map(|id| {
            id.trim()
                .parse()
                .map_err(|e: libp2p::identity::ParseError| NetError::BadPeerId {
                    id: id.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Which of the run's topics a message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// `/gradswarm/<run_id>/updates/1`.
    Updates,
    /// `/gradswarm/<run_id>/heartbeat/1`.
    Heartbeat,
}

/// Answers state requests from other peers (set by the peer runtime; called on the network task
/// with the requester, the connection's authenticated peer).
pub type StateServer = Arc<dyn Fn(PeerId, &Request) -> Response + Send + Sync>;

/// What the peer runtime asks of the network.
pub enum Command {
    /// Publishes this node's update: whole when small, else announced and served on request.
    PublishUpdate {
        /// The update.
        update: Update,
        /// Its encoding (`update.to_bytes()`).
        bytes: Vec<u8>,
    },
    /// Sends this node's update to each of `to` (its group): pushed straight to each, or, when
    /// it does not fit one push, announced on the topic for them to pull.
    PushUpdate {
        /// The update.
        update: Update,
        /// Its encoding.
        bytes: Vec<u8>,
        /// The peers it goes to.
        to: Vec<PeerId>,
    },
    /// Publishes raw bytes on one of the run's topics.
    Publish {
        /// Which topic.
        topic: Topic,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// Sends a request to a peer; the answer (or why there is none) comes back on `reply`.
    Request {
        /// The peer to ask.
        peer: PeerId,
        /// The request.
        request: Request,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Response, NetError>>,
    },
    /// Sets the function that answers state requests.
    ServeState(StateServer),
    /// Whether updates pushed straight to this node count (group averaging) or are refused.
    AcceptPushes(bool),
    /// Serve this run's manifest and data pieces.
    ServeRun(Arc<gradswarm_core::RunFiles>),
    /// Dials an address.
    Dial(Multiaddr),
    /// Closes the swarm and ends [`Driver::run`].
    Shutdown,
}

/// What the network hands the peer runtime: only messages that passed validation, and counts of
/// those that did not.
#[derive(Clone, Debug)]
pub enum NetEvent {
    /// The swarm listens on a new address (with `/p2p/<id>` appended).
    Listening(Multiaddr),
    /// A valid update for this run and model, with its payload decoded.
    Update {
        /// The peer that signed it.
        from: PeerId,
        /// The message.
        update: Arc<Update>,
        /// Its decoded values.
        decoded: Arc<DecodedUpdate>,
        /// Size of the encoded update.
        bytes: usize,
    },
    /// A valid heartbeat.
    Heartbeat {
        /// The peer that signed it.
        from: PeerId,
        /// The heartbeat (boxed: it is the largest event).
        heartbeat: Box<Heartbeat>,
        /// Its signed gossip sequence number, which grows with each message its signer
        /// publishes: heartbeats come by several paths (directly, forwarded, asked for after a
        /// gossip IHAVE) and not always in the order they were sent.
        sequence: u64,
    },
    /// A message that was rejected, and why.
    Dropped {
        /// The peer that signed it (or forwarded it when unsigned).
        from: PeerId,
        /// Why.
        reason: DropReason,
    },
    /// A peer joined the run's update topic.
    PeerJoined(PeerId),
    /// A peer left the run's update topic or this node's last connection to it closed: on a full
    /// mesh the peer left; otherwise the connection may only have been idle.
    PeerLeft(PeerId),
}

/// Network errors.
#[derive(Debug, Error)]
pub enum NetError {
    /// The transport could not be built or could not listen.
    #[error("transport: {0}")]
    Transport(String),
    /// The gossip layer refused the configuration or a publish.
    #[error("gossipsub: {0}")]
    Gossip(String),
    /// A request failed (timeout, connection closed, unsupported protocol).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// Why it failed.
        reason: String,
    },
    /// A peer answered, but with a refusal or an answer that does not hold (asking it again will
    /// not change that).
    #[error("{peer} refused: {reason}")]
    Refused {
        /// The peer asked.
        peer: PeerId,
        /// What it said, or what was wrong with its answer.
        reason: String,
    },
    /// The network task has ended.
    #[error("the network task has stopped")]
    Stopped,
    /// A peer id given by the user (an allow-list) does not parse.
    #[error("{id:?} is not a peer id: {reason}")]
    BadPeerId {
        /// What was given.
        id: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A run folder (manifest and data) could not be read, written or checked.
    #[error("run files {path}: {reason}")]
    RunFiles {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A key file could not be read or written.
    #[error("identity key {path}: {reason}")]
    Identity {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The peer runtime's side of the network: send commands; events arrive on the receiver that
/// [`Driver::new`] returned with it.
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::UnboundedSender<Command>,
    local_peer_id: PeerId,
    wire: Arc<WireCounters>,
}

impl NetHandle {
    /// Bytes this node's counted connections (native TCP) have sent and received so far.
    pub fn wire_bytes(&self) -> (u64, u64) {
        (self.wire.sent(), self.wire.received())
    }

    /// The same connections' substream bytes so far, sent and received, by protocol.
    pub fn wire_by_protocol(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        self.wire.protocols.snapshot()
    }

    /// How many peers this node is connected to now.
    pub fn connected_peers(&self) -> usize {
        self.wire.connected_peers()
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Publishes this node's update on the updates topic: a small one whole, a larger one as an
    /// announcement that peers pull from (docs/architecture.md). Returns the update's encoded size.
    /// Fire-and-forget, like [`Self::publish`].
    pub fn publish_update(&self, update: Update) -> Result<usize, NetError> {
        let bytes = update.to_bytes();
        let len = bytes.len();
        self.send(Command::PublishUpdate { update, bytes })?;
        Ok(len)
    }

    /// Sends this node's update straight to the peers `to` (its group under group averaging),
    /// each over a connection of its own, rather than to the whole swarm on the updates topic.
    /// One larger than a push can carry ([`gradswarm_core::wire::UPDATE_CHUNK_BYTES`]) is
    /// announced on the topic instead, where `to` pull it and the others drop it as not theirs;
    /// either way `to` stay this node's partners, whose connections are kept. Returns the bytes
    /// sent (the encoding once when announced). Fire-and-forget: a partner that does not take it
    /// in is missed by its round, as a lost gossip message would be.
    pub fn push_update(&self, update: Update, to: Vec<PeerId>) -> Result<usize, NetError> {
        let bytes = update.to_bytes();
        let len = bytes.len();
        let sent = if len > gradswarm_core::wire::UPDATE_CHUNK_BYTES {
            len
        } else {
            len * to.len()
        };
        self.send(Command::PushUpdate { update, bytes, to })?;
        Ok(sent)
    }

    /// Publishes raw bytes on one of the run's topics. Fire-and-forget: a publish with no peers yet is not
    /// an error the round loop could act on, so it is only logged by the network task.
    pub fn publish(&self, topic: Topic, bytes: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::Publish { topic, bytes })
    }

    /// Asks `peer` and waits for its answer.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, NetError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            reply,
        })?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// Takes in updates pushed straight to this node by its group partners (`true`, under group
    /// averaging), or refuses them (the default: broadcast has every update signed on gossip).
    pub fn accept_pushes(&self, accept: bool) -> Result<(), NetError> {
        self.send(Command::AcceptPushes(accept))
    }

    /// Installs the function that answers state requests.
    pub fn serve_state(&self, server: StateServer) -> Result<(), NetError> {
        self.send(Command::ServeState(server))
    }

    /// Serves a run's manifest and data pieces to whoever asks ([`Request::Manifest`],
    /// [`Request::Piece`]), within each requester's serving budget.
    pub fn serve_run(&self, files: Arc<gradswarm_core::RunFiles>) -> Result<(), NetError> {
        self.send(Command::ServeRun(files))
    }

    /// Dials `addr`.
    pub fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.send(Command::Dial(addr))
    }

    /// Stops the network task.
    pub fn shutdown(&self) {
        // Already stopped is fine: that is what was asked.
        let _ = self.commands.unbounded_send(Command::Shutdown);
    }

    fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .unbounded_send(command)
            .map_err(|_| NetError::Stopped)
    }
}
