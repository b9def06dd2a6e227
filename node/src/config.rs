//! The node's config file: the run's settings (`gradswarm_peer::settings`), read from TOML.

use std::path::Path;

use anyhow::Context;
pub use gradswarm_peer::NodeConfig;

/// Reads and validates a config file; `None` gives the defaults.
pub fn load(path: Option<&Path>) -> anyhow::Result<NodeConfig> {
    match path {
        None => Ok(NodeConfig::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            NodeConfig::from_toml(&text).with_context(|| format!("config {}", p.display()))
        }
    }
}
