//! Llama for sequence classification, as transformers' `LlamaForSequenceClassification` computes
//! it (Touvron et al. 2023; reference: transformers `models/llama/modeling_llama.py` and
//! `modeling_rope_utils.py`): RMSNorm, rotary position embeddings with `rope_theta` and the
//! `llama3` frequency scaling, grouped-query attention, SiLU-gated MLP, `score` on the last real
//! token of each (right-padded) row.

use crate::decoder::{
    causal_attention, decode, DecoderContext, DecoderForSequenceClassification, DecoderLayer,
    DecoderModel, Sublayer,
};
use crate::model::{config_error, default_initializer_range, read_config, Batch, LoadedClassifier};
use crate::nn::{module, split_heads, Embedding, Linear, LoadContext, RmsNorm, Rope, VarBuilder};
use crate::TrainError;
use etagrid_data::family::{Family, ModelConfig};
use serde::Deserialize;
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    pub max_position_embeddings: i64,
    #[serde(default = "rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers ≤ 4: `rope_scaling`; transformers 5: `rope_parameters` (which also holds
    /// `rope_theta`).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn rms_eps() -> f64 {
    1e-6
}
fn hidden_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// `dir/config.json`, checked for what etagrid computes.
    pub fn load(dir: &Path) -> Result<LlamaConfig, TrainError> {
        let c: LlamaConfig = read_config(dir)?;
        if c.hidden_act != "silu" {
            let act = &c.hidden_act;
            let message = format!("hidden_act {act:?} is not supported (only \"silu\")");
            return Err(config_error(dir, message));
        }
        Ok(c)
    }

    fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    fn rope(&self) -> Option<&RopeScaling> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }
    fn theta(&self) -> f64 {
        self.rope()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// The rotary inverse frequencies, with the `llama3` scaling when configured.
    pub fn inv_freq(&self) -> Result<Vec<f64>, String> {
        let d = self.head_dim();
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.theta().powf((2 * i) as f64 / d as f64))
            .collect();
        let Some(r) = self.rope() else {
            return Ok(base);
        };
        match r.rope_type.as_str() {
            "default" => Ok(base),
            "llama3" => {
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or(format!("rope llama3 scaling needs `{name}`"))
                };
                let factor = need(r.factor, "factor")?;
                let low = need(r.low_freq_factor, "low_freq_factor")?;
                let high = need(r.high_freq_factor, "high_freq_factor")?;
                let old = need(
                    r.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?;
                let (low_wl, high_wl) = (old / low, old / high);
                Ok(base
                    .into_iter()
                    .map(|f| {
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let s = (old / wl - low) / (high - low);
                            (1.0 - s) * f / factor + s * f
                        }
                    })
                    .collect())
            }
            other => Err(format!(
                "rope type {other:?} is not supported (use \"default\" or \"llama3\")"
            )),
        }
    }
}

/// `self_attn`: grouped-query attention with rotary positions.
pub struct LlamaAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Sublayer for LlamaAttention {
    fn forward(&self, x: &Tensor, cx: &DecoderContext) -> Tensor {
        let hd = self.head_dim;
        let qkv = Linear::forward_all(&[&self.q_proj, &self.k_proj, &self.v_proj], x, cx.train);
        let q = split_heads(&qkv[0], self.heads, hd);
        let k = split_heads(&qkv[1], self.kv_heads, hd);
        let v = split_heads(&qkv[2], self.kv_heads, hd);
        let ctx = match cx.rope {
            Some(rope) => causal_attention(&rope.apply(&q), &rope.apply(&k), &v, 0.0),
            None => causal_attention(&q, &k, &v, 0.0),
        };
        self.o_proj.forward(&ctx, cx.train)
    }
}

module!(LlamaAttention {
    q_proj,
    k_proj,
    v_proj,
    o_proj
});

/// `mlp`: down(silu(gate(x)) · up(x)).
pub struct LlamaMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Sublayer for LlamaMlp {
    fn forward(&self, x: &Tensor, cx: &DecoderContext) -> Tensor {
        let gu = Linear::forward_all(&[&self.gate_proj, &self.up_proj], x, cx.train);
        let gated = gu[0].silu() * &gu[1];
        self.down_proj.forward(&gated, cx.train)
    }
}

module!(LlamaMlp {
    gate_proj,
    up_proj,
    down_proj
});

/// `model.layers.N`: `input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`.
pub type LlamaDecoderLayer = DecoderLayer<RmsNorm, LlamaAttention, LlamaMlp>;

/// `LlamaForSequenceClassification`: `model` and `score`.
pub type LlamaForSequenceClassification = DecoderForSequenceClassification<LlamaModel>;

