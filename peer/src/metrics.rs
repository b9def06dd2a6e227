//! One peer's own metrics, from its round reports, in a Prometheus registry (under `gradswarm_`):
//! what `gradswarm join --metrics ADDR` serves beside libp2p's. Plain counters and gauges, so the
//! browser build keeps them too.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::report::RoundReport;

/// A drop counter's label: why updates were dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Why {
    reason: &'static str,
}

/// The peer's metrics; [`PeerMetrics::observe`] takes each round's report.
pub struct PeerMetrics {
    round: Gauge,
    rounds: Counter,
    trained: Counter,
    loss: Gauge<f64, AtomicU64>,
    val_loss: Gauge<f64, AtomicU64>,
    samples: Counter,
    tokens_per_second: Gauge<f64, AtomicU64>,
    bytes_up: Counter,
    bytes_down: Counter,
    updates: Counter,
    drops: Family<Why, Counter>,
    staleness: Histogram,
    live_peers: Gauge,
    waited_out: Counter,
    skipped: Counter,
    reconciled: Counter,
    credit: Gauge,
    divergence: Gauge<f64, AtomicU64>,
    tokens_per_sample: u64,
}

impl PeerMetrics {
    /// Registers the metrics in `registry` (prefixed `gradswarm`), with the device's description
    /// as an info metric; a sample is `tokens_per_sample` tokens (the model's context).
    pub fn register(registry: &mut Registry, device: &str, tokens_per_sample: u64) -> Self {
        let r = registry.sub_registry_with_prefix("gradswarm");
        let m = Self {
            round: Gauge::default(),
            rounds: Counter::default(),
            trained: Counter::default(),
            loss: Gauge::default(),
            val_loss: Gauge::default(),
            samples: Counter::default(),
            tokens_per_second: Gauge::default(),
            bytes_up: Counter::default(),
            bytes_down: Counter::default(),
            updates: Counter::default(),
            drops: Family::default(),
            staleness: Histogram::new([0.0, 1.0, 2.0, 3.0, 4.0, 8.0, 16.0]),
            live_peers: Gauge::default(),
            waited_out: Counter::default(),
            skipped: Counter::default(),
            reconciled: Counter::default(),
            credit: Gauge::default(),
            divergence: Gauge::default(),
            tokens_per_sample,
        };
        r.register("round", "The round this peer closed last", m.round.clone());
        r.register(
            "rounds",
            "Rounds closed (catch-up rounds included)",
            m.rounds.clone(),
        );
        r.register(
            "trained_rounds",
            "Rounds this peer computed an update for",
            m.trained.clone(),
        );
        r.register(
            "loss",
            "Training loss of the last round trained",
            m.loss.clone(),
        );
        r.register(
            "validation_loss",
            "The latest validation loss",
            m.val_loss.clone(),
        );
        r.register(
            "samples",
            "Training samples this peer computed",
            m.samples.clone(),
        );
        r.register(
            "tokens_per_second",
            "Training tokens per second of compute, last round",
            m.tokens_per_second.clone(),
        );
        r.register(
            "bytes_up",
            "Bytes of updates this peer published",
            m.bytes_up.clone(),
        );
        r.register(
            "bytes_down",
            "Bytes of updates and heartbeats received",
            m.bytes_down.clone(),
        );
        r.register(
            "updates_counted",
            "Updates that counted in this peer's rounds (its own included)",
            m.updates.clone(),
        );
        r.register(
            "dropped_updates",
            "Updates dropped, by reason",
            m.drops.clone(),
        );
        r.register(
            "staleness_rounds",
            "Staleness of the updates that counted",
            m.staleness.clone(),
        );
        r.register(
            "live_peers",
            "Other peers heard from within the peer timeout",
            m.live_peers.clone(),
        );
        r.register(
            "waited_out_rounds",
            "Rounds that ran to their deadline",
            m.waited_out.clone(),
        );
        r.register(
            "skipped_rounds",
            "Rounds closed while paused, without training",
            m.skipped.clone(),
        );
        r.register(
            "reconciliations",
            "Pairwise averagings with a drifted replica",
            m.reconciled.clone(),
        );
        r.register(
            "credit_samples",
            "Samples of this peer's updates that counted in the others' aggregates, as they attest",
            m.credit.clone(),
        );
        r.register(
            "replica_divergence",
            "Median relative distance of the sealed marks heard from this peer's own of the same round",
            m.divergence.clone(),
        );
        r.register(
            "device",
            "Where this peer trains",
            Info::new(vec![("device", device.to_string())]),
        );
        m
    }

