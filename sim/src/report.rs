//! The scaling report: the same run at each swarm size for each strategy, side by side, with the
//! ratios the issue asks about, as JSON and as a plot.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::swarm::{SimConfig, Strategy, Summary, run};

/// Every run of a scaling experiment, and the figures drawn from them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScalingReport {
    /// The configuration every run shares (its `peers` and `strategy` are each run's own).
    pub config: SimConfig,
    /// One summary per (strategy, N), in the order run.
    pub runs: Vec<Summary>,
    /// Per strategy: bytes per peer per round at the largest N over the smallest.
    pub bytes_growth: Vec<(String, f64)>,
    /// Per strategy: connections per peer at the largest N over the smallest.
    pub connections_growth: Vec<(String, f64)>,
    /// Per N: rounds to the target of each non-broadcast strategy over broadcast's (None when
    /// either missed it).
    pub rounds_vs_broadcast: Vec<(usize, String, Option<f64>)>,
}

/// Runs `base` at each of `sizes` for each of `strategies`; `progress` hears of each run as it
/// starts and of each round.
pub fn scaling(
    base: &SimConfig,
    sizes: &[usize],
    strategies: &[Strategy],
    mut progress: impl FnMut(&str, u64),
) -> Result<ScalingReport> {
    let mut runs = Vec::new();
    for strategy in strategies {
        for &peers in sizes {
            let config = SimConfig {
                peers,
                strategy: *strategy,
                ..base.clone()
            };
            let label = format!("{} × {peers}", strategy.name());
            progress(&label, 0);
            let summary = run(&config, |r| progress(&label, r.round + 1))
                .with_context(|| format!("the {label} run"))?;
            runs.push(summary);
        }
    }
    let growth = |field: fn(&Summary) -> f64| -> Vec<(String, f64)> {
        strategies
            .iter()
            .filter_map(|s| {
                let mine: Vec<&Summary> = runs.iter().filter(|r| r.strategy == s.name()).collect();
                let (first, last) = (mine.first()?, mine.last()?);
                Some((s.name(), field(last) / field(first).max(1e-30)))
            })
            .collect()
    };
    let bytes_growth = growth(|r| r.bytes_per_round);
    let connections_growth = growth(|r| r.connections);
    let mut rounds_vs_broadcast = Vec::new();
    for &n in sizes {
        let of = |name: &str| {
            runs.iter()
                .find(|r| r.peers == n && r.strategy == name)
                .and_then(|r| r.rounds_to_target)
        };
        let Some(b) = of("broadcast") else { continue };
        for s in strategies.iter().filter(|s| **s != Strategy::Broadcast) {
            let ratio = of(&s.name()).map(|r| r as f64 / b as f64);
            rounds_vs_broadcast.push((n, s.name(), ratio));
        }
    }
    Ok(ScalingReport {
        config: base.clone(),
        runs,
        bytes_growth,
        connections_growth,
        rounds_vs_broadcast,
    })
}

/// Fonts tried for labels (Debian's fonts-dejavu-core, which `scripts/setup` installs).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Draws the report: bytes per peer per round against N (log-log), and rounds to the target
/// against N, one line per strategy.
pub fn plot(report: &ScalingReport, path: &Path) -> Result<()> {
    let font = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no font for the plot's labels (install fonts-dejavu-core)"))?;
    let bytes = std::fs::read(font).with_context(|| format!("reading {font}"))?;
    // plotters keeps registered fonts for the life of the process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow!("{font} is not a usable font"))?;
    let (w, h) = (1200u32, 480u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(w / 2);
        let names: Vec<String> = {
            let mut v: Vec<String> = report.runs.iter().map(|r| r.strategy.clone()).collect();
            v.dedup();
            v
        };
        let n_max = report.runs.iter().map(|r| r.peers).max().unwrap_or(8) as f64;
        let n_min = report.runs.iter().map(|r| r.peers).min().unwrap_or(1) as f64;
        let b_max = report
            .runs
            .iter()
            .map(|r| r.bytes_per_round)
            .fold(1.0, f64::max);
        let b_min = report
            .runs
            .iter()
            .map(|r| r.bytes_per_round)
            .fold(f64::INFINITY, f64::min)
            .max(1.0);
        let mut chart = ChartBuilder::on(&left)
            .caption("bytes per peer per round", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (n_min * 0.8..n_max * 1.25).log_scale(),
                (b_min * 0.5..b_max * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("peers")
            .y_desc("bytes")
            .draw()?;
        let rounds_max = report
            .runs
            .iter()
            .filter_map(|r| r.rounds_to_target)
            .max()
            .unwrap_or(1) as f64;
        let mut rounds = ChartBuilder::on(&right)
            .caption("rounds to the target loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(
                (n_min * 0.8..n_max * 1.25).log_scale(),
                0.0..rounds_max * 1.2,
            )?;
        rounds
            .configure_mesh()
            .x_desc("peers")
            .y_desc("rounds")
            .draw()?;
        for (k, name) in names.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let mine: Vec<_> = report.runs.iter().filter(|r| &r.strategy == name).collect();
            let pts: Vec<(f64, f64)> = mine
                .iter()
                .map(|r| (r.peers as f64, r.bytes_per_round))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            let pts: Vec<(f64, f64)> = mine
                .iter()
                .filter_map(|r| Some((r.peers as f64, r.rounds_to_target? as f64)))
                .collect();
            rounds
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            rounds.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        rounds
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()?
        .write_image_data(&pixels)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
