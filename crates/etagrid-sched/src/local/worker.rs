//! A local worker process: its job file, its start, and what the dispatcher keeps of it.

use super::{RunOptions, WorkerCommand};
use crate::devices::SlotDevice;
use crate::events::{Pack, WorkerExit};
use crate::job::{self, JobSettings, WorkerMsg};
use crate::sys::{self, Kill};
use crate::SchedError;
use etagrid_spec::protocol::{JobDevice, MemoryProbe, Segment, WorkerJob};
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

/// The last lines of a worker's log before libtorch's backtrace (see [`before_backtrace`]), to
/// put the cause next to the failure, each cut at 600 characters (see [`short_line`]).
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = before_backtrace(&text)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let last: Vec<String> = lines[lines.len().saturating_sub(3)..]
        .iter()
        .map(|l| short_line(l))
        .collect();
    if last.is_empty() {
        String::new()
    } else {
        format!(": {}", last.join(" | "))
    }
}

/// `text` up to libtorch's C++ backtrace, which follows "Exception raised from": on lines of
/// its own in an error printed with `{:#}`, on the same line, its newlines written `\n`, in a
/// Rust panic's message. The log keeps it all.
fn before_backtrace(text: &str) -> &str {
    ["\\nException raised from", "\nException raised from"]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .map_or(text, |i| &text[..i])
}

/// A log line as a status line may quote it: cut at 600 characters.
fn short_line(line: &str) -> String {
    const MAX: usize = 600;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}… (the rest is in the log)", &line[..i]),
        None => line.to_owned(),
    }
}

/// Runs `etagrid-torch worker --probe-memory` on `cells` (the first cells of a pack key) on GPU
/// `device` and returns what it measured, or why there is no figure (the line to show).
pub(super) async fn probe_memory(
    spec: &SweepSpec,
    opts: &RunOptions,
    cells: &[(String, CellConfig)],
    device: &SlotDevice,
) -> Result<MemoryProbe, String> {
    let settings = JobSettings {
        device: JobDevice::Cuda,
        cuda_visible_devices: device.cuda_visible_devices(),
        threads: opts.threads_per_cell,
        save_adapter: false,
        segment: None,
    };
    let job = job::pack_job(spec, &opts.state_dir, cells, &settings)
        .ok_or_else(|| "no cell to measure".to_string())?;
    let limit = spec.cell_timeout.unwrap_or(Duration::from_secs(600));
    run_probe(&opts.worker, &job, limit).await
}

/// Runs `worker --job probe-job.json --probe-memory` on `job` (a pack of the cells to measure,
/// on the GPU its `cuda_visible_devices` names) and returns what it measured, or why there is
/// no figure (the line to show). The job file and the log, `probe.log`, go into the first
/// cell's directory; the probe writes nothing else. Used by the local dispatcher and by a SLURM
/// task sizing its own pack.
pub(crate) async fn run_probe(
    worker: &WorkerCommand,
    job: &WorkerJob,
    limit: Duration,
) -> Result<MemoryProbe, String> {
    std::fs::create_dir_all(&job.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", job.out_dir.display()))?;
    let job_path = job.out_dir.join("probe-job.json");
    job::write_job(&job_path, job).map_err(|e| e.to_string())?;
    let log_path = job.out_dir.join("probe.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&worker.program);
    cmd.args(&worker.args)
        .arg("--job")
        .arg(&job_path)
        .arg("--probe-memory")
        .env(
            "CUDA_VISIBLE_DEVICES",
            job.cuda_visible_devices.clone().unwrap_or_default(),
        )
        .env(
            "CUDA_DEVICE_ORDER",
            std::env::var("CUDA_DEVICE_ORDER").unwrap_or_else(|_| "PCI_BUS_ID".into()),
        )
        .stdin(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    // Its own process group, as a worker: a Ctrl-C at the terminal reaches the scheduler, which
    // lets the probe end; it dies with the scheduler.
    sys::own_group(&mut cmd, Kill::Now);
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Err(_) => return Err(format!("timed out after {} s", limit.as_secs())),
        Ok(Err(e)) => return Err(format!("could not start {}: {e}", worker.program.display())),
        Ok(Ok(out)) => out,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    match text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
    {
        Some(p) if out.status.success() => Ok(p),
        _ => Err(format!(
            "{} ({}{})",
            out.status,
            log_path.display(),
            tail(&log_path)
        )),
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

#[cfg(test)]
mod tests {
    use super::{before_backtrace, short_line};

    /// An error the worker printed with `{:#}`: libtorch's backtrace on lines of its own.
    #[test]
    fn a_logs_tail_stops_before_libtorchs_backtrace_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("probe.log");
        std::fs::write(
            &log,
            "etagrid worker: sweep s\nerror: CUDA out of memory. Tried to allocate 8.33 GiB\n\
             Exception raised from malloc at CUDACachingAllocator.cpp:1574:\n\
             frame #0: c10::Error::Error() + 0x9d\nframe #1: <unknown function> + 0x4434a\n",
        )
        .expect("log");
        let t = super::tail(&log);
        assert!(t.ends_with("Tried to allocate 8.33 GiB"), "{t}");
        assert!(!t.contains("frame #"), "{t}");
    }

    /// A CUDA out-of-memory panic, as a worker's log has it: one line, ending in libtorch's
    /// C++ backtrace with its newlines escaped.
    #[test]
    fn a_quoted_log_line_keeps_libtorchs_message_without_its_backtrace() {
        let oom = r#"called `Result::unwrap()` on an `Err` value: Torch("CUDA out of memory. Tried to allocate 8.33 GiB. GPU 0 has a total capacity of 139.80 GiB of which 4.27 GiB is free.\nException raised from malloc at /pytorch/c10/cuda/CUDACachingAllocator.cpp:1574 (most recent call first):\nframe #0: c10::Error::Error(c10::SourceLocation) + 0x9d")"#;
        let short = short_line(before_backtrace(oom));
        assert!(short.ends_with("4.27 GiB is free."), "{short}");
        assert!(!short.contains("frame #"), "{short}");
        let long = "x".repeat(2000);
        let cut = short_line(&long);
        assert!(cut.starts_with(&"x".repeat(600)) && cut.ends_with("(the rest is in the log)"));
        assert_eq!(cut.chars().filter(|&c| c == 'x').count(), 600);
        assert_eq!(short_line("plain line"), "plain line");
    }
}
