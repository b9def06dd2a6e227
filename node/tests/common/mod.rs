//! Helpers shared by the node's integration tests.

use std::path::PathBuf;

/// The bundled corpus, found from the package directory cargo gives at run time: a test binary
/// built in another checkout sharing the target directory would otherwise look there.
pub fn corpus() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../data/shakespeare.txt")
}
