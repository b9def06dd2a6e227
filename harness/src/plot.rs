//! `swarm-harness plot`: a report's validation loss vs samples (swarm and baseline) and bytes sent
//! per peer vs samples (swarm and dense fp32), side by side in one PNG.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use serde_json::Value;

/// Fonts tried for labels (Debian's fonts-dejavu-core, which `scripts/setup` installs).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no font for the plot's labels (install fonts-dejavu-core)"))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    // plotters keeps registered fonts for the life of the process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The series a plot needs, read from a report.
struct Series {
    title: String,
    swarm_val: Vec<(f64, f64)>,
    baseline_val: Vec<(f64, f64)>,
    baseline_label: &'static str,
    swarm_bytes: Vec<(f64, f64)>,
    dense_bytes: Vec<(f64, f64)>,
}

fn series(report: &Value) -> Result<Series> {
    let summary = &report["summary"];
    let peers = report["peers"]
        .as_array()
        .ok_or_else(|| anyhow!("the report has no peers"))?;
    let dense_step = num(&summary["dense_bytes_per_peer_per_step"]).unwrap_or(0.0);
    let h = num(&summary["local_steps"]).unwrap_or(1.0);
    let n = peers.len().max(1) as f64;
    // The swarm's validation curve: mean over peers per evaluated round, against all peers' samples.
    let mut by_round: std::collections::BTreeMap<u64, (f64, f64, usize)> = Default::default();
    let mut swarm_bytes = Vec::new();
    let mut dense_bytes = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let rows = p["rounds"].as_array().cloned().unwrap_or_default();
        let mut sent = 0.0;
        for (k, r) in rows.iter().enumerate() {
            let samples = num(&r["samples"]).unwrap_or(0.0);
            sent += num(&r["wire_bytes_up"]).unwrap_or(0.0);
            if i == 0 {
                swarm_bytes.push((samples * n, sent));
                dense_bytes.push((samples * n, dense_step * h * (k + 1) as f64));
            }
            if let (Some(round), Some(v)) = (r["round"].as_u64(), num(&r["val_loss"])) {
                let e = by_round.entry(round).or_insert((0.0, 0.0, 0));
                e.0 += samples;
                e.1 += v;
                e.2 += 1;
            }
        }
    }
    let swarm_val = by_round
        .values()
        .map(|&(s, v, c)| (s * n / c as f64, v / c as f64))
        .collect();
    let baseline_val = report["baseline"]["rounds"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| Some((num(&r["samples"])?, num(&r["val_loss"])?)))
                .collect()
        })
        .unwrap_or_default();
    let title = format!(
        "{}: {} peers, H = {}, bytes ÷{:.0} vs dense, samples to {:.2}: ×{}",
        report["scenario"]["name"].as_str().unwrap_or("?"),
        peers.len(),
        h,
        num(&summary["bytes_ratio_vs_dense"]).unwrap_or(0.0),
        num(&summary["target_val_loss"]).unwrap_or(0.0),
        num(&summary["samples_to_target_ratio"])
            .map(|r| format!("{r:.2}"))
            .unwrap_or_else(|| "n/a".into()),
    );
    // Reports written before the baseline had a method trained the dense swarm.
    let baseline_label = match report["scenario"]["baseline_method"].as_str() {
        Some("data_parallel") => "data-parallel (dense fp32 all-reduce)",
        _ => "dense swarm (same mode, no codec)",
    };
    Ok(Series {
        title,
        swarm_val,
        baseline_val,
        baseline_label,
        swarm_bytes,
        dense_bytes,
    })
}

fn max_x(sets: &[&[(f64, f64)]]) -> f64 {
    sets.iter()
        .flat_map(|s| s.iter().map(|p| p.0))
        .fold(1.0, f64::max)
}

/// Draws `report` (a JSON report) to `out` (PNG).
pub fn plot(report: &Path, out: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", report.display()))?;
    let s = series(&value)?;
    if s.swarm_val.is_empty() && s.swarm_bytes.is_empty() {
        bail!("{} has no rounds to plot", report.display());
    }
    register_font()?;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", out.display());
    const W: u32 = 1400;
    const H: u32 = 560;
    let mut pixels = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (W, H)).into_drawing_area();
        draw(&root, &s, &err)?;
        root.present().map_err(|e| err(&e))?;
    }
    write_png(out, &pixels, W, H)
}

fn write_png(out: &Path, rgb: &[u8], w: u32, h: u32) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("writing {}", out.display()))?;
    writer
        .write_image_data(rgb)
        .with_context(|| format!("writing {}", out.display()))?;
    writer
        .finish()
        .with_context(|| format!("writing {}", out.display()))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw(
    root: &Area<'_>,
    s: &Series,
    err: &dyn Fn(&dyn std::fmt::Display) -> anyhow::Error,
) -> Result<()> {
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(&s.title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(700);

    let xs = max_x(&[&s.swarm_val, &s.baseline_val]);
    let (lo, hi) = s
        .swarm_val
        .iter()
        .chain(&s.baseline_val)
        .fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let (lo, hi) = if lo < hi {
        (lo - 0.05, hi + 0.05)
    } else {
        (0.0, 6.0)
    };
    let mut chart = ChartBuilder::on(&left)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .caption("validation loss vs samples", ("sans-serif", 18))
        .build_cartesian_2d(0.0..xs, lo..hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("samples (all peers)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("nats / byte")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            s.swarm_val.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("gradswarm (mean over peers)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if !s.baseline_val.is_empty() {
        chart
            .draw_series(LineSeries::new(
                s.baseline_val.iter().copied(),
                RED.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(s.baseline_label)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    let xs = max_x(&[&s.swarm_bytes, &s.dense_bytes]);
    let top = s
        .dense_bytes
        .iter()
        .chain(&s.swarm_bytes)
        .map(|p| p.1)
        .fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .caption("bytes sent by one peer vs samples", ("sans-serif", 18))
        .build_cartesian_2d(0.0..xs, (1e3..top * 2.0).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("samples (all peers)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("bytes (log)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            s.swarm_bytes.iter().copied().filter(|p| p.1 >= 1e3),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("gradswarm, at the transport")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            s.dense_bytes.iter().copied().filter(|p| p.1 >= 1e3),
            RED.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("dense fp32 (4 bytes × parameters per step)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}
