//! `etagrid-torch worker --probe-memory`: how much GPU memory a pack of a sweep's cells takes,
//! measured, for the scheduler's `auto` pack size. The probe sets up the job's cells exactly as
//! their worker would (same data, base, adapters, optimizer, batch shapes: on a GPU every step
//! is padded to the set's longest example), trains one step and evaluates the eval set's longest
//! batch, then reads the GPU's memory in use ([`device::cuda_memory_used`]). It writes no
//! labels, checkpoint or event (only the sweep's token cache, when it is not there yet, as any
//! worker would); the cells stay pending.
//!
//! The figures are memory libtorch *reserved*, which is what a worker needs of the GPU; blocks
//! freed while the model was built (weights converted, per-cell copies) stay reserved and may
//! hold part of the step, so the growth per cell can come out low. On MiniLM it came out 10 %
//! high (bench/RESULTS.md, 2026-12-01); the scheduler keeps 10 % of the GPU free besides.

use crate::data::Encoded;
use crate::pack::{evaluate_pack, Ctx, PackState, Setup, Span};
use crate::{device, TrainError};
use etagrid_spec::protocol::{MemoryProbe, WorkerJob};
use std::time::Instant;
use tch::Device;

const MIB: u64 = 1 << 20;

fn used_mib(device: Device) -> Result<(u64, u64), TrainError> {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    device::cuda_memory_used()
        .map(|(used, total)| (used / MIB, total / MIB))
        .ok_or_else(|| {
            TrainError::Device(
                "a memory probe needs a GPU whose CUDA runtime libtorch loaded \
                 (cudaMemGetInfo not found)"
                    .into(),
            )
        })
}

/// Measures `job`'s pack (its cells, on its GPU) as described in the module's documentation.
pub fn probe_memory(job: &WorkerJob) -> Result<MemoryProbe, TrainError> {
    if job.config.task.lm.is_some() {
        return Err(TrainError::Pack(
            "causal_lm cells are not packed: there is no pack size to measure".into(),
        ));
    }
    let device = device::select_job(job)?;
    if device == Device::Cpu {
        return Err(TrainError::Device(
            "a memory probe measures a GPU; this job runs on the CPU".into(),
        ));
    }
    // The CUDA context exists once the device was selected and a tensor made.
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, device));
    let (before_mib, _) = used_mib(device)?;
    let mut s = Setup::new(job)?;
    let (model_mib, _) = used_mib(device)?;
    let state_mib = s.opt.state_bytes().div_ceil(MIB);
    let k = s.cells.len();
    let ctx = Ctx::new(s.model.as_ref(), &s.data, device, k, false);
    let mut state = PackState::new(k, device, Instant::now());
    let one = Span {
        start: 0,
        stop: 1,
        total: s.total_steps,
    };
    ctx.train(
        &s.cells,
        &mut s.opt,
        &mut s.orders,
        &mut state,
        one,
        &mut |_, _| {},
    )?;
    evaluate_pack(
        s.model.as_ref(),
        &longest(&s.data.eval, 128),
        s.data.labels.labels.len().max(1),
        s.model.pad_token_id(),
        device,
        k,
    )?;
    let (peak_mib, total_mib) = used_mib(device)?;
    Ok(MemoryProbe {
        cells: k,
        before_mib,
        model_mib,
        state_mib,
        peak_mib,
        total_mib,
    })
}

/// The `n` longest examples of `data`: the evaluation's largest batch.
fn longest(data: &Encoded, n: usize) -> Encoded {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(data.ids[i].len()));
    order.truncate(n);
    Encoded {
        ids: order.iter().map(|&i| data.ids[i].clone()).collect(),
        type_ids: order.iter().map(|&i| data.type_ids[i].clone()).collect(),
        labels: order.iter().map(|&i| data.labels[i]).collect(),
        loss_from: Vec::new(),
    }
}
