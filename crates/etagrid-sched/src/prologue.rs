//! What every backend does before it runs a cell, and the line that ends a run: open the store,
//! take the sweep's run lock, check that `[search]` still fits the sweep's stored halving state,
//! enqueue the grid, give back cells an earlier run left `running`.

use crate::SchedError;
use etagrid_spec::{Cell, SweepSpec};
use etagrid_store::{CellRow, CellState, EnqueueSummary, RunLock, Store, StoreUrl};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub total: usize,
    /// Cells already done or diverged before this run: skipped.
    pub skipped: usize,
    pub done: usize,
    /// Halving cells that reached the end of a rung (each pause of a cell counts).
    pub paused: usize,
    pub diverged: usize,
    pub failed: usize,
    /// Cells returned to pending because the run was stopped.
    pub interrupted: usize,
    /// Worker crashes and timeouts that were retried.
    pub retried: usize,
    /// Failed cells skipped because they used up `max_attempts` (see `--retry-failed`).
    pub exhausted: usize,
    /// Cells skipped because a SLURM task holds them (counted in `skipped` too).
    pub leased: usize,
    pub stopped_by_signal: bool,
}

/// An open store with the sweep's run lock held and its grid enqueued.
pub(crate) struct Prologue {
    pub store: Store,
    /// One scheduler (local or SLURM front end) per sweep, also across machines on PostgreSQL.
    _lock: RunLock,
    pub cells: Vec<Cell>,
    pub enqueued: EnqueueSummary,
    /// Cells an earlier run left `running` without a lease, given back to pending.
    pub recovered: u64,
}

impl Prologue {
    pub(crate) async fn open(
        spec: &SweepSpec,
        url: &StoreUrl,
        retry_failed: bool,
    ) -> Result<Prologue, SchedError> {
        let store = Store::open(url).await?;
        // The run lock goes with the store (whatever the state dir; on PostgreSQL across machines).
        let lock =
            store
                .try_lock_sweep(&spec.name)
                .await?
                .ok_or_else(|| SchedError::SweepLocked {
                    sweep: spec.name.clone(),
                    store: url.to_string(),
                })?;
        // Before anything is stored: an edited `[search]` must not meet the sweep's rungs.
        crate::halving::check(&store, spec, url).await?;
        let cells = spec.cells();
        let enqueued = store.enqueue(spec, &cells).await?;
        // With the sweep lock held no other scheduler uses them; cells leased by SLURM tasks stay.
        let recovered = store.recover_running(&spec.name).await?;
        if retry_failed {
            store.reset_failed(&spec.name).await?;
        }
        Ok(Prologue {
            store,
            _lock: lock,
            cells,
            enqueued,
            recovered,
        })
    }

    /// Says why failed cells out of attempts are skipped, and that nothing is left when so.
    /// Returns true when there is nothing to run.
    pub(crate) fn say_skipped(
        &self,
        spec: &SweepSpec,
        summary: &RunSummary,
        to_run: usize,
    ) -> bool {
        if summary.exhausted > 0 {
            eprintln!(
                "{} failed cell(s) used up their {} attempts and are skipped: `etagrid status {}` shows why; \
                 `--retry-failed` runs them again",
                summary.exhausted, spec.max_attempts, spec.name
            );
        }
        if to_run == 0 && summary.exhausted == 0 && summary.leased == 0 {
            eprintln!("all {} cells are done: nothing to train", self.cells.len());
        }
        to_run == 0
    }

    /// "sweep S: finished in 3.2 s — 3 done, 1 failed", and the store closed.
    pub(crate) async fn finish(
        self,
        spec: &SweepSpec,
        how: &str,
        started: std::time::Instant,
    ) -> Result<(), SchedError> {
        eprintln!(
            "sweep {}: {how} in {:.1} s — {}",
            spec.name,
            started.elapsed().as_secs_f64(),
            self.store.state_counts(&spec.name).await?.line(false)
        );
        self.store.close().await;
        Ok(())
    }
}

/// What a run (local or SLURM) makes of a cell of its sweep when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Done or diverged, or pruned by successive halving (final whatever its state).
    Skipped,
    /// Failed with no attempt left (`--retry-failed` gives it more).
    Exhausted,
    /// Pending, running in a task, or failed with attempts left.
    ToRun,
}

impl Start {
    pub(crate) fn of(r: &CellRow, max_attempts: i64) -> Start {
        if r.state.is_final() || r.pruned {
            Start::Skipped
        } else if r.state == CellState::Failed && r.attempts >= max_attempts {
            Start::Exhausted
        } else {
            Start::ToRun
        }
    }
}

/// A cell as the progress lines name it.
pub(crate) fn cell_label(id: &str, lr_a: f64, lr_b: f64) -> String {
    format!("{id} η_A={lr_a:.2e} η_B={lr_b:.2e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pending_rows, sweep};

    #[test]
    fn a_cell_failed_on_a_halving_rung_and_pruned_is_skipped_not_exhausted_or_to_run() {
        let rows = pending_rows(&sweep(1));
        let row = |state, attempts, pruned| CellRow {
            state,
            attempts,
            pruned,
            ..rows[0].clone()
        };
        let max = 2;
        for (r, start) in [
            (row(CellState::Pending, 0, false), Start::ToRun),
            (row(CellState::Running, 1, false), Start::ToRun),
            (row(CellState::Failed, 1, false), Start::ToRun),
            (row(CellState::Failed, 2, false), Start::Exhausted),
            (row(CellState::Done, 1, false), Start::Skipped),
            (row(CellState::Diverged, 1, false), Start::Skipped),
            // Pruned at a rung: final whatever its state, counted once (it was both "skipped"
            // and "exhausted", and the count of cells to run went below zero).
            (row(CellState::Failed, 2, true), Start::Skipped),
            (row(CellState::Failed, 1, true), Start::Skipped),
            (row(CellState::Done, 1, true), Start::Skipped),
        ] {
            assert_eq!(
                Start::of(&r, max),
                start,
                "{:?}",
                (r.state, r.attempts, r.pruned)
            );
        }
    }
}
