//! Staleness: how much an update computed on an older round still counts, and what gets dropped.
//!
//! An update computed on round `r_j` that arrives while the receiver is on round `r` has staleness
//! `τ = r − r_j`. It is weighted by `s(τ) = 1 / (1 + τ)^α` (Zhang et al. 2016, "staleness-aware
//! async SGD", and the polynomial weights of FedAsync) and dropped past `τ_max`. Every drop is
//! counted under its reason, so a report can say what was lost and why.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The staleness weighting and cut-off.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StalenessPolicy {
    /// Decay exponent α of `1/(1+τ)^α`; 0 weighs every accepted update fully.
    pub alpha: f32,
    /// Largest staleness still accepted; older updates are dropped as [`DropReason::TooStale`].
    pub tau_max: u64,
}

impl Default for StalenessPolicy {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            tau_max: 4,
        }
    }
}

impl StalenessPolicy {
    /// The weight of an update computed on `base_round` received while on `current_round`, or why
    /// it is dropped.
    pub fn weight(&self, current_round: u64, base_round: u64) -> Result<f32, DropReason> {
        let tau = current_round
            .checked_sub(base_round)
            .ok_or(DropReason::FromFuture)?;
        if tau > self.tau_max {
            return Err(DropReason::TooStale);
        }
        Ok(self.weight_of(tau))
    }

    /// `s(τ) = 1/(1+τ)^α`.
    pub fn weight_of(&self, tau: u64) -> f32 {
        (1.0 + tau as f64).powf(-f64::from(self.alpha)) as f32
    }
}

/// Why an update did not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Staleness beyond `τ_max`.
    TooStale,
    /// Computed on a round the receiver has not reached (clock skew or a liar).
    FromFuture,
    /// From another run id.
    ForeignRun,
    /// For another model configuration.
    ForeignModel,
    /// The bytes did not decode (any [`crate::DecodeError`]).
    Malformed,
    /// Decoded, but NaN or infinite values.
    NonFinite,
    /// Decoded, but for a vector of another length.
    WrongShape,
    /// Its norm is far beyond the running median of accepted norms.
    NormOutlier,
    /// A second update from the same peer for the same round.
    Duplicate,
    /// The update names another peer than the one that signed it.
    SenderMismatch,
    /// An announced update whose payload no peer served (the announcer left, say).
    Unfetchable,
    /// A pulled payload that is not what its announcement promised (size, digest or header).
    PayloadMismatch,
    /// Claims more samples than one honest round of the run trains on (to weigh more).
    Overclaimed,
    /// Its sender publishes faster than any honest peer (a flood): not forwarded. Counted once a
    /// second per sender, not per message.
    RateLimited,
    /// Its sender signed two different updates for the same round: neither counts.
    Equivocation,
    /// Its signer is not on a private run's allow-list.
    NotAllowed,
    /// Under group averaging, from a peer outside the receiver's group for that round.
    NotPartner,
    /// It does not point the way the round's other updates point (a sign-flipped update, say):
    /// dropped by the direction screen ([`crate::DirectionScreen`]).
    Unaligned,
}

impl DropReason {
    /// Every reason, in report order.
    pub const ALL: [DropReason; 18] = [
        Self::TooStale,
        Self::FromFuture,
        Self::ForeignRun,
        Self::ForeignModel,
        Self::Malformed,
        Self::NonFinite,
        Self::WrongShape,
        Self::NormOutlier,
        Self::Duplicate,
        Self::SenderMismatch,
        Self::Unfetchable,
        Self::PayloadMismatch,
        Self::Overclaimed,
        Self::RateLimited,
        Self::Equivocation,
        Self::NotAllowed,
        Self::NotPartner,
        Self::Unaligned,
    ];

    /// A short stable name for reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooStale => "too_stale",
            Self::FromFuture => "from_future",
            Self::ForeignRun => "foreign_run",
            Self::ForeignModel => "foreign_model",
            Self::Malformed => "malformed",
            Self::NonFinite => "non_finite",
            Self::WrongShape => "wrong_shape",
            Self::NormOutlier => "norm_outlier",
            Self::Duplicate => "duplicate",
            Self::SenderMismatch => "sender_mismatch",
            Self::Unfetchable => "unfetchable",
            Self::PayloadMismatch => "payload_mismatch",
            Self::Overclaimed => "overclaimed",
            Self::RateLimited => "rate_limited",
            Self::Equivocation => "equivocation",
            Self::NotAllowed => "not_allowed",
            Self::NotPartner => "not_partner",
            Self::Unaligned => "unaligned",
        }
    }
}

impl From<&crate::DecodeError> for DropReason {
    /// The reason a message that failed to decode is counted under.
    fn from(e: &crate::DecodeError) -> Self {
        match e {
            crate::DecodeError::NonFinite { .. } => Self::NonFinite,
            crate::DecodeError::Overclaimed { .. } => Self::Overclaimed,
            _ => Self::Malformed,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of dropped updates by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts(BTreeMap<DropReason, u64>);

impl DropCounts {
    /// Records one drop.
    pub fn record(&mut self, reason: DropReason) {
        *self.0.entry(reason).or_default() += 1;
    }

    /// Drops recorded for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Adds another counter's drops into this one.
    pub fn merge(&mut self, other: &DropCounts) {
        for (&r, &n) in &other.0 {
            *self.0.entry(r).or_default() += n;
        }
    }

    /// Non-zero counts in report order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        self.0.iter().map(|(&r, &n)| (r, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_decay_and_old_updates_drop() {
        let p = StalenessPolicy {
            alpha: 1.0,
            tau_max: 3,
        };
        assert_eq!(p.weight(10, 10), Ok(1.0));
        assert_eq!(p.weight(10, 9), Ok(0.5));
        assert_eq!(p.weight(10, 7), Ok(0.25));
        assert_eq!(p.weight(10, 6), Err(DropReason::TooStale));
        assert_eq!(p.weight(10, 11), Err(DropReason::FromFuture));
        let flat = StalenessPolicy {
            alpha: 0.0,
            tau_max: 3,
        };
        assert_eq!(flat.weight(10, 7), Ok(1.0));
    }

    #[test]
    fn drop_counts_by_reason() {
        let mut c = DropCounts::default();
        c.record(DropReason::TooStale);
        c.record(DropReason::TooStale);
        c.record(DropReason::Malformed);
        assert_eq!(c.get(DropReason::TooStale), 2);
        assert_eq!(c.get(DropReason::ForeignRun), 0);
        assert_eq!(c.total(), 3);
        let mut d = DropCounts::default();
        d.record(DropReason::Malformed);
        d.merge(&c);
        assert_eq!(d.get(DropReason::Malformed), 2);
        assert_eq!(
            d.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
            ["too_stale", "malformed"]
        );
    }
}
