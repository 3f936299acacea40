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
use crate::spec::Metric;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The version of this protocol, written into every job file. A worker refuses a job of a newer
/// version than its own (a scheduler and workers from different builds), by name, instead of
/// misreading it. 2: metrics as a map of their own keys ([`Metrics`]), no `labels` in `started`.
/// 3: segments of a cell ([`WorkerJob::segment`], the `paused` event).
pub const PROTOCOL_VERSION: u32 = 3;

fn protocol_v1() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerJob {
    /// [`PROTOCOL_VERSION`] of the scheduler that wrote the job; 1 for job files from before the
    /// field.
    #[serde(default = "protocol_v1")]
    pub protocol: u32,
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
    /// Train only a part of every cell's step budget (successive halving): `None` trains each
    /// cell from its start to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Segment>,
}

/// A part of a cell's training, given as fractions of its full step budget (the worker knows the
/// budget; [`fraction_step`] turns a fraction into a step). The learning-rate schedule is always
/// the one of the full budget: a cell paused at a rung is not a cell that finished early.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Continue from the checkpoint each cell saved when it paused at this fraction; `None`:
    /// start from the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<f64>,
    /// Stop at this fraction: evaluate, save a checkpoint and emit `paused`. `None` or 1.0:
    /// train to the end and finish as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_at: Option<f64>,
}

/// The step at which a fraction of a budget ends (the one definition, shared with the
/// halving policy and its replay).
pub use etagrid_search::fraction_step;

/// What `etagrid-torch worker --probe-memory` prints (one JSON line): the GPU memory in use, by
/// every process on the GPU, once the probe's base was loaded and after it trained one step and
/// evaluated one batch with `cells` cells. The scheduler sizes `auto` packs from it
/// ([`MemoryProbe::cells_that_fit`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MemoryProbe {
    pub cells: usize,
    /// In use before the probe loaded anything (its own CUDA context included).
    pub before_mib: u64,
    /// In use once the frozen base, the cells' adapters and the optimizer were on the GPU.
    pub model_mib: u64,
    /// Of `model_mib`, what belongs to the cells rather than the base: the optimizer's buffers
    /// (adapters, gradients, moments, rates) for all `cells` together.
    #[serde(default)]
    pub state_mib: u64,
    /// In use after one training step and one evaluation batch at the largest shapes (libtorch
    /// keeps what it reserved, so this is the step's peak).
    pub peak_mib: u64,
    pub total_mib: u64,
}

impl MemoryProbe {
    /// What one more cell of the pack adds (its optimizer state, its batch's activations and
    /// evaluation rows), at least 1 MiB.
    pub fn per_cell_mib(&self) -> u64 {
        let grown = self.peak_mib.saturating_sub(self.model_mib) + self.state_mib;
        (grown / self.cells.max(1) as u64).max(1)
    }

    /// What a pack worker holds whatever its cells: its frozen base (and what libtorch keeps
    /// for itself), in MiB.
    pub fn base_mib(&self) -> u64 {
        self.model_mib
            .saturating_sub(self.before_mib)
            .saturating_sub(self.state_mib)
    }

