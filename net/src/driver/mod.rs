//! The network task: polls the swarm, validates what arrives, executes the runtime's commands.
//! Its jobs live in modules of their own: [`discovery`] (finding and dialling peers),
//! [`validate`] (checking gossip before it is forwarded), [`pull`] (announce-and-pull of
//! updates) and [`state`] (the state protocol).

mod discovery;
mod nat;
mod pull;
pub(crate) mod rate;
mod sparse;
mod state;
mod validate;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::FusedFuture;
use futures::{FutureExt, StreamExt};
use gradswarm_core::wire::{heartbeat_topic, updates_topic};
use gradswarm_core::{Announce, Request, Response, UpdateGossip};
use libp2p::gossipsub::IdentTopic;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tracing::{debug, info, warn};

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::store::UpdateStore;
use crate::{Command, NetConfig, NetError, NetEvent, NetHandle, Role, StateServer, Topic};
use pull::Pull;

/// Events waiting for the runtime beyond this are dropped (and logged): the network task must
/// never block on a busy runtime, and a flood must not grow memory without bound.
const EVENT_QUEUE: usize = 4096;

/// Updates kept to serve pulls: enough for a few rounds of a large swarm.
const STORE_ENTRIES: usize = 1024;

/// How often parked pulls are looked at (see `pull::PULL_ROUNDS`).
const RETRY_TICK: Duration = Duration::from_millis(125);

/// Peers in the routing table from which the DHT walk slows to [`WALK_SETTLED_EVERY`]: a full
/// bucket's worth (Kademlia's k), so the table already answers for anyone near. Each walk asks up
/// to k peers for k peers each (with their addresses): 32 peers walking every few seconds at first
/// spent 2 MB each on it in their first dozen rounds, a quarter of their uplink over 100 rounds
/// (bench/thirty-two, by protocol). Peers of the run find each other by their heartbeats anyway.
const WALK_SETTLED_PEERS: usize = 20;

/// How often a node with a full routing table walks the DHT (libp2p's own default period).
const WALK_SETTLED_EVERY: Duration = Duration::from_secs(300);

/// Runs one node's swarm until [`NetHandle::shutdown`] or until every handle is dropped.
pub struct Driver {
    swarm: Swarm<Behaviour>,
    config: NetConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<NetEvent>,
    updates: IdentTopic,
    heartbeats: IdentTopic,
    state_server: Option<StateServer>,
    /// The run's manifest and data, when this node serves them.
    run_files: Option<Arc<gradswarm_core::RunFiles>>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, NetError>>>,
    joined: HashSet<PeerId>,
    lost_events: u64,
    store: UpdateStore,
    pulls: HashMap<OutboundRequestId, Pull>,
    /// Pulls that no server answered yet, with when to ask again.
    parked: Vec<(web_time::Instant, Pull)>,
    /// Whether updates pushed straight to this node count ([`NetHandle::accept_pushes`]).
    accept_pushes: bool,
    finding: HashMap<PeerId, web_time::Instant>,
    /// The DHT lookup `find` has running, if any: one at a time, since one lookup's answer holds
    /// the k peers closest to its target, which in a swarm of a few dozen is nearly all of them.
    lookup: Option<libp2p::kad::QueryId>,
    /// Whether this peer listens through the bootstrap nodes' relays (autonat found it private).
    relayed: bool,
    /// Per-signer rate limits, one per topic (updates, heartbeats).
    rates: [rate::RateLimit; 2],
    /// Bytes of state served to each requester.
    served: rate::RateLimit,
    /// Bytes of the run's data served to each requester (set with the run's files).
    served_data: rate::RateLimit,
    /// libp2p's metrics, when the config asked for them.
    metrics: Option<libp2p::metrics::Metrics>,
    /// Until when each peer's connection stays though nothing else needs it: it opened or
    /// carried a request or a push lately, or one is being dialled for a push or a request
    /// (noted only with few connections: see `sparse`).
    keep_until: HashMap<PeerId, web_time::Instant>,
    /// The peers this node last pushed its update to (its group of the last round it pushed
    /// in), whose connections stay.
    partners: Vec<PeerId>,
    /// Connected peers that listen nowhere (browser tabs), by identify: their connections stay.
    undialable: HashSet<PeerId>,
    /// Shared with the handle: how many peers this node is connected to.
    wire: Arc<crate::WireCounters>,
}

