//! Training progress for people: a live bar on a terminal, plain log lines elsewhere.
//!
//! On a terminal, an indicatif bar shows steps, loss, tokens/s and ETA, with evaluation results
//! printed above it. When stderr is a file or pipe (CI, `nohup`, a job scheduler), a bar would
//! fill the log with control codes, so every `log_every` steps one line is written instead, in
//! the shape nanoGPT users grep for:
//!
//! ```text
//! step 250: train loss 2.0412, val loss 2.0801, 21.3k tok/s
//! ```
//!
//! Throughput is measured here, from the wall clock between reports; nothing printed here goes
//! into `metrics.jsonl`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Formats a rate as `950 tok/s`, `21.3k tok/s` or `1.25M tok/s`.
pub fn format_rate(tokens_per_s: f64) -> String {
    if !tokens_per_s.is_finite() || tokens_per_s < 0.0 {
        return "? tok/s".to_string();
    }
    if tokens_per_s >= 1e6 {
        format!("{:.2}M tok/s", tokens_per_s / 1e6)
    } else if tokens_per_s >= 1e3 {
        format!("{:.1}k tok/s", tokens_per_s / 1e3)
    } else {
        format!("{tokens_per_s:.0} tok/s")
    }
}

/// One progress line: `step 250: train loss 2.0412, val loss 2.0801, 21.3k tok/s`; parts that
/// are `None` are left out.
pub fn format_line(
    step: u64,
    train_loss: Option<f32>,
    val_loss: Option<f32>,
    lr: Option<f64>,
    tokens_per_s: Option<f64>,
) -> String {
    let mut parts = Vec::new();
    if let Some(l) = train_loss {
        parts.push(format!("train loss {l:.4}"));
    }
    if let Some(l) = val_loss {
        parts.push(format!("val loss {l:.4}"));
    }
    if let Some(lr) = lr {
        parts.push(format!("lr {lr:.3e}"));
    }
    if let Some(r) = tokens_per_s {
        parts.push(format_rate(r));
    }
    format!("step {step}: {}", parts.join(", "))
}

enum Output {
    Bar(ProgressBar),
    Lines(Box<dyn Write + Send>),
}

/// Reports training progress; see the module docs.
pub struct Progress {
    out: Output,
    tokens_per_step: u64,
    log_every: u64,
    /// Step and time of the previous rate measurement.
    mark: (u64, Instant),
    rate: Option<f64>,
}

impl Progress {
    /// A bar on stderr if it is a terminal, else plain lines on stderr. `start_step` is where a
    /// resumed run begins; `tokens_per_step` converts steps to tokens/s.
    pub fn new(total_steps: u64, start_step: u64, tokens_per_step: u64, log_every: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(start_step);
            bar.enable_steady_tick(Duration::from_millis(250));
            Progress::with_output(Output::Bar(bar), start_step, tokens_per_step, log_every)
        } else {
            Progress::lines(
                Box::new(std::io::stderr()),
                start_step,
                tokens_per_step,
                log_every,
            )
        }
    }

    /// Plain lines to `out`, whatever it is (for logs and tests).
    pub fn lines(
        out: Box<dyn Write + Send>,
        start_step: u64,
        tokens_per_step: u64,
        log_every: u64,
    ) -> Self {
        Progress::with_output(Output::Lines(out), start_step, tokens_per_step, log_every)
    }

    fn with_output(out: Output, start_step: u64, tokens_per_step: u64, log_every: u64) -> Self {
        Progress {
            out,
            tokens_per_step,
            log_every: log_every.max(1),
            mark: (start_step, Instant::now()),
            rate: None,
        }
    }

    /// Tokens per second over the last measured interval, once there is one.
    pub fn tokens_per_s(&self) -> Option<f64> {
        self.rate
    }

    /// Reports that `step` optimizer steps are done, the last with this loss and learning rate.
    pub fn step(&mut self, step: u64, loss: f32, lr: f64) {
        let is_log_step = step.is_multiple_of(self.log_every);
        if is_log_step {
            self.measure(step);
        }
        match &mut self.out {
            Output::Bar(bar) => {
                bar.set_position(step);
                let rate = self.rate.map(format_rate).unwrap_or_default();
                bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {rate}"));
            }
            Output::Lines(w) => {
                if is_log_step {
                    let line = format_line(step, Some(loss), None, Some(lr), self.rate);
                    // Progress output is best effort: a closed stderr must not stop training.
                    let _ = writeln!(w, "{line}");
                }
            }
        }
    }

    /// Reports an evaluation at `step`; always printed.
    pub fn eval(&mut self, step: u64, train_loss: Option<f32>, val_loss: Option<f32>) {
        let line = format_line(step, train_loss, val_loss, None, self.rate);
        self.message(&line);
    }

    /// Prints a line (above the bar, if there is one).
    pub fn message(&mut self, text: &str) {
        match &mut self.out {
            Output::Bar(bar) => bar.println(text),
            Output::Lines(w) => {
                let _ = writeln!(w, "{text}");
            }
        }
    }

    /// Clears the bar (plain output needs nothing).
    pub fn finish(self) {
        match self.out {
            Output::Bar(bar) => bar.finish_and_clear(),
            Output::Lines(mut w) => {
                let _ = w.flush();
            }
        }
    }

    fn measure(&mut self, step: u64) {
        let now = Instant::now();
        let (last_step, last_time) = self.mark;
        let secs = now.duration_since(last_time).as_secs_f64();
        if step > last_step && secs > 0.0 {
            self.rate = Some(((step - last_step) * self.tokens_per_step) as f64 / secs);
        }
        self.mark = (step, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_have_the_nanogpt_shape() {
        assert_eq!(
            format_line(250, Some(2.04123), Some(2.08009), None, Some(21_300.0)),
            "step 250: train loss 2.0412, val loss 2.0801, 21.3k tok/s"
        );
        assert_eq!(format_rate(950.2), "950 tok/s");
        assert_eq!(format_rate(1_250_000.0), "1.25M tok/s");
        assert_eq!(format_rate(f64::NAN), "? tok/s");
    }

    #[test]
    fn plain_mode_logs_every_n_steps() {
        let buf = Shared::default();
        let mut p = Progress::lines(Box::new(buf.clone()), 0, 768, 2);
        for s in 1..=4 {
            p.step(s, 3.0 - s as f32 * 0.1, 1e-3);
        }
        p.eval(4, Some(2.5), Some(2.6));
        p.finish();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("step 2: train loss 2.8000, lr 1.000e-3"));
        assert!(lines[1].starts_with("step 4: train loss 2.6000, lr 1.000e-3"));
        assert!(lines[2].starts_with("step 4: train loss 2.5000, val loss 2.6000"));
        assert!(lines[2].ends_with("tok/s"));
    }
}