    /// How many cells one pack worker may train on this GPU when `workers` pack workers share
    /// it, keeping `usable` (e.g. 0.9) of its memory: each worker brings its own base
    /// ([`MemoryProbe::base_mib`]) and `per_cell_mib` per cell. At least 1 (a single cell that
    /// does not fit fails as it would unpacked).
    pub fn cells_that_fit(&self, usable: f64, workers: usize) -> usize {
        let w = workers.max(1) as f64;
        let base = self.base_mib() as f64;
        let room =
            self.total_mib as f64 * usable - (self.before_mib as f64 + base) - (w - 1.0) * base;
        ((room / w / self.per_cell_mib() as f64).floor().max(1.0)) as usize
    }
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
    /// An error naming both versions when the job was written by a newer scheduler.
    pub fn check_protocol(&self) -> Result<(), String> {
        if self.protocol > PROTOCOL_VERSION {
            return Err(format!(
                "the job file speaks worker protocol {}, but this worker knows only up to {}: \
                 run the scheduler and its workers from the same etagrid build",
                self.protocol, PROTOCOL_VERSION
            ));
        }
        Ok(())
    }

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
    },
    /// Mean train loss over the last `log_every` steps.
    Train {
        step: u64,
        total_steps: u64,
        #[serde(with = "non_finite")]
        loss: f64,
        lr_a: f64,
        lr_b: f64,
    },
    Eval {
        step: u64,
        #[serde(with = "non_finite")]
        loss: f64,
        /// Every other metric measured, each as its own key of the line (`"accuracy": 0.8`).
        #[serde(flatten)]
        metrics: Metrics,
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
        /// This cell's share of the worker's device time up to the divergence (the wall time
        /// over the pack's cells, as [`CellResult::device_seconds`]). Absent from older lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_s: Option<f64>,
    },
    Failed {
        error: String,
    },
    /// The cell reached the end of its segment ([`WorkerJob::segment`]) and saved a checkpoint
    /// to continue from; `result` is its evaluation there (`steps`: the step it paused at).
    Paused {
        result: CellResult,
    },
}

impl WorkerEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            WorkerEvent::Finished { .. }
                | WorkerEvent::Diverged { .. }
                | WorkerEvent::Failed { .. }
                | WorkerEvent::Paused { .. }
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
    /// The sweep's metric (`[task] metric`) at the end. This and the losses may be NaN (a
    /// metric the evaluation did not measure, a train loss before the first log point), written
    /// as the string `"NaN"` like every non-finite number of the protocol.
    #[serde(with = "non_finite")]
    pub metric: f64,
    #[serde(with = "non_finite")]
    pub eval_loss: f64,
    /// Every other metric at the end, each as its own key (`"accuracy": 0.8, "macro_f1": …`).
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Mean train loss over the last `log_every` steps.
    #[serde(with = "non_finite")]
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

/// What an evaluation measures besides its loss, classification and causal LM alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Measure {
    Accuracy,
    MacroF1,
    /// Matthews correlation coefficient (multi-class form).
    Mcc,
    /// exp(eval loss per response token), causal LM.
    Perplexity,
    /// The share of response tokens predicted right, causal LM.
    TokenAccuracy,
    /// Multiple-choice accuracy (`mc_eval`), causal LM.
    McAccuracy,
}

impl Measure {
    pub const ALL: [Measure; 6] = [
        Measure::Accuracy,
        Measure::MacroF1,
        Measure::Mcc,
        Measure::Perplexity,
        Measure::TokenAccuracy,
        Measure::McAccuracy,
    ];

    /// The key in a worker's line (and, prefixed with `eval_`, the name of its curve).
    pub fn name(self) -> &'static str {
        match self {
            Measure::Accuracy => "accuracy",
            Measure::MacroF1 => "macro_f1",
            Measure::Mcc => "mcc",
            Measure::Perplexity => "perplexity",
            Measure::TokenAccuracy => "token_accuracy",
            Measure::McAccuracy => "mc_accuracy",
        }
    }

    /// The name of its curve in the store (`eval_accuracy`, …).
    pub fn curve_name(self) -> &'static str {
        match self {
            Measure::Accuracy => "eval_accuracy",
            Measure::MacroF1 => "eval_macro_f1",
            Measure::Mcc => "eval_mcc",
            Measure::Perplexity => "eval_perplexity",
            Measure::TokenAccuracy => "eval_token_accuracy",
            Measure::McAccuracy => "eval_mc_accuracy",
        }
    }

    pub fn from_name(name: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// An evaluation's metrics besides the loss: a typed map, written as plain keys of the line it
/// is flattened into (`{"step": 10, "loss": 0.4, "accuracy": 0.8, "macro_f1": 0.7}`), so lines of
/// workers from before the map read the same. A key that is not a [`Measure`] (a newer worker's)
/// is skipped; `null` (older lines' absent F1) means absent; NaN and ±inf travel as strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(std::collections::BTreeMap<Measure, f64>);

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }
    pub fn with(mut self, m: Measure, v: f64) -> Metrics {
        self.0.insert(m, v);
        self
    }
    pub fn get(&self, m: Measure) -> Option<f64> {
        self.0.get(&m).copied()
    }
    pub fn iter(&self) -> impl Iterator<Item = (Measure, f64)> + '_ {
        self.0.iter().map(|(&m, &v)| (m, v))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of a sweep's `[task] metric`: `eval_loss` is the evaluation's loss, every other
    /// metric the key of the same name (NaN where the evaluation did not measure it).
    pub fn value_of(&self, metric: Metric, eval_loss: f64) -> f64 {
        match metric {
            Metric::EvalLoss => eval_loss,
            m => Measure::from_name(m.name())
                .and_then(|x| self.get(x))
                .unwrap_or(f64::NAN),
        }
    }
}

