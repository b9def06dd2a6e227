//! `swarm-harness`: runs a scenario on loopback and writes its JSON report; plots a report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gradswarm_harness::attack::Attack;
use gradswarm_harness::scenario::{BaselineMethod, Scenario};

#[derive(Parser)]
#[command(version, about = "gradswarm's multi-peer harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario: a bootstrap node and its peers on loopback, then the dense baseline.
    Run {
        /// The scenario file (TOML; see bench/four-peers.toml).
        #[arg(long)]
        scenario: PathBuf,
        /// Where to write the JSON report.
        #[arg(long)]
        report: PathBuf,
        /// Skip the baseline (faster; the summary's ratios against it are then null).
        #[arg(long)]
        no_baseline: bool,
    },
    /// Train only a scenario's baseline (its `baseline_method`, in-process, no network) and write
    /// its curve as JSON: for comparing methods and codecs without running a swarm.
    Baseline {
        /// The scenario file (TOML).
        #[arg(long)]
        scenario: PathBuf,
        /// Where to write the baseline's JSON curve.
        #[arg(long)]
        out: PathBuf,
        /// Train this method instead of the scenario's `baseline_method`.
        #[arg(long, value_enum)]
        method: Option<BaselineMethod>,
    },
    /// The adversity benchmark: run a scenario all-honest, then once per attack kind with the
    /// last quarter of its peers attacking; writes DIR/honest.json and DIR/KIND.json, each
    /// attacked report's summary carrying samples_vs_honest.
    Adversity {
        /// The scenario file (TOML; see bench/adversity/scenario.toml).
        #[arg(long)]
        scenario: PathBuf,
        /// The folder for the reports.
        #[arg(long)]
        out: PathBuf,
        /// The kinds to run (default: every kind, then `sybil` and `mixed`).
        #[arg(long, value_enum, value_delimiter = ',')]
        kinds: Vec<Attack>,
    },
    /// Run one peer of a scenario against a harness's bootstrap node, its reports on stdout (how
    /// the harness starts peer processes for `processes = true`; not for use by hand).
    #[command(hide = true)]
    Peer {
        /// The scenario, as JSON (the harness writes it).
        #[arg(long)]
        scenario: PathBuf,
        /// Which of its peers.
        #[arg(long)]
        index: usize,
        /// The harness's bootstrap node.
        #[arg(long)]
        bootstrap: String,
        /// Other peers to wait for before the first round.
        #[arg(long)]
        min_peers: usize,
        /// Where to write θ snapshots for the harness.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Draw a report's loss vs samples and bytes to a PNG.
    Plot {
        /// The JSON report.
        report: PathBuf,
        /// The PNG (default: the report's path with .png).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,libp2p_kad=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run {
            scenario,
            report,
            no_baseline,
        } => {
            let mut s = Scenario::load(&scenario)?;
            if no_baseline {
                s.baseline = false;
            }
            eprintln!(
                "scenario {}: {} peers, {} rounds, H = {}",
                s.name,
                s.peers,
                s.rounds,
                s.h()
            );
            let r = gradswarm_harness::run::run(&s, |line| eprintln!("{line}"))?;
            r.write(&report)?;
            println!("{}", serde_json::to_string_pretty(&r.summary)?);
            eprintln!("report: {}", report.display());
        }
        Command::Baseline {
            scenario,
            out,
            method,
        } => {
            let mut s = Scenario::load(&scenario)?;
            if let Some(method) = method {
                s.baseline_method = method;
            }
            let corpus = gradswarm_harness::load_corpus(s.model.context)?;
            let b = gradswarm_harness::baseline::run(&s, &corpus, |r| {
                eprintln!(
                    "baseline round {}: {} samples, val loss {:.4}",
                    r.round, r.samples, r.val_loss
                );
            })?;
            std::fs::write(&out, serde_json::to_string_pretty(&b)?)
                .with_context(|| format!("writing {}", out.display()))?;
            let reached = gradswarm_harness::report::samples_to(
                b.rounds.iter().map(|r| (r.samples, r.val_loss)),
                s.target_val_loss,
            );
            let summary = serde_json::json!({
                "method": s.baseline_method,
                "target_val_loss": s.target_val_loss,
                "samples_to_target": reached,
                "final_val_loss": b.rounds.last().map(|r| r.val_loss),
                "parameters": b.parameters,
                "update_bytes_per_worker_per_step": b.update_bytes_per_worker_per_step,
                "wall_s": b.wall_s,
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
            eprintln!("baseline: {}", out.display());
        }
        Command::Adversity {
            scenario,
            out,
            mut kinds,
        } => {
            let s = Scenario::load(&scenario)?;
            if kinds.is_empty() {
                kinds = Attack::ROTATION.to_vec();
                kinds.extend([Attack::Sybil, Attack::Mixed]);
            }
            let mut rows = Vec::new();
            gradswarm_harness::adversity::run(
                &s,
                &kinds,
                |kind, report| {
                    let label = gradswarm_harness::adversity::label(kind);
                    let path = out.join(format!("{label}.json"));
                    report.write(&path)?;
                    let r = &report.summary;
                    let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
                    let repairs: u64 = report
                        .peers
                        .iter()
                        .flat_map(|p| p.reconciled_with.values())
                        .sum();
                    // Rounds in which honest peers weighed an attacker down, and an honest one.
                    let liars: Vec<&str> = report
                        .peers
                        .iter()
                        .filter(|p| p.attack.is_some())
                        .map(|p| p.peer_id.as_str())
                        .collect();
                    let (mut weighed_liars, mut weighed_honest) = (0u64, 0u64);
                    for p in report.peers.iter().filter(|p| p.attack.is_none()) {
                        for (whom, n) in &p.weighed_down {
                            if liars.contains(&whom.as_str()) {
                                weighed_liars += n;
                            } else {
                                weighed_honest += n;
                            }
                        }
                    }
                    let row = format!(
                        "{label:<18} samples_to_target {:>8} samples_vs_honest {:>6} \
                         rounds_vs_honest {:>6} rss_vs_honest {:>6} divergence {:.1e} \
                         repairs {repairs} weighed_down liars {weighed_liars} honest \
                         {weighed_honest} drops {}",
                        r.samples_to_target.map_or("-".into(), |v| v.to_string()),
                        ratio(r.samples_vs_honest),
                        ratio(r.rounds_vs_honest),
                        ratio(r.rss_vs_honest),
                        r.max_replica_divergence,
                        serde_json::to_string(&r.drops)?,
                    );
                    eprintln!("{row}\nreport: {}", path.display());
                    rows.push(row);
                    Ok(())
                },
                |line| eprintln!("{line}"),
            )?;
            println!("{}", rows.join("\n"));
        }
        Command::Peer {
            scenario,
            index,
            bootstrap,
            min_peers,
            dir,
        } => {
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("reading {}", scenario.display()))?;
            let s: Scenario = serde_json::from_str(&text)
                .with_context(|| format!("scenario {}", scenario.display()))?;
            s.validate()?;
            let bootstrap = bootstrap
                .parse()
                .with_context(|| format!("{bootstrap:?} is not a multiaddr"))?;
            gradswarm_harness::child::serve(&s, index, bootstrap, min_peers, &dir)?;
        }
        Command::Plot { report, out } => {
            let out = out.unwrap_or_else(|| report.with_extension("png"));
            gradswarm_harness::plot::plot(&report, &out)?;
            eprintln!("plot: {}", out.display());
        }
    }
    Ok(())
}
