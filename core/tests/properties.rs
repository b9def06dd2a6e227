//! Property tests of the core algorithms. Fixed seeds: a failure reproduces on every machine.

use gradswarm_core::aggregate::{Aggregator, CenteredClip, TrimmedMean, WeightedMean};
use gradswarm_core::codec::quant::{self, dequantize, quantize};
use gradswarm_core::codec::topk;
use gradswarm_core::shard::{ShardKey, owner};
use gradswarm_core::synthetic::SplitMix;
use gradswarm_core::{
    Codec, CodecDescriptor, Compress, CpuCodec, DropReason, ErrorFeedback, Quantize, RngKey,
    Sparsify, Update, UpdateValidator, Weighted, WireLimits, codec::decode_payload,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x6772_6164),
        failure_persistence: None,
        ..Config::default()
    }
}

fn descriptors() -> impl Strategy<Value = CodecDescriptor> {
    (
        prop_oneof![
            Just(Sparsify::Dense),
            (1u32..=1_000_000).prop_map(|per_million| Sparsify::TopK { per_million }),
        ],
        prop_oneof![
            Just(Quantize::F32),
            (1u16..=300).prop_map(|block| Quantize::Int8 { block }),
        ],
        prop_oneof![
            Just(Compress::None),
            (1i8..=5).prop_map(|level| Compress::Zstd { level })
        ],
    )
        .prop_map(|(sparsify, quantize, compress)| CodecDescriptor {
            sparsify,
            quantize,
            compress,
        })
}

/// Values with ties, signed zeros and denormals mixed in with ordinary floats.
fn awkward_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10.0f32..10.0,
        1 => prop::sample::select(vec![0.0f32, -0.0, 1.0, -1.0, 0.5]),
        1 => (1u32..0x0080_0000).prop_map(f32::from_bits),
        1 => (1u32..0x0080_0000).prop_map(|b| -f32::from_bits(b)),
    ]
}

