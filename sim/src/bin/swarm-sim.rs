//! `swarm-sim`: simulated swarms of up to thousands of peers (see the crate's docs).
//!
//! ```sh
//! swarm-sim scale --peers 8,32,128,512,1000 --report bench/sim/scaling.json --plot bench/sim/scaling.png
//! swarm-sim run --peers 1000 --strategy groups --group-size 8
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use gradswarm_core::AggregationRule;
use gradswarm_sim::report::{plot, scaling};
use gradswarm_sim::{SimConfig, Strategy, run};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    version,
    about = "Simulated gradswarm swarms: bytes, connections, pace and convergence against N"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run; prints its summary as JSON.
    Run {
        /// Live peers.
        #[arg(long, default_value_t = 64)]
        peers: usize,
        /// Averaging strategy.
        #[arg(long, value_enum, default_value_t = Kind::Groups)]
        strategy: Kind,
        #[command(flatten)]
        common: Common,
    },
    /// The same run at each size for broadcast and groups: a JSON report and a plot.
    Scale {
        /// Swarm sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "8,32,128,512,1000")]
        peers: Vec<usize>,
        /// Where the JSON report goes.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Where the PNG plot goes.
        #[arg(long)]
        plot: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Broadcast,
    Groups,
    Gossip,
}

/// What every run shares.
#[derive(clap::Args)]
struct Common {
    /// Peers per group (groups strategy).
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Rounds a grouping lasts (groups strategy).
    #[arg(long, default_value_t = 20)]
    regroup_every: u64,
    /// Rings (gossip strategy): the peers each one sends to and hears from.
    #[arg(long, default_value_t = 3)]
    rings: usize,
    /// Consensus step size γ (gossip strategy).
    #[arg(long, default_value_t = 0.05)]
    gamma: f32,
    /// The scale command's strategies beside broadcast.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "groups")]
    against: Vec<Kind>,
    /// Coordinates of the synthetic model.
    #[arg(long, default_value_t = 16_384)]
    dim: usize,
    /// Rounds at most.
    #[arg(long, default_value_t = 400)]
    max_rounds: u64,
    /// Mean relative loss that ends a run.
    #[arg(long, default_value_t = 0.05)]
    target: f64,
    /// Gradient noise per coordinate.
    #[arg(long, default_value_t = 0.1)]
    noise: f32,
    /// Each round, the chance that a peer leaves and a newcomer takes its place.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Share of peers sending −Δ.
    #[arg(long, default_value_t = 0.0)]
    attackers: f64,
    /// The attackers send updates crafted from their group's honest ones instead of −Δ.
    #[arg(long)]
    crafted: bool,
    /// Share of the lie in a crafted update, mixed with the attacker's own honest one (1: the
    /// lie alone).
    #[arg(long, default_value_t = 1.0)]
    crafted_share: f32,
    /// The crafting attackers ride standing's cut: their share of the lie grows while none is
    /// judged near it and shrinks once one is (from `--crafted-share`).
    #[arg(long)]
    crafted_adaptive: bool,
    /// Honest heterogeneity: how far apart two kinds of honest peers' optima lie, in units of
    /// the optimum's own length (0: every peer's data alike).
    #[arg(long, default_value_t = 0.0)]
    skew: f32,
    /// The share of the honest peers whose data pull the other way (`--skew`).
    #[arg(long, default_value_t = 0.25)]
    skewed: f64,
    /// Each honest peer's data pull `--skew` away along a direction of its own instead.
    #[arg(long)]
    skew_per_peer: bool,
    /// Trim this many values at each end per coordinate (0: the weighted mean).
    #[arg(long, default_value_t = 0)]
    trim: usize,
    /// Aggregate without the direction screen (to measure what it buys).
    #[arg(long)]
    no_direction_screen: bool,
    /// Aggregate without judging peers' standing over rounds (to measure what it buys).
    #[arg(long)]
    no_standing: bool,
    /// Median uplink, Mbit/s.
    #[arg(long, default_value_t = 10.0)]
    uplink_mbit: f64,
    /// Median downlink, Mbit/s.
    #[arg(long, default_value_t = 50.0)]
    downlink_mbit: f64,
    /// Median round-trip time, ms.
    #[arg(long, default_value_t = 60.0)]
    rtt_ms: f64,
    /// Seed of every draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl Common {
    fn config(&self) -> Result<SimConfig> {
        anyhow::ensure!(self.dim > 0, "--dim must be > 0");
        anyhow::ensure!(self.group_size >= 2, "--group-size must be ≥ 2");
        anyhow::ensure!(self.rings >= 1, "--rings must be ≥ 1");
        anyhow::ensure!(
            self.gamma > 0.0 && self.gamma <= 1.0,
            "--gamma must be in (0, 1]"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.churn) && (0.0..1.0).contains(&self.attackers),
            "--churn and --attackers must be in [0, 1)"
        );
        anyhow::ensure!(
            self.uplink_mbit > 0.0 && self.downlink_mbit > 0.0 && self.rtt_ms >= 0.0,
            "links need positive bandwidths and a non-negative RTT"
        );
        anyhow::ensure!(
            self.skew.is_finite() && (0.0..=1.0).contains(&self.skewed),
            "--skew must be finite and --skewed in [0, 1]"
        );
        let mut c = SimConfig {
            dim: self.dim,
            max_rounds: self.max_rounds,
            target: self.target,
            noise: self.noise,
            churn: self.churn,
            attackers: self.attackers,
            crafted: self.crafted,
            crafted_share: self.crafted_share,
            crafted_adaptive: self.crafted_adaptive,
            skew: self.skew,
            skewed: self.skewed,
            skew_per_peer: self.skew_per_peer,
            seed: self.seed,
            gamma: self.gamma,
            ..SimConfig::default()
        };
        c.links.uplink_mbit = self.uplink_mbit;
        c.links.downlink_mbit = self.downlink_mbit;
        c.links.rtt_ms = self.rtt_ms;
        if self.trim > 0 {
            c.rule = AggregationRule::TrimmedMean { trim: self.trim };
        }
        if self.no_direction_screen {
            c.direction_screen = None;
        }
        if self.no_standing {
            c.standing = None;
        }
        Ok(c)
    }

    fn strategy(&self, kind: Kind) -> Strategy {
        match kind {
            Kind::Broadcast => Strategy::Broadcast,
            Kind::Groups => Strategy::Groups {
                size: self.group_size,
                every: self.regroup_every.max(1),
            },
            Kind::Gossip => Strategy::Gossip { rings: self.rings },
        }
    }
}

