//! What a node serves over request-response, between two real nodes on loopback.
//!
//! - An update larger than one frame (1 MiB) still travels: it is announced and pulled in chunks
//!   (issue 26, attack 9). Before, the pull's single answer frame was refused past
//!   `MAX_RPC_BYTES` and every such update was dropped as `unfetchable`, so a dense or dense-ish
//!   update of any model over ~260k parameters never arrived.
//! - A requester asking for state again and again gets two whole states' worth, then refusals
//!   (issue 26, attacks 11 and 17). Before, every ~100-byte request was answered with 1 MiB.
//! - An update too large to push to a group partner is announced to it instead.
//! - An update whose announcer cannot serve it (it died, say) is pulled from another peer of the
//!   run that holds it. Before, a peer that heard the announcement from the announcer itself had
//!   nobody else to ask, dropped it as `unfetchable`, and its replica parted from those whose
//!   pulls had succeeded (a rare failure of the harness's SIGKILL test).

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;

use common::{Node, next, node, within};
use gradswarm_core::wire::STATE_CHUNK_BYTES;
use gradswarm_core::{
    Announce, Codec, CodecDescriptor, CpuCodec, DecodedUpdate, DropReason, Request, Response,
    RngKey, Update, UpdateGossip, WireLimits,
};
use gradswarm_net::{Keypair, Multiaddr, NetConfig, NetEvent, NetHandle, OVER_BUDGET, Topic};

/// Parameters of the model: its dense f32 update is ~1.6 MB, two chunks.
const MODEL_LEN: usize = 400_000;

/// A node of the run, dialling `bootstrap`.
async fn serving_node(bootstrap: Option<Multiaddr>) -> Node {
    let limits = WireLimits::for_model(MODEL_LEN, 64).with_codec(CodecDescriptor::DENSE_F32);
    let mut config = NetConfig::peer("serving", [7; 32], limits);
    config.bootstrap = bootstrap.into_iter().collect();
    node(config, Keypair::generate_ed25519()).await
}

/// Two nodes of the run, B dialling A, once A has seen B join: A, B and B's events.
async fn connected_pair() -> (NetHandle, NetHandle, mpsc::Receiver<NetEvent>) {
    let Node {
        net: a,
        events: mut a_events,
        addr,
    } = serving_node(None).await;
    let Node {
        net: b,
        events: b_events,
        ..
    } = serving_node(Some(addr)).await;
    let b_id = b.local_peer_id();
    within(next(&mut a_events, |e| {
        matches!(e, NetEvent::PeerJoined(p) if p == b_id).then_some(())
    }))
    .await;
    (a, b, b_events)
}

/// The next update that arrives in `events`, decoded, with its size; panics on a drop.
async fn pulled_update(
    events: &mut mpsc::Receiver<NetEvent>,
) -> (Arc<Update>, Arc<DecodedUpdate>, usize) {
    within(next(events, |e| match e {
        NetEvent::Update {
            update,
            decoded,
            bytes,
            ..
        } => Some((update, decoded, bytes)),
        NetEvent::Dropped { reason, .. } => panic!("the update was dropped: {reason:?}"),
        _ => None,
    }))
    .await
}

