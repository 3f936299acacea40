//! Tidy exports: one row per cell (= per grid point × seed) with every metric, the learning
//! rates, λ, the state and the timings, as CSV and as a JSON array of objects.

use serde::Serialize;

use crate::model::gpu_seconds;
use crate::{ReportCell, ReportError, ReportInput};

/// One row of `cells.csv` / `cells.json`.
#[derive(Debug, Clone, Serialize)]
pub struct CellRow<'a> {
    pub sweep: &'a str,
    pub cell_id: &'a str,
    pub lr_a: f64,
    pub lr_b: f64,
    pub lambda: f64,
    pub seed: u64,
    pub state: &'a str,
    /// Which metric `metric` is (the sweep's).
    pub metric_name: &'a str,
    pub metric: Option<f64>,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub mcc: Option<f64>,
    pub eval_loss: Option<f64>,
    pub train_loss: Option<f64>,
    pub steps: Option<i64>,
    pub total_steps: Option<i64>,
    pub wall_s: Option<f64>,
    pub pack_size: Option<i64>,
    pub gpu_seconds: Option<f64>,
    pub device: Option<&'a str>,
    pub attempts: Option<i64>,
    pub started_at: Option<&'a str>,
    pub finished_at: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Cells in grid order (η_A, η_B, seed).
pub fn rows(input: &ReportInput) -> Vec<CellRow<'_>> {
    let mut cells: Vec<&ReportCell> = input.cells.iter().collect();
    cells.sort_by(|a, b| {
        a.lr_a
            .total_cmp(&b.lr_a)
            .then(a.lr_b.total_cmp(&b.lr_b))
            .then(a.seed.cmp(&b.seed))
    });
    cells
        .into_iter()
        .map(|c| CellRow {
            sweep: &input.sweep,
            cell_id: &c.cell_id,
            lr_a: c.lr_a,
            lr_b: c.lr_b,
            lambda: c.lr_b / c.lr_a,
            seed: c.seed,
            state: &c.state,
            metric_name: &input.metric_name,
            metric: c.metric.filter(|m| m.is_finite()),
            accuracy: c.accuracy,
            macro_f1: c.macro_f1,
            mcc: c.mcc,
            eval_loss: c.eval_loss,
            train_loss: c.train_loss.filter(|m| m.is_finite()),
            steps: c.steps,
            total_steps: c.total_steps,
            wall_s: c.wall_s,
            pack_size: c.pack_size,
            gpu_seconds: c.wall_s.map(|w| gpu_seconds(w, c.pack_size)),
            device: c.device.as_deref(),
            attempts: c.attempts,
            started_at: c.started_at.as_deref(),
            finished_at: c.finished_at.as_deref(),
            error: c.error.as_deref(),
        })
        .collect()
}

/// `cells.csv`: a header row, then one row per cell; missing values are empty fields.
pub fn cells_csv(input: &ReportInput) -> Result<String, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows(input) {
        w.serialize(r).map_err(|e| ReportError::Export {
            what: "cells.csv",
            source: Box::new(e),
        })?;
    }
    let bytes = w.into_inner().map_err(|e| ReportError::Export {
        what: "cells.csv",
        source: Box::new(e.into_error()),
    })?;
    String::from_utf8(bytes).map_err(|e| ReportError::Export {
        what: "cells.csv",
        source: Box::new(e),
    })
}

/// `cells.json`: an array of objects (missing values are `null`).
pub fn cells_json(input: &ReportInput) -> Result<String, ReportError> {
    serde_json::to_string_pretty(&rows(input)).map_err(|e| ReportError::Export {
        what: "cells.json",
        source: Box::new(e),
    })
}
