//! Inside a SLURM array task (`etagrid worker --job task-i.json --lease S`): claims each cell of
//! the task's pack in the store, runs the normal worker (`etagrid worker --job`, the same job
//! file and `CellEvent` lines as in a local run) as a child, and records its lines through the
//! same [`Pack`]/[`Recorder`] as the local dispatcher — here under a lease per cell, renewed
//! every third of it, since no scheduler runs next to the task. On SIGTERM (preemption,
//! `scancel`, requeue) or SIGUSR2 (the time limit is near) it gives its unfinished cells back to
//! pending and kills the worker.
//!
//! A pack whose size came from `cells_per_worker = "auto"` (`--measure-pack`) is measured first
//! on the GPU SLURM granted: a memory probe of two of its cells, as the local dispatcher runs
//! one, says how many fit, and the task trains its cells in parts of that size, one after the
//! other, claiming each part's cells when it starts it (the rest stay pending, and the front end
//! leaves them to this task while it lives). A task stopped before a part (a signal during the
//! probe or between parts, a lost lease) takes that part's cells off its list in the store:
//! they go to other tasks at once, and it is not counted as a task that ended without claiming
//! them (which the front end takes for a store it cannot reach).
//!
//! A task of a successive-halving sweep trains its job's segment of the budget, the rung it was
//! submitted for: it claims a cell only while the cell is on that rung (checked in the claiming
//! statement), and takes a cell that moved on since (promoted while the task waited in the
//! queue) off its list the same way.

use crate::events::{Action, Applied, Member, Pack, Recorder, WorkerExit};
use crate::job::{self, WorkerMsg};
use crate::local::{run_probe, WorkerCommand};
use crate::memfit::MemoryFit;
use crate::prologue::cell_label;
use crate::sys::{self, Kill, Stop, StopSignals};
use crate::SchedError;
use etagrid_spec::protocol::{JobDevice, PackedCell, WorkerJob};
use etagrid_store::{unix_now, Claim, Outcome, Store, StoreUrl};
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::mpsc;

/// What a SLURM task needs to run its pack.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    pub store: StoreUrl,
    /// The task's job file, as the front end wrote it.
    pub job: PathBuf,
    /// Who holds the leases ([`lease_owner`]).
    pub owner: String,
    /// Recorded in each claimed cell's `device` column.
    pub device_label: String,
    /// The GPU(s) SLURM granted the task and libtorch can use (`CUDA_VISIBLE_DEVICES` for the
    /// worker); `None`: the CPU.
    pub gpus: Option<String>,
    pub lease: Duration,
    pub max_attempts: u32,
    /// The worker to run, without `--job` (`etagrid worker`).
    pub worker: WorkerCommand,
    /// The pack's size came from `cells_per_worker = "auto"`: on a GPU, measure what fits first
    /// and train the pack in parts of that size (see the module's doc).
    pub measure_pack: bool,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskExit {
    /// Its worker ended and every claimed cell's end is recorded; `failed`: one of them failed.
    Finished { failed: bool },
    /// Nothing to do: every cell is finished, held by a live task, or out of attempts.
    Skipped,
    /// Stopped by a signal; the unfinished cells went back to pending.
    Released,
    /// Every lease was lost (expired and taken back): nothing more is written.
    LeaseLost,
}

/// Who a worker is, for its lease: the SLURM task id as `squeue` prints it
/// (`<array job id>_<task index>`), else the job id, else `pid<N>`.
pub fn lease_owner() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(j), Some(t)) => format!("{j}_{t}"),
        _ => var("SLURM_JOB_ID").unwrap_or_else(|| format!("pid{}", std::process::id())),
    }
}

pub fn run_task(o: &TaskOptions) -> Result<TaskExit, SchedError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SchedError::Runtime)?;
    rt.block_on(task(o))
}

async fn task(o: &TaskOptions) -> Result<TaskExit, SchedError> {
    // Signal handlers first: a SIGTERM during the claims must not kill the process with cells
    // claimed.
    let mut signals = StopSignals::new(true).map_err(SchedError::Runtime)?;
    let job = job::read_job(&o.job)?;
    let store = Store::open(&o.store).await?;
    let result = match parts_of(&store, &job, o, &mut signals).await {
        Ok(Some(parts)) => run_parts(&store, o, &parts, &mut signals).await,
        // Stopped while measuring: nothing claimed, every cell given back untried.
        Ok(None) => forget(&store, o, std::slice::from_ref(&job))
            .await
            .map(|()| TaskExit::Released),
        Err(e) => Err(e),
    };
    store.close().await;
    result
}

