//! Per-sender rate limits, token buckets keyed by peer.
//!
//! On gossip, checked before anything else: a signer may publish on a topic at a few times the
//! honest rate, and what is beyond is neither handed to the round loop nor forwarded. A sustained
//! flood is rejected, so its sender's score sinks and gossipsub cuts it off; honest peers'
//! messages keep their place in the event queue.
//!
//! On the state protocol, in bytes served: a requester gets a couple of whole states at once and
//! one state's worth per [`SERVE_REFILL_SECONDS`] after, so a ~70-byte request can no longer make
//! a peer upload megabytes again and again (issue 26, attacks 11 and 17).

use std::collections::HashMap;

use libp2p::PeerId;
use web_time::Instant;

/// Messages per second a signer may keep up on one topic. Honest peers send one update per round
/// and pace their rounds to half this rate (`gradswarm_peer`'s round floor); a flood is 1000.
pub const RATE_PER_SECOND: f64 = 40.0;

/// Messages a signer may send at once beyond the rate (a peer catching up, a lingering peer).
pub(crate) const BURST: f64 = 80.0;

/// Seconds in which a requester's state budget refills by one whole state: an honest joiner
/// fetches one state, and a drifted replica one θ now and then.
pub(crate) const SERVE_REFILL_SECONDS: f64 = 30.0;

/// Seconds in which a requester's data budget refills by one copy of the data set: a joiner
/// needs it once; one that asks again and again is served at this pace.
const DATA_REFILL_SECONDS: f64 = 300.0;

/// The smallest state budget, in bytes: a tiny model's state is a few kilobytes, and its
/// fingerprints and θ fetches must never be refused for that.
const SERVE_MIN_BURST: f64 = 4.0 * 1024.0 * 1024.0;

/// Senders tracked per topic: beyond it, the buckets of senders that are back to full are
/// forgotten (a full bucket is what a new sender gets anyway).
const MAX_SENDERS: usize = 4096;

/// What a message's sender has left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within its rate.
    Allow,
    /// Over it: dropped, not forwarded, not penalised (a burst).
    Ignore,
    /// Far over it, for long: dropped and penalised.
    Reject,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// When the last dropped message of this sender was reported.
    reported: Option<Instant>,
}

/// Token buckets, one per sender, for one topic or protocol.
pub(crate) struct RateLimit {
    buckets: HashMap<PeerId, Bucket>,
    /// Tokens refilled per second.
    rate: f64,
    /// Most tokens a bucket holds (what a sender may spend at once).
    burst: f64,
}

impl RateLimit {
    /// Messages on one gossip topic: [`RATE_PER_SECOND`] and [`BURST`].
    pub(crate) fn messages() -> Self {
        Self::new(RATE_PER_SECOND, BURST)
    }

    /// Bytes of state served to each requester, for a node whose largest gossip message is
    /// `max_message_bytes` (about one dense θ; a whole state is about four).
    pub(crate) fn served_state(max_message_bytes: usize) -> Self {
        let state = 4.0 * max_message_bytes as f64;
        let burst = (2.0 * state).max(SERVE_MIN_BURST);
        Self::new(burst / 2.0 / SERVE_REFILL_SECONDS, burst)
    }

    /// Bytes of a run's data (and manifest) served to each requester, for a data set of
    /// `data_bytes`: two whole copies at once, then one per [`DATA_REFILL_SECONDS`]. Apart from
    /// the state budget, so that a joiner's data does not cost it its state.
    pub(crate) fn served_data(data_bytes: u64) -> Self {
        let burst = (2.0 * data_bytes as f64).max(SERVE_MIN_BURST);
        Self::new(burst / 2.0 / DATA_REFILL_SECONDS, burst)
    }

    fn new(rate: f64, burst: f64) -> Self {
        Self {
            buckets: HashMap::new(),
            rate,
            burst,
        }
    }

    /// Takes one message of `from` at `now` (see [`Self::take_cost`]).
    pub(crate) fn take(&mut self, from: PeerId, now: Instant) -> Verdict {
        self.take_cost(from, 1.0, now)
    }

