//! Helpers of the unit tests.

use etagrid_spec::SweepSpec;
use etagrid_store::{CellRow, CellState};
use std::path::Path;

/// A sweep of `n` cells (η_A = 1e-2, 1e-3, …) that parses without its files.
pub(crate) fn sweep(n: usize) -> SweepSpec {
    let lr: Vec<String> = (0..n).map(|i| format!("1e-{}", i + 2)).collect();
    let toml = format!(
        "name = \"s\"\n[model]\npath = \"m\"\n[task]\ntrain = \"t.csv\"\neval = \"e.csv\"\n\
         [train]\nsteps = 1\n[grid]\nlr_a = [{}]\nlr_b = [1e-3]\n",
        lr.join(", ")
    );
    SweepSpec::parse(Path::new("sweep.toml"), &toml).expect("spec")
}

/// The pending rows of `spec`'s cells, in grid order.
pub(crate) fn pending_rows(spec: &SweepSpec) -> Vec<CellRow> {
    spec.cells()
        .iter()
        .map(|c| CellRow {
            id: c.id.0.clone(),
            index: c.index as i64,
            lr_a: c.config.lr_a,
            lr_b: c.config.lr_b,
            seed: 0,
            state: CellState::Pending,
            attempts: 0,
            device: None,
            step: None,
            total_steps: None,
            metric: None,
            eval_loss: None,
            accuracy: None,
            macro_f1: None,
            mcc: None,
            train_loss: None,
            wall_s: None,
            pack_size: None,
            error: None,
            config: String::new(),
            rung: None,
            resume_step: None,
            pruned: false,
            device_s: None,
        })
        .collect()
}
