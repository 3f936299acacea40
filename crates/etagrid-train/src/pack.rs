//! The train/eval loop of one worker job: a *pack* of K grid cells of one sweep trained together
//! on one copy of the frozen base (K = 1 is a cell on its own, through the same code).
//!
//! Each step the K cells' batches go through every layer as one [K·b, T] batch (rows k·b..(k+1)·b
//! are cell k's; cells with the same seed share their batch order, cells with different seeds
//! draw their own rows), the loss is one mean per cell, and [`LoraPlusAdamW`] steps every cell with
//! its own η_A and η_B. Nothing couples the cells: their parameters are disjoint slices of the
//! stacked tensors, each cell starts from the adapters and head it would get alone (its own seed
//! and init scheme), and the gradient of the summed per-cell losses with respect to cell k's
//! slice is the gradient of cell k's own loss.
//!
//! **Divergence is per cell**: a NaN/inf loss or gradient in cell k takes k out of the loss and out
//! of the update (its parameters stay at their last finite values) and records the step; the
//! other cells go on unchanged. The check runs on the device and is read at log points, so a GPU
//! is not synchronised every step (on the CPU reading is free and is done every step).
//!
//! Dropout is pack-invariant too: a cell's masks are drawn from its seed, the step and the place
//! in the network ([`crate::dropout`]), so a cell ends with the same numbers in any pack and at any
//! position in it, dropout or not, up to the order of floating-point sums, which the kernels
//! choose by shape (on the CPU in fp32: within 1e-6, `tests/pack.rs`).

use crate::bert::{Batch, ParamRole};
use crate::checkpoint::{self, CheckpointInfo};
use crate::data::{collate_lm_to, collate_to, load_tokenizer, BatchOrder, Encoded, TaskData};
use crate::dropout::{SeedLen, SeededDropout};
use crate::export::save_peft_adapter;
use crate::metrics::{Confusion, EvalMetrics};
use crate::model::{load_classifier, model_type, SequenceClassifier};
use crate::optim::LoraPlusAdamW;
use crate::train::{
    eos_token_id, eval_lm, lm_loss, mark_causal_lm_adapter, write_labels, AnyEval, JobOutcome,
};
use crate::weights::Weights;
use crate::{device, TrainError};
use etagrid_spec::protocol::{
    fraction_step, CellResult, PackedCell, ParamGroupInfo, WorkerEvent, WorkerJob,
};
use etagrid_spec::{CellId, TrainLength};
use std::time::Instant;
use tch::{Device, Kind, Reduction, Tensor};

