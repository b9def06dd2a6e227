//! A published run as the node sees it: the manifest made from a config and its data
//! (`gradswarm publish`), the settings each volunteer still chooses, and fetching the run from
//! one address into a run folder (`gradswarm join ADDR`).

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use gradswarm_core::wire::PIECE_BYTES;
use gradswarm_core::{Manifest, RunFiles};
use gradswarm_net::native::{RUN_DATA_FILE, RUN_MANIFEST_FILE};
use gradswarm_net::{NetError, NetHandle, PeerId};
use indicatif::{ProgressBar, ProgressStyle};
use toml::Value;

use crate::config::NodeConfig;

/// The config keys that are each volunteer's own choice: they stay out of the manifest, and a
/// volunteer's config may set them whatever the run says. Every other key is the run's.
pub const LOCAL_KEYS: &[&str] = &[
    "run.out",
    "run.device",
    "train.threads",
    "data.path",
    "swarm.rounds",
    "swarm.checkpoint_every",
    "swarm.eval_every",
    "swarm.listen",
    "swarm.bootstrap",
    "swarm.mdns",
];

/// How long a joiner keeps asking the address it was given for the run's manifest.
const MANIFEST_PATIENCE: Duration = Duration::from_secs(30);

/// `cfg` as a TOML table.
fn table_of(cfg: &NodeConfig) -> anyhow::Result<toml::Table> {
    Ok(toml::Table::try_from(cfg)?)
}

/// The value at `section.key` of `table`, if any.
fn at<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a Value> {
    let (section, key) = dotted.split_once('.')?;
    table.get(section)?.as_table()?.get(key)
}

/// The run's settings in `cfg`: every key but the [`LOCAL_KEYS`], as TOML.
pub fn settings_of(cfg: &NodeConfig) -> anyhow::Result<String> {
    let mut table = table_of(cfg)?;
    for dotted in LOCAL_KEYS {
        if let Some((section, key)) = dotted.split_once('.')
            && let Some(Value::Table(t)) = table.get_mut(section)
        {
            t.remove(key);
        }
    }
    Ok(toml::to_string(&table)?)
}

/// The run `cfg` defines, with the data at its `data.path`: what `gradswarm publish` writes.
pub fn files_of(cfg: &NodeConfig) -> anyhow::Result<RunFiles> {
    let data = std::fs::read(&cfg.data.path)
        .with_context(|| format!("reading data.path {}", cfg.data.path.display()))?;
    let manifest = Manifest::new(&cfg.run.id, settings_of(cfg)?, &data)
        .with_context(|| format!("the run {:?}", cfg.run.id))?;
    Ok(RunFiles::new(manifest, data)?)
}

/// Runs `gradswarm publish`: writes the run folder `out` of the config at `config` (the default
/// job's with none) and says how to serve it.
pub fn publish(config: Option<&Path>, out: &Path) -> anyhow::Result<()> {
    let cfg = crate::config::load(config)?;
    let files = files_of(&cfg)?;
    gradswarm_net::native::save_run(out, &files)?;
    let m = files.manifest();
    println!("run {}", m.run_id());
    eprintln!(
        "{} pieces, {} bytes of data, in {}; serve it with: gradswarm-bootstrap --run {}",
        m.pieces.len(),
        m.data_bytes,
        out.display(),
        out.display()
    );
    Ok(())
}

/// The config a volunteer runs `manifest` with: the run's settings, and the [`LOCAL_KEYS`] of
/// `local`.
pub fn config_of(manifest: &Manifest, local: &NodeConfig) -> anyhow::Result<NodeConfig> {
    let mut table: toml::Table = toml::from_str(&manifest.settings)
        .with_context(|| format!("the settings of run {}", manifest.run_id()))?;
    let mine = table_of(local)?;
    for dotted in LOCAL_KEYS {
        if let (Some((section, key)), Some(value)) = (dotted.split_once('.'), at(&mine, dotted)) {
            table
                .entry(section)
                .or_insert_with(|| Value::Table(toml::Table::new()))
                .as_table_mut()
                .context("a settings section that is not a table")?
                .insert(key.to_string(), value.clone());
        }
    }
    let cfg: NodeConfig = table
        .try_into()
        .with_context(|| format!("the settings of run {}", manifest.run_id()))?;
    cfg.validate()
        .with_context(|| format!("the settings of run {}", manifest.run_id()))?;
    Ok(cfg)
}

