//! Without a full mesh (`NetConfig::full_mesh` off, as under group averaging) a peer keeps a few
//! connections however many peers the run has, its gossip still reaches every peer, and it still
//! reaches any peer it asks, dialled at the address the DHT holds. With `full_mesh` on, as under
//! broadcast, each of these peers connects to all the others and the bound below fails.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Node, heartbeat, node};
use futures::StreamExt;
use futures::future::join_all;
use gradswarm_core::{Request, Response, WireLimits};
use gradswarm_net::{Keypair, NetConfig, NetEvent, NetHandle, PeerId, Topic};

const RUN: &str = "sparse";
const PEERS: usize = 24;
/// The most peers one of them may stay connected to: its gossip meshes (degree 3–6 on each of
/// the two topics) and the bootstrap node, far below the 24 of a full mesh.
const MOST_CONNECTIONS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_keep_few_connections_and_still_hear_and_reach_everyone() {
    let boot = node(
        NetConfig::bootstrap(RUN, 1 << 20),
        Keypair::generate_ed25519(),
    )
    .await;
    let mut peers: Vec<Node> = Vec::new();
    for _ in 0..PEERS {
        let mut config = NetConfig::peer(RUN, [7; 32], WireLimits::for_model(100, 8));
        config.bootstrap = vec![boot.addr.clone()];
        config.full_mesh = false;
        peers.push(node(config, Keypair::generate_ed25519()).await);
    }
    let ids: Vec<PeerId> = peers.iter().map(|p| p.net.local_peer_id()).collect();
    let started = std::time::Instant::now();
    let nets: Vec<NetHandle> = peers.iter().map(|p| p.net.clone()).collect();

    // Every peer heartbeats until every peer has heard every other's heartbeat by gossip.
    let done = Arc::new(AtomicUsize::new(0));
    let heard_all = join_all(peers.iter_mut().map(|p| {
        let me = p.net.local_peer_id();
        let others: BTreeSet<PeerId> = ids.iter().copied().filter(|i| *i != me).collect();
        let net = p.net.clone();
        let events = &mut p.events;
        let done = done.clone();
        async move {
            let mut heard = BTreeSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            let mut round = 0;
            let mut counted = false;
            while done.load(Ordering::SeqCst) < PEERS {
                tokio::select! {
                    _ = tick.tick() => {
                        round += 1;
                        let _ = net.publish(Topic::Heartbeat, heartbeat(RUN, [7; 32], me, round));
                    }
                    event = events.next() => {
                        if let Some(NetEvent::Heartbeat { from, .. }) = event {
                            heard.insert(from);
                        }
                    }
                }
                if !counted && heard == others {
                    counted = true;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }));
    tokio::time::timeout(Duration::from_secs(60), heard_all)
        .await
        .unwrap_or_else(|_| {
            let n = done.load(Ordering::SeqCst);
            panic!("{n} of {PEERS} peers heard every other within 60 s")
        });
    eprintln!(
        "every peer heard every other after {:.0?}",
        started.elapsed()
    );

    // The connections opened while the peers found each other are closed once nothing needs
    // them; checked every half second, for at most a minute.
    let counts = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let counts: Vec<usize> = nets.iter().map(NetHandle::connected_peers).collect();
            if counts.iter().all(|&n| n <= MOST_CONNECTIONS) {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let counts: Vec<usize> = nets.iter().map(NetHandle::connected_peers).collect();
        panic!("some peer stayed connected to more than {MOST_CONNECTIONS} peers: {counts:?}")
    });
    eprintln!(
        "connected peers of each peer after {:.0?}: {counts:?}",
        started.elapsed()
    );

    // The first peer asks every other, most of which it is not connected to: each answers (that
    // it serves no state) over a connection dialled for the request.
    let ask = Request::Fingerprint {
        run_id: RUN.into(),
        model_hash: [7; 32],
        round: 0,
        sealed: false,
    };
    let answers = join_all(ids[1..].iter().map(|p| nets[0].request(*p, ask.clone()))).await;
    for (peer, answer) in ids[1..].iter().zip(answers) {
        assert!(
            matches!(answer, Ok(Response::Error(_))),
            "{peer} did not answer: {answer:?}"
        );
    }
    for n in nets.iter().chain([&boot.net]) {
        n.shutdown();
    }
}
