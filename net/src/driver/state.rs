//! The state protocol (`/gradswarm/state/1`): this node's snapshots served to joiners, and the
//! answers to the runtime's own requests.

use gradswarm_core::{Request, Response};
use libp2p::request_response;
use tracing::debug;

use super::Driver;
use crate::NetError;

impl Driver {
    /// Serves this node's state to joiners and hands the answers to its own requests back.
    pub(super) fn on_state(&mut self, event: request_response::Event<Request, Response>) {
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
                        .state
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