/// Checks that a volunteer's config file `text` only narrows what is theirs to choose: every key
/// it sets outside the [`LOCAL_KEYS`] must say what `run` (the run's config) says.
pub fn check_narrows(text: &str, run: &NodeConfig) -> anyhow::Result<()> {
    let mine: toml::Table = toml::from_str(text)?;
    let theirs = table_of(run)?;
    for (section, keys) in &mine {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for (key, value) in keys {
            let dotted = format!("{section}.{key}");
            if LOCAL_KEYS.contains(&dotted.as_str()) {
                continue;
            }
            let run_value = at(&theirs, &dotted);
            if !run_value.is_some_and(|v| same(v, value)) {
                let says = run_value.map_or("nothing".to_string(), |v| v.to_string());
                bail!(
                    "your config sets {dotted} = {value}, but run {} says {says}: a \
                     volunteer's config may only set {} (remove {dotted}, or join another run)",
                    run.run.id,
                    LOCAL_KEYS.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// Whether two TOML values say the same: numbers by value (`1` and `1.0`), tables key by key
/// where `a` has the key (a table the volunteer wrote may leave keys to the run).
fn same(run: &Value, mine: &Value) -> bool {
    match (run, mine) {
        (Value::Integer(a), Value::Float(b)) | (Value::Float(b), Value::Integer(a)) => {
            *a as f64 == *b
        }
        (Value::Table(a), Value::Table(b)) => {
            b.iter().all(|(k, v)| a.get(k).is_some_and(|x| same(x, v)))
        }
        _ => run == mine,
    }
}

/// A short-lived node that only asks (`Role::Client`), dialling `addr`, its driver running; shut
/// it down and await the task when done.
pub async fn client(
    addr: &gradswarm_net::Multiaddr,
) -> anyhow::Result<(NetHandle, tokio::task::JoinHandle<()>)> {
    let (net, _events, driver) = gradswarm_net::native::build(
        gradswarm_net::NetConfig::client(vec![addr.clone()]),
        gradswarm_net::Keypair::generate_ed25519(),
    )
    .await?;
    Ok((net, tokio::spawn(driver.run())))
}

/// Asks `server` for the run's manifest until it answers (it may not be reachable at once):
/// `Err` with its reason when it answers without one (it publishes no run).
pub async fn fetch_manifest(
    net: &NetHandle,
    server: PeerId,
) -> anyhow::Result<Result<Manifest, String>> {
    let started = std::time::Instant::now();
    loop {
        match gradswarm_net::run::fetch_manifest(net, server).await {
            Ok(m) => return Ok(Ok(m)),
            // It answered: asking again will not change that.
            Err(NetError::Refused { reason, .. }) => return Ok(Err(reason)),
            Err(e) if started.elapsed() < MANIFEST_PATIENCE => {
                tracing::debug!("manifest from {server}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("no manifest from {server} in {MANIFEST_PATIENCE:?}: {e}"),
        }
    }
}

/// The pieces of `manifest` that `old` (what a previous fetch left) lacks or holds wrong.
fn missing_pieces(manifest: &Manifest, old: &[u8]) -> Vec<u32> {
    (0..manifest.pieces.len() as u32)
        .filter(|&i| {
            let start = i as usize * PIECE_BYTES;
            let piece = old.get(start..(start + PIECE_BYTES).min(old.len()));
            piece.is_none_or(|p| manifest.check_piece(i, p).is_err())
        })
        .collect()
}

/// Fetches `manifest`'s data from `server` into the run folder `dir`, keeping the pieces a
/// previous fetch left there that match, with a progress bar; returns the run's files, checked.
pub async fn fetch_into(
    net: &NetHandle,
    server: PeerId,
    manifest: &Manifest,
    dir: &Path,
) -> anyhow::Result<RunFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest_path = dir.join(RUN_MANIFEST_FILE);
    let data_path = dir.join(RUN_DATA_FILE);
    // A folder of another run starts over; one of this run keeps what matches.
    let same_run = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| Manifest::from_bytes(&b).ok())
        .is_some_and(|m| m == *manifest);
    let old = if same_run {
        std::fs::read(&data_path).unwrap_or_default()
    } else {
        Vec::new()
    };
    let wanted = missing_pieces(manifest, &old);
    std::fs::write(&manifest_path, manifest.to_bytes())
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&data_path)
        .with_context(|| format!("opening {}", data_path.display()))?;
    file.set_len(manifest.data_bytes)
        .with_context(|| format!("sizing {}", data_path.display()))?;
    let bar = ProgressBar::new(manifest.data_bytes);
    bar.set_style(
        ProgressStyle::with_template("data {bar:30} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.inc(
        manifest.data_bytes
            - wanted
                .iter()
                .map(|&i| manifest.piece_len(i).unwrap_or(0) as u64)
                .sum::<u64>(),
    );
    let stats = gradswarm_net::run::fetch_pieces(net, &[server], manifest, &wanted, |i, bytes| {
        file.seek(SeekFrom::Start(i as u64 * PIECE_BYTES as u64))
            .and_then(|_| file.write_all(bytes))
            .map_err(|e| e.to_string())?;
        bar.inc(bytes.len() as u64);
        Ok(())
    })
    .await
    .with_context(|| format!("fetching the data of run {}", manifest.run_id()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", data_path.display()))?;
    bar.finish_and_clear();
    if stats.corrupt > 0 {
        eprintln!(
            "{} pieces arrived corrupted and were fetched again",
            stats.corrupt
        );
    }
    Ok(gradswarm_net::native::load_run(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn organiser() -> NodeConfig {
        let mut cfg: NodeConfig =
            toml::from_str("[run]\nid = \"tiny\"\n[swarm]\ntau_max = 6\nalpha = 1.0\n")
                .expect("parses");
        cfg.swarm.listen = vec!["/ip4/10.0.0.1/tcp/4001".into()];
        cfg
    }

    #[test]
    fn the_manifest_carries_the_runs_settings_not_the_organisers_own() {
        let cfg = organiser();
        let settings = settings_of(&cfg).expect("settings");
        assert!(settings.contains("tau_max = 6"), "{settings}");
        assert!(!settings.contains("10.0.0.1"), "{settings}");
        let manifest = Manifest::new("tiny", settings, b"some text").expect("manifest");
        let mut mine = NodeConfig::default();
        mine.run.out = "elsewhere".into();
        mine.swarm.rounds = 7;
        let joined = config_of(&manifest, &mine).expect("config");
        assert_eq!(joined.swarm.tau_max, 6);
        assert_eq!(joined.run.id, "tiny");
        assert_eq!(joined.run.out, Path::new("elsewhere"));
        assert_eq!(joined.swarm.rounds, 7);
        assert_eq!(joined.swarm.listen, NodeConfig::default().swarm.listen);
        // The same config gives the same run, whoever makes it.
        let again = Manifest::new("tiny", settings_of(&joined).expect("s"), b"some text");
        assert_eq!(again.expect("m").run_id(), manifest.run_id());
    }

    #[test]
    fn an_interrupted_fetch_resumes_with_the_pieces_it_has() {
        let data: Vec<u8> = (0..PIECE_BYTES * 3 + 7).map(|i| (i % 241) as u8).collect();
        let m = Manifest::new("r", String::new(), &data).expect("manifest");
        assert_eq!(missing_pieces(&m, &[]), vec![0, 1, 2, 3]);
        assert!(missing_pieces(&m, &data).is_empty());
        // Stopped after two pieces, the rest of the file zeros (as `set_len` leaves it).
        let mut partial = data.clone();
        partial[2 * PIECE_BYTES..].fill(0);
        assert_eq!(missing_pieces(&m, &partial), vec![2, 3]);
        // A piece damaged on disk is fetched again.
        partial[5] ^= 1;
        assert_eq!(missing_pieces(&m, &partial), vec![0, 2, 3]);
    }

    #[test]
    fn a_volunteer_may_narrow_only_what_is_theirs() {
        let run = organiser();
        check_narrows(
            "[run]\nout = \"x\"\ndevice = \"cpu\"\n[swarm]\nrounds = 3\ntau_max = 6\nalpha = 1\n",
            &run,
        )
        .expect("local keys and the run's own values are fine");
        let err = check_narrows("[swarm]\ntau_max = 5\n", &run)
            .expect_err("another tau_max")
            .to_string();
        assert!(err.contains("swarm.tau_max"), "{err}");
        let err = check_narrows(
            "[swarm]\naggregation = { rule = \"trimmed_mean\", trim = 1 }\n",
            &run,
        )
        .expect_err("another rule")
        .to_string();
        assert!(err.contains("swarm.aggregation"), "{err}");
        let err = check_narrows("[run]\nid = \"mine\"\n", &run)
            .expect_err("another run")
            .to_string();
        assert!(err.contains("run.id"), "{err}");
    }
}
