//! `etagrid report` (one sweep, or a compare report over several) and `etagrid best`: the
//! store's cells turned into the report crate's input.

use crate::common::{block_on, sweep_name, Exit};
use anyhow::{Context, Result};
use etagrid_report::{CellCurves, ReportCell, ReportError, ReportInput, ReportModel};
use etagrid_spec::SweepSpec;
use etagrid_store::{CellRow, Store, StoreUrl, SweepRow};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Turns a stored curve value into the sweep's metric.
type ToMetric = fn(f64) -> f64;

/// The eval curve that holds the sweep's metric during training, and how to turn its values
/// into the metric; `None` when the metric is not evaluated during training.
fn eval_curve(metric: &str) -> Option<(&'static str, ToMetric)> {
    match metric {
        "accuracy" => Some(("eval_accuracy", |v| v)),
        "macro_f1" => Some(("eval_macro_f1", |v| v)),
        "mcc" => Some(("eval_mcc", |v| v)),
        "eval_loss" => Some(("eval_loss", |v| v)),
        "perplexity" => Some(("eval_loss", f64::exp)),
        _ => None,
    }
}

/// A sweep's report input from the store: cells (of the sweep file's current grid), times,
/// chance level and eval-set size (when the task files are there) and, with `curves`, the
/// curves the report draws.
pub fn load_input(db: &StoreUrl, sweep: &str, curves: bool) -> Result<ReportInput> {
    let (row, cells) = load_sweep(db, &sweep_name(sweep)?)?;
    input_of(db, &row, &cells, curves)
}

/// [`load_input`] for a sweep row and cells already read with [`load_sweep`].
pub fn input_of(
    db: &StoreUrl,
    row: &SweepRow,
    cells: &[CellRow],
    curves: bool,
) -> Result<ReportInput> {
    let name = row.name.clone();
    let (chance, n_eval) = match SweepSpec::parse(Path::new(&row.source_path), &row.source_text) {
        Ok(spec) => eval_stats(&spec).unwrap_or((None, None)),
        Err(_) => (None, None),
    };
    let times = block_on(async {
        let store = Store::open(db).await?;
        let t = store.cell_times(&name).await;
        store.close().await;
        t
    })??;
    let times: HashMap<String, (Option<String>, Option<String>)> = times
        .into_iter()
        .map(|t| (t.id, (t.started_at, t.finished_at)))
        .collect();
    let mut input = ReportInput {
        sweep: row.name.clone(),
        metric_name: row.metric.clone(),
        higher_is_better: row.higher_is_better,
        cells: cells
            .iter()
            .map(|c| {
                let (started_at, finished_at) = times.get(&c.id).cloned().unwrap_or((None, None));
                // A pruned halving cell is drawn with the rung it reached, not as a result.
                let pruned_at = c.pruned.then(|| {
                    let rung = c.rung.unwrap_or(0).max(0) as u32 + 1;
                    (rung, c.metric.unwrap_or(f64::NAN))
                });
                ReportCell {
                    cell_id: c.id.clone(),
                    lr_a: c.lr_a,
                    lr_b: c.lr_b,
                    seed: c.seed as u64,
                    state: if c.pruned {
                        "pruned".into()
                    } else {
                        c.state.as_str().into()
                    },
                    metric: if c.pruned { None } else { c.metric },
                    eval_loss: c.eval_loss,
                    accuracy: c.accuracy,
                    macro_f1: c.macro_f1,
                    mcc: c.mcc,
                    train_loss: c.train_loss,
                    steps: c.step,
                    total_steps: c.total_steps,
                    wall_s: c.wall_s,
                    // A packed cell shares its worker's wall time with its pack.
                    pack_size: c.pack_size,
                    device: c.device.clone(),
                    attempts: Some(c.attempts),
                    started_at,
                    finished_at,
                    error: c.error.clone(),
                    pruned_at,
                }
            })
            .collect(),
        spec_toml: row.source_text.clone(),
        chance_level: chance,
        n_eval,
        curves: Default::default(),
        color_floor: None,
        halving: halving_lines(db, &name, cells)?,
    };
    if curves {
        let ids = etagrid_report::curve_cells(&input);
        let eval = eval_curve(&row.metric);
        input.curves = block_on(async {
            let store = Store::open(db).await?;
            let mut out = std::collections::BTreeMap::new();
            for id in ids {
                let train_loss = store.curve(&name, &id, "train_loss").await?;
                let eval_metric = match eval {
                    Some((curve, f)) => store
                        .curve(&name, &id, curve)
                        .await?
                        .into_iter()
                        .map(|(s, v)| (s, f(v)))
                        .collect(),
                    None => Vec::new(),
                };
                out.insert(
                    id,
                    CellCurves {
                        train_loss,
                        eval_metric,
                    },
                );
            }
            store.close().await;
            anyhow::Ok(out)
        })??;
    }
    Ok(input)
}

