//! What the training loop needs of a model, whatever its family, and the choice of family from
//! `config.json`'s `model_type`.

use crate::bert::{Batch, BertConfig, BertForSequenceClassification, TrainParam};
use crate::gpt2::Gpt2ForSequenceClassification;
use crate::llama::LlamaForSequenceClassification;
use crate::weights::Weights;
use crate::TrainError;
use etagrid_spec::LoraSpec;
use std::path::Path;
use tch::{Device, Tensor};

/// A frozen base with K stacked LoRA adapters and K classification heads.
pub trait SequenceClassifier {
    /// Logits [K·b, labels] in fp32; rows k·b..(k+1)·b of the batch go through adapter k.
    fn forward(&self, batch: &Batch, train: bool) -> Tensor;
    /// Every trainable tensor (stacked over K), PEFT-style names, fixed order.
    fn trainable(&self) -> Vec<TrainParam>;
    /// Every frozen tensor.
    fn frozen(&self) -> Vec<Tensor>;
    /// The id that pads a batch.
    fn pad_token_id(&self) -> i64;
    /// The longest input the model's position table allows.
    fn max_tokens(&self) -> i64;
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

/// `model_type` of `dir/config.json`.
pub fn model_type(dir: &Path) -> Result<String, TrainError> {
    let v: serde_json::Value = read_config(dir)?;
    Ok(v["model_type"].as_str().unwrap_or_default().to_owned())
}

/// Loads the sequence classifier of the family `dir/config.json` names.
pub fn load_classifier(
    dir: &Path,
    weights: &Weights,
    num_labels: i64,
    lora: &LoraSpec,
    k: i64,
    device: Device,
) -> Result<Box<dyn SequenceClassifier>, TrainError> {
    Ok(match model_type(dir)?.as_str() {
        "gpt2" => Box::new(Gpt2ForSequenceClassification::load(
            dir, weights, num_labels, lora, k, device,
        )?),
        "llama" => Box::new(LlamaForSequenceClassification::load(
            dir, weights, num_labels, lora, k, device,
        )?),
        _ => Box::new(BertForSequenceClassification::load(
            BertConfig::load(dir)?,
            weights,
            num_labels,
            lora,
            k,
            device,
        )?),
    })
}

impl SequenceClassifier for BertForSequenceClassification {
    fn forward(&self, batch: &Batch, train: bool) -> Tensor {
        BertForSequenceClassification::forward(self, batch, train)
    }
    fn trainable(&self) -> Vec<TrainParam> {
        BertForSequenceClassification::trainable(self)
    }
    fn frozen(&self) -> Vec<Tensor> {
        BertForSequenceClassification::frozen(self)
    }
    fn pad_token_id(&self) -> i64 {
        self.config.pad_token_id
    }
    fn max_tokens(&self) -> i64 {
        // RoBERTa's positions start after the pad id.
        if self.config.is_roberta() {
            self.config.max_position_embeddings - self.config.pad_token_id - 1
        } else {
            self.config.max_position_embeddings
        }
    }
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
