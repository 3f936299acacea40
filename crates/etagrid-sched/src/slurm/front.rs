//! The SLURM front end: submits packs of pending cells as job arrays and watches the store (the
//! truth) and `squeue` until every cell is finished. A successive-halving sweep runs rung by
//! rung, as on the local backend: the tasks of a rung train their cells to its end and pause
//! them there; when no cell of the rung is left to run, the front end makes the promotion
//! (`halving::advance`, recorded in the store) and submits the promoted cells, re-packed.

use super::squeue::{is_live, max_array_size, split_arrays, task_states};
use super::submit::{submit_array, TaskCells};
use super::SlurmOptions;
use crate::halving;
use crate::packing::Packing;
use crate::progress::Progress;
use crate::prologue::{cell_label, Prologue, Start};
use crate::sys::StopSignals;
use crate::{RunSummary, SchedError};
use etagrid_spec::protocol::Segment;
use etagrid_spec::{CellConfig, SweepSpec};
use etagrid_store::{unix_now, CellRow, CellState, Outcome, Store};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

pub(super) async fn front_end(
    spec: &SweepSpec,
    opts: &SlurmOptions,
) -> Result<RunSummary, SchedError> {
    let prologue = Prologue::open(spec, &opts.store, opts.retry_failed).await?;
    halving::init(&prologue.store, spec).await?;
    let max = i64::from(spec.max_attempts);
    // As in a local run, a rerun retries failed cells that have attempts left.
    prologue.store.requeue_failed(&spec.name, max).await?;
    // Stopped between rungs (every cell of a rung paused, the promotion not made): made now.
    let wanted: HashSet<&str> = prologue.cells.iter().map(|c| c.id.0.as_str()).collect();
    for line in halving::advance(&prologue.store, spec, &wanted).await? {
        eprintln!("{line}");
    }
    let job_name = format!("etagrid-{}", spec.name);
    let current: HashMap<String, CellConfig> = prologue
        .cells
        .iter()
        .map(|c| (c.id.0.clone(), c.config.clone()))
        .collect();
    let rows = prologue.store.cells(&spec.name).await?;
    let mut summary = RunSummary {
        total: prologue.cells.len(),
        ..Default::default()
    };
    let mut last: HashMap<String, (CellState, Option<i64>)> = HashMap::new();
    let mut to_run = 0;
    for r in rows.iter().filter(|r| current.contains_key(&r.id)) {
        match Start::of(r, max) {
            Start::Skipped => summary.skipped += 1,
            Start::Exhausted => summary.exhausted += 1,
            Start::ToRun => to_run += 1,
        }
        last.insert(r.id.clone(), (r.state, r.rung));
    }
    eprintln!(
        "sweep {}: {} cells ({} new, {} already in the store), {} to run on SLURM as job arrays named {job_name}",
        spec.name,
        prologue.cells.len(),
        prologue.enqueued.added,
        prologue.enqueued.existing,
        to_run
    );
    if prologue.say_skipped(spec, &summary, to_run) {
        prologue.store.close().await;
        return Ok(summary);
    }
    let started = Instant::now();
    let mut front = Front {
        spec,
        opts,
        store: &prologue.store,
        progress: Progress::new(to_run as u64, 0, opts.progress),
        labels: rows
            .iter()
            .map(|r| (r.id.clone(), cell_label(&r.id, r.lr_a, r.lr_b)))
            .collect(),
        current,
        job_name,
        max,
        max_array: max_array_size().await,
        first: true,
        last,
        summary,
    };
    let stopped = front.watch().await?;
    front.progress.finish();
    let mut summary = front.summary;
    summary.stopped_by_signal = stopped;
    if stopped {
        eprintln!(
            "stopped watching sweep {}: its SLURM tasks keep running and write the store; \
             rerun `etagrid run --backend slurm` to watch again, or `scancel --name={}` to stop them",
            spec.name, front.job_name
        );
        prologue.store.close().await;
    } else {
        prologue.finish(spec, "finished", started).await?;
    }
    Ok(summary)
}

