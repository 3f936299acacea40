//! Which devices the workers run on, and how many at a time.

use etagrid_spec::DeviceChoice;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SlotDevice {
    Cpu,
    /// A physical GPU id, exported to the worker as `CUDA_VISIBLE_DEVICES`.
    Gpu(u32),
    /// A GPU or MIG instance named by its UUID as `CUDA_VISIBLE_DEVICES` gave it (`GPU-…`,
    /// `MIG-…`): passed to the worker as it is.
    Named(String),
}

impl SlotDevice {
    /// The worker's `CUDA_VISIBLE_DEVICES`; `None` on the CPU.
    pub fn cuda_visible_devices(&self) -> Option<String> {
        match self {
            SlotDevice::Cpu => None,
            SlotDevice::Gpu(i) => Some(i.to_string()),
            SlotDevice::Named(n) => Some(n.clone()),
        }
    }

    pub fn is_gpu(&self) -> bool {
        !matches!(self, SlotDevice::Cpu)
    }
}

impl fmt::Display for SlotDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotDevice::Cpu => f.write_str("cpu"),
            SlotDevice::Gpu(i) => write!(f, "gpu{i}"),
            SlotDevice::Named(n) => f.write_str(n),
        }
    }
}

/// The GPUs a `CUDA_VISIBLE_DEVICES` value names: indices, and `GPU-…`/`MIG-…` UUIDs kept as
/// names. As CUDA does, the list ends at the first entry that is neither ("-1", "NoDevFiles").
pub fn parse_visible_devices(value: &str) -> Vec<SlotDevice> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map_while(|s| match s.parse::<u32>() {
            Ok(i) => Some(SlotDevice::Gpu(i)),
            Err(_) if s.starts_with("GPU-") || s.starts_with("MIG-") => {
                Some(SlotDevice::Named(s.to_owned()))
            }
            Err(_) => None,
        })
        .collect()
}

/// The GPUs this process may use: `CUDA_VISIBLE_DEVICES` when set (an empty value means none),
/// else what `nvidia-smi` lists, else none.
pub fn discover_gpus() -> Vec<SlotDevice> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return parse_visible_devices(&v);
    }
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok().map(SlotDevice::Gpu))
            .collect(),
        _ => Vec::new(),
    }
}

/// What to say when `devices = "auto"` found no GPU although `CUDA_VISIBLE_DEVICES` is set to
/// something: it names no GPU etagrid can use, and running on the CPU must not go unnoticed.
pub fn cpu_fallback_warning(cuda_visible_devices: Option<&str>) -> Option<String> {
    let v = cuda_visible_devices?.trim();
    (!v.is_empty() && parse_visible_devices(v).is_empty()).then(|| {
        format!(
            "warning: CUDA_VISIBLE_DEVICES={v:?} names no GPU etagrid can use (expected indices \
             like \"0,1\" or GPU-…/MIG-… UUIDs): devices = \"auto\" runs on the CPU"
        )
    })
}

/// One entry per concurrent worker. `auto` uses every visible GPU, or the CPU when there is none.
/// On the CPU the default is one cell at a time (libtorch already uses every core for one).
pub fn plan_slots(
    choice: &DeviceChoice,
    cells_per_device: Option<usize>,
    gpus: &[SlotDevice],
) -> Vec<SlotDevice> {
    let devices: Vec<SlotDevice> = match choice {
        DeviceChoice::Cpu => vec![SlotDevice::Cpu],
        DeviceChoice::Gpus(ids) => ids.iter().map(|&i| SlotDevice::Gpu(i)).collect(),
        DeviceChoice::Auto if gpus.is_empty() => {
            let cvd = std::env::var("CUDA_VISIBLE_DEVICES").ok();
            if let Some(w) = cpu_fallback_warning(cvd.as_deref()) {
                eprintln!("{w}");
            }
            vec![SlotDevice::Cpu]
        }
        DeviceChoice::Auto => gpus.to_vec(),
    };
    let per = cells_per_device.unwrap_or(1).max(1);
    // Round-robin over devices so the first cells spread across GPUs.
    (0..per).flat_map(|_| devices.iter().cloned()).collect()
}