    /// Takes `cost` tokens of `from` at `now`. Tokens refill at the rate up to the burst; what
    /// would leave the bucket negative is ignored, and once the sender owes a whole burst more
    /// (it kept on at twice the rate or more) it is rejected.
    pub(crate) fn take_cost(&mut self, from: PeerId, cost: f64, now: Instant) -> Verdict {
        let (rate, burst) = (self.rate, self.burst);
        if self.buckets.len() >= MAX_SENDERS && !self.buckets.contains_key(&from) {
            self.buckets
                .retain(|_, b| refilled(b.tokens, b.at, now, rate, burst) < burst);
        }
        let bucket = self.buckets.entry(from).or_insert(Bucket {
            tokens: burst,
            at: now,
            reported: None,
        });
        bucket.tokens = refilled(bucket.tokens, bucket.at, now, rate, burst) - cost;
        bucket.at = now;
        if bucket.tokens >= 0.0 {
            Verdict::Allow
        } else if bucket.tokens > -burst {
            Verdict::Ignore
        } else {
            // The debt stops growing: a flooder that stops is forgiven at the rate.
            bucket.tokens = -burst;
            Verdict::Reject
        }
    }

    /// Whether a dropped message of `from` should be reported to the round loop: one a second
    /// per sender, so that a flood does not fill the event queue with reports of itself.
    pub(crate) fn report(&mut self, from: PeerId, now: Instant) -> bool {
        match self.buckets.get_mut(&from) {
            Some(b)
                if b.reported
                    .is_none_or(|t| now.duration_since(t).as_secs_f64() >= 1.0) =>
            {
                b.reported = Some(now);
                true
            }
            _ => false,
        }
    }
}

fn refilled(tokens: f64, at: Instant, now: Instant, rate: f64, burst: f64) -> f64 {
    (tokens + now.duration_since(at).as_secs_f64() * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_a_flood_is_ignored_then_rejected_and_forgiven_at_the_rate() {
        let mut limit = RateLimit::messages();
        let (honest, flooder) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert_eq!(limit.take(flooder, t0), Verdict::Allow);
        }
        assert_eq!(limit.take(flooder, t0), Verdict::Ignore);
        assert!(limit.report(flooder, t0));
        assert!(!limit.report(flooder, t0), "one report a second");
        for _ in 0..BURST as usize {
            limit.take(flooder, t0);
        }
        assert_eq!(limit.take(flooder, t0), Verdict::Reject);
        // Another sender is not touched by the flood.
        assert_eq!(limit.take(honest, t0), Verdict::Allow);
        // An honest rate is always allowed.
        for i in 1..1000 {
            let t = t0 + Duration::from_secs_f64(i as f64 / (RATE_PER_SECOND / 2.0));
            assert_eq!(limit.take(honest, t), Verdict::Allow);
        }
        // The flooder, once quiet for long enough to refill, is allowed again.
        let later = t0 + Duration::from_secs_f64(3.0 * BURST / RATE_PER_SECOND);
        assert_eq!(limit.take(flooder, later), Verdict::Allow);
    }

    #[test]
    fn senders_tracked_stay_bounded() {
        let mut limit = RateLimit::messages();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        for _ in 0..MAX_SENDERS {
            limit.take(PeerId::random(), t0);
        }
        limit.take(PeerId::random(), later);
        assert_eq!(limit.buckets.len(), 1);
    }

    #[test]
    fn a_requester_gets_two_states_at_once_then_one_per_refill() {
        let max_message = 4 * 1024 * 1024;
        let mut served = RateLimit::served_state(max_message);
        let state = 4.0 * max_message as f64;
        let chunk = 1024.0 * 1024.0;
        let (greedy, joiner) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut got = 0.0;
        while served.take_cost(greedy, chunk, t0) == Verdict::Allow {
            got += chunk;
        }
        assert!(
            (2.0 * state - chunk..=2.0 * state).contains(&got),
            "served {got} bytes at once, two states are {}",
            2.0 * state
        );
        // Another requester still gets its whole state.
        for _ in 0..(state / chunk) as usize {
            assert_eq!(served.take_cost(joiner, chunk, t0), Verdict::Allow);
        }
        // Over ten refill periods the greedy one gets about one state per period, not more.
        let mut later = 0.0;
        for tick in 1..=10 * 30 {
            let t = t0 + Duration::from_secs_f64(tick as f64 * SERVE_REFILL_SECONDS / 30.0);
            for _ in 0..64 {
                if served.take_cost(greedy, chunk, t) == Verdict::Allow {
                    later += chunk;
                }
            }
        }
        assert!(
            later <= 10.0 * state + 2.0 * state,
            "served {later} bytes over ten refills of {state}"
        );
        // Once it waits a refill period, it is served again.
        let quiet = t0 + Duration::from_secs_f64(13.0 * SERVE_REFILL_SECONDS);
        assert_eq!(served.take_cost(greedy, chunk, quiet), Verdict::Allow);
    }
}
