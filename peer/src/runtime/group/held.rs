//! A regrouping's fetch of one holding's replica: asked of its holders in turn, each served
//! replica checked against its holders' fingerprints and their keyed checks, and counted once for
//! each holder that supports it.

use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use gradswarm_core::{DriftSketch, drift};
use gradswarm_net::{NetHandle, PeerId};
use tracing::{debug, warn};
use web_time::Instant;

use super::{
    CHECK_GRACE, CHECK_TIMEOUT, CHECK_TOLERANCE, REPLICA_NORM_TOLERANCE, REPLICA_REACH,
    REPLICA_TOLERANCE,
};
use crate::error::PeerError;
use crate::state;

/// Whom and what a regrouping's fetch asks.
#[derive(Clone, Copy)]
pub(super) struct Asked<'a> {
    pub(super) net: &'a NetHandle,
    /// The fetching peer's rank among the holding's fetchers: which holder it asks first.
    pub(super) rank: usize,
    pub(super) run_id: &'a str,
    pub(super) model_hash: gradswarm_core::ModelHash,
    pub(super) round: u64,
    /// When it must be done: fetching stops there and keeps what it took.
    pub(super) by: Instant,
}

/// The replica of `round` that every peer in `held` says it holds (one holding), fetched from
/// one of them (the fetchers' ranks take its holders in turn, to spread the load) and counted
/// once for each holder whose keyed check supports it ([`supports`]); a holder that does not
/// is fetched from next, and so on. A replica served that does not fit ([`fits`]; `own` is the
/// fetcher's own replica) is refused and its server left out.
///
/// Why the checks: public fingerprints cannot see what a liar hides in the replica it serves
/// (a vector in the public sketch's null space, within the norm's tolerance: up to ~44 % of
/// ‖θ‖), and the replica a holding serves counts once per member of the new group that holds
/// it. A liar that belongs to an honest holding and is the one asked would have its hidden
/// vector counted for every one of them. Under keys it never learns, the other holders' checks
/// see it, so its replica counts for itself alone, as one of its own holding would.
pub(super) async fn fetch_held_replica(
    asked: Asked<'_>,
    held: &[(PeerId, DriftSketch)],
    own: &[f32],
) -> HeldReplica {
    let Asked {
        net,
        rank,
        run_id,
        model_hash,
        round,
        by,
    } = asked;
    let first = rank % held.len().max(1);
    let mut undecided: Vec<usize> = (0..held.len())
        .cycle()
        .skip(first)
        .take(held.len())
        .collect();
    let fetch = |i: usize, until: Instant| {
        let fetched = state::fetch_replica(net, held[i].0, run_id, model_hash, round, own.len());
        async move {
            let out = before(until, fetched).await.unwrap_or_else(|| {
                Err(PeerError::Sync(format!(
                    "{} served no replica in time",
                    held[i].0
                )))
            });
            (i, out)
        }
    };
    // Every holder is asked for its check at once, each under its own key, while the first
    // replica comes (the first asked too: if its replica does not come, its check may support
    // another's). Checks are taken as they come; past `CHECK_TIMEOUT`, or once the replica is
    // in and they had `CHECK_GRACE` (or as long as the replica took) more, a holder that gave
    // none does not support it.
    let keys: Vec<u64> = held.iter().map(|_| fresh_key()).collect();
    let mut pending: FuturesUnordered<_> = keys
        .iter()
        .enumerate()
        .filter(|_| held.len() > 1)
        .map(|(i, &key)| async move {
            let check = state::fetch_check(net, held[i].0, run_id, model_hash, round, key);
            let check = match before(by.min(Instant::now() + CHECK_TIMEOUT), check).await {
                Some(Ok(check)) => Some(check),
                Some(Err(e)) => {
                    debug!("no check of round {round} from {}: {e}", held[i].0);
                    None
                }
                None => None,
            };
            (i, check)
        })
        .collect();
    let mut checks: Vec<Option<DriftSketch>> = vec![None; held.len()];
    let mut outcome = HeldReplica::default();
    let mut failures = Vec::new();
    // Holders counted with a replica taken (its server and its supporters); the others vote on
    // every replica taken later, whether or not their own replica came.
    let mut placed = vec![false; held.len()];
    // One server at a time until a replica is taken, each given half the time left (a server
    // that holds its replica back until the deadline leaves the next one time): the rest are
    // fetched only where their holders do not support it.
    let mut took = Duration::ZERO;
    while let Some(server) = (!undecided.is_empty()).then(|| undecided.remove(0)) {
        let asked_at = Instant::now();
        let replica = fetch(
            server,
            asked_at + by.saturating_duration_since(asked_at) / 2,
        )
        .fuse();
        futures::pin_mut!(replica);
        let (_, replica) = loop {
            futures::select! {
                out = replica => break out,
                (i, check) = pending.select_next_some() => checks[i] = check,
            }
        };
        took = asked_at.elapsed();
        let grace = Instant::now() + CHECK_GRACE.max(took);
        while let Some(Some((i, check))) = before(grace.min(by), pending.next()).await {
            checks[i] = check;
        }
        if let Some(theta) = take(&mut outcome, &mut failures, held, server, replica, own) {
            let voting = Voting {
                held,
                keys: &keys,
                checks: &checks,
            };
            let supporters = outcome.support(theta, &voting, server, &mut placed);
            outcome.unsupported = (held.len() - supporters) as u64;
            break;
        }
    }
    // Holders that do not support the replica taken, where its supporters are no majority of
    // the holding: their own replicas, one at a time (one that the next supports is all that is
    // fetched), each given twice as long as the first took (a holder that serves slowly is left
    // out, not waited for until the deadline). A replica that a majority of the holding
    // supports counts for every holder; short of one, each counts for its supporters, unless a
    // majority's checks speak against it.
    while !outcome.majority(held.len()) && !outcome.taken.is_empty() {
        undecided.retain(|&i| !placed[i]);
        let Some(server) = (!undecided.is_empty()).then(|| undecided.remove(0)) else {
            break;
        };
        let until = by.min(Instant::now() + (took * 2).max(CHECK_GRACE));
        let (_, replica) = fetch(server, until).await;
        if let Some(theta) = take(&mut outcome, &mut failures, held, server, replica, own) {
            let voting = Voting {
                held,
                keys: &keys,
                checks: &checks,
            };
            outcome.support(theta, &voting, server, &mut placed);
        }
    }
    outcome.settle(held);
    if outcome.taken.is_empty() {
        outcome.failure = Some(PeerError::Sync(failures.join("; ")));
    }
    outcome
}