/// A stop signal that came in already, without waiting for one.
async fn pending_stop(signals: &mut StopSignals) -> Option<Stop> {
    tokio::select! {
        biased;
        stop = signals.recv() => Some(stop),
        () = std::future::ready(()) => None,
    }
}

/// Takes the cells of `parts`, which this task never started, off its list in the store (see
/// the module's doc). A no-op outside an array task (no `<job>_<index>` owner).
async fn forget(store: &Store, o: &TaskOptions, parts: &[WorkerJob]) -> Result<(), SchedError> {
    let cells: Vec<String> = parts
        .iter()
        .flat_map(WorkerJob::cells)
        .map(|c| c.cell_id.0)
        .collect();
    let Some(first) = parts.first() else {
        return Ok(());
    };
    if forget_cells(store, o, &first.sweep, &cells).await? {
        eprintln!(
            "etagrid worker {}: {} cell(s) not reached, given back to the front end untried",
            o.owner,
            cells.len()
        );
    }
    Ok(())
}

/// Takes `cells` off this task's list in the store; false outside an array task.
async fn forget_cells(
    store: &Store,
    o: &TaskOptions,
    sweep: &str,
    cells: &[String],
) -> Result<bool, SchedError> {
    let Some((job_id, index)) = o
        .owner
        .rsplit_once('_')
        .and_then(|(j, i)| Some((j, i.parse::<i64>().ok()?)))
    else {
        return Ok(false);
    };
    store
        .forget_slurm_task_cells(sweep, job_id, index, cells)
        .await?;
    Ok(true)
}

/// The successive-halving rung (0-based) `job` was submitted to train, from its segment and the
/// settings the store recorded for the sweep; `None` for a grid sweep (no rung to check). A job
/// whose segment is no rung of those settings (a grid job of a sweep turned halving) gets a rung
/// no cell is on, so it claims none.
async fn job_rung(store: &Store, job: &WorkerJob) -> Result<Option<i64>, SchedError> {
    let Some(search) = store.halving_search(&job.sweep).await? else {
        return Ok(None);
    };
    let rungs = search.rung_count() as i64;
    Ok(Some(
        (0..rungs)
            .find(|&r| Some(crate::halving::segment(&search, r)) == job.segment)
            .unwrap_or(i64::MAX),
    ))
}

/// Claims and trains each part in turn; stops at the first that a signal or a lost lease ends.
async fn run_parts(
    store: &Store,
    o: &TaskOptions,
    parts: &[WorkerJob],
    signals: &mut StopSignals,
) -> Result<TaskExit, SchedError> {
    let mut exit = TaskExit::Skipped;
    for (k, part) in parts.iter().enumerate() {
        if k > 0 {
            if let Some(stop) = pending_stop(signals).await {
                eprintln!(
                    "etagrid worker {}: stopped ({stop:?}) between parts",
                    o.owner
                );
                forget(store, o, &parts[k..]).await?;
                return Ok(TaskExit::Released);
            }
        }
        let claimed = claim_all(store, part, o).await?;
        if claimed.is_empty() {
            continue;
        }
        let mut run = TaskRun {
            store,
            o,
            sweep: &part.sweep,
            pack: Pack::new(claimed.iter().map(|(_, m)| m.clone()).collect()),
            failed: false,
        };
        exit = match (run.run(part, &claimed, signals).await?, exit) {
            (TaskExit::Finished { failed }, TaskExit::Finished { failed: before }) => {
                TaskExit::Finished {
                    failed: failed || before,
                }
            }
            (e @ TaskExit::Finished { .. }, _) => e,
            (stopped, _) => {
                forget(store, o, &parts[k + 1..]).await?;
                return Ok(stopped);
            }
        };
    }
    Ok(exit)
}

