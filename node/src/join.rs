//! `gradswarm join`: this machine becomes a peer of a run.
//!
//! The network runs on a tokio runtime; the round loop (which blocks while training) on a thread of
//! its own. One status line updates in place; Ctrl-C finishes the round, checkpoints and leaves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use gradswarm_model::{Checkpoint, Corpus, Trainer, checkpoint};
use gradswarm_net::{Multiaddr, native};
use gradswarm_peer::metrics::PeerMetrics;
use gradswarm_peer::{
    MOMENTUM_KEY, PauseHandle, Peer, PeerSummary, RESIDUAL_KEY, RoundReport, stop_pair,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::NodeConfig;

/// What `gradswarm join` was asked on its command line (flags override the config file).
pub struct JoinArgs {
    /// The TOML config file (None: the default config).
    pub config: Option<PathBuf>,
    /// Bootstrap multiaddrs, added to `swarm.bootstrap`.
    pub addrs: Vec<String>,
    /// The output folder (checkpoints, identity key).
    pub out: Option<PathBuf>,
    /// Where to train.
    pub device: Option<gradswarm_model::DeviceChoice>,
    /// Listen addresses replacing `swarm.listen` (none: keep the config's).
    pub listen: Vec<String>,
    /// Rounds to run, replacing `swarm.rounds`.
    pub rounds: Option<u64>,
    /// Other peers to wait for before the first round.
    pub min_peers: usize,
    /// The run id the volunteer was told to join: the published manifest must have it.
    pub expect_run: Option<String>,
    /// Where to serve Prometheus metrics (`/metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// The share of the time to train.
    pub duty_cycle: f64,
    /// CPU threads, replacing `train.threads`.
    pub threads: Option<usize>,
}

fn status_line(r: &RoundReport) -> String {
    let stale = if r.staleness.is_empty() {
        0.0
    } else {
        r.staleness.iter().sum::<u64>() as f64 / r.staleness.len() as f64
    };
    let val = r.val_loss.map_or(String::new(), |v| format!(" val {v:.3}"));
    format!(
        "round {} loss {:.3}{val} peers {} updates {} up {} B down {} B staleness {stale:.2} drops {} credit {}",
        r.round,
        r.loss,
        r.peers,
        r.updates,
        r.bytes_up,
        r.bytes_down,
        r.drops.total(),
        r.credit
    )
}

/// Runs `gradswarm id`: the peer id `join` with the same config and `--out` will have.
pub fn print_id(config: Option<&std::path::Path>, out: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = crate::config::load(config)?;
    let out = out.unwrap_or(cfg.run.out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let key = native::load_or_create_identity(&out.join("identity.key"))?;
    println!("{}", key.public().to_peer_id());
    Ok(())
}

/// Runs `gradswarm join`.
pub fn join(args: JoinArgs) -> anyhow::Result<()> {
    let local_text = match &args.config {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?,
        ),
        None => None,
    };
    let mut cfg = crate::config::load(args.config.as_deref())?;
    cfg.swarm.bootstrap.extend(args.addrs);
    if let Some(o) = args.out {
        cfg.run.out = o;
    }
    if let Some(d) = args.device {
        cfg.run.device = d;
    }
    if !args.listen.is_empty() {
        cfg.swarm.listen = args.listen;
    }
    if let Some(r) = args.rounds {
        cfg.swarm.rounds = r;
    }
    if let Some(t) = args.threads {
        cfg.train.threads = t;
    }
    cfg.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The first bootstrap address may publish the run: then the run comes from there.
    let published = match parse_all(&cfg.swarm.bootstrap)?.into_iter().next() {
        Some(addr) => runtime.block_on(published_run(
            addr,
            &cfg,
            local_text.as_deref(),
            args.expect_run.as_deref(),
        ))?,
        None => None,
    };
    if let Some(expected) = &args.expect_run
        && published.is_none()
    {
        anyhow::bail!("--expect-run {expected}: no bootstrap address publishes a run to check");
    }
    if let Some((run_cfg, _)) = &published {
        cfg = run_cfg.clone();
    }
    let corpus = Arc::new(Corpus::load(&cfg.data, cfg.model.context)?);
    let selected = crate::pick_device(cfg.run.device)?;
    std::fs::create_dir_all(&cfg.run.out)
        .with_context(|| format!("creating {}", cfg.run.out.display()))?;
    let ckpt_path = cfg.run.out.join("checkpoint.safetensors");
    // The peer's own state beside θ and the optimizer (error-feedback residual, outer momentum):
    // without it a restart would drop the updates it computed but had not sent yet.
    let mut resumed_state: Vec<(&'static str, Vec<f32>)> = Vec::new();
    let (trainer, resume_round) = if ckpt_path.exists() {
        let ckpt = Checkpoint::load(&ckpt_path)?;
        if ckpt.meta.run_id != cfg.run.id || ckpt.meta.model_config != cfg.model {
            bail!(
                "{} belongs to another run or model; pass --out to start elsewhere",
                ckpt_path.display()
            );
        }
        let t = ckpt.into_trainer(&ckpt_path, &cfg.train, &selected.device)?;
        for key in [RESIDUAL_KEY, MOMENTUM_KEY] {
            if let Some(values) = ckpt.state(key) {
                resumed_state.push((key, values.to_vec()));
            }
        }
        eprintln!(
            "resuming from {} (round {})",
            ckpt_path.display(),
            ckpt.meta.round
        );
        (t, Some(ckpt.meta.round))
    } else {
        (
            Trainer::new(&cfg.model, &cfg.train, &selected.device)?,
            None,
        )
    };
    let resumed_names: Vec<&str> = resumed_state.iter().map(|(k, _)| *k).collect();
    if !(args.duty_cycle > 0.0 && args.duty_cycle <= 1.0) {
        bail!("--duty-cycle must be in (0, 1], not {}", args.duty_cycle);
    }
    let mut peer_cfg = cfg.peer_config();
    peer_cfg.duty_cycle = args.duty_cycle;
    peer_cfg.agent = gradswarm_peer::agent("desktop", &selected.summary);
    let (codec, kind) = gradswarm_shaders::codec_for(peer_cfg.codec, selected.wgpu_queue())?;
    eprintln!(
        "codec: top-{} ppm + int8 + zstd ({kind})",
        cfg.swarm.top_k_per_million
    );

    let n = trainer.num_params();
    let mut net_cfg = peer_cfg.net_config(cfg.model.hash(), n, cfg.train.batch_size);
    net_cfg.listen = parse_all(&cfg.swarm.listen)?;
    net_cfg.bootstrap = parse_all(&cfg.swarm.bootstrap)?;
    net_cfg.mdns = cfg.swarm.mdns && net_cfg.bootstrap.is_empty();
    if !cfg.swarm.allow.is_empty() {
        net_cfg.allow = Some(gradswarm_net::parse_peer_ids(&cfg.swarm.allow)?);
        eprintln!(
            "private run: {} peers allowed (swarm.allow)",
            cfg.swarm.allow.len()
        );
    }
    if net_cfg.mdns {
        eprintln!("no bootstrap node given: looking for peers on the LAN (mDNS)");
    }
    // One registry for libp2p's metrics (the driver's) and the peer's own (the round observer's).
    let metrics = args.metrics.map(|addr| {
        let mut registry = prometheus_client::registry::Registry::default();
        let peer =
            PeerMetrics::register(&mut registry, &selected.summary, cfg.model.context as u64);
        (addr, Arc::new(std::sync::Mutex::new(registry)), peer)
    });
    net_cfg.metrics = metrics.as_ref().map(|(_, registry, _)| registry.clone());
    let key = native::load_or_create_identity(&cfg.run.out.join("identity.key"))?;
    let (net, events, driver) = runtime.block_on(native::build(net_cfg, key))?;
    let peer_metrics = match metrics {
        Some((addr, registry, peer)) => {
            let bound = runtime.block_on(gradswarm_net::metrics::serve_metrics(addr, registry))?;
            eprintln!("metrics: http://{bound}/metrics");
            Some(peer)
        }
        None => None,
    };
    eprintln!("peer id {}", net.local_peer_id());
    runtime.spawn(driver.run());
    // A peer of a published run serves it on, so a joiner may start from any peer's address.
    if let Some((_, files)) = published {
        net.serve_run(Arc::new(files))?;
    }

    let (stop, stop_rx) = stop_pair();
    let pause = PauseHandle::default();
    #[cfg(unix)]
    {
        let pause = pause.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
                return;
            };
            while usr1.recv().await.is_some() {
                if pause.toggle() {
                    eprintln!("paused: heartbeats go on, rounds are skipped (SIGUSR1 resumes)");
                } else {
                    eprintln!("resumed");
                }
            }
        });
    }
    let ctrl_c = stop.clone();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nleaving after this round (Ctrl-C again to force)…");
            ctrl_c.stop();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let every = cfg.swarm.checkpoint_every;
    let run_id = cfg.run.id.clone();
    let path = ckpt_path.clone();
    let peer_net = net.clone();
    let min_peers = args.min_peers;
    let thread = std::thread::Builder::new()
        .name("round-loop".into())
        .spawn(move || -> anyhow::Result<PeerSummary> {
            let mut peer = Peer::new(peer_cfg, trainer, corpus, codec, peer_net, events, stop_rx)?;
            peer.set_pause_handle(pause);
            if let Some(r) = resume_round {
                peer.resume_at(r);
            }
            for (key, values) in resumed_state {
                peer.restore_local_state(key, values)
                    .with_context(|| format!("{} holds a bad {key}", path.display()))?;
            }
            peer.wait_for_peers(min_peers);
            let line_bar = bar.clone();
            let (ckpt_path, ckpt_run) = (path.clone(), run_id.clone());
            peer.set_observer(Box::new(move |r, trainer, state| {
                if let Some(m) = &peer_metrics {
                    m.observe(r);
                }
                if every > 0 && (r.round + 1) % every == 0 {
                    // The round loop goes on whatever the disk says; the next checkpoint may work.
                    if let Err(e) =
                        checkpoint::save(&ckpt_path, trainer, &ckpt_run, r.round + 1, state)
                    {
                        tracing::warn!("checkpoint at round {}: {e}", r.round + 1);
                    }
                }
                let line = status_line(r);
                if line_bar.is_hidden() {
                    if r.round % 10 == 0 || r.val_loss.is_some() {
                        eprintln!("{line}");
                    }
                } else {
                    line_bar.set_message(line);
                    line_bar.tick();
                }
            }));
            let result = futures::executor::block_on(peer.run());
            bar.finish_and_clear();
            // Whatever happened, the replica so far is worth keeping.
            let state = peer.local_state();
            checkpoint::save(&path, peer.trainer(), &run_id, peer.round(), &state)?;
            eprintln!("checkpoint: {} (round {})", path.display(), peer.round());
            Ok(result?)
        })?;
    let summary = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the round loop panicked"))??;
    net.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(2));
    let out = serde_json::json!({
        "peer_id": summary.peer_id,
        "rounds": summary.rounds.len(),
        "start_round": summary.start_round,
        "synced_from": summary.synced_from,
        // What of the peer's own state (beside θ and the optimizer) came from its checkpoint.
        "resumed_state": resumed_names,
        "final_loss": summary.rounds.iter().rev().find(|r| r.loss.is_finite()).map(|r| r.loss),
        "drops": summary.drops,
        // Whose updates counted here, and the training throughput (for comparisons across peers).
        "counted_from": summary.counted_from,
        "samples": summary.rounds.iter().map(|r| r.samples).max().unwrap_or(0),
        // Its credit as the others attest it, and theirs as this peer heard it attested.
        "credit": summary.credit,
        "credits": summary.credits,
        "compute_s": summary.rounds.iter().map(|r| r.compute_s).sum::<f64>(),
        "checkpoint": ckpt_path,
    });
    println!("{out}");
    Ok(())
}