/// A halving sweep's promotions and its device time against the full grid's
/// ([`crate::status::halving_cost`]); nothing for a grid sweep.
fn halving_lines(db: &StoreUrl, name: &str, cells: &[CellRow]) -> Result<Vec<String>> {
    if cells.iter().all(|c| c.rung.is_none()) {
        return Ok(Vec::new());
    }
    let rungs = block_on(async {
        let store = Store::open(db).await?;
        let r = store.halving_rungs(name).await;
        store.close().await;
        r
    })??;
    let mut lines: Vec<String> = rungs.into_iter().map(|r| r.reason).collect();
    lines.extend(crate::status::halving_cost(cells));
    Ok(lines)
}

/// `etagrid report SWEEP` writes `<reports>/<sweep>/`; with several sweeps, a compare report
/// into `--out` (default `<reports>/compare`).
pub fn report(
    db: &StoreUrl,
    sweeps: &[String],
    reports: &Path,
    out: Option<&Path>,
    color_floor: Option<f64>,
) -> Result<Exit> {
    if let [sweep] = sweeps {
        report_one(db, sweep, reports, out, color_floor)?;
        return Ok(Exit::Ok);
    }
    let inputs = sweeps
        .iter()
        .map(|s| load_input(db, s, true))
        .collect::<Result<Vec<_>>>()?;
    let dir = out.map_or_else(|| reports.join("compare"), Path::to_path_buf);
    let s = etagrid_report::write_compare(&inputs, &dir)
        .with_context(|| format!("failed to write the compare report to {}", dir.display()))?;
    eprintln!(
        "compare report: {} ({})",
        s.index.display(),
        s.sweeps.join(", ")
    );
    Ok(Exit::Ok)
}

/// One sweep's report; `out` defaults to `<reports>/<sweep>`.
pub fn report_one(
    db: &StoreUrl,
    sweep: &str,
    reports: &Path,
    out: Option<&Path>,
    color_floor: Option<f64>,
) -> Result<PathBuf> {
    let mut input = load_input(db, sweep, true)?;
    input.color_floor = color_floor;
    let dir = out.map_or_else(|| reports.join(&input.sweep), Path::to_path_buf);
    let s = etagrid_report::write_report(&input, &dir)
        .with_context(|| format!("failed to write the report to {}", dir.display()))?;
    eprintln!(
        "report: {} ({} of {} cells done{})",
        s.index.display(),
        s.cells_done,
        s.cells_total,
        match s.cells_pruned {
            0 => String::new(),
            n => format!(", {n} pruned by successive halving"),
        }
    );
    if let Some(b) = &s.best {
        eprintln!(
            "best: η_A={:.3e} η_B={:.3e} (λ={:.3}) {}={:.4}",
            b.lr_a, b.lr_b, b.ratio, input.metric_name, b.metric
        );
    }
    if let Some(d) = &s.best_on_diagonal {
        eprintln!(
            "best with η_B = η_A: η={:.3e} {}={:.4}",
            d.lr_a, input.metric_name, d.metric
        );
    }
    Ok(dir)
}

