//! `swarm-sim`: thousands of simulated gradswarm peers in one process, running core's real
//! algorithms — the codec and its byte sizes, the topology, the round book, the aggregation rule,
//! the outer optimizer — on a synthetic objective, with modelled compute times, latencies and
//! bandwidths, churn and attackers. It answers what a real swarm of that size cannot be run here
//! to answer: how per-peer bytes, connections, round pace and convergence grow with N under each
//! averaging strategy (docs/architecture.md, "The simulator").
//!
//! - [`objective`]: the synthetic quadratic and its noisy local steps.
//! - [`links`]: each peer's machine and connection.
//! - [`swarm`]: one run.
//! - [`report`]: runs over a range of N for each strategy, the report and its plot.

mod gossip;
pub mod links;
pub mod objective;
pub mod report;
pub mod swarm;

pub use swarm::{RoundStats, SimConfig, SimError, Strategy, Summary, run};
