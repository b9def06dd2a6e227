//! Announce-and-pull: an announced update's payload is fetched over `/gradswarm/update/1` from its
//! announcer (or the peer that forwarded the announcement), in chunks of
//! [`UPDATE_CHUNK_BYTES`] so that any update within the wire limits can travel, checked against
//! the announcement, stored to serve others, and only then accepted for gossipsub to forward.

use std::sync::Arc;
use std::time::Duration;

use gradswarm_core::wire::{UPDATE_CHUNK_BYTES, digest, update_chunks};
use gradswarm_core::{Announce, DropReason, Request, Response, Update};
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::request_response;
use tracing::{debug, warn};

use super::{Driver, rate};
use crate::NetEvent;

/// Announced updates being pulled at once, at most; announcements beyond are ignored (not
/// forwarded, not held against anyone), so a flood of announcements cannot queue unbounded work.
const MAX_PULLS: usize = 256;

/// Peers asked for one announced update, at most: the announcer, the peer that forwarded the
/// announcement, then other peers of the run (one that pulled it serves it too).
const MAX_SERVERS: usize = 4;

/// Times the servers of one announced update are asked in turn before it is dropped as
/// unfetchable. An announcement heard through a forwarder can come before its announcer is
/// reachable (its address is still being looked up) and before the other peers hold its payload:
/// asked again a little later, they usually serve it, where dropping it at once would leave this
/// replica without an update the others took in.
const PULL_ROUNDS: u8 = 4;

/// The wait before the second round of asking; it doubles each round (0.25 + 0.5 + 1 s in all).
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// An announcement whose payload is being pulled; its gossipsub verdict waits for the payload.
pub(super) struct Pull {
    message_id: gossipsub::MessageId,
    propagation_source: PeerId,
    announce: Announce,
    /// Peers asked so far (the announcer first, then the peer that forwarded the announcement).
    asked: Vec<PeerId>,
    /// The chunks received so far from the peer asked last, in order.
    received: Vec<u8>,
    /// Rounds of asking begun (see [`PULL_ROUNDS`]).
    rounds: u8,
}

impl Pull {
    /// Takes one answered chunk; `Ok(true)` once the whole update is in. A chunk out of order or
    /// of another size than the announcement implies ends the pull.
    fn take(&mut self, chunk: u32, chunks: u32, bytes: Vec<u8>) -> Result<bool, String> {
        let total = self.announce.bytes as usize;
        let expected = (self.received.len() / UPDATE_CHUNK_BYTES) as u32;
        let left = total - self.received.len();
        if chunk != expected
            || chunks as usize != update_chunks(total)
            || bytes.len() != left.min(UPDATE_CHUNK_BYTES)
        {
            return Err(format!(
                "sent chunk {chunk} of {chunks} ({} bytes) where chunk {expected} of {} was due",
                bytes.len(),
                update_chunks(total)
            ));
        }
        self.received.extend_from_slice(&bytes);
        Ok(self.received.len() == total)
    }
}

impl Driver {
    /// Asks the announcer for the announced update.
    pub(super) fn start_pull(
        &mut self,
        message_id: gossipsub::MessageId,
        propagation_source: PeerId,
        from: PeerId,
        announce: Announce,
    ) {
        let pulls = self
            .pulls
            .values()
            .chain(self.parked.iter().map(|(_, p)| p));
        let (count, in_flight) = pulls.fold((0, 0u64), |(n, b), p| (n + 1, b + p.announce.bytes));
        if count >= MAX_PULLS || in_flight + announce.bytes > self.store_budget() as u64 {
            warn!(
                "{count} pulls ({in_flight} bytes) in flight; ignoring an announcement from {from}"
            );
            self.settle(&message_id, &propagation_source, MessageAcceptance::Ignore);
            return;
        }
        let pull = Pull {
            message_id,
            propagation_source,
            announce,
            asked: Vec::new(),
            received: Vec::new(),
            rounds: 1,
        };
        self.ask(pull, from);
    }

    /// Asks `peer` for the payload of `pull`'s announcement, from its first chunk.
    pub(super) fn ask(&mut self, mut pull: Pull, peer: PeerId) {
        pull.asked.push(peer);
        pull.received.clear();
        self.ask_next(pull, peer);
    }

    /// Asks `peer` for the next chunk `pull` lacks.
    fn ask_next(&mut self, pull: Pull, peer: PeerId) {
        let request = Request::Update {
            run_id: self.config.run_id.clone(),
            digest: pull.announce.digest,
            chunk: (pull.received.len() / UPDATE_CHUNK_BYTES) as u32,
        };
        let id = self.swarm.behaviour_mut().pull.send_request(&peer, request);
        self.pulls.insert(id, pull);
    }

