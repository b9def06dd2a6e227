//! Per-sender rate limits on gossip, checked before anything else: a signer may publish on a
//! topic at a few times the honest rate, and what is beyond is neither handed to the round loop
//! nor forwarded. A sustained flood is rejected, so its sender's score sinks and gossipsub cuts it
//! off; honest peers' messages keep their place in the event queue.

use std::collections::HashMap;

use libp2p::PeerId;
use web_time::Instant;

/// Messages per second a signer may keep up on one topic. Honest peers send one heartbeat and one
/// update per round, and rounds of a tiny model can be 20 a second; a flood is 1000.
pub(crate) const RATE_PER_SECOND: f64 = 40.0;

/// Messages a signer may send at once beyond the rate (a peer catching up, a lingering peer).
pub(crate) const BURST: f64 = 80.0;

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

/// Token buckets, one per sender, for one topic.
pub(crate) struct RateLimit {
    buckets: HashMap<PeerId, Bucket>,
}

impl RateLimit {
    /// No sender seen yet.
    pub(crate) fn new() -> Self {
        Self {
            buckets: HashMap::new(),
        }
    }

    /// Takes one message of `from` at `now`. Tokens refill at [`RATE_PER_SECOND`] up to
    /// [`BURST`]; a message without a token is ignored, and once the sender owes a whole burst
    /// more (it kept on at twice the rate or more) it is rejected.
    pub(crate) fn take(&mut self, from: PeerId, now: Instant) -> Verdict {
        if self.buckets.len() >= MAX_SENDERS && !self.buckets.contains_key(&from) {
            self.buckets
                .retain(|_, b| refilled(b.tokens, b.at, now) < BURST);
        }
        let bucket = self.buckets.entry(from).or_insert(Bucket {
            tokens: BURST,
            at: now,
            reported: None,
        });
        bucket.tokens = refilled(bucket.tokens, bucket.at, now) - 1.0;
        bucket.at = now;
        if bucket.tokens >= 0.0 {
            Verdict::Allow
        } else if bucket.tokens > -BURST {
            Verdict::Ignore
        } else {
            // The debt stops growing: a flooder that stops is forgiven at the rate.
            bucket.tokens = -BURST;
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

fn refilled(tokens: f64, at: Instant, now: Instant) -> f64 {
    (tokens + now.duration_since(at).as_secs_f64() * RATE_PER_SECOND).min(BURST)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_a_flood_is_ignored_then_rejected_and_forgiven_at_the_rate() {
        let mut limit = RateLimit::new();
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
        let mut limit = RateLimit::new();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        for _ in 0..MAX_SENDERS {
            limit.take(PeerId::random(), t0);
        }
        limit.take(PeerId::random(), later);
        assert_eq!(limit.buckets.len(), 1);
    }
}
