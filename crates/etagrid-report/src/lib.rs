//! Reports for an etagrid sweep: a paper-style heatmap of the eval metric over
//! the LoRA+ learning rates (η_A, η_B) and a self-contained `index.html`.
//!
//! The heatmap is drawn with plotters' pure-Rust `ab_glyph` text path and a
//! bundled DejaVu Sans, so rendering needs no system fontconfig/freetype.

mod aggregate;
mod format;
mod heatmap;
mod html;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One grid cell's outcome, as read from the results store.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Final eval metric (e.g. accuracy); `None` unless done.
    pub metric: Option<f64>,
    pub eval_loss: Option<f64>,
    pub train_loss: Option<f64>,
    pub steps: Option<i64>,
    pub wall_s: Option<f64>,
    pub device: Option<String>,
}

/// Everything a report is made from.
#[derive(Debug, Clone)]
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
}

/// What [`write_report`] wrote and found.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    pub heatmap: PathBuf,
    pub index: PathBuf,
    /// Best (lr_a, lr_b) by mean metric over seeds, among cells with a metric.
    pub best: Option<BestCell>,
    /// Best among points with lr_b == lr_a (relative tolerance 1e-9).
    pub best_on_diagonal: Option<BestCell>,
    pub cells_done: usize,
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
    #[error("load the bundled DejaVu Sans font")]
    Font,
    #[error("draw the heatmap")]
    Draw {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error("encode the heatmap as PNG")]
    Encode {
        #[source]
        source: image::ImageError,
    },
}

/// File name of the heatmap inside the report directory.
pub const HEATMAP_FILE: &str = "heatmap.png";
/// File name of the HTML page inside the report directory.
pub const INDEX_FILE: &str = "index.html";

/// Writes `heatmap.png` and `index.html` into `out_dir` (created if needed).
///
/// Both files are written atomically (`<name>.tmp`, then renamed), the PNG
/// first, so a crash never leaves a half-written report behind.
pub fn write_report(input: &ReportInput, out_dir: &Path) -> Result<ReportSummary, ReportError> {
    fs::create_dir_all(out_dir).map_err(|source| ReportError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;

    let grid = aggregate::Grid::build(&input.cells)?;
    let best = grid.best_point(input.higher_is_better, |_| true);
    let best_diag = grid.best_point(input.higher_is_better, aggregate::Point::on_diagonal);
    let view = ReportView {
        input,
        grid: &grid,
        best,
        best_diag,
    };

    let png = heatmap::render(&view)?;
    let heatmap = out_dir.join(HEATMAP_FILE);
    write_atomic(&heatmap, &png)?;

    let page = html::render(&view);
    let index = out_dir.join(INDEX_FILE);
    write_atomic(&index, page.as_bytes())?;

    Ok(ReportSummary {
        heatmap,
        index,
        best: best.map(|i| grid.points[i].to_best_cell()),
        best_on_diagonal: best_diag.map(|i| grid.points[i].to_best_cell()),
        cells_done: grid.cells_done,
        cells_total: input.cells.len(),
    })
}

/// What the renderers share: the input, the aggregated grid and the indices
/// (into `grid.points`) of the best point overall and on the diagonal.
pub(crate) struct ReportView<'a> {
    pub input: &'a ReportInput,
    pub grid: &'a aggregate::Grid,
    pub best: Option<usize>,
    pub best_diag: Option<usize>,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
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
