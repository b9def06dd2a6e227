//! Peers in processes of their own (a scenario's `processes = true`): the harness starts
//! `swarm-harness peer` once per peer, which runs the same peer code as a thread peer and writes
//! its round reports to stdout as JSON lines. Each peer's memory is then its own to measure (its
//! peak RSS, `VmHWM`), and a kill is a SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use gradswarm_net::Multiaddr;
use gradswarm_peer::{PeerSummary, RoundReport};
use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;
use crate::{Event, LocalSwarm, PeerProc, Report, load_corpus};

/// What starts a protocol line on a peer process's stdout (anything else there is ignored).
const TAG: &str = "@swarm-harness ";

/// One line from a peer process.
#[derive(Serialize, Deserialize)]
enum Line {
    /// A round it closed; θ (when snapshotted) is in a file of little-endian f32s.
    Round {
        // Boxed: the round report is the largest variant by far (serde reads it the same).
        round: Box<RoundReport>,
        wire_sent: u64,
        wire_received: u64,
        #[serde(default)]
        wire_sent_by_protocol: BTreeMap<String, u64>,
        #[serde(default)]
        connections: usize,
        params: Option<PathBuf>,
    },
    /// It finished: its summary, with `final_params` in a file instead.
    Done {
        summary: PeerSummary,
        final_params: PathBuf,
        max_rss_bytes: Option<u64>,
    },
    /// Its run ended with this error.
    Failed(String),
}

/// How a peer process ended, as far as the harness is concerned.
pub struct Finished {
    /// Its summary (with `final_params`).
    pub summary: PeerSummary,
    /// Its peak resident memory (Linux `VmHWM`), if the platform says.
    pub max_rss_bytes: Option<u64>,
}

/// A running peer process.
pub struct ChildProc {
    child: Child,
    done: std_mpsc::Receiver<Result<Finished>>,
    index: usize,
    killed: Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>>,
}

impl ChildProc {
    /// Kills the process with SIGKILL, as a crash or the OOM killer would.
    pub fn kill(mut self) {
        self.killed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.index);
        // Already gone is fine: it is gone either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends the process a signal by name (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits for the peer to finish its rounds.
    pub fn join(mut self) -> Result<Finished> {
        let finished = self
            .done
            .recv()
            .map_err(|_| anyhow!("peer process {} ended without a summary", self.index))?;
        let status = self.child.wait()?;
        let finished = finished?;
        if !status.success() {
            bail!("peer process {} exited with {status}", self.index);
        }
        Ok(finished)
    }
}

impl Drop for ChildProc {
    /// A run that ends early (an error, a panic) takes its peer processes with it: none is left
    /// training on its own. Killing one that already exited is a no-op.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `swarm-harness` binary that runs peer processes: `SWARM_HARNESS_EXE`, else this process
/// when it is swarm-harness (a test binary is not: it sets the variable).
pub fn harness_exe() -> Result<PathBuf> {
    if let Some(exe) = std::env::var_os("SWARM_HARNESS_EXE") {
        return Ok(exe.into());
    }
    let exe = std::env::current_exe()?;
    let name = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if !name.starts_with("swarm-harness") {
        bail!(
            "processes = true needs the swarm-harness binary: set SWARM_HARNESS_EXE (this is {})",
            exe.display()
        );
    }
    Ok(exe)
}

impl LocalSwarm {
    /// Starts peer `index` of the scenario in `scenario_file` (JSON) in a process of its own,
    /// against this swarm's bootstrap; its files go to `dir`. Returns its report index.
    pub fn spawn_process(
        &mut self,
        scenario_file: &Path,
        index: usize,
        min_peers: usize,
        dir: &Path,
    ) -> Result<(usize, ChildProc)> {
        let h = self.started;
        self.started += 1;
        let mut child = Command::new(harness_exe()?)
            .arg("peer")
            .arg("--scenario")
            .arg(scenario_file)
            .args(["--index", &index.to_string()])
            .args(["--bootstrap", &self.bootstrap.to_string()])
            .args(["--min-peers", &min_peers.to_string()])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("starting a peer process")?;
        let stdout = child.stdout.take().context("the peer process's stdout")?;
        let tx = self.reports_tx.clone();
        let (done_tx, done) = std_mpsc::channel();
        std::thread::Builder::new()
            .name(format!("peer-{h}-stdout"))
            .spawn(move || {
                let mut ended = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Some(json) = line.strip_prefix(TAG) else {
                        continue;
                    };
                    match serde_json::from_str::<Line>(json) {
                        Ok(Line::Round {
                            round,
                            wire_sent,
                            wire_received,
                            wire_sent_by_protocol,
                            connections,
                            params,
                        }) => {
                            let params = params.and_then(|p| read_f32s(&p).ok()).map(Arc::new);
                            let _ = tx.send(Event::Round(Box::new(Report {
                                peer: h,
                                round: *round,
                                wire_sent,
                                wire_received,
                                wire_sent_by_protocol,
                                connections,
                                params,
                            })));
                        }
                        Ok(Line::Done {
                            mut summary,
                            final_params,
                            max_rss_bytes,
                        }) => {
                            let read = read_f32s(&final_params).map(|p| {
                                summary.final_params = p;
                                Finished {
                                    summary,
                                    max_rss_bytes,
                                }
                            });
                            let _ = done_tx.send(read);
                            ended = true;
                        }
                        Ok(Line::Failed(e)) => {
                            let _ = tx.send(Event::Failed(h, e.clone()));
                            let _ = done_tx.send(Err(anyhow!(e)));
                            ended = true;
                        }
                        Err(e) => {
                            let _ = tx.send(Event::Failed(h, format!("a bad report line: {e}")));
                        }
                    }
                }
                if !ended {
                    let e = "the peer process ended without a summary";
                    let _ = tx.send(Event::Failed(h, e.into()));
                    let _ = done_tx.send(Err(anyhow!(e)));
                }
            })?;
        Ok((
            h,
            ChildProc {
                child,
                done,
                index: h,
                killed: self.killed.clone(),
            },
        ))
    }
}

