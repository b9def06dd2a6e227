//! Heartbeats reach the runtime with their signer's gossip sequence number, which grows with each
//! message the signer publishes: the runtime takes a heartbeat only if it is newer than the last it
//! took from that peer, since gossip brings messages by several paths and not always in order (a
//! peer's last-round heartbeat arriving after its lingering `settled` one held its partners for a
//! whole `peer_timeout`).

mod common;

use std::time::Duration;

use common::{Node, heartbeat, node, within};
use futures::StreamExt;
use gradswarm_core::WireLimits;
use gradswarm_net::{Keypair, NetConfig, NetEvent, Topic};

const RUN: &str = "heartbeats";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_heartbeat_carries_a_larger_sequence_number() {
    let config = || NetConfig::peer(RUN, [7; 32], WireLimits::for_model(100, 8));
    let Node {
        net: a,
        events: mut a_events,
        addr,
    } = node(config(), Keypair::generate_ed25519()).await;
    let mut b_config = config();
    b_config.bootstrap = vec![addr];
    let b = node(b_config, Keypair::generate_ed25519()).await.net;
    let b_id = b.local_peer_id();

    // B heartbeats rounds 0, 1, 2, … until A has taken three of them (the first may go before
    // the two have exchanged subscriptions).
    let heard = within(async {
        let mut heard: Vec<(u64, u64)> = Vec::new();
        let mut round = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while heard.len() < 3 {
            tokio::select! {
                _ = tick.tick() => {
                    b.publish(Topic::Heartbeat, heartbeat(RUN, [7; 32], b_id, round)).expect("publish");
                    round += 1;
                }
                event = a_events.next() => {
                    if let NetEvent::Heartbeat { from, heartbeat, sequence } = event.expect("A runs")
                        && from == b_id
                    {
                        heard.push((heartbeat.round, sequence));
                    }
                }
            }
        }
        heard
    })
    .await;
    assert!(
        heard.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
        "rounds and sequence numbers as heard: {heard:?}"
    );
    assert!(heard.iter().all(|&(_, s)| s > 0), "{heard:?}");
    a.shutdown();
    b.shutdown();
}