fn load_layer(vb: VarBuilder, c: &LlamaConfig) -> Result<LlamaDecoderLayer, TrainError> {
    let (h, hd, i) = (c.hidden_size, c.head_dim(), c.intermediate_size);
    let (heads, kv) = (c.num_attention_heads, c.kv_heads());
    let (ab, mb) = (c.attention_bias, c.mlp_bias);
    let (attn, mlp) = (vb.pp("self_attn"), vb.pp("mlp"));
    Ok(DecoderLayer {
        norm_1: vb.pp("input_layernorm").rms_norm(h, c.rms_norm_eps)?,
        attn: LlamaAttention {
            q_proj: attn.pp("q_proj").linear(heads * hd, h, ab)?,
            k_proj: attn.pp("k_proj").linear(kv * hd, h, ab)?,
            v_proj: attn.pp("v_proj").linear(kv * hd, h, ab)?,
            o_proj: attn.pp("o_proj").linear(h, heads * hd, ab)?,
            heads,
            kv_heads: kv,
            head_dim: hd,
        },
        norm_2: vb
            .pp("post_attention_layernorm")
            .rms_norm(h, c.rms_norm_eps)?,
        mlp: LlamaMlp {
            gate_proj: mlp.pp("gate_proj").linear(i, h, mb)?,
            up_proj: mlp.pp("up_proj").linear(i, h, mb)?,
            down_proj: mlp.pp("down_proj").linear(h, i, mb)?,
        },
        resid_pdrop: 0.0,
    })
}

/// `model`: `embed_tokens`, `layers`, `norm`.
pub struct LlamaModel {
    pub config: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<LlamaDecoderLayer>,
    norm: RmsNorm,
    /// [head_dim / 2], fp32.
    inv_freq: Tensor,
}

module!(LlamaModel {
    embed_tokens,
    layers,
    norm
});

impl LlamaModel {
    fn load(vb: VarBuilder, c: LlamaConfig, inv_freq: &[f64]) -> Result<LlamaModel, TrainError> {
        let h = c.hidden_size;
        // The layers draw their adapters from the generator before `embed_tokens`.
        let layers = (0..c.num_hidden_layers)
            .map(|i| load_layer(vb.pp("layers").pp(i), &c))
            .collect::<Result<Vec<_>, _>>()?;
        // LlamaModel's embed_tokens has padding_idx = pad_token_id.
        let padding_idx = c.pad_token_id.unwrap_or(-1);
        Ok(LlamaModel {
            embed_tokens: vb
                .pp("embed_tokens")
                .embedding(c.vocab_size, h, padding_idx)?,
            norm: vb.pp("norm").rms_norm(h, c.rms_norm_eps)?,
            inv_freq: Tensor::from_slice(inv_freq)
                .to_kind(Kind::Float)
                .to_device(vb.context().device),
            layers,
            config: c,
        })
    }
}

impl DecoderModel for LlamaModel {
    fn hidden(&self, batch: &Batch, train: bool) -> Tensor {
        let t = batch.input_ids.size()[1];
        let x = self.embed_tokens.forward(&batch.input_ids);
        let rope = Rope::new(&self.inv_freq, t, x.kind());
        let cx = DecoderContext {
            train,
            rope: Some(&rope),
        };
        decode(&self.layers, &self.norm, x, &cx)
    }

    /// transformers' Llama has `attention_dropout` (0 in every released config); etagrid's
    /// Llama applies none.
    fn dropout(&self) -> bool {
        false
    }
}

/// The family registry's loader (see [`crate::model::load_classifier`]).
pub fn load_classifier(dir: &Path, cx: &LoadContext, num_labels: i64) -> LoadedClassifier {
    let config = LlamaConfig::load(dir)?;
    let inv_freq = config
        .inv_freq()
        .map_err(|message| config_error(dir, message))?;
    let model = LlamaModel::load(
        cx.root()
            .base(Family::Llama.base_model_prefix(), "embed_tokens.weight"),
        config,
        &inv_freq,
    )?;
    let c = &model.config;
    // The causal LM head: `lm_head.weight`, or the embedding when tied; None when untied and
    // the checkpoint has none (a sequence-classification checkpoint).
    let shape = [c.vocab_size, c.hidden_size];
    let lm_head = match cx.root().pp("lm_head").get_opt("weight", &shape)? {
        Some(w) => Some(w),
        None if c.tie_word_embeddings => Some(model.embed_tokens.weight.shallow_clone()),
        None => None,
    };
    let score = cx.root().pp(Family::Llama.head_module());
    cx.finish(&[score.name().into(), "lm_head".into()])?;
    let score = score.head(num_labels, c.hidden_size, false, c.initializer_range);
    let facts = ModelConfig::read(dir)?;
    Ok(Box::new(DecoderForSequenceClassification::new(
        facts, model, lm_head, score,
    )))
}