proptest! {
    #![proptest_config(config(96))]

    /// Σ decoded + e_T = Σ inputs: error feedback loses nothing, whatever the codec drops.
    #[test]
    fn error_feedback_loses_nothing(
        descriptor in descriptors(),
        len in 1usize..1500,
        rounds in 1usize..8,
        seed in any::<u64>(),
    ) {
        let mut codec = CpuCodec::new(descriptor).expect("valid descriptor");
        let mut ef = ErrorFeedback::new(len);
        let mut rng = SplitMix::new(seed);
        let mut sent = vec![0.0f64; len];
        let mut input = vec![0.0f64; len];
        for r in 0..rounds {
            let delta: Vec<f32> = (0..len).map(|_| (rng.normal() * 3.0) as f32).collect();
            delta.iter().zip(&mut input).for_each(|(&d, s)| *s += f64::from(d));
            let payload = ef.encode(&mut codec, &delta, RngKey::new(seed, r as u64)).expect("encodes");
            let decoded = decode_payload(&descriptor, &payload, len).expect("own payload decodes");
            for (s, d) in sent.iter_mut().zip(decoded.to_dense()) {
                *s += f64::from(d);
            }
        }
        let scale = input.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        // Each round rounds twice (u = Δ + e, e = u − D) by at most ½ ulp of a value ≤ scale.
        let tol = 2.0 * rounds as f64 * f64::from(f32::EPSILON) * scale;
        for i in 0..len {
            let total = sent[i] + f64::from(ef.residual()[i]);
            prop_assert!((total - input[i]).abs() <= tol,
                "coordinate {i}: sent + residual = {total}, inputs = {}", input[i]);
        }
    }

    /// With decay β, what was sent plus the residual is the β-discounted sum of the inputs, where
    /// the discount applies to what was still unsent: e_t = β e_{t−1} + Δ_t − D(c_t).
    #[test]
    fn decaying_error_feedback_discounts_only_the_unsent(
        len in 1usize..600,
        rounds in 1usize..6,
        decay in 0.5f32..1.0,
        seed in any::<u64>(),
    ) {
        let descriptor = CodecDescriptor::top_k_int8_zstd(50_000);
        let mut codec = CpuCodec::new(descriptor).expect("valid descriptor");
        let mut ef = ErrorFeedback::with_decay(len, decay);
        let mut rng = SplitMix::new(seed);
        // The reference residual, in f64: e ← β e + Δ − D(c).
        let mut reference = vec![0.0f64; len];
        let mut scale = 1.0f64;
        for r in 0..rounds {
            let delta: Vec<f32> = (0..len).map(|_| (rng.normal() * 3.0) as f32).collect();
            let payload = ef.encode(&mut codec, &delta, RngKey::new(seed, r as u64)).expect("encodes");
            let decoded = decode_payload(&descriptor, &payload, len).expect("own payload decodes");
            for ((e, d), c) in reference.iter_mut().zip(&delta).zip(decoded.to_dense()) {
                *e = f64::from(decay) * *e + f64::from(*d) - f64::from(c);
                scale = scale.max(e.abs()).max(f64::from(d.abs()));
            }
        }
        let tol = 4.0 * rounds as f64 * f64::from(f32::EPSILON) * scale;
        for (i, (&e, r)) in ef.residual().iter().zip(&reference).enumerate() {
            let e = f64::from(e);
            prop_assert!((e - r).abs() <= tol, "coordinate {i}: residual {e}, reference {r}");
        }
    }

    /// Stochastic rounding stays within one quantum and its mean error vanishes.
    #[test]
    fn stochastic_rounding_is_unbiased_within_one_quantum(
        value in awkward_value(),
        headroom in 1.0f32..64.0,
        seed in any::<u64>(),
    ) {
        let max = value.abs() * headroom;
        let exp = quant::block_exponent_byte(max.to_bits()).expect("in range");
        let quantum = 2f64.powi(i32::from(exp) - quant::EXP_BIAS);
        let n = 8192u32;
        let mut sum = 0.0f64;
        for i in 0..n {
            let key = RngKey::new(seed, u64::from(i / 64));
            let d = f64::from(dequantize(quantize(value, exp, key.draw(i)), exp));
            let err = d - f64::from(value);
            prop_assert!(err.abs() < quantum, "error {err} ≥ quantum {quantum}");
            sum += err;
        }
        // The mean of n errors, each within one quantum with mean zero, has σ ≤ quantum/(2√n).
        let mean = sum / f64::from(n);
        prop_assert!(mean.abs() <= 6.0 * quantum / (2.0 * f64::from(n).sqrt()),
            "mean error {mean} for quantum {quantum}");
    }

    /// Top-k returns exactly the k largest magnitudes, ties to the lowest indices.
    #[test]
    fn top_k_is_exactly_the_k_largest(
        values in prop::collection::vec(awkward_value(), 0..600),
        k_frac in 0.0f64..=1.0,
    ) {
        let k = (values.len() as f64 * k_frac) as usize;
        let mut order: Vec<u32> = (0..values.len() as u32).collect();
        order.sort_by(|&a, &b| {
            values[b as usize].abs().total_cmp(&values[a as usize].abs()).then(a.cmp(&b))
        });
        let mut expected = order[..k].to_vec();
        expected.sort_unstable();
        prop_assert_eq!(topk::select(&values, k), expected);
    }

    /// The same input, key and codec always give the same bytes (what a GPU must reproduce).
    #[test]
    fn encoding_is_deterministic(descriptor in descriptors(), seed in any::<u64>(), len in 0usize..800) {
        let delta: Vec<f32> = gradswarm_core::synthetic::gradient_like(len, seed);
        let encode = || {
            let mut codec = CpuCodec::new(descriptor).expect("valid");
            let mut ef = ErrorFeedback::new(len);
            ef.encode(&mut codec, &delta, RngKey::new(seed, 3)).expect("encodes")
        };
        prop_assert_eq!(encode(), encode());
    }
}

/// The attacks of the Byzantine tests.
#[derive(Clone, Copy, Debug)]
enum Attack {
    Scale100,
    SignFlip,
}

