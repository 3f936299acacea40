//! Successive halving on the local scheduler (`[search] strategy = "halving"`, issue 11).
//!
//! Rungs are synchronous: every live cell trains to the end of rung r (a segment of its budget,
//! [`segment`]), pauses there with a checkpoint and its evaluation, and only when no cell of the
//! rung is left to run does [`advance`] rank them with `etagrid_search::decide` and record the
//! promotion in the store (one transaction). So the decision sees the same cells and values
//! whatever order they finished in, and a run stopped anywhere — mid-rung or between rungs —
//! continues from the store: cells already paused at a rung are not trained again, and a rung
//! already decided is not decided again.

use crate::SchedError;
use etagrid_search::{decide, Entry, SearchSpec, Strategy};
use etagrid_spec::protocol::{fraction_step, Segment};
use etagrid_spec::SweepSpec;
use etagrid_store::{CellRow, CellState, RungRow, Store};
use std::collections::{BTreeSet, HashSet};

/// The sweep's halving settings, when it is a halving sweep.
pub(crate) fn of(spec: &SweepSpec) -> Option<&SearchSpec> {
    (spec.search.strategy == Strategy::Halving).then_some(&spec.search)
}

/// The part of the budget a cell at rung `rung` trains next.
pub(crate) fn segment(search: &SearchSpec, rung: i64) -> Segment {
    let fractions = search.fractions();
    let r = rung.max(0) as usize;
    let last = fractions.len().saturating_sub(1);
    Segment {
        resume_from: (r > 0).then(|| fractions[r - 1]),
        pause_at: (r < last).then(|| fractions[r.min(last)]),
    }
}

/// Puts the sweep's cells on rungs (once) and records its `[search]` settings the first time —
/// see [`Store::init_halving`].
pub(crate) async fn init(store: &Store, spec: &SweepSpec) -> Result<(), SchedError> {
    if let Some(search) = of(spec) {
        store.init_halving(&spec.name, search).await?;
    }
    Ok(())
}

/// Makes every promotion that is due: while the lowest rung with live cells has none left to
/// run (each is paused there, diverged or failed) and is not the last, its cells are ranked and
/// the promotion recorded. Returns the lines that say what was decided.
pub(crate) async fn advance(
    store: &Store,
    spec: &SweepSpec,
    wanted: &HashSet<&str>,
) -> Result<Vec<String>, SchedError> {
    let Some(search) = of(spec) else {
        return Ok(Vec::new());
    };
    let last = search.fractions().len() as i64 - 1;
    let mut said = Vec::new();
    loop {
        let rows: Vec<CellRow> = store
            .cells(&spec.name)
            .await?
            .into_iter()
            .filter(|r| wanted.contains(r.id.as_str()) && !r.pruned)
            .collect();
        let Some(rung) = rows.iter().filter_map(|r| r.rung).min() else {
            return Ok(said);
        };
        let at: Vec<&CellRow> = rows.iter().filter(|r| r.rung == Some(rung)).collect();
        let settled = |r: &&CellRow| {
            matches!(
                r.state,
                CellState::Done | CellState::Diverged | CellState::Failed
            )
        };
        if rung >= last || !at.iter().all(settled) {
            return Ok(said);
        }
        let decided: BTreeSet<i64> = store
            .halving_rungs(&spec.name)
            .await?
            .iter()
            .map(|r| r.rung)
            .collect();
        if decided.contains(&rung) {
            // Recorded, yet cells are still on it unpruned: a store written by hand. Stop
            // rather than loop.
            return Err(SchedError::Halving(format!(
                "sweep {}: rung {rung} was decided but {} of its cells are neither promoted nor \
                 pruned; was the store changed by hand?",
                spec.name,
                at.len()
            )));
        }
        let line = promote(store, spec, search, rung, &at).await?;
        said.push(line);
    }
}

/// Ranks the cells `at` of rung `rung` and records the promotion.
async fn promote(
    store: &Store,
    spec: &SweepSpec,
    search: &SearchSpec,
    rung: i64,
    at: &[&CellRow],
) -> Result<String, SchedError> {
    let fractions = search.fractions();
    let curve = spec.task.metric.curve_name();
    let mut current = Vec::with_capacity(at.len());
    let mut previous = Vec::with_capacity(at.len());
    for r in at {
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
        let value = match r.state {
            CellState::Done => finite(r.metric),
            _ => None,
        };
        current.push(entry(r, value));
        if rung > 0 {
            // The cell's value at the previous rung: its evaluation at that rung's step.
            let step = r
                .total_steps
                .map(|t| fraction_step(fractions[rung as usize - 1], t as u64) as i64);
            let points = store.curve(&spec.name, &r.id, curve).await?;
            let v = points.iter().find(|(s, _)| Some(*s) == step).map(|p| p.1);
            previous.push(entry(r, finite(v)));
        }
    }
    let prev = (rung > 0).then_some(previous.as_slice());
    let higher = spec.task.metric.higher_is_better();
    let d = decide(search, rung as usize, &current, prev, higher);
    let kept: HashSet<&str> = d.promoted.iter().map(String::as_str).collect();
    // Every cell not promoted stops here: the policy's pruned ones, and the diverged or failed.
    let pruned: Vec<String> = at
        .iter()
        .filter(|r| !kept.contains(r.id.as_str()))
        .map(|r| r.id.clone())
        .collect();
    let points: BTreeSet<(u64, u64)> = current
        .iter()
        .map(|e| (e.lr_a.to_bits(), e.lr_b.to_bits()))
        .collect();
    let promoted_points: BTreeSet<(u64, u64)> = current
        .iter()
        .filter(|e| kept.contains(e.cell.as_str()))
        .map(|e| (e.lr_a.to_bits(), e.lr_b.to_bits()))
        .collect();
    let row = RungRow {
        rung,
        points: points.len() as i64,
        promoted: promoted_points.len() as i64,
        tau: d.tau,
        stopped_pruning: d.stopped_pruning,
        reason: d.reason.clone(),
    };
    store
        .promote(&spec.name, &row, &d.promoted, &pruned)
        .await?;
    Ok(format!("sweep {}: {}", spec.name, d.reason))
}

fn entry(r: &CellRow, value: Option<f64>) -> Entry {
    Entry {
        cell: r.id.clone(),
        lr_a: r.lr_a,
        lr_b: r.lr_b,
        seed: r.seed as u64,
        value,
    }
}
