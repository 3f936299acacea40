//! `etagrid run --backend slurm` and the SLURM side of `etagrid worker` (`--lease`). The
//! scheduling is in `etagrid_sched::slurm`; this is the command-line glue.

use crate::commands::{check_inputs, finish_run, refine_after, RunArgs};
use crate::common::Exit;
use anyhow::{bail, Context, Result};
use etagrid_sched::slurm::{lease_owner, run_task, SlurmOptions, TaskExit, TaskOptions};
use etagrid_sched::WorkerCommand;
use etagrid_spec::SweepSpec;
use etagrid_store::StoreUrl;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `etagrid run --backend slurm` options.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "SLURM (--backend slurm)")]
pub struct SlurmArgs {
    /// sbatch --partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// sbatch --gres per task; "none" for no generic resource (CPU-only partitions).
    #[arg(long, default_value = "gpu:1")]
    pub gres: String,
    /// sbatch --time per task (e.g. "2:00:00").
    #[arg(long)]
    pub time: Option<String>,
    /// sbatch --cpus-per-task; also the worker's libtorch threads.
    #[arg(long, default_value_t = 1)]
    pub cpus_per_task: usize,
    /// sbatch --mem per task (e.g. "16G").
    #[arg(long)]
    pub mem: Option<String>,
    /// Another sbatch option, passed as it is (repeatable): --sbatch-arg=--account=lab.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// At most K tasks of the sweep's array at a time (--array=…%K).
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// A worker's lease on its cell, in seconds (renewed every third of it). A cell whose worker
    /// stopped renewing it for this long is taken back and retried.
    #[arg(long, default_value_t = 120)]
    pub lease: u64,
    /// The worker is told (SIGUSR2) this many seconds before the --time limit to give its cell back.
    #[arg(long, default_value_t = 120)]
    pub signal_before: u64,
    /// First polling interval in seconds; it doubles while nothing changes, up to --poll-max.
    #[arg(long, default_value_t = 10.0)]
    pub poll: f64,
    #[arg(long, default_value_t = 120.0)]
    pub poll_max: f64,
    /// Let SLURM tasks write a SQLite store. Safe only when every task runs on the machine that
    /// holds the store file on a local disk (WAL and a busy timeout serialise a few writers);
    /// never on a network filesystem.
    #[arg(long)]
    pub allow_sqlite: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("failed to resolve {}", p.display()))
}

pub fn run(args: &RunArgs, s: &SlurmArgs) -> Result<Exit> {
    let spec = SweepSpec::load(&args.sweep)?;
    if args.db.sqlite_path().is_some() && !s.allow_sqlite {
        bail!(
            "--backend slurm: the results store {} is a SQLite file, which is safe with one \
             writer only, and every SLURM task writes its own cell's results: use a PostgreSQL \
             store, `--db postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, that the nodes can \
             reach (or, if every task runs on this one machine and the store is on a local disk, \
             pass --allow-sqlite)",
            args.db
        );
    }
    let spec = check_inputs(args, spec)?;
    let state_dir = absolute(&args.state_dir)?;
    let db = match &args.db {
        StoreUrl::Sqlite(p) => StoreUrl::Sqlite(absolute(p)?),
        url => url.clone(),
    };
    let secs = |v: f64, flag: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            bail!("{flag} {v}: must be a positive number of seconds")
        }
    };
    let opts = SlurmOptions {
        store: db,
        program: std::env::current_exe().context("failed to find the etagrid executable")?,
        global_args: vec![
            "--state-dir".into(),
            state_dir.to_string_lossy().into_owned(),
        ],
        state_dir,
        partition: s.partition.clone(),
        gres: (s.gres != "none" && !s.gres.is_empty()).then(|| s.gres.clone()),
        time: s.time.clone(),
        cpus_per_task: s.cpus_per_task.max(1),
        mem: s.mem.clone(),
        extra_args: s.sbatch_args.clone(),
        max_concurrent: s.max_concurrent,
        lease: Duration::from_secs(s.lease.max(3)),
        signal_before: Duration::from_secs(s.signal_before),
        poll_min: secs(s.poll, "--poll")?,
        poll_max: secs(s.poll_max.max(s.poll), "--poll-max")?,
        retry_failed: args.retry_failed,
        save_adapters: args.save_adapters,
        progress: true,
        cells_per_worker: args.cells_per_worker.unwrap_or(spec.cells_per_worker),
    };
    let summary = etagrid_sched::slurm::run_slurm(&spec, &opts)?;
    let exit = finish_run(args, &spec, &summary)?;
    if spec.search.refine && !summary.stopped_by_signal {
        // The refined sweep goes to SLURM too, watched by this same front end.
        return refine_after(args, &spec, exit, |refined| run(refined, s));
    }
    Ok(exit)
}

/// `etagrid worker --job FILE --lease SECONDS`, as a SLURM task runs it: claims the cells of its
/// pack, runs the normal worker on them and records its lines in the store (see
/// `etagrid_sched::slurm::run_task`). Exits 0 also when there was nothing to do (the cells are
/// finished or held by another live task) and when a signal stopped it (the cells are back to
/// pending).
pub fn worker(
    db: &StoreUrl,
    job_path: &Path,
    lease: u64,
    max_attempts: u32,
    measure_pack: bool,
) -> Result<Exit> {
    let cvd = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    // The device is what SLURM granted this task, not what the submission asked for.
    let granted = etagrid_sched::granted_gpus(&|k| std::env::var(k).ok());
    let gpus = match granted {
        Some(g) => {
            // Checked with the granted GPUs visible, as the worker will see them.
            std::env::set_var("CUDA_VISIBLE_DEVICES", &g);
            if etagrid_train::device::init_cuda() {
                Some(g)
            } else {
                // A GPU that libtorch cannot use (no CUDA build, or a test cluster's fake GPU
                // device) means: train on the CPU, and say so.
                eprintln!(
                    "etagrid worker: SLURM granted GPU(s) {g} (CUDA_VISIBLE_DEVICES={cvd:?}) but libtorch sees no CUDA device: training on the CPU"
                );
                None
            }
        }
        None => None,
    };
    let owner = lease_owner();
    let host = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| "?".into());
    let restarts = std::env::var("SLURM_RESTART_COUNT").unwrap_or_else(|_| "0".into());
    let device_label = format!(
        "{} (task {owner} on {host}, CUDA_VISIBLE_DEVICES={cvd}, restart {restarts})",
        if gpus.is_some() { "cuda" } else { "cpu" }
    );
    let exit = run_task(&TaskOptions {
        store: db.clone(),
        job: job_path.to_owned(),
        owner,
        device_label,
        gpus,
        lease: Duration::from_secs(lease),
        max_attempts,
        worker: WorkerCommand {
            program: std::env::current_exe().context("failed to find the etagrid executable")?,
            args: vec!["worker".into()],
        },
        measure_pack,
    })?;
    match exit {
        // The worker was killed: end without exit handlers.
        TaskExit::Released => etagrid_sched::exit_now(0),
        TaskExit::LeaseLost => etagrid_sched::exit_now(1),
        TaskExit::Finished { failed: true } => Ok(Exit::WorkerFailed),
        TaskExit::Finished { failed: false } | TaskExit::Skipped => Ok(Exit::Ok),
    }
}
