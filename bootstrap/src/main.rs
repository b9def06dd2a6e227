//! `gradswarm-bootstrap`: the node volunteers dial first. It publishes a run (`--run DIR`: its
//! manifest and data, so that joiners need its address alone), serves the DHT (Kademlia server mode),
//! relays circuits for peers behind NAT (circuit relay v2), forwards the run's gossip, and prints
//! its full multiaddrs so they can be handed to `gradswarm join`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Parser;
use gradswarm_net::{Multiaddr, NetConfig, native};

mod checkpoint;
mod dashboard;
mod tls;
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
    /// Where the page is served (with `--web`): loopback by default; any address browsers
    /// elsewhere reach needs `--tls-cert` too, since browsers give WebGPU to secure pages only.
    #[arg(long, default_value = "127.0.0.1")]
    web_host: std::net::IpAddr,
    /// A PEM certificate chain for the page (HTTPS) and for WebSocket over TLS (`/tls/ws` on the
    /// TCP port after the WebSocket one), which browsers beyond this machine dial as `wss://`.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Offer this checkpoint on the dashboard for download (with `--web`): the one a peer on this
    /// machine writes, `<its run.out>/checkpoint.safetensors`. Only a checkpoint of this run is offered.
    #[arg(long, value_name = "FILE", requires = "web")]
    checkpoint: Option<PathBuf>,
    /// Serve Prometheus metrics (libp2p's: connections, gossipsub, kad, relay, …) at
    /// http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
}

/// TCP on `port`, QUIC on the same UDP port, WebSocket on the next TCP port and, with `tls`,
/// WebSocket over TLS on the one after (all any free port with `port` 0).
fn listen_addrs(host: std::net::IpAddr, port: u16, tls: bool) -> Result<Vec<Multiaddr>> {
    let ip = match host {
        std::net::IpAddr::V4(_) => "ip4",
        std::net::IpAddr::V6(_) => "ip6",
    };
    let next = |by: u16| -> Result<u16> {
        if port == 0 {
            Ok(0)
        } else {
            port.checked_add(by).context("port too large")
        }
    };
    let mut addrs = vec![
        format!("/{ip}/{host}/tcp/{port}"),
        format!("/{ip}/{host}/udp/{port}/quic-v1"),
        format!("/{ip}/{host}/tcp/{}/ws", next(1)?),
    ];
    if tls {
        addrs.push(format!("/{ip}/{host}/tcp/{}/tls/ws", next(2)?));
    }
    addrs
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
    let pem = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::Pem::load(cert, key)?),
        _ => None,
    };
    let mut config = NetConfig::bootstrap(&run_id, args.max_message_bytes);
    config.listen = listen_addrs(args.host, args.port, pem.is_some())?;
    config.tls = pem.as_ref().map(tls::Pem::for_net);
    if !args.allow.is_empty() {
        config.allow = Some(gradswarm_net::parse_peer_ids(&args.allow)?);
    }
    if let Some(addr) = args.metrics {
        let registry = gradswarm_net::SharedRegistry::default();
        config.metrics = Some(registry.clone());
        let bound = gradswarm_net::metrics::serve_metrics(addr, registry).await?;
        println!("metrics: http://{bound}/metrics");
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
    let board = Arc::new(Mutex::new(dashboard::Dashboard::new(&run_id)));
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
            dashboard: board.clone(),
            checkpoint: args.checkpoint.clone().map(|path| checkpoint::Offered {
                path,
                run_id: run_id.clone(),
            }),
        };
        let acceptor = pem.as_ref().map(tls::Pem::acceptor).transpose()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let bound = web::serve((args.web_host, port).into(), state, acceptor).await?;
        println!("page: {scheme}://{bound}/");
        println!("dashboard: {scheme}://{bound}/dashboard.html");
    }
    // Bootstrap nodes emit their listen addresses, printed as they come, and the run's heartbeats,
    // which the dashboard folds.
    let (page_host, secure) = (args.web_host, pem.is_some());
    let printer = tokio::spawn(async move {
        use futures::StreamExt;
        use gradswarm_net::Protocol;
        while let Some(event) = events.next().await {
            if let gradswarm_net::NetEvent::Heartbeat { heartbeat, .. } = &event {
                board
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(heartbeat);
            }
            if let gradswarm_net::NetEvent::Listening(addr) = event {
                println!("listening on {addr}");
                // The page's browser dials this node where it found the page: secure WebSocket
                // when the page is secure (a secure page may open no other), else plain.
                let text = addr.to_string();
                let on_page_host = addr.iter().next().is_some_and(|p| match p {
                    Protocol::Ip4(ip) => std::net::IpAddr::V4(ip) == page_host,
                    Protocol::Ip6(ip) => std::net::IpAddr::V6(ip) == page_host,
                    _ => false,
                });
                let wanted = if secure {
                    text.contains("/tls/ws/")
                } else {
                    text.contains("/ws/") && !text.contains("/tls/")
                };
                if wanted && on_page_host {
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
