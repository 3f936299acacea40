//! What both binaries share: exit codes, a runtime for one store call, sweep names.
//! Part of the tch-free `etagrid` library: `etagrid-torch` uses it too.

use anyhow::{Context, Result};
use etagrid_spec::SweepSpec;
use etagrid_store::StoreUrl;
use std::path::Path;
use std::process::ExitCode;

/// The process's exit codes, decided here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done (diverged cells are a result, not an error).
    Ok,
    /// A run ended with failed cells; rerun to retry them.
    CellsFailed,
    /// A run was stopped by SIGINT/SIGTERM; rerun to resume.
    Interrupted,
    /// A worker could not run its cell.
    WorkerFailed,
    /// A worker found its inputs bad (changed after the run checked them): no attempt used.
    InputError,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(match e {
            Exit::Ok => 0,
            Exit::WorkerFailed => 1,
            Exit::InputError => etagrid_sched::WORKER_INPUT_ERROR as u8,
            Exit::CellsFailed => 3,
            Exit::Interrupted => 130,
        })
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?
        .block_on(f))
}

/// A sweep file's name, or the argument itself when it names a sweep in the store.
pub fn sweep_name(sweep: &str) -> Result<String> {
    let p = Path::new(sweep);
    if p.extension().is_some_and(|e| e == "toml") || p.exists() {
        Ok(SweepSpec::load(p)?.name)
    } else {
        Ok(sweep.to_owned())
    }
}

/// `etagrid status | head` must end quietly, as other Unix tools do, not panic on a closed pipe:
/// Rust ignores SIGPIPE by default, which turns a closed stdout into a panic in `println!`.
/// (Children still start with the default disposition: std resets it before `exec`.)
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL at start-up, before any other thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The store of `--db` (a path, `sqlite://…` or `postgres://…`), else `<state-dir>/etagrid.sqlite`.
/// Parsed here rather than by clap, whose error would echo a URL's password.
pub fn store_url(db: Option<&str>, state_dir: &Path) -> std::result::Result<StoreUrl, ExitCode> {
    match db {
        Some(s) => StoreUrl::parse(s).map_err(|e| {
            eprintln!("error: --db: {e}");
            ExitCode::from(1)
        }),
        None => Ok(state_dir.join("etagrid.sqlite").into()),
    }
}
