//! `--checkpoint FILE`: the checkpoint a peer on this machine keeps (its `run.out`'s
//! `checkpoint.safetensors`), offered on the dashboard for download. Only its safetensors header
//! is read here, bounded, to tell its run and round; a file of another run, or no checkpoint, is
//! not offered. The peer replaces the file by a rename, so a download in progress keeps reading
//! the version it opened, whole.

use std::path::PathBuf;
use std::time::SystemTime;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The format tag a gradswarm checkpoint's metadata carries (`gradswarm_model::checkpoint`).
const FORMAT: &str = "gradswarm-checkpoint/1";

/// Largest safetensors header read (the header lists tensors by name and offset: kilobytes).
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// What the dashboard says of the checkpoint on offer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CheckpointInfo {
    /// The round it holds the replica of.
    pub round: u64,
    /// Optimizer steps behind it.
    pub step: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Seconds since it was written.
    pub age_s: f64,
    /// The name a download gets.
    pub file_name: String,
}

/// The checkpoint file offered for the run `run_id`.
#[derive(Clone, Debug)]
pub struct Offered {
    /// The file.
    pub path: PathBuf,
    /// The run it must belong to.
    pub run_id: String,
}

impl Offered {
    /// The checkpoint's description, or why it is not on offer (missing, not a gradswarm
    /// checkpoint, another run's).
    pub async fn info(&self) -> Result<CheckpointInfo, String> {
        self.open().await.map(|(info, _)| info)
    }

    /// The checkpoint's description and the file, open at its start: what is served is the
    /// version described, even if the peer replaces the file meanwhile.
    pub async fn open(&self) -> Result<(CheckpointInfo, tokio::fs::File), String> {
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let meta = file.metadata().await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .await
            .map_err(|e| format!("no safetensors header: {e}"))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER_BYTES || n + 8 > meta.len() {
            return Err(format!(
                "a safetensors header of {n} bytes is not believable"
            ));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .await
            .map_err(|e| format!("reading the header: {e}"))?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|e| format!("header: {e}"))?;
        let field = |k: &str| header["__metadata__"][k].as_str().map(str::to_string);
        if field("format").as_deref() != Some(FORMAT) {
            return Err("not a gradswarm checkpoint".into());
        }
        if field("run_id").as_deref() != Some(self.run_id.as_str()) {
            return Err(format!(
                "a checkpoint of run {:?}, not {:?}",
                field("run_id").unwrap_or_default(),
                self.run_id
            ));
        }
        let number = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let round = number("round");
        let age_s = meta
            .modified()
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| format!("rewinding: {e}"))?;
        let info = CheckpointInfo {
            round,
            step: number("step"),
            bytes: meta.len(),
            age_s,
            file_name: file_name(&self.run_id, round),
        };
        Ok((info, file))
    }
}

/// `<run>-round-<r>.safetensors`, the run id kept to characters safe in a header and a file name.
fn file_name(run_id: &str, round: u64) -> String {
    let run: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{run}-round-{round}.safetensors")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(dir: &Path, meta: serde_json::Value, body: &[u8]) -> PathBuf {
        let header = serde_json::json!({ "__metadata__": meta }).to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(body);
        let path = dir.join("checkpoint.safetensors");
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[tokio::test]
    async fn only_a_checkpoint_of_this_run_is_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta =
            serde_json::json!({ "format": FORMAT, "run_id": "r/1", "round": "42", "step": "168" });
        let path = write(dir.path(), meta, &[0; 16]);
        let offered = Offered {
            path: path.clone(),
            run_id: "r/1".into(),
        };
        let info = offered.info().await.expect("offered");
        assert_eq!((info.round, info.step), (42, 168));
        assert_eq!(info.file_name, "r_1-round-42.safetensors");
        assert!(info.bytes > 16);
        let other = Offered {
            path: path.clone(),
            run_id: "another".into(),
        };
        assert!(other.info().await.is_err());
        // Not a gradswarm checkpoint; a header longer than the file; no file.
        write(dir.path(), serde_json::json!({ "run_id": "r/1" }), &[]);
        assert!(offered.info().await.is_err());
        std::fs::write(&path, u64::MAX.to_le_bytes()).expect("write");
        assert!(offered.info().await.is_err());
        std::fs::remove_file(&path).expect("remove");
        assert!(offered.info().await.is_err());
    }
}
