//! The `gradswarm-bootstrap` binary: it prints its identity and full multiaddrs (TCP, QUIC and
//! WebSocket), keeps its identity across restarts, and refuses a page folder without a page.
//! (It is also what makes `cargo test` build this binary, which node's process tests start.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gradswarm-bootstrap");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gs-bootstrap-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Starts the node with `key`, waits (with a deadline) until it printed its id and an address of
/// each transport on loopback, kills it and returns those lines.
fn start_and_read(key: &Path) -> Vec<String> {
    let mut child = Command::new(BIN)
        .args([
            "--run-id",
            "bootstrap-test",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .arg("--key")
        .arg(key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let rx = stdout_lines(&mut child);
    let wanted = ["/tcp/", "/quic-v1/", "/ws/"];
    let mut lines: Vec<String> = Vec::new();
    let done = |lines: &[String]| {
        lines.iter().any(|l| l.starts_with("gradswarm-bootstrap "))
            && wanted.iter().all(|w| {
                lines.iter().any(|l| {
                    l.starts_with("listening on /ip4/127.0.0.1/")
                        && l.contains(w)
                        && l.contains("/p2p/")
                })
            })
    };
    while !done(&lines) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the node did not print its addresses: {lines:?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn prints_its_addresses_and_keeps_its_identity() {
    let dir = scratch("identity");
    let key = dir.join("bootstrap.key");
    let first = start_and_read(&key);
    assert!(key.is_file(), "the identity key was written");
    let id = |lines: &[String]| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("gradswarm-bootstrap "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .expect("an id line")
    };
    let peer_id = id(&first);
    assert!(
        first
            .iter()
            .filter(|l| l.starts_with("listening on "))
            .all(|l| l.ends_with(&format!("/p2p/{peer_id}"))),
        "every address names the node: {first:?}"
    );
    assert_eq!(
        id(&start_and_read(&key)),
        peer_id,
        "a restart keeps the identity"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn refuses_a_page_folder_without_a_page() {
    let dir = scratch("web");
    let out = Command::new(BIN)
        .args([
            "--run-id",
            "bootstrap-test",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--web",
            "0",
        ])
        .arg("--key")
        .arg(dir.join("bootstrap.key"))
        .arg("--web-root")
        .arg(dir.join("no-page-here"))
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert!(stderr.contains("has no index.html"), "unclear: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A client that connects to the HTTPS page server and says nothing (a browser's preconnect, a
/// slowloris) holds up no one: with ten such connections open, a TLS handshake still completes
/// within a few seconds. Handshaking one connection at a time (the listener before), it waited
/// 10 s behind each of them (the likely cause of one browser-test run whose tab could not load
/// its worker over HTTPS).
#[test]
fn idle_connections_do_not_hold_up_the_https_page() {
    let dir = scratch("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (scripts/setup installs it)");
    assert!(made.success(), "openssl could not make a certificate");
    let web_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/www");
    let mut child = Command::new(BIN)
        .args([
            "--run-id",
            "tls-test",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--web",
            "0",
        ])
        .arg("--key")
        .arg(dir.join("bootstrap.key"))
        .arg("--web-root")
        .arg(&web_root)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let rx = stdout_lines(&mut child);
    let page = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the bootstrap prints its page address");
        if let Some(url) = line.strip_prefix("page: https://") {
            break url.trim_end_matches('/').to_string();
        }
    };
    let idle: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(&page).expect("connect"))
        .collect();
    let client = Command::new("openssl")
        .args(["s_client", "-brief", "-connect", &page])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    // The handshake's end, awaited with a deadline; killing the node ends a stalled one.
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(client.wait_with_output());
    });
    let finished = done.recv_timeout(Duration::from_secs(8));
    let _ = child.kill();
    let _ = child.wait();
    drop(idle);
    let _ = std::fs::remove_dir_all(&dir);
    let out = finished
        .expect("no TLS handshake within 8 s behind ten idle connections")
        .expect("openssl s_client ran");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("TLSv1.3"), "{err}");
}

/// The lines `child` prints on stdout, as they come (its stdout must be piped).
fn stdout_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