/// Runs every cell of `job` (one, or a pack) from start to end, reporting each cell's events
/// through `emit`. An `Err` means the pack could not start (bad data, a missing tensor): no cell
/// has a result. A cell that fails later (its adapter cannot be written) gets its own `failed`
/// event and the others go on.
pub fn run_pack(
    job: &WorkerJob,
    emit: &mut dyn FnMut(&CellId, WorkerEvent),
) -> Result<Vec<(CellId, JobOutcome)>, TrainError> {
    let started = Instant::now();
    let Setup {
        cells,
        device,
        data,
        model,
        mut opt,
        mut orders,
        total_steps,
        trainable_params,
        causal_lm,
        data_s,
        model_s,
    } = Setup::new(job)?;
    let k = cells.len();
    let tr = &cells[0].config.train;
    if !causal_lm {
        for c in &cells {
            write_labels(&c.out_dir, &c.config.task.label_column, &data)?;
        }
    }
    let span = Span::of(job, total_steps)?;
    let shape = StartShape {
        device,
        total_steps,
        trainable_params,
    };
    emit_started(&cells, &opt, &data, &shape, emit);

    let mut state = PackState::new(k, device, started);
    if span.start > 0 {
        resume(&cells, span.start, &mut opt, &mut orders, &mut state)?;
    }
    let ctx = Ctx::new(model.as_ref(), &data, device, k, causal_lm);
    let trained = ctx.train(&cells, &mut opt, &mut orders, &mut state, span, emit)?;
    let live = state.outcomes.iter().any(Option::is_none);
    let eval_started = Instant::now();
    let evals = if live { ctx.evaluate()? } else { Vec::new() };
    let eval_s = eval_started.elapsed().as_secs_f64();
    let steps_run = (trained.samples / tr.batch_size.max(1)).max(1);
    // Where the worker's time went, for profiles (README "Packed cells").
    eprintln!(
        "etagrid worker: {k} cell(s): data {data_s:.2} s, weights and model {model_s:.2} s, \
         train {:.2} s ({:.2} ms/step, {:.0} cell-samples/s), final eval {eval_s:.2} s",
        trained.seconds,
        1e3 * trained.seconds / steps_run as f64,
        (trained.samples * k) as f64 / trained.seconds.max(1e-9),
    );
    let end = PackEnd {
        job,
        model_type: model_type(&job.model_dir)?,
        saved: trainables(model.as_ref(), causal_lm),
        causal_lm,
        total_steps,
        k,
        started,
        trained,
    };
    // A paused cell's checkpoint keeps the train-loss sums since the last log point.
    let loss_sums = if span.stop < total_steps {
        Vec::<f64>::try_from(&state.loss_acc.to_device(Device::Cpu))?
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(k);
    for (i, c) in cells.iter().enumerate() {
        let outcome = match state.outcomes[i].take() {
            Some(o) => o,
            None if span.stop < total_steps => {
                let info = CheckpointInfo {
                    cell_id: c.cell_id.to_string(),
                    step: span.stop,
                    total_steps,
                    adam_steps: opt.steps_taken(),
                    loss_sum: loss_sums[i],
                    loss_steps: state.acc_steps,
                    last_train_loss: Some(state.last_train_loss[i]).filter(|l| l.is_finite()),
                };
                // The train loss it reports: the mean since the last log point, if any step
                // came after it.
                let train_loss = match state.acc_steps {
                    0 => state.last_train_loss[i],
                    n => loss_sums[i] / n as f64,
                };
                end.pause_cell(i, c, (&evals[i], train_loss), &info, &mut opt, emit)
            }
            None => end.finish_cell(i, c, &evals[i], state.last_train_loss[i], emit),
        };
        out.push((c.cell_id.clone(), outcome));
    }
    Ok(out)
}

/// A pack ready to train: its cells, device, data, model (adapters initialised), optimizer and
/// batch orders. [`run_pack`] trains it; [`crate::memprobe`] measures one step of it.
pub(crate) struct Setup {
    pub cells: Vec<PackedCell>,
    pub device: Device,
    pub data: TaskData,
    pub model: Box<dyn SequenceClassifier>,
    pub opt: LoraPlusAdamW,
    pub orders: StepRows,
    pub total_steps: u64,
    /// The trainable tensors' elements, all cells together.
    pub trainable_params: u64,
    pub causal_lm: bool,
    /// Seconds spent reading the data, and loading the weights and building the model.
    pub data_s: f64,
    pub model_s: f64,
}

impl Setup {
    pub(crate) fn new(job: &WorkerJob) -> Result<Setup, TrainError> {
        let started = Instant::now();
        job.check_protocol().map_err(TrainError::Pack)?;
        let cells = job.cells();
        check_packable(job, &cells)?;
        tch::set_num_threads(job.threads.max(1) as i32);
        let device = device::select_job(job)?;
        let cfg = &cells[0].config;
        let tr = &cfg.train;
        let causal_lm = cfg.task.lm.is_some();
        let data = load_data(job, causal_lm)?;
        let data_s = started.elapsed().as_secs_f64();
        let classes = data.labels.labels.len().max(1);
        let model = build_model(job, &cells, classes as i64, device)?;
        let model_s = started.elapsed().as_secs_f64() - data_s;
        check_max_len(job, model.as_ref())?;
        let lr_a: Vec<f64> = cells.iter().map(|c| c.config.lr_a).collect();
        let lr_b: Vec<f64> = cells.iter().map(|c| c.config.lr_b).collect();
        let trainable = trainables(model.as_ref(), causal_lm);
        let trainable_params = trainable.iter().map(|p| p.tensor.numel() as u64).sum();
        let opt = LoraPlusAdamW::new(trainable, &lr_a, &lr_b, tr.weight_decay)
            .with_embedding_lr(cfg.lora.embedding_lr);
        let orders = StepRows::new(&cells, data.train.len(), tr.batch_size);
        let total_steps = match tr.length {
            TrainLength::Steps(s) => s,
            TrainLength::Epochs(e) => {
                ((e * orders.orders[0].per_epoch() as f64).ceil() as u64).max(1)
            }
        };
        Ok(Setup {
            cells,
            device,
            data,
            model,
            opt,
            orders,
            total_steps,
            trainable_params,
            causal_lm,
            data_s,
            model_s,
        })
    }
}

/// The steps a job trains: `start..stop` of a budget of `total` (all of it without a segment).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub start: u64,
    pub stop: u64,
    pub total: u64,
}

impl Span {
    fn of(job: &WorkerJob, total: u64) -> Result<Span, TrainError> {
        let Some(seg) = job.segment else {
            return Ok(Span {
                start: 0,
                stop: total,
                total,
            });
        };
        let start = seg.resume_from.map_or(0, |f| fraction_step(f, total));
        let stop = seg.pause_at.map_or(total, |f| fraction_step(f, total));
        if start >= stop {
            return Err(TrainError::Pack(format!(
                "job {}: its segment resumes at step {start} and pauses at step {stop} of \
                 {total}: nothing to train (a scheduler bug)",
                job.cell_id
            )));
        }
        Ok(Span { start, stop, total })
    }
}

/// Every cell of the pack continues from its checkpoint at `start`: trainable tensors, AdamW
/// moments and step, train-loss sums, and the batch order replayed to `start`.
fn resume(
    cells: &[PackedCell],
    start: u64,
    opt: &mut LoraPlusAdamW,
    orders: &mut StepRows,
    state: &mut PackState,
) -> Result<(), TrainError> {
    let mut sums = Vec::with_capacity(cells.len());
    let mut adam_steps = None;
    for (i, c) in cells.iter().enumerate() {
        let info = checkpoint::load(&c.out_dir, &c.cell_id.to_string(), start, opt, i as i64)?;
        if adam_steps.is_some_and(|s| s != info.adam_steps) {
            return Err(TrainError::Pack(format!(
                "cell {}'s checkpoint at step {start} took {} optimizer steps, the pack's first \
                 cell {:?}: they cannot continue together",
                c.cell_id, info.adam_steps, adam_steps
            )));
        }
        adam_steps = Some(info.adam_steps);
        sums.push(info.loss_sum);
        state.acc_steps = info.loss_steps;
        state.last_train_loss[i] = info.last_train_loss.unwrap_or(f64::NAN);
        checkpoint::remove_older(&c.out_dir, start)?;
    }
    opt.set_steps_taken(adam_steps.unwrap_or(0));
    state.loss_acc = Tensor::f_from_slice(&sums)?.to_device(state.loss_acc.device());
    for _ in 0..start {
        orders.next();
    }
    Ok(())
}