/// The replica `server` served, if it fits its holders' fingerprints ([`fits`]); otherwise
/// why not goes to `failures` (and a refusal is counted).
fn take(
    outcome: &mut HeldReplica,
    failures: &mut Vec<String>,
    held: &[(PeerId, DriftSketch)],
    server: usize,
    replica: Result<Vec<f32>, PeerError>,
    own: &[f32],
) -> Option<(Vec<f32>, Fit)> {
    let peer = held[server].0;
    let theta = match replica {
        Ok(theta) => theta,
        Err(e) => {
            failures.push(e.to_string());
            return None;
        }
    };
    let sketches: Vec<&DriftSketch> = held.iter().map(|(_, s)| s).collect();
    match fits(&theta, &sketches, own) {
        Ok(fit) => Some((theta, fit)),
        Err(why) => {
            outcome.refused += 1;
            failures.push(format!("{peer} served a replica {why}"));
            None
        }
    }
}

/// How far the replica `theta` reads from a holder's `check` of its own under `key`
/// (relative to ‖θ‖), where that is within [`CHECK_TOLERANCE`]: the holder supports it. None
/// where it does not, or gave no check.
fn supports(theta: &[f32], key: u64, check: Option<&DriftSketch>) -> Option<f64> {
    // Measured against the served replica's norm, which `fits` held to its holders', not
    // against the checker's claimed one (a claimed huge norm would make anything near).
    let d = DriftSketch::keyed(theta, key).relative_distance(check?)?;
    (d <= CHECK_TOLERANCE).then_some(d)
}

/// `fut`'s output, or None if `by` comes first.
async fn before<T>(by: Instant, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let timeout = futures_timer::Delay::new(by.saturating_duration_since(Instant::now()));
    futures::pin_mut!(fut);
    match futures::future::select(fut, timeout).await {
        futures::future::Either::Left((out, _)) => Some(out),
        futures::future::Either::Right(_) => None,
    }
}