/// Honest vectors around a common mean, plus `f` attackers built from honest vectors.
fn byzantine_inputs(
    n: usize,
    f: usize,
    dim: usize,
    attack: Attack,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<f64>, f64) {
    let mut rng = SplitMix::new(seed);
    // A clear signal (|μᵢ| ≈ 2) under honest noise of 0.02, the regime where averaging helps.
    let mu: Vec<f64> = (0..dim)
        .map(|_| if rng.uniform() < 0.5 { -2.0 } else { 2.0 } + 0.2 * rng.normal())
        .collect();
    let honest: Vec<Vec<f32>> = (0..n - f)
        .map(|_| {
            mu.iter()
                .map(|&m| (m + 0.02 * rng.normal()) as f32)
                .collect()
        })
        .collect();
    let mut honest_mean = vec![0.0f64; dim];
    for h in &honest {
        honest_mean
            .iter_mut()
            .zip(h)
            .for_each(|(a, &x)| *a += f64::from(x) / (n - f) as f64);
    }
    // The bound: the honest vectors' total spread around their mean.
    let spread = honest
        .iter()
        .map(|h| {
            h.iter()
                .zip(&honest_mean)
                .map(|(&x, &m)| (f64::from(x) - m).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt();
    let mut all = honest.clone();
    for j in 0..f {
        let base = &honest[j % honest.len()];
        all.push(match attack {
            Attack::Scale100 => base.iter().map(|x| x * 100.0).collect(),
            Attack::SignFlip => base.iter().map(|x| -x).collect(),
        });
    }
    (all, honest_mean, spread)
}

fn distance(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &m)| (f64::from(x) - m).powi(2))
        .sum::<f64>()
        .sqrt()
}

proptest! {
    #![proptest_config(config(64))]

    /// With f < n/2 attackers, the trimmed mean (trim = f) stays within the honest spread of the
    /// honest mean and centered clipping within twice it (its error grows with f/n, Karimireddy et
    /// al. 2021, Thm. III), while the plain mean is dragged beyond both.
    #[test]
    fn robust_rules_resist_a_byzantine_minority(
        n in 5usize..12,
        f_frac in 0.0f64..0.5,
        dim in 1usize..40,
        scale in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let f = (((n as f64) * f_frac) as usize).min((n - 1) / 2).max(1);
        let attack = if scale { Attack::Scale100 } else { Attack::SignFlip };
        let (all, honest_mean, spread) = byzantine_inputs(n, f, dim, attack, seed);
        let inputs: Vec<Weighted> = all.iter().map(|v| Weighted { weight: 1.0, values: v }).collect();

        let trimmed = TrimmedMean { trim: f }.aggregate(&inputs).expect("valid");
        prop_assert!(distance(&trimmed, &honest_mean) <= spread,
            "trimmed mean {} from honest mean, spread {spread}", distance(&trimmed, &honest_mean));

        let clipped = CenteredClip { tau: None, iterations: 3 }.aggregate(&inputs).expect("valid");
        prop_assert!(distance(&clipped, &honest_mean) <= 2.0 * spread,
            "centered clip {} from honest mean, spread {spread}", distance(&clipped, &honest_mean));

        // The same inputs break the non-robust mean: the test can tell a robust rule from a naive one.
        let mean = WeightedMean.aggregate(&inputs).expect("valid");
        prop_assert!(distance(&mean, &honest_mean) > 2.0 * spread,
            "plain mean {} from honest mean, spread {spread}", distance(&mean, &honest_mean));
    }

    /// NaN updates never reach an aggregator: the validator rejects them and keeps the rest.
    #[test]
    fn nan_updates_are_rejected(dim in 1usize..50, at in any::<prop::sample::Index>(), seed in any::<u64>()) {
        let v = UpdateValidator::new(dim);
        let mut rng = SplitMix::new(seed);
        let good: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        let mut bad = good.clone();
        bad[at.index(dim)] = f32::NAN;
        prop_assert_eq!(v.validate(dim, &bad), Err(DropReason::NonFinite));
        prop_assert!(v.validate(dim, &good).is_ok());
    }

    /// A peer leaving moves only its own chunks, ≈ 1/N of them.
    #[test]
    fn rendezvous_moves_one_nth_when_a_peer_leaves(n in 3usize..24, leaving in any::<prop::sample::Index>(), epoch in any::<u64>(), salt in any::<u64>()) {
        let peers: Vec<ShardKey> = (0..n).map(|i| ShardKey::of(format!("{salt}-{i}").as_bytes())).collect();
        let gone = leaving.index(n);
        let rest: Vec<ShardKey> = peers.iter().enumerate().filter(|&(i, _)| i != gone).map(|(_, &p)| p).collect();
        let chunks = 4000u64;
        let mut moved = 0u64;
        for c in 0..chunks {
            let before = peers[owner(&peers, c, epoch).expect("non-empty")];
            let after = rest[owner(&rest, c, epoch).expect("non-empty")];
            if before != after {
                prop_assert_eq!(before, peers[gone], "chunk {} moved between two staying peers", c);
                moved += 1;
            }
        }
        let expected = chunks as f64 / n as f64;
        prop_assert!((moved as f64 - expected).abs() <= 5.0 * expected.sqrt() + 1.0,
            "{moved} of {chunks} chunks moved, expected ≈ {expected}");
    }
}

/// A valid encoded update message to mutate.
fn valid_message(len: usize, seed: u64) -> (Vec<u8>, WireLimits) {
    let descriptor = CodecDescriptor::top_k_int8_zstd(50_000);
    let mut codec = CpuCodec::new(descriptor).expect("valid");
    let delta = gradswarm_core::synthetic::gradient_like(len, seed);
    let mut residual = vec![0.0; len];
    let payload = codec
        .encode(&delta, &mut residual, RngKey::new(seed, 1))
        .expect("encodes");
    let update = Update {
        run_id: "run".into(),
        model_hash: [3; 32],
        peer_id: vec![0, 36, 8, 1],
        round: 5,
        base_round: 5,
        samples: 64,
        codec: descriptor,
        payload,
    };
    (update.to_bytes(), WireLimits::for_model(len, 1 << 20))
}

/// Parses a message and its payload; any error is fine, a panic is not.
fn full_decode(bytes: &[u8], limits: &WireLimits) -> Result<(), gradswarm_core::DecodeError> {
    let update = Update::from_bytes(bytes, limits)?;
    update.decode_payload(limits)?;
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Random bytes are rejected with an error.
    #[test]
    fn random_bytes_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..2048), version_first in any::<bool>()) {
        let mut bytes = bytes;
        if version_first && !bytes.is_empty() {
            bytes[0] = gradswarm_core::FORMAT_VERSION;
        }
        prop_assert!(full_decode(&bytes, &WireLimits::for_model(1000, 1 << 20)).is_err());
    }

    /// Mutated valid messages decode or fail cleanly, and never panic.
    #[test]
    fn mutated_messages_never_panic(
        seed in any::<u64>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let (mut bytes, limits) = valid_message(700, seed);
        prop_assert!(full_decode(&bytes, &limits).is_ok());
        for (at, byte, kind) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                2 => bytes.insert(i, byte),
                _ => bytes.truncate(i),
            }
        }
        let _ = full_decode(&bytes, &limits);
    }

    /// Random payload bytes under any descriptor are rejected or decode to finite, in-range values.
    #[test]
    fn random_payloads_decode_safely(descriptor in descriptors(), bytes in prop::collection::vec(any::<u8>(), 0..512), len in 0usize..300) {
        if let Ok(d) = decode_payload(&descriptor, &bytes, len) {
            prop_assert!(d.values.iter().all(|v| v.is_finite()));
            if let Some(ix) = &d.indices {
                prop_assert!(ix.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(ix.iter().all(|&i| (i as usize) < len));
            }
        }
    }
}

