//! Real processes on loopback: a `gradswarm-bootstrap` and three `gradswarm join` peers; one peer
//! is killed (SIGKILL, no goodbye) mid-run and the other two finish their rounds, having counted
//! its updates while it lived and each other's throughout; a survivor's checkpoint keeps its
//! error-feedback residual and a restart resumes with it. Plus the edges of `join`'s command line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_gradswarm");

/// The bootstrap binary, built beside this package's by `cargo test --workspace`.
fn bootstrap_bin() -> PathBuf {
    Path::new(BIN).with_file_name(format!(
        "gradswarm-bootstrap{}",
        std::env::consts::EXE_SUFFIX
    ))
}

/// A bootstrap node on loopback (its key in `dir`, and `args` besides) and its TCP address.
fn bootstrap(dir: &Path, args: &[&str]) -> (Watched, String) {
    let key = dir.join("bootstrap.key");
    let mut boot = Watched::spawn(Command::new(bootstrap_bin()).args(args).args([
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--key",
        key.to_str().expect("utf8"),
    ]));
    let addr = boot.wait_for(
        "the bootstrap's TCP address",
        |l| l.starts_with("listening on /ip4/127.0.0.1/tcp/") && l.contains("/p2p/"),
        Duration::from_secs(60),
    );
    let addr = addr.trim_start_matches("listening on ").to_string();
    (boot, addr)
}

