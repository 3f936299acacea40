//! `etagrid-torch`: the whole command line, linked with libtorch. Users run `etagrid`, which
//! runs the commands that need no libtorch itself (`etagrid::cli::TchFree`, flattened into this
//! command line) and execs this binary for every other command with the same arguments. Parsing
//! and glue only; the work is in the library crates.

// The doc comments below are the --help text (clap reads them), written for a terminal:
// `[resources]` and `<sweep>` there are not links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod commands;
mod slurm;

use clap::{Parser, Subcommand};
use etagrid::cli::{GlobalArgs, TchFree};
// As `crate::common`/`crate::report` for the modules above, as when they lived in this crate.
use etagrid::{common, report};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "etagrid",
    version,
    about = "Grid-search the LoRA+ learning rates (η_A, η_B) of a model on a task"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the cells a sweep file expands to, without running anything.
    Plan { sweep: PathBuf },
    /// Run every cell of a sweep that is not done yet, then write its report.
    Run {
        sweep: PathBuf,
        /// Override [resources] devices: "auto", "cpu" or GPU ids like "0,1".
        #[arg(long)]
        devices: Option<String>,
        /// Override [resources] cells_per_device.
        #[arg(long)]
        cells_per_device: Option<usize>,
        /// Override [resources] cells_per_worker: "auto" or how many cells one worker trains
        /// together on one frozen base (1: no packing).
        #[arg(long, value_parser = parse_pack_size)]
        cells_per_worker: Option<etagrid_spec::PackSize>,
        /// Do not write the report at the end.
        #[arg(long)]
        no_report: bool,
        /// Give cells that used up their attempts (`max_attempts`) a fresh set.
        #[arg(long)]
        retry_failed: bool,
        /// Do not save each finished cell's adapter (saved by default, for `etagrid export`).
        #[arg(long)]
        no_adapters: bool,
        /// Only expand the grid and record the cells in the store; run nothing.
        #[arg(long)]
        enqueue_only: bool,
        /// Reports go to <reports>/<sweep>/.
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
        /// Where the cells run (see README "SLURM").
        #[arg(long, value_enum, default_value_t = Backend::Local)]
        backend: Backend,
        #[command(flatten)]
        slurm: slurm::SlurmArgs,
    },
    #[command(flatten)]
    TchFree(TchFree),
    /// Print the logits of a model (optionally with a LoRA adapter) for JSONL inputs
    /// ({"text": …} or {"text": …, "text_pair": …}), one JSON line per input.
    Predict {
        /// A Hugging Face-format model directory.
        #[arg(long)]
        model: PathBuf,
        /// A PEFT-format adapter directory (from `etagrid export` or PEFT's save_pretrained).
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        input: PathBuf,
        /// JSON lines out (the only format; accepted for scripts that pass it).
        #[arg(long)]
        json: bool,
        /// The causal LM's next-token logits after the last input token, instead of the classifier's.
        #[arg(long)]
        lm: bool,
        /// Longest input in tokens (special tokens included); longer inputs are truncated.
        #[arg(long, default_value_t = 512)]
        max_len: usize,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// "cpu" or "cuda" (the first GPU that CUDA_VISIBLE_DEVICES shows).
        #[arg(long, default_value = "cpu", value_parser = etagrid_train::predict::parse_device)]
        device: etagrid_spec::protocol::JobDevice,
    },
    /// Run one cell (started by `etagrid run`; prints JSON lines on stdout).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        job: PathBuf,
        /// SLURM mode: claim the job's cells in the store with a lease of this many seconds,
        /// run the worker on them and record its lines there, release them on SIGTERM/SIGUSR2.
        #[arg(long)]
        lease: Option<u64>,
        /// SLURM mode: the sweep's `max_attempts`.
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        /// SLURM mode: the pack's size came from `cells_per_worker = "auto"`; on a GPU, measure
        /// what fits first and train the pack in parts of that size.
        #[arg(long, requires = "lease")]
        measure_pack: bool,
        /// Measure the GPU memory the job's pack takes (one training step and one evaluation
        /// batch; nothing written) and print it as one JSON line, for `auto` pack sizes.
        #[arg(long, conflicts_with = "lease")]
        probe_memory: bool,
    },
}

/// A scheduler backend (`etagrid run --backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// Worker processes on this machine.
    Local,
    /// Job arrays on a SLURM cluster, one pack of cells per array task.
    Slurm,
}

fn parse_pack_size(s: &str) -> Result<etagrid_spec::PackSize, String> {
    etagrid_spec::PackSize::parse(s)
        .ok_or_else(|| format!("{s:?}: use \"auto\" or a whole number of cells, at least 1"))
}

fn main() -> ExitCode {
    common::default_sigpipe();
    let Cli { global, command } = Cli::parse();
    let db = match common::store_url(global.db.as_deref(), &global.state_dir) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let result = match command {
        Command::TchFree(c) => return c.run(&global),
        Command::Plan { sweep } => commands::plan(&sweep),
        Command::Run {
            sweep,
            devices,
            cells_per_device,
            cells_per_worker,
            no_report,
            retry_failed,
            no_adapters,
            enqueue_only,
            reports,
            backend,
            slurm,
        } => {
            let args = commands::RunArgs {
                sweep,
                db,
                state_dir: global.state_dir.clone(),
                devices,
                cells_per_device,
                cells_per_worker,
                report_dir: (!no_report).then_some(reports),
                retry_failed,
                save_adapters: !no_adapters,
                enqueue_only,
            };
            match backend {
                Backend::Slurm if !enqueue_only => slurm::run(&args, &slurm),
                Backend::Local | Backend::Slurm => commands::run(&args),
            }
        }
        Command::Predict {
            model,
            adapter,
            input,
            json: _,
            lm,
            max_len,
            batch_size,
            device,
        } => commands::predict(&etagrid_train::predict::PredictOptions {
            model_dir: model,
            adapter,
            input,
            max_len,
            batch_size,
            lm,
            device,
        }),
        Command::Worker {
            job,
            probe_memory: true,
            ..
        } => commands::probe_memory(&job),
        Command::Worker {
            job,
            lease: Some(lease),
            max_attempts,
            measure_pack,
            ..
        } => slurm::worker(&db, &job, lease, max_attempts, measure_pack),
        Command::Worker { job, .. } => commands::worker(&job),
    };
    etagrid::cli::exit(result)
}
