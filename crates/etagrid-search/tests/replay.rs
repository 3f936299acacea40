//! The offline replay on constructed trajectories: costs and regrets are worked out here from
//! the inputs (which cells a rule must prune at which rung), not copied from the code's output.

use etagrid_search::{replay, SearchSpec, Trajectory};

const TOTAL: u64 = 9;
const ROWS: [f64; 3] = [1e-4, 1e-3, 1e-2];
const LAMBDAS: [f64; 3] = [1.0, 4.0, 16.0];

/// A cell with an eval at every step 1..=TOTAL, the value at step `s` being `curve(s)`.
fn traj(cell: &str, lr_a: f64, lambda: f64, seed: u64, curve: impl Fn(u64) -> f64) -> Trajectory {
    let evals: Vec<(u64, f64)> = (1..=TOTAL).map(|s| (s, curve(s))).collect();
    Trajectory {
        cell: cell.into(),
        lr_a,
        lr_b: lr_a * lambda,
        seed,
        total_steps: TOTAL,
        final_value: Some(curve(TOTAL)),
        evals,
        diverged_at: None,
    }
}

/// A 3 × 3 grid, one seed, whose curves are `final · s / TOTAL`: the ranking never changes.
/// Finals: row i, column j → 0.1 + 0.1 · (3i + j), best (higher) at the last cell.
fn steady_grid() -> Vec<Trajectory> {
    let mut out = Vec::new();
    for (i, a) in ROWS.iter().enumerate() {
        for (j, l) in LAMBDAS.iter().enumerate() {
            let f = 0.1 + 0.1 * (3 * i + j) as f64;
            out.push(traj(&format!("c{i}{j}"), *a, *l, 0, move |s| {
                f * s as f64 / TOTAL as f64
            }));
        }
    }
    out
}

/// Reduction 3 (rungs 1/9, 1/3, 1: steps 1, 3 and 9 of these 9-step cells).
fn spec(keep_per_row: usize) -> SearchSpec {
    SearchSpec {
        keep_per_row,
        reduction: 3,
        ..SearchSpec::default()
    }
}

fn final_of(cells: &[Trajectory], cell: &str) -> f64 {
    cells
        .iter()
        .find(|t| t.cell == cell)
        .and_then(|t| t.final_value)
        .expect("final")
}

#[test]
fn a_steady_ranking_picks_the_best_at_a_third_of_the_cost() {
    let cells = steady_grid();
    let s = spec(0);
    let r = replay(&s, &cells, true, None).expect("replay");
    // Rung 0 keeps ceil(9/3) = 3 of 9 points, rung 1 ceil(3/3) = 1 of 3.
    assert_eq!(r.rungs.len(), 2);
    assert_eq!(r.rungs[0].promoted, ["c20", "c21", "c22"]);
    assert_eq!(r.rungs[1].promoted, ["c22"]);
    assert_eq!(r.rungs[1].tau, Some(1.0));
    let (r0, r1) = (s.rung_step(0, TOTAL), s.rung_step(1, TOTAL));
    let spent = 6 * r0 + 2 * r1 + TOTAL;
    assert_eq!(r.cost_fraction, spent as f64 / (9 * TOTAL) as f64);
    assert_eq!(r.pick, (1e-2, 1e-2 * 16.0));
    assert_eq!(r.pick_value, final_of(&cells, "c22"));
    assert_eq!(r.best, r.pick);
    assert_eq!(r.regret, 0.0);
    assert!(r.one_d.is_none());
}

#[test]
fn a_late_bloomer_pruned_early_costs_regret() {
    let mut cells = steady_grid();
    // c00 is the worst until the end, then the best of all.
    let bloom = 2.0;
    cells[0] = traj("c00", ROWS[0], LAMBDAS[0], 0, move |s| {
        if s == TOTAL {
            bloom
        } else {
            0.0
        }
    });
    let r = replay(&spec(0), &cells, true, None).expect("replay");
    assert!(r.rungs[0].pruned.contains(&"c00".to_string()));
    assert_eq!(r.best, (ROWS[0], ROWS[0]));
    assert_eq!(r.best_value, bloom);
    assert_eq!(r.pick_value, final_of(&cells, "c22"));
    assert_eq!(r.regret, bloom - final_of(&cells, "c22"));
}

#[test]
fn rows_keep_their_best_and_lower_can_be_better() {
    // Lower is better: the ranking is reversed, c00 the best. keep_per_row = 1 keeps, at rung 0,
    // the 3 best (row 0) and the best of rows 1 and 2 (column 0); at rung 1, the last
    // promotion (no row guarantee there), the ceil(5/3) = 2 best of those 5 (c00, c01).
    let cells = steady_grid();
    let s = spec(1);
    let r = replay(&s, &cells, false, None).expect("replay");
    assert_eq!(r.rungs[0].promoted, ["c00", "c01", "c02", "c10", "c20"]);
    assert_eq!(r.rungs[1].promoted, ["c00", "c01"]);
    let (r0, r1) = (s.rung_step(0, TOTAL), s.rung_step(1, TOTAL));
    let spent = 4 * r0 + 3 * r1 + 2 * TOTAL;
    assert_eq!(r.cost_fraction, spent as f64 / (9 * TOTAL) as f64);
    assert_eq!(r.pick, (ROWS[0], ROWS[0]));
    assert_eq!(r.regret, 0.0);
}