/// The job's cells in the parts the task trains them in: all at once, or with
/// [`TaskOptions::measure_pack`] on a GPU, its unfinished cells in parts of as many as a memory
/// probe of two of them says fit (as even as one size allows: 36 cells of which 35 fit are
/// 18 + 18). A probe that fails leaves parts of one cell, and says so.
/// `None`: a stop signal came while the probe ran (it is killed; nothing was claimed).
async fn parts_of(
    store: &Store,
    job: &WorkerJob,
    o: &TaskOptions,
    signals: &mut StopSignals,
) -> Result<Option<Vec<WorkerJob>>, SchedError> {
    let whole = || Ok(Some(vec![job.clone()]));
    let Some(gpus) = o.gpus.clone().filter(|_| o.measure_pack) else {
        return whole();
    };
    // A requeued task may find some of its cells finished: those need no room.
    let finished: std::collections::HashSet<String> = store
        .cells(&job.sweep)
        .await?
        .into_iter()
        .filter(|r| r.state.is_final())
        .map(|r| r.id)
        .collect();
    let cells: Vec<PackedCell> = job
        .cells()
        .into_iter()
        .filter(|c| !finished.contains(&c.cell_id.0))
        .collect();
    if cells.len() <= 2 {
        return whole();
    }
    let part = |cells: &[PackedCell]| WorkerJob {
        cell_id: cells[0].cell_id.clone(),
        config: cells[0].config.clone(),
        out_dir: cells[0].out_dir.clone(),
        pack: cells[1..].to_vec(),
        device: JobDevice::Cuda,
        cuda_visible_devices: Some(gpus.clone()),
        ..job.clone()
    };
    let owner = &o.owner;
    eprintln!(
        "etagrid worker {owner}: measuring the memory of a pack of 2 of its {} cells on GPU {gpus} \
         (cells_per_worker = \"auto\")",
        cells.len()
    );
    let probe_job = part(&cells[..2]);
    let probe = tokio::select! {
        p = run_probe(&o.worker, &probe_job, PROBE_LIMIT) => p,
        stop = signals.recv() => {
            eprintln!("etagrid worker {owner}: stopped ({stop:?}) while measuring");
            return Ok(None);
        }
    };
    let fit = match probe {
        Ok(p) => {
            let fit = p.cells_that_fit(MemoryFit::default().usable_fraction, 1);
            eprintln!(
                "etagrid worker {owner}: {} MiB in use before it, {} MiB for the base, {} MiB \
                 per cell, of {} MiB → {fit} cell(s) fit",
                p.before_mib,
                p.base_mib(),
                p.per_cell_mib(),
                p.total_mib
            );
            fit
        }
        Err(why) => {
            eprintln!(
                "etagrid worker {owner}: the memory probe failed: {why}; training one cell at a \
                 time (set [resources] cells_per_worker to pack anyway)"
            );
            1
        }
    };
    let size = part_size(cells.len(), fit);
    if size < cells.len() {
        eprintln!(
            "etagrid worker {owner}: training its {} cells in {} part(s) of up to {size}",
            cells.len(),
            cells.len().div_ceil(size)
        );
    }
    Ok(Some(cells.chunks(size).map(part).collect()))
}

/// How long a memory probe may take (a worker's start, one step, one evaluation batch).
const PROBE_LIMIT: Duration = Duration::from_secs(600);

/// The size of the parts `n` cells are trained in when `fit` fit at once: as few parts as fit,
/// of one size as even as that allows.
fn part_size(n: usize, fit: usize) -> usize {
    let parts = n.div_ceil(fit.max(1)).max(1);
    n.div_ceil(parts).max(1)
}

/// Claims every cell of the job it may run; says why it skips the others.
async fn claim_all(
    store: &Store,
    job: &WorkerJob,
    o: &TaskOptions,
) -> Result<Vec<(PackedCell, Member)>, SchedError> {
    let (sweep, owner) = (job.sweep.as_str(), o.owner.as_str());
    let lease_s = lease_secs(o.lease);
    let rung = job_rung(store, job).await?;
    let mut moved_on = Vec::new();
    let mut claimed: Vec<(PackedCell, Member)> = Vec::new();
    for cell in job.cells() {
        let id = cell.cell_id.0.clone();
        let claim = store
            .claim(
                sweep,
                &id,
                owner,
                &o.device_label,
                unix_now(),
                lease_s,
                i64::from(o.max_attempts),
                rung,
            )
            .await?;
        let why = match claim {
            Claim::Claimed { attempt } => {
                eprintln!(
                    "etagrid worker {owner}: claimed cell {id} of sweep {sweep} (attempt {attempt}) on {}",
                    o.device_label
                );
                let label = cell_label(&id, cell.config.lr_a, cell.config.lr_b);
                claimed.push((cell, Member::new(id, label, attempt)));
                continue;
            }
            Claim::Finished(st) => format!("cell {id} is already {}: nothing to do", st.as_str()),
            Claim::Held {
                owner: holder,
                expires,
            } => format!(
                "cell {id} is held by {holder} (lease valid for {} s more): skipped",
                expires - unix_now()
            ),
            Claim::Exhausted { attempts } => format!(
                "cell {id} used up its attempts ({attempts} of {}): skipped",
                o.max_attempts
            ),
            Claim::OtherRung { rung } => {
                moved_on.push(id.clone());
                format!(
                    "cell {id} is on successive-halving rung {} now, not the one this task was \
                     submitted for: skipped (the front end submits it again)",
                    rung + 1
                )
            }
            Claim::Missing => {
                // Not a skip: this task reads another store than its front end wrote (the URL
                // did not reach it, e.g. `--export=NONE`). Exit non-zero so it shows.
                for (c, _) in &claimed {
                    store
                        .release(sweep, &c.cell_id.0, owner, true, "task stopped")
                        .await?;
                }
                return Err(SchedError::Slurm(format!(
                    "cell {id} of sweep {sweep} is not in the store {}: this task opened another \
                     store than the front end's (was ETAGRID_DB exported to it?)",
                    o.store
                )));
            }
        };
        eprintln!("etagrid worker {owner}: {why}");
    }
    // Off this task's list, so that the front end neither waits for this task to end before it
    // submits them again nor counts it as a task that ended without claiming them.
    if !moved_on.is_empty() {
        forget_cells(store, o, sweep, &moved_on).await?;
    }
    Ok(claimed)
}

