use crate::common::{block_on, Exit};
use anyhow::{bail, Context, Result};
use etagrid_sched::{discover_gpus, plan_slots, RunOptions, SlotDevice, WorkerCommand};
use etagrid_spec::protocol::{CellEvent, WorkerEvent, WorkerJob};
use etagrid_spec::CellId;
use etagrid_spec::{DeviceChoice, SweepSpec};
use etagrid_store::{Store, StoreUrl};
use etagrid_train::JobOutcome;
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn plan(sweep: &Path) -> Result<Exit> {
    let spec = SweepSpec::load(sweep)?;
    // No token cache: `plan` writes nothing.
    let spec = validate(sweep, spec, None)?;
    let cells = spec.cells();
    let n_a = {
        let mut v: Vec<u64> = spec.points.iter().map(|p| p.0.to_bits()).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    println!(
        "sweep {}: {} cells = {} (η_A, η_B) points ({} η_A values) × {} seed(s); model {}; {} on {}",
        spec.name,
        cells.len(),
        spec.points.len(),
        n_a,
        spec.seeds.len(),
        spec.model.path,
        spec.task.metric.name(),
        spec.task.eval
    );
    if let Some(line) = search_line(&spec) {
        println!("{line}");
    }
    println!(
        "{:>5}  {:<16}  {:>10}  {:>10}  {:>8}  {:>5}",
        "#", "cell", "η_A", "η_B", "λ", "seed"
    );
    for c in &cells {
        println!(
            "{:>5}  {:<16}  {:>10.3e}  {:>10.3e}  {:>8.3}  {:>5}",
            c.index,
            c.id,
            c.config.lr_a,
            c.config.lr_b,
            c.config.ratio(),
            c.config.seed
        );
    }
    Ok(Exit::Ok)
}

/// For a halving sweep, what `plan` says of its search: the rungs (as fractions of a cell's
/// budget, and as steps when the budget is given in steps) and what each rung keeps.
fn search_line(spec: &SweepSpec) -> Option<String> {
    let s = &spec.search;
    if s.strategy != etagrid_search::Strategy::Halving {
        return None;
    }
    let fraction = |f: f64| {
        let n = (1.0 / f).round();
        if f < 1.0 && n > 1.0 && (n * f - 1.0).abs() < 1e-9 {
            format!("1/{n}")
        } else if f >= 1.0 {
            "1".to_owned()
        } else {
            format!("{f:.3}")
        }
    };
    let fractions: Vec<String> = s.fractions().into_iter().map(fraction).collect();
    let steps = match spec.train.length {
        etagrid_spec::TrainLength::Steps(total) => {
            let at: Vec<String> = (0..s.rung_count())
                .map(|r| s.rung_step(r, total).to_string())
                .collect();
            format!(" (steps {})", at.join(", "))
        }
        etagrid_spec::TrainLength::Epochs(_) => String::new(),
    };
    let tau = if s.min_tau > -1.0 {
        format!(
            "; pruning stops when Kendall's τ between rungs is below {}",
            s.min_tau
        )
    } else {
        String::new()
    };
    let rows = match s.keep_per_row {
        0 => String::new(),
        k => format!(
            " and, at the first, the best {k} of every η_A row as well (fewer later, none at the \
             last)"
        ),
    };
    Some(format!(
        "search: successive halving, rungs at {} of each cell's budget{steps}; each promotion \
         keeps the best 1/{} of the points{rows}{tau}{}",
        fractions.join(", "),
        s.reduction,
        if s.refine {
            "; then a 3 × 3 refinement around the best point (`refine = true`)"
        } else {
            ""
        }
    ))
}

#[derive(Clone)]
pub struct RunArgs {
    pub sweep: PathBuf,
    pub db: StoreUrl,
    pub state_dir: PathBuf,
    pub devices: Option<String>,
    pub cells_per_device: Option<usize>,
    pub cells_per_worker: Option<etagrid_spec::PackSize>,
    pub report_dir: Option<PathBuf>,
    pub retry_failed: bool,
    pub save_adapters: bool,
    pub enqueue_only: bool,
}

fn parse_devices(s: &str) -> Result<DeviceChoice> {
    Ok(match s {
        "auto" => DeviceChoice::Auto,
        "cpu" => DeviceChoice::Cpu,
        ids => DeviceChoice::Gpus(
            ids.split(',')
                .map(|i| i.trim().parse().with_context(|| format!("--devices: {i:?} is not a GPU id; use \"auto\", \"cpu\" or ids like \"0,1\"")))
                .collect::<Result<_>>()?,
        ),
    })
}

pub fn run(args: &RunArgs) -> Result<Exit> {
    let spec = SweepSpec::load(&args.sweep)?;
    let spec = check_inputs(args, spec)?;
    if args.enqueue_only {
        let cells = spec.cells();
        let s = block_on(async {
            let store = Store::open(&args.db).await?;
            // An edited [search] is refused here too: stored, it would be the sweep's text
            // that a later run reads.
            etagrid_sched::check_search(&store, &spec, &args.db).await?;
            let s = store.enqueue(&spec, &cells).await?;
            store.close().await;
            anyhow::Ok(s)
        })??;
        eprintln!(
            "sweep {}: {} cells ({} new, {} already in the store); nothing run (--enqueue-only)",
            spec.name,
            cells.len(),
            s.added,
            s.existing
        );
        return Ok(Exit::Ok);
    }
    let devices = match &args.devices {
        Some(d) => parse_devices(d)?,
        None => spec.devices.clone(),
    };
    let gpus = discover_gpus();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_device = args.cells_per_device.or(spec.cells_per_device);
    let mut slots = plan_slots(&devices, per_device, &gpus);
    // Without cells_per_device, GPUs get the memory-aware default: the first cell runs alone,
    // then as many as fit its measured peak, at most 8 and at most one per CPU core.
    let n_gpus = slots.iter().filter(|s| **s != SlotDevice::Cpu).count();
    let memory_fit = (per_device.is_none() && n_gpus > 0).then(|| {
        let fit = etagrid_sched::MemoryFit {
            max_per_device: (cores / n_gpus).clamp(1, 8),
            ..Default::default()
        };
        slots = plan_slots(&devices, Some(fit.max_per_device), &gpus);
        fit
    });
    let cpu_slots = slots
        .iter()
        .filter(|s| **s == SlotDevice::Cpu)
        .count()
        .max(1);
    let threads = spec.threads_per_cell.unwrap_or((cores / cpu_slots).max(1));
    let opts = RunOptions {
        store: args.db.clone(),
        state_dir: args.state_dir.clone(),
        // ETAGRID_WORKER replaces `etagrid worker` with another program speaking the same
        // protocol (`PROGRAM --job FILE`): the scheduler benchmark's fake worker.
        worker: match std::env::var_os("ETAGRID_WORKER") {
            Some(p) => WorkerCommand {
                program: PathBuf::from(p),
                args: Vec::new(),
            },
            None => WorkerCommand {
                program: std::env::current_exe()
                    .context("failed to find the etagrid executable")?,
                args: vec!["worker".into()],
            },
        },
        slots,
        threads_per_cell: threads,
        progress: true,
        retry_failed: args.retry_failed,
        grace: std::time::Duration::from_secs(10),
        save_adapters: args.save_adapters,
        memory_fit,
        cells_per_worker: args.cells_per_worker.unwrap_or(spec.cells_per_worker),
    };
    let summary = etagrid_sched::run(&spec, &opts)?;
    let exit = finish_run(args, &spec, &summary)?;
    if spec.search.refine {
        return refine_after(args, &spec, exit, run);
    }
    Ok(exit)
}

/// `[search] refine = true`: once the sweep has finished whole, its refined sweep (what `etagrid
/// refine` writes: `<name>-refine.toml` beside it) runs too, with the same options, through
/// `rerun` (the backend's own run). A rerun finds the file and continues that sweep.
pub(crate) fn refine_after(
    args: &RunArgs,
    spec: &SweepSpec,
    exit: Exit,
    rerun: impl FnOnce(&RunArgs) -> Result<Exit>,
) -> Result<Exit> {
    if exit != Exit::Ok {
        eprintln!(
            "[search] refine: sweep {} did not finish whole, so it is not refined yet: run the \
             same `etagrid run` again to finish it (with --retry-failed for cells out of \
             attempts), and the refinement runs then",
            spec.name
        );
        return Ok(exit);
    }
    let Some(file) = etagrid::refine::refined_for_run(&args.db, &args.sweep)? else {
        eprintln!(
            "[search] refine: no cell of sweep {} has a result (all diverged?): nothing to refine \
             around",
            spec.name
        );
        return Ok(exit);
    };
    eprintln!(
        "[search] refine: running {} (3 × 3 around the best point of {}, full budget)",
        file.display(),
        spec.name
    );
    rerun(&RunArgs {
        sweep: file,
        enqueue_only: false,
        ..args.clone()
    })
}

/// Everything a cell would load, checked before the sweep is written to the store (see
/// [`validate`]), with the workers' token cache (`<state-dir>/cache`) filled on the way.
pub(crate) fn check_inputs(args: &RunArgs, spec: SweepSpec) -> Result<SweepSpec> {
    let cache = args.state_dir.join("cache");
    validate(&args.sweep, spec, Some(&cache))
}

/// Checks the sweep's inputs as a cell would load them — the model directory and its files, the
/// data files read and tokenized, the labels, `target_modules` against the model's modules,
/// `max_seq_len` against its positions — and returns the spec with the digest of the inputs'
/// content ([`SweepSpec::inputs`], part of every cell id). Nothing is written to the store
/// before this succeeds, so a bad input costs no sweep row, no cell and no attempt.
pub(crate) fn validate(
    sweep: &Path,
    spec: SweepSpec,
    cache_dir: Option<&Path>,
) -> Result<SweepSpec> {
    if !spec.model.dir.join("config.json").exists() {
        bail!(
            "{}: [model] path {:?} has no config.json (looked in {}); point it at a Hugging Face-format model directory{}",
            sweep.display(),
            spec.model.path,
            spec.model.dir.display(),
            if spec.model.path.contains("models/all-MiniLM-L6-v2") { " — `bash scripts/setup.sh` fetches this one" } else { "" }
        );
    }
    let mc = spec.task.lm.as_ref().and_then(|l| l.mc_eval_file.as_ref());
    for (field, f) in [
        ("task.train", Some(&spec.task.train_file)),
        ("task.eval", Some(&spec.task.eval_file)),
        ("task.mc_eval", mc),
    ] {
        if let Some(f) = f.filter(|f| !f.exists()) {
            bail!(
                "{}: `{field}` file {} does not exist",
                sweep.display(),
                f.display()
            );
        }
    }
    let started = std::time::Instant::now();
    let spec = spec
        .with_inputs()
        .with_context(|| format!("{}: inputs refused, nothing stored", sweep.display()))?;
    let digest_s = started.elapsed().as_secs_f64();
    let cells = spec.cells();
    let first = cells
        .first()
        .with_context(|| format!("{}: the grid has no cell", sweep.display()))?;
    let c = etagrid_train::validate::check_cell(&first.config, &spec.model.dir, cache_dir)
        .with_context(|| format!("{}: inputs refused, nothing stored", sweep.display()))?;
    eprintln!(
        "inputs checked in {:.1} s (content digest {:.1} s): {} model (up to {} tokens), {} train and {} eval examples{}",
        started.elapsed().as_secs_f64(),
        digest_s,
        c.model_type,
        c.max_tokens,
        c.train_examples,
        c.eval_examples,
        if c.labels > 0 {
            format!(", {} labels", c.labels)
        } else {
            String::new()
        }
    );
    Ok(spec)
}

/// The report and the exit code at the end of a run (local or SLURM).
pub(crate) fn finish_run(
    args: &RunArgs,
    spec: &SweepSpec,
    summary: &etagrid_sched::RunSummary,
) -> Result<Exit> {
    if let Some(dir) = &args.report_dir {
        if summary.done + summary.skipped > 0 {
            crate::report::report_after_run(&args.db, &args.sweep.to_string_lossy(), dir)?;
        }
    }
    Ok(if summary.stopped_by_signal {
        Exit::Interrupted
    } else if summary.failed + summary.exhausted > 0 {
        eprintln!(
            "{} cell(s) failed: see `etagrid status {}`; a rerun runs those with attempts left \
             (input errors use none), `etagrid run --retry-failed` also the others",
            summary.failed + summary.exhausted,
            spec.name
        );
        Exit::CellsFailed
    } else {
        Exit::Ok
    })
}

/// The worker side of the protocol: one job (one cell or a pack) in, JSON lines out, each naming
/// its cell.
pub fn worker(job_path: &Path) -> Result<Exit> {
    let job = read_job(job_path);
    let mut stdout = std::io::stdout().lock();
    let mut emit = |cell: Option<&CellId>, event: WorkerEvent| {
        let line = serde_json::to_string(&CellEvent {
            cell: cell.cloned(),
            event,
        });
        // The scheduler is gone if stdout is closed: nobody would record the result, so stop.
        let written = line.map_err(std::io::Error::other).and_then(|line| {
            writeln!(stdout, "{line}")?;
            stdout.flush()
        });
        if written.is_err() {
            std::process::exit(1);
        }
    };
    let mut input_error = false;
    let outcome = job.and_then(|job| {
        eprintln!(
            "etagrid worker: sweep {} cell {}{}",
            job.sweep,
            job.cell_id,
            if job.pack.is_empty() {
                String::new()
            } else {
                format!(" and {} more (a pack)", job.pack.len())
            }
        );
        etagrid_train::run_pack(&job, &mut |cell, ev| emit(Some(cell), ev)).map_err(|e| {
            input_error = etagrid_train::validate::is_input_error(&e);
            anyhow::Error::from(e)
        })
    });
    match outcome {
        Ok(cells)
            if cells
                .iter()
                .any(|(_, o)| matches!(o, JobOutcome::Failed(_))) =>
        {
            Ok(Exit::WorkerFailed)
        }
        Ok(_) => Ok(Exit::Ok),
        Err(e) => {
            let error = format!("{e:#}");
            eprintln!("etagrid worker: {error}");
            // No cell named: it concerns every cell of the job.
            emit(None, WorkerEvent::Failed { error });
            Ok(if input_error {
                Exit::InputError
            } else {
                Exit::WorkerFailed
            })
        }
    }
}

fn read_job(job_path: &Path) -> Result<WorkerJob> {
    std::fs::read(job_path)
        .with_context(|| format!("failed to read job file {}", job_path.display()))
        .and_then(|b| {
            serde_json::from_slice(&b)
                .with_context(|| format!("failed to parse job file {}", job_path.display()))
        })
}

/// `worker --probe-memory`: the GPU memory the job's pack takes, as one JSON line (the
/// scheduler's `auto` pack size); trains one step, writes no file, reports no cell.
pub fn probe_memory(job_path: &Path) -> Result<Exit> {
    let job = read_job(job_path)?;
    let probe = etagrid_train::memprobe::probe_memory(&job)?;
    println!("{}", serde_json::to_string(&probe)?);
    Ok(Exit::Ok)
}

pub fn predict(o: &etagrid_train::predict::PredictOptions) -> Result<Exit> {
    let mut stdout = std::io::stdout().lock();
    let mut failed = None;
    etagrid_train::predict::predict(o, &mut |v| {
        if failed.is_none() {
            if let Err(e) = writeln!(stdout, "{v}") {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e).context("failed to write to stdout");
    }
    Ok(Exit::Ok)
}
