//! The run's dashboard data: every heartbeat this node forwards, folded into core's [`RunView`],
//! and a bounded history of the run's summary over time, served as `/run.json` to the dashboard
//! page (`web/www/dashboard.html`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use gradswarm_core::Heartbeat;
use gradswarm_core::view::{PeerView, RunView};
use gradswarm_net::PeerId;

/// A peer counts as online when heard from within this long (peers heartbeat every 3 s).
const ONLINE: Duration = Duration::from_secs(30);

/// At most one history point per this long…
const POINT_EVERY: Duration = Duration::from_secs(1);

/// …and at most this many (the last four hours at one a second): memory stays bounded however
/// long the run.
const MAX_POINTS: usize = 4 * 3600;

/// The run as this node has heard it.
pub struct Dashboard {
    run_id: String,
    started: Instant,
    view: RunView,
    history: VecDeque<Point>,
}

/// The run's summary at one moment.
struct Point {
    t_s: f64,
    peers: usize,
    round: u64,
    loss: f32,
    val_loss: f32,
    tokens_per_s: f64,
    samples: u64,
}

impl Dashboard {
    /// An empty dashboard of `run_id`.
    pub fn new(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_string(),
            started: Instant::now(),
            view: RunView::default(),
            history: VecDeque::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Takes a heartbeat of the run; adds a history point when the last is [`POINT_EVERY`] old.
    pub fn take(&mut self, hb: &Heartbeat) {
        if hb.run_id != self.run_id {
            return;
        }
        let now = self.now_ms();
        self.view.take(hb, now);
        let t_s = now as f64 / 1000.0;
        if self
            .history
            .back()
            .is_some_and(|p| t_s - p.t_s < POINT_EVERY.as_secs_f64())
        {
            return;
        }
        let s = self.view.summary(now, ONLINE.as_millis() as u64);
        if self.history.len() >= MAX_POINTS {
            self.history.pop_front();
        }
        self.history.push_back(Point {
            t_s,
            peers: s.peers,
            round: s.round,
            loss: s.loss,
            val_loss: s.val_loss,
            tokens_per_s: s.tokens_per_s,
            samples: s.samples,
        });
    }

    /// `/run.json`: the summary, the peers online and the history.
    pub fn to_json(&self) -> serde_json::Value {
        let now = self.now_ms();
        let online_ms = ONLINE.as_millis() as u64;
        let s = self.view.summary(now, online_ms);
        let peers: Vec<serde_json::Value> = self
            .view
            .online(now, online_ms)
            .into_iter()
            .map(|p| peer_json(&self.view, p, now))
            .collect();
        let history: Vec<serde_json::Value> = self
            .history
            .iter()
            .map(|p| {
                serde_json::json!({
                    "t_s": p.t_s,
                    "peers": p.peers,
                    "round": p.round,
                    "loss": finite(p.loss),
                    "val_loss": finite(p.val_loss),
                    "tokens_per_s": p.tokens_per_s,
                    "samples": p.samples,
                })
            })
            .collect();
        serde_json::json!({
            "run_id": self.run_id,
            "uptime_s": now as f64 / 1000.0,
            "summary": {
                "peers": s.peers,
                "round": s.round,
                "loss": finite(s.loss),
                "val_loss": finite(s.val_loss),
                "tokens_per_s": s.tokens_per_s,
                "samples": s.samples,
                "credit": s.credit,
            },
            "peers": peers,
            "history": history,
        })
    }
}

fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

fn peer_json(view: &RunView, p: &PeerView, now_ms: u64) -> serde_json::Value {
    let credit = view.credit(&p.peer_id, p.samples);
    serde_json::json!({
        "credit": credit.samples,
        "attesters": credit.attesters,
        "bytes_sent": p.bytes_sent,
        "bytes_received": p.bytes_received,
        "peer_id": PeerId::from_bytes(&p.peer_id).map(|id| id.to_base58()).unwrap_or_else(|_| "?".into()),
        "agent": p.agent,
        "round": p.round,
        "loss": finite(p.loss),
        "val_loss": finite(p.val_loss),
        "tokens_per_s": p.tokens_per_s,
        "samples": p.samples,
        "heard_s_ago": now_ms.saturating_sub(p.heard_ms) as f64 / 1000.0,
    })
}
