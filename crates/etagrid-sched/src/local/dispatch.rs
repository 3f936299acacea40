//! The local dispatcher: fills the slots from the queue, and handles in one `select!` loop the
//! workers' lines and exits, timers, memory samples and stop signals.

use super::probe::GpuFit;
use super::worker::{self, spawn_worker, Running, WorkerSpec};
use super::RunOptions;
use crate::devices::SlotDevice;
use crate::events::{Action, Member, Pack, Recorder};
use crate::halving;
use crate::job::WorkerMsg;
use crate::memfit::{gpu_memory, MemoryFit};
use crate::packing::Packing;
use crate::progress::Progress;
use crate::prologue::{cell_label, Prologue, Start};
use crate::sys::StopSignals;
use crate::{RunSummary, SchedError};
use etagrid_spec::protocol::WorkerEvent;
use etagrid_spec::{CellConfig, PackSize, SweepSpec};
use etagrid_store::{CellRow, CellState, Outcome, Store};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

pub(super) async fn run_async(
    spec: &SweepSpec,
    opts: &RunOptions,
) -> Result<RunSummary, SchedError> {
    let prologue = Prologue::open(spec, &opts.store, opts.retry_failed).await?;
    halving::init(&prologue.store, spec).await?;
    let mut rows = prologue.store.cells(&spec.name).await?;
    let (mut queue, mut summary) = queue_of(spec, &prologue, &rows);
    let wanted: HashSet<String> = prologue.cells.iter().map(|c| c.id.0.clone()).collect();
    if queue.is_empty() && halving::of(spec).is_some() {
        // Stopped between rungs: the promotion that was due is made now.
        for line in halving::advance(&prologue.store, spec, &wanted_set(&wanted)).await? {
            eprintln!("{line}");
        }
        rows = prologue.store.cells(&spec.name).await?;
        (queue, summary) = queue_of(spec, &prologue, &rows);
    }
    say_start(spec, opts, &prologue, &summary, queue.len());
    if prologue.say_skipped(spec, &summary, queue.len()) {
        prologue.store.close().await;
        return Ok(summary);
    }
    // The current spec's configurations (same id, so the same training settings), not the
    // stored JSON: their resolved paths are those of the run that first stored them.
    let current: HashMap<String, CellConfig> = prologue
        .cells
        .iter()
        .map(|c| (c.id.0.clone(), c.config.clone()))
        .collect();
    let gpus: HashSet<&SlotDevice> = opts.slots.iter().filter(|s| s.is_gpu()).collect();
    let packing = Packing::new(
        &queue,
        &current,
        opts.cells_per_worker,
        Some(gpus.len().max(1)),
    );
    let started = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut d = Dispatcher {
        spec,
        opts,
        store: &prologue.store,
        progress: Progress::new(queue.len() as u64, opts.slots.len(), opts.progress),
        current,
        queue,
        packing,
        slots: (0..opts.slots.len()).map(|_| None).collect(),
        fit: GpuFit::new(&opts.slots, None, None),
        summary,
        stopping: 0,
        tx,
        wanted,
        pack_fits: HashMap::new(),
    };
    d.measure_packs().await;
    say_packing(opts, &d.packing);
    d.start_probes().await;
    d.event_loop(rx).await?;
    d.progress.finish();
    let mut summary = d.summary;
    summary.stopped_by_signal = d.stopping > 0;
    let how = if d.stopping > 0 {
        "stopped"
    } else {
        "finished"
    };
    prologue.finish(spec, how, started).await?;
    Ok(summary)
}

