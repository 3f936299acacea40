//! The worker's side of the process boundary, as both backends use it: the job file (one cell
//! or a pack) and a started worker's lines read back as [`CellEvent`]s.

use crate::error::io_err;
use crate::SchedError;
use etagrid_spec::protocol::{CellEvent, JobDevice, PackedCell, Segment, WorkerJob};
use etagrid_spec::{CellConfig, CellId, SweepSpec};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Where a cell's files go: `<state>/cells/<sweep>/<cell>/`.
pub(crate) fn cell_dir(state_dir: &Path, sweep: &str, id: &str) -> PathBuf {
    state_dir.join("cells").join(sweep).join(id)
}

/// Where the job runs and how.
#[derive(Debug, Clone)]
pub(crate) struct JobSettings {
    pub device: JobDevice,
    /// The worker's `CUDA_VISIBLE_DEVICES` (see [`WorkerJob::cuda_visible_devices`]).
    pub cuda_visible_devices: Option<String>,
    pub threads: usize,
    pub save_adapter: bool,
    /// The part of the cells' budget to train (see [`WorkerJob::segment`]).
    pub segment: Option<Segment>,
}

/// The job of a worker training `cells` (one, or a pack: the first cell and the rest), each
/// cell writing into its own directory under `state_dir`.
pub(crate) fn pack_job(
    spec: &SweepSpec,
    state_dir: &Path,
    cells: &[(String, CellConfig)],
    settings: &JobSettings,
) -> Option<WorkerJob> {
    let ((first_id, first), rest) = cells.split_first()?;
    let dir = |id: &str| cell_dir(state_dir, &spec.name, id);
    Some(WorkerJob {
        protocol: etagrid_spec::protocol::PROTOCOL_VERSION,
        sweep: spec.name.clone(),
        cell_id: CellId(first_id.clone()),
        config: first.clone(),
        model_dir: spec.model.dir.clone(),
        out_dir: dir(first_id),
        device: settings.device,
        cuda_visible_devices: settings.cuda_visible_devices.clone(),
        threads: settings.threads,
        save_adapter: settings.save_adapter,
        cache_dir: Some(state_dir.join("cache")),
        pack: rest
            .iter()
            .map(|(id, config)| PackedCell {
                cell_id: CellId(id.clone()),
                config: config.clone(),
                out_dir: dir(id),
            })
            .collect(),
        segment: settings.segment,
    })
}

/// Writes `job` to `path` (through a temporary file: a reader never sees half a job), after
/// creating every cell's directory.
pub(crate) fn write_job(path: &Path, job: &WorkerJob) -> Result<(), SchedError> {
    for c in job.cells() {
        std::fs::create_dir_all(&c.out_dir).map_err(io_err("create directory", &c.out_dir))?;
    }
    let text = serde_json::to_vec_pretty(job).map_err(|source| SchedError::Json {
        what: "encode job file",
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(io_err("write job file", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("write job file", path))
}

pub(crate) fn read_job(path: &Path) -> Result<WorkerJob, SchedError> {
    let bytes = std::fs::read(path).map_err(io_err("read job file", path))?;
    serde_json::from_slice(&bytes).map_err(|source| SchedError::Json {
        what: "parse job file",
        path: path.to_owned(),
        source,
    })
}

/// What a worker process reports to its scheduler: a line, or its end.
#[derive(Debug)]
pub(crate) enum WorkerMsg {
    Event(usize, CellEvent),
    Exited(usize, std::io::Result<ExitStatus>),
}

/// Starts `cmd` with its stdout piped and forwards its protocol lines, then its exit, to `tx`
/// tagged with `slot`. Returns its pid.
pub(crate) fn start(
    mut cmd: Command,
    slot: usize,
    tx: mpsc::UnboundedSender<WorkerMsg>,
) -> std::io::Result<i32> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let stdout = child.stdout.take();
    tokio::spawn(async move {
        if let Some(out) = stdout {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Anything that is not a protocol line (a library printing to stdout) is ignored.
                if let Ok(ev) = serde_json::from_str::<CellEvent>(&line) {
                    let _ = tx.send(WorkerMsg::Event(slot, ev));
                }
            }
        }
        let status = child.wait().await;
        let _ = tx.send(WorkerMsg::Exited(slot, status));
    });
    Ok(pid)
}

/// Why a worker ended without reporting a cell's end (a crash, a kill), with where to look.
pub(crate) fn crash_cause(status: &std::io::Result<ExitStatus>, see: &str) -> String {
    let how = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("could not be waited for: {e}"),
    };
    format!("worker {how} without reporting a result; see {see}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_job_names_every_cell_its_own_directory_and_carries_the_gpu() {
        let spec = crate::testing::sweep(2);
        let cells: Vec<(String, CellConfig)> = spec
            .cells()
            .into_iter()
            .map(|c| (c.id.0, c.config))
            .collect();
        let settings = JobSettings {
            device: JobDevice::Cuda,
            cuda_visible_devices: Some("GPU-8f1c0000-aaaa".into()),
            threads: 2,
            save_adapter: true,
            segment: None,
        };
        let job = pack_job(&spec, Path::new("/st"), &cells, &settings).expect("job");
        assert_eq!(job.cells().len(), 2);
        assert_eq!(
            job.pack[0].out_dir,
            Path::new("/st/cells/s").join(&cells[1].0)
        );
        assert_eq!(
            job.cuda_visible_devices.as_deref(),
            Some("GPU-8f1c0000-aaaa")
        );
        assert!(pack_job(&spec, Path::new("/st"), &[], &settings).is_none());

        let dir = tempfile::tempdir().expect("tempdir");
        let job = WorkerJob {
            out_dir: dir.path().join("c0"),
            pack: Vec::new(),
            segment: None,
            ..job
        };
        let path = dir.path().join("job.json");
        write_job(&path, &job).expect("write");
        assert_eq!(read_job(&path).expect("read"), job);

        // A job file written before the field: no GPU named, the worker keeps its environment.
        let mut old = serde_json::to_value(&job).expect("json");
        old.as_object_mut()
            .expect("object")
            .remove("cuda_visible_devices");
        std::fs::write(&path, old.to_string()).expect("write old");
        let read = read_job(&path).expect("an old job file reads");
        assert_eq!(read.cuda_visible_devices, None);
        assert_eq!(read.device, JobDevice::Cuda);
    }
}
