//! The train/eval loop of one worker job.

use crate::bert::{BertConfig, BertForSequenceClassification};
use crate::data::{collate, load_tokenizer, BatchOrder, Encoded, TaskData};
use crate::optim::LoraPlusAdamW;
use crate::weights::Weights;
use crate::{device, TrainError};
use etagrid_spec::protocol::{CellResult, WorkerEvent, WorkerJob};
use etagrid_spec::spec::Metric;
use etagrid_spec::TrainLength;
use std::time::Instant;
use tch::{Device, Kind, Reduction, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Finished(CellResult),
    Diverged { step: u64, loss: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
}

/// Mean cross-entropy over a batch of logits.
pub fn loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

/// Evaluates the model on all of `data` (no dropout, no gradients). Examples are batched by
/// length to waste little on padding; padding does not change any logit.
pub fn evaluate(
    model: &BertForSequenceClassification,
    data: &Encoded,
    pad: i64,
    device: Device,
) -> EvalResult {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data.ids[i].len());
    tch::no_grad(|| {
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        for chunk in order.chunks(128) {
            let batch = collate(data, chunk, pad, device);
            let logits = model.forward(&batch, false);
            loss_sum += logits
                .cross_entropy_loss::<Tensor>(&batch.labels, None, Reduction::Sum, -100, 0.0)
                .to_kind(Kind::Double);
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&batch.labels)
                .sum(Kind::Int64);
        }
        let n = data.len().max(1) as f64;
        EvalResult {
            loss: loss_sum.double_value(&[]) / n,
            accuracy: correct.int64_value(&[]) as f64 / n,
        }
    })
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

    let bert_cfg = BertConfig::load(&job.model_dir)?;
    if tr.max_seq_len as i64 > bert_cfg.max_position_embeddings {
        return Err(TrainError::Config {
            path: job.model_dir.join("config.json"),
            message: format!(
                "train.max_seq_len = {} is longer than the model's max_position_embeddings = {}",
                tr.max_seq_len, bert_cfg.max_position_embeddings
            ),
        });
    }
    let pad = bert_cfg.pad_token_id;
    let tok = load_tokenizer(&job.model_dir, tr.max_seq_len)?;
    let data = TaskData::load(&cfg.task, &tok)?;
    let weights = Weights::load(&job.model_dir, device, Kind::Float)?;
    tch::manual_seed(cfg.seed as i64);
    let model = BertForSequenceClassification::load(
        bert_cfg,
        &weights,
        data.labels.labels.len() as i64,
        &cfg.lora,
        1,
        device,
    )?;
    drop(weights);
    let trainable = model.trainable();
    let trainable_params = trainable.iter().map(|p| p.tensor.numel() as u64).sum();
    let mut opt = LoraPlusAdamW::new(trainable, &[cfg.lr_a], &[cfg.lr_b], tr.weight_decay);

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
            let e = evaluate(&model, &data.eval, pad, device);
            emit(WorkerEvent::Eval {
                step: done,
                loss: e.loss,
                accuracy: e.accuracy,
            });
        }
    }
    let train_s = train_started.elapsed().as_secs_f64();
    let e = evaluate(&model, &data.eval, pad, device);
    emit(WorkerEvent::Eval {
        step: total_steps,
        loss: e.loss,
        accuracy: e.accuracy,
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
        metric: match cfg.task.metric {
            Metric::Accuracy => e.accuracy,
            Metric::EvalLoss => e.loss,
        },
        eval_loss: e.loss,
        accuracy: e.accuracy,
        train_loss: last_train_loss,
        steps: total_steps,
        wall_s: started.elapsed().as_secs_f64(),
        train_samples_per_s: samples as f64 / train_s.max(1e-9),
    };
    emit(WorkerEvent::Finished {
        result: result.clone(),
    });
    Ok(JobOutcome::Finished(result))
}
