//! `etagrid replay-halving` on real finished sweeps: the tiny BERT fixture trained on the CPU
//! (through `etagrid run`, which needs the etagrid-torch binary beside etagrid: `cargo build
//! --release --bins -p etagrid-torch`), then replayed from the store. Expected values are
//! worked out here from the store's cells and curves.

mod common;

use common::{failed_with, read_cells, text, tiny_sweep, with_store, CPU_RESOURCES};
use etagrid_store::{CellRow, CellState};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Steps of every sweep here: the default rungs (1/9, 1/3, 1) end at steps 1, 3 and 9.
const STEPS: u64 = 9;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Writes sweep `name` (over the tiny fixtures, on the CPU) with `grid` and `eval_every`.
    fn sweep(&self, name: &str, grid: &str, eval_every: u64) {
        let toml = format!(
            "{}{CPU_RESOURCES}",
            tiny_sweep(name, grid, STEPS, eval_every)
        );
        std::fs::write(self.dir.path().join(format!("{name}.toml")), toml).expect("write sweep");
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_etagrid"))
            .current_dir(self.dir.path())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args)
            .output()
            .expect("run etagrid")
    }

    /// `etagrid run NAME.toml` (no report, no adapters), which must succeed.
    fn train(&self, name: &str) {
        let file = format!("{name}.toml");
        let out = self.run(&["run", &file, "--no-report", "--no-adapters"]);
        assert!(out.status.success(), "run {name}: {}", text(&out.stderr));
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("state/etagrid.sqlite")
    }

    fn cells(&self, name: &str) -> Vec<CellRow> {
        read_cells(&self.db(), name)
    }

    /// `etagrid replay-halving NAME ARGS… --json`, which must succeed.
    fn replay(&self, name: &str, args: &[&str]) -> Value {
        let mut all = vec!["replay-halving", name, "--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(out.status.success(), "{all:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("replay JSON")
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// The mean stored metric of each (η_A, η_B) point whose cells all finished with one.
fn point_means(cells: &[CellRow]) -> BTreeMap<(u64, u64), f64> {
    let mut by: BTreeMap<(u64, u64), Vec<Option<f64>>> = BTreeMap::new();
    for c in cells {
        let v = (c.state == CellState::Done).then_some(c.metric).flatten();
        by.entry((c.lr_a.to_bits(), c.lr_b.to_bits()))
            .or_default()
            .push(v);
    }
    by.into_iter()
        .filter_map(|(k, v)| {
            let v: Vec<f64> = v.into_iter().collect::<Option<_>>()?;
            Some((k, v.iter().sum::<f64>() / v.len() as f64))
        })
        .collect()
}

fn key(point: &Value) -> (u64, u64) {
    (f(&point["lr_a"]).to_bits(), f(&point["lr_b"]).to_bits())
}

/// The steps a stored cell ran.
fn step(c: &CellRow) -> u64 {
    c.step.expect("step") as u64
}

/// The replay's rung steps.
fn rung_steps(r: &Value) -> Vec<u64> {
    r["rung_steps"]
        .as_array()
        .expect("rung_steps")
        .iter()
        .map(|s| s.as_u64().expect("step"))
        .collect()
}

/// The cost share of replay `r` from the store's steps: a cell pruned at rung k ran to that
/// rung's step (or to where it stopped, if earlier), the others all the steps they ran; over
/// all the grid's steps. Also checks the replay's count of the grid's steps; returns both.
fn expected_cost(cells: &[CellRow], r: &Value) -> (f64, u64) {
    let rung_steps = rung_steps(r);
    let mut ran: BTreeMap<&str, u64> = cells.iter().map(|c| (c.id.as_str(), step(c))).collect();
    for (k, d) in r["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .enumerate()
    {
        for id in strings(&d["pruned"]) {
            let c = cells
                .iter()
                .find(|c| c.id == id)
                .expect("a cell of the sweep");
            ran.insert(&c.id, rung_steps[k].min(step(c)));
        }
    }
    let full: u64 = cells.iter().map(step).sum();
    assert_eq!(r["full_grid_steps"], full);
    (ran.values().sum::<u64>() as f64 / full as f64, full)
}

#[test]
fn replay_of_a_real_sweep_picks_a_stored_point_at_the_cost_of_its_rungs() {
    let sb = Sandbox::new();
    // 2 η_A × 3 λ × 2 seeds = 12 cells, an eval at every step. Rows of 3 points: with the
    // default keep_per_row (2) the first rung must still prune one point per row.
    sb.sweep(
        "tiny",
        "lr_a = [1e-3, 1e-2]\nratio = [1, 4, 16]\nseeds = [0, 1]",
        1,
    );
    sb.train("tiny");
    let cells = sb.cells("tiny");
    assert_eq!(cells.len(), 12);
    assert!(cells.iter().all(|c| c.state.is_final()), "{cells:?}");
    // Every cell has an eval at every step (the rungs need steps 1 and 3).
    let curves: Vec<Vec<(i64, f64)>> = with_store(sb.db(), async |s| {
        let mut out = Vec::new();
        for c in &cells {
            out.push(
                s.curve("tiny", &c.id, "eval_accuracy")
                    .await
                    .expect("curve"),
            );
        }
        out
    });
    for (c, curve) in cells.iter().zip(&curves) {
        if c.state == CellState::Done {
            let steps: Vec<i64> = curve.iter().map(|p| p.0).collect();
            assert_eq!(steps, (1..=STEPS as i64).collect::<Vec<_>>(), "{}", c.id);
            // The last eval is the stored result.
            assert_eq!(curve.last().map(|p| p.1), c.metric, "{}", c.id);
        }
    }

    let r = sb.replay("tiny", &[]);
    assert_eq!(r["metric"], "accuracy");
    assert_eq!(r["cells"], 12);
    let rung_steps = rung_steps(&r);
    assert_eq!(rung_steps, [1, 3, STEPS]);
    let decisions = r["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 2);

    // The pick's value is its point's stored final metric (the mean over its seeds), and it
    // is a point that survived the last decision.
    let means = point_means(&cells);
    let pick = &r["pick"];
    assert_eq!(f(&pick["value"]), means[&key(pick)]);
    let promoted_last = strings(&decisions[1]["promoted"]);
    let pick_cells: Vec<&CellRow> = cells
        .iter()
        .filter(|c| (c.lr_a.to_bits(), c.lr_b.to_bits()) == key(pick))
        .collect();
    assert_eq!(pick_cells.len(), 2);
    assert!(pick_cells.iter().all(|c| promoted_last.contains(&c.id)));
    // The grid's best is the best stored mean; the regret is the distance to it.
    let best = means.values().copied().fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(f(&r["best"]["value"]), best);
    assert_eq!(f(&r["regret"]), (best - f(&pick["value"])).abs());

    let (expected, full) = expected_cost(&cells, &r);
    assert_eq!(f(&r["cost_fraction"]), expected);
    assert!(expected < 1.0, "halving pruned nothing: {r}");

    // The 1-D shortcut on λ = 16 (the default): the best λ = 16 point, its 4 cells' steps.
    let one = &r["one_d"];
    assert_eq!(f(&one["lambda"]), 16.0);
    let on_line: Vec<&CellRow> = cells
        .iter()
        .filter(|c| (c.lr_b / c.lr_a - 16.0).abs() < 1e-9 * 16.0)
        .collect();
    assert_eq!(on_line.len(), 4);
    let line_best = means
        .iter()
        .filter(|(k, _)| (f64::from_bits(k.1) / f64::from_bits(k.0) - 16.0).abs() < 1e-6)
        .map(|(_, v)| *v)
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(f(&one["pick"]["value"]), line_best);
    assert_eq!(f(&one["regret"]), (best - line_best).abs());
    let line_steps: u64 = on_line.iter().map(|c| step(c)).sum();
    assert_eq!(f(&one["cost_fraction"]), line_steps as f64 / full as f64);

    // One rung is the full grid: the pick is the grid's best, at the whole cost.
    let r1 = sb.replay("tiny", &["--rungs", "1"]);
    assert_eq!(r1["decisions"].as_array().map(Vec::len), Some(0));
    assert_eq!(f(&r1["pick"]["value"]), best);
    assert_eq!(r1["pick"], r1["best"]);
    assert_eq!(f(&r1["regret"]), 0.0);
    assert_eq!(f(&r1["cost_fraction"]), 1.0);

    // The text form: one line per decision, then the pick, the best, regret, cost and the 1-D line.
    let out = sb.run(&[
        "replay-halving",
        "tiny",
        "--reduction",
        "2",
        "--min-tau",
        "-1",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in [
        "sweep tiny: halving replayed on 12 cells (6 points), accuracy (higher is better)",
        // --reduction moves no default rung.
        "reduction 2, rungs [0.1111, 0.3333, 1.0000] = steps [1, 3, 9]",
        "rung 1/3: 6 points",
        "rung 2/3: ",
        "pick:      η_A=",
        "grid best: η_A=",
        "regret:    ",
        &format!("% of the full grid's {full} steps"),
        "1-D λ=16: η_A=",
    ] {
        assert!(stdout.contains(want), "{want:?} not in:\n{stdout}");
    }
}

#[test]
fn a_real_diverged_cell_is_pruned_never_picked_and_costs_the_steps_it_ran() {
    let sb = Sandbox::new();
    // η_B = 1e30 diverges within a few steps (with no eval stored before, in this sweep).
    sb.sweep("div", "lr_a = [1e-3]\nlr_b = [1e-4, 1e-3, 1e30]", 1);
    sb.train("div");
    let cells = sb.cells("div");
    let big = cells
        .iter()
        .find(|c| c.lr_b > 1.0)
        .expect("the η_B = 1e30 cell");
    assert_eq!(big.state, CellState::Diverged, "{:?}", big.error);
    assert!(step(big) < STEPS);

    let r = sb.replay("div", &[]);
    let pruned: Vec<String> = r["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .flat_map(|d| strings(&d["pruned"]))
        .collect();
    assert!(pruned.contains(&big.id), "{r}");
    assert_ne!(f(&r["pick"]["lr_b"]), big.lr_b);
    let means = point_means(&cells);
    assert_eq!(f(&r["pick"]["value"]), means[&key(&r["pick"])]);
    let (expected, full) = expected_cost(&cells, &r);
    assert_eq!(f(&r["cost_fraction"]), expected);
    assert_eq!(full, 2 * STEPS + step(big));
    // The full grid: cost 1, the diverged cell counted with the steps it ran on both sides.
    let r1 = sb.replay("div", &["--rungs", "1"]);
    assert_eq!(f(&r1["cost_fraction"]), 1.0);
    assert_eq!(r1["pick"], r1["best"]);
}

#[test]
fn a_sweep_without_evals_at_the_rung_steps_is_refused_naming_the_step() {
    let sb = Sandbox::new();
    // Evals at steps 4 and 8 (and the final one at 9): the default rungs end at steps 1 and 3.
    sb.sweep("sparse", "lr_a = [1e-3, 1e-2]\nratio = [16]", 4);
    sb.train("sparse");
    let out = sb.run(&["replay-halving", "sparse"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for want in [
        "sweep sparse: ",
        "has no eval at step 1 (the end of rung 1/3",
        "its evals before the end are at steps [4, 8]",
        "eval_every = 1 does",
        "rungs = [0.444444, 1]",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    // The rungs it suggests replay.
    let r = sb.replay("sparse", &["--rungs", "0.444444,1"]);
    assert_eq!(r["rung_steps"], serde_json::json!([4, STEPS]));
    // A rung flag that is not a rung list is refused, naming the flag.
    let out = sb.run(&["replay-halving", "sparse", "--rungs", "0.5,0.3,1"]);
    failed_with(&out, &["--rungs must increase and end at 1.0"]);
}

#[test]
fn an_unfinished_sweep_is_refused() {
    let sb = Sandbox::new();
    sb.sweep("queued", "lr_a = [1e-3]\nratio = [1, 16]", 1);
    let out = sb.run(&["run", "queued.toml", "--enqueue-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // By file and by name alike.
    for arg in ["queued.toml", "queued"] {
        let out = sb.run(&["replay-halving", arg]);
        assert_eq!(out.status.code(), Some(1), "{arg}");
        let err = text(&out.stderr);
        assert!(
            err.contains("sweep queued is not finished: 2 cell(s) pending and 0 running of 2")
                && err.contains("etagrid status queued"),
            "{err}"
        );
    }
    failed_with(&sb.run(&["replay-halving", "nosuch"]), &["nosuch"]);
}
