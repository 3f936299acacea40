//! `etagrid`: the command users run. It runs the commands that need no libtorch itself
//! (`status`, `init`, `report`, `best`, `export`, `replay-halving`: [`etagrid::cli::TchFree`]),
//! so `status` returns
//! in milliseconds even on a 100,000-cell sweep and `init`/`report` run where libtorch is absent.
//! Every other command (and every `--help`) goes to `etagrid-torch`, the binary beside it that
//! links libtorch, through `exec`: the same arguments, the same process id, the same signals and
//! exit code. Its package does not depend on `etagrid-train`, so it cannot link libtorch.

use clap::Parser;
use etagrid::cli::{GlobalArgs, TchFree};
use etagrid::common;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// The commands `etagrid` runs itself, parsed exactly as `etagrid-torch` parses them.
#[derive(Parser)]
#[command(
    name = "etagrid",
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Front {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: TchFree,
}

fn main() -> ExitCode {
    common::default_sigpipe();
    // Anything else (another command, --help, --version, a typo) is etagrid-torch's to parse.
    match Front::try_parse() {
        Ok(cli) => cli.command.run(&cli.global),
        Err(_) => exec_torch(),
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
        "error: cannot start {}: {err}\n  etagrid needs etagrid-torch beside it: `cargo build \
         --release --bins -p etagrid -p etagrid-torch` builds both (scripts/setup.sh does)",
        torch.display()
    );
    ExitCode::from(1)
}