/// `train.max_seq_len` must fit the model's position table.
fn check_max_len(job: &WorkerJob, model: &dyn SequenceClassifier) -> Result<(), TrainError> {
    let max_seq_len = job.config.train.max_seq_len;
    if max_seq_len as i64 > model.max_tokens() {
        return Err(TrainError::Config {
            path: job.model_dir.join("config.json"),
            message: format!(
                "train.max_seq_len = {max_seq_len} is longer than the model's position table \
                 allows ({})",
                model.max_tokens()
            ),
        });
    }
    Ok(())
}

/// Each cell's `started` event, with its own parameter counts (the stacked tensors hold K cells').
fn emit_started(
    cells: &[PackedCell],
    opt: &LoraPlusAdamW,
    data: &TaskData,
    shape: &StartShape,
    emit: &mut dyn FnMut(&CellId, WorkerEvent),
) {
    let k = cells.len() as u64;
    let per_cell_params = shape.trainable_params / k;
    for c in cells {
        emit(
            &c.cell_id,
            WorkerEvent::Started {
                device: device::describe(shape.device),
                total_steps: shape.total_steps,
                train_examples: data.train.len(),
                eval_examples: data.eval.len(),
                trainable_params: per_cell_params,
                groups: opt
                    .groups(c.config.lr_a, c.config.lr_b)
                    .into_iter()
                    .map(|g| ParamGroupInfo {
                        params: g.params / k,
                        ..g
                    })
                    .collect(),
            },
        );
    }
}

/// What every cell's `started` event says of the pack.
struct StartShape {
    device: Device,
    total_steps: u64,
    /// The stacked tensors' elements, all K cells together.
    trainable_params: u64,
}

/// What the training loop did: samples per cell and seconds.
pub(crate) struct Trained {
    samples: usize,
    seconds: f64,
}

/// What a cell's end needs of its pack.
struct PackEnd<'a> {
    job: &'a WorkerJob,
    model_type: String,
    saved: Vec<crate::bert::TrainParam>,
    causal_lm: bool,
    total_steps: u64,
    k: usize,
    started: Instant,
    trained: Trained,
}

impl PackEnd<'_> {
    /// Cell `i`'s last events after the final evaluation `e`: diverged (a non-finite eval loss),
    /// failed (its adapter could not be written) or finished.
    fn finish_cell(
        &self,
        i: usize,
        c: &PackedCell,
        e: &AnyEval,
        train_loss: f64,
        emit: &mut dyn FnMut(&CellId, WorkerEvent),
    ) -> JobOutcome {
        let total_steps = self.total_steps;
        emit(&c.cell_id, e.event(total_steps));
        if !e.loss().is_finite() {
            return diverged(c, total_steps, e.loss(), self.started, self.k, emit);
        }
        let result = self.result(c, e, train_loss, total_steps);
        if self.job.save_adapter {
            if let Err(e) = self.save_adapter(i, c) {
                let error = error_chain(&e);
                emit(&c.cell_id, WorkerEvent::Failed { error });
                return JobOutcome::Failed(e.to_string());
            }
        }
        emit(
            &c.cell_id,
            WorkerEvent::Finished {
                result: result.clone(),
            },
        );
        JobOutcome::Finished(result)
    }

    /// Cell `i` at the end of its segment (`step`): its evaluation there, a checkpoint to go on
    /// from, and `paused` — or `failed` if the checkpoint cannot be written, `diverged` if the
    /// evaluation is not finite.
    fn pause_cell(
        &self,
        i: usize,
        c: &PackedCell,
        (e, train_loss): (&AnyEval, f64),
        info: &CheckpointInfo,
        opt: &mut LoraPlusAdamW,
        emit: &mut dyn FnMut(&CellId, WorkerEvent),
    ) -> JobOutcome {
        let step = info.step;
        emit(&c.cell_id, e.event(step));
        if !e.loss().is_finite() {
            return diverged(c, step, e.loss(), self.started, self.k, emit);
        }
        if let Err(err) = checkpoint::save(&c.out_dir, opt, i as i64, info) {
            let error = error_chain(&err);
            emit(&c.cell_id, WorkerEvent::Failed { error });
            return JobOutcome::Failed(err.to_string());
        }
        let result = self.result(c, e, train_loss, step);
        emit(
            &c.cell_id,
            WorkerEvent::Paused {
                result: result.clone(),
            },
        );
        JobOutcome::Paused(result)
    }

    /// Cell `c`'s result after `steps` steps, evaluated as `e`.
    fn result(&self, c: &PackedCell, e: &AnyEval, train_loss: f64, steps: u64) -> CellResult {
        let metrics = e.metrics();
        CellResult {
            metric: metrics.value_of(c.config.task.metric, e.loss()),
            eval_loss: e.loss(),
            metrics,
            train_loss,
            steps,
            wall_s: self.started.elapsed().as_secs_f64(),
            train_samples_per_s: self.trained.samples as f64 / self.trained.seconds.max(1e-9),
            pack_size: (self.k > 1).then_some(self.k as u32),
        }
    }

    /// Cell `i`'s adapter (PEFT format) into its `out_dir/adapter`.
    fn save_adapter(&self, i: usize, c: &PackedCell) -> Result<(), TrainError> {
        let dir = c.out_dir.join("adapter");
        save_peft_adapter(
            &self.saved,
            i as i64,
            &c.config.lora,
            &self.model_type,
            &self.job.model_dir.display().to_string(),
            &dir,
        )?;
        if self.causal_lm {
            mark_causal_lm_adapter(&dir)?;
        }
        Ok(())
    }
}

