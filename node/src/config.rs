//! The node's TOML configuration: `[run]`, `[model]`, `[train]`, `[data]`. Every key is optional;
//! `configs/default.toml` lists them all with their defaults. Unknown keys are errors, so a typo
//! never silently falls back to a default.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gradswarm_model::{DataConfig, DeviceChoice, ModelConfig, TrainConfig};
use serde::{Deserialize, Serialize};

/// The run's identity and where its files go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The run id: peers only exchange updates within one run.
    pub id: String,
    /// Where checkpoints go.
    pub out: PathBuf,
    /// `auto`, `gpu` or `cpu`.
    pub device: DeviceChoice,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            id: "shakespeare-byte-gpt".into(),
            out: "runs/default".into(),
            device: DeviceChoice::Auto,
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// `[run]`.
    pub run: RunConfig,
    /// `[model]`.
    pub model: ModelConfig,
    /// `[train]`.
    pub train: TrainConfig,
    /// `[data]`.
    pub data: DataConfig,
}

impl NodeConfig {
    /// Reads and validates a config file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let config: NodeConfig = match path {
            None => NodeConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("config {}", p.display()))?
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every section.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.run.id.is_empty() || self.run.id.len() > gradswarm_core::wire::MAX_RUN_ID_LEN {
            anyhow::bail!(
                "run.id must be 1 to {} bytes",
                gradswarm_core::wire::MAX_RUN_ID_LEN
            );
        }
        self.model.validate()?;
        self.train.validate()?;
        self.data.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_file_is_the_default() {
        let text = include_str!("../../configs/default.toml");
        let parsed: NodeConfig = toml::from_str(text).expect("default.toml parses");
        assert_eq!(parsed, NodeConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<NodeConfig>("[model]\nlayer = 3\n").is_err());
        let c: NodeConfig = toml::from_str("[model]\nheads = 3\n").expect("parses");
        assert!(c.validate().is_err());
    }
}
