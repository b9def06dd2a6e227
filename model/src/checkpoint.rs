//! Checkpoints: safetensors files that Python's `safetensors` loads, written atomically.
//!
//! Tensors: every parameter under its name (see [`crate::params`]); the AdamW moments as
//! `optimizer.exp_avg.<name>` and `optimizer.exp_avg_sq.<name>`; extra f32 vectors (the peer's
//! error-feedback residual, the outer momentum) as `state.<key>`. Metadata (all strings):
//! `format` = `gradswarm-checkpoint/1`, `run_id`, `step`, `round`, `optimizer_steps`,
//! `model_config` and `train_config` (JSON), `model_hash` (hex).
//!
//! A save writes a temp file `<file>.<random>.tmp` in the same folder, fsyncs it, renames it over
//! `<file>` and fsyncs the folder: a process killed at any instant leaves either the old file or the new one, whole.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::adamw::{AdamW, Moments};
use crate::config::{ModelConfig, TrainConfig};
use crate::error::ModelError;
use crate::trainer::Trainer;

/// The format tag this build writes and reads.
pub const FORMAT: &str = "gradswarm-checkpoint/1";

/// Fault injection for the crash-safety test: with `GRADSWARM_FAULT=hang-mid-checkpoint`, a save
/// stops halfway through writing its temp file, says so on stderr, and waits to be killed.
pub const FAULT_ENV: &str = "GRADSWARM_FAULT";

/// Everything a checkpoint holds besides the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointMeta {
    /// The run.
    pub run_id: String,
    /// Optimizer steps done.
    pub step: u64,
    /// Swarm round (0 for a lone peer).
    pub round: u64,
    /// The model's shape.
    pub model_config: ModelConfig,
    /// The training configuration the run used.
    pub train_config: TrainConfig,
}

/// A checkpoint read from disk.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// AdamW updates applied (bias correction).
    pub optimizer_steps: u64,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

fn err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Saves `trainer` (parameters, optimizer, step) and `extra` vectors to `path`, atomically.
pub fn save(
    path: &Path,
    trainer: &Trainer,
    run_id: &str,
    round: u64,
    extra: &[(&str, &[f32])],
) -> Result<(), ModelError> {
    let flat = trainer.parameters()?;
    let (optimizer_steps, moments) = trainer.optimizer_state()?;
    let read = Read {
        flat: &flat,
        optimizer_steps,
        moments: &moments,
    };
    write_atomically(path, &encode(path, trainer, &read, run_id, round, extra)?)
}

/// [`save`]'s bytes, read from the device without blocking on it: a browser tab keeps them
/// (IndexedDB) and resumes from them as the node does from its file.
pub async fn to_bytes_async(
    trainer: &Trainer,
    run_id: &str,
    round: u64,
    extra: &[(&str, &[f32])],
) -> Result<Vec<u8>, ModelError> {
    let flat = trainer.parameters_async().await?;
    let (optimizer_steps, moments) = trainer.optimizer_state_async().await?;
    let read = Read {
        flat: &flat,
        optimizer_steps,
        moments: &moments,
    };
    encode(Path::new(IN_MEMORY), trainer, &read, run_id, round, extra)
}

/// What errors call a checkpoint that is not a file.
const IN_MEMORY: &str = "<checkpoint in memory>";

/// A trainer's state as read from its device.
struct Read<'a> {
    flat: &'a [f32],
    optimizer_steps: u64,
    /// The AdamW moments under their checkpoint names (`optimizer.exp_avg.<name>`, …).
    moments: &'a [(String, Vec<f32>)],
}

