//! Submitting one job array: its task files (task i trains pack i), its batch script, `sbatch`.

use super::squeue::command_env;
use super::SlurmOptions;
use crate::error::io_err;
use crate::job::{self, JobSettings};
use crate::SchedError;
use etagrid_spec::protocol::{JobDevice, Segment};
use etagrid_spec::{CellConfig, PackSize, SweepSpec};
use etagrid_store::{unix_now, SlurmTask, StoreUrl};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cells of one array task: one, or a pack.
pub(super) type TaskCells = Vec<(String, CellConfig)>;

/// Writes the job files and batch script of one array, submits it and returns its tasks (one
/// row per cell: the cells of a pack share their task).
pub(super) async fn submit_array(
    spec: &SweepSpec,
    opts: &SlurmOptions,
    packs: &[TaskCells],
    segment: Option<Segment>,
) -> Result<Vec<SlurmTask>, SchedError> {
    let dir = submission_dir(spec, opts)?;
    write_task_files(spec, opts, &dir, packs, segment)?;
    let script = write_script(spec, opts, &dir)?;
    let args = sbatch_args(spec, opts, &dir, &script, packs.len());
    let job_id = sbatch(opts, &args).await?;
    Ok(packs
        .iter()
        .enumerate()
        .flat_map(|(i, pack)| {
            let job_id = &job_id;
            pack.iter().map(move |(cell_id, _)| SlurmTask {
                job_id: job_id.clone(),
                array_index: i as i64,
                cell_id: cell_id.clone(),
            })
        })
        .collect())
}

/// A fresh directory per submission: task files of live arrays are never rewritten.
fn submission_dir(spec: &SweepSpec, opts: &SlurmOptions) -> Result<PathBuf, SchedError> {
    let base = opts.state_dir.join("slurm").join(&spec.name);
    std::fs::create_dir_all(&base).map_err(io_err("create directory", &base))?;
    let mut n = 0;
    loop {
        let d = base.join(format!("{}-{n}", unix_now()));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(io_err("create directory", &d)(e)),
        }
    }
}

/// `task-<i>.json`: the job of pack i, training `segment` of its cells' budget (a halving
/// rung) or all of it. Its device is the CPU until the task knows what SLURM granted it (the
/// task writes the job it runs with its device).
fn write_task_files(
    spec: &SweepSpec,
    opts: &SlurmOptions,
    dir: &Path,
    packs: &[TaskCells],
    segment: Option<Segment>,
) -> Result<(), SchedError> {
    let settings = JobSettings {
        device: JobDevice::Cpu,
        cuda_visible_devices: None,
        threads: opts.cpus_per_task.max(1),
        save_adapter: opts.save_adapters,
        segment,
    };
    for (i, pack) in packs.iter().enumerate() {
        let p = dir.join(format!("task-{i}.json"));
        let job = job::pack_job(spec, &opts.state_dir, pack, &settings).ok_or_else(|| {
            io_err("write job file (no cell) to", &p)(std::io::ErrorKind::InvalidInput.into())
        })?;
        job::write_job(&p, &job)?;
    }
    Ok(())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn write_script(spec: &SweepSpec, opts: &SlurmOptions, dir: &Path) -> Result<PathBuf, SchedError> {
    let mut worker = vec![sh_quote(&opts.program.to_string_lossy())];
    worker.extend(opts.global_args.iter().map(|a| sh_quote(a)));
    let script = format!(
        "#!/bin/bash\n# Written by `etagrid run --backend slurm` for sweep {name}: task i runs task-i.json.\n\
         # exec: SLURM's signals (--signal=B:USR2, SIGTERM on preemption) must reach the worker.\n\
         exec {worker} worker --job {dir}/task-\"$SLURM_ARRAY_TASK_ID\".json --lease {lease} --max-attempts {max}{measure}\n",
        name = spec.name,
        worker = worker.join(" "),
        dir = sh_quote(&dir.to_string_lossy()),
        lease = opts.lease.as_secs().max(3),
        max = spec.max_attempts,
        // `auto` on GPU tasks: each task measures its GPU before it trains its pack.
        measure = if opts.cells_per_worker == PackSize::Auto && opts.gpu_requested() {
            " --measure-pack"
        } else {
            ""
        },
    );
    let path = dir.join("job.sh");
    std::fs::write(&path, script).map_err(io_err("write batch script", &path))?;
    Ok(path)
}

fn sbatch_args(
    spec: &SweepSpec,
    opts: &SlurmOptions,
    dir: &Path,
    script: &Path,
    tasks: usize,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--parsable".into(),
        format!(
            "--array=0-{}{}",
            tasks - 1,
            opts.max_concurrent
                .map(|k| format!("%{k}"))
                .unwrap_or_default()
        ),
        format!("--job-name=etagrid-{}", spec.name),
        "--requeue".into(),
        "--open-mode=append".into(),
        format!("--signal=B:USR2@{}", opts.signal_before.as_secs()),
        format!("--output={}/slurm-%A_%a.out", dir.display()),
        format!("--cpus-per-task={}", opts.cpus_per_task.max(1)),
    ];
    args.extend(opts.partition.iter().map(|p| format!("--partition={p}")));
    args.extend(opts.gres.iter().map(|g| format!("--gres={g}")));
    args.extend(opts.time.iter().map(|t| format!("--time={t}")));
    args.extend(opts.mem.iter().map(|m| format!("--mem={m}")));
    args.extend(opts.extra_args.iter().cloned());
    args.push(script.to_string_lossy().into_owned());
    args
}

