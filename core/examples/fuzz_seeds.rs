//! Writes valid messages of every kind the fuzz targets read, as their seed corpora:
//! `cargo run -p gradswarm-core --example fuzz_seeds -- core/fuzz/seeds` makes one folder per
//! target (`decode_update`, `decode_gossip`, `decode_heartbeat`, `decode_state`, `decode_rpc`).

use std::path::Path;

use gradswarm_core::synthetic::gradient_like;
use gradswarm_core::wire::encode_versioned;
use gradswarm_core::{
    Announce, CodecDescriptor, Compress, CpuCodec, DriftSketch, ErrorFeedback, Fingerprint,
    Heartbeat, PeerState, Quantize, Request, Response, RngKey, Sparsify, Update, UpdateGossip,
};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let folder = dir.join(target);
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?;
    let dir = Path::new(&dir);
    let len = 4096; // the update targets' model size
    let mut n = 0;
    let mut updates = Vec::new();
    for sparsify in [
        Sparsify::Dense,
        Sparsify::TopK {
            per_million: 50_000,
        },
    ] {
        for quantize in [Quantize::F32, Quantize::Int8 { block: 32 }] {
            for compress in [Compress::None, Compress::Zstd { level: 3 }] {
                let codec = CodecDescriptor {
                    sparsify,
                    quantize,
                    compress,
                };
                let mut cpu = CpuCodec::new(codec)?;
                let mut ef = ErrorFeedback::new(len);
                let payload = ef.encode(&mut cpu, &gradient_like(len, n), RngKey::new(n, 1))?;
                let update = Update {
                    run_id: "fuzz".into(),
                    model_hash: [0; 32],
                    peer_id: vec![1; 38],
                    round: 3,
                    base_round: 2,
                    samples: 128,
                    codec,
                    payload,
                };
                write(
                    dir,
                    "decode_update",
                    &format!("seed-{n}"),
                    &update.to_bytes(),
                )?;
                updates.push(update);
                n += 1;
            }
        }
    }
    for (i, update) in updates.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let bytes = update.to_bytes();
        let inline = UpdateGossip::Inline(update.clone()).to_bytes();
        let announce = UpdateGossip::Announce(Announce::of(update, &bytes)).to_bytes();
        write(dir, "decode_gossip", &format!("inline-{i}"), &inline)?;
        write(dir, "decode_gossip", &format!("announce-{i}"), &announce)?;
    }
    let theta = gradient_like(256, 7);
    let heartbeat = Heartbeat {
        run_id: "fuzz".into(),
        model_hash: [0; 32],
        peer_id: vec![1; 38],
        round: 9,
        checksum: 42,
        loss: 2.5,
        val_loss: 2.75,
        sketch: DriftSketch::of(&theta),
        applied: 7,
        sealed: Some(Fingerprint {
            round: 0,
            checksum: 41,
            sketch: DriftSketch::of(&theta),
            applied: 3,
        }),
        published: 0b1011,
        settled: false,
        samples: 72,
        tokens_per_s: 5000.0,
        agent: "gradswarm/0.1.0 browser webgpu".into(),
        throttled: false,
        heard: 0,
        bytes_sent: 4096,
        bytes_received: 16384,
        attests: vec![gradswarm_core::credit::Attestation {
            peer: gradswarm_core::credit::peer_tag(&[2; 38]),
            samples: 64,
        }],
    };
    write(dir, "decode_heartbeat", "heartbeat", &heartbeat.to_bytes())?;
    let state = PeerState {
        round: 12,
        step: 40,
        params: theta.clone(),
        optimizer: vec![
            ("adamw.m".into(), theta.clone()),
            ("adamw.v".into(), theta.iter().map(|v| v * v).collect()),
        ],
        optimizer_steps: 40,
        standing: vec![(
            9,
            vec![(vec![2; 38], vec![0.5; gradswarm_core::standing::SKETCH_DIM])],
        )],
        recent: vec![gradswarm_core::wire::RecentRound {
            round: 11,
            updates: updates.iter().take(2).cloned().collect(),
            equivocators: vec![vec![3; 38]],
        }],
    };
    write(dir, "decode_state", "state", &state.to_bytes())?;
    let requests = [
        Request::State {
            run_id: "fuzz".into(),
            model_hash: [0; 32],
            snapshot: 3,
            chunk: 1,
        },
        Request::Fingerprint {
            run_id: "fuzz".into(),
            model_hash: [0; 32],
            round: 9,
            sealed: true,
        },
        Request::Update {
            run_id: "fuzz".into(),
            digest: [5; 32],
            chunk: 2,
        },
    ];
    for (i, r) in requests.iter().enumerate() {
        write(
            dir,
            "decode_rpc",
            &format!("request-{i}"),
            &encode_versioned(r),
        )?;
    }
    let responses = [
        Response::Fingerprint {
            round: 9,
            checksum: 42,
            sketch: DriftSketch::of(&theta),
            applied: 7,
        },
        Response::Update {
            chunk: 0,
            chunks: 1,
            bytes: updates[1].to_bytes(),
        },
        Response::Error("no such chunk".into()),
        Response::NotReached { latest: 38 },
    ];
    for (i, r) in responses.iter().enumerate() {
        write(
            dir,
            "decode_rpc",
            &format!("response-{i}"),
            &encode_versioned(r),
        )?;
    }
    println!("wrote the seed corpora to {}", dir.display());
    Ok(())
}
