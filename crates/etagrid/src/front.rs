//! `etagrid`: the command users run. It answers `status` itself, without libtorch, so `status`
//! returns in milliseconds even on a 100,000-cell sweep. Every other command (and every `--help`)
//! goes to `etagrid-torch`, the binary beside it that links libtorch, through `exec`: the same
//! arguments, the same process id, the same signals and exit code.
//!
//! This file and the modules it uses must not reach `etagrid_train` (or tch): a test checks that
//! this binary does not link libtorch.

mod common;
mod status;

use clap::{Parser, Subcommand};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// The options `status` needs, parsed exactly as `etagrid-torch` parses them.
#[derive(Parser)]
#[command(
    name = "etagrid",
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Front {
    #[arg(
        long,
        global = true,
        default_value = ".etagrid",
        env = "ETAGRID_STATE_DIR"
    )]
    state_dir: PathBuf,
    #[arg(long, global = true, env = "ETAGRID_DB")]
    db: Option<String>,
    #[command(subcommand)]
    command: FrontCommand,
}

#[derive(Subcommand)]
enum FrontCommand {
    Status { sweep: Option<String> },
}

fn main() -> ExitCode {
    common::default_sigpipe();
    // Anything but a plain `status` (another command, --help, a typo) is etagrid-torch's to parse.
    let Ok(cli) = Front::try_parse() else {
        return exec_torch();
    };
    let FrontCommand::Status { sweep } = cli.command;
    let db = match common::store_url(cli.db.as_deref(), &cli.state_dir) {
        Ok(u) => u,
        Err(code) => return code,
    };
    match status::status(&db, sweep.as_deref()) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn exec_torch() -> ExitCode {
    let torch = match std::env::current_exe() {
        Ok(me) => me.with_file_name("etagrid-torch"),
        Err(e) => {
            eprintln!("error: cannot find the etagrid executable: {e}");
            return ExitCode::from(1);
        }
    };
    let err = std::process::Command::new(&torch)
        .arg0("etagrid")
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!(
        "error: cannot start {}: {err}\n  etagrid needs etagrid-torch beside it: \
         `cargo build --release --bins -p etagrid` builds both (scripts/setup.sh does)",
        torch.display()
    );
    ExitCode::from(1)
}
