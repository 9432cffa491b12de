//! Loss curves as SVG, from `metrics.jsonl`: train loss per logged step and validation loss per
//! evaluation, on one chart, the picture users compare against nanoGPT's and llm.c's.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use plotters::prelude::*;

use crate::metrics::{read_metrics, MetricRecord, MetricsError};

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum PlotError {
    #[error("no finite loss values to plot")]
    #[diagnostic(
        code(plot::empty),
        help("the metrics file has no `loss` or `val_loss` values yet")
    )]
    Empty,
    #[error("cannot draw `{path}`: {reason}")]
    #[diagnostic(code(plot::draw))]
    Draw { path: PathBuf, reason: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Metrics(#[from] MetricsError),
}

/// The series of a loss plot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LossCurves {
    pub train: Vec<(u64, f32)>,
    pub val: Vec<(u64, f32)>,
}

impl LossCurves {
    /// Train loss and validation loss (random-batch estimate) by step; non-finite values are
    /// skipped, as a diverged step would flatten the rest of the chart.
    pub fn from_records(records: &[MetricRecord]) -> LossCurves {
        let pick = |f: fn(&MetricRecord) -> Option<f32>| {
            records
                .iter()
                .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.step, v)))
                .collect()
        };
        LossCurves {
            train: pick(|r| r.loss),
            val: pick(|r| r.val_loss),
        }
    }
}

/// Draws the loss curves into an SVG file.
pub fn plot_loss_svg(curves: &LossCurves, title: &str, out: &Path) -> Result<(), PlotError> {
    let all = curves.train.iter().chain(&curves.val);
    let (mut lo, mut hi, mut max_step) = (f32::INFINITY, f32::NEG_INFINITY, 0u64);
    for &(s, v) in all {
        lo = lo.min(v);
        hi = hi.max(v);
        max_step = max_step.max(s);
    }
    if lo > hi {
        return Err(PlotError::Empty);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let draw_err = |e: String| PlotError::Draw {
        path: out.to_path_buf(),
        reason: e,
    };

    let root = SVGBackend::new(out, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..max_step.max(1), (lo - pad)..(hi + pad))
        .map_err(|e| draw_err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    let series = [
        ("train loss", &curves.train, BLUE),
        ("val loss", &curves.val, RED),
    ];
    for (label, points, color) in series {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| draw_err(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    root.present().map_err(|e| draw_err(e.to_string()))?;
    Ok(())
}

/// Reads `metrics` (a `metrics.jsonl`) and draws its loss curves into `out`.
pub fn plot_metrics_file(metrics: &Path, title: &str, out: &Path) -> Result<(), PlotError> {
    let records = read_metrics(metrics)?;
    plot_loss_svg(&LossCurves::from_records(&records), title, out)
}
