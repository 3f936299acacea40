//! `etagrid replay-halving`: what grid-aware successive halving (etagrid-search) would have
//! picked, and at what share of the steps, on a finished full-grid sweep in the store. Each
//! cell's eval curve of the sweep's metric is its trajectory; see docs/halving.md.

use crate::common::{block_on, sweep_name, Exit};
use crate::report::load_sweep;
use anyhow::{bail, Context, Result};
use etagrid_search::{replay, Replay, SearchSpec, Strategy, Trajectory};
use etagrid_spec::spec::Metric;
use etagrid_store::{CellRow, CellState, Store, StoreUrl};
use std::path::Path;

/// The policy flags of `etagrid replay-halving`; `None` keeps the sweep file's `[search]` value
/// (or [`SearchSpec::default`]'s).
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub reduction: Option<u32>,
    pub rungs: Option<Vec<f64>>,
    pub keep_per_row: Option<usize>,
    pub min_tau: Option<f64>,
    /// The 1-D shortcut's λ = η_B/η_A (`None`: no shortcut line).
    pub one_d_lambda: Option<f64>,
    pub json: bool,
}

impl ReplayOptions {
    /// The halving spec: `d` (the sweep's `[search]`, or the defaults) overridden by the
    /// flags, checked.
    pub fn spec(&self, d: SearchSpec) -> Result<SearchSpec> {
        let spec = SearchSpec {
            strategy: Strategy::Halving,
            reduction: self.reduction.unwrap_or(d.reduction),
            rungs: self.rungs.clone().or(d.rungs),
            keep_per_row: self.keep_per_row.unwrap_or(d.keep_per_row),
            min_tau: self.min_tau.unwrap_or(d.min_tau),
            refine: false,
        };
        // The spec's keys are the flags here: search.rungs → --rungs.
        spec.validate().map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.replacen("search.", "--", 1)
                    .replace("keep_per_row", "keep-per-row")
                    .replace("min_tau", "min-tau")
            )
        })?;
        Ok(spec)
    }
}

/// The store curve holding the sweep's metric at each evaluation (events.rs records
/// `eval_loss` and each other metric's `eval_<name>`: [`Metric::curve_name`]).
fn metric_curve(metric: &str) -> Result<&'static str> {
    Metric::from_name(metric)
        .map(Metric::curve_name)
        .with_context(|| format!("metric {metric:?} has no eval curve to replay"))
}

/// Refuses a sweep with cells that have not finished: their trajectories are not whole.
fn check_finished(name: &str, cells: &[CellRow]) -> Result<()> {
    if cells.is_empty() {
        bail!("sweep {name} has no cells of its current grid in the store: run it first");
    }
    if cells.iter().any(|c| c.pruned) {
        bail!(
            "sweep {name} ran with strategy = \"halving\": its pruned cells have no whole \
             trajectory to replay. Replay a full-grid sweep (strategy = \"grid\", with \
             `eval_every` at the rung steps)"
        );
    }
    let count = |s: CellState| cells.iter().filter(|c| c.state == s).count();
    let (pending, running) = (count(CellState::Pending), count(CellState::Running));
    if pending + running > 0 {
        bail!(
            "sweep {name} is not finished: {pending} cell(s) pending and {running} running of {}. \
             The replay needs every cell's whole trajectory: finish the sweep first (`etagrid run` \
             on its file; `etagrid status {name}` shows where it is)",
            cells.len()
        );
    }
    Ok(())
}

/// A stored cell as a trajectory: done cells end with their metric; diverged cells stop at the
/// step they diverged; failed cells count as stopped at the last step they recorded.
fn trajectory(c: &CellRow, evals: Vec<(i64, f64)>, fallback_total: u64) -> Trajectory {
    let step = c.step.unwrap_or(0).max(0) as u64;
    let (final_value, diverged_at) = match c.state {
        CellState::Done => (c.metric, None),
        _ => (None, Some(step)),
    };
    Trajectory {
        cell: c.id.clone(),
        lr_a: c.lr_a,
        lr_b: c.lr_b,
        seed: c.seed.max(0) as u64,
        total_steps: c.total_steps.map_or(fallback_total, |t| t.max(0) as u64),
        // Non-finite values stay: the policy counts them as diverged at that rung.
        evals: evals
            .into_iter()
            .filter(|(s, _)| *s >= 0)
            .map(|(s, v)| (s as u64, v))
            .collect(),
        final_value,
        diverged_at,
    }
}