/// The run `addr`'s node publishes, fetched into `cfg.run.out`: the config to run it with (the
/// run's settings and this volunteer's own keys; its run id the manifest's) and its files. `None`
/// when that node publishes no run: `cfg` is the run then. A volunteer's config file `local_text`
/// may only narrow what is theirs to choose. With `expected`, the manifest must carry that run id
/// (a hash of its settings and data), so a node that was handed the address cannot swap the run.
async fn published_run(
    addr: Multiaddr,
    cfg: &NodeConfig,
    local_text: Option<&str>,
    expected: Option<&str>,
) -> anyhow::Result<Option<(NodeConfig, gradswarm_core::RunFiles)>> {
    let Some(server) = gradswarm_net::peer_of(&addr) else {
        return Ok(None);
    };
    let (client, task) = crate::run::client(&addr).await?;
    let fetched = async {
        let manifest = match crate::run::fetch_manifest(&client, server).await? {
            Ok(m) => m,
            Err(reason) if expected.is_none() => {
                eprintln!("{addr} publishes no run ({reason}): running the config's");
                return Ok(None);
            }
            Err(reason) => {
                anyhow::bail!("{addr} publishes no run ({reason}), not the expected one")
            }
        };
        if let Some(expected) = expected
            && manifest.run_id() != expected
        {
            anyhow::bail!(
                "{addr} publishes run {}, not {expected} (--expect-run): refusing it",
                manifest.run_id()
            );
        }
        let mut run_cfg = crate::run::config_of(&manifest, cfg)?;
        if let Some(text) = local_text {
            crate::run::check_narrows(text, &run_cfg)?;
        }
        eprintln!("run {} from {addr}", manifest.run_id());
        let files = crate::run::fetch_into(&client, server, &manifest, &cfg.run.out).await?;
        run_cfg.data.path = cfg.run.out.join(native::RUN_DATA_FILE);
        run_cfg.run.id = manifest.run_id();
        Ok(Some((run_cfg, files)))
    }
    .await;
    client.shutdown();
    let _ = task.await;
    fetched
}

fn parse_all(addrs: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("{a:?} is not a multiaddr"))
        })
        .collect()
}
