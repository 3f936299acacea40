//! The SLURM backend: `etagrid run --backend slurm`.
//!
//! The front end ([`run_slurm`], `front.rs`) groups pending cells into packs as the local
//! backend does and submits one job array per batch of packs (`sbatch --parsable
//! --array=0-(N-1)%K`, split by the cluster's `MaxArraySize`) after writing each task's job file
//! to `<state>/slurm/<sweep>/<submission>/task-<i>.json` (`submit.rs`); every task `exec`s
//! `etagrid worker --lease …` ([`run_task`], `task.rs`), which claims each cell of its pack in the
//! store, decides its device from what SLURM granted, runs the normal worker (`etagrid worker
//! --job`) and records its lines through the same event handling as the local dispatcher, under
//! a lease per cell. The front end only watches: it polls `squeue` once per sweep with back-off,
//! treats the store as the truth, takes cells back from tasks that ended without finishing them
//! (attempt counted), resubmits pending cells that no live task will run, and ends when every
//! cell is done, diverged or failed. Job ids go to the store, so a rerun of the front end
//! re-attaches to queued and running tasks instead of submitting their cells again. A
//! successive-halving sweep runs rung by rung: each rung's tasks train their cells' segment of
//! the budget and pause them; the front end decides the rung when none is left to run and
//! submits the promoted cells (see `front.rs`).

mod front;
mod squeue;
mod submit;
mod task;

use crate::{RunSummary, SchedError};
use etagrid_spec::{PackSize, SweepSpec};
use etagrid_store::StoreUrl;
use std::path::PathBuf;
use std::time::Duration;

pub use squeue::{expand_array_id, is_live, parse_max_array_size, parse_task_states, split_arrays};
pub use task::{lease_owner, run_task, TaskExit, TaskOptions};

/// `etagrid run --backend slurm` settings (CLI flags).
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Every task opens it: PostgreSQL, or SQLite on one machine (see `--allow-sqlite`).
    pub store: StoreUrl,
    /// Job files, batch scripts and task logs go under `state_dir/slurm/<sweep>/`; adapters under
    /// `state_dir/cells/` as in a local run. Must be on a filesystem the nodes share.
    pub state_dir: PathBuf,
    /// The `etagrid` executable the tasks run, and its global arguments (`--state-dir`; the
    /// store reaches the tasks as `ETAGRID_DB` in their environment, so that a PostgreSQL
    /// password is never written into a file).
    pub program: PathBuf,
    pub global_args: Vec<String>,
    pub partition: Option<String>,
    /// `--gres` per task; `None` submits without one (CPU-only partitions).
    pub gres: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: usize,
    pub mem: Option<String>,
    /// Passed to `sbatch` as they are (e.g. `--account=x`, `--qos=y`).
    pub extra_args: Vec<String>,
    /// At most K tasks of an array at a time (`--array=…%K`).
    pub max_concurrent: Option<usize>,
    /// A worker's lease; renewed every third of it.
    pub lease: Duration,
    /// `--signal=B:USR2@N`: how long before the time limit the worker is told to stop.
    pub signal_before: Duration,
    /// Polling back-off: from `poll_min` up to `poll_max`, back to `poll_min` after a change.
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub retry_failed: bool,
    pub save_adapters: bool,
    pub progress: bool,
    /// How many cells one array task trains together (`[resources] cells_per_worker`,
    /// `--cells-per-worker`); see [`SlurmOptions::gpu_requested`] for `auto`.
    pub cells_per_worker: PackSize,
}

impl SlurmOptions {
    /// Whether the tasks ask for a GPU (`--gres gpu…`, or `--gpus…`/`--gres=gpu…` passed with
    /// `--sbatch-arg`). Only the pack size depends on it: a task decides its device from what
    /// SLURM granted it.
    pub fn gpu_requested(&self) -> bool {
        self.gres.as_deref().is_some_and(|g| g.contains("gpu"))
            || self.extra_args.iter().any(|a| {
                a.starts_with("--gpus") || a.starts_with("--gres=gpu") || a.starts_with("-G")
            })
    }

    /// How many GPU tasks run at once, for `cells_per_worker = "auto"`: `--max-concurrent`
    /// (each of those tasks then gets its share of the pending cells, as each GPU does in a
    /// local run); unknown otherwise, so one cell per task (every task may run at once).
    pub(crate) fn parallel_gpus(&self) -> Option<usize> {
        self.max_concurrent.filter(|_| self.gpu_requested())
    }
}

pub fn run_slurm(spec: &SweepSpec, opts: &SlurmOptions) -> Result<RunSummary, SchedError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SchedError::Runtime)?;
    rt.block_on(front::front_end(spec, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options of a front end that reaches nothing (the tests never submit).
    pub(super) fn opts(
        gres: Option<&str>,
        extra: &[&str],
        max_concurrent: Option<usize>,
    ) -> SlurmOptions {
        SlurmOptions {
            store: StoreUrl::Postgres("postgres://h/db".into()),
            state_dir: PathBuf::from("/s"),
            program: PathBuf::from("etagrid"),
            global_args: Vec::new(),
            partition: None,
            gres: gres.map(str::to_owned),
            time: None,
            cpus_per_task: 1,
            mem: None,
            extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
            max_concurrent,
            lease: Duration::from_secs(120),
            signal_before: Duration::from_secs(120),
            poll_min: Duration::from_secs(10),
            poll_max: Duration::from_secs(120),
            retry_failed: false,
            save_adapters: true,
            progress: false,
            cells_per_worker: PackSize::Auto,
        }
    }

    #[test]
    fn auto_packs_gpu_tasks_by_max_concurrent_and_leaves_cpu_tasks_at_one_cell() {
        // GPU tasks, at most 4 at a time: each of the 4 gets its share of the cells.
        assert_eq!(opts(Some("gpu:1"), &[], Some(4)).parallel_gpus(), Some(4));
        // Every task may run at once: one cell per task.
        assert_eq!(opts(Some("gpu:1"), &[], None).parallel_gpus(), None);
        // CPU tasks: never packed by auto.
        assert_eq!(opts(None, &[], Some(4)).parallel_gpus(), None);
        // A GPU asked for with --sbatch-arg counts as a GPU task.
        assert!(opts(None, &["--gpus=1"], None).gpu_requested());
        assert!(opts(None, &["--gres=gpu:a100:1"], None).gpu_requested());
        assert!(!opts(None, &["--account=lab"], None).gpu_requested());
    }
}
