//! The train/eval loop of one worker job.

use crate::data::{collate, collate_lm, Encoded, McEncoded, TaskData};
use crate::metrics::{confusion_update, mc_predictions, Confusion, EvalMetrics, LmEvalMetrics};
use crate::model::{Batch, SequenceClassifier};
use crate::TrainError;
use etagrid_spec::protocol::{CellResult, Measure, Metrics, WorkerEvent, WorkerJob};
use std::path::Path;
use tch::{Device, Kind, Reduction, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Finished(CellResult),
    Diverged {
        step: u64,
        loss: f64,
    },
    /// A cell of a pack that trained but could not be saved (the others go on).
    Failed(String),
    /// The cell reached the end of its segment and saved a checkpoint; its evaluation there.
    Paused(CellResult),
}

/// Mean cross-entropy over a batch of logits.
pub fn loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

/// The next-token cross-entropy of a causal LM as transformers' `ForCausalLMLoss` computes it:
/// position t predicts `labels[t + 1]`, targets of -100 (prompt, padding) carry no loss. `hidden`
/// [b, T, h] and `head` [vocab, h] come from [`SequenceClassifier::lm_hidden`]; the head is
/// applied only at target positions. Returns the summed loss (fp32 scalar), the number of
/// targets and how many of them the argmax predicts right (Int64 scalar).
pub fn lm_loss_parts(hidden: &Tensor, head: &Tensor, labels: &Tensor) -> (Tensor, i64, Tensor) {
    let s = hidden.size();
    let (t, h) = (s[1], s[2]);
    let hs = hidden.narrow(1, 0, (t - 1).max(0)).reshape([-1, h]);
    let y = labels.narrow(1, 1, (t - 1).max(0)).reshape([-1]);
    let idx = y.ne(-100).nonzero().squeeze_dim(1);
    let ys = y.index_select(0, &idx);
    let logits = hs
        .index_select(0, &idx)
        .linear::<Tensor>(head, None)
        .to_kind(Kind::Float);
    let sum = logits.cross_entropy_loss::<Tensor>(&ys, None, Reduction::Sum, -100, 0.0);
    let correct = logits.argmax(-1, false).eq_tensor(&ys).sum(Kind::Int64);
    (sum, idx.size()[0], correct)
}

/// The mean causal-LM loss of `batch` (labels [b, T] from [`collate_lm`]), as transformers
/// gives it for `model(input_ids, attention_mask=…, labels=…).loss`.
pub fn lm_loss(
    model: &dyn SequenceClassifier,
    batch: &Batch,
    train: bool,
) -> Result<Tensor, TrainError> {
    let (hidden, head) = model.lm_hidden(batch, train).ok_or_else(no_lm_head)?;
    let (sum, n, _) = lm_loss_parts(&hidden, &head, &batch.labels);
    Ok(sum / n.max(1) as f64)
}

fn no_lm_head() -> TrainError {
    TrainError::Device(
        "this model has no causal-LM head (an untied Llama checkpoint without lm_head.weight): \
         kind = \"causal_lm\" needs a causal-LM checkpoint"
            .into(),
    )
}

/// Evaluates a causal LM on every response token of `data` (no dropout, no gradients).
pub fn evaluate_lm(
    model: &dyn SequenceClassifier,
    data: &Encoded,
    mc: Option<&McEncoded>,
    pad: i64,
    device: Device,
) -> Result<LmEvalMetrics, TrainError> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data.ids[i].len());
    let (loss_sum, tokens, correct) = tch::no_grad(|| -> Result<_, TrainError> {
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut tokens = 0i64;
        for chunk in order.chunks(32) {
            let batch = collate_lm(data, chunk, pad, device);
            let (hidden, head) = model.lm_hidden(&batch, false).ok_or_else(no_lm_head)?;
            let (s, n, c) = lm_loss_parts(&hidden, &head, &batch.labels);
            loss_sum += s.to_kind(Kind::Double);
            correct += c;
            tokens += n;
        }
        Ok((loss_sum, tokens, correct))
    })?;
    let n = tokens.max(1) as f64;
    let mc_accuracy = match mc {
        Some(mc) => {
            let preds = mc_predictions(&mc_letter_logits(model, mc, pad, device)?, &mc.n_choices);
            let answers = Tensor::from_slice(&mc.prompts.labels).to_device(device);
            Some(
                preds
                    .eq_tensor(&answers)
                    .sum(Kind::Int64)
                    .f_double_value(&[])?
                    / mc.prompts.len().max(1) as f64,
            )
        }
        None => None,
    };
    Ok(LmEvalMetrics {
        loss: loss_sum.f_double_value(&[])? / n,
        tokens: tokens as u64,
        token_accuracy: correct.f_double_value(&[])? / n,
        mc_accuracy,
    })
}