/// A fresh key for one check, unknown to anyone else: the server of a replica must not learn
/// the keys its fellow holders are checked under, or it could hide a vector from them too.
fn fresh_key() -> u64 {
    getrandom::u64().unwrap_or_else(|e| {
        // No randomness source: the time, which a remote server cannot know to the nanosecond.
        warn!("no randomness for a replica check ({e}); keyed by the time");
        let nanos = web_time::SystemTime::now()
            .duration_since(web_time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ 0x5851_F42D_4C95_7F2D
    })
}

/// How a replica taken lay from what vouched for it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fit {
    /// The farthest from a holder's fingerprint (sketch, or norm), relative to the holder's norm.
    pub(super) off: f64,
    /// Its exact distance from the fetcher's own replica, relative to that one's norm.
    pub(super) reach: f64,
}

/// Whether a served replica may be taken for its holders': within [`REPLICA_TOLERANCE`] of every
/// holder's sketch and [`REPLICA_NORM_TOLERANCE`] of its norm, measured against the holder's
/// norm (the one the fingerprint vouches for, not the served one's, which a liar sets: a
/// replica so large that its norm overflowed once measured 0 from any sketch), and within
/// [`REPLICA_REACH`] of `own`. Anything not a finite number fails.
fn fits(theta: &[f32], holders: &[&DriftSketch], own: &[f32]) -> Result<Fit, String> {
    let sketch = DriftSketch::of(theta);
    let mut off = 0.0f64;
    for holder in holders {
        let base = f64::from(holder.norm).max(1e-30);
        let norm_off = (f64::from(sketch.norm) - f64::from(holder.norm)).abs() / base;
        let sketch_off = holder.relative_distance(&sketch);
        match sketch_off {
            Some(d) if d <= REPLICA_TOLERANCE && norm_off <= REPLICA_NORM_TOLERANCE => {
                off = off.max(d);
            }
            _ => {
                return Err(format!(
                    "{sketch_off:?} from a holder's sketch, its norm {norm_off:.4} off"
                ));
            }
        }
    }
    let reach = drift::relative_distance(own, theta);
    // NaN fails too.
    if reach.is_nan() || reach > REPLICA_REACH {
        return Err(format!("{reach:.3} from this peer's own"));
    }
    Ok(Fit { off, reach })
}

/// What fetching one holding's replica came to.
#[derive(Default)]
pub(super) struct HeldReplica {
    /// The replicas taken, each with the holders it counts for (usually one, all of them).
    pub(super) taken: Vec<Taken>,
    /// Why none was taken, where none was.
    pub(super) failure: Option<PeerError>,
    /// Replicas served and refused on the way (not fitting, see [`fits`]).
    pub(super) refused: u64,
    /// Holders whose check did not support the first replica taken (or gave none).
    pub(super) unsupported: u64,
    /// Replicas of a holding of several that counted for their server alone.
    pub(super) alone: u64,
    /// Replicas taken and set aside for the one a majority of the holding supports.
    pub(super) outvoted: u64,
    /// The farthest a supporting holder's check read from the replica it supported.
    pub(super) max_check: Option<f64>,
}

/// What the holders of one replica said: their checks, under the keys they were asked with.
struct Voting<'a> {
    held: &'a [(PeerId, DriftSketch)],
    keys: &'a [u64],
    checks: &'a [Option<DriftSketch>],
}

impl HeldReplica {
    /// Takes `theta` (with how it fit) for `server` and every holder not yet `placed` whose check
    /// supports it ([`supports`]); those are placed now. Returns how many it counts for.
    fn support(
        &mut self,
        (theta, fit): (Vec<f32>, Fit),
        voting: &Voting<'_>,
        server: usize,
        placed: &mut [bool],
    ) -> usize {
        let Voting { held, keys, checks } = *voting;
        placed[server] = true;
        let mut supporters = vec![held[server].0];
        let mut against = 0;
        for i in 0..held.len() {
            if i == server {
                continue;
            }
            match (supports(&theta, keys[i], checks[i].as_ref()), &checks[i]) {
                (Some(d), _) if !placed[i] => {
                    placed[i] = true;
                    supporters.push(held[i].0);
                    self.max_check = Some(self.max_check.map_or(d, |m| m.max(d)));
                }
                (None, Some(_)) => against += 1,
                _ => {}
            }
        }
        let counted = supporters.len();
        self.taken.push(Taken {
            theta,
            fit,
            supporters,
            against,
        });
        counted
    }

