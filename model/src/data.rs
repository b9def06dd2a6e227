//! The corpus, its train/validation split, and deterministic batches from a peer's shard.
//!
//! The last `val_fraction` of the file is validation. The rest is cut into `chunk_bytes` chunks;
//! a peer trains on the chunks rendezvous hashing gives it (`gradswarm_core::shard`). Batch `s`
//! of a sampler is a pure function of (seed, s, shard), so a resumed run sees the same data.

use std::ops::Range;

use burn::prelude::*;
use gradswarm_core::shard::{self, ShardKey};
use gradswarm_core::synthetic::SplitMix;

use crate::config::DataConfig;
use crate::error::ModelError;

/// The training text, split.
#[derive(Clone, Debug)]
pub struct Corpus {
    bytes: Vec<u8>,
    train_end: usize,
    chunk_bytes: usize,
}

impl Corpus {
    /// Reads the file named by `config` and splits it. `context` is the model's context length:
    /// both splits must hold at least one window of `context + 1` bytes.
    pub fn load(config: &DataConfig, context: usize) -> Result<Self, ModelError> {
        let bytes = std::fs::read(&config.path).map_err(|e| ModelError::Data {
            path: config.path.clone(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(bytes, config, context).map_err(|reason| ModelError::Data {
            path: config.path.clone(),
            reason,
        })
    }

    /// Splits bytes already in memory.
    pub fn from_bytes(bytes: Vec<u8>, config: &DataConfig, context: usize) -> Result<Self, String> {
        config.validate().map_err(|e| e.to_string())?;
        let val = ((bytes.len() as f64) * config.val_fraction) as usize;
        let train_end = bytes.len() - val;
        let need = 2 * (context + 1);
        if val < context + 1 || train_end < need || config.chunk_bytes < context + 1 {
            return Err(format!(
                "{} bytes is too little text for context {context}: each split needs {} bytes and a chunk at least {}",
                bytes.len(),
                context + 1,
                context + 1
            ));
        }
        Ok(Self {
            bytes,
            train_end,
            chunk_bytes: config.chunk_bytes,
        })
    }

    /// Bytes used for training.
    pub fn train(&self) -> &[u8] {
        &self.bytes[..self.train_end]
    }

    /// Bytes held out for validation.
    pub fn validation(&self) -> &[u8] {
        &self.bytes[self.train_end..]
    }

    /// The training chunks (the last one absorbs the remainder, so none is shorter than a window).
    pub fn chunks(&self) -> Vec<Range<usize>> {
        let n = (self.train_end / self.chunk_bytes).max(1);
        (0..n)
            .map(|i| {
                let start = i * self.chunk_bytes;
                let end = if i + 1 == n {
                    self.train_end
                } else {
                    start + self.chunk_bytes
                };
                start..end
            })
            .collect()
    }

    /// A sampler over the chunks `me` owns among `peers` in `epoch` (all chunks for a lone peer).
    pub fn sampler(&self, me: ShardKey, peers: &[ShardKey], epoch: u64, seed: u64) -> Sampler<'_> {
        let chunks = self.chunks();
        let mine = shard::shard(me, peers, chunks.len() as u64, epoch);
        let mut ranges: Vec<Range<usize>> =
            mine.iter().map(|&c| chunks[c as usize].clone()).collect();
        if ranges.is_empty() {
            // More peers than chunks: train on the whole split rather than on nothing.
            ranges = chunks;
        }
        Sampler {
            corpus: self,
            ranges,
            seed: seed ^ me.value(),
        }
    }
}

/// A batch of byte ids and their next-byte targets, row-major `[batch, time]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Sequences.
    pub batch: usize,
    /// Bytes per sequence.
    pub time: usize,
    /// Inputs.
    pub ids: Vec<i64>,
    /// Targets: the inputs shifted by one byte.
    pub targets: Vec<i64>,
}

impl Batch {
    fn from_windows(text: &[u8], starts: &[usize], time: usize) -> Self {
        let mut ids = Vec::with_capacity(starts.len() * time);
        let mut targets = Vec::with_capacity(starts.len() * time);
        for &s in starts {
            ids.extend(text[s..s + time].iter().map(|&b| i64::from(b)));
            targets.extend(text[s + 1..s + time + 1].iter().map(|&b| i64::from(b)));
        }
        Self {
            batch: starts.len(),
            time,
            ids,
            targets,
        }
    }