/// The cells to run, in grid order, and the summary's counts of those skipped.
fn queue_of(spec: &SweepSpec, p: &Prologue, rows: &[CellRow]) -> (VecDeque<CellRow>, RunSummary) {
    let mut summary = RunSummary {
        total: p.cells.len(),
        ..Default::default()
    };
    // Only this sweep file's cells run; rows of an older version of the grid stay in the store.
    let wanted: HashSet<&str> = p.cells.iter().map(|c| c.id.0.as_str()).collect();
    let queue = rows
        .iter()
        .filter(|r| wanted.contains(r.id.as_str()))
        .filter(|r| {
            // Still running after recover_running: leased by a SLURM task, which finishes it.
            if r.state == CellState::Running {
                summary.leased += 1;
                summary.skipped += 1;
                return false;
            }
            match Start::of(r, i64::from(spec.max_attempts)) {
                Start::Skipped => summary.skipped += 1,
                Start::Exhausted => summary.exhausted += 1,
                Start::ToRun => return true,
            }
            false
        })
        .cloned()
        .collect();
    (queue, summary)
}

fn say_start(
    spec: &SweepSpec,
    opts: &RunOptions,
    p: &Prologue,
    summary: &RunSummary,
    to_run: usize,
) {
    eprintln!(
        "sweep {}: {} cells ({} new, {} already in the store{}), {} to run on {} slot(s): {}",
        spec.name,
        p.cells.len(),
        p.enqueued.added,
        p.enqueued.existing,
        if p.recovered > 0 {
            format!(
                ", {} left running by an earlier run returned to pending",
                p.recovered
            )
        } else {
            String::new()
        },
        to_run,
        opts.slots.len(),
        opts.slots
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if summary.leased > 0 {
        eprintln!(
            "{} cell(s) are held by SLURM tasks and are left to them: `etagrid status {}` shows \
             them; `etagrid run --backend slurm` watches them and takes back those whose task died",
            summary.leased, spec.name
        );
    }
}

fn say_packing(opts: &RunOptions, packing: &Packing) {
    let has_gpu = opts.slots.iter().any(SlotDevice::is_gpu);
    let has_cpu = opts.slots.contains(&SlotDevice::Cpu);
    let (gpu_pack, cpu_pack) = packing.largest();
    let mut parts = Vec::new();
    if has_gpu && gpu_pack > 1 {
        parts.push(format!("up to {gpu_pack} cells per worker on a GPU"));
    }
    if has_cpu && cpu_pack > 1 {
        parts.push(format!("up to {cpu_pack} cells per worker on the CPU"));
    }
    if !parts.is_empty() {
        eprintln!(
            "cells_per_worker = {}: {}, each pack on one frozen base",
            opts.cells_per_worker,
            parts.join(", ")
        );
    }
}

/// The dispatcher's state: what its event loop's handlers share.
struct Dispatcher<'a> {
    spec: &'a SweepSpec,
    opts: &'a RunOptions,
    store: &'a Store,
    progress: Progress,
    current: HashMap<String, CellConfig>,
    queue: VecDeque<CellRow>,
    packing: Packing,
    slots: Vec<Option<Running>>,
    fit: GpuFit,
    summary: RunSummary,
    /// How many stop signals came (1: stopping gracefully; 2: killing).
    stopping: u8,
    tx: mpsc::UnboundedSender<WorkerMsg>,
    /// The ids of this sweep file's cells.
    wanted: HashSet<String>,
    /// Pack key → the most cells a GPU pack of it may take, from its memory probe (`auto`).
    pack_fits: HashMap<String, usize>,
}

fn wanted_set(ids: &HashSet<String>) -> HashSet<&str> {
    ids.iter().map(String::as_str).collect()
}

