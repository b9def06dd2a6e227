//! `gradswarm`: the desktop node: `train` (the default job, alone), `join` (a swarm), `eval`,
//! `sample` and `bench`.

mod config;
mod join;
mod run;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use gradswarm_core::shard::ShardKey;
use gradswarm_model::data::{text_windows, validation_batches};
use gradswarm_model::{
    BackendKind, Checkpoint, Corpus, DeviceChoice, SelectedDevice, TrainConfig, Trainer,
    checkpoint, device,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Train one neural network together, from desktops and browser tabs.
#[derive(Parser, Debug)]
#[command(name = "gradswarm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train the model of a config alone on this machine (the default job with no config).
    Train {
        /// TOML config (see configs/default.toml); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Optimizer steps.
        #[arg(long)]
        steps: Option<u64>,
        /// Output folder for checkpoints.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from OUT/checkpoint.safetensors.
        #[arg(long)]
        resume: bool,
        /// Where to train.
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
    },
    /// Join a swarm: train the run's model together with other peers.
    Join {
        /// Bootstrap multiaddrs (with /p2p/<id>); none: find peers on the LAN with mDNS.
        addrs: Vec<String>,
        /// TOML config (see configs/default.toml, `[swarm]`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output folder for checkpoints and this peer's identity key.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where to train.
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
        /// Addresses to listen on (repeatable), replacing the config's `swarm.listen`.
        #[arg(long)]
        listen: Vec<String>,
        /// Stop after this many rounds (replacing `swarm.rounds`; 0: until Ctrl-C).
        #[arg(long)]
        rounds: Option<u64>,
        /// Wait for this many other peers before the first round (a swarm that starts together).
        #[arg(long, default_value_t = 0)]
        min_peers: usize,
        /// Join only this run (the id `gradswarm publish` printed): a node that publishes any
        /// other, or none, is refused.
        #[arg(long)]
        expect_run: Option<String>,
        /// Serve Prometheus metrics (libp2p's and the peer's) at http://ADDR/metrics.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Train at most this share of the time, in (0, 1]: lend part of the machine. (SIGUSR1
        /// pauses and resumes the peer without it leaving.)
        #[arg(long, default_value_t = 1.0)]
        duty_cycle: f64,
        /// CPU threads to train on (replacing `train.threads`): lend only part of the cores.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Publish a run: write the manifest of a config and its data (the run folder) that
    /// `gradswarm-bootstrap --run DIR` serves to volunteers, who then join with its address alone.
    Publish {
        /// TOML config defining the run (its `data.path` is the data set).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The run folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// The run at a glance: listen to its heartbeats through a node's address, then print the
    /// peers online (round, loss, throughput) and the run's summary.
    Status(status::WatchArgs),
    /// Who contributed what: listen to the run's heartbeats, then print each peer's credit (the
    /// samples of its updates that counted in the others' aggregates, as they attest it) beside
    /// what it claims, and the bytes it says it moved.
    Credit(status::WatchArgs),
    /// Print this peer's id (creating its identity key if there is none), for a private run's
    /// `swarm.allow` list.
    Id {
        /// TOML config whose `run.out` holds the key.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output folder holding the identity key (as for `join`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Loss of a checkpoint on a text file, as one JSON object.
    Eval {
        /// The checkpoint.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The text to score.
        #[arg(long)]
        text: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceArg,
    },
    /// Generate text from a checkpoint.
    Sample {
        /// The checkpoint.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Text to continue.
        #[arg(long, default_value = "")]
        prompt: String,
        /// Bytes to generate.
        #[arg(long, default_value_t = 300)]
        bytes: usize,
        /// Sampling temperature (0: greedy).
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to run.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceArg,
    },
    /// Training throughput (tokens/s) on the CPU backend and on wgpu, in one run, as JSON.
    Bench {
        /// TOML config for the model and batch.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Timed steps per backend (after two warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: u64,
        /// Bench one backend only (`gpu` or `cpu`); `auto` (the default) benches both.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceArg,
    },
}

/// `--device` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DeviceArg {
    Auto,
    Gpu,
    Cpu,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Gpu => DeviceChoice::Gpu,
            DeviceArg::Cpu => DeviceChoice::Cpu,
        }
    }
}

