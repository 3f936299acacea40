//! The train/eval loop of one worker job.

use crate::data::{collate, load_tokenizer, BatchOrder, Encoded, TaskData};
use crate::export::save_peft_adapter;
use crate::metrics::{confusion_update, Confusion, EvalMetrics};
use crate::model::{load_classifier, model_type, SequenceClassifier};
use crate::optim::LoraPlusAdamW;
use crate::weights::Weights;
use crate::{device, TrainError};
use etagrid_spec::protocol::{CellResult, WorkerEvent, WorkerJob};
use etagrid_spec::TrainLength;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Reduction, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Finished(CellResult),
    Diverged { step: u64, loss: f64 },
}

/// Mean cross-entropy over a batch of logits.
pub fn loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
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
fn write_labels(out_dir: &Path, label_column: &str, data: &TaskData) -> Result<(), TrainError> {
    let (train_counts, eval_counts) = data.class_counts();
    // One key a line, each value on one line: a 50-class map stays readable.
    let line = |v: serde_json::Value| serde_json::to_string(&v).unwrap_or_default();
    let text = format!(
        "{{\n  \"label_column\": {},\n  \"labels\": {},\n  \"train_counts\": {},\n  \"eval_counts\": {}\n}}\n",
        line(label_column.into()),
        line(data.labels.labels.clone().into()),
        line(train_counts.into()),
        line(eval_counts.into()),
    );
    let path = out_dir.join("labels.json");
    let io = |source| TrainError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(io)?;
    std::fs::write(&path, text).map_err(io)
}

