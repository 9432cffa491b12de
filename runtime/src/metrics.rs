//! `metrics.jsonl` and `timings.jsonl`: what a run logs, one JSON object per line.
//!
//! The two files are split on purpose. `metrics.jsonl` holds only values that a deterministic run
//! reproduces exactly (step, losses, learning rate, gradient norm, tokens seen), so a run resumed
//! from a checkpoint writes a file byte-identical to an uninterrupted run's: resuming truncates it
//! to the lines at or before the checkpoint's step and appends from there. Wall-clock values
//! (elapsed time, step time, tokens/s) go to `timings.jsonl`, which is truncated the same way but
//! naturally differs between runs.
//!
//! Each line is flushed as it is written, so `tail -f` and a plot of a running job see it, and a
//! crash loses at most a torn last line, which readers and resume drop.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Name of the deterministic log in the output folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Name of the wall-clock log in the output folder.
pub const TIMINGS_FILE: &str = "timings.jsonl";

/// Why a metrics file could not be written or read.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum MetricsError {
    #[error("cannot read or write `{path}`: {reason}")]
    #[diagnostic(code(metrics::io))]
    Io { path: PathBuf, reason: String },
    #[error("line {line} of `{path}` is not a metrics record: {reason}")]
    #[diagnostic(
        code(metrics::corrupt),
        help("each line must be one JSON object with at least a `step` field")
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("line {line} of `{path}` has step {step} after step {previous}")]
    #[diagnostic(code(metrics::order), help("metrics lines must be in step order"))]
    Order {
        path: PathBuf,
        line: usize,
        step: u64,
        previous: u64,
    },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> MetricsError {
    MetricsError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// One line of `metrics.jsonl`. Absent values are left out of the line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRecord {
    /// Optimizer steps completed when the values were taken (0 = before training).
    pub step: u64,
    /// Training loss of this step's batch (mean over its micro-batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f32>,
    /// Learning rate used by this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Global gradient L2 norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
    /// Training tokens consumed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Estimated loss on the training split (mean over `eval.batches` random batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_eval_loss: Option<f32>,
    /// Estimated loss on the validation split (mean over `eval.batches` random batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
    /// Loss over the whole validation split in non-overlapping windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_val_loss: Option<f32>,
}

/// One line of `timings.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingRecord {
    pub step: u64,
    /// Seconds since the run (or this resumed segment of it) started.
    pub elapsed_s: f64,
    /// Milliseconds the last step took.
    pub step_ms: f64,
    /// Training tokens per second over the last step.
    pub tokens_per_s: f64,
}

/// A record that belongs to a step.
pub trait Stepped {
    fn step(&self) -> u64;
}

impl Stepped for MetricRecord {
    fn step(&self) -> u64 {
        self.step
    }
}

impl Stepped for TimingRecord {
    fn step(&self) -> u64 {
        self.step
    }
}

/// Appends records to a JSON-lines file, one flushed line each.
#[derive(Debug)]
pub struct JsonlWriter<T> {
    path: PathBuf,
    file: File,
    last_step: Option<u64>,
    _record: PhantomData<fn(&T)>,
}

/// The writer of `metrics.jsonl`.
pub type MetricsWriter = JsonlWriter<MetricRecord>;
/// The writer of `timings.jsonl`.
pub type TimingsWriter = JsonlWriter<TimingRecord>;

impl<T: Serialize + Stepped> JsonlWriter<T> {
    /// Starts a new file, replacing any previous one.
    pub fn create(path: &Path) -> Result<Self, MetricsError> {
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            file,
            last_step: None,
            _record: PhantomData,
        })
    }

    /// Continues a run resumed at `step`: keeps the lines whose step is at most `step` (and a
    /// torn last line is dropped), byte for byte, and appends after them. A missing file starts
    /// empty.
    pub fn resume(path: &Path, step: u64) -> Result<Self, MetricsError> {
        let (keep_bytes, last_step) = match File::open(path) {
            Ok(f) => prefix_through_step(path, f, step)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
            Err(e) => return Err(io_err(path, e)),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        file.set_len(keep_bytes).map_err(|e| io_err(path, e))?;
        file.seek(SeekFrom::End(0)).map_err(|e| io_err(path, e))?;
        file.sync_all().map_err(|e| io_err(path, e))?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            file,
            last_step,
            _record: PhantomData,
        })
    }

    /// Appends one record as a line and flushes it.
    pub fn write(&mut self, record: &T) -> Result<(), MetricsError> {
        let mut line = serde_json::to_vec(record).map_err(|e| io_err(&self.path, e))?;
        line.push(b'\n');
        // One write call per line: a concurrent reader sees whole lines or a torn tail.
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(|e| io_err(&self.path, e))?;
        self.last_step = Some(record.step());
        Ok(())
    }

    /// Step of the last line in the file, if any.
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[derive(Deserialize)]
struct StepOnly {
    step: u64,
}

/// Byte length of the complete lines with step ≤ `step`, and the last such step.
fn prefix_through_step(
    path: &Path,
    file: File,
    step: u64,
) -> Result<(u64, Option<u64>), MetricsError> {
    let mut reader = BufReader::new(file);
    let mut kept = 0u64;
    let mut last = None;
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err(path, e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break; // end of file, or a torn last line
        }
        number += 1;
        let rec: StepOnly = serde_json::from_slice(&line).map_err(|e| MetricsError::Corrupt {
            path: path.to_path_buf(),
            line: number,
            reason: e.to_string(),
        })?;
        if let Some(prev) = last {
            if rec.step < prev {
                return Err(MetricsError::Order {
                    path: path.to_path_buf(),
                    line: number,
                    step: rec.step,
                    previous: prev,
                });
            }
        }
        if rec.step > step {
            break;
        }
        kept += n as u64;
        last = Some(rec.step);
    }
    Ok((kept, last))
}

/// Reads every complete line of a JSON-lines log (a torn last line is ignored).
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, MetricsError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| io_err(path, e))?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| MetricsError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Reads `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>, MetricsError> {
    read_jsonl(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_are_left_out_and_floats_are_shortest() {
        let r = MetricRecord {
            step: 3,
            loss: Some(2.0412),
            lr: Some(1e-3),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"step":3,"loss":2.0412,"lr":0.001}"#
        );
    }
}
