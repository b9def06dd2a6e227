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
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
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
