//! One simulated round of compressed gossip ([`gradswarm_core::gossip`]): every peer takes its own
//! local steps, sends the codec's compression of θ − x̂ (its parameters less its public copy) to
//! its ring successors, and moves toward its ring predecessors' public copies. There is no group
//! and no barrier: a peer waits for its predecessors' differences only. A peer that hears from a
//! new predecessor (a joiner, or a neighbour of one who left) first fetches that peer's public
//! copy whole, charged as an int8 replica (and taken as exact: a real peer would have to hold
//! the decoded copy the others hold): the only replicas gossip moves.

use std::collections::HashMap;

use gradswarm_core::gossip::{Rings, mix};
use gradswarm_core::synthetic::SplitMix;
use gradswarm_core::topology::encode_replica;
use gradswarm_core::{Codec, RngKey};

use crate::objective::Quadratic;
use crate::swarm::{Peer, RoundStats, SimConfig, SimError, par_map};

/// Runs `round` over `peers` on `rings` rings; returns the mean encoded difference's size.
pub(crate) fn round(
    config: &SimConfig,
    objective: &Quadratic,
    peers: &mut [Peer],
    round: u64,
    rings: usize,
    stats: &mut RoundStats,
) -> Result<f64, SimError> {
    let ids: Vec<Vec<u8>> = peers.iter().map(|p| p.id.clone()).collect();
    let refs: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
    let index: HashMap<&[u8], usize> = refs.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    let topology = Rings { rings };
    let (mut sends, mut hears) = (Vec::new(), Vec::new());
    for &me in &refs {
        let nb = topology.neighbours(me, &refs);
        let mut to: Vec<usize> = nb.sends_to.iter().map(|p| index[p]).collect();
        to.sort_unstable();
        to.dedup();
        sends.push(to);
        hears.push(nb.hears_from.iter().map(|p| index[p]).collect::<Vec<_>>());
    }
    fetch_new_copies(peers, &ids, &hears, round, stats)?;

    // Own steps, then the difference to the public copy, which every receiver adds to its copy.
    let sizes = par_map(peers, |p| step_and_send(config, objective, p, round))?;

    // No barrier: a peer's round closes when its predecessors' differences are in.
    let sent: Vec<f64> = peers
        .iter()
        .zip(&sizes)
        .zip(&sends)
        .map(|((p, (bytes, compute)), to)| {
            p.clock + compute + to.len() as f64 * *bytes as f64 / p.machine.up_bps
        })
        .collect();
    for (i, p) in peers.iter_mut().enumerate() {
        let mut from = hears[i].clone();
        from.sort_unstable();
        from.dedup();
        let down: usize = from.iter().map(|&j| sizes[j].0).sum();
        let last = from.iter().map(|&j| sent[j]).fold(sent[i], f64::max);
        p.clock = last + p.machine.latency_s + down as f64 / p.machine.down_bps;
        stats.bytes_up += (sends[i].len() * sizes[i].0) as f64;
        stats.bytes_down += down as f64;
        let mut linked = [sends[i].as_slice(), from.as_slice()].concat();
        linked.sort_unstable();
        linked.dedup();
        stats.connections += linked.len() as f64;
    }

    // The gossip step, against the copies as they stand after everyone's difference.
    for i in 0..peers.len() {
        let mut theta = std::mem::take(&mut peers[i].theta);
        let heard: Vec<&[f32]> = hears[i]
            .iter()
            .map(|&j| peers[j].public.as_slice())
            .collect();
        mix(&mut theta, &peers[i].public, &heard, config.gamma);
        peers[i].theta = theta;
    }
    Ok(sizes.iter().map(|(b, _)| *b as f64).sum::<f64>() / peers.len().max(1) as f64)
}

/// A peer that hears from someone new fetches their public copy whole (round 0's copies are the
/// initial θ every peer starts from, so nothing moves then).
fn fetch_new_copies(
    peers: &mut [Peer],
    ids: &[Vec<u8>],
    hears: &[Vec<usize>],
    round: u64,
    stats: &mut RoundStats,
) -> Result<(), SimError> {
    let mut replica_size: HashMap<usize, usize> = HashMap::new();
    for (i, from) in hears.iter().enumerate() {
        // A predecessor on two rings is fetched once.
        let mut from = from.clone();
        from.sort_unstable();
        from.dedup();
        let now: Vec<Vec<u8>> = from.iter().map(|&j| ids[j].clone()).collect();
        if round > 0 {
            for &j in &from {
                if peers[i].heard.contains(&ids[j]) {
                    continue;
                }
                let size = match replica_size.get(&j) {
                    Some(&s) => s,
                    None => {
                        let s = encode_replica(&peers[j].public, round)
                            .map_err(|e| SimError::Codec {
                                round,
                                reason: e.to_string(),
                            })?
                            .len();
                        replica_size.insert(j, s);
                        s
                    }
                };
                stats.bytes_up += size as f64;
                stats.bytes_down += size as f64;
                stats.sync_bytes += 2.0 * size as f64;
                let (up, m) = (peers[j].machine.up_bps, &peers[i].machine);
                peers[i].clock += size as f64 / up.min(m.down_bps) + 2.0 * m.latency_s;
            }
        }
        peers[i].heard = now;
    }
    Ok(())
}

/// A peer's local steps, applied to its own θ by its outer optimizer, and the encoded difference
/// θ − x̂ it sends (its public copy takes the decoded difference, as its neighbours' copies do).
/// Returns the payload's size and the compute time.
fn step_and_send(
    config: &SimConfig,
    objective: &Quadratic,
    peer: &mut Peer,
    round: u64,
) -> Result<(usize, f64), SimError> {
    let mut rng = SplitMix::new(peer.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut delta = objective.local_steps(
        &peer.theta,
        (config.local_steps, config.inner_lr),
        (peer.shift, config.skew_per_peer.then_some(peer.seed)),
        &mut rng,
    );
    if peer.attacker {
        delta.iter_mut().for_each(|d| *d = -*d);
    }
    // Its own step whole: stepping on its compressed update instead (with error feedback)
    // diverged in the simulator, the residual's stale debt applied at full weight.
    peer.outer.apply(&mut peer.theta, &delta);
    let diff: Vec<f32> = peer
        .theta
        .iter()
        .zip(&peer.public)
        .map(|(t, x)| t - x)
        .collect();
    // No error feedback: what the payload leaves out stays in θ − x̂ for the next round.
    let mut residual = vec![0.0f32; diff.len()];
    let codec_error = |e: &dyn std::fmt::Display| SimError::Codec {
        round,
        reason: e.to_string(),
    };
    let payload = peer
        .codec
        .encode(&diff, &mut residual, RngKey::new(peer.seed, round))
        .map_err(|e| codec_error(&e))?;
    peer.codec
        .decode_add(&config.codec, &payload, 1.0, &mut peer.public)
        .map_err(|e| codec_error(&e))?;
    Ok((payload.len(), config.links.compute(&peer.machine, &mut rng)))
}
