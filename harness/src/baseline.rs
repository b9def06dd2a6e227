//! The baseline every report carries, trained in process on the same corpus shards and the same
//! per-step batches as the swarm's peers.
//!
//! - `data_parallel` (the default, bench/README.md): exact synchronous all-reduce of dense fp32
//!   gradients. One AdamW step per local step on the global batch, which is the N workers' batches
//!   of that step side by side: the mean gradient over the global batch is the all-reduced mean
//!   of the workers' gradients, so one trainer computes it exactly. This is the training the
//!   swarm has to match per sample, whatever its mode.
//! - `dense_swarm`: the swarm's own method without what gradswarm adds. N workers take H local
//!   steps from the shared θ, their dense updates are averaged with nobody late or missing, and
//!   the average moves θ through the outer optimizer (`baseline_outer`; SGD lr 1, plain model
//!   averaging with local steps). It isolates the cost of the codec, gossip and asynchrony.
//! - `codec_swarm`: `dense_swarm` with the peers' codec, error feedback, look-ahead and outer
//!   optimizer, in lockstep. Against `dense_swarm` it isolates the codec; against the swarm, the
//!   network and asynchrony.

use std::sync::Arc;

use anyhow::Result;
use gradswarm_core::{Codec, CpuCodec, ErrorFeedback, OuterOptimizer, RngKey, ShardKey};
use gradswarm_model::burn::prelude::Device;
use gradswarm_model::data::{Batch, validation_batches};
use gradswarm_model::{Corpus, NamedVectors, Trainer};
use serde::Serialize;

use crate::scenario::{BaselineMethod, Scenario};

/// One evaluated round of the baseline.
#[derive(Clone, Debug, Serialize)]
pub struct BaselineRound {
    /// The round.
    pub round: u64,
    /// Samples trained on by all workers so far.
    pub samples: u64,
    /// Mean training loss of the round's local steps over the workers.
    pub loss: f32,
    /// Validation loss after the round.
    pub val_loss: f64,
}

/// The baseline's curve and cost.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// Validation loss along the run (every `eval_every` rounds, and the last).
    pub rounds: Vec<BaselineRound>,
    /// Wall time of the whole baseline run.
    pub wall_s: f64,
    /// The model's parameter count (dense fp32 sends 4 bytes of each per step).
    pub parameters: usize,
    /// Encoded update bytes per worker per local step (`codec_swarm` only: the others send
    /// dense fp32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_bytes_per_worker_per_step: Option<f64>,
}

/// Trains the baseline of `scenario` on `corpus`; `progress` hears of each evaluated round.
pub fn run(
    scenario: &Scenario,
    corpus: &Arc<Corpus>,
    progress: impl FnMut(&BaselineRound),
) -> Result<Baseline> {
    match scenario.baseline_method {
        BaselineMethod::DataParallel => data_parallel(scenario, corpus, progress),
        BaselineMethod::DenseSwarm => lockstep_swarm(scenario, corpus, false, progress),
        BaselineMethod::CodecSwarm => lockstep_swarm(scenario, corpus, true, progress),
    }
}

