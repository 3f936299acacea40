use crate::devices::SlotDevice;
use crate::memfit::{cells_that_fit, gpu_memory, MemoryFit};
use crate::progress::Progress;
use etagrid_spec::protocol::{CellEvent, JobDevice, PackedCell, WorkerEvent, WorkerJob};
use etagrid_spec::{PackSize, SweepSpec};
use etagrid_store::{CellRow, CellState, Outcome, Store, StoreError, StoreUrl};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("results store")]
    Store(#[from] StoreError),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another `etagrid run` holds {} (it is using this store); wait for it or stop it first", path.display())]
    Locked { path: PathBuf },
    #[error("another `etagrid run` is running sweep {sweep} with the store {store}; wait for it or stop it first")]
    SweepLocked { sweep: String, store: String },
    #[error("start the tokio runtime")]
    Runtime(#[source] std::io::Error),
    /// A SLURM command failed for good (a bad partition, impossible resources, no controller).
    #[error("SLURM: {0}")]
    Slurm(String),
}

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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub total: usize,
    /// Cells already done or diverged before this run: skipped.
    pub skipped: usize,
    pub done: usize,
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

/// Expands and enqueues the sweep, then runs every cell that is not done yet, `slots.len()` at a
/// time, until all are finished or a signal stops the run.
pub fn run(spec: &SweepSpec, opts: &RunOptions) -> Result<RunSummary, SchedError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(SchedError::Runtime)?;
    rt.block_on(run_async(spec, opts))
}

/// One cell of a running worker's pack.
struct Member {
    row: CellRow,
    label: String,
    /// This start's attempt number (1-based).
    attempt: i64,
    /// Its terminal event arrived and its end is in the store: a crash of the worker after
    /// that does not touch it.
    ended: bool,
    /// It ended `done`.
    done: bool,
}

/// A running worker and the cells (one, or a pack) it trains.
struct Running {
    members: Vec<Member>,
    /// For the progress line: the first cell, or "K cells".
    label: String,
    pid: i32,
    /// A `failed` line naming no cell: the whole job failed (bad data, a missing tensor).
    job_failed: Option<String>,
    log: PathBuf,
    /// When the worker's `cell_timeout` runs out (the timeout times the pack's size).
    deadline: Option<TokioInstant>,
    timed_out: bool,
    /// After SIGTERM: when to send SIGKILL.
    kill_at: Option<TokioInstant>,
}

impl Running {
    fn member(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.row.id == id)
    }
}

/// A GPU whose first cell is running alone while its memory use is sampled.
struct Probe {
    /// Memory in use before the first cell started (other processes).
    baseline_mib: u64,
    peak_mib: u64,
    total_mib: u64,
    /// Samples taken while a cell was running on the GPU.
    samples: u32,
    /// Samples taken after the worker reported its first training steps: its memory has
    /// reached its training peak by then, so two of them end the probe without waiting for the
    /// worker to finish.
    samples_training: u32,
    /// The worker reported training steps.
    training: bool,
}

/// Which slots may take cells now, and the GPUs still being measured.
fn initial_fit(
    slots: &[SlotDevice],
    fit: Option<&MemoryFit>,
    memory: Option<&[crate::memfit::GpuMemory]>,
) -> (Vec<bool>, std::collections::HashMap<u32, Probe>) {
    let mut probes = std::collections::HashMap::new();
    let Some(_) = fit else {
        return (vec![true; slots.len()], probes);
    };
    let mut seen = std::collections::HashSet::new();
    let open = slots
        .iter()
        .map(|s| match s {
            SlotDevice::Cpu => true,
            SlotDevice::Gpu(g) => {
                if let Some(m) = memory.and_then(|m| m.iter().find(|m| m.index == *g)) {
                    probes.entry(*g).or_insert(Probe {
                        baseline_mib: m.used_mib,
                        peak_mib: m.used_mib,
                        total_mib: m.total_mib,
                        samples: 0,
                        samples_training: 0,
                        training: false,
                    });
                }
                seen.insert(*g)
            }
        })
        .collect();
    (open, probes)
}

enum Msg {
    Event(usize, CellEvent),
    Exited(usize, std::io::Result<ExitStatus>),
}