    /// A pull ended: with bytes to check, or with nothing (then the next server is asked: the
    /// forwarder, then other peers of the run, [`MAX_SERVERS`] in all).
    pub(super) fn finish_pull(&mut self, pull: Pull, answer: Result<Vec<u8>, String>) {
        let from = PeerId::from_bytes(&pull.announce.peer_id).unwrap_or(pull.propagation_source);
        // Bytes from anyone but the announcer must be the ones the announcement's digest names:
        // a server that sends others is the liar, not the announcer, and the next one is asked.
        let served_by_announcer = pull.asked.last() == Some(&from);
        let answer = answer.and_then(|bytes| {
            let announced =
                bytes.len() as u64 == pull.announce.bytes && digest(&bytes) == pull.announce.digest;
            if served_by_announcer || announced {
                Ok(bytes)
            } else {
                Err("served other bytes than announced".to_string())
            }
        });
        let bytes = match answer {
            Ok(bytes) => bytes,
            Err(reason) => {
                if let Some(next) = self.next_server(&pull) {
                    debug!("pull of {from}'s update failed ({reason}); asking {next}");
                    self.ask(pull, next);
                    return;
                }
                if pull.rounds < PULL_ROUNDS {
                    let wait = FIRST_RETRY * (1 << (pull.rounds - 1));
                    debug!("nobody served {from}'s update ({reason}); asking again in {wait:?}");
                    self.parked.push((web_time::Instant::now() + wait, pull));
                    return;
                }
                debug!("announced update of {from} unavailable: {reason}");
                self.emit(NetEvent::Dropped {
                    from,
                    reason: DropReason::Unfetchable,
                });
                self.settle(
                    &pull.message_id,
                    &pull.propagation_source,
                    MessageAcceptance::Ignore,
                );
                return;
            }
        };
        // A pulled update is held to the same limits as an inline one, and dropped for the same
        // reasons (another codec, too many samples); one that is not what was announced is a
        // mismatch.
        let verdict = Update::from_bytes(&bytes, &self.limits())
            .map_err(|e| DropReason::from(&e))
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

    /// Takes in an update `peer` pushed to this node (its group partner): held to the same rate
    /// and the same checks as one from the updates topic, and handed to the runtime, which
    /// counts it only if `peer` is in this node's group for its round.
    fn take_push(&mut self, peer: PeerId, bytes: Vec<u8>) -> Result<(), DropReason> {
        if !self.accept_pushes
            || self
                .config
                .allow
                .as_ref()
                .is_some_and(|a| !a.contains(&peer))
        {
            // Not counted as a drop: under broadcast nobody honest pushes, and a private run's
            // stranger is refused its connection before it gets here.
            return Err(DropReason::NotPartner);
        }
        let now = web_time::Instant::now();
        if self.rates[0].take(peer, now) != rate::Verdict::Allow {
            // Counted once a second per sender, not per message, as on the topic.
            if self.rates[0].report(peer, now) {
                self.emit(NetEvent::Dropped {
                    from: peer,
                    reason: DropReason::RateLimited,
                });
            }
            return Err(DropReason::RateLimited);
        }
        let verdict = Update::from_bytes(&bytes, &self.limits())
            .map_err(|e| DropReason::from(&e))
            .and_then(|update| self.check_update(peer, update, bytes.len()));
        match verdict {
            Ok(event) => {
                if let Some(event) = event {
                    self.emit(event);
                }
                Ok(())
            }
            Err(reason) => {
                debug!("an update {peer} pushed was dropped: {reason}");
                self.emit(NetEvent::Dropped { from: peer, reason });
                Err(reason)
            }
        }
    }

    /// Asks again, from the announcer on, for the updates whose wait has passed.
    pub(super) fn retry_parked(&mut self) {
        let now = web_time::Instant::now();
        let (due, waiting) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.parked = waiting;
        for (_, mut pull) in due {
            let announcer =
                PeerId::from_bytes(&pull.announce.peer_id).unwrap_or(pull.propagation_source);
            pull.rounds += 1;
            pull.asked.clear();
            self.ask(pull, announcer);
        }
    }

    /// Who to ask next for `pull`'s update: the peer that forwarded the announcement (it pulled
    /// the payload before forwarding), then peers of the run not asked yet. An announcer that
    /// died after announcing (SIGKILLed, say) leaves peers that heard it directly nobody else to
    /// ask, and replicas whose pulls succeeded then hold an update the others never get.
    fn next_server(&self, pull: &Pull) -> Option<PeerId> {
        if !pull.asked.contains(&pull.propagation_source) {
            return Some(pull.propagation_source);
        }
        if pull.asked.len() >= MAX_SERVERS {
            return None;
        }
        self.joined
            .iter()
            .filter(|p| !pull.asked.contains(p))
            .min()
            .copied()
    }

    /// Serves pulls of updates this node holds, and takes in the answers to its own pulls.
    pub(super) fn on_pull(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let response = match request {
                        Request::Update {
                            run_id,
                            digest,
                            chunk,
                        } if run_id == self.config.run_id => {
                            let requester = xxhash_rust::xxh3::xxh3_64(&peer.to_bytes());
                            match self.store.serve(&digest, requester, chunk) {
                                Ok(c) => Response::Update {
                                    chunk: c.chunk,
                                    chunks: c.chunks,
                                    bytes: c.bytes,
                                },
                                Err(refusal) => Response::Error(refusal.as_str().into()),
                            }
                        }
                        Request::Push { run_id, bytes } if run_id == self.config.run_id => {
                            match self.take_push(peer, bytes) {
                                Ok(()) => Response::Taken,
                                Err(reason) => Response::Error(reason.as_str().into()),
                            }
                        }
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
                    if let Response::Error(e) = &response
                        && !self.pulls.contains_key(&request_id)
                    {
                        debug!("{peer} did not take this node's update: {e}");
                    }
                    if let Some(mut pull) = self.pulls.remove(&request_id) {
                        let taken = match response {
                            Response::Update {
                                chunk,
                                chunks,
                                bytes,
                            } => pull.take(chunk, chunks, bytes),
                            Response::Error(e) => Err(e),
                            _ => Err("answered with something else than an update".into()),
                        };
                        match taken {
                            Ok(false) => self.ask_next(pull, peer),
                            Ok(true) => {
                                let bytes = std::mem::take(&mut pull.received);
                                self.finish_pull(pull, Ok(bytes));
                            }
                            Err(e) => self.finish_pull(pull, Err(e)),
                        }
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
}