    /// The rows of `parts` in order, as one batch (the data-parallel global batch of N workers'
    /// batches); the parts must share their sequence length.
    pub fn concat(parts: &[Batch]) -> Result<Self, ModelError> {
        let time = parts.first().map_or(0, |p| p.time);
        if let Some(p) = parts.iter().find(|p| p.time != time) {
            return Err(ModelError::Config(format!(
                "batches of sequence lengths {time} and {} cannot be joined",
                p.time
            )));
        }
        Ok(Self {
            batch: parts.iter().map(|p| p.batch).sum(),
            time,
            ids: parts.iter().flat_map(|p| p.ids.iter().copied()).collect(),
            targets: parts
                .iter()
                .flat_map(|p| p.targets.iter().copied())
                .collect(),
        })
    }

    /// The inputs and targets as tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let shape = [self.batch, self.time];
        (
            Tensor::from_data(TensorData::new(self.ids.clone(), shape), device),
            Tensor::from_data(TensorData::new(self.targets.clone(), shape), device),
        )
    }

    /// Rows `rows` of this batch (for gradient accumulation).
    pub fn rows(&self, rows: Range<usize>) -> Batch {
        let (a, b) = (rows.start * self.time, rows.end * self.time);
        Batch {
            batch: rows.len(),
            time: self.time,
            ids: self.ids[a..b].to_vec(),
            targets: self.targets[a..b].to_vec(),
        }
    }
}

/// Draws training batches from one peer's shard.
#[derive(Clone, Debug)]
pub struct Sampler<'a> {
    corpus: &'a Corpus,
    ranges: Vec<Range<usize>>,
    seed: u64,
}

impl Sampler<'_> {
    /// Training bytes in this shard.
    pub fn shard_bytes(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }

    /// Batch number `step`: `batch` random windows of `time + 1` bytes inside the shard's chunks.
    pub fn batch(&self, step: u64, batch: usize, time: usize) -> Batch {
        let mut rng = SplitMix::new(self.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let total: usize = self.ranges.iter().map(|r| r.len() - time).sum();
        let starts: Vec<usize> = (0..batch)
            .map(|_| {
                // Uniform over every valid window start in the shard.
                let mut k = (rng.next_u64() % total as u64) as usize;
                for r in &self.ranges {
                    let n = r.len() - time;
                    if k < n {
                        return r.start + k;
                    }
                    k -= n;
                }
                self.ranges[0].start
            })
            .collect();
        Batch::from_windows(self.corpus.train(), &starts, time)
    }
}

/// `count` validation batches of evenly spaced windows: the same bytes every time.
pub fn validation_batches(corpus: &Corpus, count: usize, batch: usize, time: usize) -> Vec<Batch> {
    let text = corpus.validation();
    let windows = count * batch;
    let span = text.len() - (time + 1);
    let starts: Vec<usize> = (0..windows).map(|i| i * span / windows.max(1)).collect();
    starts
        .chunks(batch)
        .map(|s| Batch::from_windows(text, s, time))
        .collect()
}

/// Batches covering `text` with non-overlapping windows of `time` bytes, so that every byte after
/// the first is predicted exactly once; the last, shorter window is a batch of its own.
pub fn text_windows(text: &[u8], time: usize, batch: usize) -> Vec<Batch> {
    if text.len() < 2 || time == 0 || batch == 0 {
        return Vec::new();
    }
    let predicted = text.len() - 1;
    let full: Vec<usize> = (0..predicted / time).map(|i| i * time).collect();
    let mut out: Vec<Batch> = full
        .chunks(batch)
        .map(|starts| Batch::from_windows(text, starts, time))
        .collect();
    let rest = predicted % time;
    if rest > 0 {
        out.push(Batch::from_windows(text, &[predicted - rest], rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_rows_are_the_batch_and_lengths_must_agree() {
        let text: Vec<u8> = (0..200u8).collect();
        let batch = Batch::from_windows(&text, &[0, 10, 20, 30, 40], 8);
        let joined = Batch::concat(&[batch.rows(0..2), batch.rows(2..5)]).unwrap();
        assert_eq!(joined, batch);
        let other = Batch::from_windows(&text, &[0], 4);
        assert!(matches!(
            Batch::concat(&[batch, other]),
            Err(ModelError::Config(_))
        ));
    }
}