/// The GPUs SLURM granted the task this process runs in, decided inside the task from what
/// SLURM set there (not from the submission's flags: `--gres none --gpus=1` grants a GPU too):
/// `CUDA_VISIBLE_DEVICES` (SLURM's own, already relative to the task's cgroup), else
/// `SLURM_STEP_GPUS`, else `SLURM_JOB_GPUS`. `None`: no GPU, train on the CPU. `env` reads a
/// variable (`std::env::var` in the task).
pub fn granted_gpus(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    ["CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"]
        .iter()
        .filter_map(|k| env(k))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .filter(|v| !parse_visible_devices(v).is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_without_gpus_runs_on_the_cpu() {
        assert_eq!(
            plan_slots(&DeviceChoice::Auto, None, &[]),
            vec![SlotDevice::Cpu]
        );
    }

    #[test]
    fn slots_interleave_devices() {
        assert_eq!(
            plan_slots(
                &DeviceChoice::Auto,
                Some(2),
                &[SlotDevice::Gpu(0), SlotDevice::Gpu(3)]
            ),
            vec![
                SlotDevice::Gpu(0),
                SlotDevice::Gpu(3),
                SlotDevice::Gpu(0),
                SlotDevice::Gpu(3)
            ]
        );
    }

    #[test]
    fn explicit_cpu_ignores_gpus() {
        assert_eq!(
            plan_slots(&DeviceChoice::Cpu, Some(2), &[SlotDevice::Gpu(0)]),
            vec![SlotDevice::Cpu, SlotDevice::Cpu]
        );
    }

    #[test]
    fn gpu_and_mig_uuids_are_kept_as_names_and_passed_through() {
        let uuid = "GPU-8f1c2d3e-0000-1111-2222-333344445555";
        let mig = "MIG-4a5b6c7d-8888-9999-aaaa-bbbbccccdddd";
        let gpus = parse_visible_devices(&format!("{uuid}, {mig}"));
        assert_eq!(
            gpus,
            vec![
                SlotDevice::Named(uuid.into()),
                SlotDevice::Named(mig.into())
            ]
        );
        assert_eq!(gpus[1].cuda_visible_devices().as_deref(), Some(mig));
        assert_eq!(gpus[0].to_string(), uuid);
        // auto uses them: no fall-back to the CPU.
        assert_eq!(plan_slots(&DeviceChoice::Auto, None, &gpus), gpus);
        assert_eq!(
            parse_visible_devices("0,2"),
            vec![SlotDevice::Gpu(0), SlotDevice::Gpu(2)]
        );
    }

    #[test]
    fn visible_devices_stop_at_the_first_invalid_entry_as_cuda_does() {
        assert_eq!(parse_visible_devices("1,-1,2"), vec![SlotDevice::Gpu(1)]);
        assert!(parse_visible_devices("-1").is_empty());
        assert!(parse_visible_devices("").is_empty());
    }

    #[test]
    fn auto_on_the_cpu_says_so_when_cuda_visible_devices_names_nothing_usable() {
        let w = cpu_fallback_warning(Some("NoDevFiles")).expect("a warning");
        assert!(
            w.contains("NoDevFiles") && w.contains("runs on the CPU"),
            "{w}"
        );
        assert!(cpu_fallback_warning(Some("-1")).is_some());
        // Unset or empty means "no GPU" on purpose: nothing to say.
        assert_eq!(cpu_fallback_warning(None), None);
        assert_eq!(cpu_fallback_warning(Some(" ")), None);
        assert_eq!(cpu_fallback_warning(Some("GPU-1234")), None);
    }

    #[test]
    fn a_slurm_tasks_gpu_comes_from_what_slurm_set_in_the_task() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        // `--gres none --sbatch-arg=--gpus=1`: SLURM still sets the task's GPU.
        assert_eq!(
            granted_gpus(&env(&[("CUDA_VISIBLE_DEVICES", "0")])),
            Some("0".into())
        );
        assert_eq!(
            granted_gpus(&env(&[("SLURM_STEP_GPUS", "2,3")])),
            Some("2,3".into())
        );
        assert_eq!(
            granted_gpus(&env(&[
                ("SLURM_JOB_GPUS", "1"),
                ("CUDA_VISIBLE_DEVICES", "")
            ])),
            Some("1".into())
        );
        assert_eq!(
            granted_gpus(&env(&[("CUDA_VISIBLE_DEVICES", "MIG-abc")])),
            Some("MIG-abc".into())
        );
        // `--gres gpu:1` asked, nothing granted (or a CPU node): the CPU.
        assert_eq!(granted_gpus(&env(&[])), None);
        assert_eq!(
            granted_gpus(&env(&[("CUDA_VISIBLE_DEVICES", "NoDevFiles")])),
            None
        );
    }
}
