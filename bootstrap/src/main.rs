//! `gradswarm-bootstrap`: the node volunteers dial first. It publishes a run (`--run DIR`: its
//! manifest and data, so that joiners need its address alone), serves the DHT (Kademlia server mode),
//! relays circuits for peers behind NAT (circuit relay v2), forwards the run's gossip, and prints
//! its full multiaddrs so they can be handed to `gradswarm join`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Parser;
use gradswarm_net::{Multiaddr, NetConfig, native};

mod web;

/// gradswarm's bootstrap and relay node.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The run whose gossip this node forwards, when it publishes none (default:
    /// shakespeare-byte-gpt).
    #[arg(long, conflicts_with = "run")]
    run_id: Option<String>,
    /// Publish the run in this folder (`gradswarm publish --out DIR` writes it): serve its
    /// manifest and data to joiners, who then need this node's address alone, and forward its
    /// gossip. The run id is the manifest's.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
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
    /// Also serve the browser peer's page on http://127.0.0.1:PORT (0: any free port), with this
    /// node's WebSocket address filled in.
    #[arg(long, value_name = "PORT")]
    web: Option<u16>,
    /// The page's folder (built by `scripts/build-web`).
    #[arg(long, default_value = "web/www")]
    web_root: PathBuf,
    /// The training text the page's peer trains on (default: the published run's data, else
    /// data/shakespeare.txt).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// A private run: a peer id that may connect (repeatable; `gradswarm id` prints one). Anyone
    /// else is refused, and what they sign is not forwarded. None: an open run.
    #[arg(long, value_name = "PEER_ID")]
    allow: Vec<String>,
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
    let files = match &args.run {
        Some(dir) => Some(Arc::new(native::load_run(dir)?)),
        None => None,
    };
    let run_id = match (&files, &args.run_id) {
        (Some(f), _) => f.manifest().run_id(),
        (None, Some(id)) => id.clone(),
        (None, None) => "shakespeare-byte-gpt".to_string(),
    };
    let corpus = match (&args.corpus, &args.run) {
        (Some(c), _) => c.clone(),
        (None, Some(dir)) => dir.join(native::RUN_DATA_FILE),
        (None, None) => "data/shakespeare.txt".into(),
    };
    let mut config = NetConfig::bootstrap(&run_id, args.max_message_bytes);
    config.listen = listen_addrs(args.host, args.port)?;
    if !args.allow.is_empty() {
        config.allow = Some(gradswarm_net::parse_peer_ids(&args.allow)?);
    }
    let (handle, mut events, driver) = native::build(config, key)
        .await
        .context("starting the bootstrap node")?;
    println!(
        "gradswarm-bootstrap {} for run {run_id}",
        handle.local_peer_id(),
    );
    if let Some(files) = &files {
        let m = files.manifest();
        println!(
            "publishing run {run_id}: {} bytes of data in {} pieces",
            m.data_bytes,
            m.pieces.len()
        );
        handle.serve_run(files.clone())?;
    }
    let net = tokio::spawn(driver.run());
    let ws_addrs = Arc::new(Mutex::new(Vec::new()));
    if let Some(port) = args.web {
        if !args.web_root.join("index.html").is_file() {
            anyhow::bail!(
                "--web: {} has no index.html (run scripts/build-web first)",
                args.web_root.display()
            );
        }
        let state = web::WebState {
            run_id: run_id.clone(),
            ws_addrs: ws_addrs.clone(),
            root: args.web_root.clone(),
            corpus,
            settings: files.as_ref().map(|f| f.manifest().settings.clone()),
        };
        // The page is for volunteers on this machine's browser: loopback only.
        let bound = web::serve(([127, 0, 0, 1], port).into(), state).await?;
        println!("page: http://{bound}/");
    }
    // Bootstrap nodes emit no events but their listen addresses, which are printed as they come.
    let printer = tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(event) = events.next().await {
            if let gradswarm_net::NetEvent::Listening(addr) = event {
                println!("listening on {addr}");
                // The page is served on loopback, so its browser dials this node on loopback.
                let text = addr.to_string();
                if text.contains("/ws/")
                    && (text.starts_with("/ip4/127.") || text.starts_with("/ip6/::1/"))
                {
                    ws_addrs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(text);
                }
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
