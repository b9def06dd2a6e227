//! `gradswarm status ADDR`: the run at a glance in a terminal, from the heartbeats its peers
//! gossip (their claims, signed: round, loss, samples, tokens/s, what they run).

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use gradswarm_core::view::{PeerView, RunView};
use gradswarm_net::{Multiaddr, NetConfig, NetEvent, PeerId, native};

/// Counts as online: heard from within this long (a peer heartbeats every few seconds).
const ONLINE: Duration = Duration::from_secs(30);

/// Listens to the run's heartbeats through `addr` for `seconds`, then prints each peer online and
/// the run's summary (as a table, or one JSON object with `json`). The run id is the one `addr`'s
/// node publishes, else `run_id`.
pub fn status(addr: &str, seconds: f64, run_id: Option<String>, json: bool) -> anyhow::Result<()> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        anyhow::bail!("--seconds must be in (0, 3600], not {seconds}");
    }
    let listen = Duration::from_secs_f64(seconds);
    let addr: Multiaddr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not a multiaddr"))?;
    let server = gradswarm_net::peer_of(&addr).context("the address must end in /p2p/<peer id>")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let run_id = match run_id {
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
        let online_ms = ONLINE.as_millis() as u64;
        let peers = view.online(now_ms(), online_ms);
        let s = view.summary(now_ms(), online_ms);
        if json {
            let rows: Vec<serde_json::Value> = peers.iter().map(|p| row_json(p)).collect();
            let out = serde_json::json!({
                "run_id": run_id,
                "peers": s.peers,
                "round": s.round,
                "loss": finite(s.loss),
                "tokens_per_s": s.tokens_per_s,
                "samples": s.samples,
                "online": rows,
            });
            println!("{out}");
        } else {
            println!(
                "run {run_id}: {} peers online, round {}, loss {}, {:.0} tokens/s, {} samples",
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
        }
        Ok(())
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

fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

fn row_json(p: &PeerView) -> serde_json::Value {
    serde_json::json!({
        "peer_id": name(&p.peer_id),
        "round": p.round,
        "loss": finite(p.loss),
        "tokens_per_s": p.tokens_per_s,
        "samples": p.samples,
        "agent": p.agent,
    })
}