/// The next-token logits [questions, letters] of the choice letters after each multiple-choice
/// prompt, in file order.
pub fn mc_letter_logits(
    model: &dyn SequenceClassifier,
    mc: &McEncoded,
    pad: i64,
    device: Device,
) -> Result<Tensor, TrainError> {
    let letters = Tensor::from_slice(&mc.letter_ids).to_device(device);
    let mut rows = Vec::new();
    let all: Vec<usize> = (0..mc.prompts.len()).collect();
    tch::no_grad(|| -> Result<(), TrainError> {
        for chunk in all.chunks(16) {
            let batch = collate(&mc.prompts, chunk, pad, device);
            let logits = model.next_token_logits(&batch).ok_or_else(no_lm_head)?;
            rows.push(logits.index_select(1, &letters));
        }
        Ok(())
    })?;
    Ok(Tensor::cat(&rows, 0))
}

/// `eos_token_id` of `dir/config.json` (the first one when it is a list).
pub fn eos_token_id(dir: &Path) -> Result<Option<i64>, TrainError> {
    let v: serde_json::Value = crate::model::read_config(dir)?;
    Ok(match &v["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_i64()),
        _ => None,
    })
}

/// Evaluates the model on all of `data` (no dropout, no gradients), `classes` being the number
/// of labels. Examples are batched by length to waste little on padding; padding does not change
/// any logit. The loss sum and the confusion matrix stay on the device until the end: one read
/// per evaluation, not one per batch.
pub fn evaluate(
    model: &dyn SequenceClassifier,
    data: &Encoded,
    classes: usize,
    pad: i64,
    device: Device,
) -> Result<EvalMetrics, TrainError> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data.ids[i].len());
    let k = classes as i64;
    let (loss_sum, cm) = tch::no_grad(|| {
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut cm = Tensor::zeros([k * k], (Kind::Int64, device));
        for chunk in order.chunks(128) {
            let batch = collate(data, chunk, pad, device);
            let logits = model.forward(&batch, false);
            loss_sum += logits
                .cross_entropy_loss::<Tensor>(&batch.labels, None, Reduction::Sum, -100, 0.0)
                .to_kind(Kind::Double);
            confusion_update(&mut cm, &batch.labels, &logits.argmax(-1, false), k);
        }
        (loss_sum, cm)
    });
    let confusion = Confusion::from_tensor(&cm, classes)?;
    let loss = loss_sum.f_double_value(&[])? / data.len().max(1) as f64;
    Ok(EvalMetrics::from_confusion(loss, &confusion))
}

/// Writes `labels.json` into the cell's directory: the class id → label map the model was
/// trained with (`labels[i]` is class i), and how many train and eval examples each class has.
pub(crate) fn write_labels(
    out_dir: &Path,
    label_column: &str,
    data: &TaskData,
) -> Result<(), TrainError> {
    let (train_counts, eval_counts) = data.class_counts();
    let path = out_dir.join("labels.json");
    // One key a line, each value on one line: a 50-class map stays readable.
    let line = |v: serde_json::Value| {
        serde_json::to_string(&v).map_err(|source| TrainError::Serialize {
            what: path.display().to_string(),
            source,
        })
    };
    let text = format!(
        "{{\n  \"label_column\": {},\n  \"labels\": {},\n  \"train_counts\": {},\n  \"eval_counts\": {}\n}}\n",
        line(label_column.into())?,
        line(data.labels.labels.clone().into())?,
        line(train_counts.into())?,
        line(eval_counts.into())?,
    );
    let io = |source| TrainError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(io)?;
    std::fs::write(&path, text).map_err(io)
}

