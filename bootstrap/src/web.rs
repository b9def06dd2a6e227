//! `--web`: serves the browser peer's page over HTTP (HTTPS with `--tls-cert`), with this node's
//! WebSocket address filled in, so that a volunteer only opens a URL.
//!
//! Routes: `/bootstrap.json` (the run id, this node's `/ws` multiaddrs, which the page dials, and
//! a published run's settings), `/run.json` (the run's dashboard data, see [`crate::dashboard`]),
//! `/checkpoint.safetensors` (the checkpoint on offer, see [`crate::checkpoint`]), `/corpus.txt`
//! (the training text), and every other path a file under the page's folder (`web/www/`, where
//! `scripts/build-web` puts the wasm package too).

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What the page server shares with the network task.
#[derive(Clone)]
pub struct WebState {
    /// The run id.
    pub run_id: String,
    /// This node's WebSocket multiaddrs with `/p2p/<id>`, as they start listening.
    pub ws_addrs: Arc<Mutex<Vec<String>>>,
    /// The page's folder.
    pub root: PathBuf,
    /// The training text.
    pub corpus: PathBuf,
    /// A published run's settings (its manifest's TOML), which the page's peer trains with.
    pub settings: Option<String>,
    /// The run as its heartbeats show it (`/run.json`, drawn by `dashboard.html`).
    pub dashboard: Arc<Mutex<crate::dashboard::Dashboard>>,
    /// The checkpoint offered for download (`--checkpoint`).
    pub checkpoint: Option<crate::checkpoint::Offered>,
}

/// Serves the page on `addr` (over TLS with `tls`) until the process ends; returns the bound
/// address.
pub async fn serve(
    addr: SocketAddr,
    state: WebState,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the page server to {addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/bootstrap.json", get(bootstrap_json))
        .route("/corpus.txt", get(corpus))
        .route("/run.json", get(run_json))
        .route("/checkpoint.safetensors", get(checkpoint))
        .fallback(get(file))
        .with_state(state);
    tokio::spawn(async move {
        let served = match tls {
            Some(acceptor) => match crate::tls::TlsListener::new(listener, acceptor) {
                Ok(tls) => axum::serve(tls, app).await,
                Err(e) => Err(e),
            },
            None => axum::serve(listener, app).await,
        };
        if let Err(e) = served {
            tracing::error!("page server stopped: {e}");
        }
    });
    Ok(bound)
}

async fn bootstrap_json(State(state): State<WebState>) -> Response {
    let addrs = state
        .ws_addrs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let body = serde_json::json!({
        "run_id": state.run_id,
        "bootstrap": addrs,
        "settings": state.settings,
    })
    .to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn run_json(State(state): State<WebState>) -> Response {
    let checkpoint = match &state.checkpoint {
        Some(offered) => offered.info().await.ok(),
        None => None,
    };
    let mut json = state
        .dashboard
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .to_json();
    json["checkpoint"] = serde_json::json!(checkpoint);
    let body = json.to_string();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn checkpoint(State(state): State<WebState>) -> Response {
    let Some(offered) = &state.checkpoint else {
        return (StatusCode::NOT_FOUND, "no checkpoint on offer").into_response();
    };
    // The file described is the one streamed, from one open handle: a checkpoint written
    // meanwhile replaces it by a rename, and this download goes on reading the version it opened.
    match offered.open().await {
        Ok((info, file)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", info.file_name),
                ),
                (header::CONTENT_LENGTH, info.bytes.to_string()),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
            axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file)),
        )
            .into_response(),
        Err(why) => {
            // The reason names a path on this machine: it goes to the log, not to visitors.
            tracing::info!("no checkpoint on offer: {why}");
            (StatusCode::NOT_FOUND, "no checkpoint on offer").into_response()
        }
    }
}

async fn corpus(State(state): State<WebState>) -> Response {
    send(&state.corpus).await
}

async fn file(State(state): State<WebState>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match safe_join(&state.root, path) {
        Some(full) => send(&full).await,
        None => (StatusCode::BAD_REQUEST, "bad path").into_response(),
    }
}

/// `root/rel` if `rel` names something inside `root` (no `..`, no absolute paths).
fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(rel))
}

async fn send(path: &Path) -> Response {
    match tokio::fs::read(path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                // The page is rebuilt often while developing; a stale wasm would not match its JS.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, "not found").into_response()
        }
        Err(e) => {
            tracing::warn!("serving {}: {e}", path.display());
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file").into_response()
        }
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        // instantiateStreaming insists on this type.
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_page_folder_are_refused() {
        let root = Path::new("/srv/www");
        assert_eq!(
            safe_join(root, "pkg/gradswarm_web.js"),
            Some(PathBuf::from("/srv/www/pkg/gradswarm_web.js"))
        );
        for bad in ["../etc/passwd", "pkg/../../x", "/etc/passwd", "./x"] {
            assert_eq!(safe_join(root, bad), None, "{bad}");
        }
    }
}