#[test]
fn a_diverged_cell_is_charged_the_steps_it_ran() {
    let mut cells = steady_grid();
    // c22 (the best at step 1) diverges at step 2: promoted after rung 0, gone at rung 1
    // (step 3), and it ran 2 steps in the grid as under halving.
    let c = &mut cells[8];
    c.diverged_at = Some(2);
    c.final_value = None;
    c.evals.truncate(1);
    let s = spec(0);
    let r = replay(&s, &cells, true, None).expect("replay");
    assert_eq!(r.rungs[0].promoted, ["c20", "c21", "c22"]);
    assert!(r.rungs[1].pruned.contains(&"c22".to_string()));
    assert_eq!(r.rungs[1].promoted, ["c21"]);
    let (r0, r1) = (s.rung_step(0, TOTAL), s.rung_step(1, TOTAL));
    let spent = 6 * r0 + 2 + r1 + TOTAL;
    let full = 8 * TOTAL + 2;
    assert_eq!(r.cost_fraction, spent as f64 / full as f64);
    assert_eq!(r.pick_value, final_of(&cells, "c21"));
    assert_eq!(r.best, r.pick, "a diverged point is never the best");
}

#[test]
fn a_diverged_cell_without_stored_evals_has_no_value_and_is_charged_its_steps() {
    // c22 diverged at step 2 with no eval stored at all (as a real diverging cell can be): at
    // rung 0 (step 1) it has no value, so it is pruned there, charged rung 0's step.
    let mut cells = steady_grid();
    let c = &mut cells[8];
    c.diverged_at = Some(2);
    c.final_value = None;
    c.evals.clear();
    let s = spec(0);
    let r = replay(&s, &cells, true, None).expect("replay");
    assert!(r.rungs[0].pruned.contains(&"c22".to_string()));
    assert!(
        r.rungs[0].reason.contains("(1 diverged)"),
        "{}",
        r.rungs[0].reason
    );
    // Rung 0 keeps ceil(8/3) = 3 of the 8 finite points: c21, c20, c12; rung 1 keeps c21.
    assert_eq!(r.rungs[0].promoted, ["c12", "c20", "c21"]);
    let (r0, r1) = (s.rung_step(0, TOTAL), s.rung_step(1, TOTAL));
    // Pruned at rung 0: the 5 other finite points and c22 (up to its divergence).
    let spent = 5 * r0 + r0.min(2) + 2 * r1 + TOTAL;
    assert_eq!(r.cost_fraction, spent as f64 / (8 * TOTAL + 2) as f64);
    assert_eq!(r.pick_value, final_of(&cells, "c21"));
    // A finished cell without the eval is still an error.
    let mut cells = steady_grid();
    cells[3].evals.retain(|e| e.0 != 1);
    let e = replay(&s, &cells, true, None).expect_err("c10 lacks step 1");
    assert!(e.contains("cell c10 has no eval at step 1"), "{e}");
}

#[test]
fn seeds_are_averaged_and_the_order_of_cells_does_not_matter() {
    // Two seeds per point: seed 1 of c22 is so bad that the point's mean falls below c21's.
    let mut cells = steady_grid();
    for t in steady_grid() {
        let mut u = t.clone();
        u.cell = format!("{}s1", t.cell);
        u.seed = 1;
        if t.cell == "c22" {
            u.evals.iter_mut().for_each(|e| e.1 = 0.0);
            u.final_value = Some(0.0);
        }
        cells.push(u);
    }
    let r = replay(&spec(0), &cells, true, None).expect("replay");
    let mean = |c: &str| (final_of(&cells, c) + final_of(&cells, &format!("{c}s1"))) / 2.0;
    assert_eq!(r.pick, (ROWS[2], ROWS[2] * LAMBDAS[1]));
    assert_eq!(r.pick_value, mean("c21"));
    assert_eq!(r.best_value, mean("c21"));
    cells.reverse();
    assert_eq!(replay(&spec(0), &cells, true, None).expect("replay"), r);
}

