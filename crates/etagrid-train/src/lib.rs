//! Fine-tuning one grid cell with libtorch (through `tch`). This is the only crate that links
//! libtorch; the scheduler talks to it through a worker process and `etagrid_spec::protocol`.
//!
//! - [`weights`]: tensors out of a Hugging Face `model.safetensors`.
//! - [`model`]: what training needs of a model, the shared types ([`model::Batch`],
//!   [`model::TrainParam`]) and the family registry ([`model::load_classifier`]).
//! - [`nn`]: the layers every family is built from (linear and embedding with LoRA, layer/RMS
//!   norm, attention, heads) and the loader that names them as the checkpoint does.
//! - [`bert`] (BERT, RoBERTa), [`gpt2`], [`llama`]: the families' module trees; [`decoder`]: what
//!   the decoder families share.
//! - [`lora`]: K stacked LoRA adapters (`[K, r, in]`, `[K, out, r]`; one grid cell is K = 1) and
//!   PEFT's `target_modules` selection.
//! - [`optim`]: AdamW with the LoRA+ authors' parameter groups and per-adapter learning rates.
//! - [`data`]: batches as tensors; reading, splits, tokenization and the token cache are in
//!   `etagrid_data` (no tch), re-exported there.
//! - [`metrics`]: accuracy, macro-F1 and MCC from a confusion matrix gathered on the device.
//! - [`checkpoint`]: a cell's state at a rung of successive halving, to continue from.
//! - [`memprobe`]: a pack's GPU memory, measured, for the scheduler's `auto` pack size.
//! - [`pack`]: the train/eval loop of one worker job: K cells on one frozen base (K = 1: one cell).
//! - [`train`]: losses, evaluation and the one-cell entry point.

// In tch, `a += b` is the in-place `add_`: on a tensor autograd saved for the backward pass it
// makes training fail ("modified by an inplace operation"). Clippy's `assign_op_pattern` would
// rewrite the residual `x = x + f(x)` into exactly that, so it is off in this crate.
#![allow(clippy::assign_op_pattern)]

pub mod bench;
pub mod bert;
pub mod checkpoint;
pub mod data;
pub mod decoder;
pub mod device;
pub mod dropout;
mod error;
pub mod export;
pub mod gpt2;
pub mod llama;
pub mod lora;
pub mod memprobe;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod optim;
pub mod pack;
pub mod predict;
pub mod train;
pub mod validate;
pub mod weights;

pub use error::TrainError;
pub use pack::run_pack;
pub use train::{run_job, JobOutcome};
