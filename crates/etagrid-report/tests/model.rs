//! The report's data model, its exports and the figures' positions (from the model, not
//! from pixels), on a small sweep that has every case: two seeds, one seed, a failed seed,
//! a pending seed, a diverged point, curves, a packed cell.

use std::collections::BTreeMap;

use etagrid_report::{
    cells_csv, cells_json, heatmap_layout, write_compare, write_report, CellCurves, HeatmapAxis,
    ReportCell, ReportError, ReportInput, ReportModel,
};

const ETA_A: [i32; 3] = [-12, -10, -8];
const LAMBDA: [f64; 3] = [1.0, 4.0, 16.0];

fn p2(k: i32) -> f64 {
    2f64.powi(k)
}

fn cell(ia: usize, il: usize, seed: u64, state: &str, metric: Option<f64>) -> ReportCell {
    let lr_a = p2(ETA_A[ia]);
    let done = state == "done";
    ReportCell {
        cell_id: format!("c{ia}{il}s{seed}"),
        lr_a,
        lr_b: lr_a * LAMBDA[il],
        seed,
        state: state.to_string(),
        metric,
        accuracy: metric,
        macro_f1: metric.map(|m| m - 0.05),
        mcc: metric.map(|m| 2.0 * m - 1.0),
        eval_loss: metric.map(|m| 1.0 - m),
        train_loss: metric.map(|m| 0.9 - m),
        steps: done.then_some(30),
        total_steps: Some(30),
        wall_s: done.then(|| 100.0 + (10 * ia + il) as f64),
        pack_size: None,
        device: (state != "pending").then(|| "cuda:0".to_string()),
        attempts: Some(if state == "pending" { 0 } else { 1 }),
        started_at: (state != "pending").then(|| format!("2026-11-30 10:0{ia}:0{il}")),
        finished_at: done.then(|| format!("2026-11-30 11:0{ia}:0{il}")),
        error: (state == "failed").then(|| "worker exited with status 1".to_string()),
        pruned_at: None,
    }
}

fn fixture() -> ReportInput {
    let d = |ia, il, seed, m| cell(ia, il, seed, "done", Some(m));
    let mut cells = vec![
        d(0, 0, 0, 0.70),
        d(0, 0, 1, 0.72),
        d(0, 1, 0, 0.78),
        d(0, 1, 1, 0.80),
        d(0, 2, 0, 0.84),
        cell(0, 2, 1, "pending", None),
        d(1, 0, 0, 0.80),
        d(1, 0, 1, 0.82),
        d(1, 1, 0, 0.86),
        d(1, 1, 1, 0.88),
        d(1, 2, 0, 0.88),
        d(1, 2, 1, 0.88),
        d(2, 0, 0, 0.84),
        d(2, 0, 1, 0.84),
        d(2, 1, 0, 0.79),
        cell(2, 1, 1, "failed", None),
        cell(2, 2, 0, "diverged", None),
        cell(2, 2, 1, "diverged", None),
    ];
    // One cell trained in a pack of two: half its wall time.
    cells[0].pack_size = Some(2);
    let curve = |evals: &[(i64, f64)]| CellCurves {
        train_loss: vec![(10, 0.6), (20, 0.4), (30, 0.3)],
        eval_metric: evals.to_vec(),
    };
    let mut curves = BTreeMap::new();
    for s in 0..2 {
        curves.insert(format!("c12s{s}"), curve(&[(10, 0.70), (20, 0.85)]));
        curves.insert(format!("c20s{s}"), curve(&[(10, 0.60), (20, 0.75)]));
    }
    ReportInput {
        sweep: "fixture".to_string(),
        metric_name: "accuracy".to_string(),
        higher_is_better: true,
        cells,
        spec_toml: "name = \"fixture\"\n".to_string(),
        chance_level: Some(0.5),
        n_eval: Some(500),
        curves,
        color_floor: None,
        halving: Vec::new(),
    }
}