/// The safetensors bytes of a checkpoint (`path` only names it in errors).
fn encode(
    path: &Path,
    trainer: &Trainer,
    read: &Read<'_>,
    run_id: &str,
    round: u64,
    extra: &[(&str, &[f32])],
) -> Result<Vec<u8>, ModelError> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut shapes = BTreeMap::new();
    for spec in trainer.layout() {
        owned.push((
            spec.name.clone(),
            spec.shape.clone(),
            f32_bytes(&read.flat[spec.offset..spec.offset + spec.len()]),
        ));
        shapes.insert(spec.name, spec.shape);
    }
    for (name, values) in read.moments {
        let param = name
            .strip_prefix("optimizer.exp_avg_sq.")
            .or_else(|| name.strip_prefix("optimizer.exp_avg."));
        let shape = param
            .and_then(|p| shapes.get(p))
            .ok_or_else(|| err(path, format!("optimizer state {name} of no parameter")))?;
        owned.push((name.clone(), shape.clone(), f32_bytes(values)));
    }
    for (key, values) in extra {
        owned.push((
            format!("state.{key}"),
            vec![values.len()],
            f32_bytes(values),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| err(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("run_id", run_id.to_string()),
        ("step", trainer.step().to_string()),
        ("round", round.to_string()),
        ("optimizer_steps", read.optimizer_steps.to_string()),
        ("model_config", to_json(trainer.model_config())),
        ("train_config", to_json(trainer.config())),
        ("model_hash", hex(&trainer.model_config().hash())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))
}

/// A config as JSON for the metadata (plain structs of numbers and strings always serialize).
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` through a synced temp file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // Named after the checkpoint so that a leftover of a killed save is recognisable; tempfile
    // removes it on every error (a full disk, say), so a failed save leaves nothing behind.
    let mut prefix = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(io(&dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let half = bytes.len() / 2;
    tmp.write_all(&bytes[..half]).map_err(io(&tmp_path))?;
    if std::env::var(FAULT_ENV).as_deref() == Ok("hang-mid-checkpoint") {
        tmp.flush().map_err(io(&tmp_path))?;
        eprintln!(
            "fault injection: checkpoint write paused halfway through {}",
            tmp_path.display()
        );
        loop {
            std::thread::park();
        }
    }
    tmp.write_all(&bytes[half..]).map_err(io(&tmp_path))?;
    tmp.as_file().sync_all().map_err(io(&tmp_path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Checkpoint {
    /// Reads and checks a checkpoint file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        Self::parse(&bytes, path)
    }

    /// Reads and checks a checkpoint's bytes (kept elsewhere than in a file: a browser tab's).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        Self::parse(bytes, Path::new(IN_MEMORY))
    }

    /// Checks `bytes`, read from `path` (named in errors).
    fn parse(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| err(path, format!("not a readable safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| err(path, format!("not a readable safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k).cloned().ok_or_else(|| {
                err(
                    path,
                    format!("metadata has no {k:?}: not a gradswarm checkpoint"),
                )
            })
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(err(path, format!("format {format:?}, expected {FORMAT:?}")));
        }
        let num = |k: &str| -> Result<u64, ModelError> {
            get(k)?
                .parse()
                .map_err(|_| err(path, format!("metadata {k:?} is not a number")))
        };
        let model_config: ModelConfig = serde_json::from_str(&get("model_config")?)
            .map_err(|e| err(path, format!("model_config: {e}")))?;
        model_config
            .validate()
            .map_err(|e| err(path, e.to_string()))?;
        let train_config: TrainConfig = serde_json::from_str(&get("train_config")?)
            .map_err(|e| err(path, format!("train_config: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(err(
                    path,
                    format!("tensor {name} is {:?}, expected F32", view.dtype()),
                ));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Self {
            meta: CheckpointMeta {
                run_id: get("run_id")?,
                step: num("step")?,
                round: num("round")?,
                model_config,
                train_config,
            },
            optimizer_steps: num("optimizer_steps")?,
            tensors,
        })
    }

    /// An extra state vector saved under `state.<key>`, if present.
    pub fn state(&self, key: &str) -> Option<&[f32]> {
        self.tensors
            .get(&format!("state.{key}"))
            .map(|(_, v)| v.as_slice())
    }

    /// Builds a trainer on `device` holding this checkpoint's parameters, optimizer and step.
    /// `train_config` may differ from the saved one (e.g. more steps); the model shape may not.
    pub fn into_trainer(
        &self,
        path: &Path,
        train_config: &TrainConfig,
        device: &Device,
    ) -> Result<Trainer, ModelError> {
        let mut trainer = Trainer::new(&self.meta.model_config, train_config, device)?;
        let layout = trainer.layout();
        let mut flat = vec![0.0f32; trainer.num_params()];
        let mut optimizer = AdamW::new(train_config);
        optimizer.steps = self.optimizer_steps;
        let dev = trainer.device().clone().without_autodiff();
        for spec in &layout {
            let (shape, values) = self
                .tensors
                .get(&spec.name)
                .ok_or_else(|| err(path, format!("missing tensor {}", spec.name)))?;
            if *shape != spec.shape {
                return Err(err(
                    path,
                    format!(
                        "tensor {} has shape {shape:?}, expected {:?}",
                        spec.name, spec.shape
                    ),
                ));
            }
            flat[spec.offset..spec.offset + spec.len()].copy_from_slice(values);
            let moment = |kind: &str| -> Result<Option<Tensor<1>>, ModelError> {
                match self.tensors.get(&format!("optimizer.{kind}.{}", spec.name)) {
                    None => Ok(None),
                    Some((s, v)) if *s == spec.shape => Ok(Some(Tensor::from_data(
                        TensorData::new(v.clone(), [v.len()]),
                        &dev,
                    ))),
                    Some(_) => Err(err(
                        path,
                        format!("optimizer state of {} has the wrong shape", spec.name),
                    )),
                }
            };
            if let (Some(exp_avg), Some(exp_avg_sq)) = (moment("exp_avg")?, moment("exp_avg_sq")?) {
                optimizer.moments.insert(
                    spec.name.clone(),
                    Moments {
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
        trainer.set_parameters(&flat)?;
        trainer.restore(self.meta.step, optimizer);
        Ok(trainer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_replaces_the_file_whole_and_a_failed_one_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("checkpoint.safetensors");
        write_atomically(&path, b"first").expect("first save");
        write_atomically(&path, b"second").expect("second save");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");

        // A rename onto a non-empty folder fails, as a full disk or a permission error would.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).expect("folder");
        let e = write_atomically(&blocked, b"lost").expect_err("cannot replace a folder");
        assert!(matches!(e, ModelError::Io { .. }), "{e}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".tmp")),
            "no temp file is left: {names:?}"
        );
    }
}