/// A dense update of `by` (1.6 MB encoded), and the values it carries.
fn dense_update(by: &NetHandle) -> (Update, Vec<f32>) {
    let delta: Vec<f32> = (0..MODEL_LEN).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut residual = vec![0.0; MODEL_LEN];
    let payload = CpuCodec::new(CodecDescriptor::DENSE_F32)
        .expect("a valid codec")
        .encode(&delta, &mut residual, RngKey::new(1, 0))
        .expect("encodes");
    let update = Update {
        run_id: "serving".into(),
        model_hash: [7; 32],
        peer_id: by.local_peer_id().to_bytes(),
        round: 0,
        base_round: 0,
        samples: 8,
        codec: CodecDescriptor::DENSE_F32,
        payload,
    };
    (update, delta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_over_one_frame_is_pulled_in_chunks() {
    let (a, b, mut b_events) = connected_pair().await;

    let (update, delta) = dense_update(&a);
    let size = a.publish_update(update.clone()).expect("published");
    assert!(
        size > gradswarm_core::wire::MAX_RPC_BYTES,
        "the update ({size} bytes) must not fit one frame"
    );
    let (got, decoded, bytes) = pulled_update(&mut b_events).await;
    assert_eq!(bytes, size);
    assert_eq!(*got, update);
    assert_eq!(decoded.values, delta);
    a.shutdown();
    b.shutdown();
}

/// Under group averaging an update too large for one push goes to the partners all the same:
/// announced, and pulled in chunks. Before session 20 `push_update` refused it and the round
/// loop published it on its own, leaving the network task's list of partners (whose
/// connections it keeps) at the previous round's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_too_large_to_push_reaches_the_partner_announced() {
    let (a, b, mut b_events) = connected_pair().await;
    for n in [&a, &b] {
        n.accept_pushes(true).expect("running");
    }

    let (update, delta) = dense_update(&a);
    let sent = a
        .push_update(update.clone(), vec![b.local_peer_id()])
        .expect("announced, not refused");
    assert!(sent > gradswarm_core::wire::UPDATE_CHUNK_BYTES);
    let (got, decoded, _) = pulled_update(&mut b_events).await;
    assert_eq!(*got, update);
    assert_eq!(decoded.values, delta);
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_requester_gets_two_states_then_refusals() {
    let Node { net: a, addr, .. } = serving_node(None).await;
    // Every answer is a full chunk, as a state transfer's are.
    a.serve_state(Arc::new(|_, _: &Request| Response::StateChunk {
        snapshot: 1,
        round: 3,
        chunk: 0,
        chunks: 1,
        total_bytes: STATE_CHUNK_BYTES as u64,
        bytes: vec![1; STATE_CHUNK_BYTES],
    }))
    .expect("serves");
    let b = serving_node(Some(addr)).await.net;
    let a_id = a.local_peer_id();
    let ask = Request::State {
        run_id: "serving".into(),
        model_hash: [7; 32],
        snapshot: 0,
        chunk: 0,
    };
    let (mut served, mut refused) = (0usize, 0usize);
    for _ in 0..60 {
        match b.request(a_id, ask.clone()).await.expect("answered") {
            Response::StateChunk { bytes, .. } => served += bytes.len(),
            Response::Error(e) => {
                assert_eq!(e, OVER_BUDGET);
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // The node's largest message is one dense θ (~1.6 MB); a whole state is about four of them.
    let state = 4 * (4 * MODEL_LEN + 4096);
    eprintln!("served {served} bytes, refused {refused} of 60 requests");
    assert!(
        served <= 2 * state + STATE_CHUNK_BYTES,
        "served {served} bytes to one requester at once, two states are {}",
        2 * state
    );
    assert!(
        served >= state,
        "a joiner's whole state ({state}) must be served"
    );
    assert!(refused > 0);
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_its_announcer_cannot_serve_is_pulled_from_another_peer() {
    let Node {
        net: a,
        events: mut a_events,
        addr: a_addr,
    } = serving_node(None).await;
    let Node {
        net: b,
        addr: b_addr,
        ..
    } = serving_node(Some(a_addr.clone())).await;
    let mut config = NetConfig::peer(
        "serving",
        [7; 32],
        WireLimits::for_model(MODEL_LEN, 64).with_codec(CodecDescriptor::DENSE_F32),
    );
    config.bootstrap = vec![a_addr, b_addr];
    let Node {
        net: c,
        events: mut c_events,
        ..
    } = node(config, Keypair::generate_ed25519()).await;
    let (b_id, c_id) = (b.local_peer_id(), c.local_peer_id());
    let mut joined = Vec::new();
    let both = tokio::time::timeout(
        Duration::from_secs(30),
        next(&mut c_events, |e| match e {
            NetEvent::PeerJoined(p) => {
                joined.push(p);
                (joined.contains(&a.local_peer_id()) && joined.contains(&b_id)).then_some(())
            }
            _ => None,
        }),
    )
    .await;
    assert!(
        both.is_ok(),
        "C saw {joined:?} join within 30 s, not both A ({}) and B ({b_id})",
        a.local_peer_id()
    );
    within(next(&mut a_events, |e| {
        matches!(e, NetEvent::PeerJoined(p) if p == c_id).then_some(())
    }))
    .await;

    // B holds A's update (it published it as its own, which everyone refuses: B signed it, the
    // update names A), and A announces it without holding it, as if it had died since.
    let (update, delta) = dense_update(&a);
    let bytes = update.to_bytes();
    b.publish_update(update.clone()).expect("published");
    within(next(&mut c_events, |e| match e {
        NetEvent::Dropped { from, reason } if from == b_id => {
            assert_eq!(reason, DropReason::SenderMismatch);
            Some(())
        }
        _ => None,
    }))
    .await;
    a.publish(
        Topic::Updates,
        UpdateGossip::Announce(Announce::of(&update, &bytes)).to_bytes(),
    )
    .expect("announced");
    let (got, decoded) = within(next(&mut c_events, |e| match e {
        NetEvent::Update {
            update, decoded, ..
        } => Some((update, decoded)),
        NetEvent::Dropped { reason, .. } => panic!("the update was dropped: {reason:?}"),
        _ => None,
    }))
    .await;
    assert_eq!(*got, update);
    assert_eq!(decoded.values, delta);
    for n in [a, b, c] {
        n.shutdown();
    }
}
