//! Two peers training one model together, in one process, over real libp2p on loopback.
//!
//! `cargo run --release -p gradswarm-examples --example two_peers`
//!
//! The pieces every gradswarm peer is made of, wired by hand:
//! 1. a bootstrap node (what `gradswarm-bootstrap` runs): peers find each other through it;
//! 2. per peer, a [`Trainer`] (a burn model on the CPU backend here), a network task built from a
//!    [`NetConfig`] (its driver runs on tokio), and a [`Peer`]: the round loop, a plain future
//!    that runs on a thread of its own, as the desktop node runs it;
//! 3. each round, each peer takes a local step, sends its compressed update, waits for the
//!    other's, and applies the average: both replicas end where the other's is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures::StreamExt;
use gradswarm_core::CpuCodec;
use gradswarm_model::burn::prelude::Device;
use gradswarm_model::{Corpus, DataConfig, ModelConfig, TrainConfig, Trainer};
use gradswarm_net::{Keypair, Multiaddr, NetConfig, NetEvent, NetHandle, native};
use gradswarm_peer::{Mode, Peer, PeerConfig, PeerSummary, stop_pair};

const RUN: &str = "two-peers-example";
const ROUNDS: u64 = 20;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    // The handle keeps the bootstrap node's network task alive until the end of `main`.
    let (_bootstrap_net, bootstrap) = runtime.block_on(start_bootstrap())?;
    println!("bootstrap node listening on {bootstrap}");

    // A small model so that the example runs in seconds on any CPU.
    let model = ModelConfig::tiny();
    let train = TrainConfig {
        steps: ROUNDS,
        batch_size: 8,
        micro_batch_size: 8,
        lr: 1e-2,
        ..TrainConfig::default()
    };
    let data = DataConfig {
        path: concat!(env!("CARGO_MANIFEST_DIR"), "/../data/shakespeare.txt").into(),
        ..DataConfig::default()
    };
    let corpus = Arc::new(Corpus::load(&data, model.context)?);

    let mut threads = Vec::new();
    for _ in 0..2 {
        let trainer = Trainer::new(&model, &train, &Device::flex())?;
        let mut config = PeerConfig::new(RUN, Mode::Gradient);
        config.rounds = Some(ROUNDS);
        // Top-10%: the small model has ~20k parameters.
        config.codec = gradswarm_core::CodecDescriptor::top_k_int8_zstd(100_000);
        config.join_wait = Duration::from_millis(500);

        // The network: listen on a free loopback port, dial the bootstrap node.
        let limits = config.wire_limits(trainer.num_params(), train.batch_size);
        let mut net_config = NetConfig::peer(RUN, model.hash(), limits);
        net_config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
        net_config.bootstrap = vec![bootstrap.clone()];
        let key = Keypair::generate_ed25519();
        let (net, events, driver) = runtime.block_on(native::build(net_config, key))?;
        runtime.spawn(driver.run());

        let codec = Box::new(CpuCodec::new(config.codec)?);
        let corpus = corpus.clone();
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<PeerSummary> {
                // Nobody stops these peers early; a real node keeps the handle for Ctrl-C.
                let (_stop, stop_rx) = stop_pair();
                let mut peer = Peer::new(config, trainer, corpus, codec, net, events, stop_rx)?;
                peer.wait_for_peers(1);
                Ok(futures::executor::block_on(peer.run())?)
            },
        ));
    }

    let summaries = threads
        .into_iter()
        .map(|t| t.join().map_err(|_| anyhow!("a peer panicked"))?)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for s in &summaries {
        let first = s.rounds.first().map_or(f32::NAN, |r| r.loss);
        let last = s.rounds.last().map_or(f32::NAN, |r| r.loss);
        let counted: u64 = s.counted_from.values().sum();
        println!(
            "peer {}…: {} rounds, loss {first:.2} -> {last:.2}, {counted} of the other's updates counted",
            &s.peer_id[..12],
            s.rounds.len()
        );
    }
    let (a, b) = (&summaries[0].final_params, &summaries[1].final_params);
    let gap = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    println!("largest difference between the two replicas: {gap:e}");
    Ok(())
}

/// Starts a bootstrap node on a free loopback port; returns its handle and address.
async fn start_bootstrap() -> anyhow::Result<(NetHandle, Multiaddr)> {
    let mut config = NetConfig::bootstrap(RUN, 16 << 20);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    let (handle, mut events, driver) = native::build(config, Keypair::generate_ed25519()).await?;
    tokio::spawn(driver.run());
    while let Some(event) = events.next().await {
        if let NetEvent::Listening(addr) = event {
            return Ok((handle, addr));
        }
    }
    Err(anyhow!("the bootstrap node stopped")).context("starting the bootstrap node")
}
