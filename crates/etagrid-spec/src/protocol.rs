//! The scheduler ↔ worker protocol: a job file in, JSON lines out.
//!
//! The scheduler writes a [`WorkerJob`] as JSON and starts `etagrid worker --job FILE`; the worker
//! prints one [`WorkerEvent`] per line on stdout (its logs go to stderr) and exits. The last event
//! of a worker that ran to the end is `finished`, `diverged` or `failed`; a worker that exits
//! without one crashed. The scheduler is the only process that writes the store.
//!
//! A job may be a *pack*: K cells of one sweep trained in one process on one frozen base
//! ([`WorkerJob::pack`]). Its lines then name their cell ([`CellEvent`]: `{"cell": "…",
//! "event": …}`); a line without `cell` concerns every cell of the job (a pack that fails before
//! training, say). Each cell of a pack ends with its own terminal event.

use crate::cell::{CellConfig, CellId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerJob {
    pub sweep: String,
    pub cell_id: CellId,
    pub config: CellConfig,
    /// Resolved model directory.
    pub model_dir: PathBuf,
    /// Where the worker may write files for this cell.
    pub out_dir: PathBuf,
    pub device: JobDevice,
    /// With `device = "cuda"`: the GPU(s) the worker makes visible (`CUDA_VISIBLE_DEVICES`,
    /// set before CUDA starts) — an index, a `GPU-…` UUID or a `MIG-…` id, passed as given.
    /// `None`: the worker keeps the `CUDA_VISIBLE_DEVICES` it inherited (job files written
    /// before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_visible_devices: Option<String>,
    /// CPU threads for libtorch's intra-op pool.
    pub threads: usize,
    /// Save the trained adapter (PEFT format) into `out_dir/adapter` when the cell finishes.
    #[serde(default = "yes")]
    pub save_adapter: bool,
    /// Tokenized data shared by the cells of a sweep (read or written by the worker).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Further cells trained in the same process on the same frozen base, after `cell_id`
    /// (a pack of `1 + pack.len()` cells). Their configurations differ from `config` only in
    /// η_A, η_B, the seed and the LoRA init scheme ([`CellConfig::pack_key`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pack: Vec<PackedCell>,
}

/// One more cell of a packed [`WorkerJob`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedCell {
    pub cell_id: CellId,
    pub config: CellConfig,
    /// Where the worker may write files for this cell.
    pub out_dir: PathBuf,
}

impl WorkerJob {
    /// Every cell of the job, its own first.
    pub fn cells(&self) -> Vec<PackedCell> {
        let mut cells = vec![PackedCell {
            cell_id: self.cell_id.clone(),
            config: self.config.clone(),
            out_dir: self.out_dir.clone(),
        }];
        cells.extend(self.pack.iter().cloned());
        cells
    }
}

/// A worker's output line: an event and, for the lines of a pack, the cell it concerns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellEvent {
    /// `None`: the line concerns every cell of the job (and a one-cell job's lines need none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<CellId>,
    #[serde(flatten)]
    pub event: WorkerEvent,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobDevice {
    Cpu,
    /// The GPU the scheduler exported as `CUDA_VISIBLE_DEVICES` (seen by the worker as cuda:0).
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    Started {
        device: String,
        total_steps: u64,
        train_examples: usize,
        eval_examples: usize,
        trainable_params: u64,
        groups: Vec<ParamGroupInfo>,
        /// The class labels in class-id order (also written to `labels.json` in the cell's
        /// `out_dir`). Absent from older workers' lines.
        #[serde(default)]
        labels: Vec<String>,
    },
    /// Mean train loss over the last `log_every` steps.
    Train {
        step: u64,
        total_steps: u64,
        loss: f64,
        lr_a: f64,
        lr_b: f64,
    },
    Eval {
        step: u64,
        loss: f64,
        accuracy: f64,
        /// Absent from older workers' lines.
        #[serde(default)]
        macro_f1: Option<f64>,
        #[serde(default)]
        mcc: Option<f64>,
    },
    Finished {
        result: CellResult,
    },
    /// The loss became NaN or infinite: the cell stops and is recorded as diverged.
    Diverged {
        step: u64,
        /// Always NaN or ±infinity, which JSON numbers cannot hold: written as the string
        /// `"NaN"`, `"inf"` or `"-inf"` (a number or `null` is read too).
        #[serde(with = "non_finite")]
        loss: f64,
    },
    Failed {
        error: String,
    },
}

impl WorkerEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            WorkerEvent::Finished { .. }
                | WorkerEvent::Diverged { .. }
                | WorkerEvent::Failed { .. }
        )
    }
}

/// One LoRA+ optimizer parameter group as the worker built it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamGroupInfo {
    pub name: String,
    pub lr: f64,
    pub weight_decay: f64,
    pub members: usize,
    pub params: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// The sweep's metric (`[task] metric`) at the end.
    pub metric: f64,
    pub eval_loss: f64,
    pub accuracy: f64,
    /// Macro-averaged F1 at the end; `None` in lines of workers that predate it.
    #[serde(default)]
    pub macro_f1: Option<f64>,
    /// Matthews correlation coefficient (multi-class form) at the end; `None` in older lines.
    #[serde(default)]
    pub mcc: Option<f64>,
    /// Mean train loss over the last `log_every` steps.
    pub train_loss: f64,
    pub steps: u64,
    /// Wall time of the worker that trained the cell, start-up and evaluation included. A cell of
    /// a pack shares it with the other cells of the pack (see `pack_size`).
    pub wall_s: f64,
    pub train_samples_per_s: f64,
    /// How many cells trained together in the worker (1: alone). Absent from older lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_size: Option<u32>,
}

impl CellResult {
    /// The device time that is this cell's share: the worker's wall time over its pack's cells.
    pub fn device_seconds(&self) -> f64 {
        self.wall_s / f64::from(self.pack_size.unwrap_or(1).max(1))
    }
}

/// An `f64` that may be NaN or infinite. serde_json writes those as `null` and cannot read `null`
/// back as an `f64`, so a `diverged` line would be dropped by the reader and the cell taken for a
/// crashed worker.
mod non_finite {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
        Null(()),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(v),
            Repr::Null(()) => Ok(f64::NAN),
            Repr::Text(t) => match t.as_str() {
                "NaN" | "nan" => Ok(f64::NAN),
                "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
                "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                _ => Err(de::Error::invalid_value(
                    de::Unexpected::Str(&t),
                    &"a number, \"NaN\", \"inf\" or \"-inf\"",
                )),
            },
        }
    }
}
