//! Real nodes on loopback for the net crate's tests, and waiting on their events.

use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use gradswarm_core::{DriftSketch, Heartbeat, ModelHash};
use gradswarm_net::{Keypair, Multiaddr, NetConfig, NetEvent, NetHandle, PeerId, native};

/// A running node: its handle, its events, and the address it listens on.
pub struct Node {
    /// Commands.
    pub net: NetHandle,
    /// What it reports (not every test file reads them).
    #[allow(dead_code)]
    pub events: mpsc::Receiver<NetEvent>,
    /// Its TCP address, with `/p2p/<id>`.
    pub addr: Multiaddr,
}

/// Starts a node of `config` (listening on loopback TCP, quick gossip heartbeats) with `key`,
/// and waits until it listens.
pub async fn node(mut config: NetConfig, key: Keypair) -> Node {
    // Warnings (or what RUST_LOG asks for), shown only for a test that failed: a join that never
    // came in CI once left nothing to read (the first node of a test binary sets it).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")];
    config.gossip_heartbeat = Duration::from_millis(100);
    let (net, mut events, driver) = native::build(config, key).await.expect("the node starts");
    tokio::spawn(driver.run());
    let addr = within(next(&mut events, |e| match e {
        NetEvent::Listening(addr) => Some(addr),
        _ => None,
    }))
    .await;
    Node { net, events, addr }
}

/// The next event that `pick` keeps.
pub async fn next<T>(
    events: &mut mpsc::Receiver<NetEvent>,
    mut pick: impl FnMut(NetEvent) -> Option<T>,
) -> T {
    while let Some(event) = events.next().await {
        if let Some(t) = pick(event) {
            return t;
        }
    }
    panic!("the node stopped");
}

/// `f`, which must finish within 30 s.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("within 30 s")
}

/// A heartbeat of `run` for a model of `model_hash` at `round`, as `of` signs it: what a node
/// publishes to be heard (gossip drops a message it has seen, so each round's is new). Not every
/// test file sends one.
#[allow(dead_code)]
pub fn heartbeat(run: &str, model_hash: ModelHash, of: PeerId, round: u64) -> Vec<u8> {
    Heartbeat {
        run_id: run.into(),
        model_hash,
        peer_id: of.to_bytes(),
        round,
        loss: f32::NAN,
        sketch: DriftSketch::default(),
        ..Default::default()
    }
    .to_bytes()
}
