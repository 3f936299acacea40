//! `etagrid-torch`: the whole command line, linked with libtorch. Users run `etagrid` (src/front.rs),
//! which answers `status` itself and execs this binary for every other command with the same
//! arguments. Parsing and glue only; the work is in the library crates.

mod commands;
mod common;
mod init;
mod report;
mod slurm;
mod status;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "etagrid",
    version,
    about = "Grid-search the LoRA+ learning rates (η_A, η_B) of a model on a task"
)]
struct Cli {
    /// Where the results store, job files and worker logs live.
    #[arg(
        long,
        global = true,
        default_value = ".etagrid",
        env = "ETAGRID_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// The results store: an SQLite file (a path or sqlite://PATH), or a PostgreSQL database
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE) for clusters
    /// [default: <state-dir>/etagrid.sqlite].
    #[arg(
        long,
        global = true,
        env = "ETAGRID_DB",
        value_name = "URL",
        hide_env_values = true
    )]
    db: Option<String>,
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
    /// Write a sweep's report (figures as PNG and SVG, cells.csv/json, index.html) to
    /// reports/<sweep>/; with several sweeps, a compare report to reports/compare/.
    Report {
        /// Sweep files or names of sweeps in the store.
        #[arg(required = true)]
        sweeps: Vec<String>,
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
        /// The report's directory [default: <reports>/<sweep>, or <reports>/compare].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Heatmap colour floor: metric values worse than this get the end colour (the
        /// figure says so).
        #[arg(long, value_name = "METRIC")]
        color_floor: Option<f64>,
    },
    /// Print a sweep's best point, its best λ = 1 point and the points tied with the best.
    Best {
        /// A sweep file or the name of a sweep in the store.
        sweep: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the state of a sweep's cells (or of every sweep); works while a run is going on.
    Status { sweep: Option<String> },
    /// Write a commented sweep file for a model and a data file, detecting the task's columns.
    Init {
        /// A Hugging Face-format model directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Training data: .csv, .tsv (header row) or .jsonl.
        #[arg(long)]
        train: PathBuf,
        /// Evaluation data [default: hold out 20% of each label of --train].
        #[arg(long)]
        eval: Option<PathBuf>,
        /// The sweep file to write; never overwritten [default: sweeps/<data name>.toml].
        #[arg(long)]
        out: Option<PathBuf>,
        /// The text column, instead of detecting it.
        #[arg(long)]
        text_column: Option<String>,
        /// The second text of a sentence-pair task, instead of detecting it.
        #[arg(long)]
        text_pair_column: Option<String>,
        /// The label column, instead of detecting it.
        #[arg(long)]
        label_column: Option<String>,
    },
    /// Copy a finished cell's adapter (PEFT format: adapter_config.json + adapter_model.safetensors,
    /// the trained head as modules_to_save) to a directory `peft.PeftModel.from_pretrained` loads.
    Export {
        /// A sweep file or the name of a sweep in the store.
        sweep: String,
        /// A cell id (or a unique prefix of one), or "best".
        #[arg(long, default_value = "best")]
        cell: String,
        #[arg(long)]
        out: PathBuf,
    },
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
    let cli = Cli::parse();
    let db = match common::store_url(cli.db.as_deref(), &cli.state_dir) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let result = match cli.command {
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
                state_dir: cli.state_dir,
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
        Command::Export { sweep, cell, out } => {
            commands::export(&db, &cli.state_dir, &sweep, &cell, &out)
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
        Command::Report {
            sweeps,
            reports,
            out,
            color_floor,
        } => report::report(&db, &sweeps, &reports, out.as_deref(), color_floor),
        Command::Best { sweep, json } => report::best(&db, &sweep, json),
        Command::Status { sweep } => status::status(&db, sweep.as_deref()),
        Command::Init {
            model,
            train,
            eval,
            out,
            text_column,
            text_pair_column,
            label_column,
        } => init::init(&init::InitArgs {
            model,
            train,
            eval,
            out,
            columns: etagrid_train::data::ColumnChoice {
                text: text_column,
                text_pair: text_pair_column,
                label: label_column,
            },
        }),
        Command::Worker {
            job,
            lease: Some(lease),
            max_attempts,
        } => slurm::worker(&db, &job, lease, max_attempts),
        Command::Worker { job, .. } => commands::worker(&job),
    };
    match result {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
