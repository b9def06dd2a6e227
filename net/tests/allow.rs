//! A private run's allow-list (issue 26): a node with one refuses connections from any peer not on
//! it, and drops what such a peer signed even when a member forwards it (`not_allowed`). Without
//! the list, the stranger's request below is answered and its heartbeat is accepted.

mod common;

use std::time::Duration;

use common::{Node, heartbeat, next, node, within};
use futures::StreamExt;
use gradswarm_core::{DropReason, Request, Response, WireLimits};
use gradswarm_net::{Keypair, Multiaddr, NetConfig, NetEvent, PeerId, Topic};

const RUN: &str = "private";

/// A node of the run, dialling `bootstrap`, with the allow-list `allow`.
async fn member(key: Keypair, bootstrap: Vec<Multiaddr>, allow: Option<Vec<PeerId>>) -> Node {
    let mut config = NetConfig::peer(RUN, [7; 32], WireLimits::for_model(100, 8));
    config.bootstrap = bootstrap;
    config.allow = allow;
    node(config, key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_run_refuses_strangers_and_what_they_sign() {
    let (a_key, b_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (a_id, b_id) = (a_key.public().to_peer_id(), b_key.public().to_peer_id());
    // A is private, B a member whose own run is open, C a stranger that knows both addresses.
    let Node {
        net: a,
        events: mut a_events,
        addr: a_addr,
    } = member(a_key, vec![], Some(vec![b_id])).await;
    let Node {
        net: b,
        events: mut b_events,
        addr: b_addr,
    } = member(b_key, vec![a_addr.clone()], None).await;
    let c = member(Keypair::generate_ed25519(), vec![a_addr, b_addr], None)
        .await
        .net;
    let c_id = c.local_peer_id();
    let ask = Request::Fingerprint {
        run_id: RUN.into(),
        model_hash: [7; 32],
        round: 0,
        sealed: false,
    };

    // The member is answered; the stranger cannot even connect.
    let member = within(b.request(a_id, ask.clone())).await;
    assert!(
        matches!(member, Ok(Response::Error(_))),
        "the member was not answered: {member:?}"
    );
    let stranger = within(c.request(a_id, ask)).await;
    assert!(stranger.is_err(), "the stranger was answered: {stranger:?}");

    // The stranger's heartbeat reaches A through the member, and is dropped there.
    within(next(&mut b_events, |e| {
        matches!(e, NetEvent::PeerJoined(p) if p == c_id).then_some(())
    }))
    .await;
    let dropped = within(async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => c.publish(Topic::Heartbeat, heartbeat(RUN, [7; 32], c_id, 0)).expect("publish"),
                event = a_events.next() => match event.expect("A runs") {
                    NetEvent::Dropped { from, reason } if from == c_id => return reason,
                    NetEvent::Heartbeat { from, .. } if from == c_id => {
                        panic!("A took a stranger's heartbeat")
                    }
                    _ => {}
                },
            }
        }
    })
    .await;
    assert_eq!(dropped, DropReason::NotAllowed);
    for n in [a, b, c] {
        n.shutdown();
    }
}
