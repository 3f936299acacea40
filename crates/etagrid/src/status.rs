//! `etagrid status`: counts by state, running cells, failures and an ETA, read from the store.
//! Runs in the tch-free front binary, so it answers without loading libtorch.

use crate::common::{block_on, sweep_name, Exit};
use anyhow::{bail, Result};
use etagrid_store::{CellRow, CellState, Store, StoreUrl};

pub fn status(db: &StoreUrl, sweep: Option<&str>) -> Result<Exit> {
    if let Some(path) = db.sqlite_path().filter(|p| !p.exists()) {
        bail!(
            "no results store at {}: nothing has run yet (or pass --state-dir/--db)",
            path.display()
        );
    }
    let names = match sweep {
        Some(s) => vec![sweep_name(s)?],
        None => Vec::new(),
    };
    block_on(async {
        let store = Store::open(db).await?;
        let names = if names.is_empty() {
            store.sweep_names().await?
        } else {
            // A named sweep must be in the store: "0 cells" would read as a sweep with nothing in it.
            for n in &names {
                store.sweep(n).await?;
            }
            names
        };
        for name in names {
            let counts = store.state_counts(&name).await?;
            println!(
                "sweep {name}: {} cells — {}",
                counts.total(),
                counts.line(true)
            );
            let tasks = store.slurm_tasks(&name).await?;
            if let Some(last) = tasks.last() {
                let mut jobs: Vec<&str> = tasks.iter().map(|t| t.job_id.as_str()).collect();
                jobs.dedup();
                // One row per cell: the cells of a pack share their task.
                let mut ids: Vec<String> = tasks.iter().map(|t| t.slurm_id()).collect();
                ids.dedup();
                println!(
                    "  slurm: {} task(s) submitted in {} job array(s), latest {} (`squeue --name=etagrid-{name}`)",
                    ids.len(),
                    jobs.len(),
                    last.job_id
                );
            }
            halving_lines(&store, &name).await?;
            let running = store.cells_in_state(&name, CellState::Running).await?;
            // Cells leased by SLURM tasks are theirs; the others belong to the `etagrid run`
            // holding the sweep's lock. With no run holding it, they were left by one that died.
            let leased: std::collections::HashSet<String> = store
                .leases(&name)
                .await?
                .into_iter()
                .map(|l| l.cell_id)
                .collect();
            let live_run = store.run_active(&name).await?;
            let stale = running
                .iter()
                .filter(|c| !live_run && !leased.contains(&c.id))
                .count();
            for c in &running {
                let dead = !live_run && !leased.contains(&c.id);
                println!(
                    "  {} {} η_A={:.2e} η_B={:.2e} on {} step {}/{}",
                    if dead { "stale  " } else { "running" },
                    c.id,
                    c.lr_a,
                    c.lr_b,
                    c.device.as_deref().unwrap_or("?"),
                    c.step.unwrap_or(0),
                    c.total_steps
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "?".into())
                );
            }
            for c in store
                .cells_in_state(&name, CellState::Failed)
                .await?
                .iter()
                .take(20)
            {
                println!(
                    "  failed  {} (attempt {}): {}",
                    c.id,
                    c.attempts,
                    c.error.as_deref().unwrap_or("")
                );
            }
            if stale > 0 {
                println!(
                    "  {stale} cell(s) marked running, but no `etagrid run` holds sweep {name}: \
                     the run that started them died; the next `etagrid run` returns them to pending"
                );
            }
            let left = counts.of(CellState::Pending) + counts.of(CellState::Running);
            let active = running.len() - stale;
            if active == 0 && stale > 0 {
                // No ETA: nothing is running.
            } else if let (Some(mean), true) = (store.mean_wall_s(&name).await?, left > 0) {
                // As many cells at a time as are running now (at least one).
                let eta = mean * left as f64 / active.max(1) as f64;
                println!(
                    "  eta ≈ {} ({left} cells left, {:.1} s per cell so far, {} at a time)",
                    human_duration(eta),
                    mean,
                    active.max(1)
                );
            }
        }
        store.close().await;
        anyhow::Ok(())
    })??;
    Ok(Exit::Ok)
}

/// A halving sweep's rungs: each cell's rung and how it stands, the promotions made, and the
/// device time spent against the full grid's (estimated from the steps run so far).
async fn halving_lines(store: &Store, name: &str) -> Result<()> {
    let cells = store.cells(name).await?;
    if cells.iter().all(|c| c.rung.is_none()) {
        return Ok(());
    }
    let rungs = store.halving_rungs(name).await?;
    for r in &rungs {
        println!("  {}", r.reason);
    }
    println!("  cell              η_A       η_B       rung  state     metric");
    for c in &cells {
        let what = if c.pruned { "pruned" } else { c.state.as_str() };
        println!(
            "  {:<16}  {:.2e}  {:.2e}  {:>4}  {:<8}  {}",
            c.id,
            c.lr_a,
            c.lr_b,
            c.rung.map_or("-".into(), |r| (r + 1).to_string()),
            what,
            c.metric
                .filter(|m| m.is_finite())
                .map_or("-".into(), |m| format!(
                    "{m:.4} at step {}",
                    c.step.unwrap_or(0)
                ))
        );
    }
    if let Some(line) = halving_cost(&cells) {
        println!("  {line}");
    }
    Ok(())
}

/// A halving sweep's device time against the full grid's, as one line: the cell-steps run, and
/// the device seconds spent beside an estimate of the full grid's — the first rung's worker (a
/// pack of every cell) extrapolated to the whole budget, since a pack's time per step is far
/// from proportional to its size (bench/RESULTS.md, "Successive halving").
pub(crate) fn halving_cost(cells: &[CellRow]) -> Option<String> {
    let spent: f64 = cells.iter().filter_map(|c| c.device_s).sum();
    let steps: i64 = cells
        .iter()
        .filter(|c| c.device_s.is_some())
        .filter_map(|c| c.step)
        .sum();
    let budget: i64 = cells.iter().filter_map(|c| c.total_steps).sum();
    if spent <= 0.0 || steps <= 0 || budget <= 0 {
        return None;
    }
    let mut line = format!(
        "device time {spent:.1} s for {steps} of {budget} cell-steps ({:.0} % of the grid's steps)",
        100.0 * steps as f64 / budget as f64
    );
    // A cell pruned after the first rung: its worker trained the first rung's pack.
    let first = cells.iter().find(|c| {
        c.pruned && c.rung == Some(0) && c.device_s.is_some() && c.step.is_some_and(|s| s > 0)
    });
    if let Some(c) = first {
        let pack = c.pack_size.unwrap_or(1).max(1) as f64;
        let wall = c.device_s.unwrap_or(0.0) * pack;
        let steps0 = c.step.unwrap_or(1) as f64;
        let total = c.total_steps.unwrap_or(0) as f64;
        let packs = cells.len() as f64 / pack;
        let full = wall / steps0 * total * packs;
        // The first rung's worker time includes its start-up and evaluation: spread over its
        // few steps, the estimate is on the high side.
        line.push_str(&format!(
            "; the full grid ≲ {full:.1} s (the first rung's pack, start-up included, at {:.1} ms \
             a step; {:.0} % of it spent)",
            1e3 * wall / steps0,
            100.0 * spent / full
        ));
    }
    Some(line)
}

fn human_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}