/// See node/Cargo.toml: the CPU backend's buffers are reused instead of mapped and unmapped per op.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its v3 `mimalloc.h`, which libmimalloc-sys builds).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Never hand freed pages back to the kernel: the CPU backend frees and reallocates the same
    // activation sizes every step, and each purge made the kernel zero those pages again on the
    // next touch (clear_page: 7% of a step). Measured 4-7% more tokens/s; memory stays ≈ peak.
    // SAFETY: called before any other thread exists, as mimalloc's option setters require.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libp2p_kad=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train {
            config,
            steps,
            out,
            resume,
            device,
        } => train(
            config.as_deref(),
            steps,
            out,
            resume,
            device.map(Into::into),
        ),
        Command::Join {
            addrs,
            config,
            out,
            device,
            listen,
            rounds,
            min_peers,
            expect_run,
            metrics,
            duty_cycle,
            threads,
        } => join::join(join::JoinArgs {
            threads,
            min_peers,
            expect_run,
            metrics,
            duty_cycle,
            config,
            addrs,
            out,
            device: device.map(Into::into),
            listen,
            rounds,
        }),
        Command::Id { config, out } => join::print_id(config.as_deref(), out),
        Command::Status(args) => status::status(args),
        Command::Credit(args) => status::credit(args),
        Command::Publish { config, out } => run::publish(config.as_deref(), &out),
        Command::Eval {
            checkpoint,
            text,
            device,
        } => eval(&checkpoint, &text, device.into()),
        Command::Sample {
            checkpoint,
            prompt,
            bytes,
            temperature,
            seed,
            device,
        } => sample(
            &checkpoint,
            &prompt,
            bytes,
            temperature,
            seed,
            device.into(),
        ),
        Command::Bench {
            config,
            steps,
            device,
        } => bench(config.as_deref(), steps, device.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Picks the device and tells the user which one it is, and why the CPU when it is.
fn pick_device(choice: DeviceChoice) -> anyhow::Result<SelectedDevice> {
    let selected = device::select(choice)?;
    eprintln!("device: {}", selected.summary);
    if let Some(reason) = &selected.fallback_reason {
        eprintln!("{reason}");
    }
    Ok(selected)
}

fn train(
    config: Option<&Path>,
    steps: Option<u64>,
    out: Option<PathBuf>,
    resume: bool,
    device: Option<DeviceChoice>,
) -> anyhow::Result<()> {
    let mut cfg = crate::config::load(config)?;
    if let Some(s) = steps {
        cfg.train.steps = s;
    }
    if let Some(o) = out {
        cfg.run.out = o;
    }
    if let Some(d) = device {
        cfg.run.device = d;
    }
    let corpus = Corpus::load(&cfg.data, cfg.model.context)?;
    let ckpt_path = cfg.run.out.join("checkpoint.safetensors");
    let selected = pick_device(cfg.run.device)?;
    let mut trainer = if resume {
        let ckpt = Checkpoint::load(&ckpt_path).context("--resume")?;
        if ckpt.meta.run_id != cfg.run.id {
            bail!(
                "{} belongs to run {:?}, not {:?}",
                ckpt_path.display(),
                ckpt.meta.run_id,
                cfg.run.id
            );
        }
        if ckpt.meta.model_config != cfg.model {
            bail!(
                "{} holds a model of another shape than the config's [model]",
                ckpt_path.display()
            );
        }
        let t = ckpt.into_trainer(&ckpt_path, &cfg.train, &selected.device)?;
        eprintln!("resumed {} at step {}", ckpt_path.display(), t.step());
        t
    } else {
        Trainer::new(&cfg.model, &cfg.train, &selected.device)?
    };
    eprintln!(
        "model: {} parameters ({} layers, width {}, {} heads, context {}); {} training bytes, {} validation bytes",
        trainer.num_params(),
        cfg.model.layers,
        cfg.model.d_model,
        cfg.model.heads,
        cfg.model.context,
        corpus.train().len(),
        corpus.validation().len()
    );
    let me = ShardKey::of(b"local");
    let sampler = corpus.sampler(me, &[me], 0, cfg.train.seed);
    let val = validation_batches(
        &corpus,
        cfg.train.eval_batches,
        cfg.train.batch_size,
        cfg.model.context,
    );
    let total = cfg.train.steps;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} (ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_position(trainer.step());
    let started = Instant::now();
    let start_step = trainer.step();
    let (mut tokens, mut last_val) = (0usize, None::<f64>);
    while trainer.step() < total {
        let batch = sampler.batch(trainer.step(), cfg.train.batch_size, cfg.model.context);
        let report = trainer.train_step(&batch)?;
        tokens += report.tokens;
        let step = trainer.step();
        let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let val_text = last_val.map_or(String::new(), |v| format!(" val {v:.3}"));
        bar.set_message(format!(
            "loss {:.3}{val_text} lr {:.1e} {:.0} tok/s",
            report.loss, report.lr, rate
        ));
        bar.set_position(step);
        if cfg.train.eval_every > 0 && step % cfg.train.eval_every == 0 && step < total {
            let v = trainer.evaluate(&val)?;
            last_val = Some(v);
            let line = format!(
                "step {step}: train loss {:.4}, validation loss {v:.4} nats/byte, {rate:.0} tok/s, {:.0} s",
                report.loss,
                started.elapsed().as_secs_f64()
            );
            // A hidden bar (stderr is not a terminal: logs, CI) would swallow the line.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        if cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0 && step < total
        {
            checkpoint::save(&ckpt_path, &trainer, &cfg.run.id, 0, &[])?;
        }
    }
    bar.finish_and_clear();
    let val_loss = trainer.evaluate(&val)?;
    checkpoint::save(&ckpt_path, &trainer, &cfg.run.id, 0, &[])?;
    let secs = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "steps": trainer.step(),
        "steps_this_run": trainer.step() - start_step,
        "seconds": (secs * 10.0).round() / 10.0,
        "tokens_per_second": (tokens as f64 / secs.max(1e-9)).round(),
        "val_loss_nats_per_byte": val_loss,
        "val_bits_per_byte": val_loss / std::f64::consts::LN_2,
        "backend": match selected.kind { BackendKind::Wgpu => "wgpu", BackendKind::Cpu => "cpu" },
        "checkpoint": ckpt_path,
    });
    println!("{summary}");
    Ok(())
}

