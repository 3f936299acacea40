//! Reports for an etagrid sweep: a data model of the grid (mean ± std over seeds, best and
//! best λ = 1 points, ties, λ profile, ridge, top-k λ, learning curves, GPU-seconds), figures
//! drawn from it (heatmaps, λ profile, top-k λ, learning curves; PNG and SVG), tidy CSV/JSON
//! exports and a self-contained `index.html`; and compare reports over several sweeps.
//!
//! The heatmap is drawn with plotters' pure-Rust `ab_glyph` text path and a
//! bundled DejaVu Sans, so rendering needs no system fontconfig/freetype.

mod aggregate;
mod canvas;
mod compare;
mod export;
mod format;
mod heatmap;
mod html;
mod model;
mod plots;

pub use compare::{write_compare, CompareSummary};
pub use export::{cells_csv, cells_json, rows as export_rows, CellRow};
pub use heatmap::{heatmap_layout, CellBox, HeatmapAxis, HeatmapLayout, LineSegment};
pub use model::{
    gpu_seconds, CurveSet, Curves, LambdaCount, LambdaLine, LambdaRow, PointRef, PointStats,
    ReportModel, RidgeRow, TieRule, TopK, LAMBDA_LINES, TARGET_FRACTION, TIE_SE, TOP_K,
};

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One grid cell's outcome, as read from the results store (one cell = one seed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReportCell {
    /// Short content hash, e.g. "3fa9c01d2b7e4a10".
    pub cell_id: String,
    /// η_A, the learning rate of the LoRA A matrices.
    pub lr_a: f64,
    /// η_B, the learning rate of the LoRA B matrices.
    pub lr_b: f64,
    pub seed: u64,
    /// "pending" | "running" | "done" | "failed" | "diverged".
    pub state: String,
    /// Final eval metric (the sweep's metric, e.g. accuracy); `None` unless done.
    pub metric: Option<f64>,
    pub eval_loss: Option<f64>,
    /// The other classification metrics the store keeps (whatever the sweep's metric is).
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub mcc: Option<f64>,
    pub train_loss: Option<f64>,
    /// Steps trained (the last step reached, for unfinished cells).
    pub steps: Option<i64>,
    pub total_steps: Option<i64>,
    pub wall_s: Option<f64>,
    /// How many cells shared the device with this one (trained as a pack); `None` = alone.
    pub pack_size: Option<i64>,
    pub device: Option<String>,
    pub attempts: Option<i64>,
    /// As the store writes them (UTC, "YYYY-MM-DD HH:MM:SS").
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// Successive halving: the rung (1-based) a pruned cell stopped at and its metric there
    /// (its `state` is then "pruned" and `metric` `None`: it is not a candidate for best).
    #[serde(default)]
    pub pruned_at: Option<(u32, f64)>,
}

/// A cell's curves, as (step, value) pairs in step order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CellCurves {
    /// Training loss every `log_every` steps.
    pub train_loss: Vec<(i64, f64)>,
    /// The sweep's metric on the eval set, where evaluated during training (`eval_every`).
    pub eval_metric: Vec<(i64, f64)>,
}

/// Everything a report is made from.
#[derive(Debug, Clone, Default)]
pub struct ReportInput {
    /// Sweep name, used in titles.
    pub sweep: String,
    /// Name of the metric, e.g. "accuracy".
    pub metric_name: String,
    pub higher_is_better: bool,
    /// Several seeds per (lr_a, lr_b) are possible.
    pub cells: Vec<ReportCell>,
    /// The sweep file's text, shown in the HTML in a `<pre>`.
    pub spec_toml: String,
    /// E.g. majority-class accuracy; shown in the HTML if `Some`.
    pub chance_level: Option<f64>,
    /// Size of the eval set, for the binomial standard error of accuracy with one seed.
    pub n_eval: Option<u64>,
    /// Curves by cell id; only the cells of [`curve_cells`] are used.
    pub curves: BTreeMap<String, CellCurves>,
    /// Metrics worse than this get the bottom colour of the heatmap (stated on the figure).
    pub color_floor: Option<f64>,
    /// Successive halving: lines for the page's summary (the promotions, the device time spent
    /// against the full grid's).
    pub halving: Vec<String>,
}