    /// Whether a replica taken has the support of a majority of the holding's `holders`.
    fn majority(&self, holders: usize) -> bool {
        self.taken.iter().any(|t| 2 * t.supporters.len() > holders)
    }

    /// Decides whom each replica taken counts for. One that a majority of the holding supports
    /// counts for every holder, the others set aside (`outvoted`): every holder said by its
    /// fingerprint that it holds this one replica, so the majority's is what each holds, and a
    /// fellow member of the old group that counts a liar's share as its own replica (it never
    /// fetches it) then computes the same mean as those that fetched. Short of a majority, each
    /// counts for its supporters (`alone`: a replica of a holding of several that counts for
    /// its server only), but one whose checks a majority of the holding gave against it is set
    /// aside too: a liar asked first that serves late, leaving the honest holders no time,
    /// leaves its holding out rather than counted by its own replica.
    fn settle(&mut self, held: &[(PeerId, DriftSketch)]) {
        let n = held.len();
        if let Some(at) = self.taken.iter().position(|t| 2 * t.supporters.len() > n) {
            let mut chosen = self.taken.swap_remove(at);
            self.outvoted = self.taken.len() as u64;
            chosen.supporters = held.iter().map(|(p, _)| *p).collect();
            self.taken = vec![chosen];
        } else {
            let before = self.taken.len();
            self.taken.retain(|t| 2 * t.against <= n);
            self.outvoted = (before - self.taken.len()) as u64;
        }
        let several = n > 1;
        self.alone = self
            .taken
            .iter()
            .filter(|t| several && t.supporters.len() == 1)
            .count() as u64;
    }
}

/// One replica taken from a holding.
pub(super) struct Taken {
    pub(super) theta: Vec<f32>,
    /// How it lay from its holders' fingerprints and from the fetcher's own.
    pub(super) fit: Fit,
    /// Its server and the holders whose checks support it: it counts once for each.
    pub(super) supporters: Vec<PeerId>,
    /// Holders whose checks came and do not support it.
    pub(super) against: usize,
}

#[cfg(test)]
mod tests {
    use super::super::one_replica;
    use super::*;
    use gradswarm_core::topology::{decode_replica, encode_replica};