fn load_trainer(path: &Path, choice: DeviceChoice) -> anyhow::Result<Trainer> {
    let ckpt = Checkpoint::load(path)?;
    let selected = pick_device(choice)?;
    Ok(ckpt.into_trainer(path, &ckpt.meta.train_config, &selected.device)?)
}

fn eval(checkpoint: &Path, text: &Path, choice: DeviceChoice) -> anyhow::Result<()> {
    let bytes = std::fs::read(text).with_context(|| format!("reading {}", text.display()))?;
    if bytes.len() < 2 {
        bail!(
            "{} has fewer than 2 bytes: nothing to predict",
            text.display()
        );
    }
    let trainer = load_trainer(checkpoint, choice)?;
    let windows = text_windows(&bytes, trainer.model_config().context, 32);
    let loss = trainer.evaluate(&windows)?;
    let out = serde_json::json!({
        "loss_nats_per_byte": loss,
        "bits_per_byte": loss / std::f64::consts::LN_2,
        "bytes": bytes.len(),
    });
    println!("{out}");
    Ok(())
}

fn sample(
    checkpoint: &Path,
    prompt: &str,
    bytes: usize,
    temperature: f64,
    seed: u64,
    choice: DeviceChoice,
) -> anyhow::Result<()> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        bail!("--temperature must be a non-negative number");
    }
    let trainer = load_trainer(checkpoint, choice)?;
    let out = trainer.sample(prompt.as_bytes(), bytes, temperature, seed)?;
    println!("{prompt}{}", String::from_utf8_lossy(&out));
    Ok(())
}

fn bench(config: Option<&Path>, steps: u64, only: DeviceChoice) -> anyhow::Result<()> {
    let cfg = crate::config::load(config)?;
    let corpus = Corpus::load(&cfg.data, cfg.model.context)?;
    let me = ShardKey::of(b"bench");
    let sampler = corpus.sampler(me, &[me], 0, cfg.train.seed);
    let mut results = serde_json::Map::new();
    // wgpu first: burn initialises a wgpu runtime once, before anything else touches it. The CPU
    // backend runs twice when train.threads > 1: as configured, and on one thread as the baseline.
    let single = TrainConfig {
        threads: 1,
        ..cfg.train.clone()
    };
    let mut targets = vec![
        ("wgpu", DeviceChoice::Gpu, &cfg.train),
        ("cpu", DeviceChoice::Cpu, &cfg.train),
    ];
    if cfg.train.threads > 1 {
        targets.push(("cpu_1_thread", DeviceChoice::Cpu, &single));
    }
    for (name, choice, train) in targets {
        if only != DeviceChoice::Auto && only != choice {
            continue;
        }
        let selected = match device::select(choice) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: skipped ({e})");
                results.insert(name.into(), serde_json::json!({"skipped": e.to_string()}));
                continue;
            }
        };
        eprintln!("{name}: {}", selected.summary);
        let mut trainer = Trainer::new(&cfg.model, train, &selected.device)?;
        for s in 0..2 {
            trainer.train_step(&sampler.batch(s, train.batch_size, cfg.model.context))?;
        }
        let t0 = Instant::now();
        let mut tokens = 0;
        for s in 0..steps {
            tokens += trainer
                .train_step(&sampler.batch(2 + s, train.batch_size, cfg.model.context))?
                .tokens;
        }
        let rate = tokens as f64 / t0.elapsed().as_secs_f64();
        eprintln!("{name}: {rate:.0} tokens/s");
        results.insert(
            name.into(),
            serde_json::json!({"adapter": selected.summary, "tokens_per_second": rate.round(), "steps": steps, "threads": train.threads}),
        );
    }
    let rate = |k: &str| results.get(k).and_then(|v| v["tokens_per_second"].as_f64());
    let ratio = |a: f64, b: f64| serde_json::json!((a / b * 100.0).round() / 100.0);
    let (wgpu, cpu, one) = (rate("wgpu"), rate("cpu"), rate("cpu_1_thread"));
    if let (Some(g), Some(c)) = (wgpu, cpu) {
        results.insert("wgpu_over_cpu".into(), ratio(g, c));
    }
    if let (Some(c), Some(one)) = (cpu, one) {
        results.insert("cpu_threads_speedup".into(), ratio(c, one));
    }
    println!("{}", serde_json::Value::Object(results));
    Ok(())
}
