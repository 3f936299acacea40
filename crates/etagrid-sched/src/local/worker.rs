//! A local worker process: its job file, its start, and what the dispatcher keeps of it.

use super::RunOptions;
use crate::devices::SlotDevice;
use crate::events::{Pack, WorkerExit};
use crate::job::{self, JobSettings, WorkerMsg};
use crate::sys::{self, Kill};
use crate::SchedError;
use etagrid_spec::protocol::{JobDevice, Segment};
use etagrid_spec::{CellConfig, SweepSpec};
use etagrid_store::CellRow;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

/// A running worker and the cells (one, or a pack) it trains.
pub(super) struct Running {
    pub pack: Pack,
    /// The cells' rows as queued, to queue them again for a retry.
    pub rows: Vec<CellRow>,
    pub pid: i32,
    pub log: PathBuf,
    /// When the worker's `cell_timeout` runs out (the timeout times the pack's size).
    pub deadline: Option<TokioInstant>,
    pub timed_out: bool,
    /// After SIGTERM: when to send SIGKILL.
    pub kill_at: Option<TokioInstant>,
}

impl Running {
    /// SIGTERM now, SIGKILL after `grace` unless it is gone by then.
    pub(super) fn terminate(&mut self, grace: Duration) {
        sys::signal_group(self.pid, Kill::Term);
        self.kill_at.get_or_insert(TokioInstant::now() + grace);
    }

    pub(super) fn kill(&self) {
        sys::signal_group(self.pid, Kill::Now);
    }

    /// How the worker ended, for the cells it did not report on.
    pub(super) fn exit(
        &self,
        status: &std::io::Result<ExitStatus>,
        spec: &SweepSpec,
    ) -> WorkerExit {
        let input_error = status
            .as_ref()
            .is_ok_and(|s| s.code() == Some(crate::WORKER_INPUT_ERROR));
        let cause = if self.timed_out {
            let how = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("could not be waited for: {e}"),
            };
            format!(
                "timed out after {} ({how})",
                timeout(spec, self.pack.members.len())
            )
        } else {
            job::crash_cause(
                status,
                &format!("{}{}", self.log.display(), tail(&self.log)),
            )
        };
        WorkerExit { input_error, cause }
    }
}

/// A pack's timeout, as the lines say it: the cell timeout times the pack's size.
pub(super) fn timeout(spec: &SweepSpec, cells: usize) -> String {
    spec.cell_timeout
        .map(|t| format!("{} s", (t * cells as u32).as_secs()))
        .unwrap_or_default()
}

/// The last lines of a worker's log, to put the cause next to the failure.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = &lines[lines.len().saturating_sub(3)..];
    if last.is_empty() {
        String::new()
    } else {
        format!(": {}", last.join(" | "))
    }
}

/// What one worker trains and where.
pub(super) struct WorkerSpec<'a> {
    pub cells: &'a [(String, CellConfig)],
    pub device: &'a SlotDevice,
    pub slot: usize,
    /// The part of the cells' budget (a halving rung), `None`: all of it.
    pub segment: Option<Segment>,
}

/// Starts a worker for `w.cells` (one, or a pack) on slot `w.slot`: the job file and the
/// worker's log go into the first cell's directory, and every cell writes its files into its
/// own. Returns the pid and the log.
pub(super) fn spawn_worker(
    spec: &SweepSpec,
    opts: &RunOptions,
    w: &WorkerSpec,
    tx: mpsc::UnboundedSender<WorkerMsg>,
) -> Result<(i32, PathBuf), SchedError> {
    let (cells, device, slot) = (w.cells, w.device, w.slot);
    let settings = JobSettings {
        device: if device.is_gpu() {
            JobDevice::Cuda
        } else {
            JobDevice::Cpu
        },
        cuda_visible_devices: device.cuda_visible_devices(),
        threads: opts.threads_per_cell,
        save_adapter: opts.save_adapters,
        segment: w.segment,
    };
    let job = job::pack_job(spec, &opts.state_dir, cells, &settings).ok_or_else(|| {
        crate::error::io_err("start a worker for no cell in", &opts.state_dir)(
            std::io::Error::other("a worker needs at least one cell"),
        )
    })?;
    let job_path = job.out_dir.join("job.json");
    job::write_job(&job_path, &job)?;
    let log_path = job.out_dir.join("worker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(crate::error::io_err("open worker log", &log_path))?;

    let mut cmd = Command::new(&opts.worker.program);
    cmd.args(&opts.worker.args)
        .arg("--job")
        .arg(&job_path)
        // Also in the job file; kept in the environment for workers that read only it.
        .env(
            "CUDA_VISIBLE_DEVICES",
            device.cuda_visible_devices().unwrap_or_default(),
        )
        .env("ETAGRID_SLOT", slot.to_string())
        // GPU ids are nvidia-smi's (PCI order); CUDA's default order may differ on mixed nodes.
        .env(
            "CUDA_DEVICE_ORDER",
            std::env::var("CUDA_DEVICE_ORDER").unwrap_or_else(|_| "PCI_BUS_ID".into()),
        )
        .stderr(log);
    sys::own_group(&mut cmd, Kill::Term);
    let pid = job::start(cmd, slot, tx)
        .map_err(crate::error::io_err("start worker", &opts.worker.program))?;
    Ok((pid, log_path))
}
