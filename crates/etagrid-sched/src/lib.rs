//! The scheduler: runs a sweep's cells as worker processes and records what they report.
//! Layout (docs/scheduler.md has the map and the "add a backend" checklist):
//!
//! - `prologue`: what every backend does first (open the store, lock the sweep, enqueue,
//!   recover cells an earlier run left running) and the line that ends a run;
//! - `events`: a worker's lines and exit → store actions, as plain data (tested
//!   without processes); both backends record through it;
//! - `job`, `packing`: the job file and worker start both backends share; which cells a worker
//!   takes together;
//! - [`local`]: worker processes on this machine (a dispatcher and one reader task per worker);
//! - [`slurm`]: one job array per batch of packs, each task running the normal worker and
//!   recording its lines itself under a lease per cell;
//! - `sys`: every OS call (signals, process groups, the parent-death signal, `_exit`).

mod devices;
mod error;
mod events;
mod halving;
mod job;
pub mod local;
mod memfit;
mod packing;
mod progress;
mod prologue;
pub mod slurm;
mod sys;
#[cfg(test)]
mod testing;

pub use devices::{
    cpu_fallback_warning, discover_gpus, granted_gpus, parse_visible_devices, plan_slots,
    SlotDevice,
};
pub use error::SchedError;
pub use events::{record_event, terminal_outcome};
pub use halving::check as check_search;
pub use local::{run, RunOptions, WorkerCommand};
pub use memfit::{cells_that_fit, MemoryFit};
pub use prologue::RunSummary;
pub use sys::exit_now;

/// The exit status of a worker that found its inputs bad (a data or model file changed after
/// `etagrid run` checked them), after its `failed` event: the cell is stored as an input error,
/// which uses no attempt.
pub const WORKER_INPUT_ERROR: i32 = 4;
