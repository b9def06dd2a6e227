//! `gradswarm-bootstrap`: the node volunteers dial first. It serves the DHT (Kademlia server mode),
//! relays circuits for peers behind NAT (circuit relay v2), forwards the run's gossip, and prints
//! its full multiaddrs so they can be handed to `gradswarm join`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use gradswarm_net::{Multiaddr, NetConfig, native};

/// gradswarm's bootstrap and relay node.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The run whose gossip this node forwards.
    #[arg(long, default_value = "shakespeare-byte-gpt")]
    run_id: String,
    /// TCP port (QUIC listens on the same UDP port; WebSocket on the next TCP port).
    #[arg(long, default_value_t = 4001)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// Identity key file, created on first start (the peer id in the printed addresses stays the same).
    #[arg(long, default_value = "bootstrap.key")]
    key: PathBuf,
    /// Largest gossip message forwarded, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_message_bytes: usize,
}

fn listen_addrs(host: std::net::IpAddr, port: u16) -> Result<Vec<Multiaddr>> {
    let ip = match host {
        std::net::IpAddr::V4(_) => "ip4",
        std::net::IpAddr::V6(_) => "ip6",
    };
    let ws = if port == 0 {
        0
    } else {
        port.checked_add(1).context("port too large")?
    };
    [
        format!("/{ip}/{host}/tcp/{port}"),
        format!("/{ip}/{host}/udp/{port}/quic-v1"),
        format!("/{ip}/{host}/tcp/{ws}/ws"),
    ]
    .iter()
    .map(|a| a.parse().with_context(|| format!("bad listen address {a}")))
    .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,libp2p_kad=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let key = native::load_or_create_identity(&args.key)?;
    let mut config = NetConfig::bootstrap(&args.run_id, args.max_message_bytes);
    config.listen = listen_addrs(args.host, args.port)?;
    let (handle, mut events, driver) = native::build(config, key)
        .await
        .context("starting the bootstrap node")?;
    println!(
        "gradswarm-bootstrap {} for run {}",
        handle.local_peer_id(),
        args.run_id
    );
    let net = tokio::spawn(driver.run());
    // Bootstrap nodes emit no events but their listen addresses, which are printed as they come.
    let printer = tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(event) = events.next().await {
            if let gradswarm_net::NetEvent::Listening(addr) = event {
                println!("listening on {addr}");
            }
        }
    });
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("shutting down");
    handle.shutdown();
    net.await.context("network task")?;
    printer.abort();
    Ok(())
}