#[test]
fn a_reversed_ranking_stops_pruning() {
    // Rung 0 (step 1) ranks the columns one way, rung 1 (step 3) the other way round: τ < 0.5,
    // so every point kept at rung 0 goes on to the end.
    let mut cells = Vec::new();
    for (j, l) in LAMBDAS.iter().enumerate() {
        let j = j as f64;
        cells.push(traj(&format!("c0{j}"), ROWS[0], *l, 0, move |s| {
            if s < 3 {
                j
            } else {
                -j
            }
        }));
    }
    let s = SearchSpec {
        reduction: 2,
        keep_per_row: 0,
        min_tau: 0.5,
        rungs: Some(vec![1.0 / 9.0, 1.0 / 3.0, 1.0]),
        ..SearchSpec::default()
    };
    let r = replay(&s, &cells, true, None).expect("replay");
    assert_eq!((s.rung_step(0, TOTAL), s.rung_step(1, TOTAL)), (1, 3));
    // Rung 0: ceil(3/2) = 2 kept (columns 2 and 1); rung 1: reversed, τ = -1: both kept.
    assert_eq!(r.rungs[0].promoted.len(), 2);
    assert_eq!(r.rungs[1].tau, Some(-1.0));
    assert!(r.rungs[1].stopped_pruning);
    assert!(r.rungs[1].pruned.is_empty());
    let (r0, _) = (s.rung_step(0, TOTAL), s.rung_step(1, TOTAL));
    assert_eq!(
        r.cost_fraction,
        (r0 + 2 * TOTAL) as f64 / (3 * TOTAL) as f64
    );
    // Of the two at the end, column 1 (-1) beats column 2 (-2); column 0 (0) was pruned.
    assert_eq!(r.pick, (ROWS[0], ROWS[0] * LAMBDAS[1]));
    assert_eq!(r.best, (ROWS[0], ROWS[0]));
    assert_eq!(r.regret, 1.0);
}

#[test]
fn one_rung_is_the_full_grid() {
    let cells = steady_grid();
    let s = SearchSpec {
        rungs: Some(vec![1.0]),
        ..SearchSpec::default()
    };
    let r = replay(&s, &cells, true, None).expect("replay");
    assert!(r.rungs.is_empty());
    assert_eq!(r.cost_fraction, 1.0);
    assert_eq!(r.pick, r.best);
    assert_eq!(r.regret, 0.0);
}

#[test]
fn the_one_d_shortcut_trains_only_its_lambda() {
    let mut cells = steady_grid();
    // Make λ = 16's best (row 2) diverge, so its pick is row 1 at λ = 16.
    cells[8].final_value = None;
    cells[8].diverged_at = Some(TOTAL);
    let r = replay(&spec(2), &cells, true, Some(16.0)).expect("replay");
    let one = r.one_d.expect("λ = 16 has points");
    assert_eq!(one.lambda, 16.0);
    assert_eq!(one.pick, (ROWS[1], ROWS[1] * 16.0));
    assert_eq!(one.pick_value, final_of(&cells, "c12"));
    assert_eq!(one.regret, r.best_value - final_of(&cells, "c12"));
    // Its three cells' full steps over the grid's (all cells ran to the end).
    assert_eq!(one.cost_fraction, 3.0 / 9.0);
    // A λ the grid does not have: no shortcut.
    let r = replay(&spec(2), &cells, true, Some(2.0)).expect("replay");
    assert!(r.one_d.is_none());
}

#[test]
fn a_missing_rung_eval_is_an_error_saying_what_would_work() {
    let mut cells = steady_grid();
    // Evals every 3 steps: the default rungs end at steps 1 and 3.
    for t in &mut cells {
        t.evals.retain(|e| e.0 % 3 == 0);
    }
    let e = replay(&spec(2), &cells, true, None).expect_err("step 1 missing");
    assert!(e.contains("cell c00 has no eval at step 1"), "{e}");
    assert!(
        e.contains("evals before the end are at steps [3, 6]"),
        "{e}"
    );
    assert!(e.contains("eval_every = 1 does"), "{e}");
    assert!(e.contains("rungs = [0.333333, 1]"), "{e}");
    // The suggested rungs work.
    let s = SearchSpec {
        rungs: Some(vec![0.333333, 1.0]),
        ..spec(2)
    };
    assert_eq!(s.rung_step(0, TOTAL), 3);
    replay(&s, &cells, true, None).expect("the suggested rungs replay");
}

#[test]
fn bad_input_is_an_error() {
    let e = replay(&SearchSpec::default(), &[], true, None).expect_err("empty");
    assert_eq!(e, "no cells to replay");
    let bad = SearchSpec {
        reduction: 0,
        ..SearchSpec::default()
    };
    let e = replay(&bad, &steady_grid(), true, None).expect_err("invalid spec");
    assert!(e.starts_with("search.reduction"), "{e}");
    let mut all_bad = steady_grid();
    for t in &mut all_bad {
        t.final_value = None;
        t.diverged_at = Some(1);
    }
    let e = replay(&SearchSpec::default(), &all_bad, true, None).expect_err("nothing finite");
    assert!(e.contains("no point"), "{e}");
}