/// A tiny model's join config in `dir` (loopback only, no mDNS).
fn join_config(dir: &Path) -> PathBuf {
    let path = dir.join("peer.toml");
    let text = format!(
        "[run]\nid = \"process-test\"\ndevice = \"cpu\"\n\
         [model]\nlayers = 1\nd_model = 32\nheads = 2\ncontext = 32\nmlp_ratio = 2\n\
         [train]\nbatch_size = 8\nmicro_batch_size = 8\nlr = 0.01\nmin_lr = 0.001\nwarmup_steps = 3\n\
         [data]\npath = {data:?}\n\
         [swarm]\ntop_k_per_million = 100000\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\neval_every = 0\n",
        data = common::corpus(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// `gradswarm join addr` with `config`, into `out`, for `rounds` rounds once `min_peers` others
/// are there, with `extra` arguments.
fn join_peer(
    addr: &str,
    config: &Path,
    out: &Path,
    rounds: &str,
    min_peers: &str,
    extra: &[&str],
) -> Watched {
    Watched::spawn(
        Command::new(BIN)
            .args(["join", addr, "--config"])
            .arg(config)
            .arg("--out")
            .arg(out)
            .args(["--rounds", rounds, "--min-peers", min_peers])
            .args(extra),
    )
}

/// A child whose output lines (stdout and stderr) arrive on a channel, so a test can wait for one.
struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (from now or already seen) that `hit` accepts, before `deadline` passes.
    fn wait_for(&mut self, what: &str, hit: impl Fn(&str) -> bool, deadline: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| hit(l)) {
            return l.clone();
        }
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if hit(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {what} within {deadline:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits (with a deadline) for the process to exit, and returns its status and every line.
    fn finish(mut self, deadline: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // The reader threads end with the pipes; collect what they still hold.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(line);
                }
                return (status, std::mem::take(&mut self.seen));
            }
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => self.seen.push(line),
                Err(_) if Instant::now() > until => {
                    let _ = self.child.kill();
                    panic!(
                        "the process did not exit within {deadline:?}:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(_) => {}
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn summary(lines: &[String]) -> serde_json::Value {
    let json = lines
        .iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("join prints a JSON summary");
    serde_json::from_str(json).expect("the summary is JSON")
}

#[test]
fn a_killed_peer_process_leaves_the_others_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = join_config(dir.path());
    let (_boot, addr) = bootstrap(dir.path(), &["--run-id", "process-test"]);
    let peer_with = |name: &str, rounds: &str, min_peers: &str| {
        join_peer(
            &addr,
            &config,
            &dir.path().join(name),
            rounds,
            min_peers,
            &[],
        )
    };
    let peer = |name: &str, rounds: &str| peer_with(name, rounds, "2");
    let mut victim = peer("victim", "100000");
    let survivors = [peer("a", "30"), peer("b", "30")];
    // The status line is printed every 10 rounds when stderr is not a terminal.
    let victim_id = victim.wait_for(
        "the victim's peer id",
        |l| l.starts_with("peer id "),
        Duration::from_secs(60),
    );
    let victim_id = victim_id.trim_start_matches("peer id ").to_string();
    victim.wait_for(
        "the victim's round 10",
        |l| l.starts_with("round 10 "),
        Duration::from_secs(180),
    );
    victim.child.kill().expect("SIGKILL the victim");
    let _ = victim.child.wait();

    let mut ids = Vec::new();
    let mut summaries = Vec::new();
    for mut s in survivors {
        ids.push(
            s.wait_for(
                "a peer id",
                |l| l.starts_with("peer id "),
                Duration::from_secs(10),
            )
            .trim_start_matches("peer id ")
            .to_string(),
        );
        let (status, lines) = s.finish(Duration::from_secs(300));
        assert!(status.success(), "a survivor failed:\n{}", lines.join("\n"));
        assert!(
            !lines.iter().any(|l| l.contains("panicked")),
            "a survivor panicked:\n{}",
            lines.join("\n")
        );
        summaries.push(summary(&lines));
    }
    for (i, s) in summaries.iter().enumerate() {
        let other = &ids[1 - i];
        assert_eq!(s["rounds"], 30, "survivor {i} ran every round: {s}");
        let counted = |id: &str| s["counted_from"][id].as_u64().unwrap_or(0);
        assert!(
            counted(&victim_id) >= 5,
            "survivor {i} counted {} updates of the victim before it died: {s}",
            counted(&victim_id)
        );
        assert!(
            counted(&victim_id) < 30,
            "the victim was dead for the last rounds, yet counted in all: {s}"
        );
        assert!(
            counted(other) >= 25,
            "survivor {i} counted {} of the other survivor's 30 updates: {s}",
            counted(other)
        );
        let loss = s["final_loss"].as_f64().expect("a final loss");
        assert!(loss < 4.5, "survivor {i} kept learning (final loss {loss})");
    }

    // A survivor's checkpoint holds its whole state, its error-feedback residual (updates computed
    // but not sent yet) included, and a restart resumes with it.
    let ckpt = gradswarm_model::Checkpoint::load(&dir.path().join("a/checkpoint.safetensors"))
        .expect("the survivor's checkpoint loads");
    let residual = ckpt
        .state(gradswarm_peer::RESIDUAL_KEY)
        .expect("the checkpoint keeps the error-feedback residual");
    assert!(
        residual.iter().any(|&x| x != 0.0),
        "a top-10% codec leaves an unsent residual"
    );
    let (status, lines) = peer_with("a", "31", "0").finish(Duration::from_secs(300));
    assert!(
        status.success(),
        "the restart failed:\n{}",
        lines.join("\n")
    );
    let resumed = summary(&lines);
    assert_eq!(resumed["start_round"], 30, "{resumed}");
    assert_eq!(
        resumed["resumed_state"],
        serde_json::json!([gradswarm_peer::RESIDUAL_KEY]),
        "{resumed}"
    );
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn gradswarm")
}

#[test]
fn join_refuses_bad_command_lines_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = join_config(dir.path());
    let config = config.to_str().expect("utf8");
    let cases: [(&[&str], &str); 7] = [
        (
            &["join", "not-a-multiaddr", "--config", config],
            "not a multiaddr",
        ),
        (
            &[
                "join",
                "--config",
                config,
                "--listen",
                "/ip4/127.0.0.1/tcp/x",
            ],
            "not a multiaddr",
        ),
        (
            &["join", "--config", "/nonexistent/peer.toml"],
            "/nonexistent/peer.toml",
        ),
        (&["join", "--config", config, "--device", "tpu"], "tpu"),
        (
            &["join", "--config", config, "--threads", "0"],
            "train.threads",
        ),
        (
            &["join", "--config", config, "--duty-cycle", "0"],
            "--duty-cycle",
        ),
        (
            &["status", "/ip4/127.0.0.1/tcp/1", "--seconds", "0"],
            "--seconds",
        ),
    ];
    for (args, needle) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr lacks {needle:?}: {stderr}"
        );
    }
}

#[test]
fn join_refuses_a_checkpoint_of_another_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = join_config(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    // A checkpoint of another run id in the output folder: joining with it would mix two runs.
    let other = std::fs::read_to_string(&config)
        .expect("read")
        .replace("process-test", "another-run");
    let other_config = dir.path().join("other.toml");
    std::fs::write(&other_config, other).expect("write");
    let trained = run(&[
        "train",
        "--config",
        other_config.to_str().expect("utf8"),
        "--steps",
        "1",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(
        trained.status.success(),
        "train: {}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let joined = run(&[
        "join",
        "--config",
        config.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
        "--rounds",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&joined.stderr);
    assert!(!joined.status.success(), "joined anyway: {stderr}");
    assert!(
        stderr.contains("belongs to another run or model"),
        "unclear: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
}

/// Issue 27: an organiser publishes a run (`gradswarm publish`, `gradswarm-bootstrap --run`);
/// two volunteers, each in an empty directory, join with the bootstrap's address alone, fetch
/// the run's settings and data, and train together. A volunteer whose config says another swarm
/// setting is refused with a message naming it.
#[test]
fn volunteers_join_a_published_run_with_its_address_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = join_config(dir.path());
    let folder = dir.path().join("published");
    let published = run(&[
        "publish",
        "--config",
        config.to_str().expect("utf8"),
        "--out",
        folder.to_str().expect("utf8"),
    ]);
    let stdout = String::from_utf8_lossy(&published.stdout);
    assert!(
        published.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&published.stderr)
    );
    let run_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .expect("publish prints the run id")
        .to_string();
    assert!(run_id.starts_with("process-test-"), "{run_id}");
    let (_boot, addr) = bootstrap(dir.path(), &["--run", folder.to_str().expect("utf8")]);

    // Another swarm setting in a volunteer's config: refused, naming it, before any training.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "[swarm]\ntau_max = 9\n").expect("write");
    let refused = run(&[
        "join",
        &addr,
        "--config",
        other.to_str().expect("utf8"),
        "--out",
        dir.path().join("refused").to_str().expect("utf8"),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "joined anyway: {stderr}");
    assert!(stderr.contains("swarm.tau_max"), "unclear: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");

    // A volunteer told to join another run refuses this one, before fetching its data.
    let pinned = dir.path().join("pinned");
    let refused = run(&[
        "join",
        &addr,
        "--expect-run",
        "process-test-0000000000000000",
        "--out",
        pinned.to_str().expect("utf8"),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "joined anyway: {stderr}");
    assert!(
        stderr.contains(&format!(
            "publishes run {run_id}, not process-test-0000000000000000"
        )),
        "unclear: {stderr}"
    );
    assert!(
        !pinned.join("run.data").exists(),
        "it fetched the data anyway"
    );

    let homes = [dir.path().join("home-a"), dir.path().join("home-b")];
    let volunteers: Vec<Watched> = homes
        .iter()
        .map(|home| {
            std::fs::create_dir_all(home).expect("mkdir");
            Watched::spawn(Command::new(BIN).current_dir(home).args([
                "join",
                &addr,
                "--expect-run",
                &run_id,
                "--device",
                "cpu",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--rounds",
                "20",
                "--min-peers",
                "1",
            ]))
        })
        .collect();
    let mut summaries = Vec::new();
    for v in volunteers {
        let (status, lines) = v.finish(Duration::from_secs(300));
        assert!(
            status.success(),
            "a volunteer failed:\n{}",
            lines.join("\n")
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("run {run_id} from"))),
            "the volunteer did not take the published run:\n{}",
            lines.join("\n")
        );
        summaries.push(summary(&lines));
    }
    let corpus = std::fs::read(common::corpus()).expect("corpus");
    for (home, s) in homes.iter().zip(&summaries) {
        assert_eq!(s["rounds"], 20, "{s}");
        let data = std::fs::read(home.join("runs/default/run.data")).expect("fetched data");
        assert!(data == corpus, "the fetched data is not the run's");
    }
    for (i, s) in summaries.iter().enumerate() {
        let other = summaries[1 - i]["peer_id"].as_str().expect("an id");
        let counted = s["counted_from"][other].as_u64().unwrap_or(0);
        assert!(
            counted >= 15,
            "volunteer {i} counted {counted} of the other's: {s}"
        );
    }
}

/// The body of `GET url` (plain HTTP/1.1, as Prometheus scrapes).
fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut stream = std::net::TcpStream::connect(host).expect("the metrics server accepts");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// A metric's value in Prometheus text (`name value` or `name{labels} value`), summed over labels.
fn metric(text: &str, name: &str) -> f64 {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            rest.parse().ok()
        })
        .collect();
    assert!(!values.is_empty(), "no {name} in:\n{text}");
    values.iter().sum()
}

/// `--metrics ADDR` on `join` and on the bootstrap: Prometheus text with libp2p's metrics and the
/// peer's own. Scraped at rounds 10 and 20 of a two-peer run, the peer's counters move and agree
/// with the run (one round closed per round number, 8 samples per round trained), and with its
/// JSON summary at the end; the bootstrap counts the peers' connections. Meanwhile `gradswarm
/// status` lists both peers from their heartbeats.
/// Runs `gradswarm <command> ADDR --json` (`status` or `credit`) on the process test's run for
/// 7 s of heartbeats (they come every 3 s) and returns what it printed.
fn watch_json(command: &str, addr: &str) -> serde_json::Value {
    let out = run(&[
        command,
        addr,
        "--seconds",
        "7",
        "--run-id",
        "process-test",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{command} printed no JSON ({e})"))
}

#[test]
fn metrics_and_status_show_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut boot, addr) = bootstrap(dir.path(), &["--metrics", "127.0.0.1:0"]);
    let url_of = |line: String| line.trim_start_matches("metrics: ").to_string();
    let boot_url = url_of(boot.wait_for(
        "the bootstrap's metrics address",
        |l| l.starts_with("metrics: http://"),
        Duration::from_secs(30),
    ));
    let config = join_config(dir.path());
    let mut peers: Vec<Watched> = (0..2)
        .map(|i| {
            let out = dir.path().join(format!("peer{i}"));
            join_peer(
                &addr,
                &config,
                &out,
                "0",
                "1",
                &["--metrics", "127.0.0.1:0"],
            )
        })
        .collect();
    let url = url_of(peers[0].wait_for(
        "the peer's metrics address",
        |l| l.starts_with("metrics: http://"),
        Duration::from_secs(60),
    ));
    // The lines are read as the test gets to them, maybe long after the peer printed them: the
    // second scrape waits for a round line past what the first scrape saw, so the peer has moved.
    let round_of = |l: &str| {
        l.strip_prefix("round ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|r| r.parse::<f64>().ok())
    };
    let mut scrapes = Vec::new();
    let mut past = 9.0;
    for _ in 0..2 {
        peers[0].wait_for(
            &format!("a round past {past}"),
            |l| round_of(l).is_some_and(|r| r > past),
            Duration::from_secs(120),
        );
        let text = scrape(&url);
        past = metric(&text, "gradswarm_round").max(past + 10.0);
        scrapes.push(text);
    }
    for text in &scrapes {
        let round = metric(text, "gradswarm_round");
        assert!(round >= 10.0, "{text}");
        // Every round from 0 to the latest closed, once; each trained one took 8 samples.
        assert_eq!(
            metric(text, "gradswarm_rounds_total"),
            round + 1.0,
            "{text}"
        );
        assert_eq!(
            metric(text, "gradswarm_samples_total"),
            8.0 * metric(text, "gradswarm_trained_rounds_total"),
            "{text}"
        );
        assert!(
            metric(text, "gradswarm_updates_counted_total") > round,
            "{text}"
        );
        assert!(text.contains("gradswarm_device_info{device="), "{text}");
        // libp2p's own: connections to the bootstrap and the other peer, gossip received.
        assert!(
            metric(text, "libp2p_swarm_connections_established_total") >= 2.0,
            "{text}"
        );
        assert!(
            metric(text, "libp2p_gossipsub_messages_total") > 0.0,
            "{text}"
        );
    }
    let (first, second) = (&scrapes[0], &scrapes[1]);
    // Credit as the other peer attests it (in its heartbeats, every 3 s): the status line shows
    // it, and the gauge then holds some, no more than this peer trained on.
    let credit_of = |l: &str| {
        l.rsplit_once(" credit ")
            .and_then(|(_, c)| c.trim().parse::<u64>().ok())
    };
    peers[0].wait_for(
        "a status line with credit",
        |l| l.starts_with("round ") && credit_of(l).is_some_and(|c| c > 0),
        Duration::from_secs(120),
    );
    let third = scrape(&url);
    let credit = metric(&third, "gradswarm_credit_samples");
    assert!(
        credit > 0.0 && credit <= metric(&third, "gradswarm_samples_total"),
        "{third}"
    );
    for name in [
        "gradswarm_round",
        "gradswarm_samples_total",
        "gradswarm_bytes_up_total",
        "gradswarm_bytes_down_total",
    ] {
        assert!(
            metric(second, name) > metric(first, name),
            "{name} did not move"
        );
    }
    let boot_text = scrape(&boot_url);
    assert!(
        metric(&boot_text, "libp2p_swarm_connections_established_total") >= 2.0,
        "{boot_text}"
    );
    // The run at a glance, from the heartbeats (every 3 s): both peers, training.
    let view = watch_json("status", &addr);
    assert_eq!(view["peers"], 2, "{view}");
    assert!(view["round"].as_u64().is_some_and(|r| r >= 20), "{view}");
    let rows = view["online"].as_array().expect("rows");
    for row in rows {
        let agent = row["agent"].as_str().unwrap_or_default();
        assert!(
            agent.starts_with("gradswarm/") && agent.contains(" desktop "),
            "{row}"
        );
        assert!(
            row["tokens_per_s"].as_f64().is_some_and(|t| t > 0.0),
            "{row}"
        );
        assert!(row["samples"].as_u64().is_some_and(|s| s >= 80), "{row}");
    }
    let listed: Vec<&str> = rows.iter().filter_map(|r| r["peer_id"].as_str()).collect();
    // Each peer's credit, as the other attests it: some, at most what it claims.
    let credits = watch_json("credit", &addr);
    let rows = credits["online"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{credits}");
    for row in rows {
        assert_eq!(row["attesters"], 1, "{row}");
        let (credit, claimed) = (row["credit"].as_u64(), row["samples"].as_u64());
        assert!(credit.is_some_and(|c| c > 0) && credit <= claimed, "{row}");
        assert!(row["bytes_sent"].as_u64().is_some_and(|b| b > 0), "{row}");
    }

    for peer in &peers {
        // Ctrl-C: the peer finishes its round, checkpoints and prints its summary.
        let pid = peer.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .expect("kill")
                .success()
        );
    }
    for peer in peers {
        let (status, lines) = peer.finish(Duration::from_secs(120));
        assert!(status.success(), "{}", lines.join("\n"));
        let s = summary(&lines);
        let id = s["peer_id"].as_str().expect("peer id");
        assert!(listed.contains(&id), "status did not list {id}: {listed:?}");
        if lines
            .iter()
            .any(|l| l.contains(url.trim_start_matches("http://")))
        {
            let samples = s["samples"].as_f64().expect("samples");
            assert!(samples >= metric(second, "gradswarm_samples_total"), "{s}");
        }
    }
}
