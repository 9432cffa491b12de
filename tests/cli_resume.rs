//! Crash safety of `kiln train`: interrupted by SIGINT, killed with SIGKILL at an arbitrary
//! moment, or killed in the middle of writing a checkpoint or the `latest` pointer, a run resumed
//! with `--resume` writes a `metrics.jsonl` byte-identical to an uninterrupted run's, and the
//! previous checkpoint always loads.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cli_common::{kiln, stderr, write_run, write_run_with};
use kiln_runtime::checkpoint::{load_checkpoint, CheckpointDir};

/// `metrics.jsonl` and the final parameters of the uninterrupted 12-step run.
fn reference() -> &'static (Vec<u8>, kiln_runtime::checkpoint::TensorMap) {
    static REF: OnceLock<(Vec<u8>, kiln_runtime::checkpoint::TensorMap)> = OnceLock::new();
    REF.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        write_run(tmp.path(), "");
        let o = kiln(tmp.path(), &["train", "run.yaml"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = tmp.path().join("out");
        (
            std::fs::read(out.join("metrics.jsonl")).unwrap(),
            latest(&out).params,
        )
    })
}

fn latest(out: &Path) -> kiln_runtime::checkpoint::Checkpoint {
    let dir = CheckpointDir::open(out, 10).unwrap();
    load_checkpoint(&dir.latest().unwrap().expect("latest checkpoint")).unwrap()
}

fn spawn(dir: &Path, crash: Option<&str>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["train", "run.yaml"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match crash {
        Some(v) => c.env("KILN_TEST_CRASH", v),
        None => c.env_remove("KILN_TEST_CRASH"),
    };
    c.spawn().expect("spawn kiln")
}

/// Waits until `metrics.jsonl` has a line of step `step` or later.
fn wait_for_step(out: &Path, step: u64, child: &mut Child) {
    let start = Instant::now();
    loop {
        if let Ok(recs) = kiln_runtime::metrics::read_metrics(&out.join("metrics.jsonl")) {
            if recs.last().is_some_and(|r| r.step >= step) {
                return;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kiln exited early: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn resume_and_compare(dir: &Path) {
    resume_and_compare_with(dir, reference());
}

fn resume_and_compare_with(
    dir: &Path,
    (metrics, params): &(Vec<u8>, kiln_runtime::checkpoint::TensorMap),
) {
    let o = kiln(dir, &["train", "run.yaml", "--resume"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = std::fs::read(dir.join("out/metrics.jsonl")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(metrics)
    );
    assert_eq!(&latest(&dir.join("out")).params, params);
}

/// The SIGINT run is longer (the fused executor finishes 12 tiny steps before a signal lands).
const SIGINT_STEPS: u64 = 1500;

#[test]
fn sigint_checkpoints_and_resume_is_bitwise_identical() {
    let reference = {
        let tmp = tempfile::tempdir().unwrap();
        write_run_with(tmp.path(), SIGINT_STEPS, 500, "");
        let o = kiln(tmp.path(), &["train", "run.yaml"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = tmp.path().join("out");
        (
            std::fs::read(out.join("metrics.jsonl")).unwrap(),
            latest(&out).params,
        )
    };
    let tmp = tempfile::tempdir().unwrap();
    write_run_with(tmp.path(), SIGINT_STEPS, 500, "");
    let mut child = spawn(tmp.path(), None);
    wait_for_step(&tmp.path().join("out"), 1, &mut child);
    signal(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted after step"), "{err}");
    let ckpt = latest(&tmp.path().join("out"));
    assert!(
        ckpt.meta.step >= 1 && ckpt.meta.step < SIGINT_STEPS,
        "step {}",
        ckpt.meta.step
    );
    // The checkpoint is of the last step logged: nothing was lost.
    let logged =
        kiln_runtime::metrics::read_metrics(&tmp.path().join("out/metrics.jsonl")).unwrap();
    assert_eq!(logged.last().map(|r| r.step), Some(ckpt.meta.step));
    resume_and_compare_with(tmp.path(), &reference);
}

fn crash_during(point: &str) -> PathBuf {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    let child = spawn(tmp.path(), Some(point));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "killed by a signal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tmp.keep()
}

#[test]
fn kill_during_a_checkpoint_write_keeps_the_previous_checkpoint() {
    let dir = crash_during("checkpoint:8");
    let out = dir.join("out");
    assert!(
        out.join(".tmp-ckpt-00000008.safetensors").exists(),
        "a torn temporary file is left"
    );
    assert!(!out.join("ckpt-00000008.safetensors").exists());
    // The previous checkpoint loads.
    assert_eq!(latest(&out).meta.step, 4);
    resume_and_compare(&dir);
    assert!(
        !out.join(".tmp-ckpt-00000008.safetensors").exists(),
        "cleaned up on resume"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kill_during_the_latest_pointer_update_keeps_the_previous_checkpoint() {
    let dir = crash_during("latest:8");
    let out = dir.join("out");
    assert!(out.join("ckpt-00000008.safetensors").exists());
    assert_eq!(
        latest(&out).meta.step,
        4,
        "`latest` still names the previous checkpoint"
    );
    resume_and_compare(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigkill_at_any_moment_then_resume_is_bitwise_identical() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    let mut child = spawn(tmp.path(), None);
    wait_for_step(&tmp.path().join("out"), 3, &mut child);
    signal(&child, "-KILL");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None);
    resume_and_compare(tmp.path());
}