/// Runs `sbatch` and returns the job id. Transient controller trouble (timeouts) is retried
/// with back-off; anything else (a bad partition, impossible resources) is permanent and
/// reported as SLURM said it.
async fn sbatch(opts: &SlurmOptions, args: &[String]) -> Result<String, SchedError> {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let db_env = match &opts.store {
        StoreUrl::Sqlite(p) => p.to_string_lossy().into_owned(),
        StoreUrl::Postgres(u) => u.clone(),
    };
    let mut delay = Duration::from_secs(1);
    let out = loop {
        // sbatch exports its environment to the tasks (`--export=ALL`, SLURM's default).
        match command_env("sbatch", &argv, &[("ETAGRID_DB", &db_env)]).await {
            Ok(out) => break out,
            Err(e)
                if delay < Duration::from_secs(30)
                    && (e.contains("timed out") || e.contains("Unable to contact")) =>
            {
                eprintln!("sbatch: {e}; retrying in {} s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                return Err(SchedError::Slurm(format!(
                    "could not submit the job array: {e}"
                )))
            }
        }
    };
    let job_id = out.trim().split(';').next().unwrap_or("").to_owned();
    if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit()) {
        return Err(SchedError::Slurm(format!(
            "sbatch --parsable printed {:?}, not a job id",
            out.trim()
        )));
    }
    Ok(job_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slurm::tests::opts;

    #[test]
    fn gpu_tasks_of_an_auto_pack_measure_it_and_no_others_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = crate::testing::sweep(2);
        let gpu_auto = opts(Some("gpu:1"), &[], Some(4));
        let fixed = SlurmOptions {
            cells_per_worker: PackSize::Fixed(4),
            ..opts(Some("gpu:1"), &[], Some(4))
        };
        for (o, measure) in [
            (gpu_auto, true),
            (opts(None, &["--gpus=1"], None), true),
            (fixed, false),
            (opts(None, &[], Some(4)), false),
        ] {
            let script = write_script(&spec, &o, dir.path()).expect("script");
            let text = std::fs::read_to_string(script).expect("read");
            assert_eq!(
                text.contains("--lease 120 --max-attempts 3 --measure-pack\n"),
                measure,
                "{text}"
            );
        }
    }
}
