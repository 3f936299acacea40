//! BERT and RoBERTa for sequence classification, as transformers' `BertForSequenceClassification`
//! and `RobertaForSequenceClassification` compute them (Devlin et al. 2018, Liu et al. 2019;
//! reference: transformers `models/bert/modeling_bert.py`, `models/roberta/modeling_roberta.py`).
//!
//! The struct tree mirrors the checkpoint names (`embeddings.word_embeddings`,
//! `encoder.layer.N.attention.self.query`, `pooler.dense`, `classifier`), so loading is a name
//! lookup. Checkpoints saved from `BertModel` (e.g. sentence-transformers' MiniLM) have no `bert.`
//! prefix and no classifier; both layouts load. The two families differ only in
//! - position ids: BERT counts 0, 1, …; RoBERTa counts from `pad_token_id + 1` over non-pad tokens;
//! - the head: BERT's classifier reads the pooler (dense + tanh on [CLS]); RoBERTa's reads [CLS]
//!   through its own dense + tanh (`classifier.dense`) and `classifier.out_proj`, no pooler.

use crate::lora::{Embedding, Linear, Targets};
use crate::weights::Weights;
use crate::TrainError;
use etagrid_spec::LoraSpec;
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init_range() -> f64 {
    0.02
}

impl BertConfig {
    pub fn is_roberta(&self) -> bool {
        self.model_type == "roberta"
    }

    pub fn load(dir: &Path) -> Result<BertConfig, TrainError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::Config {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let model_type = raw["model_type"].as_str().unwrap_or_default().to_owned();
        if !matches!(model_type.as_str(), "bert" | "roberta") {
            return Err(TrainError::UnsupportedModel { path, model_type });
        }
        let cfg: BertConfig = serde_json::from_value(raw).map_err(|e| TrainError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if cfg.hidden_act != "gelu" {
            return Err(TrainError::Config {
                path,
                message: format!(
                    "hidden_act {:?} is not supported (only \"gelu\")",
                    cfg.hidden_act
                ),
            });
        }
        if cfg
            .position_embedding_type
            .as_deref()
            .is_some_and(|p| p != "absolute")
        {
            return Err(TrainError::Config {
                path,
                message: "only position_embedding_type \"absolute\" is supported".into(),
            });
        }
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(TrainError::Config {
                path,
                message: "hidden_size is not a multiple of num_attention_heads".into(),
            });
        }
        Ok(cfg)
    }
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

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(w: &Weights, prefix: &str, size: i64, eps: f64) -> Result<LayerNorm, TrainError> {
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.weight"), &[size])?,
            bias: w.get(&format!("{prefix}.bias"), &[size])?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let n = *x.size().last().unwrap_or(&0);
        x.layer_norm([n], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    layer_norm: LayerNorm,
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
}

struct Layer {
    attention_self: SelfAttention,
    attention_output_dense: Linear,
    attention_output_layer_norm: LayerNorm,
    intermediate_dense: Linear,
    output_dense: Linear,
    output_layer_norm: LayerNorm,
}

/// A linear layer per adapter: weight [K, out, in], optional bias [K, out] (trainable).
pub struct StackedLinear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl StackedLinear {
    /// From the checkpoint when it has `prefix.weight` (and `prefix.bias` if `bias`) of the right
    /// shape — transformers' `from_pretrained` keeps a matching head — else N(0, init_range) and a
    /// zero bias.
    #[allow(clippy::too_many_arguments)] // one per dimension of the stacked layer
    pub fn load(
        weights: &Weights,
        prefix: &str,
        out_f: i64,
        in_f: i64,
        bias: bool,
        k: i64,
        init_range: f64,
        device: Device,
    ) -> StackedLinear {
        let w = weights
            .get_opt(&format!("{prefix}.weight"), &[out_f, in_f])
            .ok()
            .flatten();
        let b = if bias {
            weights
                .get_opt(&format!("{prefix}.bias"), &[out_f])
                .ok()
                .flatten()
        } else {
            None
        };
        let (weight, b) = match (w, b) {
            (Some(w), b) if b.is_some() || !bias => (
                w.to_kind(Kind::Float).unsqueeze(0).repeat([k, 1, 1]),
                b.map(|b| b.to_kind(Kind::Float).unsqueeze(0).repeat([k, 1])),
            ),
            _ => {
                let mut w = Tensor::zeros([k, out_f, in_f], (Kind::Float, Device::Cpu));
                tch::no_grad(|| {
                    let _ = w.normal_(0.0, init_range);
                });
                (
                    w.to_device(device),
                    bias.then(|| Tensor::zeros([k, out_f], (Kind::Float, device))),
                )
            }
        };
        StackedLinear {
            weight: weight.detach().set_requires_grad(true),
            bias: b.map(|b| b.detach().set_requires_grad(true)),
        }
    }

    /// `x`: [K·b, in] → [K·b, out], rows k·b..(k+1)·b through adapter k.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = self.weight.size()[0];
        let n = x.size()[0];
        let out_f = self.weight.size()[1];
        let xk = x.reshape([k, n / k, -1]);
        let w = self.weight.to_kind(x.kind()).transpose(1, 2);
        let y = match &self.bias {
            Some(b) => b.to_kind(x.kind()).unsqueeze(1).baddbmm(&xk, &w, 1.0, 1.0),
            None => xk.bmm(&w),
        };
        y.reshape([n, out_f])
    }

    /// Its trainable tensors, named `{name}.weight` (2-D per adapter) and `{name}.bias` (1-D).
    pub fn push_params(&self, name: &str, out: &mut Vec<TrainParam>) {
        out.push(TrainParam {
            name: format!("{name}.weight"),
            tensor: self.weight.shallow_clone(),
            role: ParamRole::Other { dims: 2 },
        });
        if let Some(b) = &self.bias {
            out.push(TrainParam {
                name: format!("{name}.bias"),
                tensor: b.shallow_clone(),
                role: ParamRole::Other { dims: 1 },
            });
        }
    }
}

/// The sequence-classification head: BERT's `classifier` on the pooler output, or RoBERTa's
/// `classifier.dense` → tanh → `classifier.out_proj` on the [CLS] state.
pub struct ClassifierHead {
    pub dense: Option<StackedLinear>,
    pub out: StackedLinear,
}

pub struct BertForSequenceClassification {
    pub config: BertConfig,
    pub num_labels: i64,
    /// Number of stacked adapters (grid cells sharing this base).
    pub k: i64,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// BERT only (RoBERTa's classification head does not use it).
    pooler: Option<Linear>,
    pub classifier: ClassifierHead,
}

/// What goes into one forward pass. `input_ids`, `token_type_ids` and `attention_mask` are
/// [K·b, T]; rows k·b..(k+1)·b are seen by adapter k.
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    pub labels: Tensor,
}

