//! The state protocol (`/gradswarm/state/1`): this node's snapshots and the run's manifest and
//! data served to joiners, and the answers to the runtime's own requests.

use gradswarm_core::{Request, Response};
use libp2p::{PeerId, request_response};
use tracing::debug;
use web_time::Instant;

use super::Driver;
use super::rate::Verdict;
use crate::{NetError, OVER_BUDGET};

/// What a small answer (an error, a fingerprint) costs a requester's budget, in bytes: enough
/// that a flood of cheap requests is bounded too.
const SMALL_ANSWER_COST: f64 = 256.0;

impl Driver {
    /// `response`, or a refusal once `peer` has had its share of this node's upload (the state
    /// budget of [`super::rate::RateLimit::served_state`], or for the run's data
    /// [`super::rate::RateLimit::served_data`]).
    fn within_budget(&mut self, peer: PeerId, response: Response) -> Response {
        let (budget, cost) = match &response {
            Response::Piece { bytes, .. } | Response::Manifest { bytes } => {
                (&mut self.served_data, bytes.len() as f64)
            }
            Response::StateChunk { bytes, .. } => (&mut self.served, bytes.len() as f64),
            _ => (&mut self.served, SMALL_ANSWER_COST),
        };
        match budget.take_cost(peer, cost.max(SMALL_ANSWER_COST), Instant::now()) {
            Verdict::Allow => response,
            _ => {
                debug!("{peer} asked for more than its share; refused");
                Response::Error(OVER_BUDGET.into())
            }
        }
    }

    /// Serves this node's state to joiners and hands the answers to its own requests back.
    pub(super) fn on_state(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let files = self.run_files.as_ref().and_then(|f| f.answer(&request));
                    let response = match (files, &self.state_server) {
                        (Some(answer), _) => answer,
                        (None, Some(server)) => server(peer, &request),
                        (None, None) => Response::Error("this node serves no state".into()),
                    };
                    let response = self.within_budget(peer, response);
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