fn lease_secs(lease: Duration) -> i64 {
    lease.as_secs().max(3) as i64
}

/// A task's claimed pack while its worker runs.
struct TaskRun<'a> {
    store: &'a Store,
    o: &'a TaskOptions,
    sweep: &'a str,
    pack: Pack,
    /// A cell ended failed.
    failed: bool,
}

impl TaskRun<'_> {
    async fn run(
        &mut self,
        job: &WorkerJob,
        claimed: &[(PackedCell, Member)],
        signals: &mut StopSignals,
    ) -> Result<TaskExit, SchedError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pid = match self.start_worker(job, claimed, tx) {
            Ok(pid) => pid,
            Err(e) => {
                // Nothing ran: the cells go back, this attempt counted (a broken installation
                // must not be retried forever).
                let why = format!("could not start the worker: {e}");
                self.give_back(false, &why).await?;
                return Err(e);
            }
        };
        let lease_s = lease_secs(self.o.lease);
        let mut beat = tokio::time::interval(Duration::from_secs((lease_s / 3).max(1) as u64));
        beat.tick().await;
        loop {
            tokio::select! {
                biased;
                stop = signals.recv() => {
                    self.released(stop).await?;
                    sys::signal_group(pid, Kill::Now);
                    return Ok(TaskExit::Released);
                }
                msg = rx.recv() => match msg {
                    Some(WorkerMsg::Event(_, ev)) => {
                        let actions = self.pack.on_event(ev);
                        self.apply(&actions).await?;
                    }
                    Some(WorkerMsg::Exited(_, status)) => {
                        let input_error = status
                            .as_ref()
                            .is_ok_and(|s| sys::exit_code(s) == Some(crate::WORKER_INPUT_ERROR));
                        let exit = WorkerExit {
                            input_error,
                            cause: job::crash_cause(&status, "this task's output (slurm-*.out)"),
                        };
                        let actions = self.pack.on_exit(&exit, false, self.o.max_attempts);
                        self.apply(&actions).await?;
                        return Ok(TaskExit::Finished { failed: self.failed });
                    }
                    None => return Ok(TaskExit::Finished { failed: self.failed }),
                },
                _ = beat.tick() => {
                    if !self.heartbeat(lease_s).await? {
                        sys::signal_group(pid, Kill::Now);
                        return Ok(TaskExit::LeaseLost);
                    }
                }
            }
        }
    }

    /// Writes the job of the claimed cells, on the device SLURM granted, into the first cell's
    /// directory (as a local run does) and starts the worker on it.
    fn start_worker(
        &self,
        job: &WorkerJob,
        claimed: &[(PackedCell, Member)],
        tx: mpsc::UnboundedSender<WorkerMsg>,
    ) -> Result<i32, SchedError> {
        let cells: Vec<&PackedCell> = claimed.iter().map(|(c, _)| c).collect();
        let Some((first, rest)) = cells.split_first() else {
            return Err(SchedError::Slurm("no cell to train".into()));
        };
        let ours = WorkerJob {
            cell_id: first.cell_id.clone(),
            config: first.config.clone(),
            out_dir: first.out_dir.clone(),
            pack: rest.iter().map(|c| (*c).clone()).collect(),
            device: if self.o.gpus.is_some() {
                JobDevice::Cuda
            } else {
                JobDevice::Cpu
            },
            cuda_visible_devices: self.o.gpus.clone(),
            ..job.clone()
        };
        let path = first.out_dir.join("job.json");
        job::write_job(&path, &ours)?;
        let mut cmd = Command::new(&self.o.worker.program);
        cmd.args(&self.o.worker.args).arg("--job").arg(&path);
        // The worker's stderr goes to the task's output, next to this process's lines.
        sys::own_group(&mut cmd, Kill::Now);
        sys::ignore_stop_signals(&mut cmd);
        job::start(cmd, 0, tx).map_err(crate::error::io_err("start worker", &self.o.worker.program))
    }

    /// Applies actions through the shared [`Recorder`] under this task's leases.
    async fn apply(&mut self, actions: &[Action]) -> Result<(), SchedError> {
        let owner = self.o.owner.as_str();
        let recorder = Recorder {
            store: self.store,
            sweep: self.sweep,
            lease_owner: Some(owner),
        };
        for a in actions {
            let applied = recorder.apply(a).await?;
            let Action::Finish { id, outcome, .. } = a else {
                continue;
            };
            if applied == Applied::LeaseLost {
                eprintln!("etagrid worker {owner}: lost the lease on cell {id}; its result is not recorded");
                continue;
            }
            let what = match outcome {
                Outcome::Done(_) => "done".to_owned(),
                Outcome::Paused(_) => "paused at its rung".to_owned(),
                Outcome::Diverged { .. } => "diverged".to_owned(),
                Outcome::Failed(e) => format!("failed: {e}"),
                Outcome::InputError(e) => format!("failed (input error, no attempt used): {e}"),
                Outcome::Retry(e) => {
                    format!("back to pending, to be retried (attempt counted): {e}")
                }
                Outcome::Interrupted => "back to pending".to_owned(),
            };
            self.failed |= matches!(outcome, Outcome::Failed(_) | Outcome::InputError(_));
            eprintln!("etagrid worker {owner}: cell {id} {what}");
        }
        Ok(())
    }

    /// Renews the lease of every unfinished cell; a cell whose lease is lost is dropped (another
    /// task has it). False when that left no cell to train (a worker whose cells all ended is
    /// left to exit on its own).
    async fn heartbeat(&mut self, lease_s: i64) -> Result<bool, SchedError> {
        let owner = self.o.owner.as_str();
        let live: Vec<String> = self.pack.live().map(|m| m.id.clone()).collect();
        if live.is_empty() {
            return Ok(true);
        }
        for id in live {
            if !self
                .store
                .heartbeat(self.sweep, &id, owner, unix_now(), lease_s)
                .await?
            {
                eprintln!(
                    "etagrid worker {owner}: lost the lease on cell {id} (it expired and was taken back)"
                );
                self.pack.drop_member(&id);
            }
        }
        if self.pack.live().next().is_none() {
            eprintln!("etagrid worker {owner}: no cell left to train; stopping");
            return Ok(false);
        }
        Ok(true)
    }

    /// A stop signal: every unfinished cell back to pending, refunded unless the time limit was
    /// near (the cell's fault: it does not fit in `--time`).
    async fn released(&mut self, stop: Stop) -> Result<(), SchedError> {
        let owner = self.o.owner.as_str();
        let live: Vec<(String, i64)> = self
            .pack
            .live()
            .map(|m| (m.id.clone(), m.attempt))
            .collect();
        for (id, attempt) in live {
            let (refund, note) = match stop {
                Stop::Terminate => (true, format!("SIGTERM (preempted, requeued or cancelled): cell {id} back to pending, attempt not counted")),
                Stop::Interrupt => (true, format!("SIGINT: cell {id} back to pending, attempt not counted")),
                Stop::TimeLimit => (false, format!("SIGUSR2 (the SLURM time limit is near): cell {id} back to pending, attempt {attempt} counted; give the tasks more --time")),
            };
            eprintln!("etagrid worker {owner}: {note}");
            self.store
                .release(self.sweep, &id, owner, refund, &note)
                .await?;
            self.pack.drop_member(&id);
        }
        Ok(())
    }

    /// Every unfinished cell back to pending with `note`.
    async fn give_back(&mut self, refund: bool, note: &str) -> Result<(), SchedError> {
        let live: Vec<String> = self.pack.live().map(|m| m.id.clone()).collect();
        for id in live {
            self.store
                .release(self.sweep, &id, &self.o.owner, refund, note)
                .await?;
            self.pack.drop_member(&id);
        }
        eprintln!("etagrid worker {}: {note}", self.o.owner);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::part_size;

    #[test]
    fn parts_are_as_few_as_fit_and_as_even_as_one_size_allows() {
        for (n, fit, size) in [
            (4, 3, 2),
            (36, 35, 18),
            (36, 36, 36),
            (36, 100, 36),
            (36, 8, 8),
            (36, 17, 12),
            (5, 1, 1),
            (3, 0, 1),
        ] {
            assert_eq!(part_size(n, fit), size, "{n} cells, {fit} fit");
            assert!(size <= fit.max(1), "{n}, {fit}");
        }
    }
}
