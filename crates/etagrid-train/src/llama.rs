//! Llama for sequence classification, as transformers' `LlamaForSequenceClassification` computes
//! it (Touvron et al. 2023; reference: transformers `models/llama/modeling_llama.py` and
//! `modeling_rope_utils.py`): RMSNorm, rotary position embeddings with `rope_theta` and the
//! `llama3` frequency scaling, grouped-query attention, SiLU-gated MLP, `score` on the last real
//! token of each (right-padded) row.

use crate::bert::{Batch, StackedLinear, TrainParam};
use crate::lora::{Embedding, Linear, Targets};
use crate::model::{last_token_states, read_config, SequenceClassifier};
use crate::weights::Weights;
use crate::TrainError;
use etagrid_spec::LoraSpec;
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

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
    #[serde(default = "init_range")]
    pub initializer_range: f64,
    #[serde(default = "hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn rms_eps() -> f64 {
    1e-6
}
fn init_range() -> f64 {
    0.02
}
fn hidden_act() -> String {
    "silu".into()
}

impl LlamaConfig {
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

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        &self.weight * (xf * (var + self.eps).rsqrt()).to_kind(kind)
    }
}

struct Layer {
    input_layernorm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

pub struct LlamaForSequenceClassification {
    pub config: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// [head_dim / 2], fp32.
    inv_freq: Tensor,
    /// The causal LM head: `lm_head.weight`, or the embedding when tied; None when untied and
    /// the checkpoint has none (a sequence-classification checkpoint).
    lm_head: Option<Tensor>,
    pub score: StackedLinear,
}

impl LlamaForSequenceClassification {
    pub fn load(
        dir: &Path,
        weights: &Weights,
        num_labels: i64,
        lora: &LoraSpec,
        k: i64,
        device: Device,
    ) -> Result<LlamaForSequenceClassification, TrainError> {
        let path = dir.join("config.json");
        let c: LlamaConfig = read_config(dir)?;
        if c.hidden_act != "silu" {
            return Err(TrainError::Config {
                path,
                message: format!(
                    "hidden_act {:?} is not supported (only \"silu\")",
                    c.hidden_act
                ),
            });
        }
        let inv_freq = c.inv_freq().map_err(|message| TrainError::Config {
            path: path.clone(),
            message,
        })?;
        let p = if weights.contains("model.embed_tokens.weight") {
            "model."
        } else {
            ""
        };
        let (h, hd) = (c.hidden_size, c.head_dim());
        // transformers' module names, as PEFT matches them.
        let targets = Targets::new(&lora.target_modules)?;
        let linear =
            |name: &str, out_f: i64, in_f: i64, bias: bool| -> Result<Linear, TrainError> {
                let weight = weights.get(&format!("{p}{name}.weight"), &[out_f, in_f])?;
                let bias = if bias {
                    Some(weights.get(&format!("{p}{name}.bias"), &[out_f])?)
                } else {
                    None
                };
                let targeted = targets.matches(&format!("model.{name}"));
                Ok(Linear::with_lora(targeted, weight, bias, lora, k, device))
            };
        let norm = |name: &str| -> Result<RmsNorm, TrainError> {
            Ok(RmsNorm {
                weight: weights.get(&format!("{p}{name}.weight"), &[h])?,
                eps: c.rms_norm_eps,
            })
        };
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let l = format!("layers.{i}");
            let (ab, mb) = (c.attention_bias, c.mlp_bias);
            layers.push(Layer {
                input_layernorm: norm(&format!("{l}.input_layernorm"))?,
                q_proj: linear(
                    &format!("{l}.self_attn.q_proj"),
                    c.num_attention_heads * hd,
                    h,
                    ab,
                )?,
                k_proj: linear(&format!("{l}.self_attn.k_proj"), c.kv_heads() * hd, h, ab)?,
                v_proj: linear(&format!("{l}.self_attn.v_proj"), c.kv_heads() * hd, h, ab)?,
                o_proj: linear(
                    &format!("{l}.self_attn.o_proj"),
                    h,
                    c.num_attention_heads * hd,
                    ab,
                )?,
                post_attention_layernorm: norm(&format!("{l}.post_attention_layernorm"))?,
                gate_proj: linear(&format!("{l}.mlp.gate_proj"), c.intermediate_size, h, mb)?,
                up_proj: linear(&format!("{l}.mlp.up_proj"), c.intermediate_size, h, mb)?,
                down_proj: linear(&format!("{l}.mlp.down_proj"), h, c.intermediate_size, mb)?,
            });
        }
        let embed_weight = weights.get(&format!("{p}embed_tokens.weight"), &[c.vocab_size, h])?;
        let lm_head = match weights.get_opt("lm_head.weight", &[c.vocab_size, h])? {
            Some(w) => Some(w),
            None if c.tie_word_embeddings => Some(embed_weight.shallow_clone()),
            None => None,
        };
        // LlamaModel's embed_tokens has padding_idx = pad_token_id.
        let embed_tokens = Embedding::with_lora(
            targets.matches("model.embed_tokens"),
            embed_weight,
            c.pad_token_id.unwrap_or(-1),
            lora,
            k,
            device,
        );
        targets.check()?;
        targets.refuse(&["score", "lm_head"].map(String::from))?;
        Ok(LlamaForSequenceClassification {
            embed_tokens,
            lm_head,
            norm: norm("norm")?,
            inv_freq: Tensor::from_slice(&inv_freq)
                .to_kind(Kind::Float)
                .to_device(device),
            score: StackedLinear::load(
                weights,
                "score",
                num_labels,
                h,
                false,
                k,
                c.initializer_range,
                device,
            ),
            layers,
            config: c,
        })
    }