/// What [`write_report`] wrote and found.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    pub heatmap: PathBuf,
    pub index: PathBuf,
    /// Every file written, index.html last.
    pub files: Vec<PathBuf>,
    /// Best (lr_a, lr_b) by mean metric over seeds, among cells with a metric.
    pub best: Option<BestCell>,
    /// Best among points with lr_b == lr_a (relative tolerance 1e-9).
    pub best_on_diagonal: Option<BestCell>,
    pub cells_done: usize,
    /// Cells successive halving pruned.
    pub cells_pruned: usize,
    pub cells_total: usize,
}

/// One (η_A, η_B) point with its metric averaged over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct BestCell {
    pub lr_a: f64,
    pub lr_b: f64,
    /// λ = lr_b / lr_a.
    pub ratio: f64,
    /// Mean metric over the seeds that have one.
    pub metric: f64,
    /// How many seeds the mean is over.
    pub seeds: usize,
}

impl From<&PointRef> for BestCell {
    fn from(p: &PointRef) -> BestCell {
        BestCell {
            lr_a: p.lr_a,
            lr_b: p.lr_b,
            ratio: p.lambda,
            metric: p.mean,
            seeds: p.seeds,
        }
    }
}

/// Why a report could not be written. Messages read after "failed to …".
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("create report directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "place cell {cell_id} on the log-scale grid: learning rates must be positive and finite \
         (eta_A = {lr_a}, eta_B = {lr_b})"
    )]
    InvalidLearningRate {
        cell_id: String,
        lr_a: f64,
        lr_b: f64,
    },
    #[error(
        "report sweep {sweep}: no cell has finished with a metric yet ({cells} cells: {states}); \
         run it (`etagrid run <sweep.toml>`) and report again once a cell is done"
    )]
    NothingFinished {
        sweep: String,
        cells: usize,
        states: String,
    },
    #[error("compare sweeps: give at least one sweep")]
    NoSweeps,
    #[error("load the bundled DejaVu Sans font")]
    Font,
    #[error("draw a figure")]
    Draw {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error("encode a figure as PNG")]
    Encode {
        #[source]
        source: image::ImageError,
    },
    #[error("write the {what} export")]
    Export {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// File name of the heatmap inside the report directory.
pub const HEATMAP_FILE: &str = "heatmap.png";
/// File name of the HTML page inside the report directory.
pub const INDEX_FILE: &str = "index.html";

/// The figures of a report, by file stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FigureKind {
    Heatmap(HeatmapAxis),
    LambdaProfile,
    TopK,
    Curves,
}

impl FigureKind {
    pub(crate) fn stem(self) -> &'static str {
        match self {
            FigureKind::Heatmap(HeatmapAxis::EtaB) => "heatmap",
            FigureKind::Heatmap(HeatmapAxis::Lambda) => "heatmap-lambda",
            FigureKind::LambdaProfile => "lambda-profile",
            FigureKind::TopK => "top-k",
            FigureKind::Curves => "curves",
        }
    }

    /// The figures a model has something to show in.
    pub(crate) fn for_model(model: &ReportModel) -> Vec<FigureKind> {
        let mut out = vec![FigureKind::Heatmap(HeatmapAxis::EtaB)];
        if model.lambda_grid {
            out.push(FigureKind::Heatmap(HeatmapAxis::Lambda));
        }
        out.push(FigureKind::LambdaProfile);
        out.push(FigureKind::TopK);
        if model
            .curves
            .as_ref()
            .is_some_and(|c| !c.best.train_loss.is_empty() || c.best.eval_metric.len() > 1)
        {
            out.push(FigureKind::Curves);
        }
        out
    }

    /// (PNG bytes, SVG text).
    fn render(
        self,
        model: &ReportModel,
        color_floor: Option<f64>,
    ) -> Result<(Vec<u8>, String), ReportError> {
        fn both(f: &impl canvas::Figure) -> Result<(Vec<u8>, String), ReportError> {
            Ok((canvas::png(f)?, canvas::svg(f)?))
        }
        match self {
            FigureKind::Heatmap(axis) => both(&heatmap::Heatmap {
                model,
                axis,
                color_floor,
                title: None,
            }),
            FigureKind::LambdaProfile => both(&plots::LambdaProfile { model }),
            FigureKind::TopK => both(&plots::TopKFigure { model }),
            FigureKind::Curves => both(&plots::CurvesFigure { model }),
        }
    }
}