fn bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>20} [{bar:40}] {pos}/{len} rounds")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            peers,
            strategy,
            common,
        } => {
            anyhow::ensure!(peers > 0, "--peers must be > 0");
            let config = SimConfig {
                peers,
                strategy: common.strategy(strategy),
                ..common.config()?
            };
            let bar = bar(config.max_rounds);
            bar.set_message(config.strategy.name());
            let summary = run(&config, |r| bar.set_position(r.round + 1))?;
            bar.finish_and_clear();
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Scale {
            peers,
            report,
            plot: plot_path,
            common,
        } => {
            anyhow::ensure!(
                !peers.is_empty() && peers.iter().all(|&n| n > 0),
                "--peers needs sizes > 0"
            );
            let base = common.config()?;
            let strategies: Vec<Strategy> = std::iter::once(Strategy::Broadcast)
                .chain(common.against.iter().map(|&k| common.strategy(k)))
                .collect();
            let bar = bar(base.max_rounds);
            let result = scaling(&base, &peers, &strategies, |label, round| {
                if round == 0 {
                    bar.set_message(label.to_string());
                }
                bar.set_position(round);
            })?;
            bar.finish_and_clear();
            for r in &result.runs {
                eprintln!(
                    "{:>12} × {:>5}: {:>9.0} B/peer/round, {:>5.1} connections, {:>6.2} s/round, target at {:?}, spread {:.4}",
                    r.strategy,
                    r.peers,
                    r.bytes_per_round,
                    r.connections,
                    r.round_s,
                    r.rounds_to_target,
                    r.final_spread
                );
            }
            let json = serde_json::to_string_pretty(&result)?;
            match report {
                Some(path) => std::fs::write(&path, json)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{json}"),
            }
            if let Some(path) = plot_path {
                plot(&result, &path)?;
            }
        }
    }
    Ok(())
}
