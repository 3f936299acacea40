//! The SLURM backend: `etagrid run --backend slurm`.
//!
//! The front end ([`run_slurm`]) submits one job array per batch of pending cells
//! (`sbatch --parsable --array=0-(N-1)%K`, split by the cluster's `MaxArraySize`) after writing
//! each task's job file to `<state>/slurm/<sweep>/<submission>/task-<i>.json`; every task `exec`s
//! `etagrid worker --lease …`, which claims its cell in the store, trains it and writes the result
//! itself ([`run_leased_worker`]). The front end only watches: it polls `squeue` once per sweep
//! with back-off, treats the store as the truth, takes cells back from tasks that ended without
//! finishing them (attempt counted), resubmits pending cells that no live task will run, and ends
//! when every cell is done, diverged or failed. Job ids go to the store, so a rerun of the front
//! end re-attaches to queued and running tasks instead of submitting their cells again.

use crate::dispatch::{record_event, terminal_outcome, RunSummary, SchedError};
use crate::progress::Progress;
use etagrid_spec::protocol::{JobDevice, WorkerEvent, WorkerJob};
use etagrid_spec::SweepSpec;
use etagrid_store::{unix_now, CellState, Claim, Outcome, SlurmTask, Store, StoreUrl};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

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
}

pub fn run_slurm(spec: &SweepSpec, opts: &SlurmOptions) -> Result<RunSummary, SchedError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SchedError::Runtime)?;
    rt.block_on(front_end(spec, opts))
}

/// A task is live while SLURM may still run it (or is running it). Unknown states count as live:
/// resubmitting a cell that a task will run anyway only costs a skipped task.
pub fn is_live(state: &str) -> bool {
    let s = state.split_whitespace().next().unwrap_or("");
    !matches!(
        s,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
    )
}

/// Expands a SLURM array id as `squeue`/`sacct` print it: `12_3` → [`12_3`], `12_[0-2,5%2]` →
/// [`12_0`, `12_1`, `12_2`, `12_5`]. A plain job id (`12`) comes back unchanged.
pub fn expand_array_id(id: &str) -> Vec<String> {
    let Some((job, rest)) = id.split_once('_') else {
        return vec![id.to_owned()];
    };
    let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return vec![id.to_owned()];
    };
    let inner = inner.split('%').next().unwrap_or("");
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let b = b.split(':').next().unwrap_or(b); // a step (`0-10:2`) is not used by etagrid
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
            out.extend((a..=b).map(|i| format!("{job}_{i}")));
        }
    }
    out
}

/// Parses `squeue -h -r -t all -o '%i|%T'` (or `sacct -X -P -n -o JobID,State`) into task id →
/// state.
pub fn parse_task_states(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split('|');
        let (Some(id), Some(state)) = (f.next(), f.next()) else {
            continue;
        };
        for t in expand_array_id(id.trim()) {
            out.insert(t, state.trim().to_owned());
        }
    }
    out
}

/// `MaxArraySize` from `scontrol show config` (SLURM's default, 1001, when absent).
pub fn parse_max_array_size(config: &str) -> usize {
    config
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "MaxArraySize").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(1001)
}

