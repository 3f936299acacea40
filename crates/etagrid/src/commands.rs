use crate::common::{block_on, sweep_name, Exit};
use anyhow::{bail, Context, Result};
use etagrid_sched::{discover_gpus, plan_slots, RunOptions, SlotDevice, WorkerCommand};
use etagrid_spec::protocol::{CellEvent, WorkerEvent, WorkerJob};
use etagrid_spec::CellId;
use etagrid_spec::{DeviceChoice, SweepSpec};
use etagrid_store::{CellState, Store, StoreUrl};
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
    finish_run(args, &spec, &summary)
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

/// The chance level (majority class on the sweep's metric) and the eval-set size, when the
/// task files are still there.
pub(crate) fn eval_stats(spec: &SweepSpec) -> Result<(Option<f64>, Option<u64>)> {
    let ex = etagrid_train::data::eval_examples(&spec.task)?;
    let mut counts = std::collections::HashMap::new();
    for e in &ex {
        *counts.entry(e.label.as_str()).or_insert(0u64) += 1;
    }
    let counts: Vec<u64> = counts.into_values().collect();
    let chance = etagrid_train::metrics::chance_level(spec.task.metric, &counts);
    Ok((chance, Some(ex.len() as u64)))
}

/// The worker side of the protocol: one job (one cell or a pack) in, JSON lines out, each naming
/// its cell.
pub fn worker(job_path: &Path) -> Result<Exit> {
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
    let job: Result<WorkerJob> = std::fs::read(job_path)
        .with_context(|| format!("failed to read job file {}", job_path.display()))
        .and_then(|b| {
            serde_json::from_slice(&b)
                .with_context(|| format!("failed to parse job file {}", job_path.display()))
        });
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

/// Copies the adapter a finished cell saved (`<state>/cells/<sweep>/<cell>/adapter`) to `out`,
/// with the cell's `labels.json`.
pub fn export(
    db: &StoreUrl,
    state_dir: &Path,
    sweep: &str,
    cell: &str,
    out: &Path,
) -> Result<Exit> {
    let name = sweep_name(sweep)?;
    let (row, cells) = load_sweep(db, &name)?;
    let done: Vec<_> = cells
        .iter()
        .filter(|c| c.state == CellState::Done)
        .collect();
    let chosen: &etagrid_store::CellRow = if cell == "best" {
        let better = |a: f64, b: f64| if row.higher_is_better { a > b } else { a < b };
        done.iter()
            .filter(|c| c.metric.is_some_and(f64::is_finite))
            .copied()
            .reduce(|best, c| {
                if better(
                    c.metric.unwrap_or(f64::NAN),
                    best.metric.unwrap_or(f64::NAN),
                ) {
                    c
                } else {
                    best
                }
            })
            .with_context(|| format!("sweep {name} has no finished cell yet"))?
    } else {
        let matches: Vec<_> = cells.iter().filter(|c| c.id.starts_with(cell)).collect();
        match matches.as_slice() {
            [c] if c.state == CellState::Done => c,
            [c] => bail!("cell {} of sweep {name} is {}, not done: nothing to export", c.id, c.state.as_str()),
            [] => bail!("sweep {name} has no cell {cell:?} (see `etagrid status {name}` or reports/{name}/index.html)"),
            _ => bail!("{cell:?} matches {} cells of sweep {name}: give more of the id", matches.len()),
        }
    };
    let src = state_dir.join("cells").join(&name).join(&chosen.id);
    let adapter = src.join("adapter");
    if !adapter.join("adapter_model.safetensors").exists() {
        bail!(
            "cell {} has no saved adapter in {} (was it run with --no-adapters, or by an older etagrid?)",
            chosen.id,
            adapter.display()
        );
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty: choose a new directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("failed to create {}", out.display()))?;
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter.join(f), out.join(f))
            .with_context(|| format!("failed to copy {f} to {}", out.display()))?;
    }
    if src.join("labels.json").exists() {
        std::fs::copy(src.join("labels.json"), out.join("labels.json"))
            .context("failed to copy labels.json")?;
    }
    eprintln!(
        "exported cell {} (η_A={:.3e}, η_B={:.3e}, {}={}) to {}",
        chosen.id,
        chosen.lr_a,
        chosen.lr_b,
        row.metric,
        chosen.metric.map(|m| format!("{m:.4}")).unwrap_or_default(),
        out.display()
    );
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

/// Only the cells of the sweep file's current grid: the store keeps cells of earlier versions of
/// the file (another metric, other steps…), which must not enter a report or an export.
fn current_cells(
    row: &etagrid_store::SweepRow,
    cells: Vec<etagrid_store::CellRow>,
) -> Vec<etagrid_store::CellRow> {
    match SweepSpec::parse(Path::new(&row.source_path), &row.source_text) {
        Ok(mut spec) => {
            // The inputs' digest of the last run: ids cover the content it saw.
            spec.inputs = row.inputs.clone();
            let ids: std::collections::HashSet<String> =
                spec.cells().into_iter().map(|c| c.id.0).collect();
            cells.into_iter().filter(|c| ids.contains(&c.id)).collect()
        }
        Err(_) => cells,
    }
}

/// A sweep's row and the cells of its current grid, from the store.
pub(crate) fn load_sweep(
    db: &StoreUrl,
    name: &str,
) -> Result<(etagrid_store::SweepRow, Vec<etagrid_store::CellRow>)> {
    let (row, cells) = block_on(async {
        let store = Store::open(db).await?;
        let row = store.sweep(name).await?;
        let cells = store.cells(name).await?;
        store.close().await;
        anyhow::Ok((row, cells))
    })??;
    let cells = current_cells(&row, cells);
    Ok((row, cells))
}
