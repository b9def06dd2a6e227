//! Errors of the model crate.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while building, training, loading or saving a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The training text could not be read or is unusable.
    #[error("data file {path}: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No device could be initialised as asked.
    #[error("device: {0}")]
    Device(String),
    /// A checkpoint is unreadable, foreign or inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A tensor could not be read back from the device.
    #[error("reading a tensor from the device: {0}")]
    Readback(String),
    /// Training produced a non-finite loss (diverged).
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged {
        /// The optimizer step.
        step: u64,
        /// The loss value.
        loss: f32,
    },
    /// A backward pass left parameters without a gradient (the step was not applied).
    #[error("backward pass gave gradients for {got} of the model's {expected} parameter tensors")]
    MissingGradients {
        /// Tensors with a gradient.
        got: usize,
        /// Parameter tensors in the model.
        expected: usize,
    },
    /// A flat parameter vector has the wrong length.
    #[error("parameter vector has {got} values, the model has {expected}")]
    ParamLength {
        /// Values given.
        got: usize,
        /// Parameters in the model.
        expected: usize,
    },
}
