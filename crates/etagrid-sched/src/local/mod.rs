//! The local backend: worker processes on this machine, one per slot. Like nextest's runner it
//! is a *dispatcher* — one `tokio::select!` loop that alone sees signals and child events and
//! alone writes the store — and one reader task per worker process. The engine owns its tokio
//! runtime; callers use the synchronous [`run`].

mod dispatch;
mod probe;
mod worker;

pub(crate) use worker::run_probe;

use crate::devices::SlotDevice;
use crate::memfit::MemoryFit;
use crate::{RunSummary, SchedError};
use etagrid_spec::{PackSize, SweepSpec};
use etagrid_store::StoreUrl;
use std::path::PathBuf;
use std::time::Duration;

/// How to start a worker: `program args… --job FILE`.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The results store: an SQLite file or a PostgreSQL URL (`--db`).
    pub store: StoreUrl,
    /// Job files and worker logs go under `state_dir/cells/<sweep>/<cell>/`.
    pub state_dir: PathBuf,
    pub worker: WorkerCommand,
    pub slots: Vec<SlotDevice>,
    pub threads_per_cell: usize,
    /// Live bars when stderr is a terminal.
    pub progress: bool,
    /// Give failed cells that used up `max_attempts` a fresh set.
    pub retry_failed: bool,
    /// Between SIGTERM and SIGKILL when stopping or timing out a worker.
    pub grace: Duration,
    /// Workers save each finished cell's adapter.
    pub save_adapters: bool,
    /// `Some`: `slots` holds up to `max_per_device` slots per GPU, but only the first on each GPU
    /// opens at once; the rest open when that GPU's first cell ends, as many as its memory peak
    /// allows (the default when the sweep leaves `cells_per_device` unset).
    pub memory_fit: Option<MemoryFit>,
    /// How many cells a worker trains together on one frozen base (see [`PackSize`]).
    pub cells_per_worker: PackSize,
}

/// Expands and enqueues the sweep, then runs every cell that is not done yet, `slots.len()` at a
/// time, until all are finished or a signal stops the run.
pub fn run(spec: &SweepSpec, opts: &RunOptions) -> Result<RunSummary, SchedError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(SchedError::Runtime)?;
    rt.block_on(dispatch::run_async(spec, opts))
}
