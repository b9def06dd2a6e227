//! End-to-end tests of the `gradswarm` binary: train, eval, sample, bad input, crash safety,
//! and a checkpoint that Python's safetensors reads.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::corpus;

const BIN: &str = env!("CARGO_BIN_EXE_gradswarm");

/// A tiny model config in `dir`, checkpointing into `dir/out`.
fn tiny_config(dir: &Path, extra_train: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    let text = format!(
        "[run]\nid = \"cli-test\"\nout = {out:?}\ndevice = \"cpu\"\n\
         [model]\nlayers = 1\nd_model = 32\nheads = 2\ncontext = 32\nmlp_ratio = 2\n\
         [train]\nbatch_size = 4\nmicro_batch_size = 4\neval_batches = 2\neval_every = 0\n{extra_train}\n\
         [data]\npath = {data:?}\n",
        out = dir.join("out"),
        data = corpus(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("spawn gradswarm")
}

fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(
        stderr.contains("error:") && stderr.contains(needle),
        "stderr lacks {needle:?}: {stderr}"
    );
}

fn train(config: &Path, steps: u64) -> serde_json::Value {
    let out = run(&[
        "train",
        "--config",
        config.to_str().expect("utf8"),
        "--steps",
        &steps.to_string(),
    ]);
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("train prints one JSON summary")
}

#[test]
fn train_eval_and_sample_work_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = tiny_config(dir.path(), "");
    let summary = train(&config, 3);
    assert_eq!(summary["steps"], 3);
    assert_eq!(summary["backend"], "cpu");
    let ckpt = dir.path().join("out/checkpoint.safetensors");
    assert!(ckpt.exists());

    let text = dir.path().join("t.txt");
    std::fs::write(&text, "To be, or not to be, that is the question.\n").expect("write");
    let out = run(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().expect("utf8"),
        "--text",
        text.to_str().expect("utf8"),
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let loss = v["loss_nats_per_byte"].as_f64().expect("loss");
    assert!(loss > 0.5 && loss < 6.0, "loss {loss}");
    assert!(
        (v["bits_per_byte"].as_f64().expect("bits") - loss / std::f64::consts::LN_2).abs() < 1e-9
    );
    assert_eq!(v["bytes"], 43);

    let out = run(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().expect("utf8"),
        "--prompt",
        "ROMEO:",
        "--bytes",
        "20",
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ROMEO:"));
}

#[test]
fn bad_input_gives_clear_errors_and_no_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nheads = 3\n").expect("write");
    assert_clean_failure(
        &run(&["train", "--config", bad.to_str().expect("utf8")]),
        "multiple of model.heads",
    );

    std::fs::write(&bad, "[model]\nlayerz = 3\n").expect("write");
    assert_clean_failure(
        &run(&["train", "--config", bad.to_str().expect("utf8")]),
        "unknown field",
    );

    std::fs::write(&bad, "[data]\npath = \"/nonexistent/corpus.txt\"\n").expect("write");
    assert_clean_failure(
        &run(&["train", "--config", bad.to_str().expect("utf8")]),
        "/nonexistent/corpus.txt",
    );

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":").expect("write");
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "hello world").expect("write");
    assert_clean_failure(
        &run(&[
            "eval",
            "--checkpoint",
            junk.to_str().expect("utf8"),
            "--text",
            text.to_str().expect("utf8"),
            "--device",
            "cpu",
        ]),
        "safetensors",
    );
    assert_clean_failure(
        &run(&[
            "train",
            "--config",
            tiny_config(dir.path(), "").to_str().expect("utf8"),
            "--resume",
        ]),
        "--resume",
    );

    std::fs::write(&bad, "[swarm]\nallow = [\"not-a-peer\"]\n").expect("write");
    assert_clean_failure(
        &run(&["join", "--config", bad.to_str().expect("utf8")]),
        "\"not-a-peer\" is not a peer id",
    );
}