/// How many cells each worker takes, per pack key: `auto` gives each GPU one worker with its
/// share of a key's pending cells, at most [`PackSize::AUTO_MAX`] (a GPU step of a small model
/// costs about the same for 1 cell as for 36: one worker per GPU beats several, which the GPU
/// time-slices); on the CPU one cell per worker. causal_lm cells are never packed.
fn pack_sizes(
    queue: &VecDeque<CellRow>,
    keys: &HashMap<String, String>,
    packable: &HashMap<String, bool>,
    size: PackSize,
    slots: &[SlotDevice],
) -> HashMap<String, (usize, usize)> {
    let gpus: std::collections::HashSet<u32> = slots
        .iter()
        .filter_map(|s| match s {
            SlotDevice::Gpu(g) => Some(*g),
            SlotDevice::Cpu => None,
        })
        .collect();
    let mut pending: HashMap<String, usize> = HashMap::new();
    for r in queue {
        if let Some(k) = keys.get(&r.id) {
            *pending.entry(k.clone()).or_default() += 1;
        }
    }
    pending
        .into_iter()
        .map(|(key, n)| {
            let ok = packable.get(&key).copied().unwrap_or(false);
            // (on a GPU, on the CPU)
            let sizes = match size {
                _ if !ok => (1, 1),
                PackSize::Fixed(k) => (k, k),
                PackSize::Auto => (
                    n.div_ceil(gpus.len().max(1)).clamp(1, PackSize::AUTO_MAX),
                    1,
                ),
            };
            (key, sizes)
        })
        .collect()
}

/// Takes the next pack off `queue` for a worker on `device`: the first cell and up to `size − 1`
/// more cells with the same pack key, in queue order. `limit` caps the pack of a cell that was
/// retried after its pack crashed (half that pack).
fn take_pack(
    queue: &mut VecDeque<CellRow>,
    keys: &HashMap<String, String>,
    sizes: &HashMap<String, (usize, usize)>,
    limit: &HashMap<String, usize>,
    device: SlotDevice,
) -> Vec<CellRow> {
    let Some(first) = queue.pop_front() else {
        return Vec::new();
    };
    let key = keys.get(&first.id).cloned().unwrap_or_default();
    let (gpu, cpu) = sizes.get(&key).copied().unwrap_or((1, 1));
    let mut size = match device {
        SlotDevice::Gpu(_) => gpu,
        SlotDevice::Cpu => cpu,
    };
    if let Some(&l) = limit.get(&first.id) {
        size = size.min(l);
    }
    let mut pack = vec![first];
    let mut i = 0;
    while pack.len() < size && i < queue.len() {
        let same = keys.get(&queue[i].id) == Some(&key);
        let fits = limit.get(&queue[i].id).is_none_or(|&l| l > pack.len());
        if same && fits {
            if let Some(r) = queue.remove(i) {
                pack.push(r);
            }
        } else {
            i += 1;
        }
    }
    pack
}