/// An error with its causes, one line.
fn error_chain(e: &TrainError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

/// The cells of a pack must share everything but η_A, η_B, the seed and the init scheme.
fn check_packable(job: &WorkerJob, cells: &[PackedCell]) -> Result<(), TrainError> {
    let key = cells[0].config.pack_key();
    if let Some(other) = cells.iter().find(|c| c.config.pack_key() != key) {
        return Err(TrainError::Pack(format!(
            "cells {} and {} of job {} differ in more than η_A, η_B, seed and init: they cannot \
             share a frozen base",
            cells[0].cell_id, other.cell_id, job.cell_id
        )));
    }
    if cells.len() > 1 && cells[0].config.task.lm.is_some() {
        return Err(TrainError::Pack(
            "causal_lm cells are trained one per worker (they are not packed)".into(),
        ));
    }
    Ok(())
}

fn load_data(job: &WorkerJob, causal_lm: bool) -> Result<TaskData, TrainError> {
    let cfg = &job.config;
    let tr = &cfg.train;
    let eos = if causal_lm {
        let mt = model_type(&job.model_dir)?;
        if !etagrid_data::Family::from_model_type(&mt).is_some_and(|f| f.is_decoder()) {
            return Err(TrainError::Config {
                path: job.model_dir.join("config.json"),
                message: format!(
                    "[task] kind = \"causal_lm\" needs a decoder model (GPT-2 or Llama), but \
                     model_type is {mt:?}: use a decoder, or kind = \"classification\""
                ),
            });
        }
        eos_token_id(&job.model_dir)?
    } else {
        None
    };
    let tok = load_tokenizer(&job.model_dir, tr.max_seq_len)?;
    Ok(match &job.cache_dir {
        Some(dir) => {
            let tokenizer_file = job.model_dir.join("tokenizer.json");
            let (data, source) =
                TaskData::load_cached(&cfg.task, &tok, &tokenizer_file, tr.max_seq_len, eos, dir)?;
            eprintln!(
                "etagrid worker: tokenized data {}",
                match source {
                    crate::data::TokenSource::Cache =>
                        "loaded from the sweep's cache (no tokenization)",
                    crate::data::TokenSource::Tokenized =>
                        "tokenized now and written to the sweep's cache",
                }
            );
            data
        }
        None if causal_lm => TaskData::load_lm(&cfg.task, &tok, tr.max_seq_len, eos)?,
        None => TaskData::load(&cfg.task, &tok)?,
    })
}

/// The frozen base with one adapter set and head per cell, each initialised exactly as the cell
/// would be alone: seeded with its seed, drawn in the same order, with its own init scheme.
fn build_model(
    job: &WorkerJob,
    cells: &[PackedCell],
    classes: i64,
    device: Device,
) -> Result<Box<dyn SequenceClassifier>, TrainError> {
    // On a GPU the frozen base runs in bf16 (LoRA, head and optimizer state stay fp32), as PEFT
    // under bf16 autocast; on the CPU everything is fp32.
    let compute = if device == Device::Cpu {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    let weights = Weights::load(&job.model_dir, device, compute)?;
    let first = &cells[0].config;
    tch::manual_seed(first.seed as i64);
    let k = cells.len() as i64;
    let model = load_classifier(&job.model_dir, &weights, classes, &first.lora, k, device)?;
    if k > 1 {
        let packed = model.trainable();
        for (i, c) in cells.iter().enumerate() {
            tch::manual_seed(c.config.seed as i64);
            let one =
                load_classifier(&job.model_dir, &weights, classes, &c.config.lora, 1, device)?;
            for (dst, src) in packed.iter().zip(one.trainable()) {
                tch::no_grad(|| {
                    let mut slot = dst.tensor.get(i as i64);
                    slot.f_copy_(&src.tensor.get(0))
                })?;
            }
        }
    }
    Ok(model)
}

/// The tensors that train: causal_lm trains the LoRA adapters alone (its LM head is the frozen
/// embedding).
fn trainables(model: &dyn SequenceClassifier, causal_lm: bool) -> Vec<crate::bert::TrainParam> {
    model
        .trainable()
        .into_iter()
        .filter(|p| !causal_lm || !matches!(p.role, ParamRole::Other { .. }))
        .collect()
}

/// One step's input for the pack: cell k's rows `rows[k]` at rows k·b..(k+1)·b, all padded to
/// the longest example of the step. When every cell has the same rows (one seed) the batch is
/// built once and repeated on the device.
fn pack_batch(
    data: &Encoded,
    rows: &[&[usize]],
    pad: i64,
    min_len: usize,
    device: Device,
    causal_lm: bool,
) -> Batch {
    let collate = |idx: &[usize], t: usize, dev: Device| {
        let t = t.max(min_len);
        if causal_lm {
            collate_lm_to(data, idx, pad, t, dev)
        } else {
            collate_to(data, idx, pad, t, dev)
        }
    };
    let k = rows.len() as i64;
    if rows.iter().all(|r| *r == rows[0]) {
        let b = collate(rows[0], 1, device);
        if k == 1 {
            return b;
        }
        let label_reps: Vec<i64> = std::iter::once(k)
            .chain(std::iter::repeat_n(1, b.labels.dim() - 1))
            .collect();
        return Batch {
            input_ids: b.input_ids.repeat([k, 1]),
            token_type_ids: b.token_type_ids.repeat([k, 1]),
            attention_mask: b.attention_mask.repeat([k, 1]),
            labels: b.labels.repeat(label_reps.as_slice()),
        };
    }
    let t = rows
        .iter()
        .flat_map(|r| r.iter().map(|&i| data.ids[i].len()))
        .max()
        .unwrap_or(1);
    let parts: Vec<Batch> = rows.iter().map(|r| collate(r, t, Device::Cpu)).collect();
    let cat = |f: &dyn Fn(&Batch) -> &Tensor| {
        Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0).to_device(device)
    };
    Batch {
        input_ids: cat(&|b| &b.input_ids),
        token_type_ids: cat(&|b| &b.token_type_ids),
        attention_mask: cat(&|b| &b.attention_mask),
        labels: cat(&|b| &b.labels),
    }
}

/// The train set on the GPU, padded to its longest example, and batches cut from it there.
///
/// Building a step's batch on the host and copying it over blocks the host until the GPU has
/// finished every step queued before (a copy from pageable memory is synchronous), so the host
/// could never run ahead of the device. Here the table is copied once; a step's batch is an
/// `index_select` on the device — the tensors [`collate_to`] builds, padded to the set's longest
/// example. The rows of the next steps are copied [`ResidentBatches::AHEAD`] steps at a time.
pub(crate) struct ResidentBatches {
    ids: Tensor,
    types: Tensor,
    mask: Tensor,
    labels: Tensor,
    device: Device,
    /// Rows of the steps copied ahead, and each step's (offset, rows, rows of one cell).
    rows: Tensor,
    steps: std::collections::VecDeque<(i64, i64, usize)>,
}

impl ResidentBatches {
    const AHEAD: usize = 64;

    fn new(data: &Encoded, pad: i64, device: Device) -> ResidentBatches {
        let all: Vec<usize> = (0..data.len()).collect();
        let b = collate_to(data, &all, pad, 1, device);
        ResidentBatches {
            ids: b.input_ids,
            types: b.token_type_ids,
            mask: b.attention_mask,
            labels: b.labels,
            device,
            rows: Tensor::zeros([0], (Kind::Int64, device)),
            steps: Default::default(),
        }
    }

    /// The pack's batch of the next step from `src`, and how many rows each cell has in it.
    /// When the steps copied ahead run out, the next `AHEAD` (at most `remaining`) are drawn
    /// and copied in one go.
    fn batch(&mut self, src: &mut StepRows, remaining: u64) -> Result<(Batch, usize), TrainError> {
        if self.steps.is_empty() {
            let mut all: Vec<i64> = Vec::new();
            for _ in 0..(Self::AHEAD as u64).min(remaining.max(1)) {
                let rows = src.next();
                let start = all.len() as i64;
                all.extend(rows.iter().flat_map(|r| r.iter().map(|&i| i as i64)));
                self.steps
                    .push_back((start, all.len() as i64 - start, rows[0].len()));
            }
            self.rows = Tensor::f_from_slice(&all)?.to_device(self.device);
        }
        let Some((off, n, per_cell)) = self.steps.pop_front() else {
            return Err(TrainError::Pack("no batch left to train on".into()));
        };
        let idx = self.rows.narrow(0, off, n);
        // Every step is padded to the longest example of the set, not of the step: a GPU runs
        // steps whose shapes change every step far slower (41 against 27 ms a step for the
        // 36-cell TREC-50 pack on an H200, though the fixed shape has more tokens;
        // bench/RESULTS.md).
        let t = self.ids.size()[1];
        let cut = |table: &Tensor| table.narrow(1, 0, t).index_select(0, &idx);
        let batch = Batch {
            input_ids: cut(&self.ids),
            token_type_ids: cut(&self.types),
            attention_mask: cut(&self.mask),
            labels: self.labels.index_select(0, &idx),
        };
        Ok((batch, per_cell))
    }
}

/// The phases of a training step, for `ETAGRID_PROFILE=1`.
#[derive(Clone, Copy)]
enum Phase {
    Batch,
    Forward,
    Backward,
    Checks,
    Optimizer,
}

/// With `ETAGRID_PROFILE=1`, the worker synchronises the device after each phase of every step
/// and prints the mean time of each at the end (slower: the host cannot run ahead), so the log
/// says where a step's time goes. Otherwise nothing is measured.
struct Profile {
    device: Device,
    on: bool,
    last: Instant,
    sums: [f64; 5],
    steps: u64,
}

impl Profile {
    fn new(device: Device) -> Profile {
        Profile {
            device,
            on: std::env::var("ETAGRID_PROFILE").is_ok_and(|v| v == "1"),
            last: Instant::now(),
            sums: [0.0; 5],
            steps: 0,
        }
    }

    fn mark(&mut self, phase: Phase) {
        if !self.on {
            return;
        }
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        let now = Instant::now();
        self.sums[phase as usize] += (now - self.last).as_secs_f64();
        self.last = now;
        if matches!(phase, Phase::Optimizer) {
            self.steps += 1;
        }
    }

    fn report(&self) {
        if !self.on || self.steps == 0 {
            return;
        }
        let ms = |i: usize| 1e3 * self.sums[i] / self.steps as f64;
        eprintln!(
            "etagrid worker: profile (synchronised, ms/step over {} steps): batch {:.2}, forward \
             {:.2}, backward {:.2}, divergence checks {:.2}, optimizer {:.2}",
            self.steps,
            ms(0),
            ms(1),
            ms(2),
            ms(3),
            ms(4)
        );
    }
}

/// Each step's rows for every cell: one batch order per distinct seed, shared by its cells.
pub(crate) struct StepRows {
    orders: Vec<BatchOrder>,
    /// Cell k's order.
    group: Vec<usize>,
}

impl StepRows {
    /// One batch order per distinct seed of `cells`; cells of one seed share it.
    fn new(cells: &[PackedCell], examples: usize, batch_size: usize) -> StepRows {
        let cell_seeds: Vec<u64> = cells.iter().map(|c| c.config.seed).collect();
        let (seeds, group) = crate::dropout::seed_groups(&cell_seeds);
        StepRows {
            orders: seeds
                .iter()
                .map(|&s| BatchOrder::new(examples, batch_size, s))
                .collect(),
            group,
        }
    }

    /// The next step's rows of every cell, in cell order.
    fn next(&mut self) -> Vec<Vec<usize>> {
        let idx: Vec<Vec<usize>> = self.orders.iter_mut().map(BatchOrder::next_batch).collect();
        self.group.iter().map(|&g| idx[g].clone()).collect()
    }
}

/// What the loss and the evaluation need to know of the pack.
pub(crate) struct Ctx<'a> {
    model: &'a dyn SequenceClassifier,
    data: &'a TaskData,
    classes: usize,
    pad: i64,
    device: Device,
    k: usize,
    causal_lm: bool,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        model: &'a dyn SequenceClassifier,
        data: &'a TaskData,
        device: Device,
        k: usize,
        causal_lm: bool,
    ) -> Ctx<'a> {
        Ctx {
            model,
            data,
            // A causal LM trains no head: the classifier's `score` is built (one row) but
            // never used.
            classes: data.labels.labels.len().max(1),
            pad: model.pad_token_id(),
            device,
            k,
            causal_lm,
        }
    }

    /// The training steps, with per-cell divergence, log points and periodic evaluations.
    pub(crate) fn train(
        &self,
        cells: &[PackedCell],
        opt: &mut LoraPlusAdamW,
        orders: &mut StepRows,
        state: &mut PackState,
        span: Span,
        emit: &mut dyn FnMut(&CellId, WorkerEvent),
    ) -> Result<Trained, TrainError> {
        let total_steps = span.total;
        // Only a forward that draws dropout masks needs them seeded per cell (and a process
        // training with no dropout leaves libtorch's global generator alone).
        let masks = (self.model.base_dropout() || cells[0].config.lora.dropout > 0.0).then(|| {
            let seeds: Vec<u64> = cells.iter().map(|c| c.config.seed).collect();
            SeededDropout::new(&seeds, self.device)
        });
        let tr = &cells[0].config.train;
        let device = self.device;
        let started = Instant::now();
        let mut samples = 0usize;
        // On the CPU reading a value is free: divergence is seen at the step it happens.
        let check_every_step = device == Device::Cpu;
        let mut prof = Profile::new(device);
        let mut resident = (device != Device::Cpu && !self.causal_lm)
            .then(|| ResidentBatches::new(&self.data.train, self.pad, device));
        for step in span.start..span.stop {
            // Each seed's batch length, which its dropout masks are drawn at: on a GPU every
            // batch is padded to the set's longest; on the CPU a pack of several seeds is padded
            // to its longest batch, and each seed keeps its own batch's length.
            let (batch, rows, lens) = match resident.as_mut() {
                Some(r) => {
                    let (b, rows) = r.batch(orders, span.stop - step)?;
                    (b, rows, None)
                }
                None => {
                    let idx = orders.next();
                    let lens = masks
                        .as_ref()
                        .map(|m| m.seed_lens(&idx, |i| self.data.train.ids[i].len()));
                    let rows: Vec<&[usize]> = idx.iter().map(Vec::as_slice).collect();
                    let b =
                        pack_batch(&self.data.train, &rows, self.pad, 1, device, self.causal_lm);
                    (b, idx[0].len(), lens)
                }
            };
            samples += rows;
            prof.mark(Phase::Batch);
            // Masks are a function of the cells' seeds and the step: a run that paused before
            // the step draws what one that did not draws.
            let losses = match &masks {
                Some(m) => {
                    let t = batch.input_ids.size()[1];
                    // Resident batches: every seed's at the set's longest, maybe padded.
                    let lens = lens.unwrap_or_else(|| vec![SeedLen::from(t); m.seeds()]);
                    m.during(step, lens, || self.cell_losses(&batch, true))?
                }
                None => self.cell_losses(&batch, true)?,
            };
            prof.mark(Phase::Forward);
            opt.zero_grad();
            losses
                .where_self(&state.active, &losses.zeros_like())
                .sum(Kind::Float)
                .backward();
            prof.mark(Phase::Backward);
            let ok = losses
                .detach()
                .isfinite()
                .logical_and(&opt.grads_finite_per_cell());
            state.record_step(step + 1, &losses.detach(), &ok);
            prof.mark(Phase::Checks);
            let mult = tr.schedule.multiplier(step, tr.warmup_steps, total_steps);
            opt.step_masked(mult, &state.active);
            prof.mark(Phase::Optimizer);
            let done = step + 1;
            let log_point = done % tr.log_every == 0 || done == total_steps;
            if log_point || check_every_step {
                state.report_divergence(cells, emit)?;
            }
            if log_point {
                state.report_train_loss(cells, done, total_steps, mult, emit)?;
            }
            if state.outcomes.iter().all(Option::is_some) {
                break;
            }
            if tr.eval_every > 0 && done % tr.eval_every == 0 && done != span.stop {
                let evals = self.evaluate()?;
                for (i, (c, e)) in cells.iter().zip(&evals).enumerate() {
                    if state.outcomes[i].is_none() {
                        emit(&c.cell_id, e.event(done));
                    }
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        prof.report();
        Ok(Trained { samples, seconds })
    }

    /// Each cell's mean loss on its rows of `batch`: [K], fp32.
    fn cell_losses(&self, batch: &Batch, train: bool) -> Result<Tensor, TrainError> {
        if self.causal_lm {
            // Not packed (checked at the start): one cell.
            return Ok(lm_loss(self.model, batch, train)?.reshape([1]));
        }
        let logits = self.model.forward(batch, train);
        Ok(logits
            .cross_entropy_loss::<Tensor>(&batch.labels, None, Reduction::None, -100, 0.0)
            .reshape([self.k as i64, -1])
            .mean_dim(1, false, Kind::Float))
    }

    /// Every cell's evaluation on all of the eval set, in cell order.
    fn evaluate(&self) -> Result<Vec<AnyEval>, TrainError> {
        if self.causal_lm {
            return Ok(vec![eval_lm(self.model, self.data, self.pad, self.device)?]);
        }
        Ok(evaluate_pack(
            self.model,
            &self.data.eval,
            self.classes,
            self.pad,
            self.device,
            self.k,
        )?
        .into_iter()
        .map(AnyEval::Classification)
        .collect())
    }
}

/// Evaluates the K cells of a pack on all of `data` (no dropout, no gradients), `classes` being
/// the number of labels: each batch of examples goes through the pack once, repeated K times.
/// Examples are batched by length to waste little on padding (padding changes no logit). Loss
/// sums and confusion matrices stay on the device until the end: one read per evaluation.
pub fn evaluate_pack(
    model: &dyn SequenceClassifier,
    data: &Encoded,
    classes: usize,
    pad: i64,
    device: Device,
    k: usize,
) -> Result<Vec<EvalMetrics>, TrainError> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data.ids[i].len());
    let c = classes as i64;
    let kk = k as i64;
    let profile = std::env::var("ETAGRID_PROFILE").is_ok_and(|v| v == "1");
    let sync = || {
        if let (true, Device::Cuda(i)) = (profile, device) {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut times = [0f64; 3];
    let (loss_sum, cm) = tch::no_grad(|| {
        let mut loss_sum = Tensor::zeros([kk], (Kind::Double, device));
        let mut cm = Tensor::zeros([kk * c * c], (Kind::Int64, device));
        // On a GPU every chunk is padded to the set's longest example (one shape: see
        // `ResidentBatches`); on the CPU to its own longest (padding costs compute there).
        let fixed = if device == Device::Cpu {
            1
        } else {
            data.ids.iter().map(Vec::len).max().unwrap_or(1)
        };
        for chunk in order.chunks(128) {
            let t0 = Instant::now();
            let rows: Vec<&[usize]> = vec![chunk; k];
            let batch = pack_batch(data, &rows, pad, fixed, device, false);
            sync();
            let t1 = Instant::now();
            let logits = model.forward(&batch, false);
            sync();
            let t2 = Instant::now();
            let n = chunk.len() as i64;
            loss_sum += logits
                .cross_entropy_loss::<Tensor>(&batch.labels, None, Reduction::None, -100, 0.0)
                .to_kind(Kind::Double)
                .reshape([kk, n])
                .sum_dim_intlist(1, false, Kind::Double);
            let cell = Tensor::arange(kk, (Kind::Int64, device)).repeat_interleave_self_int(
                n,
                0,
                None::<i64>,
            );
            let idx = cell * (c * c) + &batch.labels * c + logits.argmax(-1, false);
            cm += idx.bincount::<Tensor>(None, kk * c * c);
            sync();
            for (t, d) in times.iter_mut().zip([t1 - t0, t2 - t1, t2.elapsed()]) {
                *t += d.as_secs_f64();
            }
        }
        (loss_sum, cm)
    });
    if profile {
        eprintln!(
            "etagrid worker: profile of an evaluation (synchronised, s): batches {:.3}, forward \
             {:.3}, metrics {:.3}",
            times[0], times[1], times[2]
        );
    }
    let losses = Vec::<f64>::try_from(&loss_sum.to_device(Device::Cpu))?;
    let n = data.len().max(1) as f64;
    (0..k)
        .map(|i| {
            let confusion =
                Confusion::from_tensor(&cm.narrow(0, i as i64 * c * c, c * c), classes)?;
            Ok(EvalMetrics::from_confusion(losses[i] / n, &confusion))
        })
        .collect()
}

/// The per-cell state of a pack on the device, read at log points.
pub(crate) struct PackState {
    /// [K] bool: still training.
    active: Tensor,
    /// [K] Int64: the step a cell diverged at (0: not).
    diverged_step: Tensor,
    /// [K] Double: its loss there.
    diverged_loss: Tensor,
    /// [K] Double: summed train loss since the last log point.
    loss_acc: Tensor,
    acc_steps: u64,
    /// Set once a cell's end is known (diverged); `None` while it trains.
    outcomes: Vec<Option<JobOutcome>>,
    last_train_loss: Vec<f64>,
    /// When the worker started (a diverged cell's device time runs from there).
    started: Instant,
}

/// Cell `c` diverged at `step` with `loss`: emits `diverged` with the cell's share of its
/// worker's device time so far (the wall time since `started` over the pack's `k` cells, as
/// [`CellResult::device_seconds`] counts a finished cell's).
fn diverged(
    c: &PackedCell,
    step: u64,
    loss: f64,
    started: Instant,
    k: usize,
    emit: &mut dyn FnMut(&CellId, WorkerEvent),
) -> JobOutcome {
    let device_s = Some(started.elapsed().as_secs_f64() / k.max(1) as f64);
    emit(
        &c.cell_id,
        WorkerEvent::Diverged {
            step,
            loss,
            device_s,
        },
    );
    JobOutcome::Diverged { step, loss }
}

impl PackState {
    pub(crate) fn new(k: usize, device: Device, started: Instant) -> PackState {
        let kk = k as i64;
        PackState {
            active: Tensor::ones([kk], (Kind::Bool, device)),
            diverged_step: Tensor::zeros([kk], (Kind::Int64, device)),
            diverged_loss: Tensor::zeros([kk], (Kind::Double, device)),
            loss_acc: Tensor::zeros([kk], (Kind::Double, device)),
            acc_steps: 0,
            outcomes: (0..k).map(|_| None).collect(),
            last_train_loss: vec![f64::NAN; k],
            started,
        }
    }

    /// After step `step` (1-based): cells whose loss or gradient is not finite (`ok` false) stop.
    fn record_step(&mut self, step: u64, losses: &Tensor, ok: &Tensor) {
        let newly = self.active.logical_and(&ok.logical_not());
        let step_t = Tensor::full_like(&self.diverged_step, step as i64);
        self.diverged_step = step_t.where_self(&newly, &self.diverged_step);
        let l = losses.to_kind(Kind::Double);
        self.diverged_loss = l.where_self(&newly, &self.diverged_loss);
        self.active = self.active.logical_and(ok);
        self.loss_acc = &self.loss_acc + l;
        self.acc_steps += 1;
    }

    /// Emits `diverged` for the cells that stopped since the last look.
    fn report_divergence(
        &mut self,
        cells: &[PackedCell],
        emit: &mut dyn FnMut(&CellId, WorkerEvent),
    ) -> Result<(), TrainError> {
        let steps = Vec::<i64>::try_from(&self.diverged_step.to_device(Device::Cpu))?;
        if steps.iter().all(|&s| s == 0) {
            return Ok(());
        }
        let losses = Vec::<f64>::try_from(&self.diverged_loss.to_device(Device::Cpu))?;
        for (i, c) in cells.iter().enumerate() {
            if steps[i] > 0 && self.outcomes[i].is_none() {
                let (step, loss) = (steps[i] as u64, losses[i]);
                self.outcomes[i] = Some(diverged(c, step, loss, self.started, cells.len(), emit));
            }
        }
        Ok(())
    }

    /// Emits `train` (the mean loss since the last log point) for the cells still training.
    fn report_train_loss(
        &mut self,
        cells: &[PackedCell],
        done: u64,
        total_steps: u64,
        mult: f64,
        emit: &mut dyn FnMut(&CellId, WorkerEvent),
    ) -> Result<(), TrainError> {
        let means = self.take_means()?;
        for (i, c) in cells.iter().enumerate() {
            if self.outcomes[i].is_none() {
                self.last_train_loss[i] = means[i];
                emit(
                    &c.cell_id,
                    WorkerEvent::Train {
                        step: done,
                        total_steps,
                        loss: means[i],
                        lr_a: c.config.lr_a * mult,
                        lr_b: c.config.lr_b * mult,
                    },
                );
            }
        }
        Ok(())
    }

    /// Each cell's mean train loss since the last log point; resets the sums.
    fn take_means(&mut self) -> Result<Vec<f64>, TrainError> {
        let sums = Vec::<f64>::try_from(&self.loss_acc.to_device(Device::Cpu))?;
        let n = self.acc_steps.max(1) as f64;
        self.loss_acc = self.loss_acc.zeros_like();
        self.acc_steps = 0;
        Ok(sums.into_iter().map(|s| s / n).collect())
    }
}