/// Splits `n` tasks into arrays of at most `max_array_size - 1` tasks: indices of an array must
/// be below `MaxArraySize`.
pub fn split_arrays(n: usize, max_array_size: usize) -> Vec<std::ops::Range<usize>> {
    let per = max_array_size.saturating_sub(1).max(1);
    (0..n).step_by(per).map(|s| s..(s + per).min(n)).collect()
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

async fn command(program: &str, args: &[&str]) -> Result<String, String> {
    command_env(program, args, &[]).await
}

async fn command_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .map_err(|e| format!("could not run `{program}`: {e} (is SLURM installed and on PATH?)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The states of the sweep's tasks that SLURM still knows (one `squeue` call per poll, by job
/// name). `squeue` rather than `sacct`: a task is live exactly while `squeue` lists it in a live
/// state, whereas `sacct` lags behind submissions (a just-submitted task would look vanished).
async fn task_states(job_name: &str) -> Result<HashMap<String, String>, String> {
    let out = command(
        "squeue",
        &["-h", "-r", "-t", "all", "--name", job_name, "-o", "%i|%T"],
    )
    .await?;
    Ok(parse_task_states(&out))
}

async fn max_array_size() -> usize {
    match command("scontrol", &["show", "config"]).await {
        Ok(text) => parse_max_array_size(&text),
        Err(_) => 1001,
    }
}

/// Writes the job files and batch script of one array, submits it and returns its tasks.
async fn submit_array(
    spec: &SweepSpec,
    opts: &SlurmOptions,
    cells: &[(String, String)],
) -> Result<Vec<SlurmTask>, SchedError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SchedError::Io { what, path, source }
    };
    let base = opts.state_dir.join("slurm").join(&spec.name);
    std::fs::create_dir_all(&base).map_err(io("create directory", &base))?;
    // A fresh directory per submission: task files of live arrays are never rewritten.
    let mut n = 0;
    let dir = loop {
        let d = base.join(format!("{}-{n}", unix_now()));
        match std::fs::create_dir(&d) {
            Ok(()) => break d,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(io("create directory", &d)(e)),
        }
    };
    for (i, (cell_id, config)) in cells.iter().enumerate() {
        let out_dir = opts.state_dir.join("cells").join(&spec.name).join(cell_id);
        let job = WorkerJob {
            protocol: etagrid_spec::protocol::PROTOCOL_VERSION,
            sweep: spec.name.clone(),
            cell_id: etagrid_spec::CellId(cell_id.clone()),
            config: serde_json::from_str(config).map_err(|e| SchedError::Io {
                what: "decode the stored configuration of cell",
                path: PathBuf::from(cell_id),
                source: std::io::Error::other(e),
            })?,
            model_dir: spec.model.dir.clone(),
            out_dir,
            device: if opts.gres.as_deref().is_some_and(|g| g.contains("gpu")) {
                JobDevice::Cuda
            } else {
                JobDevice::Cpu
            },
            threads: opts.cpus_per_task.max(1),
            save_adapter: opts.save_adapters,
            cache_dir: Some(opts.state_dir.join("cache")),
            // One cell per array task (SLURM packs are not built yet).
            pack: Vec::new(),
        };
        let p = dir.join(format!("task-{i}.json"));
        let text = serde_json::to_vec_pretty(&job).map_err(std::io::Error::other);
        std::fs::write(&p, text.map_err(io("encode job file", &p))?)
            .map_err(io("write job file", &p))?;
    }
    let mut worker = vec![sh_quote(&opts.program.to_string_lossy())];
    worker.extend(opts.global_args.iter().map(|a| sh_quote(a)));
    let script = format!(
        "#!/bin/bash\n# Written by `etagrid run --backend slurm` for sweep {name}: task i runs task-i.json.\n\
         # exec: SLURM's signals (--signal=B:USR2, SIGTERM on preemption) must reach the worker.\n\
         exec {worker} worker --job {dir}/task-\"$SLURM_ARRAY_TASK_ID\".json --lease {lease} --max-attempts {max}\n",
        name = spec.name,
        worker = worker.join(" "),
        dir = sh_quote(&dir.to_string_lossy()),
        lease = opts.lease.as_secs().max(3),
        max = spec.max_attempts,
    );
    let script_path = dir.join("job.sh");
    std::fs::write(&script_path, script).map_err(io("write batch script", &script_path))?;

    let mut args: Vec<String> = vec![
        "--parsable".into(),
        format!(
            "--array=0-{}{}",
            cells.len() - 1,
            opts.max_concurrent
                .map(|k| format!("%{k}"))
                .unwrap_or_default()
        ),
        format!("--job-name=etagrid-{}", spec.name),
        "--requeue".into(),
        "--open-mode=append".into(),
        format!("--signal=B:USR2@{}", opts.signal_before.as_secs()),
        format!("--output={}/slurm-%A_%a.out", dir.display()),
        format!("--cpus-per-task={}", opts.cpus_per_task.max(1)),
    ];
    args.extend(opts.partition.iter().map(|p| format!("--partition={p}")));
    args.extend(opts.gres.iter().map(|g| format!("--gres={g}")));
    args.extend(opts.time.iter().map(|t| format!("--time={t}")));
    args.extend(opts.mem.iter().map(|m| format!("--mem={m}")));
    args.extend(opts.extra_args.iter().cloned());
    args.push(script_path.to_string_lossy().into_owned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let db_env = match &opts.store {
        StoreUrl::Sqlite(p) => p.to_string_lossy().into_owned(),
        StoreUrl::Postgres(u) => u.clone(),
    };
    // Transient controller trouble (timeouts) is retried with back-off; anything else (a bad
    // partition, impossible resources) is permanent and reported as SLURM said it.
    let mut delay = Duration::from_secs(1);
    let out = loop {
        // sbatch exports its environment to the tasks (`--export=ALL`, SLURM's default).
        match command_env("sbatch", &argv, &[("ETAGRID_DB", &db_env)]).await {
            Ok(out) => break out,
            Err(e)
                if delay < Duration::from_secs(30)
                    && (e.contains("timed out") || e.contains("Unable to contact")) =>
            {
                eprintln!("sbatch: {e}; retrying in {} s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                return Err(SchedError::Slurm(format!(
                    "could not submit the job array: {e}"
                )))
            }
        }
    };
    let job_id = out.trim().split(';').next().unwrap_or("").to_owned();
    if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit()) {
        return Err(SchedError::Slurm(format!(
            "sbatch --parsable printed {:?}, not a job id",
            out.trim()
        )));
    }
    Ok(cells
        .iter()
        .enumerate()
        .map(|(i, (cell_id, _))| SlurmTask {
            job_id: job_id.clone(),
            array_index: i as i64,
            cell_id: cell_id.clone(),
        })
        .collect())
}