fn model(input: &ReportInput) -> ReportModel {
    match ReportModel::build(input) {
        Ok(m) => m,
        Err(e) => panic!("model should build: {e}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9
}

#[test]
fn model_snapshot() {
    let m = model(&fixture());
    insta::assert_snapshot!(serde_json::to_string_pretty(&m).expect("model serialises"));
}

#[test]
fn model_numbers_match_hand_computed_values() {
    let m = model(&fixture());
    let best = m.best.as_ref().expect("best");
    // (2^-10, λ = 16): 0.88 and 0.88; (2^-10, λ = 4) has the same mean over 0.86/0.88 = 0.87.
    assert!(
        close(best.lr_a, p2(-10)) && close(best.lambda, 16.0),
        "{best:?}"
    );
    assert!(close(best.mean, 0.88));
    assert_eq!(best.std, Some(0.0));
    let l1 = m.best_lambda1.as_ref().expect("best λ = 1");
    assert!(close(l1.lr_a, p2(-8)) && close(l1.mean, 0.84), "{l1:?}");
    assert!(close(m.gain_over_lambda1.expect("gain"), 0.04));
    // Ties: (2^-10, 4) is 0.01 below with SE = std/√2 = 0.01 → within 2·√(0² + 0.01²).
    let tied: Vec<(f64, f64)> = m
        .points
        .iter()
        .filter(|p| p.tied_with_best)
        .map(|p| (p.lr_a, p.lambda))
        .collect();
    assert_eq!(tied, [(p2(-10), 4.0)]);
    // One seed (pending second seed): binomial SE sqrt(0.84·0.16/500).
    let single = m
        .points
        .iter()
        .find(|p| close(p.lr_a, p2(-12)) && close(p.lambda, 16.0))
        .expect("point");
    assert!(close(
        single.se.expect("se"),
        (0.84f64 * 0.16 / 500.0).sqrt()
    ));
    assert_eq!(m.ties.kind, "mixed");
    // Per-state counts and point states.
    let states: Vec<(&str, usize)> = m.states.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        states,
        [
            ("diverged", 2),
            ("done", 14),
            ("failed", 1),
            ("pending", 1),
            ("running", 0)
        ]
    );
    let diverged = m.points.iter().filter(|p| p.state == "diverged").count();
    assert_eq!(diverged, 1);
    // λ profile: max over η_A per λ.
    let prof: Vec<(f64, f64)> = m
        .lambda_profile
        .iter()
        .map(|r| (r.lambda, r.best.as_ref().map_or(f64::NAN, |b| b.mean)))
        .collect();
    assert!(close(prof[0].1, 0.84) && close(prof[1].1, 0.87) && close(prof[2].1, 0.88));
    // Ridge: best λ per η_A: 16, 16, 1 (0.84 at λ = 1 beats 0.79 at λ = 4).
    let ridge: Vec<f64> = m
        .ridge
        .iter()
        .map(|r| r.best.as_ref().map_or(f64::NAN, |b| b.lambda))
        .collect();
    assert_eq!(ridge, [16.0, 16.0, 1.0]);
    // Top 4: 0.88 (λ16), 0.87 (λ4), 0.84 (λ16, one seed: first in grid order), 0.84 (λ1).
    let counts: Vec<usize> = m.top_k.lambdas.iter().map(|c| c.count).collect();
    assert_eq!(counts, [1, 1, 2]);
    // Curves: target 0.95·0.88 = 0.836; best reaches it at step 20, λ = 1 at its final
    // metric (step 30): 1.5× speed-up.
    let c = m.curves.as_ref().expect("curves");
    assert!(close(c.target, 0.836));
    assert_eq!(c.best.steps_to_target, Some(20));
    let l1c = c.lambda1.as_ref().expect("λ = 1 curves");
    assert_eq!(l1c.steps_to_target, Some(30));
    assert_eq!(l1c.eval_metric.last(), Some(&(30, 0.84)));
    assert!(close(c.speed_up.expect("speed-up"), 1.5));
    // GPU-seconds: 14 done cells, the packed one counts half.
    let walls: f64 = fixture().cells.iter().filter_map(|c| c.wall_s).sum();
    assert!(close(m.gpu_seconds_total, walls - 100.0 / 2.0));
    // The sweep is unfinished: the model says what is missing.
    assert!(m
        .missing
        .iter()
        .any(|s| s.contains("1 of 18 cells have not finished")));
    assert!(m.missing.iter().any(|s| s.contains("1 cells failed")));
    assert!(m.missing.iter().any(|s| s.contains("2 cells diverged")));
}

#[test]
fn exports_snapshot() {
    let input = fixture();
    let csv = cells_csv(&input).expect("csv");
    insta::assert_snapshot!("cells_csv", csv);
    let json = cells_json(&input).expect("json");
    insta::assert_snapshot!("cells_json", json);
    // One row per cell, one header.
    assert_eq!(csv.lines().count(), input.cells.len() + 1);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).expect("json parses");
    assert_eq!(rows.len(), input.cells.len());
}

