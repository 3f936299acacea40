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
use etagrid_store::{CellRow, CellState, RungRow, Store, StoreUrl};
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

/// Refuses a run whose `[search]` would misread the halving state the store holds for the
/// sweep: settings other than those its halving started with, `strategy = "grid"` included (a
/// grid run would take cells paused at a rung for finished and leave pruned ones untrained).
/// Called before the run stores or trains anything. A sweep with no halving state passes
/// whatever its strategy: a grid sweep runs as it always did, and a grid sweep turned halving
/// starts its rungs here (cells a grid run finished go to the last rung).
pub async fn check(store: &Store, spec: &SweepSpec, url: &StoreUrl) -> Result<(), SchedError> {
    let recorded = store.halving_search(&spec.name).await?;
    let max_rung = match recorded {
        Some(_) => None,
        None => store.max_rung(&spec.name).await?,
    };
    match refusal(spec, recorded.as_ref(), max_rung, &url.to_string()) {
        Some(message) => Err(SchedError::SearchChanged(message)),
        None => Ok(()),
    }
}

/// Why `spec` may not run on the stored halving state (`recorded` settings, or for a sweep an
/// older etagrid started without recording them, its cells' highest rung), or `None`.
fn refusal(
    spec: &SweepSpec,
    recorded: Option<&SearchSpec>,
    max_rung: Option<i64>,
    store: &str,
) -> Option<String> {
    let file = spec.source.display();
    let name = &spec.name;
    let unrecorded = "its halving was started by an etagrid that did not record its [search] \
                      settings";
    let (what, old_values) = match (recorded, max_rung) {
        (Some(old), _) => {
            let changes = spec.search.changes_from(old);
            if changes.is_empty() {
                return None;
            }
            let lines: String = changes.iter().map(|c| format!("\n  {c}")).collect();
            (
                format!(
                    "[search] is not what sweep `{name}` started its successive halving with \
                     (recorded in the store {store}):{lines}\n"
                ),
                "the old values back in [search]",
            )
        }
        (None, Some(_)) if of(spec).is_none() => (
            format!(
                "[search] strategy = \"grid\", but the cells of sweep `{name}` in the store \
                 {store} are on successive-halving rungs ({unrecorded}).\n"
            ),
            "strategy = \"halving\" back in [search], with the settings it started with",
        ),
        (None, Some(rung)) if rung >= spec.search.rung_count() as i64 => (
            format!(
                "[search] gives {} rungs, but cells of sweep `{name}` in the store {store} are on \
                 rung {} already ({unrecorded}).\n",
                spec.search.rung_count(),
                rung + 1
            ),
            "[search] back as it was when the search started",
        ),
        (None, _) => return None,
    };
    let why = if of(spec).is_none() {
        "A grid run would take any cell paused at a rung for finished and never train a pruned \
         one"
    } else {
        "The cells' rungs and the promotions made so far follow the settings the search started \
         with: with others, resumed cells would be put on the wrong rungs"
    };
    Some(format!(
        "{file}: {what}{why}, so this run stops before training anything. To continue the \
         search, put {old_values}. To start it afresh instead, give the sweep another `name` \
         in {file}, or run it on another store (a new `--state-dir` for the default store, or \
         another `--db`)."
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sweep;

    const STORE: &str = "/p/.etagrid/etagrid.sqlite";

    fn halving(rungs: &[f64]) -> SearchSpec {
        SearchSpec {
            strategy: Strategy::Halving,
            rungs: Some(rungs.to_vec()),
            keep_per_row: 1,
            ..SearchSpec::default()
        }
    }

    fn spec_with(search: SearchSpec) -> SweepSpec {
        let mut spec = sweep(2);
        spec.search = search;
        spec
    }

    #[test]
    fn the_search_a_halving_started_with_and_a_sweep_without_rungs_run_as_before() {
        let started = halving(&[0.111, 0.333, 1.0]);
        let same = spec_with(started.clone());
        assert_eq!(refusal(&same, Some(&started), None, STORE), None);
        // Never on rungs: a grid sweep runs, and so does one turned halving (its rungs start).
        assert_eq!(refusal(&sweep(2), None, None, STORE), None);
        assert_eq!(refusal(&same, None, None, STORE), None);
        // Started by an etagrid that recorded nothing: taken as it is while its rungs fit.
        assert_eq!(refusal(&same, None, Some(2), STORE), None);
    }

    #[test]
    fn a_changed_search_is_refused_naming_the_file_each_key_and_what_to_do() {
        let spec = spec_with(SearchSpec {
            keep_per_row: 2,
            ..halving(&[0.25, 1.0])
        });
        let m = refusal(&spec, Some(&halving(&[0.111, 0.333, 1.0])), None, STORE).expect("refused");
        assert_eq!(
            m,
            "sweep.toml: [search] is not what sweep `s` started its successive halving with \
             (recorded in the store /p/.etagrid/etagrid.sqlite):\n  \
             rungs: [0.111, 0.333, 1.0] → [0.25, 1.0]\n  \
             keep_per_row: 1 → 2\n\
             The cells' rungs and the promotions made so far follow the settings the search \
             started with: with others, resumed cells would be put on the wrong rungs, so this \
             run stops before training anything. To continue the search, put the old values \
             back in [search]. To start it afresh instead, give the sweep another `name` in \
             sweep.toml, or run it on another store (a new `--state-dir` for the default store, \
             or another `--db`)."
        );
    }

    #[test]
    fn a_started_halving_sweep_turned_grid_is_refused_with_what_a_grid_run_would_do() {
        let m = refusal(&sweep(2), Some(&halving(&[0.5, 1.0])), None, STORE).expect("refused");
        assert!(
            m.starts_with("sweep.toml: [search] is not what sweep `s` started"),
            "{m}"
        );
        for part in [
            "strategy: \"halving\" → \"grid\"",
            // Leaving [search] out also resets its other keys to their defaults.
            "rungs: [0.5, 1.0] → not set (default [1/9, 1/3, 1.0])",
            "keep_per_row: 1 → 2",
            "would take any cell paused at a rung for finished and never train a pruned one",
            "put the old values back in [search]",
        ] {
            assert!(m.contains(part), "{part:?} not in {m}");
        }
    }

    #[test]
    fn rungs_an_older_etagrid_left_unrecorded_are_refused_when_they_cannot_fit() {
        let m = refusal(&sweep(2), None, Some(0), STORE).expect("grid on rungs");
        assert!(
            m.starts_with(
                "sweep.toml: [search] strategy = \"grid\", but the cells of sweep `s` in the \
                 store /p/.etagrid/etagrid.sqlite are on successive-halving rungs"
            ),
            "{m}"
        );
        assert!(
            m.contains("put strategy = \"halving\" back in [search]"),
            "{m}"
        );
        let two = spec_with(halving(&[0.5, 1.0]));
        let m = refusal(&two, None, Some(2), STORE).expect("rung 3 of 2");
        assert!(
            m.contains("[search] gives 2 rungs, but cells of sweep `s`")
                && m.contains("are on rung 3 already"),
            "{m}"
        );
        assert!(m.contains("put [search] back as it was"), "{m}");
    }
}
