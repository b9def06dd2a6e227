//! The network task: polls the swarm, validates what arrives, executes the runtime's commands.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use gradswarm_core::wire::{heartbeat_topic, updates_topic};
use gradswarm_core::{
    Announce, DropReason, Heartbeat, Request, Response, Update, UpdateGossip, WireLimits,
};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad};
use tracing::{debug, info, warn};

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::store::UpdateStore;
use crate::{
    Command, NetConfig, NetError, NetEvent, NetHandle, PROTOCOL_VERSION, Role, StateServer, Topic,
};

/// Events waiting for the runtime beyond this are dropped (and logged): the network task must
/// never block on a busy runtime, and a flood must not grow memory without bound.
const EVENT_QUEUE: usize = 4096;

/// Announced updates being pulled at once, at most; announcements beyond are ignored (not
/// forwarded, not held against anyone), so a flood of announcements cannot queue unbounded work.
const MAX_PULLS: usize = 256;

/// How long before a peer that could not be reached directly is looked for again.
const FIND_BACKOFF: Duration = Duration::from_secs(10);

/// Updates kept to serve pulls: enough for a few rounds of a large swarm.
const STORE_ENTRIES: usize = 1024;

/// An announcement whose payload is being pulled; its gossipsub verdict waits for the payload.
struct Pull {
    message_id: gossipsub::MessageId,
    propagation_source: PeerId,
    announce: Announce,
    /// Peers asked so far (the announcer first, then the peer that forwarded the announcement).
    asked: Vec<PeerId>,
}