impl Dispatcher<'_> {
    /// `cells_per_worker = "auto"` on a GPU: measures, once per pack key and run, the memory a
    /// pack of two of its cells takes on the first GPU (`worker --probe-memory`), and caps the
    /// key's GPU packs at what fits beside the other workers the GPU may hold. A probe that
    /// fails leaves packs of one cell, and says so.
    async fn measure_packs(&mut self) {
        let opts = self.opts;
        let Some(gpu) = opts.slots.iter().find(|s| s.is_gpu()) else {
            return;
        };
        if opts.cells_per_worker != PackSize::Auto {
            return;
        }
        // The workers that may share the GPU: one at first when its memory is measured.
        let workers = match opts.memory_fit {
            Some(_) => 1,
            None => opts.slots.iter().filter(|s| *s == gpu).count(),
        };
        let usable = opts
            .memory_fit
            .map_or(MemoryFit::default().usable_fraction, |f| f.usable_fraction);
        for (key, size, ids) in self.packing.gpu_packs(&self.queue, 2) {
            if let Some(&fit) = self.pack_fits.get(&key) {
                self.packing.cap_gpu(&key, fit);
                continue;
            }
            let cells: Vec<(String, CellConfig)> = ids
                .iter()
                .filter_map(|id| Some((id.clone(), self.current.get(id)?.clone())))
                .collect();
            self.progress.line(&format!(
                "{gpu}: measuring the memory of a pack of {} cell(s) (cells_per_worker = \"auto\")",
                cells.len()
            ));
            let probe = worker::probe_memory(self.spec, opts, &cells, gpu).await;
            let fit = probe
                .as_ref()
                .map_or(1, |p| p.cells_that_fit(usable, workers));
            self.pack_fits.insert(key.clone(), fit);
            self.packing.cap_gpu(&key, fit);
            let line = match probe {
                Ok(p) => format!(
                    "{gpu}: {} MiB in use before it, {} MiB for the base, {} MiB per cell, of {} \
                     MiB → {} cell(s) fit{} → packs of {} ({size} cells to run per GPU)",
                    p.before_mib,
                    p.base_mib(),
                    p.per_cell_mib(),
                    p.total_mib,
                    fit,
                    if workers > 1 {
                        format!(" per worker ({workers} on the GPU)")
                    } else {
                        String::new()
                    },
                    self.packing.gpu_size(&key),
                ),
                Err(why) => format!(
                    "{gpu}: the memory probe of a pack failed: {why}; packs of one cell (set \
                     [resources] cells_per_worker to pack anyway)"
                ),
            };
            self.progress.line(&line);
        }
    }

    /// Measures each GPU's first worker when the sweep leaves `cells_per_device` unset.
    async fn start_probes(&mut self) {
        let opts = self.opts;
        let memory = match &opts.memory_fit {
            Some(_) if opts.slots.iter().any(SlotDevice::is_gpu) => gpu_memory().await,
            _ => None,
        };
        self.fit = GpuFit::new(&opts.slots, opts.memory_fit.as_ref(), memory.as_deref());
        if opts.memory_fit.is_some() && self.fit.probing() {
            self.progress.line(
                "cells_per_device not set: the first worker on each GPU runs alone to measure its memory",
            );
        } else if opts.memory_fit.is_some()
            && memory.is_none()
            && opts.slots.iter().any(SlotDevice::is_gpu)
        {
            self.progress.line(
                "cells_per_device not set and nvidia-smi gives no memory figures: one worker per GPU",
            );
        }
    }

    async fn event_loop(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<WorkerMsg>,
    ) -> Result<(), SchedError> {
        let mut signals = StopSignals::new(false).map_err(SchedError::Runtime)?;
        let mut mem_tick = tokio::time::interval(Duration::from_millis(500));
        mem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.fill_slots().await?;
            if self.slots.iter().all(Option::is_none) && !self.next_rung().await? {
                return Ok(());
            }
            if self.slots.iter().all(Option::is_none) {
                continue;
            }
            let next_timer = self.next_timer();
            let timer = async move {
                match next_timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let probing = self.fit.probing() && self.stopping == 0;
            tokio::select! {
                _ = mem_tick.tick(), if probing => self.on_memory_tick().await,
                _ = timer => self.on_timer(),
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_msg(msg).await?,
                    None => return Ok(()),
                },
                _ = signals.recv() => self.stop(),
            }
        }
    }

    /// Successive halving, when every worker has ended and the queue is empty: makes the
    /// promotions that are due and queues the promoted cells (in new packs). False when there
    /// is nothing more to run (a grid sweep, a stop, the last rung done).
    async fn next_rung(&mut self) -> Result<bool, SchedError> {
        if self.stopping > 0 || !self.queue.is_empty() || halving::of(self.spec).is_none() {
            return Ok(false);
        }
        let wanted = wanted_set(&self.wanted);
        for line in halving::advance(self.store, self.spec, &wanted).await? {
            self.progress.line(&line);
        }
        let rows = self.store.cells(&self.spec.name).await?;
        self.queue = rows
            .into_iter()
            .filter(|r| wanted.contains(r.id.as_str()) && !r.pruned)
            .filter(|r| r.state == CellState::Pending)
            .collect();
        if self.queue.is_empty() {
            return Ok(false);
        }
        self.progress.add_cells(self.queue.len() as u64);
        let gpus: HashSet<&SlotDevice> = self.opts.slots.iter().filter(|s| s.is_gpu()).collect();
        self.packing = Packing::new(
            &self.queue,
            &self.current,
            self.opts.cells_per_worker,
            Some(gpus.len().max(1)),
        );
        self.measure_packs().await;
        Ok(true)
    }

    /// Starts workers on the open, idle slots while cells are queued.
    async fn fill_slots(&mut self) -> Result<(), SchedError> {
        if self.stopping > 0 {
            return Ok(());
        }
        for i in 0..self.slots.len() {
            if !self.fit.open[i] {
                continue;
            }
            // A slot whose worker could not start takes the next cell at once: the loop must
            // not end with cells still queued.
            while self.slots[i].is_none() && !self.queue.is_empty() {
                let device = &self.opts.slots[i];
                let pack = self.packing.take(&mut self.queue, device.is_gpu());
                self.slots[i] = self.start_pack(pack, i).await?;
            }
        }
        Ok(())
    }

    /// The next timer: a worker's timeout or a SIGKILL after the grace period.
    fn next_timer(&self) -> Option<TokioInstant> {
        self.slots
            .iter()
            .flatten()
            .flat_map(|r| [if r.timed_out { None } else { r.deadline }, r.kill_at])
            .flatten()
            .min()
    }

    async fn on_memory_tick(&mut self) {
        let Some(now) = gpu_memory().await else {
            return;
        };
        let (slots, devices) = (&self.slots, &self.opts.slots);
        let busy = |g: u32| {
            slots
                .iter()
                .zip(devices)
                .any(|(r, d)| r.is_some() && *d == SlotDevice::Gpu(g))
        };
        for g in self.fit.sample(&now, busy) {
            self.open_fitted(g, true);
        }
    }

    fn open_fitted(&mut self, g: u32, training_only: bool) {
        let Some(fit) = &self.opts.memory_fit else {
            return;
        };
        if let Some(line) = self
            .fit
            .open_fitted(g, fit, &self.opts.slots, training_only)
        {
            self.progress.line(&line);
        }
    }

    fn on_timer(&mut self) {
        let now = TokioInstant::now();
        for run in self.slots.iter_mut().flatten() {
            if run.kill_at.is_some_and(|k| k <= now) {
                run.kill();
                run.kill_at = None;
            } else if !run.timed_out && run.deadline.is_some_and(|d| d <= now) {
                run.timed_out = true;
                self.progress.line(&format!(
                    "{}: timed out after {}",
                    run.pack.label,
                    worker::timeout(self.spec, run.pack.members.len())
                ));
                run.terminate(self.opts.grace);
            }
        }
    }

    async fn on_msg(&mut self, msg: WorkerMsg) -> Result<(), SchedError> {
        match msg {
            WorkerMsg::Event(i, ev) => {
                let Some(run) = self.slots[i].as_mut() else {
                    return Ok(());
                };
                if let (SlotDevice::Gpu(g), WorkerEvent::Train { .. }) =
                    (&self.opts.slots[i], &ev.event)
                {
                    self.fit.training(*g);
                }
                let actions = run.pack.on_event(ev);
                self.apply(&actions, i).await
            }
            WorkerMsg::Exited(i, status) => {
                let Some(mut run) = self.slots[i].take() else {
                    return Ok(());
                };
                let exit = run.exit(&status, self.spec);
                let actions = run
                    .pack
                    .on_exit(&exit, self.stopping > 0, self.spec.max_attempts);
                self.requeue(&run, &actions);
                self.apply(&actions, i).await?;
                // Only a worker that ran to the end gives its whole peak (a diverged one may
                // stop early).
                if let (SlotDevice::Gpu(g), true) = (&self.opts.slots[i], run.pack.any_done()) {
                    if self.fit.sampled(*g) {
                        self.open_fitted(*g, false);
                    }
                }
                self.progress.slot(i, "idle".into());
                Ok(())
            }
        }
    }

    /// Queues again the cells of an exited worker that are retried, in packs half as large.
    fn requeue(&mut self, run: &Running, actions: &[Action]) {
        for a in actions {
            if let Action::Finish {
                id,
                attempt,
                outcome: Outcome::Retry(_),
                ..
            } = a
            {
                if let Some(row) = run.rows.iter().find(|r| &r.id == id) {
                    self.queue.push_back(CellRow {
                        attempts: *attempt,
                        ..row.clone()
                    });
                }
                if let Some(l) = run.pack.retry_limit() {
                    self.packing.limit(id, l);
                }
            }
        }
    }

    /// Applies a worker's actions through the shared [`Recorder`], and says and counts them.
    async fn apply(&mut self, actions: &[Action], slot: usize) -> Result<(), SchedError> {
        let (store, spec) = (self.store, self.spec);
        let recorder = Recorder {
            store,
            sweep: &spec.name,
            lease_owner: None,
        };
        for a in actions {
            recorder.apply(a).await?;
            match a {
                Action::Status(line) => self.progress.slot(slot, line.clone()),
                Action::Finish {
                    label,
                    attempt,
                    outcome,
                    ..
                } => self.count(label, outcome, *attempt),
                Action::Record { .. } => {}
            }
        }
        Ok(())
    }

    /// Counts a cell's end and says it.
    fn count(&mut self, label: &str, outcome: &Outcome, attempt: i64) {
        let (spec, summary) = (self.spec, &mut self.summary);
        let (word, counter) = match outcome {
            Outcome::Done(r) => (
                format!(
                    "done  {}={:.4}  ({:.1} s{})",
                    spec.task.metric.name(),
                    r.metric,
                    r.wall_s,
                    match r.pack_size {
                        Some(k) if k > 1 => format!(" in a pack of {k}"),
                        _ => String::new(),
                    }
                ),
                &mut summary.done,
            ),
            Outcome::Paused(r) => (
                format!(
                    "paused at step {}  {}={:.4}",
                    r.steps,
                    spec.task.metric.name(),
                    r.metric
                ),
                &mut summary.paused,
            ),
            Outcome::Diverged { step, .. } => {
                (format!("diverged at step {step}"), &mut summary.diverged)
            }
            Outcome::Failed(e) => (format!("failed: {e}"), &mut summary.failed),
            Outcome::InputError(e) => (
                format!("input error (no attempt used): {e}"),
                &mut summary.failed,
            ),
            Outcome::Interrupted => (
                "interrupted: back to pending".to_string(),
                &mut summary.interrupted,
            ),
            Outcome::Retry(e) => (
                format!(
                    "{e}; retrying (attempt {attempt} of {} used)",
                    spec.max_attempts
                ),
                &mut summary.retried,
            ),
        };
        *counter += 1;
        self.progress.line(&format!("cell {label}: {word}"));
        if !matches!(outcome, Outcome::Retry(_)) {
            self.progress.cell_finished();
        }
    }

    /// Marks the cells of `pack` running and starts their worker on slot `slot`. Cells a SLURM
    /// task claimed meanwhile are skipped; `None` when no cell is left to run or the worker
    /// could not start (its cells are then failed).
    async fn start_pack(
        &mut self,
        pack: Vec<CellRow>,
        slot: usize,
    ) -> Result<Option<Running>, SchedError> {
        let opts = self.opts;
        let device = &opts.slots[slot];
        let mut rows = Vec::new();
        for row in pack {
            let label = cell_label(&row.id, row.lr_a, row.lr_b);
            // A SLURM task of the same sweep may have claimed the cell since the queue was
            // read: then it is that task's, not ours.
            if self
                .store
                .start_cell(&self.spec.name, &row.id, &device.to_string())
                .await?
            {
                rows.push((row, label));
                continue;
            }
            self.progress.line(&format!(
                "cell {label}: taken by another worker (a SLURM task) meanwhile; skipped"
            ));
            self.summary.skipped += 1;
            self.progress.cell_finished();
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let members = rows
            .iter()
            .map(|(r, label)| Member::new(r.id.clone(), label.clone(), r.attempts + 1))
            .collect();
        let pack = Pack::new(members);
        let rows: Vec<CellRow> = rows.into_iter().map(|(r, _)| r).collect();
        // Every cell of a pack is on the same rung (a rung is decided only when none of its
        // cells is left to run).
        let segment = halving::of(self.spec)
            .map(|search| halving::segment(search, rows[0].rung.unwrap_or(0)));
        let spawned = self.configs(&rows).and_then(|cells| {
            let w = WorkerSpec {
                cells: &cells,
                device,
                slot,
                segment,
            };
            spawn_worker(self.spec, self.opts, &w, self.tx.clone())
        });
        match spawned {
            Ok((pid, log)) => {
                self.progress
                    .slot(slot, format!("{} on {device}: starting", pack.label));
                let n = rows.len() as u32;
                Ok(Some(Running {
                    pack,
                    rows,
                    pid,
                    log,
                    deadline: self.spec.cell_timeout.map(|t| TokioInstant::now() + t * n),
                    timed_out: false,
                    kill_at: None,
                }))
            }
            Err(e) => {
                let msg = format!("could not start the worker: {}", error_chain(&e));
                for m in &pack.members {
                    self.store
                        .finish_cell(&self.spec.name, &m.id, &Outcome::Failed(msg.clone()))
                        .await?;
                    self.count(&m.label, &Outcome::Failed(msg.clone()), m.attempt);
                }
                Ok(None)
            }
        }
    }

    /// The configurations of `rows`: the current spec's, else the stored one.
    fn configs(&self, rows: &[CellRow]) -> Result<Vec<(String, CellConfig)>, SchedError> {
        rows.iter()
            .map(|r| {
                let config = match self.current.get(&r.id) {
                    Some(c) => c.clone(),
                    None => serde_json::from_str(&r.config).map_err(|source| SchedError::Json {
                        what: "decode the stored configuration of cell",
                        path: r.id.clone().into(),
                        source,
                    })?,
                };
                Ok((r.id.clone(), config))
            })
            .collect()
    }

    /// First signal: SIGTERM to every worker's process group, no new cells, SIGKILL after the
    /// grace period. Second signal: SIGKILL at once.
    fn stop(&mut self) {
        self.stopping = self.stopping.saturating_add(1);
        if self.stopping == 1 {
            self.progress.line(&format!(
                "stopping: unfinished cells go back to pending; workers get {} s to exit (interrupt again to kill them now)",
                self.opts.grace.as_secs()
            ));
            for run in self.slots.iter_mut().flatten() {
                run.terminate(self.opts.grace);
            }
        } else {
            self.progress.line("killing the workers");
            for run in self.slots.iter().flatten() {
                run.kill();
            }
        }
    }
}

/// An error and its causes, "a: b: c".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}