#[test]
fn zstd_bombs_are_refused_before_allocation() {
    let descriptor = CodecDescriptor::top_k_int8_zstd(10_000);
    // 100 MB of zeros compresses to a few KB; the frame declares its true size, far over the bound.
    let bomb = zstd::bulk::compress(&vec![0u8; 100_000_000], 3).expect("compresses");
    assert!(matches!(
        decode_payload(&descriptor, &bomb, 1000),
        Err(gradswarm_core::DecodeError::TooLarge { .. })
    ));
    // A frame that does not declare its size is refused outright.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
    std::io::Write::write_all(&mut enc, &[0u8; 10]).expect("write");
    let streamed = enc.finish().expect("finish");
    assert!(matches!(
        decode_payload(&descriptor, &streamed, 1000),
        Err(gradswarm_core::DecodeError::Compression(_))
    ));
}

#[test]
fn hostile_payloads_get_typed_errors() {
    use gradswarm_core::DecodeError as E;
    let topk_raw = CodecDescriptor {
        sparsify: Sparsify::TopK {
            per_million: 500_000,
        },
        quantize: Quantize::F32,
        compress: Compress::None,
    };
    // len 4, count 2, indices 3 then 3 again (gap encoding makes a repeat impossible, so out of range).
    let one = 1.0f32.to_le_bytes();
    let mut p = vec![4, 2, 3, 0];
    p.extend(one);
    p.extend(one);
    assert!(matches!(
        decode_payload(&topk_raw, &p, 4),
        Err(E::IndexOutOfRange { index: 4, .. })
    ));
    assert!(matches!(
        decode_payload(&topk_raw, &[5, 0], 4),
        Err(E::WrongLength { got: 5, .. })
    ));
    assert!(matches!(
        decode_payload(&topk_raw, &[4, 3], 4),
        Err(E::TooManyEntries { count: 3, .. })
    ));
    let mut nan = vec![4, 1, 0];
    nan.extend(f32::NAN.to_le_bytes());
    assert_eq!(
        decode_payload(&topk_raw, &nan, 4),
        Err(E::NonFinite { at: 0 })
    );
    assert_eq!(
        decode_payload(&topk_raw, &[4, 1, 0, 0], 4),
        Err(E::Truncated)
    );
    let int8 = CodecDescriptor {
        quantize: Quantize::Int8 { block: 2 },
        ..topk_raw
    };
    assert_eq!(
        decode_payload(&int8, &[4, 1, 0, 7, 0x80], 4),
        Err(E::BadQuantValue { at: 0 })
    );
    assert_eq!(
        decode_payload(&int8, &[4, 1, 0, 7, 1, 9], 4),
        Err(E::TrailingBytes(1))
    );
    let bad = CodecDescriptor {
        quantize: Quantize::Int8 { block: 0 },
        ..topk_raw
    };
    assert!(matches!(decode_payload(&bad, &[], 4), Err(E::BadCodec(_))));
}

