//! Reading tensors back to the host, synchronously (native tools) or asynchronously (the peer
//! runtime; in a browser, WebGPU cannot block on the GPU at all).
//!
//! Every read of the trainer is built once as one burn [`Transaction`] (several tensors, one
//! transfer: a GPU waits once per read, not once per tensor) and then executed either way, so the
//! synchronous and the asynchronous paths share everything but the wait.

use burn::tensor::{TensorData, Transaction};

use crate::error::ModelError;

/// Executes `tx`, blocking this thread until the device has delivered.
pub(crate) fn execute(tx: Transaction) -> Result<Vec<TensorData>, ModelError> {
    tx.try_execute()
        .map_err(|e| ModelError::Readback(format!("{e:?}")))
}

/// Executes `tx` without blocking: the future completes when the device has delivered.
pub(crate) async fn execute_async(tx: Transaction) -> Result<Vec<TensorData>, ModelError> {
    tx.execute_async()
        .await
        .map_err(|e| ModelError::Readback(format!("{e:?}")))
}

/// One read tensor's values as f32.
pub(crate) fn floats(data: TensorData) -> Result<Vec<f32>, ModelError> {
    data.try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Readback(format!("{e:?}")))
}

/// A read of exactly `n` tensors whose values are concatenated (the flat parameter vector).
pub(crate) fn concat(data: Vec<TensorData>, n: usize) -> Result<Vec<f32>, ModelError> {
    if data.len() != n {
        return Err(ModelError::Readback(format!(
            "read {} tensors, expected {n}",
            data.len()
        )));
    }
    let mut out = Vec::new();
    for d in data {
        out.extend(floats(d)?);
    }
    Ok(out)
}

/// A one-element read tensor as a scalar.
pub(crate) fn scalar(data: TensorData) -> Result<f32, ModelError> {
    match floats(data)?.as_slice() {
        [v] => Ok(*v),
        other => Err(ModelError::Readback(format!(
            "expected one value, read {}",
            other.len()
        ))),
    }
}
