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

/// Handshakes under way at once: past it a new connection is dropped, so that a flood of idle
/// connections holds a bounded number of tasks.
const MAX_HANDSHAKES: usize = 64;

/// The page server's listener over TLS. Each handshake runs in a task of its own, bounded by
/// [`HANDSHAKE_TIMEOUT`]: a client that connects and says nothing (a browser's preconnect, or a
/// slowloris) holds up no one else.
pub struct TlsListener {
    done: futures::channel::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and hands each connection to `acceptor`'s handshake, on the running
    /// tokio runtime.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, done) = futures::channel::mpsc::channel(MAX_HANDSHAKES);
        let under_way = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!("page server accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if under_way.fetch_add(1, Ordering::Relaxed) >= MAX_HANDSHAKES {
                    under_way.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!("{MAX_HANDSHAKES} TLS handshakes under way: {addr} dropped");
                    continue;
                }
                let (acceptor, mut tx, under_way) =
                    (acceptor.clone(), tx.clone(), under_way.clone());
                tokio::spawn(async move {
                    use futures::SinkExt;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            // The server is gone when this fails: nothing to hand it to.
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake from {addr}: {e}"),
                        Err(_) => tracing::debug!("TLS handshake from {addr} timed out"),
                    }
                    under_way.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(Self { done, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        match self.done.next().await {
            Some(accepted) => accepted,
            // The accepting task ended with the runtime: nothing more will come.
            None => futures::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