impl BertForSequenceClassification {
    /// Loads the frozen base from `weights`, adds `k` adapters per target layer and a head.
    /// The head is taken from the checkpoint when it has one of the right shape (as
    /// transformers' `from_pretrained` does), else initialised N(0, initializer_range), bias 0.
    /// Call `tch::manual_seed` first: adapters and head draw from the global generator.
    pub fn load(
        config: BertConfig,
        weights: &Weights,
        num_labels: i64,
        lora: &LoraSpec,
        k: i64,
        device: Device,
    ) -> Result<BertForSequenceClassification, TrainError> {
        let c = &config;
        let h = c.hidden_size;
        let family = if c.is_roberta() { "roberta." } else { "bert." };
        let p = if weights.contains(&format!("{family}embeddings.word_embeddings.weight")) {
            family
        } else {
            ""
        };
        // transformers' module names (always with the family prefix), as PEFT matches them.
        let targets = Targets::new(&lora.target_modules)?;
        let linear = |name: &str, out_f: i64, in_f: i64| -> Result<Linear, TrainError> {
            let weight = weights.get(&format!("{p}{name}.weight"), &[out_f, in_f])?;
            let bias = weights.get(&format!("{p}{name}.bias"), &[out_f])?;
            let targeted = targets.matches(&format!("{family}{name}"));
            Ok(Linear::with_lora(
                targeted,
                weight,
                Some(bias),
                lora,
                k,
                device,
            ))
        };
        let embeddings = Embeddings {
            word_embeddings: Embedding::with_lora(
                targets.matches(&format!("{family}embeddings.word_embeddings")),
                weights.get(
                    &format!("{p}embeddings.word_embeddings.weight"),
                    &[c.vocab_size, h],
                )?,
                c.pad_token_id,
                lora,
                k,
                device,
            ),
            position_embeddings: weights.get(
                &format!("{p}embeddings.position_embeddings.weight"),
                &[c.max_position_embeddings, h],
            )?,
            token_type_embeddings: weights.get(
                &format!("{p}embeddings.token_type_embeddings.weight"),
                &[c.type_vocab_size, h],
            )?,
            layer_norm: LayerNorm::load(
                weights,
                &format!("{p}embeddings.LayerNorm"),
                h,
                c.layer_norm_eps,
            )?,
        };
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            layers.push(Layer {
                attention_self: SelfAttention {
                    query: linear(&format!("{l}.attention.self.query"), h, h)?,
                    key: linear(&format!("{l}.attention.self.key"), h, h)?,
                    value: linear(&format!("{l}.attention.self.value"), h, h)?,
                },
                attention_output_dense: linear(&format!("{l}.attention.output.dense"), h, h)?,
                attention_output_layer_norm: LayerNorm::load(
                    weights,
                    &format!("{p}{l}.attention.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
                intermediate_dense: linear(
                    &format!("{l}.intermediate.dense"),
                    c.intermediate_size,
                    h,
                )?,
                output_dense: linear(&format!("{l}.output.dense"), h, c.intermediate_size)?,
                output_layer_norm: LayerNorm::load(
                    weights,
                    &format!("{p}{l}.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
            });
        }
        let (pooler, classifier) = if c.is_roberta() {
            let r = c.initializer_range;
            let head = ClassifierHead {
                dense: Some(StackedLinear::load(
                    weights,
                    "classifier.dense",
                    h,
                    h,
                    true,
                    k,
                    r,
                    device,
                )),
                out: StackedLinear::load(
                    weights,
                    "classifier.out_proj",
                    num_labels,
                    h,
                    true,
                    k,
                    r,
                    device,
                ),
            };
            (None, head)
        } else {
            let head = ClassifierHead {
                dense: None,
                out: StackedLinear::load(
                    weights,
                    "classifier",
                    num_labels,
                    h,
                    true,
                    k,
                    c.initializer_range,
                    device,
                ),
            };
            (Some(linear("pooler.dense", h, h)?), head)
        };
        targets.check()?;
        let heads: &[&str] = if c.is_roberta() {
            &["classifier.dense", "classifier.out_proj"]
        } else {
            &["classifier"]
        };
        let mut fixed: Vec<String> = ["position_embeddings", "token_type_embeddings"]
            .iter()
            .map(|e| format!("{family}embeddings.{e}"))
            .collect();
        fixed.extend(heads.iter().map(|h| h.to_string()));
        targets.refuse(&fixed)?;
        Ok(BertForSequenceClassification {
            config,
            num_labels,
            k,
            embeddings,
            layers,
            pooler,
            classifier,
        })
    }

    /// Every trainable tensor, with PEFT-style names, in a fixed order.
    pub fn trainable(&self) -> Vec<TrainParam> {
        let mut out = Vec::new();
        let family = if self.config.is_roberta() {
            "roberta"
        } else {
            "bert"
        };
        self.embeddings
            .word_embeddings
            .push_lora_params(&format!("{family}.embeddings.word_embeddings"), &mut out);
        let mut push_lora =
            |name: &str, l: &Linear| l.push_lora_params(&format!("{family}.{name}"), &mut out);
        for (i, layer) in self.layers.iter().enumerate() {
            let l = format!("encoder.layer.{i}");
            push_lora(
                &format!("{l}.attention.self.query"),
                &layer.attention_self.query,
            );
            push_lora(
                &format!("{l}.attention.self.key"),
                &layer.attention_self.key,
            );
            push_lora(
                &format!("{l}.attention.self.value"),
                &layer.attention_self.value,
            );
            push_lora(
                &format!("{l}.attention.output.dense"),
                &layer.attention_output_dense,
            );
            push_lora(
                &format!("{l}.intermediate.dense"),
                &layer.intermediate_dense,
            );
            push_lora(&format!("{l}.output.dense"), &layer.output_dense);
        }
        if let Some(pooler) = &self.pooler {
            push_lora("pooler.dense", pooler);
        }
        match &self.classifier.dense {
            Some(dense) => {
                dense.push_params("classifier.dense", &mut out);
                self.classifier
                    .out
                    .push_params("classifier.out_proj", &mut out);
            }
            None => self.classifier.out.push_params("classifier", &mut out),
        }
        out
    }

    /// Every frozen tensor (for tests: they must not change in training).
    pub fn frozen(&self) -> Vec<Tensor> {
        let mut out = vec![
            self.embeddings.word_embeddings.weight.shallow_clone(),
            self.embeddings.position_embeddings.shallow_clone(),
            self.embeddings.token_type_embeddings.shallow_clone(),
        ];
        let mut lin = |l: &Linear| l.push_frozen(&mut out);
        for layer in &self.layers {
            lin(&layer.attention_self.query);
            lin(&layer.attention_self.key);
            lin(&layer.attention_self.value);
            lin(&layer.attention_output_dense);
            lin(&layer.intermediate_dense);
            lin(&layer.output_dense);
        }
        if let Some(pooler) = &self.pooler {
            lin(pooler);
        }
        out
    }

    /// The hidden state of the first token ([K·b, hidden]).
    pub fn cls_state(&self, batch: &Batch, train: bool) -> Tensor {
        let c = &self.config;
        let (n, t) = {
            let s = batch.input_ids.size();
            (s[0], s[1])
        };
        let drop = |x: Tensor| x.dropout(c.hidden_dropout_prob, train);
        let positions = if c.is_roberta() {
            // transformers' create_position_ids_from_input_ids: pad + 1, pad + 2, … over
            // non-pad tokens, pad_token_id on padding.
            let not_pad = batch.input_ids.ne(c.pad_token_id).to_kind(Kind::Int64);
            not_pad.cumsum(1, Kind::Int64) * &not_pad + c.pad_token_id
        } else {
            Tensor::arange(t, (Kind::Int64, batch.input_ids.device()))
        };
        let e = &self.embeddings;
        let x = e.word_embeddings.forward(&batch.input_ids)
            + Tensor::embedding(&e.position_embeddings, &positions, -1, false, false)
            + Tensor::embedding(
                &e.token_type_embeddings,
                &batch.token_type_ids,
                -1,
                false,
                false,
            );
        let mut x = drop(e.layer_norm.forward(&x));
        let heads = c.num_attention_heads;
        let dh = c.hidden_size / heads;
        // [n, 1, 1, t] boolean: true where a key may be attended to.
        let mask = batch.attention_mask.gt(0).reshape([n, 1, 1, t]);
        let split = |y: Tensor| y.reshape([n, t, heads, dh]).transpose(1, 2);
        for layer in &self.layers {
            let a = &layer.attention_self;
            let q = split(a.query.forward(&x, train));
            let k = split(a.key.forward(&x, train));
            let v = split(a.value.forward(&x, train));
            let p_drop = if train {
                c.attention_probs_dropout_prob
            } else {
                0.0
            };
            let ctx = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                p_drop,
                false,
                None,
                false,
            )
            .transpose(1, 2)
            .reshape([n, t, c.hidden_size]);
            let attn = drop(layer.attention_output_dense.forward(&ctx, train));
            let attn = layer.attention_output_layer_norm.forward(&(attn + &x));
            let inter = layer.intermediate_dense.forward(&attn, train).gelu("none");
            let out = drop(layer.output_dense.forward(&inter, train));
            x = layer.output_layer_norm.forward(&(out + attn));
        }
        x.select(1, 0)
    }

    /// BERT's pooled output, tanh(pooler.dense(h_[CLS])); for RoBERTa the [CLS] state itself.
    pub fn pooled(&self, batch: &Batch, train: bool) -> Tensor {
        let cls = self.cls_state(batch, train);
        match &self.pooler {
            Some(p) => p.forward(&cls, train).tanh(),
            None => cls,
        }
    }

    /// Logits [K·b, labels].
    pub fn forward(&self, batch: &Batch, train: bool) -> Tensor {
        let c = &self.config;
        let p_drop = c.classifier_dropout.unwrap_or(c.hidden_dropout_prob);
        let x = self.pooled(batch, train).dropout(p_drop, train);
        let x = match &self.classifier.dense {
            Some(dense) => dense.forward(&x).tanh().dropout(p_drop, train),
            None => x,
        };
        // The loss and metrics are computed in fp32 whatever the compute dtype.
        self.classifier.out.forward(&x).to_kind(Kind::Float)
    }
}