#[test]
fn every_constant_lambda_line_passes_through_exactly_the_cells_with_its_lambda() {
    // A full η_A × η_B grid of powers of two: λ runs over 2^-4 … 2^9.
    let mut cells = Vec::new();
    for a in -12..=-8 {
        for b in -12..=-3 {
            let mut c = cell(0, 0, 0, "done", Some(0.5 + 0.01 * (a + b + 30) as f64));
            c.cell_id = format!("a{a}b{b}");
            c.lr_a = p2(a);
            c.lr_b = p2(b);
            cells.push(c);
        }
    }
    let input = ReportInput { cells, ..fixture() };
    let m = model(&input);
    let layout = heatmap_layout(&m, HeatmapAxis::EtaB);
    let lambdas: Vec<f64> = layout.lines.iter().map(|l| l.lambda).collect();
    assert_eq!(
        lambdas,
        [1.0, 8.0, 16.0, 32.0],
        "diagonal and λ = 2^3, 2^4, 2^5"
    );
    for line in &layout.lines {
        let mut on = 0;
        for cb in &layout.cells {
            let p = &m.points[cb.point];
            let d = line.distance(cb.centre());
            if close(p.lambda, line.lambda) {
                assert!(d < 1.5, "λ = {} misses cell {p:?} by {d} px", line.lambda);
                on += 1;
            } else {
                assert!(d > 20.0, "λ = {} crosses cell {p:?} ({d} px)", line.lambda);
            }
        }
        assert!(on >= 2, "λ = {} passes through {on} cells", line.lambda);
    }
    // The best point (highest a + b: 2^-8, 2^-3) is framed where its cell is: top right.
    let best = layout.best.expect("best");
    let cb = layout.cells[best];
    let p = &m.points[cb.point];
    assert!(close(p.lr_a, p2(-8)) && close(p.lr_b, p2(-3)));
    assert_eq!(cb.bottom_right.0, layout.plot_bottom_right.0);
    assert_eq!(cb.top_left.1, layout.plot_top_left.1);
    // Best λ = 1: the diagonal's top, (2^-8, 2^-8), on the diagonal line.
    let l1 = layout.cells[layout.best_lambda1.expect("best λ = 1")];
    assert!(layout.lines[0].distance(l1.centre()) < 1.5);
    assert!(close(m.points[l1.point].lr_a, p2(-8)));
}

#[test]
fn lambda_view_puts_each_point_in_its_lambda_row_and_marks_the_same_cells() {
    let m = model(&fixture());
    assert!(m.lambda_grid, "3 η_A × 3 λ with 5 η_B values");
    let layout = heatmap_layout(&m, HeatmapAxis::Lambda);
    // Rows: λ = 1 at the bottom, 16 at the top; columns by η_A.
    for cb in &layout.cells {
        let p = &m.points[cb.point];
        let row = LAMBDA.iter().position(|&l| close(l, p.lambda)).expect("λ");
        let col = ETA_A
            .iter()
            .position(|&a| close(p2(a), p.lr_a))
            .expect("η_A");
        let (cx, cy) = cb.centre();
        let (l, t) = layout.plot_top_left;
        let (r, b) = layout.plot_bottom_right;
        let expect_x = l as f64 + (r - l) as f64 * (col as f64 + 0.5) / 3.0;
        let expect_y = b as f64 - (b - t) as f64 * (row as f64 + 0.5) / 3.0;
        assert!(
            (cx - expect_x).abs() < 1.5 && (cy - expect_y).abs() < 1.5,
            "{p:?}"
        );
    }
    // λ = 1 and 16 run through their rows' centres (λ = 8 and 32 fall between/outside rows).
    for line in layout
        .lines
        .iter()
        .filter(|l| l.lambda == 1.0 || l.lambda == 16.0)
    {
        for cb in &layout.cells {
            let on = line.distance(cb.centre()) < 1.5;
            assert_eq!(on, close(m.points[cb.point].lambda, line.lambda));
        }
    }
    let best = &m.points[layout.cells[layout.best.expect("best")].point];
    assert!(close(best.lambda, 16.0) && close(best.lr_a, p2(-10)));
}