/// The end-of-run report: a sweep with no finished cell is a note, not a failed run.
pub fn report_after_run(db: &StoreUrl, sweep: &str, reports: &Path) -> Result<()> {
    match report_one(db, sweep, reports, None, None) {
        Err(e)
            if matches!(
                e.downcast_ref::<ReportError>(),
                Some(ReportError::NothingFinished { .. })
            ) =>
        {
            eprintln!("no report: {e:#}");
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// `etagrid best SWEEP [--json]`.
pub fn best(db: &StoreUrl, sweep: &str, json: bool) -> Result<Exit> {
    let input = load_input(db, sweep, false)?;
    let model = ReportModel::build(&input)?;
    let tied: Vec<_> = model.points.iter().filter(|p| p.tied_with_best).collect();
    if json {
        let out = serde_json::json!({
            "sweep": model.sweep,
            "metric": model.metric,
            "higher_is_better": model.higher_is_better,
            "cells_done": model.cells_done(),
            "cells_total": model.cells_total,
            "best": model.best.as_ref().map(|b| point_json(&model, b)),
            "best_lambda1": model.best_lambda1.as_ref().map(|b| point_json(&model, b)),
            "gain_over_lambda1": model.gain_over_lambda1,
            "chance_level": model.chance_level,
            "tie_rule": model.ties.description,
            "tied_with_best": tied,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Exit::Ok);
    }
    let line = |label: &str, p: &etagrid_report::PointRef| {
        let std = p.std.map(|s| format!(" ± {s:.4}")).unwrap_or_default();
        println!(
            "{label}: η_A={:.3e} η_B={:.3e} λ={:.4} {}={:.4}{std} over {} seed(s); cells {}",
            p.lr_a,
            p.lr_b,
            p.lambda,
            model.metric,
            p.mean,
            p.seeds,
            model.points[p.index].cell_ids.join(",")
        );
    };
    println!(
        "sweep {}: {} of {} cells done",
        model.sweep,
        model.cells_done(),
        model.cells_total
    );
    if let Some(b) = &model.best {
        line("best", b);
    }
    match &model.best_lambda1 {
        Some(d) => line("best λ=1", d),
        None => println!("best λ=1: none finished"),
    }
    if let Some(g) = model.gain_over_lambda1 {
        println!("gain over best λ=1: {g:+.4}");
    }
    println!(
        "tied with best: {} point(s) ({})",
        tied.len(),
        model.ties.description
    );
    Ok(Exit::Ok)
}

fn point_json(model: &ReportModel, p: &etagrid_report::PointRef) -> serde_json::Value {
    serde_json::json!({
        "lr_a": p.lr_a,
        "lr_b": p.lr_b,
        "lambda": p.lambda,
        "metric": p.mean,
        "std": p.std,
        "seeds": p.seeds,
        "cell_ids": model.points[p.index].cell_ids,
    })
}

/// The chance level (majority class on the sweep's metric) and the eval-set size, when the
/// task files are still there.
pub fn eval_stats(spec: &SweepSpec) -> Result<(Option<f64>, Option<u64>)> {
    let ex = etagrid_data::eval_examples(&spec.task)?;
    let mut counts = std::collections::HashMap::new();
    for e in &ex {
        *counts.entry(e.label.as_str()).or_insert(0u64) += 1;
    }
    let counts: Vec<u64> = counts.into_values().collect();
    let chance = etagrid_data::chance_level(spec.task.metric, &counts);
    Ok((chance, Some(ex.len() as u64)))
}

/// A sweep's row and the cells of its current grid, from the store.
pub fn load_sweep(db: &StoreUrl, name: &str) -> Result<(SweepRow, Vec<CellRow>)> {
    let (row, cells) = block_on(async {
        let store = Store::open(db).await?;
        let row = store.sweep(name).await?;
        let cells = store.cells(name).await?;
        store.close().await;
        anyhow::Ok((row, cells))
    })??;
    let cells = current_cells(&row, cells);
    Ok((row, cells))
}

/// Only the cells of the sweep file's current grid: the store keeps cells of earlier versions of
/// the file (another metric, other steps…), which must not enter a report or an export.
fn current_cells(row: &SweepRow, cells: Vec<CellRow>) -> Vec<CellRow> {
    match SweepSpec::parse(Path::new(&row.source_path), &row.source_text) {
        Ok(mut spec) => {
            // The inputs' digest of the last run: ids cover the content it saw.
            spec.inputs = row.inputs.clone();
            let ids: std::collections::HashSet<String> =
                spec.cells().into_iter().map(|c| c.id.0).collect();
            cells.into_iter().filter(|c| ids.contains(&c.id)).collect()
        }
        Err(_) => cells,
    }
}