/// Runs one grid cell from start to end, reporting through `emit`: a pack of one
/// ([`crate::pack::run_pack`]). A cell whose adapter cannot be written is an `Err`, as is any
/// error before training.
pub fn run_job(
    job: &WorkerJob,
    emit: &mut dyn FnMut(WorkerEvent),
) -> Result<JobOutcome, TrainError> {
    // The caller reports an `Err` as `failed` itself: the pack's own `failed` line is not passed on.
    let out = crate::pack::run_pack(job, &mut |_, ev| {
        if !matches!(ev, WorkerEvent::Failed { .. }) {
            emit(ev)
        }
    })?;
    match out.into_iter().next() {
        Some((_, JobOutcome::Failed(error))) => Err(TrainError::Pack(error)),
        Some((_, outcome)) => Ok(outcome),
        None => Err(TrainError::Pack("the job has no cell".into())),
    }
}

/// One evaluation's metrics, of either task kind.
pub(crate) enum AnyEval {
    Classification(EvalMetrics),
    Lm(LmEvalMetrics),
}

impl AnyEval {
    pub(crate) fn loss(&self) -> f64 {
        match self {
            AnyEval::Classification(e) => e.loss,
            AnyEval::Lm(e) => e.loss,
        }
    }
    /// Every metric but the loss, as the protocol's typed map.
    pub(crate) fn metrics(&self) -> Metrics {
        match self {
            AnyEval::Classification(e) => Metrics::new()
                .with(Measure::Accuracy, e.accuracy)
                .with(Measure::MacroF1, e.macro_f1)
                .with(Measure::Mcc, e.mcc),
            AnyEval::Lm(e) => {
                let m = Metrics::new()
                    .with(Measure::Perplexity, e.perplexity())
                    .with(Measure::TokenAccuracy, e.token_accuracy);
                match e.mc_accuracy {
                    Some(mc) => m.with(Measure::McAccuracy, mc),
                    None => m,
                }
            }
        }
    }
    pub(crate) fn event(&self, step: u64) -> WorkerEvent {
        WorkerEvent::Eval {
            step,
            loss: self.loss(),
            metrics: self.metrics(),
        }
    }
}

/// Evaluates a causal-LM cell (loss, perplexity, token accuracy and, with `mc_eval`,
/// mc_accuracy: all of them travel in its `eval` events and its result), and logs it.
pub(crate) fn eval_lm(
    model: &dyn SequenceClassifier,
    data: &TaskData,
    pad: i64,
    device: Device,
) -> Result<AnyEval, TrainError> {
    let e = evaluate_lm(model, &data.eval, data.mc.as_ref(), pad, device)?;
    eprintln!(
        "etagrid worker: causal-LM eval: loss {:.4}, perplexity {:.3}, {} response tokens, token \
         accuracy {:.4}, mc_accuracy {}",
        e.loss,
        e.perplexity(),
        e.tokens,
        e.token_accuracy,
        e.mc_accuracy.map_or("-".to_owned(), |a| format!("{a:.4}"))
    );
    Ok(AnyEval::Lm(e))
}

/// Turns the adapter config [`save_peft_adapter`] wrote for a classifier into a causal LM's: PEFT's
/// `task_type` "CAUSAL_LM" and no `modules_to_save` (no head was trained), so that
/// `PeftModel.from_pretrained(AutoModelForCausalLM…, dir)` loads it as it is.
pub(crate) fn mark_causal_lm_adapter(dir: &Path) -> Result<(), TrainError> {
    let path = dir.join("adapter_config.json");
    let io = |source| TrainError::Io {
        path: path.clone(),
        source,
    };
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if let Some(o) = v.as_object_mut() {
        o.insert("task_type".into(), "CAUSAL_LM".into());
        o.insert("modules_to_save".into(), serde_json::Value::Null);
    }
    let text = serde_json::to_vec_pretty(&v).map_err(|source| TrainError::Serialize {
        what: path.display().to_string(),
        source,
    })?;
    std::fs::write(&path, text).map_err(io)
}