/// Runs one grid cell from start to end, reporting through `emit`.
pub fn run_job(
    job: &WorkerJob,
    emit: &mut dyn FnMut(WorkerEvent),
) -> Result<JobOutcome, TrainError> {
    let started = Instant::now();
    tch::set_num_threads(job.threads.max(1) as i32);
    let device = device::select(job.device)?;
    let cfg = &job.config;
    let tr = &cfg.train;

    let tok = load_tokenizer(&job.model_dir, tr.max_seq_len)?;
    let data = match &job.cache_dir {
        Some(dir) => {
            let tokenizer_file = job.model_dir.join("tokenizer.json");
            let (data, source) =
                TaskData::load_cached(&cfg.task, &tok, &tokenizer_file, tr.max_seq_len, dir)?;
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
        None => TaskData::load(&cfg.task, &tok)?,
    };
    write_labels(&job.out_dir, &cfg.task.label_column, &data)?;
    let classes = data.labels.labels.len();
    // On a GPU the frozen base runs in bf16 (LoRA, head and optimizer state stay fp32), as PEFT
    // under bf16 autocast; on the CPU everything is fp32.
    let compute = if device == Device::Cpu {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    let weights = Weights::load(&job.model_dir, device, compute)?;
    tch::manual_seed(cfg.seed as i64);
    let model = load_classifier(
        &job.model_dir,
        &weights,
        classes as i64,
        &cfg.lora,
        1,
        device,
    )?;
    drop(weights);
    if tr.max_seq_len as i64 > model.max_tokens() {
        return Err(TrainError::Config {
            path: job.model_dir.join("config.json"),
            message: format!(
                "train.max_seq_len = {} is longer than the model's position table allows ({})",
                tr.max_seq_len,
                model.max_tokens()
            ),
        });
    }
    let pad = model.pad_token_id();
    let trainable = model.trainable();
    let trainable_params = trainable.iter().map(|p| p.tensor.numel() as u64).sum();
    let mut opt = LoraPlusAdamW::new(trainable, &[cfg.lr_a], &[cfg.lr_b], tr.weight_decay)
        .with_embedding_lr(cfg.lora.embedding_lr);

    let mut order = BatchOrder::new(data.train.len(), tr.batch_size, cfg.seed);
    let total_steps = match tr.length {
        TrainLength::Steps(s) => s,
        TrainLength::Epochs(e) => ((e * order.per_epoch() as f64).ceil() as u64).max(1),
    };
    emit(WorkerEvent::Started {
        device: device::describe(device),
        total_steps,
        train_examples: data.train.len(),
        eval_examples: data.eval.len(),
        trainable_params,
        groups: opt.groups(cfg.lr_a, cfg.lr_b),
        labels: data.labels.labels.clone(),
    });

    // The train loss is summed on the device and read only at log points (each read syncs a GPU);
    // on the CPU reading is free, so divergence is caught at the step it happens.
    let check_every_step = device == Device::Cpu;
    let mut loss_acc = Tensor::zeros([], (Kind::Double, device));
    let mut acc_steps = 0u64;
    let mut last_train_loss = f64::NAN;
    let train_started = Instant::now();
    let mut samples = 0usize;
    for step in 0..total_steps {
        let idx = order.next_batch();
        samples += idx.len();
        let batch = collate(&data.train, &idx, pad, device);
        let logits = model.forward(&batch, true);
        let l = loss(&logits, &batch.labels);
        opt.zero_grad();
        l.backward();
        let done = step + 1;
        if check_every_step {
            let v = l.double_value(&[]);
            if !v.is_finite() {
                emit(WorkerEvent::Diverged {
                    step: done,
                    loss: v,
                });
                return Ok(JobOutcome::Diverged {
                    step: done,
                    loss: v,
                });
            }
        }
        opt.step(tr.schedule.multiplier(step, tr.warmup_steps, total_steps));
        loss_acc += l.detach().to_kind(Kind::Double);
        acc_steps += 1;
        if done % tr.log_every == 0 || done == total_steps {
            let mean = loss_acc.double_value(&[]) / acc_steps as f64;
            if !mean.is_finite() {
                emit(WorkerEvent::Diverged {
                    step: done,
                    loss: mean,
                });
                return Ok(JobOutcome::Diverged {
                    step: done,
                    loss: mean,
                });
            }
            let mult = tr.schedule.multiplier(step, tr.warmup_steps, total_steps);
            emit(WorkerEvent::Train {
                step: done,
                total_steps,
                loss: mean,
                lr_a: cfg.lr_a * mult,
                lr_b: cfg.lr_b * mult,
            });
            last_train_loss = mean;
            loss_acc = Tensor::zeros([], (Kind::Double, device));
            acc_steps = 0;
        }
        if tr.eval_every > 0 && done % tr.eval_every == 0 && done != total_steps {
            let e = evaluate(model.as_ref(), &data.eval, classes, pad, device)?;
            emit(WorkerEvent::Eval {
                step: done,
                loss: e.loss,
                accuracy: e.accuracy,
                macro_f1: Some(e.macro_f1),
                mcc: Some(e.mcc),
            });
        }
    }
    let train_s = train_started.elapsed().as_secs_f64();
    let e = evaluate(model.as_ref(), &data.eval, classes, pad, device)?;
    emit(WorkerEvent::Eval {
        step: total_steps,
        loss: e.loss,
        accuracy: e.accuracy,
        macro_f1: Some(e.macro_f1),
        mcc: Some(e.mcc),
    });
    if !e.loss.is_finite() {
        emit(WorkerEvent::Diverged {
            step: total_steps,
            loss: e.loss,
        });
        return Ok(JobOutcome::Diverged {
            step: total_steps,
            loss: e.loss,
        });
    }
    let result = CellResult {
        metric: e.get(cfg.task.metric),
        eval_loss: e.loss,
        accuracy: e.accuracy,
        macro_f1: Some(e.macro_f1),
        mcc: Some(e.mcc),
        train_loss: last_train_loss,
        steps: total_steps,
        wall_s: started.elapsed().as_secs_f64(),
        train_samples_per_s: samples as f64 / train_s.max(1e-9),
    };
    if job.save_adapter {
        // In PEFT's format, next to labels.json: `etagrid export` hands it out.
        save_peft_adapter(
            &model.trainable(),
            0,
            &cfg.lora,
            &model_type(&job.model_dir)?,
            &job.model_dir.display().to_string(),
            &job.out_dir.join("adapter"),
        )?;
    }
    emit(WorkerEvent::Finished {
        result: result.clone(),
    });
    Ok(JobOutcome::Finished(result))
}
