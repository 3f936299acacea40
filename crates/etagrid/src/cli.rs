//! The command line both binaries share: the global options and the commands that need no
//! libtorch ([`TchFree`]). `etagrid` parses exactly these and runs them itself; `etagrid-torch`
//! flattens [`TchFree`] into its whole command line, so each option is defined once and a command
//! does the same whichever binary runs it.

// The doc comments below are the --help text (clap reads them), written for a terminal:
// `<sweep>` and `[:PORT]` there are not HTML or links.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use crate::common::{store_url, Exit};
use crate::{export, init, refine, replay, report, status};
use anyhow::Result;
use clap::{Args, Subcommand};
use etagrid_data::ColumnChoice;
use std::path::PathBuf;
use std::process::ExitCode;

/// `--state-dir` and `--db`, given before or after the command.
#[derive(Args)]
pub struct GlobalArgs {
    /// Where the results store, job files and worker logs live.
    #[arg(
        long,
        global = true,
        default_value = ".etagrid",
        env = "ETAGRID_STATE_DIR"
    )]
    pub state_dir: PathBuf,
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
    pub db: Option<String>,
}

/// The commands that need no libtorch.
#[derive(Subcommand)]
pub enum TchFree {
    /// Write a sweep's report (figures as PNG and SVG, cells.csv/json, index.html) to
    /// reports/<sweep>/; with several sweeps, a compare report to reports/compare/.
    Report(ReportArgs),
    /// Print a sweep's best point, its best λ = 1 point and the points tied with the best.
    Best(BestArgs),
    /// Show the state of a sweep's cells (or of every sweep); works while a run is going on.
    Status(StatusArgs),
    /// Write a commented sweep file for a model and a data file, detecting the task's columns.
    Init(InitCommand),
    /// Write a sweep file for a finer grid around a finished sweep's best point: η_A and λ at
    /// half-octave steps (×2^±½), 3 × 3 points at full budget, next to the sweep's file as
    /// <name>-refine.toml; run it with `etagrid run`.
    Refine(RefineArgs),
    /// Copy a finished cell's adapter (PEFT format: adapter_config.json + adapter_model.safetensors,
    /// the trained head as modules_to_save) to a directory `peft.PeftModel.from_pretrained` loads.
    Export(ExportArgs),
    /// Replay grid-aware successive halving on a finished sweep: which points each rung would
    /// have kept, the point it would have picked, its regret against the grid's best and its
    /// share of the grid's steps, beside the 1-D shortcut (one λ, full budget). Needs an eval at
    /// every rung step (see docs/halving.md).
    ReplayHalving(ReplayArgs),
}

#[derive(Args)]
pub struct RefineArgs {
    /// A sweep file or the name of a sweep in the store.
    pub sweep: String,
    /// The file to write [default: <name>-refine.toml beside the sweep's file]; it must be in
    /// that directory, and must not exist.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Sweep files or names of sweeps in the store.
    #[arg(required = true)]
    pub sweeps: Vec<String>,
    #[arg(long, default_value = "reports")]
    pub reports: PathBuf,
    /// The report's directory [default: <reports>/<sweep>, or <reports>/compare].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Heatmap colour floor: metric values worse than this get the end colour (the
    /// figure says so).
    #[arg(long, value_name = "METRIC")]
    pub color_floor: Option<f64>,
}

#[derive(Args)]
pub struct BestArgs {
    /// A sweep file or the name of a sweep in the store.
    pub sweep: String,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    pub sweep: Option<String>,
}

#[derive(Args)]
pub struct InitCommand {
    /// A Hugging Face-format model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Training data: .csv, .tsv (header row) or .jsonl.
    #[arg(long)]
    pub train: PathBuf,
    /// Evaluation data [default: hold out 20% of each label of --train].
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// The sweep file to write; never overwritten [default: sweeps/<data name>.toml].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The text column, instead of detecting it.
    #[arg(long)]
    pub text_column: Option<String>,
    /// The second text of a sentence-pair task, instead of detecting it.
    #[arg(long)]
    pub text_pair_column: Option<String>,
    /// The label column, instead of detecting it.
    #[arg(long)]
    pub label_column: Option<String>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A sweep file or the name of a sweep in the store.
    pub sweep: String,
    /// A cell id (or a unique prefix of one), or "best".
    #[arg(long, default_value = "best")]
    pub cell: String,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// A sweep file or the name of a sweep in the store.
    pub sweep: String,
    /// The factor by which each rung cuts the points [default: the sweep's `[search]`
    /// reduction, else 4].
    #[arg(long, value_name = "N")]
    pub reduction: Option<u32>,
    /// The rungs as fractions of the step budget, increasing, ending at 1
    /// [default: the sweep's `[search]` rungs, else 1/9, 1/3, 1].
    #[arg(long, value_name = "F,F,…", value_delimiter = ',')]
    pub rungs: Option<Vec<f64>>,
    /// At least this many best points of every η_A row are kept at each rung [default: the
    /// sweep's `[search]` value, else 2].
    #[arg(long, value_name = "N")]
    pub keep_per_row: Option<usize>,
    /// Pruning stops when Kendall's τ between two rungs' rankings is below this [default: the
    /// sweep's `[search]` value, else -1: never].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub min_tau: Option<f64>,
    /// The λ = η_B/η_A of the 1-D shortcut compared with (the cells on that line, full budget).
    #[arg(long, value_name = "LAMBDA", default_value_t = 16.0)]
    pub one_d_lambda: f64,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl TchFree {
    /// Runs the command; the exit code is decided here for both binaries.
    pub fn run(self, global: &GlobalArgs) -> ExitCode {
        let db = match store_url(global.db.as_deref(), &global.state_dir) {
            Ok(u) => u,
            Err(code) => return code,
        };
        let result: Result<Exit> = match self {
            TchFree::Report(a) => {
                report::report(&db, &a.sweeps, &a.reports, a.out.as_deref(), a.color_floor)
            }
            TchFree::Best(a) => report::best(&db, &a.sweep, a.json),
            TchFree::Refine(a) => refine::refine(&db, &a.sweep, a.out.as_deref()),
            TchFree::Status(a) => status::status(&db, a.sweep.as_deref()),
            TchFree::Init(a) => init::init(&init::InitArgs {
                model: a.model,
                train: a.train,
                eval: a.eval,
                out: a.out,
                columns: ColumnChoice {
                    text: a.text_column,
                    text_pair: a.text_pair_column,
                    label: a.label_column,
                },
            }),
            TchFree::Export(a) => export::export(&db, &global.state_dir, &a.sweep, &a.cell, &a.out),
            TchFree::ReplayHalving(a) => replay::replay_halving(
                &db,
                &a.sweep,
                &replay::ReplayOptions {
                    reduction: a.reduction,
                    rungs: a.rungs,
                    keep_per_row: a.keep_per_row,
                    min_tau: a.min_tau,
                    one_d_lambda: Some(a.one_d_lambda),
                    json: a.json,
                },
            ),
        };
        exit(result)
    }
}

/// The process's exit code for a command's result; an error is printed with its causes.
pub fn exit(result: Result<Exit>) -> ExitCode {
    match result {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
