//! The offline replay: what successive halving would have picked, and at what cost, on the
//! trajectories of a finished full-grid sweep.

use crate::{decide, Decision, Entry, SearchSpec};
use std::collections::{BTreeMap, BTreeSet};

/// One finished cell of a full-grid sweep.
#[derive(Clone, Debug)]
pub struct Trajectory {
    pub cell: String,
    pub lr_a: f64,
    pub lr_b: f64,
    pub seed: u64,
    pub total_steps: u64,
    /// (step, metric value) sorted by step, including the final eval at `total_steps`.
    pub evals: Vec<(u64, f64)>,
    /// The final metric; `None`: diverged or failed.
    pub final_value: Option<f64>,
    /// The step at which it diverged (or stopped), if it did: from there on it has no value.
    pub diverged_at: Option<u64>,
}

/// What halving would have done on a finished grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Replay {
    /// The best point among those that reached the last rung: (η_A, η_B).
    pub pick: (f64, f64),
    /// The pick's mean final value over its seeds.
    pub pick_value: f64,
    /// The best point of the full grid by mean final value.
    pub best: (f64, f64),
    pub best_value: f64,
    /// |best_value − pick_value| in metric units, ≥ 0.
    pub regret: f64,
    /// Σ over cells of the steps halving would have run / Σ of the steps the full grid ran
    /// (each cell's `total_steps`, or `diverged_at` when it stopped earlier).
    pub cost_fraction: f64,
    /// The decision after each rung but the last.
    pub rungs: Vec<Decision>,
    /// The 1-D shortcut's result, when a λ was asked for and it has a finite point.
    pub one_d: Option<OneD>,
}

/// The paper's shortcut: only the cells with η_B/η_A = λ (relative 1e-9), each its full budget.
#[derive(Clone, Debug, PartialEq)]
pub struct OneD {
    pub lambda: f64,
    pub pick: (f64, f64),
    pub pick_value: f64,
    /// |full-grid best − pick| in metric units.
    pub regret: f64,
    /// The steps of those cells over the steps of the full grid.
    pub cost_fraction: f64,
}

/// The steps cell `t` runs to reach `step` (fewer when it diverged before).
fn ran(t: &Trajectory, step: u64) -> u64 {
    step.min(t.diverged_at.unwrap_or(u64::MAX))
        .min(t.total_steps)
}

/// The best point by mean final value among `cells` (a point with any non-finite seed is out):
/// ((η_A, η_B), value); ties by (η_A, η_B) ascending.
fn best_point<'a>(
    cells: impl Iterator<Item = &'a Trajectory>,
    higher_is_better: bool,
) -> Option<((f64, f64), f64)> {
    // Per point (by bit pattern): its rates and its seeds' final values.
    type Seeds = ((f64, f64), Vec<Option<f64>>);
    let mut by_point: BTreeMap<(u64, u64), Seeds> = BTreeMap::new();
    for t in cells {
        by_point
            .entry((t.lr_a.to_bits(), t.lr_b.to_bits()))
            .or_insert(((t.lr_a, t.lr_b), Vec::new()))
            .1
            .push(t.final_value);
    }
    let mut best: Option<((f64, f64), f64)> = None;
    for ((a, b), vals) in by_point.into_values() {
        let Some(v) = vals
            .iter()
            .map(|v| v.filter(|x| x.is_finite()))
            .collect::<Option<Vec<f64>>>()
        else {
            continue;
        };
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        if !mean.is_finite() {
            continue;
        }
        let better = match best {
            None => true,
            Some(((ba, bb), bv)) => {
                let by_value = if higher_is_better {
                    mean.total_cmp(&bv)
                } else {
                    bv.total_cmp(&mean)
                };
                by_value.then(ba.total_cmp(&a).then(bb.total_cmp(&b)))
                    == std::cmp::Ordering::Greater
            }
        };
        if better {
            best = Some(((a, b), mean));
        }
    }
    best
}