async fn front_end(spec: &SweepSpec, opts: &SlurmOptions) -> Result<RunSummary, SchedError> {
    let store = Store::open(&opts.store).await?;
    // One front end (or local scheduler) per sweep, also across machines on PostgreSQL.
    let _sweep_lock =
        store
            .try_lock_sweep(&spec.name)
            .await?
            .ok_or_else(|| SchedError::SweepLocked {
                sweep: spec.name.clone(),
                store: opts.store.to_string(),
            })?;
    let cells = spec.cells();
    let enq = store.enqueue(spec, &cells).await?;
    // Cells a local run left `running` when it died (no lease owner): with the sweep lock held no
    // local scheduler is using them, and no task would ever claim them, so give them back.
    store.recover_running(&spec.name).await?;
    if opts.retry_failed {
        store.reset_failed(&spec.name).await?;
    }
    let max = i64::from(spec.max_attempts);
    // As in a local run, a rerun retries failed cells that have attempts left.
    store.requeue_failed(&spec.name, max).await?;
    let job_name = format!("etagrid-{}", spec.name);
    let current: HashMap<String, String> = cells
        .iter()
        .map(|c| {
            (
                c.id.0.clone(),
                serde_json::to_string(&c.config).unwrap_or_default(),
            )
        })
        .collect();
    let wanted = |id: &str| current.contains_key(id);
    let rows = store.cells(&spec.name).await?;
    let mut summary = RunSummary {
        total: cells.len(),
        ..Default::default()
    };
    let mut last: HashMap<String, CellState> = HashMap::new();
    for r in rows.iter().filter(|r| wanted(&r.id)) {
        if r.state.is_final() {
            summary.skipped += 1;
        }
        if r.state == CellState::Failed && r.attempts >= max {
            summary.exhausted += 1;
        }
        last.insert(r.id.clone(), r.state);
    }
    let to_run = cells.len() - summary.skipped - summary.exhausted;
    eprintln!(
        "sweep {}: {} cells ({} new, {} already in the store), {} to run on SLURM as job arrays named {job_name}",
        spec.name,
        cells.len(),
        enq.added,
        enq.existing,
        to_run
    );
    if summary.exhausted > 0 {
        eprintln!(
            "{} failed cell(s) used up their {max} attempts and are skipped: `etagrid status {}` shows why; `--retry-failed` runs them again",
            summary.exhausted, spec.name
        );
    }
    if to_run == 0 {
        if summary.exhausted == 0 {
            eprintln!("all {} cells are done: nothing to train", cells.len());
        }
        store.close().await;
        return Ok(summary);
    }
    let max_array = max_array_size().await;
    let progress = Progress::new(to_run as u64, 0, opts.progress);
    let mut sigint = signal(SignalKind::interrupt()).map_err(SchedError::Runtime)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(SchedError::Runtime)?;
    let started = Instant::now();
    let mut delay = opts.poll_min;
    let mut first = true;
    let label = |id: &str| {
        rows.iter()
            .find(|r| r.id == id)
            .map(|r| format!("{} η_A={:.2e} η_B={:.2e}", r.id, r.lr_a, r.lr_b))
            .unwrap_or_else(|| id.to_owned())
    };
    loop {
        let mut changed = false;
        // 1. What SLURM still runs. A failed query skips this round: never take "no answer" for
        //    "every task is gone".
        match task_states(&job_name).await {
            Err(e) => progress.line(&format!("squeue: {e}; trying again later")),
            Ok(states) => {
                let live = |id: &str| states.get(id).is_some_and(|s| is_live(s));
                // 2. Cells held by tasks that ended, or whose lease ran out, go back (attempt
                //    counted) or fail when it was their last attempt.
                let now = unix_now();
                for l in store.leases(&spec.name).await? {
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
                            opts.lease.as_secs()
                        )
                    } else {
                        continue;
                    };
                    if let Some(st) = store
                        .reclaim(
                            &spec.name,
                            &l.cell_id,
                            &l.owner,
                            &cause,
                            max,
                            // A live task's cell is taken only if its lease is still expired.
                            live(&l.owner).then_some(now),
                        )
                        .await?
                    {
                        changed = true;
                        let what = if st == CellState::Failed {
                            format!("failed: {cause} (attempt {} of {max})", l.attempts)
                        } else {
                            summary.retried += 1;
                            format!("{cause}; retrying (attempt {} of {max} used)", l.attempts)
                        };
                        progress.line(&format!("cell {}: {what}", label(&l.cell_id)));
                    }
                }
                store.fail_exhausted(&spec.name, max).await?;
                // 3. Pending cells that no live task will run: submit them.
                let tasks = store.slurm_tasks(&spec.name).await?;
                let covered: HashSet<String> = tasks
                    .iter()
                    .filter(|t| live(&t.slurm_id()))
                    .map(|t| t.cell_id.clone())
                    .collect();
                let mut ended: HashMap<&str, i64> = HashMap::new();
                for t in tasks.iter().filter(|t| !live(&t.slurm_id())) {
                    *ended.entry(t.cell_id.as_str()).or_default() += 1;
                }
                let mut pending_rows = Vec::new();
                for r in store.cells_in_state(&spec.name, CellState::Pending).await? {
                    // Tasks that ended without ever claiming the cell (the worker could not reach
                    // the store, or read another one) count no attempt; stop resubmitting after
                    // `max_attempts` of them instead of submitting a new array every poll.
                    let unclaimed = ended.get(r.id.as_str()).copied().unwrap_or(0) - r.attempts;
                    if wanted(&r.id) && !covered.contains(&r.id) && unclaimed >= max {
                        let why = format!(
                            "{unclaimed} SLURM task(s) ended without starting the cell (could the \
                             worker reach the store?); see slurm-*.out under {}",
                            opts.state_dir.join("slurm").join(&spec.name).display()
                        );
                        store
                            .finish_cell(&spec.name, &r.id, &Outcome::Failed(why.clone()))
                            .await?;
                        progress.line(&format!("cell {}: failed: {why}", label(&r.id)));
                        summary.failed += 1;
                        changed = true;
                        continue;
                    }
                    pending_rows.push(r);
                }
                let pending: Vec<(String, String)> = pending_rows
                    .into_iter()
                    .filter(|r| wanted(&r.id) && !covered.contains(&r.id) && r.attempts < max)
                    .map(|r| {
                        let config = current.get(&r.id).cloned().unwrap_or(r.config);
                        (r.id, config)
                    })
                    .collect();
                if first {
                    let attached = covered.iter().filter(|c| wanted(c)).count();
                    if attached > 0 {
                        progress.line(&format!(
                            "re-attached to {attached} queued or running task(s) of an earlier submission"
                        ));
                    }
                    first = false;
                }
                for range in split_arrays(pending.len(), max_array) {
                    let batch = &pending[range];
                    let tasks = submit_array(spec, opts, batch).await?;
                    store
                        .record_slurm_tasks(&spec.name, &tasks, unix_now())
                        .await?;
                    progress.line(&format!(
                        "submitted job array {} ({} task(s))",
                        tasks[0].job_id,
                        tasks.len()
                    ));
                    changed = true;
                }
            }
        }
        // 4. Report what changed, from the store (the truth), and stop when nothing is left.
        let rows_now = store.cells(&spec.name).await?;
        let mut left = 0;
        for r in rows_now.iter().filter(|r| wanted(&r.id)) {
            let before = last.insert(r.id.clone(), r.state);
            if before != Some(r.state) {
                changed = true;
                match r.state {
                    CellState::Running => progress.line(&format!(
                        "cell {}: running on {} (attempt {})",
                        label(&r.id),
                        r.device.as_deref().unwrap_or("?"),
                        r.attempts
                    )),
                    CellState::Done => {
                        summary.done += 1;
                        progress.cell_finished();
                        progress.line(&format!(
                            "cell {}: done  {}={:.4}  ({:.1} s)",
                            label(&r.id),
                            spec.task.metric.name(),
                            r.metric.unwrap_or(f64::NAN),
                            r.wall_s.unwrap_or(f64::NAN)
                        ));
                    }
                    CellState::Diverged => {
                        summary.diverged += 1;
                        progress.cell_finished();
                        progress.line(&format!("cell {}: diverged", label(&r.id)));
                    }
                    CellState::Failed => {
                        summary.failed += 1;
                        progress.cell_finished();
                        progress.line(&format!(
                            "cell {}: failed: {}",
                            label(&r.id),
                            r.error.as_deref().unwrap_or("")
                        ));
                    }
                    CellState::Pending => {}
                }
            }
            if matches!(r.state, CellState::Pending | CellState::Running) {
                left += 1;
            }
        }
        if left == 0 {
            break;
        }
        delay = if changed {
            opts.poll_min
        } else {
            (delay * 2).min(opts.poll_max)
        };
        let stop = tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = sigint.recv() => true,
            _ = sigterm.recv() => true,
        };
        if stop {
            progress.finish();
            eprintln!(
                "stopped watching sweep {}: its SLURM tasks keep running and write the store; \
                 rerun `etagrid run --backend slurm` to watch again, or `scancel --name={job_name}` to stop them",
                spec.name
            );
            summary.stopped_by_signal = true;
            store.close().await;
            return Ok(summary);
        }
    }
    progress.finish();
    eprintln!(
        "sweep {}: finished in {:.1} s — {}",
        spec.name,
        started.elapsed().as_secs_f64(),
        crate::dispatch::counts_line(&store, &spec.name).await?
    );
    store.close().await;
    Ok(summary)
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