/// The front end's state between polls.
struct Front<'a> {
    spec: &'a SweepSpec,
    opts: &'a SlurmOptions,
    store: &'a Store,
    progress: Progress,
    /// Cell id → its progress label.
    labels: HashMap<String, String>,
    /// The current grid's configurations: only these cells run, configured as now.
    current: HashMap<String, CellConfig>,
    job_name: String,
    max: i64,
    max_array: usize,
    /// Before the first submission (to say it re-attached to an earlier one's tasks).
    first: bool,
    /// Each cell's state and rung at the last poll, to say what changed (a halving cell is
    /// `done` at the end of each rung it reaches).
    last: HashMap<String, (CellState, Option<i64>)>,
    summary: RunSummary,
}

impl Front<'_> {
    fn label(&self, id: &str) -> String {
        self.labels
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }

    /// Polls until no cell is pending or running; true when a signal stopped the watching.
    async fn watch(&mut self) -> Result<bool, SchedError> {
        let mut signals = StopSignals::new(false).map_err(SchedError::Runtime)?;
        let mut delay = self.opts.poll_min;
        loop {
            let mut changed = self.poll().await?;
            // Report what changed, from the store (the truth), and stop when nothing is left.
            let (reported, left) = self.report().await?;
            changed |= reported;
            if left == 0 {
                if self.next_rung().await? {
                    continue;
                }
                return Ok(false);
            }
            delay = if changed {
                self.opts.poll_min
            } else {
                (delay * 2).min(self.opts.poll_max)
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = signals.recv() => return Ok(true),
            }
        }
    }

    /// Successive halving, when no cell is left to run: makes the promotion that is due (see
    /// `halving::advance`). True when it promoted cells, which are now pending.
    async fn next_rung(&mut self) -> Result<bool, SchedError> {
        if halving::of(self.spec).is_none() {
            return Ok(false);
        }
        let wanted: HashSet<&str> = self.current.keys().map(String::as_str).collect();
        for line in halving::advance(self.store, self.spec, &wanted).await? {
            self.progress.line(&line);
        }
        let promoted = self
            .store
            .cells_in_state(&self.spec.name, CellState::Pending)
            .await?
            .iter()
            .filter(|r| wanted.contains(r.id.as_str()) && !r.pruned)
            .count();
        self.progress.add_cells(promoted as u64);
        Ok(promoted > 0)
    }

    /// What SLURM still runs; cells of dead tasks taken back; pending cells submitted. A failed
    /// query skips this round: never take "no answer" for "every task is gone".
    async fn poll(&mut self) -> Result<bool, SchedError> {
        let states = match task_states(&self.job_name).await {
            Ok(s) => s,
            Err(e) => {
                self.progress
                    .line(&format!("squeue: {e}; trying again later"));
                return Ok(false);
            }
        };
        let live = |id: &str| states.get(id).is_some_and(|s| is_live(s));
        let mut changed = self.reclaim(&states, &live).await?;
        self.store.fail_exhausted(&self.spec.name, self.max).await?;
        changed |= self.submit_pending(&live).await?;
        Ok(changed)
    }

    /// Cells held by tasks that ended, or whose lease ran out, go back (attempt counted) or fail
    /// when it was their last attempt.
    async fn reclaim(
        &mut self,
        states: &HashMap<String, String>,
        live: &dyn Fn(&str) -> bool,
    ) -> Result<bool, SchedError> {
        let (spec, max) = (self.spec, self.max);
        let mut changed = false;
        let now = unix_now();
        for l in self.store.leases(&spec.name).await? {
            let expired = l.expires.is_some_and(|e| e < now);
            let cause = if !live(&l.owner) {
                format!(
                    "SLURM task {} ended ({}) without finishing the cell",
                    l.owner,
                    states
                        .get(&l.owner)
                        .map(String::as_str)
                        .unwrap_or("no longer listed")
                )
            } else if expired {
                format!(
                    "lease of SLURM task {} expired: no heartbeat for {} s or more (worker hung or node died)",
                    l.owner,
                    self.opts.lease.as_secs()
                )
            } else {
                continue;
            };
            // A live task's cell is taken only if its lease is still expired.
            let taken = self
                .store
                .reclaim(
                    &spec.name,
                    &l.cell_id,
                    &l.owner,
                    &cause,
                    max,
                    live(&l.owner).then_some(now),
                )
                .await?;
            let Some(st) = taken else { continue };
            changed = true;
            let what = if st == CellState::Failed {
                format!("failed: {cause} (attempt {} of {max})", l.attempts)
            } else {
                self.summary.retried += 1;
                format!("{cause}; retrying (attempt {} of {max} used)", l.attempts)
            };
            self.progress
                .line(&format!("cell {}: {what}", self.label(&l.cell_id)));
        }
        Ok(changed)
    }

    /// Pending cells that no live task will run: submitted, in packs.
    async fn submit_pending(&mut self, live: &dyn Fn(&str) -> bool) -> Result<bool, SchedError> {
        let spec = self.spec;
        let tasks = self.store.slurm_tasks(&spec.name).await?;
        let covered: HashSet<String> = tasks
            .iter()
            .filter(|t| live(&t.slurm_id()))
            .map(|t| t.cell_id.clone())
            .collect();
        // Tasks that ended without ever claiming the cell (the worker could not reach the store,
        // or read another one) count no attempt; stop resubmitting after `max_attempts` of them
        // instead of submitting a new array every poll. A claim marks the task's row, so a
        // refunded attempt or a halving promotion (attempts counted afresh) is no such task.
        let mut unclaimed_by: HashMap<String, i64> = HashMap::new();
        for t in self.store.unclaimed_slurm_tasks(&spec.name).await? {
            if !live(&t.slurm_id()) {
                *unclaimed_by.entry(t.cell_id).or_default() += 1;
            }
        }
        let mut changed = false;
        let mut queue = VecDeque::new();
        for r in self
            .store
            .cells_in_state(&spec.name, CellState::Pending)
            .await?
        {
            // A pruned cell is final: its rung was decided without it.
            if !self.current.contains_key(&r.id) || covered.contains(&r.id) || r.pruned {
                continue;
            }
            let unclaimed = unclaimed_by.get(&r.id).copied().unwrap_or(0);
            if unclaimed >= self.max {
                self.fail_unclaimed(&r, unclaimed).await?;
                changed = true;
            } else if r.attempts < self.max {
                queue.push_back(r);
            }
        }
        if self.first {
            let attached = covered
                .iter()
                .filter(|c| self.current.contains_key(*c))
                .count();
            if attached > 0 {
                self.progress.line(&format!(
                    "re-attached to {attached} queued or running task(s) of an earlier submission"
                ));
            }
            self.first = false;
        }
        // The cells of a halving rung train its segment of their budget; cells of two rungs
        // are never in one task (rungs are synchronous, so this is one rung at a time anyway).
        let mut by_rung: BTreeMap<Option<i64>, VecDeque<CellRow>> = BTreeMap::new();
        for r in queue {
            by_rung.entry(r.rung).or_default().push_back(r);
        }
        for (rung, queue) in by_rung {
            let segment =
                halving::of(spec).map(|search| halving::segment(search, rung.unwrap_or(0)));
            let packs = self.packs(queue);
            changed |= self.submit_packs(&packs, segment).await?;
        }
        Ok(changed)
    }

    /// Submits `packs` as job arrays (split at the cluster's `MaxArraySize`), each task
    /// training `segment` of its cells' budget (a halving rung) or all of it.
    async fn submit_packs(
        &mut self,
        packs: &[TaskCells],
        segment: Option<Segment>,
    ) -> Result<bool, SchedError> {
        let spec = self.spec;
        let mut changed = false;
        for range in split_arrays(packs.len(), self.max_array) {
            let tasks = submit_array(spec, self.opts, &packs[range], segment).await?;
            self.store
                .record_slurm_tasks(&spec.name, &tasks, unix_now())
                .await?;
            let n = tasks
                .iter()
                .map(|t| t.array_index)
                .max()
                .map_or(0, |i| i + 1);
            self.progress.line(&format!(
                "submitted job array {} ({n} task(s){})",
                tasks[0].job_id,
                if tasks.len() as i64 > n {
                    format!(", {} cells in packs", tasks.len())
                } else {
                    String::new()
                }
            ));
            changed = true;
        }
        Ok(changed)
    }

    async fn fail_unclaimed(&mut self, r: &CellRow, unclaimed: i64) -> Result<(), SchedError> {
        let why = format!(
            "{unclaimed} SLURM task(s) ended without starting the cell (could the \
             worker reach the store?); see slurm-*.out under {}",
            self.opts
                .state_dir
                .join("slurm")
                .join(&self.spec.name)
                .display()
        );
        self.store
            .finish_cell(&self.spec.name, &r.id, &Outcome::Failed(why.clone()))
            .await?;
        self.progress
            .line(&format!("cell {}: failed: {why}", self.label(&r.id)));
        self.summary.failed += 1;
        // Said and counted here: the next report must not say it again.
        self.last.insert(r.id.clone(), (CellState::Failed, r.rung));
        self.progress.cell_finished();
        Ok(())
    }

    /// Groups the queued cells into one pack per task, as the local backend does for a worker;
    /// a retried cell (one attempt used) goes into a pack half as large.
    fn packs(&self, mut queue: VecDeque<CellRow>) -> Vec<TaskCells> {
        let gpu = self.opts.gpu_requested();
        let mut packing = Packing::new(
            &queue,
            &self.current,
            self.opts.cells_per_worker,
            self.opts.parallel_gpus(),
        );
        let (on_gpu, on_cpu) = packing.largest();
        let size = if gpu { on_gpu } else { on_cpu };
        if size > 1 {
            for r in queue.iter().filter(|r| r.attempts > 0) {
                packing.limit(&r.id, size.div_ceil(2));
            }
        }
        let mut packs = Vec::new();
        while !queue.is_empty() {
            let pack: TaskCells = packing
                .take(&mut queue, gpu)
                .into_iter()
                .filter_map(|r| Some((r.id.clone(), self.current.get(&r.id)?.clone())))
                .collect();
            if !pack.is_empty() {
                packs.push(pack);
            }
        }
        packs
    }

    /// Says what changed since the last poll; returns whether anything did and how many cells
    /// are left (pending or running).
    async fn report(&mut self) -> Result<(bool, usize), SchedError> {
        let rows_now = self.store.cells(&self.spec.name).await?;
        let (mut changed, mut left) = (false, 0);
        for r in &rows_now {
            if !self.current.contains_key(&r.id) {
                continue;
            }
            if matches!(r.state, CellState::Pending | CellState::Running) && !r.pruned {
                left += 1;
            }
            let now = (r.state, r.rung);
            if self.last.insert(r.id.clone(), now) == Some(now) {
                continue;
            }
            changed = true;
            self.say_state(r);
        }
        Ok((changed, left))
    }

    /// Whether `r` is a halving cell paused at the end of a rung before the last (`done` in
    /// the store until the promotion prunes or promotes it), not one that finished.
    fn paused_at_rung(&self, r: &CellRow) -> bool {
        let last = halving::of(self.spec).map(|s| s.rung_count() as i64 - 1);
        matches!((r.rung, last), (Some(rung), Some(last)) if rung < last)
    }

    fn say_state(&mut self, r: &CellRow) {
        let label = self.label(&r.id);
        let line = match r.state {
            CellState::Running => format!(
                "cell {label}: running on {} (attempt {})",
                r.device.as_deref().unwrap_or("?"),
                r.attempts
            ),
            CellState::Done if r.pruned || self.paused_at_rung(r) => {
                self.summary.paused += 1;
                format!(
                    "cell {label}: {} at step {}  {}={:.4}",
                    if r.pruned {
                        "pruned by successive halving"
                    } else {
                        "paused"
                    },
                    r.step.unwrap_or(0),
                    self.spec.task.metric.name(),
                    r.metric.unwrap_or(f64::NAN),
                )
            }
            CellState::Done => {
                self.summary.done += 1;
                format!(
                    "cell {label}: done  {}={:.4}  ({:.1} s{})",
                    self.spec.task.metric.name(),
                    r.metric.unwrap_or(f64::NAN),
                    r.wall_s.unwrap_or(f64::NAN),
                    match r.pack_size {
                        Some(k) if k > 1 => format!(" in a pack of {k}"),
                        _ => String::new(),
                    }
                )
            }
            CellState::Diverged => {
                self.summary.diverged += 1;
                format!("cell {label}: diverged")
            }
            CellState::Failed => {
                self.summary.failed += 1;
                format!("cell {label}: failed: {}", r.error.as_deref().unwrap_or(""))
            }
            CellState::Pending => return,
        };
        if r.state != CellState::Running {
            self.progress.cell_finished();
        }
        self.progress.line(&line);
    }
}
