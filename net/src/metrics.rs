//! `/metrics` in Prometheus's text format over HTTP, for the desktop node and the bootstrap node
//! alike (`--metrics ADDR`): libp2p's own metrics (registered by the driver, see
//! [`crate::NetConfig::metrics`]) and whatever else shares the registry (the peer's).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::warn;

use crate::{NetError, SharedRegistry};

/// Serves `registry` at `http://ADDR/metrics` on the running tokio runtime; returns the address
/// bound (port 0 picks one).
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: SharedRegistry,
) -> Result<SocketAddr, NetError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NetError::Transport(format!("metrics on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| NetError::Transport(format!("metrics on {addr}: {e}")))?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(registry);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!("the metrics server stopped: {e}");
        }
    });
    Ok(bound)
}

/// One scrape: the registry as OpenMetrics text.
async fn scrape(State(registry): State<SharedRegistry>) -> Response {
    let mut text = String::new();
    let encoded = {
        let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)
    };
    match encoded {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