/// Reads the sweep's cells and curves: its row's metric direction, its file's `[search]`, and
/// one trajectory per cell.
fn load(db: &StoreUrl, name: &str) -> Result<(String, bool, SearchSpec, Vec<Trajectory>)> {
    let (row, cells) = load_sweep(db, name)?;
    let search = etagrid_spec::SweepSpec::parse(Path::new(&row.source_path), &row.source_text)
        .map(|s| s.search)
        .unwrap_or_default();
    check_finished(name, &cells)?;
    let curve = metric_curve(&row.metric)?;
    let fallback_total = cells
        .iter()
        .filter_map(|c| c.total_steps)
        .max()
        .with_context(|| format!("sweep {name}: no cell recorded its number of steps"))?
        .max(0) as u64;
    let curves = block_on(async {
        let store = Store::open(db).await?;
        let mut out = Vec::with_capacity(cells.len());
        for c in &cells {
            out.push(store.curve(name, &c.id, curve).await?);
        }
        store.close().await;
        anyhow::Ok(out)
    })??;
    let trajectories = cells
        .iter()
        .zip(curves)
        .map(|(c, e)| trajectory(c, e, fallback_total))
        .collect();
    Ok((row.metric, row.higher_is_better, search, trajectories))
}

/// `etagrid replay-halving SWEEP`: the replay's rungs, pick, regret and cost, as text or JSON.
pub fn replay_halving(db: &StoreUrl, sweep: &str, opts: &ReplayOptions) -> Result<Exit> {
    opts.spec(SearchSpec::default())?;
    if let Some(path) = db.sqlite_path().filter(|p| !p.exists()) {
        bail!(
            "no results store at {}: nothing has run yet (or pass --state-dir/--db)",
            path.display()
        );
    }
    let name = sweep_name(sweep)?;
    let (metric, higher_is_better, search, cells) = load(db, &name)?;
    let spec = opts.spec(search)?;
    let r = replay(&spec, &cells, higher_is_better, opts.one_d_lambda)
        .map_err(|e| anyhow::anyhow!("sweep {name}: {e}"))?;
    let full: u64 = cells
        .iter()
        .map(|t| t.total_steps.min(t.diverged_at.unwrap_or(u64::MAX)))
        .sum();
    // Rung steps as printed: those of the longest budget (all cells share it in a plain grid).
    let total = cells.iter().map(|t| t.total_steps).max().unwrap_or(0);
    let steps: Vec<u64> = (0..spec.rung_count())
        .map(|k| spec.rung_step(k, total))
        .collect();
    let out = Summary {
        name: &name,
        metric: &metric,
        higher_is_better,
        spec: &spec,
        cells: &cells,
        steps: &steps,
        full,
        opts,
        r: &r,
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&out.json())?);
    } else {
        out.print();
    }
    Ok(Exit::Ok)
}

/// What the command prints.
struct Summary<'a> {
    name: &'a str,
    metric: &'a str,
    higher_is_better: bool,
    spec: &'a SearchSpec,
    cells: &'a [Trajectory],
    steps: &'a [u64],
    full: u64,
    opts: &'a ReplayOptions,
    r: &'a Replay,
}

fn point_json((a, b): (f64, f64), value: f64) -> serde_json::Value {
    serde_json::json!({ "lr_a": a, "lr_b": b, "lambda": b / a, "value": value })
}

