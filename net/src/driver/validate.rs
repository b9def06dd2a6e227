//! Message validation: what gossip brings is checked (run, signer, model, limits, finiteness)
//! before gossipsub may forward it and before the runtime sees it.

use std::sync::Arc;

use gradswarm_core::{
    Announce, DropReason, Heartbeat, ModelHash, Update, UpdateGossip, WireLimits,
};
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance};
use tracing::debug;

use super::Driver;
use super::rate::Verdict;
use crate::NetEvent;

impl Driver {
    /// Validates a gossip message; its verdict goes to gossipsub, what passed to the runtime.
    pub(super) fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let from = message.source.unwrap_or(propagation_source);
                // A peer heard of only through others: connect to it directly, so that pulls go
                // straight to it and its leaving is seen as a closed connection; without a full
                // mesh, while this peer has few connections, so that its meshes need not go
                // through the bootstrap node (whose mesh holds only a few of a joining swarm).
                if from != propagation_source && self.wants_connections() {
                    self.find(from);
                }
                let topic = usize::from(message.topic != self.updates.hash());
                let now = web_time::Instant::now();
                let acceptance = match self.rates[topic].take(from, now) {
                    Verdict::Allow => None,
                    Verdict::Ignore => Some(MessageAcceptance::Ignore),
                    Verdict::Reject => Some(penalty(from, &propagation_source)),
                };
                if let Some(acceptance) = acceptance {
                    if self.rates[topic].report(from, now) {
                        debug!("{from} is over its rate on {}", message.topic);
                        self.emit(NetEvent::Dropped {
                            from,
                            reason: DropReason::RateLimited,
                        });
                    }
                    self.settle(&message_id, &propagation_source, acceptance);
                    return;
                }
                if self
                    .config
                    .allow
                    .as_ref()
                    .is_some_and(|a| !a.contains(&from))
                {
                    // Signed by a stranger to a private run and forwarded by a member or a
                    // bootstrap node that let it through (rate-limited above like anyone's):
                    // dropped, and not held against the forwarder.
                    self.emit(NetEvent::Dropped {
                        from,
                        reason: DropReason::NotAllowed,
                    });
                    self.settle(&message_id, &propagation_source, MessageAcceptance::Ignore);
                    return;
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
                    self.check_heartbeat(from, &message.data, message.sequence_number)
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
    pub(super) fn conclude(
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
                penalty(from, propagation_source)
            }
        };
        self.settle(message_id, propagation_source, acceptance);
    }

    /// Tells gossipsub what became of a message it holds for validation.
    pub(super) fn settle(
        &mut self,
        message_id: &gossipsub::MessageId,
        propagation_source: &PeerId,
        acceptance: MessageAcceptance,
    ) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(message_id, propagation_source, acceptance);
    }

    /// The limits updates are checked against; bootstrap nodes, which know no model, only bound
    /// the size.
    pub(super) fn limits(&self) -> WireLimits {
        self.config.limits.unwrap_or(WireLimits {
            max_message_bytes: self.config.max_message_bytes,
            max_samples: u64::MAX,
            model_len: usize::MAX,
            codec: None,
        })
    }

    /// Checks what the updates topic brought: an inline update is checked whole; an announcement
    /// is checked as far as its header goes, and then pulled (bootstrap nodes only forward it).
    pub(super) fn check_update_gossip(
        &self,
        from: PeerId,
        data: &[u8],
    ) -> Result<Gossiped, DropReason> {
        let limits = self.limits();
        match UpdateGossip::from_bytes(data, &limits).map_err(|e| DropReason::from(&e))? {
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
                if self.config.model_hash.is_none() {
                    // A bootstrap node forwards announcements without pulling.
                    return Ok(Gossiped::Event(None));
                }
                if self.store.contains(&announce.digest) {
                    // Gossip delivers each message once, and a peer announces each update once:
                    // a second announcement of an update this peer holds is a replay.
                    return Err(DropReason::Duplicate);
                }
                Ok(Gossiped::Announced(announce))
            }
        }
    }

    /// The header checks every message of the run passes: run, signer, model.
    pub(super) fn check_header(
        &self,
        from: PeerId,
        run_id: &str,
        peer_id: &[u8],
        model_hash: ModelHash,
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
    pub(super) fn check_update(
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
            .map_err(|e| DropReason::from(&e))?;
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

    /// Checks a heartbeat's header; a valid one goes to the runtime with its sequence number
    /// (0 if unsigned, which strict validation has refused before).
    pub(super) fn check_heartbeat(
        &self,
        from: PeerId,
        data: &[u8],
        sequence: Option<u64>,
    ) -> Result<Option<NetEvent>, DropReason> {
        let heartbeat = Heartbeat::from_bytes(data).map_err(|_| DropReason::Malformed)?;
        self.check_header(
            from,
            &heartbeat.run_id,
            &heartbeat.peer_id,
            heartbeat.model_hash,
        )?;
        Ok(Some(NetEvent::Heartbeat {
            from,
            heartbeat: Box::new(heartbeat),
            sequence: sequence.unwrap_or(0),
        }))
    }
}

/// The verdict on a bad message: Reject (gossipsub scores the peer that delivered it down) when
/// its signer delivered it, Ignore when a forwarder did. A forwarder may be honest and unable to
/// check it (a bootstrap node knows no model): penalising it would let a liar frame it, cutting
/// honest peers off from each other. The liar is penalised by the peers it sends to directly.
fn penalty(signer: PeerId, delivered_by: &PeerId) -> MessageAcceptance {
    if signer == *delivered_by {
        MessageAcceptance::Reject
    } else {
        MessageAcceptance::Ignore
    }
}

/// What a message of the updates topic turned out to be.
pub(super) enum Gossiped {
    /// Done with: an event for the runtime, or nothing (a bootstrap node's view).
    Event(Option<NetEvent>),
    /// An announcement whose payload must be pulled.
    Announced(Announce),
}