/// `swarm-harness peer`: runs peer `index` of `scenario` against `bootstrap`, its reports to
/// stdout (θ snapshots and the final θ as files in `dir`).
pub fn serve(
    scenario: &Scenario,
    index: usize,
    bootstrap: Multiaddr,
    min_peers: usize,
    dir: &Path,
) -> Result<()> {
    let corpus = load_corpus(scenario.model.context)?;
    let train = scenario.train_config();
    let mut swarm = LocalSwarm::attach(bootstrap)?;
    // The same attacker seed as the same peer on a thread would get.
    swarm.started = index;
    swarm.snapshot_every = scenario.eval_every;
    swarm.link = scenario.link_of(index);
    if scenario
        .spec(index)
        .is_some_and(|p| p.restart_at_round.is_some())
    {
        swarm.checkpoint = Some(checkpoint_path(dir, index));
    }
    let (_, peer) = swarm.spawn_as(
        scenario.spec(index).and_then(|p| p.attack),
        scenario.peer_config(index),
        &scenario.model,
        &train,
        corpus,
        min_peers,
    )?;
    let mut out = std::io::stdout().lock();
    let mut send = |line: &Line| -> Result<()> {
        writeln!(out, "{TAG}{}", serde_json::to_string(line)?)?;
        out.flush()?;
        Ok(())
    };
    let mut snapshots = 0u64;
    loop {
        let event = swarm.reports.recv_timeout(Duration::from_millis(200));
        match event {
            Ok(Event::Round(r)) => {
                let params = match &r.params {
                    Some(p) => {
                        snapshots += 1;
                        let path = dir.join(format!("peer-{index}-{snapshots}.f32"));
                        write_f32s(&path, p)?;
                        Some(path)
                    }
                    None => None,
                };
                send(&Line::Round {
                    round: Box::new(r.round),
                    wire_sent: r.wire_sent,
                    wire_received: r.wire_received,
                    wire_sent_by_protocol: r.wire_sent_by_protocol,
                    connections: r.connections,
                    params,
                })?;
            }
            // Its error comes back from join below.
            Ok(Event::Failed(..)) => {}
            Err(_) if peer.is_finished() => break,
            Err(_) => {}
        }
    }
    match peer.join() {
        Ok(mut summary) => {
            let path = dir.join(format!("peer-{index}-final.f32"));
            write_f32s(&path, &std::mem::take(&mut summary.final_params))?;
            send(&Line::Done {
                summary,
                final_params: path,
                max_rss_bytes: max_rss_bytes(),
            })
        }
        Err(e) => send(&Line::Failed(format!("{e:#}"))),
    }
}

/// Where peer `index` of a run with peer processes in `dir` keeps its checkpoint.
pub fn checkpoint_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("peer-{index}.safetensors"))
}

/// This process's peak resident memory, from /proc/self/status (`VmHWM`, in kB).
pub fn max_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn write_f32s(path: &Path, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Reads (and removes: each file is read once) a file of little-endian f32s.
fn read_f32s(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let _ = std::fs::remove_file(path);
    if !bytes.len().is_multiple_of(4) {
        bail!("{} is not a file of f32s", path.display());
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl PeerProc {
    /// Whether its thread has ended (its run finished or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_files_round_trip_and_a_torn_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("swarm-harness-f32-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.f32");
        write_f32s(&path, &[1.5, -0.0, f32::MAX]).expect("write");
        assert_eq!(read_f32s(&path).expect("read"), vec![1.5, -0.0, f32::MAX]);
        assert!(!path.exists(), "read once, then removed");
        std::fs::write(&path, [0u8; 5]).expect("write");
        assert!(read_f32s(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