#[test]
fn bad_deltas_leave_the_residual_untouched() {
    let mut codec = CpuCodec::new(CodecDescriptor::top_k_int8_zstd(100_000)).expect("valid");
    let mut ef = ErrorFeedback::new(4);
    ef.encode(&mut codec, &[1.0, 2.0, 3.0, 4.0], RngKey::new(1, 0))
        .expect("encodes");
    let before = ef.residual().to_vec();
    for bad in [f32::NAN, f32::INFINITY, 3e38] {
        let err = ef.encode(&mut codec, &[0.0, bad, 0.0, 0.0], RngKey::new(1, 1));
        assert!(
            matches!(
                err,
                Err(gradswarm_core::EncodeError::OutOfRange { index: 1, .. })
            ),
            "{err:?}"
        );
        assert_eq!(ef.residual(), &before[..]);
    }
    // A decaying residual is not decayed by an encode that failed.
    let mut ef = ErrorFeedback::with_decay(4, 0.5);
    ef.encode(&mut codec, &[1.0, 2.0, 3.0, 4.0], RngKey::new(1, 0))
        .expect("encodes");
    let before = ef.residual().to_vec();
    assert!(before.iter().any(|&e| e != 0.0), "{before:?}");
    assert!(
        ef.encode(&mut codec, &[f32::NAN; 4], RngKey::new(1, 1))
            .is_err()
    );
    assert_eq!(ef.residual(), &before[..]);
}