impl Summary<'_> {
    fn json(&self) -> serde_json::Value {
        let r = self.r;
        serde_json::json!({
            "sweep": self.name,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "cells": self.cells.len(),
            "reduction": self.spec.reduction,
            "rungs": self.spec.fractions(),
            "rung_steps": self.steps,
            "keep_per_row": self.spec.keep_per_row,
            "min_tau": self.spec.min_tau,
            "decisions": r.rungs.iter().map(|d| serde_json::json!({
                "promoted": d.promoted,
                "pruned": d.pruned,
                "tau": d.tau,
                "stopped_pruning": d.stopped_pruning,
                "reason": d.reason,
            })).collect::<Vec<_>>(),
            "pick": point_json(r.pick, r.pick_value),
            "best": point_json(r.best, r.best_value),
            "regret": r.regret,
            "cost_fraction": r.cost_fraction,
            "full_grid_steps": self.full,
            "one_d": r.one_d.as_ref().map(|o| serde_json::json!({
                "lambda": o.lambda,
                "pick": point_json(o.pick, o.pick_value),
                "regret": o.regret,
                "cost_fraction": o.cost_fraction,
            })),
        })
    }

    fn print(&self) {
        let (r, m) = (self.r, self.metric);
        let points = {
            let mut p: Vec<(u64, u64)> = self
                .cells
                .iter()
                .map(|t| (t.lr_a.to_bits(), t.lr_b.to_bits()))
                .collect();
            p.sort_unstable();
            p.dedup();
            p.len()
        };
        println!(
            "sweep {}: halving replayed on {} cells ({points} points), {m} ({} is better)",
            self.name,
            self.cells.len(),
            if self.higher_is_better {
                "higher"
            } else {
                "lower"
            },
        );
        let fr: Vec<String> = self
            .spec
            .fractions()
            .iter()
            .map(|f| format!("{f:.4}"))
            .collect();
        let st: Vec<String> = self.steps.iter().map(u64::to_string).collect();
        println!(
            "policy: reduction {}, rungs [{}] = steps [{}], keep_per_row {}, min_tau {}",
            self.spec.reduction,
            fr.join(", "),
            st.join(", "),
            self.spec.keep_per_row,
            self.spec.min_tau
        );
        for (k, d) in r.rungs.iter().enumerate() {
            println!("  step {:>6}  {}", self.steps[k], d.reason);
        }
        let point = |(a, b): (f64, f64), v: f64| {
            format!("η_A={a:.3e} η_B={b:.3e} λ={:.4} {m}={v:.4}", b / a)
        };
        println!("pick:      {}", point(r.pick, r.pick_value));
        println!("grid best: {}", point(r.best, r.best_value));
        println!("regret:    {:.4} ({m})", r.regret);
        println!(
            "cost:      {:.1}% of the full grid's {} steps",
            100.0 * r.cost_fraction,
            self.full
        );
        match (&r.one_d, self.opts.one_d_lambda) {
            (Some(o), _) => println!(
                "1-D λ={}: {}, regret {:.4}, cost {:.1}%",
                o.lambda,
                point(o.pick, o.pick_value),
                o.regret,
                100.0 * o.cost_fraction
            ),
            (None, Some(l)) => {
                println!("1-D λ={l}: no point of the grid with λ = {l} has a finite value")
            }
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_defaults_and_errors_name_the_flag() {
        let o = ReplayOptions {
            reduction: Some(2),
            rungs: Some(vec![0.25, 1.0]),
            ..ReplayOptions::default()
        };
        let s = o.spec(SearchSpec::default()).expect("valid");
        assert_eq!(
            (s.reduction, s.keep_per_row, s.min_tau),
            (2, 2, etagrid_search::DEFAULT_MIN_TAU)
        );
        assert_eq!(s.fractions(), vec![0.25, 1.0]);
        // What no flag names comes from the sweep's own [search] section.
        let file = SearchSpec {
            keep_per_row: 5,
            reduction: 4,
            ..SearchSpec::default()
        };
        let s = o.spec(file).expect("valid");
        assert_eq!((s.reduction, s.keep_per_row), (2, 5));
        let bad = ReplayOptions {
            rungs: Some(vec![0.5, 0.3, 1.0]),
            ..ReplayOptions::default()
        };
        let e = bad
            .spec(SearchSpec::default())
            .expect_err("invalid")
            .to_string();
        assert_eq!(
            e,
            "--rungs must increase and end at 1.0 (got [0.5, 0.3, 1.0])"
        );
        let bad = ReplayOptions {
            min_tau: Some(2.0),
            ..ReplayOptions::default()
        };
        let e = bad
            .spec(SearchSpec::default())
            .expect_err("invalid")
            .to_string();
        assert!(e.starts_with("--min-tau must be in [-1, 1]"), "{e}");
    }

    #[test]
    fn every_rankable_metric_has_its_eval_curve() {
        assert_eq!(metric_curve("eval_loss").expect("curve"), "eval_loss");
        assert_eq!(metric_curve("accuracy").expect("curve"), "eval_accuracy");
        assert_eq!(metric_curve("macro_f1").expect("curve"), "eval_macro_f1");
        for m in etagrid_spec::spec::Metric::ALL {
            metric_curve(m.name()).expect("every sweep metric has a curve");
        }
    }
}
