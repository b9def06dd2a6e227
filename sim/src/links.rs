//! What the simulator models of each peer's machine and connection: how long its local steps take
//! and how fast its link is. Volunteers differ, so each peer draws its own factors from a seed
//! (log-normal around the configured means); each round's compute time varies around the peer's.

use gradswarm_core::synthetic::SplitMix;
use serde::{Deserialize, Serialize};

/// The distributions peers' machines and links are drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkModel {
    /// Median seconds of one round's local steps.
    pub compute_s: f64,
    /// Log-normal spread (σ of ln) of peers' speeds around it: 0.5 puts a tenth of them ≥ 1.9×
    /// slower than the median.
    pub compute_spread: f64,
    /// Log-normal spread of one peer's compute time from round to round.
    pub jitter: f64,
    /// Median uplink, Mbit/s.
    pub uplink_mbit: f64,
    /// Median downlink, Mbit/s.
    pub downlink_mbit: f64,
    /// Median round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Log-normal spread of peers' bandwidths and RTTs around the medians.
    pub link_spread: f64,
}

impl Default for LinkModel {
    /// Home connections (10 Mbit/s up, 50 down, 60 ms RTT) and a second of compute per round.
    fn default() -> Self {
        Self {
            compute_s: 1.0,
            compute_spread: 0.3,
            jitter: 0.1,
            uplink_mbit: 10.0,
            downlink_mbit: 50.0,
            rtt_ms: 60.0,
            link_spread: 0.3,
        }
    }
}

/// One peer's machine and link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Machine {
    /// Its median compute seconds per round.
    pub compute_s: f64,
    /// Uplink, bytes per second.
    pub up_bps: f64,
    /// Downlink, bytes per second.
    pub down_bps: f64,
    /// One-way latency, seconds (half its RTT).
    pub latency_s: f64,
}

impl LinkModel {
    /// Draws one peer's machine.
    pub fn draw(&self, rng: &mut SplitMix) -> Machine {
        let mut factor = |spread: f64| (spread * rng.normal()).exp();
        Machine {
            compute_s: self.compute_s * factor(self.compute_spread),
            up_bps: self.uplink_mbit * 1e6 / 8.0 * factor(self.link_spread),
            down_bps: self.downlink_mbit * 1e6 / 8.0 * factor(self.link_spread),
            latency_s: self.rtt_ms / 2000.0 * factor(self.link_spread),
        }
    }

    /// One round's compute seconds on `machine`.
    pub fn compute(&self, machine: &Machine, rng: &mut SplitMix) -> f64 {
        machine.compute_s * (self.jitter * rng.normal()).exp()
    }
}