#[test]
fn looking_ahead_subtracts_the_scaled_residual() {
    // 1 coordinate in 4 is sent, so three stay in the residual.
    let mut codec = CpuCodec::new(CodecDescriptor::top_k_int8_zstd(250_000)).expect("valid");
    let mut ef = ErrorFeedback::new(4);
    ef.encode(&mut codec, &[4.0, 1.0, 3.0, 2.0], RngKey::new(3, 0))
        .expect("encodes");
    assert_eq!(ef.residual(), &[0.0, 1.0, 3.0, 2.0]);
    let theta = [10.0, 10.0, 10.0, 10.0];
    assert_eq!(
        ef.ahead_of(&theta, 0.5).expect("same length"),
        vec![10.0, 9.5, 8.5, 9.0]
    );
    assert!(matches!(
        ef.ahead_of(&theta[..3], 0.5),
        Err(gradswarm_core::EncodeError::LengthMismatch { .. })
    ));
}

/// Four peers minimise `½ Σ a_j θ_j²` with sign steps (what AdamW's normalised step is like) sent
/// through top-1% + int8 + zstd with error feedback, averaged, and applied with outer SGD lr 2:
/// the mean loss over the last rounds, with local steps taken from θ or from `ahead_of(θ, s/n)`.
fn sign_steps_through_top_k(lookahead: bool) -> f64 {
    let (len, peers, rounds, lr, outer) = (2_000usize, 4usize, 400u64, 0.01f32, 2.0f32);
    let descriptor = CodecDescriptor::top_k_int8_zstd(10_000);
    let mut codec = CpuCodec::new(descriptor).expect("valid");
    let mut rng = SplitMix::new(11);
    let curvature: Vec<f32> = (0..len)
        .map(|_| 0.1 + 10.0 * rng.uniform() as f32)
        .collect();
    let mut theta: Vec<f32> = (0..len).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let mut feedback: Vec<ErrorFeedback> = (0..peers).map(|_| ErrorFeedback::new(len)).collect();
    let loss = |t: &[f32]| -> f64 {
        t.iter()
            .zip(&curvature)
            .map(|(x, a)| 0.5 * f64::from(*a) * f64::from(*x).powi(2))
            .sum()
    };
    let mut tail = 0.0;
    for round in 0..rounds {
        let mut mean = vec![0.0f32; len];
        for (i, ef) in feedback.iter_mut().enumerate() {
            let start = if lookahead {
                ef.ahead_of(&theta, outer / peers as f32)
                    .expect("same length")
            } else {
                theta.clone()
            };
            // Δ = start − local, local = start − lr · sign(∇f(start) + noise).
            let delta: Vec<f32> = start
                .iter()
                .zip(&curvature)
                .map(|(x, a)| lr * (a * x + 0.5 * rng.normal() as f32).signum())
                .collect();
            let key = RngKey::new(i as u64, round);
            let payload = ef.encode(&mut codec, &delta, key).expect("encodes");
            codec
                .decode_add(&descriptor, &payload, 1.0 / peers as f32, &mut mean)
                .expect("own payload decodes");
        }
        theta
            .iter_mut()
            .zip(&mean)
            .for_each(|(t, m)| *t -= outer * m);
        if round >= rounds - 50 {
            tail += loss(&theta) / 50.0;
        }
    }
    tail
}

#[test]
fn looking_ahead_stops_the_residual_from_pushing_twice() {
    // Without the look-ahead each peer keeps pushing past the optimum what its residual already
    // owes, and the owed steps land late and overshoot.
    let behind = sign_steps_through_top_k(false);
    let ahead = sign_steps_through_top_k(true);
    assert!(
        ahead < 0.8 * behind,
        "loss over the last 50 rounds: {ahead} looking ahead, {behind} not"
    );
}

#[test]
fn compression_reaches_the_targets_on_a_gradient_like_vector() {
    let len = 1_000_000;
    let delta = gradswarm_core::synthetic::gradient_like(len, 7);
    for (per_million, target) in [(10_000u32, 150.0), (1_000, 1000.0)] {
        let mut codec =
            CpuCodec::new(CodecDescriptor::top_k_int8_zstd(per_million)).expect("valid");
        let mut residual = vec![0.0; len];
        let payload = codec
            .encode(&delta, &mut residual, RngKey::new(7, 0))
            .expect("encodes");
        let ratio = (4 * len) as f64 / payload.len() as f64;
        assert!(
            ratio >= target,
            "top-k {per_million} ppm: {ratio:.0}× < {target}×"
        );
    }
}