/// Runs one node's swarm until [`NetHandle::shutdown`] or until every handle is dropped.
pub struct Driver {
    swarm: Swarm<Behaviour>,
    config: NetConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<NetEvent>,
    updates: IdentTopic,
    heartbeats: IdentTopic,
    state_server: Option<StateServer>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, NetError>>>,
    joined: HashSet<PeerId>,
    lost_events: u64,
    store: UpdateStore,
    pulls: HashMap<OutboundRequestId, Pull>,
    finding: HashMap<PeerId, web_time::Instant>,
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
        for topic in [&updates, &heartbeats] {
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
            wire,
        };
        // Own and pulled updates, up to a few dense copies of θ.
        let store_bytes = config.max_message_bytes.saturating_mul(8).max(64 << 20);
        let driver = Self {
            swarm,
            store: UpdateStore::new(store_bytes, STORE_ENTRIES),
            pulls: HashMap::new(),
            finding: HashMap::new(),
            config,
            commands,
            events,
            updates,
            heartbeats,
            state_server: None,
            pending: HashMap::new(),
            joined: HashSet::new(),
            lost_events: 0,
        };
        Ok((handle, event_rx, driver))
    }

    /// Polls the swarm and the command queue until shut down.
    pub async fn run(mut self) {
        let mut discovery_every = Duration::from_secs(1);
        let mut discovery = futures_timer::Delay::new(discovery_every).fuse();
        loop {
            futures::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.next() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                _ = discovery => {
                    // Walk the DHT for peers of the run: often at first, then every half minute.
                    if self.swarm.behaviour_mut().kad.bootstrap().is_err() {
                        debug!("no known peers to walk the DHT from yet");
                    }
                    discovery_every = (discovery_every * 2).min(Duration::from_secs(30));
                    discovery = futures_timer::Delay::new(discovery_every).fuse();
                }
            }
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(NetError::Stopped));
        }
        info!("network task stopped");
    }

    fn emit(&mut self, event: NetEvent) {
        // Bootstrap nodes have no runtime to feed, only a console to print addresses on.
        if self.config.role == Role::Bootstrap && !matches!(event, NetEvent::Listening(_)) {
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

    fn on_command(&mut self, command: Command) {
        match command {
            Command::PublishUpdate { update, bytes } => {
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
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::ServeState(server) => self.state_server = Some(server),
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    warn!("dial {addr}: {e}");
                }
            }
            Command::Shutdown => {}
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
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
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if self.joined.remove(&peer_id) => self.emit(NetEvent::PeerLeft(peer_id)),
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossip(event),
            BehaviourEvent::Rpc(event) => self.on_rpc(event),
            BehaviourEvent::Pull(event) => self.on_pull(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != PROTOCOL_VERSION {
                    return;
                }
                let kad = &mut self.swarm.behaviour_mut().kad;
                for addr in info.listen_addrs {
                    kad.add_address(&peer_id, addr);
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. }) => self.connect(peer),
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(Ok(found)),
                ..
            }) => {
                // The answer to `find`: dial the peer looked for if the DHT knows where it is.
                for info in found.peers {
                    if self.finding.contains_key(&info.peer_id) && !info.addrs.is_empty() {
                        let kad = &mut self.swarm.behaviour_mut().kad;
                        for addr in info.addrs {
                            kad.add_address(&info.peer_id, addr);
                        }
                        self.connect(info.peer_id);
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
            _ => {}
        }
    }

    /// Peers keep a direct connection to every peer they learn of, so gossip meshes form; bootstrap
    /// nodes only answer.
    fn connect(&mut self, peer: PeerId) {
        if self.config.role == Role::Peer
            && peer != *self.swarm.local_peer_id()
            && !self.swarm.is_connected(&peer)
            && let Err(e) = self.swarm.dial(peer)
        {
            debug!("dial {peer}: {e}");
        }
    }

    /// Dials `peer` if not connected; without an address for it, asks the DHT where it is (the
    /// answer's routing update dials it). At most once per [`FIND_BACKOFF`] per peer.
    fn find(&mut self, peer: PeerId) {
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
        if self.swarm.dial(peer).is_err() {
            self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let from = message.source.unwrap_or(propagation_source);
                // A peer heard of only through others: connect to it directly, so that pulls go
                // straight to it and its leaving is seen as a closed connection.
                if from != propagation_source {
                    self.find(from);
                }
                let verdict = if message.topic == self.updates.hash() {
                    match self.check_update_gossip(from, &message.data) {
                        Ok(Gossiped::Announced(announce)) => {
                            // The verdict waits for the payload: forwarded only once it is here.
                            self.start_pull(message_id, propagation_source, from, announce);
                            return;
                        }
                        Ok(Gossiped::Event(event)) => Ok(event),
                        Err(reason) => Err(reason),
                    }
                } else if message.topic == self.heartbeats.hash() {
                    self.check_heartbeat(from, &message.data)
                } else {
                    Err(DropReason::ForeignRun)
                };
                self.conclude(&message_id, &propagation_source, from, verdict);
            }
            gossipsub::Event::Subscribed { peer_id, topic }
                if topic == self.updates.hash() && self.joined.insert(peer_id) =>
            {
                self.emit(NetEvent::PeerJoined(peer_id));
            }
            gossipsub::Event::Unsubscribed { peer_id, topic }
                if topic == self.updates.hash() && self.joined.remove(&peer_id) =>
            {
                self.emit(NetEvent::PeerLeft(peer_id));
            }
            _ => {}
        }
    }

    /// Hands the verdict on a gossip message to gossipsub (which forwards only accepted ones and
    /// scores the sender of rejected ones down) and what passed, or why it failed, to the runtime.
    fn conclude(
        &mut self,
        message_id: &gossipsub::MessageId,
        propagation_source: &PeerId,
        from: PeerId,
        verdict: Result<Option<NetEvent>, DropReason>,
    ) {
        let acceptance = match verdict {
            Ok(event) => {
                if let Some(event) = event {
                    self.emit(event);
                }
                MessageAcceptance::Accept
            }
            Err(reason) => {
                debug!("rejected a message from {from}: {reason}");
                self.emit(NetEvent::Dropped { from, reason });
                MessageAcceptance::Reject
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(message_id, propagation_source, acceptance);
    }

    /// The limits updates are checked against; bootstrap nodes, which know no model, only bound
    /// the size.
    fn limits(&self) -> WireLimits {
        self.config.limits.unwrap_or(WireLimits {
            max_message_bytes: self.config.max_message_bytes,
            max_samples: u64::MAX,
            model_len: usize::MAX,
        })
    }

    /// Checks what the updates topic brought: an inline update is checked whole; an announcement
    /// is checked as far as its header goes, and then pulled (bootstrap nodes only forward it).
    fn check_update_gossip(&self, from: PeerId, data: &[u8]) -> Result<Gossiped, DropReason> {
        let limits = self.limits();
        match UpdateGossip::from_bytes(data, &limits).map_err(|_| DropReason::Malformed)? {
            UpdateGossip::Inline(update) => self
                .check_update(from, update, data.len())
                .map(Gossiped::Event),
            UpdateGossip::Announce(announce) => {
                self.check_header(
                    from,
                    &announce.run_id,
                    &announce.peer_id,
                    announce.model_hash,
                )?;
                if self.config.model_hash.is_none() || self.store.contains(&announce.digest) {
                    // A bootstrap node forwards announcements without pulling; a peer that holds
                    // the update already (its own, or pulled) has nothing to fetch.
                    return Ok(Gossiped::Event(None));
                }
                Ok(Gossiped::Announced(announce))
            }
        }
    }

    /// The header checks every message of the run passes: run, signer, model.
    fn check_header(
        &self,
        from: PeerId,
        run_id: &str,
        peer_id: &[u8],
        model_hash: gradswarm_core::ModelHash,
    ) -> Result<(), DropReason> {
        if run_id != self.config.run_id {
            return Err(DropReason::ForeignRun);
        }
        if peer_id != from.to_bytes() {
            return Err(DropReason::SenderMismatch);
        }
        if self.config.model_hash.is_some_and(|h| h != model_hash) {
            return Err(DropReason::ForeignModel);
        }
        Ok(())
    }

    /// Checks and decodes a parsed update (inline, or pulled after its announcement); bootstrap
    /// nodes check only what they can without the model (run id, sender).
    fn check_update(
        &self,
        from: PeerId,
        update: Update,
        bytes: usize,
    ) -> Result<Option<NetEvent>, DropReason> {
        self.check_header(from, &update.run_id, &update.peer_id, update.model_hash)?;
        if self.config.model_hash.is_none() {
            return Ok(None);
        }
        let decoded = update
            .decode_payload(&self.limits())
            .map_err(|_| DropReason::Malformed)?;
        if !decoded.values.iter().all(|v| v.is_finite()) {
            return Err(DropReason::NonFinite);
        }
        Ok(Some(NetEvent::Update {
            from,
            update: Arc::new(update),
            decoded: Arc::new(decoded),
            bytes,
        }))
    }

    /// Asks the announcer for the announced update.
    fn start_pull(
        &mut self,
        message_id: gossipsub::MessageId,
        propagation_source: PeerId,
        from: PeerId,
        announce: Announce,
    ) {
        if self.pulls.len() >= MAX_PULLS {
            warn!(
                "{} pulls in flight; ignoring an announcement from {from}",
                self.pulls.len()
            );
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    MessageAcceptance::Ignore,
                );
            return;
        }
        let pull = Pull {
            message_id,
            propagation_source,
            announce,
            asked: Vec::new(),
        };
        self.ask(pull, from);
    }

    fn ask(&mut self, mut pull: Pull, peer: PeerId) {
        let request = Request::Update {
            run_id: self.config.run_id.clone(),
            digest: pull.announce.digest,
        };
        pull.asked.push(peer);
        let id = self.swarm.behaviour_mut().pull.send_request(&peer, request);
        self.pulls.insert(id, pull);
    }

    /// A pull ended: with bytes to check, or with nothing (then the forwarder is asked, if it was
    /// someone else; a forwarder only forwards announcements whose payload it pulled).
    fn finish_pull(&mut self, pull: Pull, answer: Result<Vec<u8>, String>) {
        let from = PeerId::from_bytes(&pull.announce.peer_id).unwrap_or(pull.propagation_source);
        let bytes = match answer {
            Ok(bytes) => bytes,
            Err(reason) => {
                if !pull.asked.contains(&pull.propagation_source) {
                    debug!("pull from {from} failed ({reason}); asking the forwarder");
                    let forwarder = pull.propagation_source;
                    self.ask(pull, forwarder);
                    return;
                }
                debug!("announced update of {from} unavailable: {reason}");
                self.emit(NetEvent::Dropped {
                    from,
                    reason: DropReason::Unfetchable,
                });
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(
                        &pull.message_id,
                        &pull.propagation_source,
                        MessageAcceptance::Ignore,
                    );
                return;
            }
        };
        let verdict = Update::from_bytes(&bytes, &self.limits())
            .map_err(|_| DropReason::PayloadMismatch)
            .and_then(|update| {
                if pull.announce.matches(&update, &bytes) {
                    Ok(update)
                } else {
                    Err(DropReason::PayloadMismatch)
                }
            })
            .and_then(|update| self.check_update(from, update, bytes.len()));
        if verdict.is_ok() {
            self.store.insert(pull.announce.digest, Arc::new(bytes));
        }
        self.conclude(&pull.message_id, &pull.propagation_source, from, verdict);
    }

    fn on_pull(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let response = match request {
                        Request::Update { run_id, digest } if run_id == self.config.run_id => self
                            .store
                            .get(&digest)
                            .map(|b| Response::Update(b.as_ref().clone()))
                            .unwrap_or_else(|| Response::Error("no such update here".into())),
                        _ => Response::Error("not an update of this run".into()),
                    };
                    if self
                        .swarm
                        .behaviour_mut()
                        .pull
                        .send_response(channel, response)
                        .is_err()
                    {
                        debug!("{peer} went away before its update was sent");
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(pull) = self.pulls.remove(&request_id) {
                        let answer = match response {
                            Response::Update(bytes) => Ok(bytes),
                            Response::Error(e) => Err(e),
                            Response::StateChunk { .. } => Err("answered with state".into()),
                        };
                        self.finish_pull(pull, answer);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(pull) = self.pulls.remove(&request_id) {
                    self.finish_pull(pull, Err(error.to_string()));
                }
            }
            _ => {}
        }
    }

    fn check_heartbeat(&self, from: PeerId, data: &[u8]) -> Result<Option<NetEvent>, DropReason> {
        let heartbeat = Heartbeat::from_bytes(data).map_err(|_| DropReason::Malformed)?;
        self.check_header(
            from,
            &heartbeat.run_id,
            &heartbeat.peer_id,
            heartbeat.model_hash,
        )?;
        Ok(Some(NetEvent::Heartbeat { from, heartbeat }))
    }

    fn on_rpc(&mut self, event: request_response::Event<gradswarm_core::Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let response = match &self.state_server {
                        Some(server) => server(&request),
                        None => Response::Error("this node serves no state".into()),
                    };
                    if self
                        .swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, response)
                        .is_err()
                    {
                        debug!("{peer} went away before its state chunk was sent");
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            _ => {}
        }
    }
}

/// What a message of the updates topic turned out to be.
enum Gossiped {
    /// Done with: an event for the runtime, or nothing (a bootstrap node's view).
    Event(Option<NetEvent>),
    /// An announcement whose payload must be pulled.
    Announced(Announce),
}

/// A multiaddr's peer id, when it ends in `/p2p/<id>`.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}