impl Driver {
    /// Subscribes to the run's topics, listens and dials the bootstrap nodes; returns the handle,
    /// the event stream and the driver to poll.
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        config: NetConfig,
        wire: std::sync::Arc<crate::WireCounters>,
    ) -> Result<(NetHandle, mpsc::Receiver<NetEvent>, Self), NetError> {
        let updates = IdentTopic::new(updates_topic(&config.run_id));
        let heartbeats = IdentTopic::new(heartbeat_topic(&config.run_id));
        let topics = match config.role {
            Role::Client => Vec::new(),
            Role::Watcher => vec![&heartbeats],
            Role::Peer | Role::Bootstrap => vec![&updates, &heartbeats],
        };
        for topic in topics {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(topic)
                .map_err(|e| NetError::Gossip(e.to_string()))?;
        }
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Transport(format!("listen on {addr}: {e}")))?;
        }
        for addr in &config.bootstrap {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                let mut plain = addr.clone();
                plain.pop();
                swarm.behaviour_mut().kad.add_address(&peer, plain);
            }
            swarm
                .dial(addr.clone())
                .map_err(|e| NetError::Transport(format!("dial {addr}: {e}")))?;
        }
        let (command_tx, commands) = mpsc::unbounded();
        let (events, event_rx) = mpsc::channel(EVENT_QUEUE);
        let handle = NetHandle {
            commands: command_tx,
            local_peer_id: *swarm.local_peer_id(),
            wire: wire.clone(),
        };
        let store_bytes = store_budget(config.max_message_bytes);
        let metrics = config.metrics.as_ref().map(|registry| {
            let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            // It names its metrics `libp2p_…` itself.
            libp2p::metrics::Metrics::new(&mut registry)
        });
        let driver = Self {
            metrics,
            swarm,
            store: UpdateStore::new(store_bytes, STORE_ENTRIES),
            pulls: HashMap::new(),
            parked: Vec::new(),
            accept_pushes: false,
            finding: HashMap::new(),
            lookup: None,
            relayed: false,
            rates: [rate::RateLimit::messages(), rate::RateLimit::messages()],
            served: rate::RateLimit::served_state(config.max_message_bytes),
            served_data: rate::RateLimit::served_data(0),
            config,
            commands,
            events,
            updates,
            heartbeats,
            state_server: None,
            run_files: None,
            pending: HashMap::new(),
            joined: HashSet::new(),
            lost_events: 0,
            keep_until: HashMap::new(),
            partners: Vec::new(),
            undialable: HashSet::new(),
            wire,
        };
        Ok((handle, event_rx, driver))
    }

    /// Polls the swarm and the command queue until shut down.
    pub async fn run(mut self) {
        let mut discovery_every = Duration::from_secs(1);
        let mut discovery = futures_timer::Delay::new(discovery_every).fuse();
        // The routing table's size at the last walk: a walk after which it did not grow found
        // nobody, and the next waits longer (see below).
        let mut known_at_walk = 0;
        // Armed only while pulls are parked: an idle node is not woken for nothing.
        let mut retry = futures::future::Fuse::terminated();
        let mut prune = futures_timer::Delay::new(sparse::PRUNE_EVERY).fuse();
        loop {
            if retry.is_terminated() && !self.parked.is_empty() {
                retry = futures_timer::Delay::new(RETRY_TICK).fuse();
            }
            futures::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.next() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                _ = retry => self.retry_parked(),
                _ = prune => {
                    self.prune();
                    prune = futures_timer::Delay::new(sparse::PRUNE_EVERY).fuse();
                }
                _ = discovery => {
                    // Walk the DHT for peers of the run: often at first, then every half minute,
                    // and only every few minutes once the routing table is full.
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    let known: usize = kad.kbuckets().map(|b| b.num_entries()).sum();
                    // A table that filled since the last walk (kad walks by itself while it
                    // holds fewer than k) waits for the settled period before the next one.
                    let settled = known >= WALK_SETTLED_PEERS;
                    if (!settled || discovery_every >= WALK_SETTLED_EVERY)
                        && kad.bootstrap().is_err()
                    {
                        debug!("no known peers to walk the DHT from yet");
                    }
                    // A swarm smaller than k never fills the table, and at 8 peers a walk every
                    // half minute was 29 KB of each peer's uplink (bench/home-links, by
                    // protocol): once walks stop finding anyone, they back off to the settled
                    // period. Peers that join later are heard of by their heartbeats and dialled.
                    let found_none = known <= known_at_walk;
                    known_at_walk = known;
                    discovery_every = if settled {
                        WALK_SETTLED_EVERY
                    } else if found_none {
                        (discovery_every * 2).min(WALK_SETTLED_EVERY)
                    } else {
                        (discovery_every * 2).min(Duration::from_secs(30))
                    };
                    discovery = futures_timer::Delay::new(discovery_every).fuse();
                }
            }
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(NetError::Stopped));
        }
        info!("network task stopped");
    }

    /// Hands an event to the runtime without ever waiting on it (a full queue drops it).
    fn emit(&mut self, event: NetEvent) {
        // Bootstrap nodes and clients have no runtime to feed, only a console to print addresses
        // on; a watcher and a bootstrap node (its dashboard) hear heartbeats.
        let wanted = match self.config.role {
            Role::Peer => true,
            Role::Watcher | Role::Bootstrap => matches!(event, NetEvent::Heartbeat { .. }),
            Role::Client => false,
        };
        if !wanted && !matches!(event, NetEvent::Listening(_)) {
            return;
        }
        if let Err(e) = self.events.try_send(event)
            && e.is_full()
        {
            self.lost_events += 1;
            warn!(
                lost = self.lost_events,
                "peer runtime is not keeping up; event dropped"
            );
        }
    }

    /// Publishes this node's update on the updates topic: inline when small, else announced and
    /// kept in the store for pulls.
    fn publish_update(&mut self, update: gradswarm_core::Update, bytes: Vec<u8>) {
        let message = if bytes.len() <= self.config.inline_update_bytes {
            UpdateGossip::Inline(update)
        } else {
            let announce = Announce::of(&update, &bytes);
            self.store.insert(announce.digest, Arc::new(bytes));
            UpdateGossip::Announce(announce)
        };
        let topic = self.updates.clone();
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, message.to_bytes())
        {
            debug!("publish update: {e}");
        }
    }

    /// Carries out one of the runtime's commands.
    fn on_command(&mut self, command: Command) {
        match command {
            Command::PublishUpdate { update, bytes } => self.publish_update(update, bytes),
            Command::PushUpdate { update, bytes, to } => {
                // Kept connected whichever way the update goes: they pull it if it is announced.
                self.partners.clone_from(&to);
                if bytes.len() > gradswarm_core::wire::UPDATE_CHUNK_BYTES {
                    // Too large for one push: the partners pull it in chunks, as under broadcast.
                    warn!("update of {} bytes not pushed; announcing it", bytes.len());
                    self.publish_update(update, bytes);
                } else {
                    for peer in to {
                        self.reach(peer);
                        let request = Request::Push {
                            run_id: self.config.run_id.clone(),
                            bytes: bytes.clone(),
                        };
                        // Its answer (taken, or why not) is only logged: see `on_pull`.
                        self.swarm.behaviour_mut().pull.send_request(&peer, request);
                    }
                }
            }
            Command::Publish { topic, bytes } => {
                let topic = match topic {
                    Topic::Updates => self.updates.clone(),
                    Topic::Heartbeat => self.heartbeats.clone(),
                };
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    // No peers yet, or a duplicate: the round loop carries on either way.
                    debug!("publish: {e}");
                }
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                self.reach(peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::ServeState(server) => self.state_server = Some(server),
            Command::AcceptPushes(accept) => self.accept_pushes = accept,
            Command::ServeRun(files) => {
                self.served_data = rate::RateLimit::served_data(files.manifest().data_bytes);
                self.run_files = Some(files);
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    warn!("dial {addr}: {e}");
                }
            }
            Command::Shutdown => {}
        }
    }

    /// Reacts to the swarm: listen addresses, closed connections, behaviour events.
    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address
                    .with_p2p(*self.swarm.local_peer_id())
                    .unwrap_or_else(|a| a);
                info!("listening on {full}");
                self.emit(NetEvent::Listening(full));
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                debug!("connected to {peer_id}");
                self.keep(peer_id, sparse::NEW_CONNECTION);
                self.count_connections();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.count_connections();
                if self.joined.remove(&peer_id) {
                    self.emit(NetEvent::PeerLeft(peer_id));
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// Counts a swarm event, and the behaviour events libp2p-metrics knows, in libp2p's metrics.
    fn record(&self, event: &SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        let Some(m) = &self.metrics else {
            return;
        };
        m.record(event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => m.record(e),
            _ => {}
        }
    }

    /// Tells the handle how many peers this node is connected to.
    fn count_connections(&self) {
        self.wire
            .set_connected_peers(self.swarm.connected_peers().count());
    }

    /// Routes a behaviour's event to the module that handles it.
    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        use libp2p::request_response::Event::Message;
        if let BehaviourEvent::State(Message { peer, .. })
        | BehaviourEvent::Pull(Message { peer, .. }) = &event
        {
            self.used(*peer);
        }
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossip(event),
            BehaviourEvent::State(event) => self.on_state(event),
            BehaviourEvent::Pull(event) => self.on_pull(event),
            BehaviourEvent::Autonat(event) => self.on_autonat(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client(event),
            BehaviourEvent::Dcutr(event) => self.on_dcutr(event),
            event => self.on_discovery(event),
        }
    }
}

/// Bytes of updates held to serve, and at most being pulled at once: a few dense copies of θ.
fn store_budget(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(8).max(64 << 20)
}

impl Driver {
    /// [`store_budget`] of this node.
    fn store_budget(&self) -> usize {
        store_budget(self.config.max_message_bytes)
    }
}

/// A multiaddr's peer id, when it ends in `/p2p/<id>`.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}
