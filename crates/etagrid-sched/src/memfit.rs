//! The memory-aware default for `cells_per_device`: when the sweep does not say how many cells
//! share a GPU, the first cell on each GPU runs alone while its memory is sampled; when it ends,
//! as many cells as its peak allows start on that GPU (up to a cap).

use std::process::Output;

/// How many cells may share one GPU when the sweep leaves `cells_per_device` unset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryFit {
    /// Never more than this many cells on one GPU (small models are launch-bound long before
    /// memory runs out; the CPU feeding each worker is the next limit).
    pub max_per_device: usize,
    /// The share of the GPU's memory that the cells may use together.
    pub usable_fraction: f64,
}

impl Default for MemoryFit {
    fn default() -> Self {
        MemoryFit {
            max_per_device: 8,
            usable_fraction: 0.9,
        }
    }
}

/// One GPU as `nvidia-smi` reports it, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    pub index: u32,
    pub used_mib: u64,
    pub total_mib: u64,
}

/// How many cells fit on a GPU of `total_mib` when one cell raised its use from `baseline_mib`
/// (what others held before it started) to `peak_mib`. At least one, at most `fit.max_per_device`.
pub fn cells_that_fit(total_mib: u64, baseline_mib: u64, peak_mib: u64, fit: &MemoryFit) -> usize {
    let per_cell = peak_mib.saturating_sub(baseline_mib).max(1) as f64;
    let free = (total_mib as f64 * fit.usable_fraction - baseline_mib as f64).max(0.0);
    ((free / per_cell).floor() as usize).clamp(1, fit.max_per_device.max(1))
}

/// Parses `nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits`.
pub fn parse_gpu_memory(text: &str) -> Vec<GpuMemory> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(',').map(str::trim);
            Some(GpuMemory {
                index: f.next()?.parse().ok()?,
                used_mib: f.next()?.parse().ok()?,
                total_mib: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

const QUERY: [&str; 2] = [
    "--query-gpu=index,memory.used,memory.total",
    "--format=csv,noheader,nounits",
];

fn parsed(out: std::io::Result<Output>) -> Option<Vec<GpuMemory>> {
    let out = out.ok().filter(|o| o.status.success())?;
    let gpus = parse_gpu_memory(&String::from_utf8_lossy(&out.stdout));
    (!gpus.is_empty()).then_some(gpus)
}

/// Every GPU's memory now, or `None` when `nvidia-smi` is missing, fails, or hangs (it can, when
/// a GPU falls off the bus): the scheduler's loop must never wait on it for long.
pub async fn gpu_memory() -> Option<Vec<GpuMemory>> {
    let mut cmd = tokio::process::Command::new("nvidia-smi");
    cmd.args(QUERY).kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(5), cmd.output()).await;
    parsed(out.ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_lines() {
        let text = "0, 1234, 143771\n1, 5, 143771\n\nnot a gpu line\n";
        assert_eq!(
            parse_gpu_memory(text),
            vec![
                GpuMemory {
                    index: 0,
                    used_mib: 1234,
                    total_mib: 143771
                },
                GpuMemory {
                    index: 1,
                    used_mib: 5,
                    total_mib: 143771
                },
            ]
        );
    }

    #[test]
    fn fit_divides_the_usable_memory_by_one_cells_peak() {
        let fit = MemoryFit {
            max_per_device: 64,
            usable_fraction: 0.9,
        };
        // 100 GiB card, nothing else on it, a cell that peaks at 10 GiB → 90 / 10 = 9.
        assert_eq!(cells_that_fit(102_400, 0, 10_240, &fit), 9);
        // Another process already holds 20 GiB: (92,160 − 20,480) / 10,240 = 7.
        assert_eq!(cells_that_fit(102_400, 20_480, 30_720, &fit), 7);
    }

    #[test]
    fn fit_is_at_least_one_and_at_most_the_cap() {
        let fit = MemoryFit {
            max_per_device: 8,
            usable_fraction: 0.9,
        };
        assert_eq!(
            cells_that_fit(102_400, 0, 200_000, &fit),
            1,
            "a cell bigger than the card"
        );
        assert_eq!(
            cells_that_fit(102_400, 0, 100, &fit),
            8,
            "tiny cells stop at the cap"
        );
        assert_eq!(
            cells_that_fit(102_400, 500, 500, &fit),
            8,
            "no measurable use"
        );
    }
}
