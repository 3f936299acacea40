//! What the training loop needs of a model, whatever its family, and the family registry: the
//! one place where `config.json`'s family ([`etagrid_data::family::Family`]) picks a module tree.
//!
//! Adding a family: its facts in `etagrid-data`'s `family.rs`, one file here with its module tree
//! (built from [`crate::nn`]; a decoder implements [`crate::decoder::DecoderModel`]), and one arm
//! in [`load_classifier`].

use crate::nn::{LoadContext, Module};
use crate::weights::Weights;
use crate::TrainError;
use crate::{bert, gpt2, llama};
use etagrid_data::family::{Family, ModelConfig};
use etagrid_spec::LoraSpec;
use std::path::Path;
use tch::{Device, Tensor};

/// What goes into one forward pass. `input_ids`, `token_type_ids` and `attention_mask` are
/// [K·b, T]; rows k·b..(k+1)·b are seen by adapter k.
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    pub labels: Tensor,
}

/// A trainable tensor with the name PEFT would give it and its role for LoRA+ grouping.
pub struct TrainParam {
    pub name: String,
    pub tensor: Tensor,
    pub role: ParamRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRole {
    LoraA,
    LoraB,
    /// `lora_embedding_A` / `lora_embedding_B` (the LoRA+ embedding group).
    Embedding,
    /// Any other trainable tensor (the classification head); `dims` per adapter, excluding K.
    Other {
        dims: usize,
    },
}

/// What a tensor met in a walk over a model ([`Module::visit`]) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Part of the frozen base.
    Frozen,
    Train(ParamRole),
}

/// A frozen base with K stacked LoRA adapters and K classification heads.
pub trait SequenceClassifier: Module {
    /// Logits [K·b, labels] in fp32; rows k·b..(k+1)·b of the batch go through adapter k.
    fn forward(&self, batch: &Batch, train: bool) -> Tensor;
    /// The id that pads a batch.
    fn pad_token_id(&self) -> i64;
    /// The longest input the model's position table allows.
    fn max_tokens(&self) -> i64;
    /// Whether its training forward draws random numbers (a dropout probability above 0
    /// somewhere in the base). The LoRA dropout is the sweep's, checked apart.
    fn base_dropout(&self) -> bool {
        true
    }
    /// The causal LM's next-token logits [b, vocab] after each row's last real token, for the
    /// families that have one (GPT-2, Llama).
    fn next_token_logits(&self, _batch: &Batch) -> Option<Tensor> {
        None
    }
    /// For causal-LM training: the final hidden states [K·b, T, hidden] (LoRA applied, dropout
    /// when `train`) and the LM head's weight [vocab, hidden], for the families that have one.
    /// The caller applies the head only where a loss is needed.
    fn lm_hidden(&self, _batch: &Batch, _train: bool) -> Option<(Tensor, Tensor)> {
        None
    }
    /// Every trainable tensor (stacked over K), PEFT-style names, in the module tree's order.
    fn trainable(&self) -> Vec<TrainParam> {
        let mut out = Vec::new();
        self.visit(&mut |name, tensor, role| {
            if let Role::Train(role) = role {
                out.push(TrainParam {
                    name: name.to_owned(),
                    tensor: tensor.shallow_clone(),
                    role,
                });
            }
        });
        out
    }
    /// Every frozen tensor.
    fn frozen(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        self.visit(&mut |_, tensor, role| {
            if role == Role::Frozen {
                out.push(tensor.shallow_clone());
            }
        });
        out
    }
}

/// `dir/config.json` as `T`, with errors naming the file.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T, TrainError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path,
        message: e.to_string(),
    })
}

/// An error in `dir/config.json`.
pub(crate) fn config_error(dir: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Config {
        path: dir.join("config.json"),
        message: message.into(),
    }
}

/// transformers' default `initializer_range` (the heads' N(0, σ) when the checkpoint has none).
pub(crate) fn default_initializer_range() -> f64 {
    0.02
}

/// transformers' default dropout probability of BERT's and GPT-2's layers.
pub(crate) fn default_dropout() -> f64 {
    0.1
}

/// The family of the model in `dir` (from its `config.json`); unsupported ones are an error.
pub fn family(dir: &Path) -> Result<Family, TrainError> {
    Ok(ModelConfig::read(dir)?.family)
}

/// `model_type` of `dir/config.json` (a supported one).
pub fn model_type(dir: &Path) -> Result<String, TrainError> {
    Ok(family(dir)?.model_type().to_owned())
}

/// The family of the model in `dir` when it is a decoder; `[task] kind = "causal_lm"` needs one.
pub fn require_decoder(dir: &Path) -> Result<Family, TrainError> {
    let family = family(dir)?;
    if !family.is_decoder() {
        return Err(config_error(
            dir,
            format!(
                "[task] kind = \"causal_lm\" needs a decoder model (GPT-2 or Llama), but \
                 model_type is {:?}: use a decoder, or kind = \"classification\"",
                family.model_type()
            ),
        ));
    }
    Ok(family)
}

/// A family's loader: its sequence classifier for the config in `dir`, with `num_labels` classes,
/// loaded through `cx` (weights, LoRA targets, K, device). Call `tch::manual_seed` first: adapters
/// and heads draw from the global generator.
pub type LoadClassifier = fn(&Path, &LoadContext, i64) -> LoadedClassifier;

/// What a family's loader returns.
pub type LoadedClassifier = Result<Box<dyn SequenceClassifier>, TrainError>;

/// The family registry: each family's module tree.
fn loader(family: Family) -> LoadClassifier {
    match family {
        Family::Bert | Family::Roberta => bert::load_classifier,
        Family::Gpt2 => gpt2::load_classifier,
        Family::Llama => llama::load_classifier,
    }
}

/// Loads the sequence classifier of the family `dir/config.json` names, with K = `k` adapters.
pub fn load_classifier(
    dir: &Path,
    weights: &Weights,
    num_labels: i64,
    lora: &LoraSpec,
    k: i64,
    device: Device,
) -> LoadedClassifier {
    let load = loader(family(dir)?);
    load(
        dir,
        &LoadContext::new(weights, lora, k, device)?,
        num_labels,
    )
}

/// For decoder models: each row's hidden state at its last real token, [b, hidden] from
/// [b, T, hidden] (right padding).
pub fn last_token_states(h: &Tensor, attention_mask: &Tensor) -> Tensor {
    let rows = Tensor::arange(h.size()[0], (tch::Kind::Int64, h.device()));
    h.index(&[Some(rows), Some(last_token_index(attention_mask))])
}

/// For decoder models: the index of each row's last real token (right padding).
pub fn last_token_index(attention_mask: &Tensor) -> Tensor {
    (attention_mask.sum_dim_intlist(1, false, tch::Kind::Int64) - 1).clamp_min(0)
}
