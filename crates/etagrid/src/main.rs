//! `etagrid`: the command line. Parsing and glue only; the work is in the library crates.

mod commands;

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
    /// The SQLite results store [default: <state-dir>/etagrid.sqlite].
    #[arg(long, global = true, env = "ETAGRID_DB")]
    db: Option<PathBuf>,
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
        /// Do not write the report at the end.
        #[arg(long)]
        no_report: bool,
        /// Give cells that used up their attempts (`max_attempts`) a fresh set.
        #[arg(long)]
        retry_failed: bool,
        /// Reports go to <reports>/<sweep>/.
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
    },
    /// Write reports/<sweep>/heatmap.png and index.html from the store.
    Report {
        /// A sweep file or the name of a sweep in the store.
        sweep: String,
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
    },
    /// Show the state of a sweep's cells (or of every sweep); works while a run is going on.
    Status { sweep: Option<String> },
    /// Run one cell (started by `etagrid run`; prints JSON lines on stdout).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        job: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let db = cli
        .db
        .clone()
        .unwrap_or_else(|| cli.state_dir.join("etagrid.sqlite"));
    let result = match cli.command {
        Command::Plan { sweep } => commands::plan(&sweep),
        Command::Run {
            sweep,
            devices,
            cells_per_device,
            no_report,
            retry_failed,
            reports,
        } => commands::run(&commands::RunArgs {
            sweep,
            db,
            state_dir: cli.state_dir,
            devices,
            cells_per_device,
            report_dir: (!no_report).then_some(reports),
            retry_failed,
        }),
        Command::Report { sweep, reports } => {
            commands::report(&db, &sweep, &reports).map(|_| commands::Exit::Ok)
        }
        Command::Status { sweep } => commands::status(&db, sweep.as_deref()),
        Command::Worker { job } => commands::worker(&job),
    };
    match result {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
