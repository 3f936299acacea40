//! Every OS call of the scheduler: signals, process groups, the parent-death signal, `_exit`.
//! The rest of the crate names no `libc` item.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use tokio::process::Command;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal the scheduler sends to a worker's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kill {
    /// Asks the worker to stop (it may clean up).
    Term,
    /// Ends it at once.
    Now,
}

/// Sends `kill` to the process group led by `pid` (a worker started with [`own_group`]).
pub(crate) fn signal_group(pid: i32, kill: Kill) {
    let sig = match kill {
        Kill::Term => libc::SIGTERM,
        Kill::Now => libc::SIGKILL,
    };
    if pid > 0 {
        // SAFETY: signalling a process group we created (the worker is its leader).
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// Runs the child in its own process group (so a stop reaches everything it started) and has
/// the kernel send it `on_parent_death` if this process dies (kill -9), so no orphan keeps
/// training after its scheduler is gone.
pub(crate) fn own_group(cmd: &mut Command, on_parent_death: Kill) {
    let sig = match on_parent_death {
        Kill::Term => libc::SIGTERM,
        Kill::Now => libc::SIGKILL,
    };
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong);
            Ok(())
        });
    }
}

/// The child ignores SIGTERM, SIGINT and SIGUSR2: in a SLURM task those are meant for the task
/// (preemption, `scancel`, the time limit near), which gives the cells back first and then
/// kills the worker itself. Otherwise the worker could die first and its cells be taken for
/// crashed ones (an attempt charged for a preemption).
pub(crate) fn ignore_stop_signals(cmd: &mut Command) {
    // SAFETY: signal() with SIG_IGN is async-signal-safe; ignored dispositions survive exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR2] {
                libc::signal(sig, libc::SIG_IGN);
            }
            Ok(())
        });
    }
}

/// Why a stop was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Interrupt,
    Terminate,
    /// SIGUSR2: SLURM's `--signal=B:USR2@N`, the time limit is near.
    TimeLimit,
}

/// The stop signals a scheduler process listens to. Install them before anything that must not
/// be cut short by one (a claim in the store).
pub(crate) struct StopSignals {
    int: Signal,
    term: Signal,
    usr2: Option<Signal>,
}

impl StopSignals {
    pub(crate) fn new(time_limit: bool) -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            usr2: if time_limit {
                Some(signal(SignalKind::user_defined2())?)
            } else {
                None
            },
        })
    }

    pub(crate) async fn recv(&mut self) -> Stop {
        let usr2 = async {
            match &mut self.usr2 {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => Stop::Interrupt,
            _ = self.term.recv() => Stop::Terminate,
            _ = usr2 => Stop::TimeLimit,
        }
    }
}

/// The exit code of a worker, `None` when a signal ended it.
pub(crate) fn exit_code(status: &ExitStatus) -> Option<i32> {
    status.code().filter(|_| status.signal().is_none())
}

/// Ends the process at once, without running exit handlers: a worker whose child may still be
/// inside libtorch must not run libtorch's static destructors under it.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    // SAFETY: _exit only ends the process; nothing after it runs.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(code)
    }
}