    /// Seeded Gaussian-ish weights (a sum of uniforms), `scale` their spread.
    fn weights(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n)
            .map(|_| scale * (0..4).map(|_| uniform()).sum::<f32>())
            .collect()
    }

    /// `base` plus [`weights`]`(base.len(), seed, scale)`: another replica near it.
    fn nudged(base: &[f32], seed: u64, scale: f32) -> Vec<f32> {
        let d = weights(base.len(), seed, scale);
        base.iter().zip(d).map(|(b, d)| b + d).collect()
    }

    #[test]
    fn a_replica_is_taken_only_within_its_holders_fingerprints_and_reach() {
        let n = 4096;
        let held = weights(n, 1, 0.1);
        // This peer's own replica: another old group's, 30 % of ‖θ‖ away.
        let own = nudged(&held, 2, 0.03);
        let holder = DriftSketch::of(&held);
        let holders = [&holder];
        // The holder's replica as it travels (6-bit levels) is taken.
        let bytes = encode_replica(&held, 7).expect("encodes");
        let served = decode_replica(&bytes, n).expect("decodes");
        let fit = fits(&served, &holders, &own).expect("an honest replica fits");
        assert!(
            fit.off < REPLICA_TOLERANCE && (0.2..0.4).contains(&fit.reach),
            "{fit:?}"
        );

        // A large vector hidden where the sketch cannot see it: in each bucket, two coordinates
        // whose signed sums cancel. The sketch is the holder's to the last bits, so measured
        // against the served replica's own (huge) norm it lay 0 away and was taken; its norm
        // gives it away.
        let mut hidden = served.clone();
        for bucket in 0..drift::SKETCH_BUCKETS {
            let pair: Vec<usize> = (0..n)
                .filter(|&j| DriftSketch::bucket_of(j) == bucket)
                .take(2)
                .collect();
            let (a, b) = (pair[0], pair[1]);
            hidden[a] += 1e4 * DriftSketch::sign_of(a);
            hidden[b] -= 1e4 * DriftSketch::sign_of(b);
        }
        let seen = DriftSketch::of(&hidden);
        let by_its_own_norm = seen.relative_distance(&holder).expect("sketches");
        assert!(by_its_own_norm < REPLICA_TOLERANCE, "{by_its_own_norm}");
        assert!(fits(&hidden, &holders, &own).is_err());

        // Half of ‖θ‖ hidden the same way, spread over every coordinate: within the sketch's
        // tolerance and within reach, so only its norm (11.8 % over the holder's) refuses it.
        let mut by_bucket: Vec<Vec<usize>> = vec![Vec::new(); drift::SKETCH_BUCKETS];
        for j in 0..n {
            by_bucket[DriftSketch::bucket_of(j)].push(j);
        }
        let pairs: Vec<(usize, usize)> = by_bucket
            .iter()
            .flat_map(|js| js.chunks_exact(2).map(|p| (p[0], p[1])))
            .collect();
        let norm = gradswarm_core::aggregate::l2_norm(&held) as f32;
        let size = 0.5 * norm / (2.0 * pairs.len() as f32).sqrt();
        let mut spread = served.clone();
        for &(a, b) in &pairs {
            spread[a] += size * DriftSketch::sign_of(a);
            spread[b] -= size * DriftSketch::sign_of(b);
        }
        let sketched = holder
            .relative_distance(&DriftSketch::of(&spread))
            .expect("sketches");
        let reach = drift::relative_distance(&own, &spread);
        assert!(
            sketched < REPLICA_TOLERANCE && reach < REPLICA_REACH,
            "{sketched} {reach}"
        );
        assert!(fits(&spread, &holders, &own).is_err());

        // Values so large that the norm overflows f32: no number fits.
        let huge = vec![1e37f32; n];
        assert!(fits(&huge, &holders, &own).is_err());

        // A liar's own holding: a sketch that matches what it serves, far from everyone's θ.
        let far: Vec<f32> = held.iter().map(|h| -2.0 * h).collect();
        let its_own = DriftSketch::of(&far);
        assert!(fits(&far, &[&its_own], &own).is_err());
        // Within reach, it is taken: a liar moves its group's mean by a bounded share.
        let near: Vec<f32> = own.iter().map(|v| 1.5 * v).collect();
        assert!(fits(&near, &[&DriftSketch::of(&near)], &own).is_ok());
    }

    /// A liar in an honest holding serves θ shrunk by 4 % plus 28 % of ‖θ‖ hidden from the
    /// public sketch: every public check takes it (it would have counted for each of the
    /// holding's members), but a fellow holder's keyed check, under a key the liar never saw,
    /// does not support it, while it supports the honest replica served in its place.
    #[test]
    fn a_vector_hidden_from_the_fingerprints_is_seen_by_a_fellow_holders_check() {
        let n = 20_000;
        let held = weights(n, 4, 0.1);
        // A fellow member of the old group: the same replica but for a few updates (0.4 %).
        let fellow = nudged(&held, 5, 0.0004);
        let (liar_print, fellow_print) = (DriftSketch::of(&held), DriftSketch::of(&fellow));
        assert!(one_replica(&liar_print, &fellow_print));
        let own = nudged(&held, 6, 0.03);
        let rounded = |theta: &[f32]| {
            decode_replica(&encode_replica(theta, 9).expect("encodes"), n).expect("decodes")
        };
        let mut hidden = weights(n, 7, 1.0);
        drift::unseen_by_sketch(&mut hidden);
        let norm = |v: &[f32]| gradswarm_core::aggregate::l2_norm(v) as f32;
        let size = 0.28 * norm(&held) / norm(&hidden);
        let poisoned: Vec<f32> = held
            .iter()
            .zip(&hidden)
            .map(|(h, v)| 0.96 * h + size * v)
            .collect();
        let (served, honest) = (rounded(&poisoned), rounded(&fellow));
        let hidden_size = drift::relative_distance(&held, &poisoned);
        assert!(hidden_size > 0.25, "{hidden_size}");
        let fit = fits(&served, &[&liar_print, &fellow_print], &own);
        assert!(fit.is_ok(), "the public checks take it: {fit:?}");
        for key in [3, 77, 0xfeed_f00d] {
            let check = DriftSketch::keyed(&honest, key);
            assert_eq!(supports(&served, key, Some(&check)), None, "key {key}");
            let d = supports(&rounded(&held), key, Some(&check));
            assert!(
                d.is_some_and(|d| d < CHECK_TOLERANCE / 2.0),
                "key {key}: {d:?}"
            );
        }
        // No check, no support.
        assert_eq!(supports(&served, 3, None), None);
    }

    /// How a holding of liar L and honest H1, H2 (and of two, L and H) is decided from the
    /// replicas taken and the holders' checks: the honest majority's replica counts for all,
    /// whatever the order they came in; a liar's that a majority speaks against is set aside;
    /// a holder whose own replica never came still votes.
    #[test]
    fn a_holding_counts_its_majoritys_replica_for_every_holder() {
        let n = 4096;
        let honest = weights(n, 8, 0.1);
        let mut hidden = weights(n, 9, 1.0);
        drift::unseen_by_sketch(&mut hidden);
        let size = 0.25 * gradswarm_core::aggregate::l2_norm(&honest) as f32
            / gradswarm_core::aggregate::l2_norm(&hidden) as f32;
        let liar: Vec<f32> = honest
            .iter()
            .zip(&hidden)
            .map(|(h, v)| h + size * v)
            .collect();
        let fit = Fit {
            off: 0.0,
            reach: 0.0,
        };
        let ids: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let held: Vec<(PeerId, DriftSketch)> =
            ids.iter().map(|&p| (p, DriftSketch::of(&honest))).collect();
        let keys = [11, 12, 13];
        // Holder 0 is the liar: its check is of its own replica; 1 and 2 check the honest one.
        let checks: Vec<Option<DriftSketch>> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| Some(DriftSketch::keyed(if i == 0 { &liar } else { &honest }, k)))
            .collect();
        let voting = Voting {
            held: &held,
            keys: &keys,
            checks: &checks,
        };
        let decide = |order: &[(usize, &Vec<f32>)], voting: &Voting<'_>| {
            let mut outcome = HeldReplica::default();
            let mut placed = vec![false; voting.held.len()];
            for &(server, theta) in order {
                if !placed[server] && !outcome.majority(voting.held.len()) {
                    outcome.support((theta.clone(), fit), voting, server, &mut placed);
                }
            }
            outcome.settle(voting.held);
            outcome
        };
        let counted = |o: &HeldReplica| -> Vec<(bool, usize)> {
            o.taken
                .iter()
                .map(|t| (t.theta == honest, t.supporters.len()))
                .collect()
        };
        // The liar served first: its replica outvoted, the honest one counted for all three.
        let o = decide(&[(0, &liar), (1, &honest)], &voting);
        assert_eq!((counted(&o), o.outvoted, o.alone), (vec![(true, 3)], 1, 0));
        // An honest holder first: a majority at once.
        let o = decide(&[(1, &honest)], &voting);
        assert_eq!((counted(&o), o.outvoted), (vec![(true, 3)], 0));
        // The liar served, and nobody after it in time: two checks against it, set aside.
        let o = decide(&[(0, &liar)], &voting);
        assert_eq!((counted(&o), o.outvoted), (vec![], 1));
        // Holder 1's replica never came (it is not in the order): it still supports holder 2's.
        let o = decide(&[(0, &liar), (2, &honest)], &voting);
        assert_eq!(counted(&o), vec![(true, 3)]);
        // A holding of two, the liar and one honest holder: no majority, each counts once.
        let two = Voting {
            held: &held[..2],
            keys: &keys[..2],
            checks: &checks[..2],
        };
        let o = decide(&[(0, &liar), (1, &honest)], &two);
        assert_eq!((counted(&o), o.alone), (vec![(false, 1), (true, 1)], 2));
    }

    #[test]
    fn a_fingerprint_with_an_honest_sketch_and_another_norm_is_a_holding_of_its_own() {
        let held = weights(4096, 3, 0.1);
        let honest = DriftSketch::of(&held);
        let other_member = DriftSketch::of(&held.iter().map(|v| v * 1.001).collect::<Vec<_>>());
        assert!(one_replica(&honest, &other_member));
        // The honest buckets, a norm 5 % over: joining the honest holding, it would have every
        // holder's replica refused on its norm.
        let veto = DriftSketch {
            norm: honest.norm * 1.05,
            ..honest.clone()
        };
        assert!(!one_replica(&honest, &veto) && !one_replica(&veto, &honest));
        let served = decode_replica(&encode_replica(&held, 3).expect("encodes"), held.len())
            .expect("decodes");
        assert!(fits(&served, &[&honest, &veto], &held).is_err());
        assert!(fits(&served, &[&honest], &held).is_ok());
    }
}
