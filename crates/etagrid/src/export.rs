//! `etagrid export`: a finished cell's saved adapter copied out of the state directory (no
//! libtorch: the worker wrote it in PEFT format already).

use crate::common::{sweep_name, Exit};
use crate::report::load_sweep;
use anyhow::{bail, Context, Result};
use etagrid_store::{CellRow, CellState, StoreUrl};
use std::path::Path;

/// Copies the adapter a finished cell saved (`<state>/cells/<sweep>/<cell>/adapter`) to `out`,
/// with the cell's `labels.json`.
pub fn export(
    db: &StoreUrl,
    state_dir: &Path,
    sweep: &str,
    cell: &str,
    out: &Path,
) -> Result<Exit> {
    let name = sweep_name(sweep)?;
    let (row, cells) = load_sweep(db, &name)?;
    let done: Vec<_> = cells
        .iter()
        .filter(|c| c.state == CellState::Done)
        .collect();
    let chosen: &CellRow = if cell == "best" {
        let better = |a: f64, b: f64| if row.higher_is_better { a > b } else { a < b };
        done.iter()
            .filter(|c| c.metric.is_some_and(f64::is_finite))
            .copied()
            .reduce(|best, c| {
                if better(
                    c.metric.unwrap_or(f64::NAN),
                    best.metric.unwrap_or(f64::NAN),
                ) {
                    c
                } else {
                    best
                }
            })
            .with_context(|| format!("sweep {name} has no finished cell yet"))?
    } else {
        let matches: Vec<_> = cells.iter().filter(|c| c.id.starts_with(cell)).collect();
        match matches.as_slice() {
            [c] if c.state == CellState::Done => c,
            [c] => bail!("cell {} of sweep {name} is {}, not done: nothing to export", c.id, c.state.as_str()),
            [] => bail!("sweep {name} has no cell {cell:?} (see `etagrid status {name}` or reports/{name}/index.html)"),
            _ => bail!("{cell:?} matches {} cells of sweep {name}: give more of the id", matches.len()),
        }
    };
    let src = state_dir.join("cells").join(&name).join(&chosen.id);
    let adapter = src.join("adapter");
    if !adapter.join("adapter_model.safetensors").exists() {
        bail!(
            "cell {} has no saved adapter in {} (was it run with --no-adapters, or by an older etagrid?)",
            chosen.id,
            adapter.display()
        );
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty: choose a new directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("failed to create {}", out.display()))?;
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter.join(f), out.join(f))
            .with_context(|| format!("failed to copy {f} to {}", out.display()))?;
    }
    if src.join("labels.json").exists() {
        std::fs::copy(src.join("labels.json"), out.join("labels.json"))
            .context("failed to copy labels.json")?;
    }
    eprintln!(
        "exported cell {} (η_A={:.3e}, η_B={:.3e}, {}={}) to {}",
        chosen.id,
        chosen.lr_a,
        chosen.lr_b,
        row.metric,
        chosen.metric.map(|m| format!("{m:.4}")).unwrap_or_default(),
        out.display()
    );
    Ok(Exit::Ok)
}
