//! The memory-aware default for `cells_per_device` on GPUs: the first worker on each GPU runs
//! alone while the GPU's memory is sampled; the GPU's other slots open from its peak.

use crate::devices::SlotDevice;
use crate::memfit::{cells_that_fit, GpuMemory, MemoryFit};
use std::collections::{HashMap, HashSet};

/// A GPU whose first cell is running alone while its memory use is sampled.
pub(super) struct Probe {
    /// Memory in use before the first cell started (other processes).
    baseline_mib: u64,
    peak_mib: u64,
    total_mib: u64,
    /// Samples taken while a cell was running on the GPU.
    samples: u32,
    /// Samples taken after the worker reported its first training steps: its memory has
    /// reached its training peak by then, so two of them end the probe without waiting for the
    /// worker to finish.
    samples_training: u32,
    /// The worker reported training steps.
    training: bool,
}

/// Which slots may take cells now, and the GPUs still being measured.
pub(super) struct GpuFit {
    pub open: Vec<bool>,
    probes: HashMap<u32, Probe>,
}

impl GpuFit {
    pub(super) fn new(
        slots: &[SlotDevice],
        fit: Option<&MemoryFit>,
        memory: Option<&[GpuMemory]>,
    ) -> GpuFit {
        let mut probes = HashMap::new();
        if fit.is_none() {
            return GpuFit {
                open: vec![true; slots.len()],
                probes,
            };
        }
        let mut seen = HashSet::new();
        let open = slots
            .iter()
            .map(|s| match s {
                SlotDevice::Cpu => true,
                SlotDevice::Gpu(g) => {
                    if let Some(m) = memory.and_then(|m| m.iter().find(|m| m.index == *g)) {
                        probes.entry(*g).or_insert(Probe {
                            baseline_mib: m.used_mib,
                            peak_mib: m.used_mib,
                            total_mib: m.total_mib,
                            samples: 0,
                            samples_training: 0,
                            training: false,
                        });
                    }
                    seen.insert(s.clone())
                }
                // nvidia-smi's memory figures name GPUs by index: a GPU named by its UUID
                // keeps one slot.
                SlotDevice::Named(_) => seen.insert(s.clone()),
            })
            .collect();
        GpuFit { open, probes }
    }

    pub(super) fn probing(&self) -> bool {
        !self.probes.is_empty()
    }

    /// GPU `g`'s worker reported training steps.
    pub(super) fn training(&mut self, g: u32) {
        if let Some(p) = self.probes.get_mut(&g) {
            p.training = true;
        }
    }

    /// Takes one memory sample; returns the GPUs measured enough (two samples in training).
    pub(super) fn sample(&mut self, now: &[GpuMemory], busy: impl Fn(u32) -> bool) -> Vec<u32> {
        for m in now {
            if let (Some(p), true) = (self.probes.get_mut(&m.index), busy(m.index)) {
                p.peak_mib = p.peak_mib.max(m.used_mib);
                p.samples += 1;
                p.samples_training += u32::from(p.training);
            }
        }
        self.probes
            .iter()
            .filter(|(_, p)| p.samples_training >= 2)
            .map(|(g, _)| *g)
            .collect()
    }

    /// Whether GPU `g` is measured and has samples (a whole run's peak once a cell finished).
    pub(super) fn sampled(&self, g: u32) -> bool {
        self.probes.get(&g).is_some_and(|p| p.samples > 0)
    }

    /// Opens as many slots on GPU `g` as its probe's peak allows, ends the probe, and returns
    /// the line that says so.
    pub(super) fn open_fitted(
        &mut self,
        g: u32,
        fit: &MemoryFit,
        slots: &[SlotDevice],
        training_only: bool,
    ) -> Option<String> {
        let p = self.probes.remove(&g)?;
        // A peak seen during training only: 10 % headroom for the evaluation and the end.
        let seen = if training_only {
            "training"
        } else {
            "a whole run"
        };
        let peak = if training_only {
            p.baseline_mib + (p.peak_mib.saturating_sub(p.baseline_mib) as f64 * 1.1) as u64
        } else {
            p.peak_mib
        };
        let n = cells_that_fit(p.total_mib, p.baseline_mib, peak, fit);
        let mine = (0..slots.len()).filter(|&j| slots[j] == SlotDevice::Gpu(g));
        for j in mine.take(n) {
            self.open[j] = true;
        }
        Some(format!(
            "gpu{g}: one worker peaked at {} MiB ({seen}; of {} MiB; {} MiB held by others) → {n} worker(s) at a time on gpu{g}",
            p.peak_mib - p.baseline_mib, p.total_mib, p.baseline_mib
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOTS: [SlotDevice; 5] = [
        SlotDevice::Gpu(0),
        SlotDevice::Gpu(1),
        SlotDevice::Gpu(0),
        SlotDevice::Gpu(1),
        SlotDevice::Cpu,
    ];

    #[test]
    fn memory_fit_opens_one_slot_per_gpu_and_probes_each_gpu() {
        let mem = [
            GpuMemory {
                index: 0,
                used_mib: 10,
                total_mib: 1000,
            },
            GpuMemory {
                index: 1,
                used_mib: 20,
                total_mib: 2000,
            },
        ];
        let fit = GpuFit::new(&SLOTS, Some(&MemoryFit::default()), Some(&mem));
        assert_eq!(fit.open, vec![true, true, false, false, true]);
        assert_eq!(fit.probes.len(), 2);
        assert_eq!(
            (fit.probes[&1].baseline_mib, fit.probes[&1].total_mib),
            (20, 2000)
        );
    }

    #[test]
    fn without_memory_figures_each_gpu_keeps_one_slot() {
        let fit = GpuFit::new(&SLOTS, Some(&MemoryFit::default()), None);
        assert_eq!(fit.open, vec![true, true, false, false, true]);
        assert!(
            fit.probes.is_empty(),
            "nothing to measure: the extra slots never open"
        );
    }

    #[test]
    fn an_explicit_cells_per_device_opens_every_slot() {
        let fit = GpuFit::new(&SLOTS, None, None);
        assert_eq!(fit.open, vec![true; 5]);
        assert!(fit.probes.is_empty());
    }
}
