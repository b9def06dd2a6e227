//! `gradswarm status ADDR` and `gradswarm credit ADDR`: the run at a glance in a terminal, from
//! the heartbeats its peers gossip. Round, loss, samples, tokens/s and bytes are each peer's
//! claims (signed); credit is what the others attest ([`gradswarm_core::credit`]).

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use gradswarm_core::view::{PeerView, RunView};
use gradswarm_net::{Multiaddr, NetConfig, NetEvent, PeerId, native};

/// Counts as online: heard from within this long (a peer heartbeats every few seconds).
const ONLINE: Duration = Duration::from_secs(30);

/// Where to listen, for how long, and how to print (`status` and `credit` alike).
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// A bootstrap or peer multiaddr (with /p2p/<id>).
    addr: String,
    /// Seconds to listen for heartbeats.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The run to watch, when the node publishes none.
    #[arg(long)]
    run_id: Option<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// The run as heard over a while: its id, the view, and the view's clock at the end.
struct Heard {
    run_id: String,
    view: RunView,
    now_ms: u64,
}

impl Heard {
    /// The peers online, most advanced first.
    fn online(&self) -> Vec<&PeerView> {
        self.view.online(self.now_ms, ONLINE.as_millis() as u64)
    }
}

/// Prints each peer online and the run's summary.
pub fn status(args: WatchArgs) -> anyhow::Result<()> {
    let heard = listen(&args)?;
    let s = heard.view.summary(heard.now_ms, ONLINE.as_millis() as u64);
    let peers = heard.online();
    if args.json {
        let rows: Vec<serde_json::Value> = peers.iter().map(|p| row_json(&heard, p)).collect();
        let out = serde_json::json!({
            "run_id": heard.run_id,
            "peers": s.peers,
            "round": s.round,
            "loss": finite(s.loss),
            "tokens_per_s": s.tokens_per_s,
            "samples": s.samples,
            "credit": s.credit,
            "online": rows,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "run {}: {} peers online, round {}, loss {}, {:.0} tokens/s, {} samples",
        heard.run_id,
        s.peers,
        s.round,
        loss_text(s.loss),
        s.tokens_per_s,
        s.samples
    );
    println!(
        "{:<54} {:>8} {:>7} {:>10} {:>11}  agent",
        "peer", "round", "loss", "tokens/s", "samples"
    );
    for p in peers {
        println!(
            "{:<54} {:>8} {:>7} {:>10.0} {:>11}  {}",
            name(&p.peer_id),
            p.round,
            loss_text(p.loss),
            p.tokens_per_s,
            p.samples,
            p.agent
        );
    }
    Ok(())
}

/// Prints each peer's credit beside its claims, largest credit first.
pub fn credit(args: WatchArgs) -> anyhow::Result<()> {
    let heard = listen(&args)?;
    let mut peers = heard.online();
    peers.sort_by_key(|p| std::cmp::Reverse(heard.view.credit(&p.peer_id, p.samples).samples));
    if args.json {
        let rows: Vec<serde_json::Value> = peers.iter().map(|p| row_json(&heard, p)).collect();
        println!(
            "{}",
            serde_json::json!({ "run_id": heard.run_id, "online": rows })
        );
        return Ok(());
    }
    println!(
        "run {}: credit = samples of a peer's updates that counted in the others' aggregates, as they attest",
        heard.run_id
    );
    println!(
        "{:<54} {:>11} {:>9} {:>11} {:>10} {:>10}  agent",
        "peer", "credit", "attesters", "claimed", "sent", "received"
    );
    for p in peers {
        let c = heard.view.credit(&p.peer_id, p.samples);
        println!(
            "{:<54} {:>11} {:>9} {:>11} {:>10} {:>10}  {}",
            name(&p.peer_id),
            c.samples,
            c.attesters,
            p.samples,
            bytes_text(p.bytes_sent),
            bytes_text(p.bytes_received),
            p.agent
        );
    }
    Ok(())
}

/// Listens to the run's heartbeats through `args.addr` for `args.seconds`. The run id is the one
/// that node publishes, else `args.run_id`.
fn listen(args: &WatchArgs) -> anyhow::Result<Heard> {
    let seconds = args.seconds;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        anyhow::bail!("--seconds must be in (0, 3600], not {seconds}");
    }
    let listen = Duration::from_secs_f64(seconds);
    let addr: Multiaddr = args
        .addr
        .parse()
        .with_context(|| format!("{:?} is not a multiaddr", args.addr))?;
    let server = gradswarm_net::peer_of(&addr).context("the address must end in /p2p/<peer id>")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let run_id = match args.run_id.clone() {
            Some(id) => id,
            None => {
                let (client, task) = crate::run::client(&addr).await?;
                let manifest = crate::run::fetch_manifest(&client, server).await;
                client.shutdown();
                let _ = task.await;
                match manifest? {
                    Ok(m) => m.run_id(),
                    Err(reason) => anyhow::bail!(
                        "{addr} publishes no run ({reason}): name the run with --run-id"
                    ),
                }
            }
        };
        let (net, mut events, driver) = native::build(
            NetConfig::watcher(&run_id, vec![addr.clone()]),
            gradswarm_net::Keypair::generate_ed25519(),
        )
        .await?;
        let task = tokio::spawn(driver.run());
        let started = tokio::time::Instant::now();
        let mut view = RunView::default();
        let now_ms = || started.elapsed().as_millis() as u64;
        while let Ok(Some(event)) = tokio::time::timeout_at(started + listen, events.next()).await {
            if let NetEvent::Heartbeat { heartbeat, .. } = event
                && heartbeat.run_id == run_id
            {
                view.take(&heartbeat, now_ms());
            }
        }
        net.shutdown();
        let _ = task.await;
        Ok(Heard {
            run_id,
            view,
            now_ms: now_ms(),
        })
    })
}

fn name(peer_id: &[u8]) -> String {
    PeerId::from_bytes(peer_id)
        .map(|p| p.to_base58())
        .unwrap_or_else(|_| "?".into())
}

fn loss_text(loss: f32) -> String {
    if loss.is_finite() {
        format!("{loss:.3}")
    } else {
        "–".into()
    }
}

/// Bytes in KiB, MiB or GiB, for a table cell.
fn bytes_text(bytes: u64) -> String {
    let b = bytes as f64;
    match b {
        b if b >= (1u64 << 30) as f64 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b / 1024.0),
    }
}

fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

fn row_json(heard: &Heard, p: &PeerView) -> serde_json::Value {
    let credit = heard.view.credit(&p.peer_id, p.samples);
    serde_json::json!({
        "peer_id": name(&p.peer_id),
        "round": p.round,
        "loss": finite(p.loss),
        "tokens_per_s": p.tokens_per_s,
        "samples": p.samples,
        "credit": credit.samples,
        "attesters": credit.attesters,
        "bytes_sent": p.bytes_sent,
        "bytes_received": p.bytes_received,
        "agent": p.agent,
    })
}
