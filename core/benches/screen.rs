//! What the screens add to closing a round: eight top-1 % updates of the default model's size
//! (875 264 parameters), densified and averaged by the weighted mean (the baseline, measured in
//! the same run), against the same through `screen_round` (norm and direction screens) first.
//!
//! `cargo bench -p gradswarm-core --bench screen` prints criterion's times for both; their ratio
//! is what the direction screen costs a round's close.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gradswarm_core::codec::topk;
use gradswarm_core::synthetic::gradient_like;
use gradswarm_core::{
    Accepted, AggregationRule, DecodedUpdate, DirectionScreen, NormScreen, Weighted, screen_round,
};

const LEN: usize = 875_264;
const UPDATES: u64 = 8;

/// One sparse update: the top 1 % of a gradient-like vector, as a peer's decoded update holds it.
fn update(seed: u64) -> Accepted<Arc<DecodedUpdate>> {
    let dense = gradient_like(LEN, seed);
    let indices = topk::select(&dense, LEN / 100);
    let values = indices.iter().map(|&i| dense[i as usize]).collect();
    Accepted {
        peer: seed.to_le_bytes().to_vec(),
        round: 1,
        base_round: 1,
        tau: 0,
        samples: 8,
        weight: 8.0,
        digest: seed,
        payload: Arc::new(DecodedUpdate {
            len: LEN,
            indices: Some(indices),
            values,
        }),
    }
}

fn bench(c: &mut Criterion) {
    let round: Vec<_> = (0..UPDATES).map(update).collect();
    let mut group = c.benchmark_group(format!("close {UPDATES} updates/n={LEN}"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("densify + weighted mean (baseline)", |b| {
        b.iter(|| {
            let dense: Vec<Vec<f32>> = round
                .iter()
                .map(|a| {
                    let mut v = vec![0.0f32; LEN];
                    a.payload.add_to(1.0, &mut v);
                    v
                })
                .collect();
            let inputs: Vec<Weighted<'_>> = dense
                .iter()
                .map(|values| Weighted {
                    weight: 8.0,
                    values,
                })
                .collect();
            AggregationRule::WeightedMean
                .build()
                .aggregate(black_box(&inputs))
        })
    });
    group.bench_function("screen_round + weighted mean", |b| {
        b.iter(|| {
            let screened = screen_round(
                black_box(&round),
                LEN,
                &NormScreen::default(),
                Some(&DirectionScreen::default()),
            );
            AggregationRule::WeightedMean
                .build()
                .aggregate(&screened.inputs())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
