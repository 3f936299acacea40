//! A cell's checkpoint at a rung (successive halving): everything its training needs to go on
//! to the same numbers as a run that never stopped.
//!
//! `OUT_DIR/checkpoint-STEP/` holds `state.safetensors` (the cell's slice of every trainable
//! tensor — LoRA A and B, the head — and its AdamW moments `NAME.exp_avg`, `NAME.exp_avg_sq`) and
//! `state.json` (the step, AdamW's step count, the train-loss sums since the last log point).
//! The rest of the state is a function of the step: the batch order is replayed from the seed
//! (each seed's order is a pure function of the seed and the epoch), the learning-rate schedule
//! is a function of the step and the full budget, and the dropout masks are a function of the
//! cell's seed, the step and the site ([`crate::dropout`]).
//!
//! The directory is written under a temporary name and renamed into place, so a checkpoint is
//! there whole or not at all. Older checkpoints of the cell are removed when a segment resumes
//! from a newer one (the store has recorded the pause by then); the last one stays, so a segment
//! whose worker died after pausing can run again.

use crate::optim::LoraPlusAdamW;
use crate::TrainError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// What a checkpoint holds besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub cell_id: String,
    /// Steps trained.
    pub step: u64,
    /// The cell's full budget.
    pub total_steps: u64,
    /// AdamW's step count.
    pub adam_steps: i64,
    /// Train loss summed over the steps since the last log point, and their number.
    pub loss_sum: f64,
    pub loss_steps: u64,
    /// The mean train loss at the last log point (`None`: none yet).
    pub last_train_loss: Option<f64>,
}

/// `OUT_DIR/checkpoint-STEP`.
pub fn dir(out_dir: &Path, step: u64) -> PathBuf {
    out_dir.join(format!("checkpoint-{step}"))
}

fn io_error(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::Write {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Saves cell `i`'s slice of the pack's state into `OUT_DIR/checkpoint-STEP`, atomically.
pub fn save(
    out_dir: &Path,
    opt: &mut LoraPlusAdamW,
    i: i64,
    info: &CheckpointInfo,
) -> Result<(), TrainError> {
    let dst = dir(out_dir, info.step);
    let tmp = out_dir.join(format!(".checkpoint-{}.partial", info.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, [p, m, v]) in opt.state_mut() {
        let slice = |t: &Tensor| t.get(i).detach().to_device(Device::Cpu).contiguous();
        named.push((name.to_string(), slice(p)));
        named.push((format!("{name}.exp_avg"), slice(m)));
        named.push((format!("{name}.exp_avg_sq"), slice(v)));
    }
    let tensors = tmp.join("state.safetensors");
    Tensor::write_safetensors(&named, &tensors)?;
    let json = serde_json::to_vec_pretty(info).map_err(|source| TrainError::Serialize {
        what: "checkpoint state.json".into(),
        source,
    })?;
    let info_path = tmp.join("state.json");
    std::fs::write(&info_path, json).map_err(|e| io_error(&info_path, e))?;
    for f in [&tensors, &info_path] {
        std::fs::File::open(f)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(f, e))?;
    }
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| io_error(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| io_error(&dst, e))
}

/// Reads cell `i`'s checkpoint at `step` into slice `i` of the pack's state; returns its info.
pub fn load(
    out_dir: &Path,
    cell_id: &str,
    step: u64,
    opt: &mut LoraPlusAdamW,
    i: i64,
) -> Result<CheckpointInfo, TrainError> {
    let d = dir(out_dir, step);
    let missing = |what: String| {
        TrainError::Pack(format!(
            "cell {cell_id} cannot continue from step {step}: {what} (in {}); was the run \
             directory moved or cleaned while the sweep was paused between rungs?",
            d.display()
        ))
    };
    let info_path = d.join("state.json");
    let text = std::fs::read(&info_path)
        .map_err(|e| missing(format!("its checkpoint cannot be read ({e})")))?;
    let info: CheckpointInfo = serde_json::from_slice(&text)
        .map_err(|e| missing(format!("state.json is not a checkpoint ({e})")))?;
    if info.step != step || info.cell_id != cell_id {
        return Err(missing(format!(
            "state.json is cell {}'s at step {}",
            info.cell_id, info.step
        )));
    }
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(d.join("state.safetensors"))?
            .into_iter()
            .collect();
    for (name, [p, m, v]) in opt.state_mut() {
        for (key, t) in [
            (name.to_string(), p),
            (format!("{name}.exp_avg"), m),
            (format!("{name}.exp_avg_sq"), v),
        ] {
            let src = tensors
                .get(&key)
                .ok_or_else(|| missing(format!("the checkpoint has no tensor {key}")))?;
            tch::no_grad(|| t.get(i).f_copy_(src))?;
        }
    }
    Ok(info)
}

/// Removes the cell's checkpoints of steps before `step` (they will not be resumed from again).
pub fn remove_older(out_dir: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(entries) = std::fs::read_dir(out_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(s) = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if s < step {
            std::fs::remove_dir_all(e.path()).map_err(|err| io_error(&e.path(), err))?;
        }
    }
    Ok(())
}