/// How a leased worker ended.
#[derive(Debug, Clone, PartialEq)]
pub enum LeasedExit {
    /// The cell was trained and its outcome written (done, diverged or failed).
    Finished(CellState),
    /// Nothing to do: the cell is finished, held by a live task, or out of attempts.
    Skipped(String),
    /// Stopped by a signal; the cell went back to pending.
    Released(String),
    /// The lease was lost (it expired and another task took the cell): nothing written.
    LeaseLost,
}

/// Ends the process at once, without running exit handlers: a worker that gave its cell back
/// while its training thread is still inside libtorch must not run libtorch's static destructors
/// under that thread (it panics noisily).
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    // SAFETY: _exit only ends the process; nothing after it runs.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(code)
    }
}

enum WMsg {
    Event(WorkerEvent),
    Ended(Result<(), String>),
}

/// The training side of a leased worker: runs the job, passing each event to the callback.
pub type Train = Box<dyn FnOnce(&mut dyn FnMut(WorkerEvent)) -> Result<(), String> + Send>;

/// A worker started by a SLURM task: claims `job`'s cell for `owner` (recording `device`), trains
/// it on a thread while renewing the lease every `lease / 3`, writes the events and the outcome
/// to the store itself, and on SIGTERM (preemption, `scancel`, requeue) or SIGUSR2 (the time limit
/// is near) gives the cell back to pending at once and returns.
pub fn run_leased_worker(
    store_path: &StoreUrl,
    job: &WorkerJob,
    owner: &str,
    device: &str,
    lease: Duration,
    max_attempts: u32,
    train: Train,
) -> Result<LeasedExit, SchedError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SchedError::Runtime)?;
    rt.block_on(leased(
        store_path,
        job,
        owner,
        device,
        lease,
        max_attempts,
        train,
    ))
}

