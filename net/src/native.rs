//! Desktop transports (TCP + noise + yamux, QUIC, WebSocket, DNS) on tokio, identity key files and
//! run folders.

use std::path::Path;

use futures::channel::mpsc;
use gradswarm_core::{Manifest, RunFiles};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::{Transport, upgrade};
use libp2p::identity::Keypair;
use libp2p::{noise, tcp, websocket, yamux};
use std::sync::Arc;

use crate::behaviour::Behaviour;
use crate::protocol_bytes::ProtocolCounting;
use crate::{Counting, Driver, NetConfig, NetError, NetEvent, NetHandle, WireCounters};

/// Builds a native swarm for `config` with identity `key`. Call inside a tokio runtime; spawn
/// [`Driver::run`] on it.
pub async fn build(
    config: NetConfig,
    key: Keypair,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>, Driver), NetError> {
    let transport = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let behaviour_config = config.clone();
    let tls = config.tls.clone();
    let wire = Arc::new(WireCounters::default());
    let counters = wire.clone();
    let protocols = wire.protocols.clone();
    // One link for all of this node's TCP connections, as a home uplink is shared.
    let link = config.link.map(crate::shaping::Link::new);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic()
        // TCP as `with_tcp` builds it, with every connection's bytes counted below noise (and,
        // in shaped harness scenarios, sent and received through the node's modelled link).
        .with_other_transport(move |key| {
            let noise = noise::Config::new(key)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .map(move |stream, _| {
                        crate::shaping::Shaped::new(
                            Counting::new(stream, counters.clone()),
                            link.clone(),
                        )
                    })
                    .upgrade(upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .map(move |(peer, muxer), _| {
                        let counted = ProtocolCounting::new(muxer, protocols.clone());
                        (peer, StreamMuxerBox::new(counted))
                    })
                    .boxed(),
            )
        })
        .map_err(|e| transport(&e))?
        // WebSocket over TLS (`/tls/ws`), for browsers beyond this machine: before the plain
        // WebSocket transport below, so that a `/tls/ws` listen address reaches this one.
        .with_other_transport(move |key| {
            let Some(cert) = tls else {
                return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    libp2p::core::transport::dummy::DummyTransport::new().boxed(),
                );
            };
            let noise = noise::Config::new(key)?;
            let server = websocket::tls::Config::new(
                websocket::tls::PrivateKey::new(cert.key),
                cert.chain.into_iter().map(websocket::tls::Certificate::new),
            )?;
            let mut ws = websocket::Config::new(tcp::tokio::Transport::new(
                tcp::Config::default().nodelay(true),
            ));
            ws.set_tls_config(server);
            Ok(ws
                .upgrade(upgrade::Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .boxed())
        })
        .map_err(|e| transport(&e))?
        .with_dns()
        .map_err(|e| transport(&e))?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await
        .map_err(|e| transport(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| transport(&e))?
        .with_behaviour(|key, relay_client| {
            Behaviour::new(key, relay_client, &behaviour_config)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| transport(&e))?
        .with_swarm_config(crate::behaviour::swarm_config)
        .build();
    Driver::new(swarm, config, wire)
}

/// The file of a run folder that holds the encoded manifest ([`Manifest::to_bytes`]).
pub const RUN_MANIFEST_FILE: &str = "run.manifest";
/// The file of a run folder that holds the run's data set.
pub const RUN_DATA_FILE: &str = "run.data";

/// Reads the run folder `dir` (`gradswarm publish` writes one; a joiner keeps what it fetched in
/// one) and checks its data against its manifest.
pub fn load_run(dir: &Path) -> Result<RunFiles, NetError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| NetError::RunFiles {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let err = |name: &str, reason: String| NetError::RunFiles {
        path: dir.join(name).display().to_string(),
        reason,
    };
    let manifest = Manifest::from_bytes(&read(RUN_MANIFEST_FILE)?)
        .map_err(|e| err(RUN_MANIFEST_FILE, e.to_string()))?;
    RunFiles::new(manifest, read(RUN_DATA_FILE)?).map_err(|e| err(RUN_DATA_FILE, e.to_string()))
}

/// Writes `files` as the run folder `dir`.
pub fn save_run(dir: &Path, files: &RunFiles) -> Result<(), NetError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, bytes))
            .map_err(|e| NetError::RunFiles {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    };
    write(RUN_DATA_FILE, files.data())?;
    write(RUN_MANIFEST_FILE, &files.manifest().to_bytes())
}

/// Loads the ed25519 identity at `path`, or creates one there (owner-only permissions) if the file
/// does not exist: a bootstrap node keeps its peer id, so the addresses peers were given stay valid.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, NetError> {
    let err = |reason: String| NetError::Identity {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| err(format!("not a libp2p key file: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            write_private(path, &bytes).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("gs-id-{}", std::process::id()));
        let path = dir.join("id.key");
        let _ = std::fs::remove_file(&path);
        let a = load_or_create_identity(&path).unwrap();
        let b = load_or_create_identity(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            load_or_create_identity(&path),
            Err(NetError::Identity { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