async fn run_async(spec: &SweepSpec, opts: &RunOptions) -> Result<RunSummary, SchedError> {
    let store = Store::open(&opts.store).await?;
    // The run lock goes with the store (whatever the state dir; on PostgreSQL across machines).
    let sweep_lock = store.try_lock_sweep(&spec.name).await?;
    let _sweep_lock = sweep_lock.ok_or_else(|| SchedError::SweepLocked {
        sweep: spec.name.clone(),
        store: opts.store.to_string(),
    })?;
    let cells = spec.cells();
    let enq = store.enqueue(spec, &cells).await?;
    let recovered = store.recover_running(&spec.name).await?;
    if opts.retry_failed {
        store.reset_failed(&spec.name).await?;
    }
    let rows = store.cells(&spec.name).await?;
    let mut summary = RunSummary {
        total: rows.len(),
        ..Default::default()
    };
    // Only this sweep file's cells run; rows of an older version of the grid stay in the store.
    let wanted: std::collections::HashSet<&str> = cells.iter().map(|c| c.id.0.as_str()).collect();
    let current: std::collections::HashMap<&str, &etagrid_spec::CellConfig> =
        cells.iter().map(|c| (c.id.0.as_str(), &c.config)).collect();
    let mut queue: VecDeque<_> = rows
        .iter()
        .filter(|r| wanted.contains(r.id.as_str()))
        .filter(|r| {
            // Still running after recover_running: leased by a SLURM task, which finishes it.
            let leased = r.state == CellState::Running;
            summary.leased += usize::from(leased);
            let skip = r.state.is_final() || leased;
            summary.skipped += usize::from(skip);
            let exhausted =
                r.state == CellState::Failed && r.attempts >= i64::from(spec.max_attempts);
            summary.exhausted += usize::from(exhausted);
            !skip && !exhausted
        })
        .cloned()
        .collect();
    summary.total = cells.len();
    eprintln!(
        "sweep {}: {} cells ({} new, {} already in the store{}), {} to run on {} slot(s): {}",
        spec.name,
        cells.len(),
        enq.added,
        enq.existing,
        if recovered > 0 {
            format!(", {recovered} left running by an earlier run returned to pending")
        } else {
            String::new()
        },
        queue.len(),
        opts.slots.len(),
        opts.slots
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if summary.exhausted > 0 {
        eprintln!(
            "{} failed cell(s) used up their {} attempts and are skipped: `etagrid status {}` shows why; \
             `--retry-failed` runs them again",
            summary.exhausted, spec.max_attempts, spec.name
        );
    }
    if summary.leased > 0 {
        eprintln!(
            "{} cell(s) are held by SLURM tasks and are left to them: `etagrid status {}` shows \
             them; `etagrid run --backend slurm` watches them and takes back those whose task died",
            summary.leased, spec.name
        );
    }
    if queue.is_empty() {
        if summary.exhausted == 0 && summary.leased == 0 {
            eprintln!("all {} cells are done: nothing to train", cells.len());
        }
        store.close().await;
        return Ok(summary);
    }

    // Which cells can share a worker: the pack key of each queued cell.
    let keys: HashMap<String, String> = queue
        .iter()
        .filter_map(|r| {
            current
                .get(r.id.as_str())
                .map(|c| (r.id.clone(), c.pack_key()))
        })
        .collect();
    let packable: HashMap<String, bool> = queue
        .iter()
        .filter_map(|r| {
            let c = current.get(r.id.as_str())?;
            Some((keys.get(&r.id)?.clone(), c.task.lm.is_none()))
        })
        .collect();
    let sizes = pack_sizes(&queue, &keys, &packable, opts.cells_per_worker, &opts.slots);
    let mut limit: HashMap<String, usize> = HashMap::new();
    {
        let has_gpu = opts.slots.iter().any(|s| matches!(s, SlotDevice::Gpu(_)));
        let has_cpu = opts.slots.contains(&SlotDevice::Cpu);
        let gpu_pack = sizes.values().map(|s| s.0).max().unwrap_or(1);
        let cpu_pack = sizes.values().map(|s| s.1).max().unwrap_or(1);
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

    let progress = Progress::new(queue.len() as u64, opts.slots.len(), opts.progress);
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut slots: Vec<Option<Running>> = (0..opts.slots.len()).map(|_| None).collect();
    let mut sigint = signal(SignalKind::interrupt()).map_err(SchedError::Runtime)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(SchedError::Runtime)?;
    let mut stopping = 0u8;
    let started = Instant::now();
    let memory = match &opts.memory_fit {
        Some(_) if opts.slots.iter().any(|s| matches!(s, SlotDevice::Gpu(_))) => gpu_memory().await,
        _ => None,
    };
    let (mut open, mut probes) =
        initial_fit(&opts.slots, opts.memory_fit.as_ref(), memory.as_deref());
    if opts.memory_fit.is_some() && !probes.is_empty() {
        progress.line(
            "cells_per_device not set: the first worker on each GPU runs alone to measure its memory",
        );
    } else if opts.memory_fit.is_some()
        && memory.is_none()
        && opts.slots.iter().any(|s| matches!(s, SlotDevice::Gpu(_)))
    {
        progress.line(
            "cells_per_device not set and nvidia-smi gives no memory figures: one worker per GPU",
        );
    }
    let mut mem_tick = tokio::time::interval(Duration::from_millis(500));
    mem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctx = Ctx {
        spec,
        opts,
        store: &store,
        progress: &progress,
    };

    loop {
        if stopping == 0 {
            for (i, slot) in slots.iter_mut().enumerate() {
                if !open[i] {
                    continue;
                }
                // A slot whose worker could not start takes the next cell at once: the loop
                // must not end with cells still queued.
                while slot.is_none() && !queue.is_empty() {
                    let device = opts.slots[i];
                    let pack = take_pack(&mut queue, &keys, &sizes, &limit, device);
                    *slot = ctx
                        .start_pack(pack, device, i, &current, &tx, &mut summary)
                        .await?;
                }
            }
        }
        if slots.iter().all(Option::is_none) {
            break;
        }
        // The next timer: a worker's timeout or a SIGKILL after the grace period.
        let next_timer = slots
            .iter()
            .flatten()
            .flat_map(|r| [if r.timed_out { None } else { r.deadline }, r.kill_at])
            .flatten()
            .min();
        let timer = async move {
            match next_timer {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let probing = !probes.is_empty() && stopping == 0;
        tokio::select! {
            _ = mem_tick.tick(), if probing => {
                if let Some(now) = gpu_memory().await {
                    for m in now {
                        let busy = slots.iter().zip(&opts.slots).any(|(r, d)| r.is_some() && *d == SlotDevice::Gpu(m.index));
                        if let (Some(p), true) = (probes.get_mut(&m.index), busy) {
                            p.peak_mib = p.peak_mib.max(m.used_mib);
                            p.samples += 1;
                            p.samples_training += u32::from(p.training);
                        }
                    }
                }
                let measured: Vec<u32> = probes
                    .iter()
                    .filter(|(_, p)| p.samples_training >= 2)
                    .map(|(g, _)| *g)
                    .collect();
                for g in measured {
                    ctx.open_fitted(g, &mut probes, &mut open, true);
                }
            }
            _ = timer => {
                let now = TokioInstant::now();
                for run in slots.iter_mut().flatten() {
                    if run.kill_at.is_some_and(|k| k <= now) {
                        signal_group(run.pid, libc::SIGKILL);
                        run.kill_at = None;
                    } else if !run.timed_out && run.deadline.is_some_and(|d| d <= now) {
                        run.timed_out = true;
                        progress.line(&format!("{}: timed out after {}", run.label, humanize(spec.cell_timeout.map(|t| t * run.members.len() as u32))));
                        signal_group(run.pid, libc::SIGTERM);
                        run.kill_at.get_or_insert(now + opts.grace);
                    }
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    Msg::Event(i, ev) => {
                        let Some(run) = slots[i].as_mut() else { continue };
                        if let (SlotDevice::Gpu(g), WorkerEvent::Train { .. }) = (opts.slots[i], &ev.event) {
                            if let Some(p) = probes.get_mut(&g) {
                                p.training = true;
                            }
                        }
                        ctx.on_event(run, ev, i, &mut summary).await?;
                    }
                    Msg::Exited(i, status) => {
                        let Some(run) = slots[i].take() else { continue };
                        let any_done = ctx.on_exit(run, status, stopping > 0, &mut queue, &mut limit, &mut summary).await?;
                        // Only a worker that ran to the end gives its whole peak (a diverged one
                        // may stop early).
                        if let (SlotDevice::Gpu(g), true) = (opts.slots[i], any_done) {
                            if probes.get(&g).is_some_and(|p| p.samples > 0) {
                                ctx.open_fitted(g, &mut probes, &mut open, false);
                            }
                        }
                        progress.slot(i, "idle".into());
                    }
                }
            }
            _ = sigint.recv() => stop(&mut stopping, &mut slots, &progress, opts.grace),
            _ = sigterm.recv() => stop(&mut stopping, &mut slots, &progress, opts.grace),
        }
    }
    progress.finish();
    summary.stopped_by_signal = stopping > 0;
    eprintln!(
        "sweep {}: {} in {:.1} s — {}",
        spec.name,
        if stopping > 0 { "stopped" } else { "finished" },
        started.elapsed().as_secs_f64(),
        counts_line(&store, &spec.name).await?
    );
    store.close().await;
    Ok(summary)
}

/// "3 done, 1 failed": the sweep's cells by state, for the line that ends a run.
pub(crate) async fn counts_line(store: &Store, sweep: &str) -> Result<String, SchedError> {
    let counts = store.counts(sweep).await?;
    Ok(CellState::ALL
        .iter()
        .filter_map(|s| counts.get(s).map(|n| format!("{n} {}", s.as_str())))
        .collect::<Vec<_>>()
        .join(", "))
}

/// What the event loop's handlers share.
struct Ctx<'a> {
    spec: &'a SweepSpec,
    opts: &'a RunOptions,
    store: &'a Store,
    progress: &'a Progress,
}

impl Ctx<'_> {
    /// Marks the cells of `pack` running and starts their worker on slot `slot`. Cells a SLURM
    /// task claimed meanwhile are skipped; `None` when no cell is left to run or the worker
    /// could not start (its cells are then failed).
    async fn start_pack(
        &self,
        pack: Vec<CellRow>,
        device: SlotDevice,
        slot: usize,
        current: &HashMap<&str, &etagrid_spec::CellConfig>,
        tx: &mpsc::UnboundedSender<Msg>,
        summary: &mut RunSummary,
    ) -> Result<Option<Running>, SchedError> {
        let (spec, progress) = (self.spec, self.progress);
        let mut members = Vec::new();
        for row in pack {
            let label = format!("{} η_A={:.2e} η_B={:.2e}", row.id, row.lr_a, row.lr_b);
            // A SLURM task of the same sweep may have claimed the cell since the queue was
            // read: then it is that task's, not ours.
            if !self
                .store
                .start_cell(&spec.name, &row.id, &device.to_string())
                .await?
            {
                progress.line(&format!(
                    "cell {label}: taken by another worker (a SLURM task) meanwhile; skipped"
                ));
                summary.skipped += 1;
                progress.cell_finished();
                continue;
            }
            members.push(Member {
                attempt: row.attempts + 1,
                row,
                label,
                ended: false,
                done: false,
            });
        }
        let Some(first) = members.first() else {
            return Ok(None);
        };
        let label = match members.len() {
            1 => first.label.clone(),
            n => format!("pack of {n} cells ({}…)", first.row.id),
        };
        // The current spec's configuration (same id, so the same training settings), not the
        // stored JSON: its resolved paths are those of the run that first stored it.
        let cells: Result<Vec<(String, etagrid_spec::CellConfig)>, String> = members
            .iter()
            .map(|m| {
                let config = match current.get(m.row.id.as_str()) {
                    Some(c) => (*c).clone(),
                    None => serde_json::from_str(&m.row.config)
                        .map_err(|e| format!("stored configuration of cell {}: {e}", m.row.id))?,
                };
                Ok((m.row.id.clone(), config))
            })
            .collect();
        let spawned = cells.and_then(|cells| {
            spawn_worker(spec, self.opts, &cells, device, slot, tx.clone())
                .map_err(|e| e.to_string())
        });
        match spawned {
            Ok((pid, log)) => {
                progress.slot(slot, format!("{label} on {device}: starting"));
                let n = members.len() as u32;
                Ok(Some(Running {
                    members,
                    label,
                    pid,
                    job_failed: None,
                    log,
                    deadline: spec.cell_timeout.map(|t| TokioInstant::now() + t * n),
                    timed_out: false,
                    kill_at: None,
                }))
            }
            Err(e) => {
                let msg = format!("could not start the worker: {e}");
                for m in &members {
                    progress.line(&format!("cell {}: failed: {msg}", m.label));
                    self.store
                        .finish_cell(&spec.name, &m.row.id, &Outcome::Failed(msg.clone()))
                        .await?;
                    summary.failed += 1;
                    progress.cell_finished();
                }
                Ok(None)
            }
        }
    }

    /// Records a worker's line: a cell's curves, and a cell's end as soon as it is known (a
    /// later crash of the pack then leaves it finished).
    async fn on_event(
        &self,
        run: &mut Running,
        ev: CellEvent,
        slot: usize,
        summary: &mut RunSummary,
    ) -> Result<(), SchedError> {
        let ids: Vec<String> = match &ev.cell {
            Some(id) => vec![id.0.clone()],
            // No cell named: every cell of the job (a one-cell worker, or a pack that failed).
            None => run.members.iter().map(|m| m.row.id.clone()).collect(),
        };
        if let (None, WorkerEvent::Failed { error }) = (&ev.cell, &ev.event) {
            run.job_failed = Some(error.clone());
            return Ok(());
        }
        let first_live = run
            .members
            .iter()
            .find(|m| !m.ended)
            .map(|m| m.row.id.clone());
        let pack_label = run.label.clone();
        for id in ids {
            let Some(m) = run.member(&id) else { continue };
            if m.ended {
                continue;
            }
            record_event(self.store, &self.spec.name, &id, &ev.event).await?;
            if first_live.as_deref() == Some(id.as_str()) {
                match &ev.event {
                    WorkerEvent::Started {
                        device,
                        total_steps,
                        ..
                    } => self.progress.slot(
                        slot,
                        format!("{pack_label} on {device}: step 0/{total_steps}"),
                    ),
                    WorkerEvent::Train {
                        step,
                        total_steps,
                        loss,
                        ..
                    } => self.progress.slot(
                        slot,
                        format!("{pack_label}: step {step}/{total_steps} loss {loss:.4}"),
                    ),
                    _ => {}
                }
            }
            if let Some(outcome) = terminal_outcome(&ev.event) {
                m.ended = true;
                m.done = matches!(outcome, Outcome::Done(_));
                let label = m.label.clone();
                self.finish(&id, &label, &outcome, m.attempt, summary)
                    .await?;
            }
        }
        Ok(())
    }

    /// Stores a cell's end, counts it and says it.
    async fn finish(
        &self,
        id: &str,
        label: &str,
        outcome: &Outcome,
        attempt: i64,
        summary: &mut RunSummary,
    ) -> Result<(), SchedError> {
        let spec = self.spec;
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
        self.store.finish_cell(&spec.name, id, outcome).await?;
        self.progress.line(&format!("cell {label}: {word}"));
        if !matches!(outcome, Outcome::Retry(_)) {
            self.progress.cell_finished();
        }
        Ok(())
    }

    /// A worker ended: every cell of it whose end is not known yet is settled from how the
    /// worker ended (retried after a crash, in a pack half as large). Returns whether any of its
    /// cells finished (its memory peak is then a whole run's).
    async fn on_exit(
        &self,
        run: Running,
        status: std::io::Result<ExitStatus>,
        stopping: bool,
        queue: &mut VecDeque<CellRow>,
        limit: &mut HashMap<String, usize>,
        summary: &mut RunSummary,
    ) -> Result<bool, SchedError> {
        let n = run.members.len();
        let cause = exit_cause(&run, &status, self.spec);
        // An input that changed after the run checked it: no attempt used, rerun after the fix.
        let input_error = status
            .as_ref()
            .is_ok_and(|s| s.code() == Some(crate::WORKER_INPUT_ERROR));
        let mut any_done = false;
        for m in &run.members {
            if m.ended {
                any_done |= m.done;
                continue;
            }
            let outcome = outcome_of(
                m,
                run.job_failed.as_deref(),
                input_error,
                &cause,
                stopping,
                self.spec,
            );
            if let Outcome::Retry(_) = &outcome {
                queue.push_back(CellRow {
                    attempts: m.attempt,
                    ..m.row.clone()
                });
                if n > 1 {
                    limit.insert(m.row.id.clone(), n.div_ceil(2));
                }
            }
            self.finish(&m.row.id, &m.label, &outcome, m.attempt, summary)
                .await?;
        }
        Ok(any_done)
    }

    /// Opens as many slots on GPU `g` as its probe's peak allows, and ends the probe.
    fn open_fitted(
        &self,
        g: u32,
        probes: &mut HashMap<u32, Probe>,
        open: &mut [bool],
        training_only: bool,
    ) {
        let (Some(fit), Some(p)) = (&self.opts.memory_fit, probes.remove(&g)) else {
            return;
        };
        // A peak seen during training only: 10 % headroom for the evaluation and the end.
        let seen = if training_only {
            "training"
        } else {
            "a whole run"
        };
        let peak = if training_only {
            p.baseline_mib + (p.peak_mib.saturating_sub(p.baseline_mib) as f64 * 1.1) as u64
        } else {
            p.peak_mib
        };
        let n = cells_that_fit(p.total_mib, p.baseline_mib, peak, fit);
        self.progress.line(&format!(
            "gpu{g}: one worker peaked at {} MiB ({seen}; of {} MiB; {} MiB held by others) → {n} worker(s) at a time on gpu{g}",
            p.peak_mib - p.baseline_mib, p.total_mib, p.baseline_mib
        ));
        let mine = (0..self.opts.slots.len()).filter(|&j| self.opts.slots[j] == SlotDevice::Gpu(g));
        for j in mine.take(n) {
            open[j] = true;
        }
    }
}

/// First signal: SIGTERM to every worker's process group, no new cells, SIGKILL after the grace
/// period. Second signal: SIGKILL at once.
fn stop(stopping: &mut u8, slots: &mut [Option<Running>], progress: &Progress, grace: Duration) {
    *stopping = stopping.saturating_add(1);
    if *stopping == 1 {
        progress.line(&format!(
            "stopping: unfinished cells go back to pending; workers get {} s to exit (interrupt again to kill them now)",
            grace.as_secs()
        ));
        for run in slots.iter_mut().flatten() {
            signal_group(run.pid, libc::SIGTERM);
            run.kill_at.get_or_insert(TokioInstant::now() + grace);
        }
    } else {
        progress.line("killing the workers");
        for run in slots.iter().flatten() {
            signal_group(run.pid, libc::SIGKILL);
        }
    }
}

fn signal_group(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: signalling a process group we created (the worker is its leader).
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

fn humanize(d: Option<Duration>) -> String {
    d.map(|d| format!("{} s", d.as_secs())).unwrap_or_default()
}

/// Stores what a worker's non-terminal event says about its cell (groups, curves, current step).
/// Shared by the local dispatcher and SLURM workers, which write the store themselves.
pub async fn record_event(
    store: &Store,
    sweep: &str,
    cell_id: &str,
    ev: &WorkerEvent,
) -> Result<(), StoreError> {
    match ev {
        WorkerEvent::Started {
            total_steps,
            groups,
            ..
        } => store.set_groups(sweep, cell_id, groups, *total_steps).await,
        WorkerEvent::Train { step, loss, .. } => {
            store
                .record_metrics(sweep, cell_id, *step, &[("train_loss", *loss)])
                .await
        }
        WorkerEvent::Eval {
            step,
            loss,
            metrics,
        } => {
            let mut points = vec![("eval_loss", *loss)];
            points.extend(metrics.iter().map(|(m, v)| (m.curve_name(), v)));
            store.record_metrics(sweep, cell_id, *step, &points).await
        }
        WorkerEvent::Finished { .. }
        | WorkerEvent::Diverged { .. }
        | WorkerEvent::Failed { .. } => Ok(()),
    }
}

/// The outcome a terminal event reports (`finished`, `diverged`, `failed`); `None` for others.
pub fn terminal_outcome(ev: &WorkerEvent) -> Option<Outcome> {
    match ev {
        WorkerEvent::Finished { result } => Some(Outcome::Done(result.clone())),
        WorkerEvent::Diverged { step, loss } => Some(Outcome::Diverged {
            step: *step,
            loss: *loss,
        }),
        WorkerEvent::Failed { error } => Some(Outcome::Failed(error.clone())),
        _ => None,
    }
}

/// Why a worker ended without reporting a cell's end (a crash, a kill, a timeout).
fn exit_cause(run: &Running, status: &std::io::Result<ExitStatus>, spec: &SweepSpec) -> String {
    let how = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("could not be waited for: {e}"),
    };
    if run.timed_out {
        format!(
            "timed out after {} ({how})",
            humanize(spec.cell_timeout.map(|t| t * run.members.len() as u32))
        )
    } else {
        format!(
            "worker {how} without reporting a result; see {}{}",
            run.log.display(),
            tail(&run.log)
        )
    }
}

/// The end of a cell whose worker ended before the cell's own terminal line.
fn outcome_of(
    m: &Member,
    job_failed: Option<&str>,
    input_error: bool,
    cause: &str,
    stopping: bool,
    spec: &SweepSpec,
) -> Outcome {
    match job_failed {
        _ if stopping => Outcome::Interrupted,
        // An input that changed after the run checked it: no attempt used, rerun after the fix.
        Some(error) if input_error => Outcome::InputError(error.to_owned()),
        // The worker's own error (a missing tensor) would recur: no retry.
        Some(error) => Outcome::Failed(error.to_owned()),
        None if m.attempt < i64::from(spec.max_attempts) => Outcome::Retry(cause.to_owned()),
        None => Outcome::Failed(format!(
            "{cause} (attempt {} of {})",
            m.attempt, spec.max_attempts
        )),
    }
}

/// The last lines of a worker's log, to put the cause next to the failure.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = &lines[lines.len().saturating_sub(3)..];
    if last.is_empty() {
        String::new()
    } else {
        format!(": {}", last.join(" | "))
    }
}

/// Starts a worker for `cells` (one, or a pack): the job file and the worker's log go into the
/// first cell's directory, and every cell writes its files into its own.
fn spawn_worker(
    spec: &SweepSpec,
    opts: &RunOptions,
    cells: &[(String, etagrid_spec::CellConfig)],
    device: SlotDevice,
    slot: usize,
    tx: mpsc::UnboundedSender<Msg>,
) -> Result<(i32, PathBuf), std::io::Error> {
    let cell_dir = |id: &str| opts.state_dir.join("cells").join(&spec.name).join(id);
    let Some(((first_id, first), rest)) = cells.split_first() else {
        return Err(std::io::Error::other("a worker needs at least one cell"));
    };
    let dir = cell_dir(first_id);
    for (id, _) in cells {
        std::fs::create_dir_all(cell_dir(id))?;
    }
    let job = WorkerJob {
        protocol: etagrid_spec::protocol::PROTOCOL_VERSION,
        sweep: spec.name.clone(),
        cell_id: etagrid_spec::CellId(first_id.clone()),
        config: first.clone(),
        model_dir: spec.model.dir.clone(),
        out_dir: dir.clone(),
        device: match device {
            SlotDevice::Cpu => JobDevice::Cpu,
            SlotDevice::Gpu(_) => JobDevice::Cuda,
        },
        threads: opts.threads_per_cell,
        save_adapter: opts.save_adapters,
        cache_dir: Some(opts.state_dir.join("cache")),
        pack: rest
            .iter()
            .map(|(id, config)| PackedCell {
                cell_id: etagrid_spec::CellId(id.clone()),
                config: config.clone(),
                out_dir: cell_dir(id),
            })
            .collect(),
    };
    let job_path = dir.join("job.json");
    let tmp = dir.join("job.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&job).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, &job_path)?;
    let log_path = dir.join("worker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;

    let mut cmd = Command::new(&opts.worker.program);
    cmd.args(&opts.worker.args)
        .arg("--job")
        .arg(&job_path)
        .env(
            "CUDA_VISIBLE_DEVICES",
            match device {
                SlotDevice::Cpu => String::new(),
                SlotDevice::Gpu(i) => i.to_string(),
            },
        )
        .env("ETAGRID_SLOT", slot.to_string())
        // GPU ids are nvidia-smi's (PCI order); CUDA's default order may differ on mixed nodes.
        .env(
            "CUDA_DEVICE_ORDER",
            std::env::var("CUDA_DEVICE_ORDER").unwrap_or_else(|_| "PCI_BUS_ID".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it makes the kernel SIGTERM the worker if the
    // scheduler dies (kill -9), so no orphan keeps training after its run is gone.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let stdout = child.stdout.take();
    tokio::spawn(async move {
        if let Some(out) = stdout {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Anything that is not a protocol line (a library printing to stdout) is ignored.
                if let Ok(ev) = serde_json::from_str::<CellEvent>(&line) {
                    let _ = tx.send(Msg::Event(slot, ev));
                }
            }
        }
        let status = child.wait().await;
        let _ = tx.send(Msg::Exited(slot, status));
    });
    Ok((pid, log_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfit::GpuMemory;

    const SLOTS: [SlotDevice; 5] = [
        SlotDevice::Gpu(0),
        SlotDevice::Gpu(1),
        SlotDevice::Gpu(0),
        SlotDevice::Gpu(1),
        SlotDevice::Cpu,
    ];

    #[test]
    fn memory_fit_opens_one_slot_per_gpu_and_probes_each_gpu() {
        let mem = [
            GpuMemory {
                index: 0,
                used_mib: 10,
                total_mib: 1000,
            },
            GpuMemory {
                index: 1,
                used_mib: 20,
                total_mib: 2000,
            },
        ];
        let (open, probes) = initial_fit(&SLOTS, Some(&MemoryFit::default()), Some(&mem));
        assert_eq!(open, vec![true, true, false, false, true]);
        assert_eq!(probes.len(), 2);
        assert_eq!((probes[&1].baseline_mib, probes[&1].total_mib), (20, 2000));
    }

    #[test]
    fn without_memory_figures_each_gpu_keeps_one_slot() {
        let (open, probes) = initial_fit(&SLOTS, Some(&MemoryFit::default()), None);
        assert_eq!(open, vec![true, true, false, false, true]);
        assert!(
            probes.is_empty(),
            "nothing to measure: the extra slots never open"
        );
    }

    #[test]
    fn an_explicit_cells_per_device_opens_every_slot() {
        let (open, probes) = initial_fit(&SLOTS, None, None);
        assert_eq!(open, vec![true; 5]);
        assert!(probes.is_empty());
    }
}