impl Serialize for Metrics {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Value(f64);
        impl Serialize for Value {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                non_finite::serialize(&self.0, s)
            }
        }
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (m, v) in self.iter() {
            map.serialize_entry(m.name(), &Value(v))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metrics {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        #[derive(Deserialize)]
        struct Value(#[serde(with = "non_finite")] f64);
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Metrics;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("metrics: a map of metric names to numbers")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Metrics, A::Error> {
                let mut out = Metrics::new();
                while let Some(key) = a.next_key::<String>()? {
                    match Measure::from_name(&key) {
                        Some(m) => {
                            if let Some(Value(v)) = a.next_value::<Option<Value>>()? {
                                out.0.insert(m, v);
                            }
                        }
                        None => {
                            a.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visitor)
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

#[cfg(test)]
mod tests {
    use super::MemoryProbe;

    fn probe(cells: usize, before: u64, model: u64, peak: u64) -> MemoryProbe {
        MemoryProbe {
            cells,
            before_mib: before,
            model_mib: model,
            state_mib: 0,
            peak_mib: peak,
            total_mib: 1000,
        }
    }

    /// One worker: (0.9 · 1000 − 100) / ((600 − 100) / 2) = 800 / 250 → 3 cells.
    #[test]
    fn a_pack_gets_the_cells_the_memory_left_after_its_base_holds() {
        let p = probe(2, 40, 100, 600);
        assert_eq!(p.per_cell_mib(), 250);
        assert_eq!(p.cells_that_fit(0.9, 1), 3);
        // Two workers on the GPU: the second base (60 MiB) comes off, the rest is shared:
        // (900 − 100 − 60) / 2 / 250 → 1.
        assert_eq!(p.cells_that_fit(0.9, 2), 1);
        // Tiny cells: many fit; a cell that adds nothing counts as 1 MiB.
        assert_eq!(probe(2, 40, 100, 110).cells_that_fit(0.9, 1), 160);
        assert_eq!(probe(2, 40, 100, 100).per_cell_mib(), 1);
    }

    /// The cells' optimizer state is on the GPU before the base is measured: it counts per
    /// cell, not in the base. 2 cells' state of 100 MiB in the 100 MiB "with its base": base 0
    /// beyond the 40 before, (600 − 100 + 100) / 2 = 300 MiB a cell, (900 − 40) / 300 → 2.
    #[test]
    fn the_cells_optimizer_state_counts_per_cell() {
        let p = MemoryProbe {
            state_mib: 100,
            ..probe(2, 40, 140, 640)
        };
        assert_eq!((p.base_mib(), p.per_cell_mib()), (0, 300));
        assert_eq!(p.cells_that_fit(0.9, 1), 2);
        assert_eq!(probe(2, 40, 140, 640).cells_that_fit(0.9, 1), 3);
    }

    #[test]
    fn a_pack_that_does_not_fit_still_gets_one_cell() {
        assert_eq!(probe(2, 40, 100, 3000).cells_that_fit(0.9, 1), 1);
        assert_eq!(probe(1, 40, 950, 990).cells_that_fit(0.9, 1), 1);
    }
}