#[test]
fn a_partly_finished_sweep_renders_every_figure_and_says_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = write_report(&fixture(), dir.path()).expect("report");
    for stem in [
        "heatmap",
        "heatmap-lambda",
        "lambda-profile",
        "top-k",
        "curves",
    ] {
        for ext in ["png", "svg"] {
            let p = dir.path().join(format!("{stem}.{ext}"));
            assert!(p.exists(), "{} missing", p.display());
        }
    }
    let html = std::fs::read_to_string(&s.index).expect("index");
    assert!(html.contains("Not shown / not final"));
    assert!(html.contains("1 of 18 cells have not finished"));
    assert!(html.contains("1.50× LoRA+ speed-up"));
    assert!(html.contains("<script>") && html.contains("table.sortable"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no network"
    );
    assert!(html.contains("Provenance") && html.contains("2026-11-30 10:00:00 UTC"));
    assert!(html.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_one_cell_sweep_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = ReportInput {
        cells: vec![cell(0, 0, 0, "done", Some(0.7))],
        curves: BTreeMap::new(),
        ..fixture()
    };
    let s = write_report(&input, dir.path()).expect("report");
    assert_eq!(s.cells_done, 1);
    let m = model(&input);
    assert_eq!(m.best, m.best_lambda1);
    let c = m.curves.as_ref().expect("curves");
    assert!(c.note.contains("the best point has λ = 1"), "{}", c.note);
    let html = std::fs::read_to_string(&s.index).expect("index");
    assert!(html.contains("No learning curves"));
}

#[test]
fn colour_floor_is_applied_and_stated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = ReportInput {
        color_floor: Some(0.8),
        ..fixture()
    };
    write_report(&input, dir.path()).expect("report");
    let svg = std::fs::read_to_string(dir.path().join("heatmap.svg")).expect("svg");
    assert!(
        svg.contains("colour floor: accuracy below 0.800"),
        "stated on the figure"
    );
    assert!(svg.contains("≤0.800"), "colour bar's end says ≤");
}

#[test]
fn compare_report_draws_several_sweeps_and_needs_a_finished_cell_in_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = fixture();
    let mut b = fixture();
    b.sweep = "other".to_string();
    b.metric_name = "macro_f1".to_string();
    let s = write_compare(&[a.clone(), b], dir.path()).expect("compare");
    assert_eq!(s.sweeps, ["fixture", "other"]);
    let img = image::open(dir.path().join("heatmaps.png")).expect("png");
    assert_eq!(img.width(), 2 * 900);
    let html = std::fs::read_to_string(&s.index).expect("index");
    assert!(html.contains("colour scale: one per sweep"));
    let mut empty = fixture();
    empty.sweep = "empty".to_string();
    for c in &mut empty.cells {
        c.state = "pending".to_string();
        c.metric = None;
    }
    let err = write_compare(&[a, empty], &dir.path().join("x"));
    assert!(
        matches!(&err, Err(ReportError::NothingFinished { sweep, .. }) if sweep == "empty"),
        "{err:?}"
    );
}

#[test]
fn when_lambda_one_wins_the_speed_up_compares_it_with_the_best_lambda_above_one() {
    let mut one = cell(0, 0, 0, "done", Some(0.80));
    one.steps = Some(30);
    let mut four = cell(0, 1, 0, "done", Some(0.78));
    four.steps = Some(30);
    let mut curves = BTreeMap::new();
    let c = |evals: &[(i64, f64)]| CellCurves {
        train_loss: vec![(10, 0.5)],
        eval_metric: evals.to_vec(),
    };
    curves.insert(one.cell_id.clone(), c(&[(10, 0.70), (20, 0.79)]));
    curves.insert(four.cell_id.clone(), c(&[(10, 0.77), (20, 0.78)]));
    let input = ReportInput {
        cells: vec![one, four],
        curves,
        ..fixture()
    };
    let m = model(&input);
    let cv = m.curves.as_ref().expect("curves");
    assert!(close(cv.best.point.lambda, 1.0));
    assert!(cv.lambda1.is_none(), "the best is the λ = 1 point");
    let gt1 = cv.best_lambda_gt1.as_ref().expect("best λ > 1 curves");
    assert!(close(gt1.point.lambda, 4.0));
    // Target 0.95 · 0.80 = 0.76: λ = 4 at step 10, λ = 1 at step 20.
    assert_eq!(
        (gt1.steps_to_target, cv.best.steps_to_target),
        (Some(10), Some(20))
    );
    assert!(close(cv.speed_up.expect("speed-up"), 2.0));
    assert!(
        cv.note.starts_with("the best point has λ = 1; "),
        "{}",
        cv.note
    );
}

#[test]
fn curve_cells_are_the_seeds_of_the_points_the_curves_figure_draws() {
    let mut ids = etagrid_report::curve_cells(&fixture());
    ids.sort();
    // Best (2^-10, λ 16) and best λ = 1 (2^-8, λ 1), both seeds each.
    assert_eq!(ids, ["c12s0", "c12s1", "c20s0", "c20s1"]);
    // λ = 1 wins: its cells and the best λ > 1 point's.
    let input = ReportInput {
        cells: vec![
            cell(0, 0, 0, "done", Some(0.80)),
            cell(0, 1, 0, "done", Some(0.78)),
            cell(0, 2, 0, "done", Some(0.70)),
        ],
        ..fixture()
    };
    let mut ids = etagrid_report::curve_cells(&input);
    ids.sort();
    assert_eq!(ids, ["c00s0", "c01s0"]);
}
