//! metrics.jsonl: flushed lines, bitwise-identical resume by truncation, reading back, plots.

use kiln_runtime::metrics::{
    read_jsonl, read_metrics, MetricRecord, MetricsWriter, TimingRecord, TimingsWriter,
};
use kiln_runtime::plot::{plot_loss_svg, plot_metrics_file, LossCurves};
use miette::Diagnostic;

fn code(e: &dyn Diagnostic) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

/// A deterministic record for `step`, with evaluations every 4 steps.
fn record(step: u64) -> MetricRecord {
    let loss = 4.0 / (1.0 + step as f32 * 0.37);
    MetricRecord {
        step,
        loss: (step > 0).then_some(loss),
        lr: (step > 0).then_some(1e-3 * (step as f64 / 11.0)),
        grad_norm: (step > 0).then_some(loss * 0.3),
        tokens: Some(step * 768),
        val_loss: step.is_multiple_of(4).then_some(loss + 0.1),
        train_eval_loss: step.is_multiple_of(4).then_some(loss - 0.05),
        full_val_loss: None,
    }
}

#[test]
fn resume_truncates_to_a_byte_identical_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight.jsonl");
    let mut w = MetricsWriter::create(&straight).unwrap();
    for s in 0..=12 {
        w.write(&record(s)).unwrap();
    }
    drop(w);

    // The interrupted run got to step 9 (and half a line of step 10) before dying; its last
    // checkpoint is at step 6.
    let resumed = dir.path().join("resumed.jsonl");
    let mut w = MetricsWriter::create(&resumed).unwrap();
    for s in 0..=9 {
        w.write(&record(s)).unwrap();
    }
    drop(w);
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&resumed)
        .unwrap();
    std::io::Write::write_all(&mut torn, b"{\"step\":10,\"lo").unwrap();
    drop(torn);

    let mut w = MetricsWriter::resume(&resumed, 6).unwrap();
    assert_eq!(w.last_step(), Some(6));
    let prefix = std::fs::read(&resumed).unwrap();
    assert_eq!(
        read_metrics(&resumed).unwrap(),
        (0..=6).map(record).collect::<Vec<_>>()
    );
    assert!(std::fs::read(&straight).unwrap().starts_with(&prefix));
    for s in 7..=12 {
        w.write(&record(s)).unwrap();
    }
    drop(w);
    assert_eq!(
        std::fs::read(&resumed).unwrap(),
        std::fs::read(&straight).unwrap()
    );

    // Resuming a missing file starts empty; resuming at 0 keeps only step 0's line.
    let fresh = dir.path().join("fresh.jsonl");
    let w = MetricsWriter::resume(&fresh, 5).unwrap();
    assert_eq!(w.last_step(), None);
    drop(w);
    assert_eq!(std::fs::read(&fresh).unwrap(), b"");
    let w = MetricsWriter::resume(&resumed, 0).unwrap();
    drop(w);
    assert_eq!(read_metrics(&resumed).unwrap(), vec![record(0)]);
}

#[test]
fn lines_are_flushed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut w = MetricsWriter::create(&path).unwrap();
    w.write(&record(4)).unwrap();
    // Visible before the writer is dropped.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with("{\"step\":4,\"loss\":"));
    assert!(
        !text.contains("tokens_per_s"),
        "wall-clock values stay out: {text}"
    );

    let tpath = dir.path().join("timings.jsonl");
    let mut t = TimingsWriter::create(&tpath).unwrap();
    let timing = TimingRecord {
        step: 1,
        elapsed_s: 0.5,
        step_ms: 500.0,
        tokens_per_s: 1536.0,
    };
    t.write(&timing).unwrap();
    assert_eq!(read_jsonl::<TimingRecord>(&tpath).unwrap(), vec![timing]);
}

#[test]
fn damaged_logs_are_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    std::fs::write(&path, "{\"step\":1}\nnot json\n{\"step\":3}\n").unwrap();
    let err = MetricsWriter::resume(&path, 5).unwrap_err();
    assert_eq!(code(&err), "metrics::corrupt");
    assert!(err.to_string().contains("line 2"));
    let err = read_metrics(&path).unwrap_err();
    assert_eq!(code(&err), "metrics::corrupt");

    std::fs::write(&path, "{\"step\":5}\n{\"step\":3}\n").unwrap();
    let err = MetricsWriter::resume(&path, 9).unwrap_err();
    assert_eq!(code(&err), "metrics::order");
}

#[test]
fn loss_plot_is_an_svg_with_both_curves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut w = MetricsWriter::create(&path).unwrap();
    for s in 0..=40 {
        w.write(&record(s)).unwrap();
    }
    drop(w);
    let svg = dir.path().join("loss.svg");
    plot_metrics_file(&path, "gpt2_char_tiny", &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..100.min(text.len())]);
    assert!(text.contains("gpt2_char_tiny"));
    assert!(text.contains("train loss") && text.contains("val loss"));
    assert!(
        text.matches("<polyline").count() >= 2,
        "two line series expected"
    );

    let curves = LossCurves::from_records(&read_metrics(&path).unwrap());
    assert_eq!(curves.train.len(), 40);
    assert_eq!(curves.val.len(), 11);

    let err = plot_loss_svg(&LossCurves::default(), "x", &svg).unwrap_err();
    assert_eq!(code(&err), "plot::empty");
}