#[test]
fn id_prints_the_peer_id_join_will_have_and_keeps_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let id = |out: &Path| {
        let o = run(&["id", "--out", out.to_str().expect("utf8")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let first = id(&out);
    assert!(
        first.starts_with("12D3KooW"),
        "not an ed25519 peer id: {first}"
    );
    assert_eq!(id(&out), first, "the identity key is kept");
    assert!(out.join("identity.key").is_file());
    assert_ne!(
        id(&dir.path().join("other")),
        first,
        "another folder, another peer"
    );
}

#[test]
fn a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = tiny_config(dir.path(), "checkpoint_every = 1");
    train(&config, 2);
    let ckpt = dir.path().join("out/checkpoint.safetensors");
    let before = std::fs::read(&ckpt).expect("read");

    let mut child = Command::new(BIN)
        .args([
            "train",
            "--config",
            config.to_str().expect("utf8"),
            "--steps",
            "4",
            "--resume",
        ])
        .env("GRADSWARM_FAULT", "hang-mid-checkpoint")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("checkpoint write paused") {
                let _ = tx.send(());
            }
        }
    });
    // Wait for the event (the write is halfway), with a deadline rather than a guess.
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the writer reached the middle of a checkpoint");
    child.kill().expect("kill");
    let _ = child.wait();

    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .expect("out")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint.safetensors.") && n.ends_with(".tmp"))
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "the half-written temp file is where the kill left it"
    );
    assert_eq!(
        std::fs::read(&ckpt).expect("read"),
        before,
        "the checkpoint was not touched"
    );
    let loaded = gradswarm_model::Checkpoint::load(&ckpt).expect("the previous checkpoint loads");
    assert_eq!(loaded.meta.step, 2);
    // And training resumes from it.
    let summary = train(&config, 3);
    assert_eq!(summary["steps"], 3);
}

/// A Python interpreter with safetensors and numpy, installed from PyPI into a cached venv.
fn python_with_safetensors() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let venv = home.join(".cache/gradswarm-pyenv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import safetensors.numpy, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(ok.success(), "python3 -m venv failed");
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "safetensors", "numpy"])
            .status()
            .expect("pip");
        assert!(ok.success(), "pip install safetensors numpy failed");
    }
    python
}

#[test]
fn checkpoints_load_in_python_with_documented_names_and_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    train(&tiny_config(dir.path(), ""), 2);
    let ckpt = dir.path().join("out/checkpoint.safetensors");
    let script = r#"
import json, sys
from safetensors.numpy import load_file
from safetensors import safe_open
t = load_file(sys.argv[1])
with safe_open(sys.argv[1], "np") as f:
    meta = f.metadata()
print(json.dumps({"shapes": {k: list(v.shape) for k, v in t.items()},
                  "dtypes": sorted({str(v.dtype) for v in t.values()}), "meta": meta}))
"#;
    let out = Command::new(python_with_safetensors())
        .args(["-c", script])
        .arg(&ckpt)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let shapes = &v["shapes"];
    let expect = [
        ("token_embedding.weight", vec![256, 32]),
        ("position_embedding", vec![32, 32]),
        ("blocks.0.attn.qkv.weight", vec![32, 96]),
        ("blocks.0.attn.qkv.bias", vec![96]),
        ("blocks.0.mlp_in.weight", vec![32, 64]),
        ("final_norm.gamma", vec![32]),
        ("head.weight", vec![32, 256]),
        ("optimizer.exp_avg.head.weight", vec![32, 256]),
        ("optimizer.exp_avg_sq.blocks.0.attn.qkv.bias", vec![96]),
    ];
    for (name, shape) in expect {
        assert_eq!(shapes[name], serde_json::json!(shape), "tensor {name}");
    }
    assert_eq!(v["dtypes"], serde_json::json!(["float32"]));
    assert_eq!(v["meta"]["format"], "gradswarm-checkpoint/1");
    assert_eq!(v["meta"]["run_id"], "cli-test");
    assert_eq!(v["meta"]["step"], "2");
}