    /// Takes one round's report.
    pub fn observe(&self, r: &RoundReport) {
        self.round.set(r.round as i64);
        self.rounds.inc();
        // `samples` is the peer's running total; the counter follows it.
        let new = r.samples.saturating_sub(self.samples.get());
        self.samples.inc_by(new);
        if !r.catch_up && r.loss.is_finite() {
            self.trained.inc();
            self.loss.set(f64::from(r.loss));
            if r.compute_s > 0.0 {
                let tokens = (new * self.tokens_per_sample) as f64;
                self.tokens_per_second.set(tokens / r.compute_s);
            }
        }
        if let Some(v) = r.val_loss {
            self.val_loss.set(v);
        }
        self.bytes_up.inc_by(r.bytes_up);
        self.bytes_down.inc_by(r.bytes_down);
        self.updates.inc_by(r.updates as u64);
        for (reason, n) in r.drops.iter() {
            self.drops
                .get_or_create(&Why {
                    reason: reason.as_str(),
                })
                .inc_by(n);
        }
        for &tau in &r.staleness {
            self.staleness.observe(tau as f64);
        }
        self.live_peers.set(r.peers as i64);
        self.waited_out.inc_by(u64::from(r.waited_out));
        self.skipped.inc_by(u64::from(r.skipped));
        self.reconciled.inc_by(r.reconciled);
        self.credit.set(i64::try_from(r.credit).unwrap_or(i64::MAX));
        if let Some(d) = r.divergence {
            self.divergence.set(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradswarm_core::{DropCounts, DropReason};

    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }

    #[test]
    fn the_metrics_add_up_to_the_round_reports() {
        let mut registry = Registry::default();
        let m = PeerMetrics::register(&mut registry, "CPU backend", 32);
        let mut drops = DropCounts::default();
        drops.record(DropReason::TooStale);
        let reports = [
            RoundReport {
                round: 0,
                loss: 5.0,
                samples: 8,
                bytes_up: 100,
                bytes_down: 40,
                updates: 2,
                staleness: vec![0, 0],
                compute_s: 0.5,
                peers: 1,
                divergence: Some(0.25),
                ..Default::default()
            },
            RoundReport {
                round: 1,
                loss: f32::NAN,
                samples: 8,
                bytes_down: 10,
                catch_up: true,
                drops: drops.clone(),
                ..Default::default()
            },
            RoundReport {
                round: 2,
                loss: 4.0,
                val_loss: Some(4.5),
                samples: 16,
                bytes_up: 120,
                bytes_down: 60,
                updates: 3,
                staleness: vec![0, 1, 2],
                compute_s: 0.25,
                peers: 2,
                drops,
                waited_out: true,
                credit: 8,
                ..Default::default()
            },
        ];
        for r in &reports {
            m.observe(r);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert_eq!(value(&text, "gradswarm_round"), 2.0);
        assert_eq!(value(&text, "gradswarm_rounds_total"), 3.0);
        assert_eq!(value(&text, "gradswarm_trained_rounds_total"), 2.0);
        assert_eq!(value(&text, "gradswarm_samples_total"), 16.0);
        assert_eq!(value(&text, "gradswarm_loss"), 4.0);
        assert_eq!(value(&text, "gradswarm_validation_loss"), 4.5);
        // The last round trained: 8 samples of 32 tokens in 0.25 s.
        assert_eq!(value(&text, "gradswarm_tokens_per_second"), 1024.0);
        assert_eq!(value(&text, "gradswarm_bytes_up_total"), 220.0);
        assert_eq!(value(&text, "gradswarm_bytes_down_total"), 110.0);
        assert_eq!(value(&text, "gradswarm_updates_counted_total"), 5.0);
        assert_eq!(
            value(
                &text,
                "gradswarm_dropped_updates_total{reason=\"too_stale\"}"
            ),
            2.0
        );
        assert_eq!(value(&text, "gradswarm_staleness_rounds_count"), 5.0);
        assert_eq!(value(&text, "gradswarm_live_peers"), 2.0);
        assert_eq!(value(&text, "gradswarm_waited_out_rounds_total"), 1.0);
        assert_eq!(value(&text, "gradswarm_credit_samples"), 8.0);
        // A round that measured no divergence leaves the last one measured.
        assert_eq!(value(&text, "gradswarm_replica_divergence"), 0.25);
        assert!(
            text.contains("gradswarm_device_info{device=\"CPU backend\"} 1"),
            "{text}"
        );
    }
}
