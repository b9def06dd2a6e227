//! A stranger opening connections by the hundred: past `MAX_PENDING_INCOMING` handshakes in
//! progress, a peer closes new connections at once instead of holding each one (and its buffers)
//! until the handshake times out. Without the limit, every one of them stayed open.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use futures::StreamExt;
use gradswarm_core::WireLimits;
use gradswarm_net::{Keypair, MAX_PENDING_INCOMING, NetConfig, NetEvent, native};
use libp2p::multiaddr::Protocol;

/// Raw TCP connections that never start a handshake.
const OPENED: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_refused_past_the_pending_limit() {
    let mut config = NetConfig::peer("limits", [1; 32], WireLimits::for_model(100, 8));
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.mdns = false;
    let (net, mut events, driver) = native::build(config, Keypair::generate_ed25519())
        .await
        .unwrap();
    tokio::spawn(driver.run());
    let port = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let NetEvent::Listening(addr) = event
                && let Some(Protocol::Tcp(port)) =
                    addr.iter().find(|p| matches!(p, Protocol::Tcp(_)))
            {
                return port;
            }
        }
        panic!("the node stopped before listening");
    })
    .await
    .expect("the node listens");
    let closed = tokio::task::spawn_blocking(move || {
        let sockets: Vec<TcpStream> = (0..OPENED)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        // A refused connection is closed at once; one within the limit waits for a handshake
        // that never comes (libp2p's upgrade timeout, 10 s): 3 s tell them apart.
        std::thread::scope(|scope| {
            let reads: Vec<_> = sockets
                .into_iter()
                .map(|mut s| {
                    scope.spawn(move || {
                        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
                        let mut buf = [0u8; 64];
                        match s.read(&mut buf) {
                            Ok(0) => true,
                            Ok(_) => false,
                            Err(e) => !matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ),
                        }
                    })
                })
                .collect();
            reads
                .into_iter()
                .filter_map(|r| r.join().ok())
                .filter(|&closed| closed)
                .count()
        })
    })
    .await
    .unwrap();
    eprintln!("{closed} of {OPENED} connections closed at once");
    let limit = MAX_PENDING_INCOMING as usize;
    assert!(
        closed + limit + 8 >= OPENED,
        "only {closed} of {OPENED} connections were refused (limit {limit})"
    );
    net.shutdown();
}
