//! The local scheduler. Like nextest's runner it is a *dispatcher* — one `tokio::select!` loop
//! that alone sees signals and child events and alone writes the store — and one reader task per
//! worker process. The engine owns its tokio runtime; callers use the synchronous [`run`].

mod devices;
mod dispatch;
mod memfit;
mod progress;
pub mod slurm;

pub use devices::{discover_gpus, plan_slots, SlotDevice};
pub use dispatch::{
    record_event, run, terminal_outcome, RunOptions, RunSummary, SchedError, WorkerCommand,
};
pub use memfit::{cells_that_fit, MemoryFit};

/// The exit status of a worker that found its inputs bad (a data or model file changed after
/// `etagrid run` checked them), after its `failed` event: the cell is stored as an input error,
/// which uses no attempt.
pub const WORKER_INPUT_ERROR: i32 = 4;