async fn leased(
    store_path: &StoreUrl,
    job: &WorkerJob,
    owner: &str,
    device: &str,
    lease: Duration,
    max_attempts: u32,
    train: Train,
) -> Result<LeasedExit, SchedError> {
    // Signal handlers first: a SIGTERM during the claim must not kill the process with the cell
    // claimed.
    let mut sigterm = signal(SignalKind::terminate()).map_err(SchedError::Runtime)?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).map_err(SchedError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(SchedError::Runtime)?;
    let store = Store::open(store_path).await?;
    let (sweep, id) = (job.sweep.as_str(), job.cell_id.0.as_str());
    let lease_s = lease.as_secs().max(3) as i64;
    let claim = store
        .claim(
            sweep,
            id,
            owner,
            device,
            unix_now(),
            lease_s,
            i64::from(max_attempts),
        )
        .await?;
    let attempt = match claim {
        Claim::Claimed { attempt } => attempt,
        other => {
            let why = match other {
                Claim::Finished(st) => {
                    format!("cell {id} is already {}: nothing to do", st.as_str())
                }
                Claim::Held { owner, expires } => format!(
                    "cell {id} is held by {owner} (lease valid for {} s more): skipped",
                    expires - unix_now()
                ),
                Claim::Exhausted { attempts } => {
                    format!(
                        "cell {id} used up its attempts ({attempts} of {max_attempts}): skipped"
                    )
                }
                Claim::Missing => {
                    // Not a skip: this task reads another store than its front end wrote (the
                    // URL did not reach it, e.g. `--export=NONE`). Exit non-zero so it shows.
                    store.close().await;
                    return Err(SchedError::Slurm(format!(
                        "cell {id} of sweep {sweep} is not in the store {store_path}: this task \
                         opened another store than the front end's (was ETAGRID_DB exported to it?)"
                    )));
                }
                Claim::Claimed { .. } => unreachable!(),
            };
            eprintln!("etagrid worker {owner}: {why}");
            store.close().await;
            return Ok(LeasedExit::Skipped(why));
        }
    };
    eprintln!("etagrid worker {owner}: claimed cell {id} of sweep {sweep} (attempt {attempt}) on {device}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let r = train(&mut |ev| {
            let _ = tx2.send(WMsg::Event(ev));
        });
        let _ = tx.send(WMsg::Ended(r));
    });
    let mut beat = tokio::time::interval(Duration::from_secs((lease_s / 3).max(1) as u64));
    beat.tick().await;
    let release = |refund: bool, note: String| {
        let store = &store;
        async move {
            eprintln!("etagrid worker {owner}: {note}");
            store.release(sweep, id, owner, refund, &note).await?;
            Ok::<_, SchedError>(LeasedExit::Released(note))
        }
    };
    let exit = loop {
        tokio::select! {
            msg = rx.recv() => {
                let outcome = match msg {
                    Some(WMsg::Event(ev)) => match terminal_outcome(&ev) {
                        Some(o) => o,
                        None => { record_event(&store, sweep, id, &ev).await?; continue; }
                    },
                    Some(WMsg::Ended(Err(e))) => Outcome::Failed(e),
                    Some(WMsg::Ended(Ok(()))) | None => Outcome::Failed("the worker ended without reporting a result".into()),
                };
                let state = match &outcome {
                    Outcome::Done(_) => CellState::Done,
                    Outcome::Diverged { .. } => CellState::Diverged,
                    _ => CellState::Failed,
                };
                if !store.finish_leased(sweep, id, owner, &outcome).await? {
                    eprintln!("etagrid worker {owner}: lost the lease on cell {id}; its result is not recorded");
                    break LeasedExit::LeaseLost;
                }
                eprintln!("etagrid worker {owner}: cell {id} {}", state.as_str());
                break LeasedExit::Finished(state);
            }
            _ = beat.tick() => {
                if !store.heartbeat(sweep, id, owner, unix_now(), lease_s).await? {
                    eprintln!("etagrid worker {owner}: lost the lease on cell {id} (it expired and was taken back); stopping");
                    break LeasedExit::LeaseLost;
                }
            }
            _ = sigterm.recv() => break release(true, format!("SIGTERM (preempted, requeued or cancelled): cell {id} back to pending, attempt not counted")).await?,
            _ = sigint.recv() => break release(true, format!("SIGINT: cell {id} back to pending, attempt not counted")).await?,
            _ = sigusr2.recv() => break release(false, format!("SIGUSR2 (the SLURM time limit is near): cell {id} back to pending, attempt {attempt} counted; give the tasks more --time")).await?,
        }
    };
    store.close().await;
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_ids_expand_ranges_lists_and_throttles() {
        assert_eq!(expand_array_id("12_3"), vec!["12_3"]);
        assert_eq!(
            expand_array_id("12_[0-2,5%2]"),
            vec!["12_0", "12_1", "12_2", "12_5"]
        );
        assert_eq!(expand_array_id("12"), vec!["12"]);
    }

    #[test]
    fn squeue_text_gives_task_states() {
        let s = parse_task_states("7_0|RUNNING\n7_[1-2%1]|PENDING\n8|COMPLETED\n");
        assert_eq!(s["7_0"], "RUNNING");
        assert_eq!(s["7_2"], "PENDING");
        assert!(is_live(&s["7_1"]) && !is_live(&s["8"]));
        assert!(!is_live("CANCELLED by 0") && is_live("REQUEUED"));
    }

    #[test]
    fn arrays_are_split_below_max_array_size() {
        assert_eq!(
            parse_max_array_size("Foo = 1\nMaxArraySize            = 4\n"),
            4
        );
        assert_eq!(parse_max_array_size(""), 1001);
        assert_eq!(split_arrays(7, 4), vec![0..3, 3..6, 6..7]);
        assert_eq!(split_arrays(0, 4), Vec::<std::ops::Range<usize>>::new());
    }
}
