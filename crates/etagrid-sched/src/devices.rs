//! Which devices the workers run on, and how many at a time.

use etagrid_spec::DeviceChoice;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotDevice {
    Cpu,
    /// A physical GPU id, exported to the worker as `CUDA_VISIBLE_DEVICES`.
    Gpu(u32),
}

impl fmt::Display for SlotDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotDevice::Cpu => f.write_str("cpu"),
            SlotDevice::Gpu(i) => write!(f, "gpu{i}"),
        }
    }
}

/// The GPUs this process may use: `CUDA_VISIBLE_DEVICES` when set (an empty value means none),
/// else what `nvidia-smi` lists, else none.
pub fn discover_gpus() -> Vec<u32> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    }
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// One entry per concurrent worker. `auto` uses every visible GPU, or the CPU when there is none.
/// On the CPU the default is one cell at a time (libtorch already uses every core for one).
pub fn plan_slots(
    choice: &DeviceChoice,
    cells_per_device: Option<usize>,
    gpus: &[u32],
) -> Vec<SlotDevice> {
    let devices: Vec<SlotDevice> = match choice {
        DeviceChoice::Cpu => vec![SlotDevice::Cpu],
        DeviceChoice::Gpus(ids) => ids.iter().map(|&i| SlotDevice::Gpu(i)).collect(),
        DeviceChoice::Auto if gpus.is_empty() => vec![SlotDevice::Cpu],
        DeviceChoice::Auto => gpus.iter().map(|&i| SlotDevice::Gpu(i)).collect(),
    };
    let per = cells_per_device.unwrap_or(1).max(1);
    // Round-robin over devices so the first cells spread across GPUs.
    (0..per).flat_map(|_| devices.iter().copied()).collect()
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
            plan_slots(&DeviceChoice::Auto, Some(2), &[0, 3]),
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
            plan_slots(&DeviceChoice::Cpu, Some(2), &[0]),
            vec![SlotDevice::Cpu, SlotDevice::Cpu]
        );
    }
}