/// Cell `t`'s entry at rung `r`: its eval at exactly the rung's step; `None` when it diverged at
/// or before that step, or when it has no final value and no eval there. Err when a cell with a
/// final value has no eval there.
fn entry_at(spec: &SearchSpec, r: usize, t: &Trajectory) -> Result<Entry, String> {
    let step = spec.rung_step(r, t.total_steps);
    let value = if t.diverged_at.is_some_and(|d| d <= step) {
        None
    } else {
        match t.evals.binary_search_by_key(&step, |e| e.0) {
            Ok(i) => Some(t.evals[i].1),
            // A cell that ended without a value may lack its last evals before it stopped (a
            // real CPU cell diverged at step 2 had no curve point at all): no value there.
            Err(_) if t.final_value.is_none() => None,
            Err(_) => return Err(missing_eval(spec, r, t, step)),
        }
    };
    Ok(Entry {
        cell: t.cell.clone(),
        lr_a: t.lr_a,
        lr_b: t.lr_b,
        seed: t.seed,
        value,
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The error for a trajectory without an eval at a rung step, saying which `eval_every` and
/// which rungs would work.
fn missing_eval(spec: &SearchSpec, r: usize, t: &Trajectory, step: u64) -> String {
    let n = spec.rung_count();
    let steps: Vec<u64> = (0..n - 1)
        .map(|k| spec.rung_step(k, t.total_steps))
        .collect();
    let every = steps.iter().fold(0, |g, s| gcd(g, *s));
    let have: Vec<u64> = t
        .evals
        .iter()
        .map(|e| e.0)
        .filter(|s| *s < t.total_steps)
        .collect();
    let shown: Vec<String> = have.iter().take(8).map(u64::to_string).collect();
    let more = if have.len() > 8 { ", …" } else { "" };
    // Rungs at eval steps it has: for each intermediate rung, the nearest eval step at or
    // before it (else after it), as a fraction rounded down so that ceil(f · total) hits it.
    let mut near: BTreeSet<u64> = BTreeSet::new();
    for s in &steps {
        let below = have.iter().rev().find(|h| **h <= *s);
        if let Some(h) = below.or_else(|| have.iter().find(|h| **h > *s)) {
            near.insert(*h);
        }
    }
    let total = t.total_steps as f64;
    let mut fracs: Vec<String> = near
        .iter()
        .map(|h| {
            let f = (*h as f64 / total * 1e6).floor() / 1e6;
            format!("{f}")
        })
        .collect();
    fracs.push("1".into());
    let alt = if near.is_empty() {
        String::from("it has no eval before the end: only rungs = [1] fit it")
    } else {
        format!(
            "or use rungs at steps it has, e.g. rungs = [{}]",
            fracs.join(", ")
        )
    };
    format!(
        "cell {} has no eval at step {step} (the end of rung {}/{n}, {} of its {} steps); its evals \
         before the end are at steps [{}{more}]. The replay needs an eval at every rung step: \
         rerun the sweep with an eval_every that divides every rung step [{}] (eval_every = \
         {every} does), {alt}",
        t.cell,
        r + 1,
        spec.fractions()[r],
        t.total_steps,
        shown.join(", "),
        steps
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Replays successive halving under `spec` on the trajectories of a finished full-grid sweep.
///
/// At each rung but the last, every surviving cell's value is its eval at exactly
/// [`SearchSpec::rung_step`] (`None` once it diverged; `None` too where a cell without a final
/// value lacks that eval: diverging cells can miss their last evals), [`decide`] promotes and
/// prunes, and a pruned cell is charged the steps to that rung (or to where it diverged). The
/// pick is the best point among those that reached the last rung, by mean final value; the
/// regret is its distance to the full grid's best. With `one_d_lambda`, also the 1-D shortcut
/// on that λ.
///
/// Err when `spec` is invalid, `cells` is empty, a cell with a final value lacks an eval at a
/// rung step (the message says which `eval_every` or rungs would work), or no point reached the
/// last rung with a finite value.
pub fn replay(
    spec: &SearchSpec,
    cells: &[Trajectory],
    higher_is_better: bool,
    one_d_lambda: Option<f64>,
) -> Result<Replay, String> {
    spec.validate()?;
    if cells.is_empty() {
        return Err("no cells to replay".into());
    }
    let mut sorted: Vec<&Trajectory> = cells.iter().collect();
    sorted.sort_by(|a, b| a.cell.cmp(&b.cell));
    let last = spec.rung_count() - 1;
    let mut survivors: Vec<&Trajectory> = sorted.clone();
    let mut spent: u64 = 0;
    let mut previous: Option<Vec<Entry>> = None;
    let mut rungs = Vec::new();
    for r in 0..last {
        let current = survivors
            .iter()
            .map(|t| entry_at(spec, r, t))
            .collect::<Result<Vec<Entry>, String>>()?;
        let d = decide(spec, r, &current, previous.as_deref(), higher_is_better);
        let pruned: BTreeSet<&str> = d.pruned.iter().map(String::as_str).collect();
        for t in survivors
            .iter()
            .filter(|t| pruned.contains(t.cell.as_str()))
        {
            spent += ran(t, spec.rung_step(r, t.total_steps));
        }
        survivors.retain(|t| !pruned.contains(t.cell.as_str()));
        previous = Some(
            current
                .into_iter()
                .filter(|e| !pruned.contains(e.cell.as_str()))
                .collect(),
        );
        rungs.push(d);
    }
    spent += survivors.iter().map(|t| ran(t, t.total_steps)).sum::<u64>();
    let full: u64 = sorted.iter().map(|t| ran(t, t.total_steps)).sum();
    let fraction = |steps: u64| {
        if full == 0 {
            1.0
        } else {
            steps as f64 / full as f64
        }
    };
    let (best, best_value) = best_point(sorted.iter().copied(), higher_is_better)
        .ok_or("no point of the grid has a finite final value: nothing to pick")?;
    let (pick, pick_value) = best_point(survivors.iter().copied(), higher_is_better)
        .ok_or("no point reached the last rung with a finite final value")?;
    let one_d = one_d_lambda.and_then(|lambda| {
        let on_line: Vec<&Trajectory> = sorted
            .iter()
            .copied()
            .filter(|t| (t.lr_b / t.lr_a - lambda).abs() <= 1e-9 * lambda.abs())
            .collect();
        let (p, v) = best_point(on_line.iter().copied(), higher_is_better)?;
        Some(OneD {
            lambda,
            pick: p,
            pick_value: v,
            regret: (best_value - v).abs(),
            cost_fraction: fraction(on_line.iter().map(|t| ran(t, t.total_steps)).sum()),
        })
    });
    Ok(Replay {
        pick,
        pick_value,
        best,
        best_value,
        regret: (best_value - pick_value).abs(),
        cost_fraction: fraction(spent),
        rungs,
        one_d,
    })
}
