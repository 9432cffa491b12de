//! Shared helpers of the loop tests: a tiny corpus and run config in a temporary folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kiln_runtime::config::RunConfig;
use kiln_runtime::train::{ProgressOutput, TrainOptions};

/// The repository root (the runtime crate's parent).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime has a parent")
        .to_path_buf()
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

/// Writes a corpus and a tiny `gpt2_tiny` run config into `dir`; `extra` lines are appended to
/// the YAML (later keys must not repeat earlier ones).
pub fn write_run(dir: &Path, extra: &str) -> PathBuf {
    std::fs::write(dir.join("corpus.txt"), corpus(12_000)).expect("write corpus");
    let spec = repo().join("specs/gpt2.kiln");
    let yaml = format!(
        "spec: {}\nmodel: gpt2_tiny\ndata:\n  path: corpus.txt\n  val_fraction: 0.1\n\
         batch_size: 2\nseq_len: 8\nsteps: 12\n\
         optimizer: {{lr: 3.0e-3, beta2: 0.99}}\nschedule: {{warmup: 1, min_lr: 1.0e-4}}\n\
         grad_clip: 1.0\neval: {{every: 4, batches: 2}}\ncheckpoint: {{every: 4, keep: 2}}\n\
         out_dir: out\n{extra}",
        spec.display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

pub fn load(path: &Path, set: &[&str]) -> RunConfig {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    match RunConfig::load(path, &set) {
        Ok(c) => c,
        Err(e) => panic!("config: {e:?}"),
    }
}

/// Progress lines into a buffer; sets `stop` once the line of step `stop_at` is written (the loop
/// checks the flag right after), as a SIGINT during that step would.
#[derive(Clone)]
struct StopAt {
    stop: Arc<AtomicBool>,
    stop_at: Option<u64>,
    text: Arc<Mutex<String>>,
}

impl Write for StopAt {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(buf);
        if let Some(n) = self.stop_at {
            if s.starts_with(&format!("step {n}: train loss")) {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        self.text.lock().unwrap().push_str(&s);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Options whose progress output stops the run after step `stop_at` (the reference interpreter,
/// the default executor).
pub fn interruptible(resume: bool, stop_at: Option<u64>) -> TrainOptions {
    let stop = Arc::new(AtomicBool::new(false));
    let w = StopAt {
        stop: Arc::clone(&stop),
        stop_at,
        text: Arc::default(),
    };
    TrainOptions {
        resume,
        stop: Some(stop),
        progress: ProgressOutput::Lines(Box::new(w)),
        ..TrainOptions::default()
    }
}
