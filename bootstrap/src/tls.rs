//! `--tls-cert`/`--tls-key`: a certificate for what browsers beyond this machine reach, the page
//! (HTTPS) and the WebSocket listener (`/tls/ws`, `wss://`). Browsers give WebGPU to secure pages
//! only, and a secure page may open secure WebSockets only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gradswarm_net::TlsCertificate;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake with the page server.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain and key read from PEM files.
pub struct Pem {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Pem {
    /// Reads the chain at `cert` and the key at `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("--tls-cert {}", cert.display()))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "--tls-cert {}: no certificate",
            cert.display()
        );
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("--tls-key {}", key.display()))?;
        Ok(Self { chain, key })
    }

    /// The same, as the network's WebSocket listener takes it.
    pub fn for_net(&self) -> TlsCertificate {
        TlsCertificate {
            chain: self.chain.iter().map(|c| c.to_vec()).collect(),
            key: self.key.secret_der().to_vec(),
        }
    }

    /// A TLS acceptor for the page server.
    pub fn acceptor(&self) -> Result<TlsAcceptor> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("the TLS certificate and key do not go together")?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The page server's listener over TLS.
pub struct TlsListener {
    /// The TCP listener.
    pub tcp: TcpListener,
    /// The handshake.
    pub acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("page server accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // One handshake at a time, each bounded: a client that stalls holds the others for
            // the timeout at most.
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!("TLS handshake from {addr}: {e}"),
                Err(_) => tracing::debug!("TLS handshake from {addr} timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
