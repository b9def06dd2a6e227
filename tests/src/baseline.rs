//! The baseline every report carries: exact synchronous all-reduce of dense fp32 updates, in
//! process, with the same peers, shards, batches and schedule as the swarm, and the mode's
//! standard outer optimizer (SGD lr 1 per step; DiLoCo's Nesterov 0.7/0.9 with local steps).
//!
//! Each of N workers takes H local steps from the shared θ on its own shard, exactly as a peer
//! does; the N dense updates are averaged (weighted by samples, all equal) with no compression,
//! no staleness and no one missing, and the average moves θ through the outer optimizer. What
//! differs from the swarm is what gradswarm adds: the codec, gossip and asynchrony (and the outer
//! optimizer, when a scenario gives the swarm another).

use std::sync::Arc;

use anyhow::Result;
use gradswarm_core::{OuterOptimizer, ShardKey};
use gradswarm_model::burn::prelude::Device;
use gradswarm_model::data::validation_batches;
use gradswarm_model::{Corpus, Trainer};
use serde::Serialize;

use crate::scenario::Scenario;

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
}

/// Trains the baseline of `scenario` on `corpus`; `progress` hears of each evaluated round.
pub fn run(
    scenario: &Scenario,
    corpus: &Arc<Corpus>,
    mut progress: impl FnMut(&BaselineRound),
) -> Result<Baseline> {
    let started = std::time::Instant::now();
    let train = scenario.train_config();
    let n = scenario.peers;
    let mut workers: Vec<Trainer> = (0..n)
        .map(|_| Trainer::new(&scenario.model, &train, &Device::flex()))
        .collect::<Result<_, _>>()?;
    // Shard keys as peers' would be: distinct and fixed, so each worker has its own data.
    let keys: Vec<ShardKey> = (0..n)
        .map(|i| ShardKey::of(format!("baseline-worker-{i}").as_bytes()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by_key(|k| k.value());
    let val = validation_batches(
        corpus,
        scenario.eval_batches,
        train.batch_size,
        scenario.model.context,
    );
    let mut outer = OuterOptimizer::new(scenario.baseline_outer());
    let h = scenario.h();
    let mut samples = 0u64;
    let mut rounds = Vec::new();
    for round in 0..scenario.rounds {
        let anchor = workers[0].parameters()?;
        let mut sum = vec![0.0f64; anchor.len()];
        let mut loss = 0.0f32;
        for (worker, key) in workers.iter_mut().zip(&keys) {
            let sampler = corpus.sampler(*key, &sorted, 0, train.seed);
            let reports = worker.local_steps(&sampler, h)?;
            loss += reports.iter().map(|r| r.loss).sum::<f32>() / reports.len().max(1) as f32;
            samples += reports.len() as u64 * train.batch_size as u64;
            let local = worker.parameters()?;
            for ((s, a), l) in sum.iter_mut().zip(&anchor).zip(&local) {
                *s += f64::from(a - l);
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / n as f64) as f32).collect();
        let mut theta = anchor;
        outer.apply(&mut theta, &mean);
        for worker in &mut workers {
            worker.set_parameters(&theta)?;
        }
        if (round + 1).is_multiple_of(scenario.eval_every) || round + 1 == scenario.rounds {
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
    })
}