    fn linears(&self) -> impl Iterator<Item = (String, &Linear)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| {
            [
                (format!("model.layers.{i}.self_attn.q_proj"), &l.q_proj),
                (format!("model.layers.{i}.self_attn.k_proj"), &l.k_proj),
                (format!("model.layers.{i}.self_attn.v_proj"), &l.v_proj),
                (format!("model.layers.{i}.self_attn.o_proj"), &l.o_proj),
                (format!("model.layers.{i}.mlp.gate_proj"), &l.gate_proj),
                (format!("model.layers.{i}.mlp.up_proj"), &l.up_proj),
                (format!("model.layers.{i}.mlp.down_proj"), &l.down_proj),
            ]
        })
    }

    /// Final hidden states [K·b, T, hidden] (after `norm`).
    pub fn hidden(&self, batch: &Batch, train: bool) -> Tensor {
        let c = &self.config;
        let s = batch.input_ids.size();
        let (n, t) = (s[0], s[1]);
        let dev = batch.input_ids.device();
        let mut x = self.embed_tokens.forward(&batch.input_ids);
        let kind = x.kind();
        let hd = c.head_dim();
        // cos/sin [1, 1, T, hd] in fp32, then in the compute dtype, as transformers does.
        let pos = Tensor::arange(t, (Kind::Float, dev));
        let freqs = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let (cos, sin) = (
            emb.cos().to_kind(kind).reshape([1, 1, t, hd]),
            emb.sin().to_kind(kind).reshape([1, 1, t, hd]),
        );
        let rotate = |y: &Tensor| {
            let half = y.chunk(2, -1);
            &(y * &cos) + &(Tensor::cat(&[half[1].neg(), half[0].shallow_clone()], -1) * &sin)
        };
        let (heads, kv) = (c.num_attention_heads, c.kv_heads());
        for l in &self.layers {
            let a = l.input_layernorm.forward(&x);
            let q = l
                .q_proj
                .forward(&a, train)
                .reshape([n, t, heads, hd])
                .transpose(1, 2);
            let k = l
                .k_proj
                .forward(&a, train)
                .reshape([n, t, kv, hd])
                .transpose(1, 2);
            let v = l
                .v_proj
                .forward(&a, train)
                .reshape([n, t, kv, hd])
                .transpose(1, 2);
            let ctx = Tensor::scaled_dot_product_attention::<Tensor>(
                &rotate(&q),
                &rotate(&k),
                &v,
                None,
                0.0,
                true,
                None,
                kv != heads,
            )
            .transpose(1, 2)
            .reshape([n, t, heads * hd]);
            x = x + l.o_proj.forward(&ctx, train);
            let m = l.post_attention_layernorm.forward(&x);
            let gated = l.gate_proj.forward(&m, train).silu() * l.up_proj.forward(&m, train);
            x = &x + l.down_proj.forward(&gated, train);
        }
        self.norm.forward(&x)
    }
}

impl SequenceClassifier for LlamaForSequenceClassification {
    fn forward(&self, batch: &Batch, train: bool) -> Tensor {
        let h = self.hidden(batch, train);
        let pooled = last_token_states(&h, &batch.attention_mask);
        self.score.forward(&pooled).to_kind(Kind::Float)
    }

    fn trainable(&self) -> Vec<TrainParam> {
        let mut out = Vec::new();
        self.embed_tokens
            .push_lora_params("model.embed_tokens", &mut out);
        for (name, l) in self.linears() {
            l.push_lora_params(&name, &mut out);
        }
        self.score.push_params("score", &mut out);
        out
    }

    fn frozen(&self) -> Vec<Tensor> {
        let mut out = vec![
            self.embed_tokens.weight.shallow_clone(),
            self.norm.weight.shallow_clone(),
        ];
        for (_, l) in self.linears() {
            l.push_frozen(&mut out);
        }
        for l in &self.layers {
            out.push(l.input_layernorm.weight.shallow_clone());
            out.push(l.post_attention_layernorm.weight.shallow_clone());
        }
        out
    }

    fn pad_token_id(&self) -> i64 {
        self.config.pad_token_id.unwrap_or(0)
    }

    fn max_tokens(&self) -> i64 {
        self.config.max_position_embeddings
    }

    fn next_token_logits(&self, batch: &Batch) -> Option<Tensor> {
        let head = self.lm_head.as_ref()?;
        let h = self.hidden(batch, false);
        let last = last_token_states(&h, &batch.attention_mask);
        Some(last.linear::<Tensor>(head, None).to_kind(Kind::Float))
    }

    fn lm_hidden(&self, batch: &Batch, train: bool) -> Option<(Tensor, Tensor)> {
        let head = self.lm_head.as_ref()?.shallow_clone();
        Some((self.hidden(batch, train), head))
    }
}
