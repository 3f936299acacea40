//! Device selection. libtorch's CUDA backend lives in `libtorch_cuda.so`, which the linker drops
//! (no symbol of it is referenced), so it has to be loaded by hand before the first tch call.

use crate::TrainError;
use etagrid_spec::protocol::{JobDevice, WorkerJob};
use std::sync::OnceLock;
use tch::Device;

/// Loads libtorch's CUDA backend if it is installed; returns whether a GPU is usable.
pub fn init_cuda() -> bool {
    static CUDA: OnceLock<bool> = OnceLock::new();
    *CUDA.get_or_init(|| {
        // SAFETY: dlopen with a constant, NUL-terminated name; the handle is deliberately kept
        // open for the life of the process.
        #[allow(unsafe_code)]
        let handle = unsafe {
            libc::dlopen(
                c"libtorch_cuda.so".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_GLOBAL,
            )
        };
        !handle.is_null() && tch::Cuda::is_available()
    })
}

pub fn select(device: JobDevice) -> Result<Device, TrainError> {
    match device {
        JobDevice::Cpu => Ok(Device::Cpu),
        JobDevice::Cuda if init_cuda() => Ok(Device::Cuda(0)),
        JobDevice::Cuda => Err(TrainError::Device(format!(
            "a GPU was assigned (CUDA_VISIBLE_DEVICES={}) but libtorch sees no CUDA device: \
             check that libtorch_cuda.so is on LD_LIBRARY_PATH and the driver works",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
        ))),
    }
}

/// The device of a worker's job. The job's GPU (`cuda_visible_devices`) becomes this process's
/// `CUDA_VISIBLE_DEVICES` before CUDA starts, so the worker trains where the job says and not
/// wherever its environment points; a job without one keeps the environment's.
pub fn select_job(job: &WorkerJob) -> Result<Device, TrainError> {
    if let (JobDevice::Cuda, Some(v)) = (job.device, &job.cuda_visible_devices) {
        std::env::set_var("CUDA_VISIBLE_DEVICES", v);
    }
    select(job.device)
}

/// The current GPU's memory in use (by every process on it) and its size, in bytes, from the
/// CUDA runtime that libtorch loaded (`cudaMemGetInfo`, looked up at run time: this crate links
/// no CUDA library). `None` without a usable GPU or when the runtime has no such symbol.
/// libtorch's caching allocator keeps what it reserved, so after a step the figure includes the
/// step's peak.
pub fn cuda_memory_used() -> Option<(u64, u64)> {
    if !init_cuda() {
        return None;
    }
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: dlsym on the process's global scope with a constant, NUL-terminated name; the
    // symbol, when found, is the CUDA runtime's `cudaError_t cudaMemGetInfo(size_t*, size_t*)`,
    // called with two valid pointers on the thread that uses the GPU.
    #[allow(unsafe_code)]
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr());
        if sym.is_null() {
            return None;
        }
        let f: MemGetInfo = std::mem::transmute(sym);
        let (mut free, mut total) = (0usize, 0usize);
        (f(&mut free, &mut total) == 0).then(|| ((total - free) as u64, total as u64))
    }
}

pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!(
            "cuda:{i} (CUDA_VISIBLE_DEVICES={})",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
        ),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etagrid_spec::SweepSpec;

    /// The worker makes the GPU its job names visible, whatever its environment says: on a
    /// machine without CUDA the error names the job's device (a `MIG-…` id, kept as it is).
    #[test]
    fn the_worker_uses_the_gpu_its_job_names_not_its_environments() {
        if init_cuda() {
            return; // a real GPU here: the device would be found; the CPU-only case is checked
        }
        let toml =
            "name = \"s\"\n[model]\npath = \"m\"\n[task]\ntrain = \"t.csv\"\neval = \"e.csv\"\n\
                    [train]\nsteps = 1\n[grid]\nlr_a = [1e-3]\nlr_b = [1e-3]\n";
        let spec = SweepSpec::parse(std::path::Path::new("s.toml"), toml).expect("spec");
        let cell = spec.cells().remove(0);
        let mut job = WorkerJob {
            protocol: etagrid_spec::protocol::PROTOCOL_VERSION,
            sweep: spec.name.clone(),
            cell_id: cell.id,
            config: cell.config,
            model_dir: "m".into(),
            out_dir: "o".into(),
            device: JobDevice::Cuda,
            cuda_visible_devices: Some("MIG-4a5b6c7d".into()),
            threads: 1,
            save_adapter: false,
            cache_dir: None,
            pack: Vec::new(),
            segment: None,
        };
        std::env::set_var("CUDA_VISIBLE_DEVICES", "7");
        let err = select_job(&job).expect_err("no CUDA here").to_string();
        assert!(err.contains("CUDA_VISIBLE_DEVICES=MIG-4a5b6c7d"), "{err}");
        job.device = JobDevice::Cpu;
        assert_eq!(select_job(&job).expect("cpu"), Device::Cpu);
    }
}
