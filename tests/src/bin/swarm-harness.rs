//! `swarm-harness`: runs a scenario on loopback and writes its JSON report; plots a report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gradswarm_harness::scenario::Scenario;

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
            if let Some(dir) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let json = serde_json::to_string_pretty(&r)?;
            let tmp = report.with_extension("json.tmp");
            std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &report)
                .with_context(|| format!("writing {}", report.display()))?;
            println!("{}", serde_json::to_string_pretty(&r.summary)?);
            eprintln!("report: {}", report.display());
        }
        Command::Plot { report, out } => {
            let out = out.unwrap_or_else(|| report.with_extension("png"));
            gradswarm_harness::plot::plot(&report, &out)?;
            eprintln!("plot: {}", out.display());
        }
    }
    Ok(())
}
