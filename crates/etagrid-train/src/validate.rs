//! Everything a cell would load, checked once before a sweep is enqueued (`etagrid plan` and
//! `etagrid run`): the model's config and weights, its tokenizer, every data file (read and
//! tokenized as the worker does, through the same token cache), the labels, `target_modules`
//! against the model's modules and `max_seq_len` against its positions. A failure is the error a
//! worker would have hit, found before any cell is stored.
//!
//! This repeats the start of [`crate::train::run_job`] on the CPU with one adapter, without
//! training: keep the two in step when the worker loads something new.

use crate::data::{load_tokenizer, TaskData};
use crate::model::{family, load_classifier, require_decoder};
use crate::train::eos_token_id;
use crate::weights::Weights;
use crate::TrainError;
use etagrid_spec::CellConfig;
use std::path::Path;
use tch::{Device, Kind};

/// What the checked inputs hold, for a one-line summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub model_type: String,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// Classes of a classification task (0 for `causal_lm`).
    pub labels: usize,
    /// The longest input the model's position table allows.
    pub max_tokens: i64,
}

/// Loads and checks what a cell of `config` would load from `model_dir` (every cell of a sweep
/// loads the same: only learning rates and seeds differ). `cache_dir` is the sweep's token cache
/// (`<state-dir>/cache`), so the workers then load the tokens this check produced.
pub fn check_cell(
    config: &CellConfig,
    model_dir: &Path,
    cache_dir: Option<&Path>,
) -> Result<Checked, TrainError> {
    let tr = &config.train;
    let family = family(model_dir)?;
    let causal_lm = config.task.lm.is_some();
    let eos = if causal_lm {
        require_decoder(model_dir)?;
        eos_token_id(model_dir)?
    } else {
        None
    };
    let tok = load_tokenizer(model_dir, tr.max_seq_len)?;
    let data = match cache_dir {
        Some(dir) => {
            let tokenizer_file = model_dir.join("tokenizer.json");
            TaskData::load_cached(
                &config.task,
                &tok,
                &tokenizer_file,
                tr.max_seq_len,
                eos,
                dir,
            )?
            .0
        }
        None if causal_lm => TaskData::load_lm(&config.task, &tok, tr.max_seq_len, eos)?,
        None => TaskData::load(&config.task, &tok)?,
    };
    for (file, n, what) in [
        (&data.train_file, data.train.len(), "train"),
        (&data.eval_file, data.eval.len(), "eval"),
    ] {
        if n == 0 {
            return Err(TrainError::Data {
                path: file.clone(),
                line: None,
                message: format!("the {what} set has no example"),
            });
        }
    }
    let classes = data.labels.labels.len().max(1);
    let weights = Weights::load(model_dir, Device::Cpu, Kind::Float)?;
    let model = load_classifier(
        model_dir,
        &weights,
        classes as i64,
        &config.lora,
        1,
        Device::Cpu,
    )?;
    drop(weights);
    if tr.max_seq_len as i64 > model.max_tokens() {
        return Err(TrainError::Config {
            path: model_dir.join("config.json"),
            message: format!(
                "train.max_seq_len = {} is longer than the model's position table allows ({}): \
                 lower it in [train]",
                tr.max_seq_len,
                model.max_tokens()
            ),
        });
    }
    Ok(Checked {
        model_type: family.model_type().to_owned(),
        train_examples: data.train.len(),
        eval_examples: data.eval.len(),
        labels: data.labels.labels.len(),
        max_tokens: model.max_tokens(),
    })
}

/// True for the errors that come from the inputs (files, settings, the model's shape) rather than
/// from the machine: a worker reports these as input errors, which use no attempt.
pub fn is_input_error(e: &TrainError) -> bool {
    !matches!(e, TrainError::Device(_) | TrainError::Torch(_))
}