/// The cells whose curves the report draws (the seeds of the best point, the best λ = 1 point
/// and, when λ = 1 wins, the best λ > 1 point): the caller loads these into
/// [`ReportInput::curves`].
pub fn curve_cells(input: &ReportInput) -> Vec<String> {
    let Ok(model) = ReportModel::build(input) else {
        return Vec::new();
    };
    let Some(c) = &model.curves else {
        return Vec::new();
    };
    [
        Some(&c.best),
        c.lambda1.as_ref(),
        c.best_lambda_gt1.as_ref(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|set| model.points[set.point.index].cell_ids.clone())
    .collect()
}

/// Writes the report into `out_dir` (created if needed): every figure as PNG and SVG
/// (rendered in parallel), `cells.csv`, `cells.json`, `model.json` and `index.html`.
///
/// Every file is written atomically (`<name>.tmp`, then renamed), index.html last, so a
/// crash never leaves a half-written report behind. A sweep without a finished cell is
/// [`ReportError::NothingFinished`] and writes nothing.
pub fn write_report(input: &ReportInput, out_dir: &Path) -> Result<ReportSummary, ReportError> {
    let model = ReportModel::build(input)?;
    fs::create_dir_all(out_dir).map_err(|source| ReportError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    canvas::ensure_font()?;
    let kinds = FigureKind::for_model(&model);
    let rendered: Vec<(FigureKind, (Vec<u8>, String))> = kinds
        .par_iter()
        .map(|&k| k.render(&model, input.color_floor).map(|r| (k, r)))
        .collect::<Result<_, _>>()?;
    let mut files = Vec::new();
    let mut put = |name: String, bytes: &[u8]| -> Result<PathBuf, ReportError> {
        let path = out_dir.join(name);
        write_atomic(&path, bytes)?;
        files.push(path.clone());
        Ok(path)
    };
    for (kind, (png, svg)) in &rendered {
        put(format!("{}.png", kind.stem()), png)?;
        put(format!("{}.svg", kind.stem()), svg.as_bytes())?;
    }
    put(CELLS_CSV.to_string(), export::cells_csv(input)?.as_bytes())?;
    put(
        CELLS_JSON.to_string(),
        export::cells_json(input)?.as_bytes(),
    )?;
    let model_json = serde_json::to_string_pretty(&model).map_err(|e| ReportError::Export {
        what: "model.json",
        source: Box::new(e),
    })?;
    put(MODEL_JSON.to_string(), model_json.as_bytes())?;
    let page = html::render(input, &model, &kinds);
    let index = put(INDEX_FILE.to_string(), page.as_bytes())?;
    Ok(ReportSummary {
        heatmap: out_dir.join(HEATMAP_FILE),
        index,
        files,
        best: model.best.as_ref().map(BestCell::from),
        best_on_diagonal: model.best_lambda1.as_ref().map(BestCell::from),
        cells_done: model.cells_done(),
        cells_pruned: model.cells_pruned(),
        cells_total: model.cells_total,
    })
}

/// The tidy exports' file names.
pub const CELLS_CSV: &str = "cells.csv";
pub const CELLS_JSON: &str = "cells.json";
/// The data model behind the figures.
pub const MODEL_JSON: &str = "model.json";

/// etagrid's version and the git commit it was built from (when built from a checkout).
pub fn build_info() -> (&'static str, Option<&'static str>) {
    (
        env!("CARGO_PKG_VERSION"),
        option_env!("ETAGRID_GIT_COMMIT").filter(|c| !c.is_empty()),
    )
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        // Best effort: a stale tmp file is harmless, the error matters more.
        let _ = fs::remove_file(&tmp);
        ReportError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}
