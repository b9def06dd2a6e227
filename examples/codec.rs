//! One peer's update through the codec and onto the wire, and back, as a receiver sees it.
//!
//! `cargo run -p gradswarm-examples --example codec`
//!
//! A peer's update is the difference its local steps made to θ. The codec keeps the largest 1% of
//! coordinates (top-k), stores them as int8 with a power-of-two scale per block of 32, and packs
//! them with zstd. Error feedback keeps what was not sent in a residual and adds it to the next
//! delta, so nothing is lost, only delayed: what the receivers added up plus the sender's residual
//! is exactly the sum of the deltas, and as the steps of a training run share a direction, the
//! part still waiting shrinks relative to what was sent.

use gradswarm_core::synthetic::gradient_like;
use gradswarm_core::{CodecDescriptor, CpuCodec, ErrorFeedback, RngKey, Update, WireLimits};

fn main() -> anyhow::Result<()> {
    let n = 100_000; // parameters of a small model
    let descriptor = CodecDescriptor::top_k_int8_zstd(10_000); // top 1% (10 000 per million)
    let mut codec = CpuCodec::new(descriptor)?;
    let mut feedback = ErrorFeedback::new(n);

    // What the receivers will have added up, and what the sender meant to send.
    let mut received = vec![0.0f32; n];
    let mut sent = vec![0.0f32; n];
    let limits = WireLimits::for_model(n, 64 * 8);
    // Steps of one training run: a shared direction plus noise of their own.
    let direction = gradient_like(n, 7);
    for round in 0..20 {
        let noise = gradient_like(n, 100 + round);
        let delta: Vec<f32> = direction
            .iter()
            .zip(&noise)
            .map(|(d, e)| d + 0.5 * e)
            .collect();
        sent.iter_mut().zip(&delta).for_each(|(s, d)| *s += d);

        // The sender: encode with error feedback, wrap it in the update message.
        let payload = feedback.encode(&mut codec, &delta, RngKey::new(1, round))?;
        let update = Update {
            run_id: "example".into(),
            model_hash: [0; 32],
            peer_id: vec![1; 38],
            round,
            base_round: round,
            samples: 8,
            codec: descriptor,
            payload,
        };
        let bytes = update.to_bytes();

        // A receiver: parse under hard limits (hostile bytes give an error, never a panic).
        let update = Update::from_bytes(&bytes, &limits)?;
        let decoded = update.decode_payload(&limits)?;
        decoded.add_to(1.0, &mut received);
        if round % 5 == 0 || round == 19 {
            println!(
                "round {round:2}: {:6} bytes on the wire for {} dense ({:.0}x fewer); \
                 still waiting: {:.3} of the sum of the deltas",
                bytes.len(),
                4 * n,
                (4 * n) as f64 / bytes.len() as f64,
                relative_error(&received, &sent),
            );
        }
    }
    // Nothing was lost: received + residual = sent, up to float rounding.
    let held: Vec<f32> = received
        .iter()
        .zip(feedback.residual())
        .map(|(r, e)| r + e)
        .collect();
    println!(
        "received + residual vs the sum of the deltas: relative difference {:.1e}",
        relative_error(&held, &sent)
    );
    Ok(())
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let diff: Vec<f32> = got.iter().zip(want).map(|(g, w)| g - w).collect();
    norm(&diff) / norm(want)
}
