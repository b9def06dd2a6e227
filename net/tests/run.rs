//! A run travels over the network (issue 27): a joiner that knows one address fetches the run's
//! manifest, then its data piece by piece, each checked against the manifest's hash.
//!
//! - A piece corrupted in transit is detected and asked again: without the hash check the
//!   joiner would keep the corrupted bytes and `the_data_arrives_whole` fails.
//! - Each requester gets two copies of the data at once, then refusals (`OVER_BUDGET`), apart
//!   from its state budget.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Node, node, within};
use gradswarm_core::wire::PIECE_BYTES;
use gradswarm_core::{Manifest, Request, Response, RunFiles};
use gradswarm_net::run::{fetch_manifest, fetch_pieces};
use gradswarm_net::{Keypair, Multiaddr, NetConfig, NetHandle, OVER_BUDGET, peer_of};

/// Two and a half pieces of data.
fn data() -> Vec<u8> {
    (0..PIECE_BYTES * 5 / 2)
        .map(|i| (i * 31 % 253) as u8)
        .collect()
}

fn files() -> RunFiles {
    let d = data();
    let manifest = Manifest::new("fetch-test", "[swarm]\ntau_max = 4\n".into(), &d).expect("ok");
    RunFiles::new(manifest, d).expect("files")
}

/// A node that publishes no run of its own topics (as a bootstrap node does).
async fn server() -> Node {
    node(
        NetConfig::bootstrap("fetch-test", 1 << 20),
        Keypair::generate_ed25519(),
    )
    .await
}

/// A joiner that knows `server`'s address and nothing else.
async fn joiner(server: &Multiaddr) -> Node {
    node(
        NetConfig::client(vec![server.clone()]),
        Keypair::generate_ed25519(),
    )
    .await
}

/// Fetches the whole run from `servers` into memory.
async fn fetch_all(
    net: &NetHandle,
    servers: &[gradswarm_net::PeerId],
) -> (Manifest, Vec<u8>, gradswarm_net::run::FetchStats) {
    let manifest = within(fetch_manifest(net, servers[0]))
        .await
        .expect("manifest");
    let mut buf = vec![0u8; manifest.data_bytes as usize];
    let wanted: Vec<u32> = (0..manifest.pieces.len() as u32).collect();
    let stats = within(fetch_pieces(
        net,
        servers,
        &manifest,
        &wanted,
        |i, bytes| {
            let start = i as usize * PIECE_BYTES;
            buf[start..start + bytes.len()].copy_from_slice(bytes);
            Ok(())
        },
    ))
    .await
    .expect("pieces");
    (manifest, buf, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_arrives_whole_though_a_piece_was_corrupted_in_transit() {
    let served = Arc::new(files());
    // The first answer for piece 1 has one bit flipped, as a faulty link or relay would.
    let asked = Arc::new(AtomicUsize::new(0));
    let Node { net: a, addr, .. } = server().await;
    let (files, count) = (served.clone(), asked.clone());
    a.serve_state(Arc::new(move |_, request: &Request| {
        let mut answer = files.answer(request).expect("a run request");
        if let (Request::Piece { index: 1, .. }, Response::Piece { bytes, .. }) =
            (request, &mut answer)
            && count.fetch_add(1, Ordering::SeqCst) == 0
        {
            bytes[1000] ^= 0x10;
        }
        answer
    }))
    .expect("serving");
    let Node { net: joiner, .. } = joiner(&addr).await;
    let server_id = peer_of(&addr).expect("a /p2p/ address");
    let (manifest, buf, stats) = fetch_all(&joiner, &[server_id]).await;
    assert_eq!(manifest.run_id(), served.manifest().run_id());
    assert!(buf == data(), "the data arrived corrupted");
    assert_eq!((stats.pieces, stats.corrupt), (3, 1), "{stats:?}");
    assert_eq!(asked.load(Ordering::SeqCst), 2, "piece 1 was asked twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_gets_two_copies_of_the_data_then_refusals() {
    let served = Arc::new(files());
    let Node { net: a, addr, .. } = server().await;
    a.serve_run(served.clone()).expect("serving");
    let Node { net: joiner, .. } = joiner(&addr).await;
    let server_id = peer_of(&addr).expect("a /p2p/ address");
    let (_, buf, stats) = fetch_all(&joiner, &[server_id]).await;
    assert!(buf == data());
    assert_eq!(stats.corrupt, 0);
    // 2.5 MiB of data: a budget of 4 MiB at once (two copies, at least 4 MiB) covers the first
    // fetch and part of a second; asking on is refused.
    let id = served.manifest().id();
    let mut answered = 0;
    let mut refused = 0;
    for i in 0..12 {
        let request = Request::Piece {
            manifest: id,
            index: i % 3,
        };
        match within(joiner.request(server_id, request)).await {
            Ok(Response::Piece { .. }) => answered += 1,
            Ok(Response::Error(e)) if e == OVER_BUDGET => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(refused >= 8, "{answered} answered, {refused} refused");
    // Its state budget is its own: a state request is still answered (here with "no state").
    let state = within(joiner.request(
        server_id,
        Request::State {
            run_id: "fetch-test".into(),
            model_hash: [0; 32],
            snapshot: 0,
            chunk: 0,
        },
    ))
    .await;
    assert!(
        matches!(&state, Ok(Response::Error(e)) if e != OVER_BUDGET),
        "{state:?}"
    );
}