/// Shard keys as peers' would be: distinct and fixed, so each worker has its own data.
fn worker_keys(n: usize) -> (Vec<ShardKey>, Vec<ShardKey>) {
    let keys: Vec<ShardKey> = (0..n)
        .map(|i| ShardKey::of(format!("baseline-worker-{i}").as_bytes()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by_key(|k| k.value());
    (keys, sorted)
}

/// Whether round `round` (0-based) of `scenario` ends with an evaluation.
fn evaluates(scenario: &Scenario, round: u64) -> bool {
    (round + 1).is_multiple_of(scenario.eval_every) || round + 1 == scenario.rounds
}

/// One trainer, one AdamW step per local step on the workers' batches of that step side by side.
fn data_parallel(
    scenario: &Scenario,
    corpus: &Arc<Corpus>,
    mut progress: impl FnMut(&BaselineRound),
) -> Result<Baseline> {
    let started = std::time::Instant::now();
    let train = scenario.train_config();
    let n = scenario.peers;
    let mut trainer = Trainer::new(&scenario.model, &train, &Device::flex())?;
    let (keys, sorted) = worker_keys(n);
    let samplers: Vec<_> = keys
        .iter()
        .map(|key| corpus.sampler(*key, &sorted, 0, train.seed))
        .collect();
    let val = validation_batches(
        corpus,
        scenario.eval_batches,
        train.batch_size,
        scenario.model.context,
    );
    let (b, t) = (train.batch_size, scenario.model.context);
    let mut samples = 0u64;
    let mut rounds = Vec::new();
    for round in 0..scenario.rounds {
        let mut loss = 0.0f32;
        for _ in 0..scenario.h() {
            let step = trainer.step();
            let parts: Vec<Batch> = samplers.iter().map(|s| s.batch(step, b, t)).collect();
            let report = trainer.train_step(&Batch::concat(&parts)?)?;
            loss += report.loss;
            samples += (b * n) as u64;
        }
        if evaluates(scenario, round) {
            let row = BaselineRound {
                round,
                samples,
                loss: loss / scenario.h() as f32,
                val_loss: trainer.evaluate(&val)?,
            };
            progress(&row);
            rounds.push(row);
        }
    }
    Ok(Baseline {
        rounds,
        wall_s: started.elapsed().as_secs_f64(),
        parameters: trainer.num_params(),
        update_bytes_per_worker_per_step: None,
    })
}

/// N workers, H local steps each from the shared θ, updates averaged, the outer optimizer: dense
/// updates and `baseline_outer`, or (`compressed`) the peers' codec with error feedback, their
/// look-ahead and their outer optimizer.
fn lockstep_swarm(
    scenario: &Scenario,
    corpus: &Arc<Corpus>,
    compressed: bool,
    mut progress: impl FnMut(&BaselineRound),
) -> Result<Baseline> {
    let started = std::time::Instant::now();
    let train = scenario.train_config();
    let n = scenario.peers;
    let mut workers: Vec<Trainer> = (0..n)
        .map(|_| Trainer::new(&scenario.model, &train, &Device::flex()))
        .collect::<Result<_, _>>()?;
    if scenario.global_second_moment == Some(true) {
        for worker in &mut workers {
            worker.set_replicas(n);
        }
    }
    let (keys, sorted) = worker_keys(n);
    let val = validation_batches(
        corpus,
        scenario.eval_batches,
        train.batch_size,
        scenario.model.context,
    );
    let peer = scenario.peer_config(0);
    let mut outer = OuterOptimizer::new(if compressed {
        peer.outer
    } else {
        scenario.baseline_outer()
    });
    let len = workers[0].num_params();
    let mut codec = CpuCodec::new(peer.codec)?;
    // One residual per worker, only where there is a codec to keep it.
    let mut feedback: Vec<ErrorFeedback> = (0..if compressed { n } else { 0 })
        .map(|_| ErrorFeedback::with_decay(len, peer.feedback_decay))
        .collect();
    let lookahead = compressed && peer.feedback_lookahead;
    // With overlap: each worker's last update as it was sent, and θ and the outer optimizer as
    // they were before the last round's mean moved them.
    let overlap = scenario.lockstep_overlap;
    let mut own: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut previous: Option<(Vec<f32>, OuterOptimizer)> = None;
    let h = scenario.h();
    let mut samples = 0u64;
    let mut update_bytes = 0u64;
    let mut rounds = Vec::new();
    for round in 0..scenario.rounds {
        let anchor = workers[0].parameters()?;
        let mut sum = vec![0.0f64; anchor.len()];
        let mut loss = 0.0f32;
        for (i, (worker, key)) in workers.iter_mut().zip(&keys).enumerate() {
            let sampler = corpus.sampler(*key, &sorted, 0, train.seed);
            // θ before the last round's mean, moved by this worker's own update alone.
            let base = match (own[i].take(), &previous) {
                (Some(sent), Some((theta, before))) => {
                    let mut eager = theta.clone();
                    before.clone().apply(&mut eager, &sent);
                    eager
                }
                _ => anchor.clone(),
            };
            let start = if lookahead {
                feedback[i].ahead_of(&base, peer.outer.eventual_step() / n as f32)?
            } else {
                base
            };
            worker.set_parameters(&start)?;
            let reports = worker.local_steps(&sampler, h)?;
            loss += reports.iter().map(|r| r.loss).sum::<f32>() / reports.len().max(1) as f32;
            samples += reports.len() as u64 * train.batch_size as u64;
            let local = worker.parameters()?;
            let delta: Vec<f32> = start.iter().zip(&local).map(|(a, l)| a - l).collect();
            let sent = if compressed {
                let payload =
                    feedback[i].encode(&mut codec, &delta, RngKey::new(key.value(), round))?;
                update_bytes += payload.len() as u64;
                let mut sent = vec![0.0f32; len];
                codec.decode_add(&peer.codec, &payload, 1.0, &mut sent)?;
                sent
            } else {
                delta
            };
            for (s, d) in sum.iter_mut().zip(&sent) {
                *s += f64::from(*d);
            }
            if overlap {
                own[i] = Some(sent);
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / n as f64) as f32).collect();
        if overlap {
            previous = Some((anchor.clone(), outer.clone()));
        }
        if scenario.lockstep_sync_moments {
            average_moments(&mut workers)?;
        }
        let mut theta = anchor;
        outer.apply(&mut theta, &mean);
        for worker in &mut workers {
            worker.set_parameters(&theta)?;
        }
        if evaluates(scenario, round) {
            let row = BaselineRound {
                round,
                samples,
                loss: loss / n as f32,
                val_loss: workers[0].evaluate(&val)?,
            };
            progress(&row);
            rounds.push(row);
        }
    }
    Ok(Baseline {
        rounds,
        wall_s: started.elapsed().as_secs_f64(),
        parameters: len,
        update_bytes_per_worker_per_step: compressed
            .then(|| update_bytes as f64 / (n as u64 * scenario.rounds * h).max(1) as f64),
    })
}

/// Replaces every worker's AdamW moments (first and second) by their mean over the workers.
fn average_moments(workers: &mut [Trainer]) -> Result<()> {
    let states: Vec<(u64, NamedVectors)> = workers
        .iter()
        .map(Trainer::optimizer_state)
        .collect::<Result<_, _>>()?;
    let Some((_, first)) = states.first() else {
        return Ok(());
    };
    let n = states.len() as f64;
    let mean: NamedVectors = first
        .iter()
        .enumerate()
        .map(|(j, (name, values))| {
            let avg = (0..values.len())
                .map(|k| (states.iter().map(|s| f64::from(s.1[j].1[k])).sum::<f64>() / n) as f32)
                .collect();
            (name.clone(), avg)
        })
        .collect();
    for (worker, (optimizer_steps, _)) in workers.iter_mut().zip(&states) {
        let step = worker.step();
        worker.set_optimizer_state(step, *optimizer_steps, &mean)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_PEER: &str = r#"
        name = "baseline-test"
        peers = 1
        rounds = 6
        mode = "gradient"
        eval_every = 2
        eval_batches = 2
        target_val_loss = 4.0
        [model]
        layers = 1
        d_model = 32
        heads = 2
        context = 32
        mlp_ratio = 2
        [train]
        batch_size = 4
        micro_batch_size = 4
        lr = 0.01
        warmup_steps = 2
    "#;

    /// With one worker in gradient mode, averaging dense updates through SGD lr 1 is the worker's
    /// own AdamW step: both baselines must then trace the same curve, which ties the
    /// data-parallel path (batches side by side, one step) to the per-worker one.
    #[test]
    fn both_baselines_agree_on_one_worker_and_data_parallel_counts_the_global_batch() {
        let mut scenario: Scenario = toml::from_str(ONE_PEER).unwrap();
        let corpus = crate::load_corpus(scenario.model.context).unwrap();
        let dp = run(&scenario, &corpus, |_| {}).unwrap();
        scenario.baseline_method = BaselineMethod::DenseSwarm;
        let swarm = run(&scenario, &corpus, |_| {}).unwrap();
        assert_eq!(dp.rounds.len(), 3);
        for (a, b) in dp.rounds.iter().zip(&swarm.rounds) {
            assert_eq!((a.round, a.samples), (b.round, b.samples));
            assert!((a.val_loss - b.val_loss).abs() < 1e-4, "{a:?} vs {b:?}");
        }
        assert!(
            dp.rounds[2].val_loss < dp.rounds[0].val_loss,
            "{:?}",
            dp.rounds
        );

        // Three workers: each step trains on three batches at once, so samples triple.
        scenario.baseline_method = BaselineMethod::DataParallel;
        scenario.peers = 3;
        let three = run(&scenario, &corpus, |_| {}).unwrap();
        assert_eq!(three.rounds.last().map(|r| r.samples), Some(6 * 3 * 4));
        assert!(three.rounds.iter().all(|r| r.val_loss.is_finite()));
    }

    /// A lockstep variant that `set(scenario, on)` switches must leave one worker's curve exactly
    /// as it was (with one worker it is the identity) and move two workers' curve.
    fn exact_for_one_worker_and_not_for_two(set: impl Fn(&mut Scenario, bool)) {
        let mut scenario: Scenario = toml::from_str(ONE_PEER).unwrap();
        scenario.mode = gradswarm_peer::Mode::LocalSteps;
        scenario.local_steps = 2;
        scenario.baseline_method = BaselineMethod::DenseSwarm;
        let corpus = crate::load_corpus(scenario.model.context).unwrap();
        let curve = |s: &Scenario| -> Vec<f64> {
            let b = run(s, &corpus, |_| {}).unwrap();
            b.rounds.iter().map(|r| r.val_loss).collect()
        };
        let plain = curve(&scenario);
        set(&mut scenario, true);
        assert_eq!(curve(&scenario), plain);
        scenario.peers = 2;
        let varied = curve(&scenario);
        set(&mut scenario, false);
        let two = curve(&scenario);
        assert!(varied.iter().all(|l| l.is_finite()), "{varied:?}");
        assert!(
            varied.iter().zip(&two).any(|(a, b)| (a - b).abs() > 1e-4),
            "varied {varied:?} against lockstep {two:?}"
        );
    }

    /// Overlapping rounds starts each worker from its own last update in place of the mean it
    /// has not heard yet: with one worker that is the mean; with two it is not.
    #[test]
    fn overlap_is_exact_for_one_worker_and_not_for_two() {
        exact_for_one_worker_and_not_for_two(|s, on| s.lockstep_overlap = on);
    }

    /// Averaging one worker's moments is the identity; two workers' moments differ.
    #[test]
    fn moment_sync_is_exact_for_one_worker_and_not_for_two() {
        exact_for_one_worker_and_not_for_two(|s, on| s.lockstep_sync_moments = on);
    }

    /// The lockstep codec swarm trains through its codec: with every coordinate sent (int8 only
    /// rounds them) it follows the dense swarm closely, and at top-1% it still trains but
    /// measurably apart from it, so the codec is really in the loop.
    #[test]
    fn the_codec_swarm_follows_the_dense_one_as_far_as_its_codec_lets_it() {
        let mut scenario: Scenario = toml::from_str(ONE_PEER).unwrap();
        scenario.peers = 2;
        scenario.rounds = 8;
        scenario.outer = Some(gradswarm_core::OuterConfig::Sgd { lr: 1.0 });
        scenario.feedback_lookahead = Some(false);
        let corpus = crate::load_corpus(scenario.model.context).unwrap();
        scenario.baseline_method = BaselineMethod::DenseSwarm;
        let dense = run(&scenario, &corpus, |_| {}).unwrap();
        scenario.baseline_method = BaselineMethod::CodecSwarm;
        scenario.top_k_per_million = 1_000_000;
        let whole = run(&scenario, &corpus, |_| {}).unwrap();
        scenario.top_k_per_million = 10_000;
        let sparse = run(&scenario, &corpus, |_| {}).unwrap();
        let last = |b: &Baseline| b.rounds.last().map(|r| r.val_loss).unwrap();
        let first = |b: &Baseline| b.rounds[0].val_loss;
        assert!(last(&whole) < first(&whole), "{:?}", whole.rounds);
        assert!(
            (last(&whole) - last(&dense)).abs() < 0.02,
            "{} vs {}",
            last(&whole),
            last(&dense)
        );
        assert!(last(&sparse) < first(&sparse), "{:?}", sparse.rounds);
        assert!(
            (last(&sparse) - last(&dense)).abs() > (last(&whole) - last(&dense)).abs(),
            "top-1% {} and all {} against dense {}",
            last(&sparse),
            last(&whole),
            last(&dense)
        );
    }
}
