//! Shared helpers of the CLI tests: run the built `kiln` binary on a tiny run in a temporary
//! folder, and fingerprint folders to prove a failing command wrote nothing.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kiln(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env_remove("KILN_TEST_CRASH")
        .output()
        .expect("run kiln")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The first `chars` characters of Tiny Shakespeare, then a line with every character of the
/// whole corpus, so the char vocabulary is the full one (65) and every task text encodes.
pub fn corpus(chars: usize) -> String {
    let text = std::fs::read_to_string(repo().join("data/tinyshakespeare.txt")).expect("corpus");
    let mut all: Vec<char> = text.chars().collect();
    all.sort_unstable();
    all.dedup();
    let mut out: String = text.chars().take(chars).collect();
    out.push('\n');
    out.extend(all.iter().filter(|c| **c != '\n'));
    out
}

/// A `gpt2_tiny` run config (12 steps, evaluation and checkpoints every 4) over a small corpus in
/// `dir`; `extra` is appended to the YAML.
pub fn write_run(dir: &Path, extra: &str) -> PathBuf {
    write_run_with(dir, 12, 4, extra)
}

/// [`write_run`] with `steps` steps, evaluation and checkpoints every `every`.
pub fn write_run_with(dir: &Path, steps: u64, every: u64, extra: &str) -> PathBuf {
    std::fs::write(dir.join("corpus.txt"), corpus(12_000)).expect("write corpus");
    let spec = repo().join("specs/gpt2.kiln");
    let yaml = format!(
        "spec: {}\nmodel: gpt2_tiny\ndata:\n  path: corpus.txt\n  val_fraction: 0.1\n\
         batch_size: 2\nseq_len: 8\nsteps: {steps}\n\
         optimizer: {{lr: 3.0e-3, beta2: 0.99}}\nschedule: {{warmup: 1, min_lr: 1.0e-4}}\n\
         grad_clip: 1.0\neval: {{every: {every}, batches: 2}}\ncheckpoint: {{every: {every}, keep: 2}}\n\
         out_dir: out\n{extra}",
        spec.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// Every file under `dir` with its bytes.
pub fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read file"));
            }
        }
    }
    out
}

/// Asserts a command failed with exit code 1 and every needle in its stderr.
pub fn assert_fails(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in stderr:\n{err}");
    }
}
