//! GPT-2 for sequence classification, as transformers' `GPT2ForSequenceClassification` computes it
//! (Radford et al. 2019; reference: transformers `models/gpt2/modeling_gpt2.py`).
//!
//! Names mirror the checkpoint (`transformer.h.N.attn.c_attn`, `transformer.ln_f`, `score`).
//! GPT-2's `Conv1D` stores weights in×out; they are transposed once at load so every layer is a
//! plain linear (PEFT's `fan_in_fan_out = True` does the same for the adapters: A is r×in, B
//! out×r either way). The head reads the last real token of each row (batches are right-padded).

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
pub struct Gpt2Config {
    pub vocab_size: i64,
    pub n_positions: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "gelu_new")]
    pub activation_function: String,
    #[serde(default = "p01")]
    pub resid_pdrop: f64,
    #[serde(default = "p01")]
    pub embd_pdrop: f64,
    #[serde(default = "p01")]
    pub attn_pdrop: f64,
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

fn gelu_new() -> String {
    "gelu_new".into()
}
fn p01() -> f64 {
    0.1
}
fn eps() -> f64 {
    1e-5
}
fn init_range() -> f64 {
    0.02
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(w: &Weights, prefix: &str, n: i64, eps: f64) -> Result<LayerNorm, TrainError> {
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.weight"), &[n])?,
            bias: w.get(&format!("{prefix}.bias"), &[n])?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let n = self.weight.size()[0];
        x.layer_norm([n], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

struct Block {
    ln_1: LayerNorm,
    attn_c_attn: Linear,
    attn_c_proj: Linear,
    ln_2: LayerNorm,
    mlp_c_fc: Linear,
    mlp_c_proj: Linear,
}

pub struct Gpt2ForSequenceClassification {
    pub config: Gpt2Config,
    wte: Embedding,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
    pub score: StackedLinear,
}

impl Gpt2ForSequenceClassification {
    pub fn load(
        dir: &Path,
        weights: &Weights,
        num_labels: i64,
        lora: &LoraSpec,
        k: i64,
        device: Device,
    ) -> Result<Gpt2ForSequenceClassification, TrainError> {
        let path = dir.join("config.json");
        let c: Gpt2Config = read_config(dir)?;
        if c.activation_function != "gelu_new" && c.activation_function != "gelu" {
            return Err(TrainError::Config {
                path,
                message: format!(
                    "activation_function {:?} is not supported",
                    c.activation_function
                ),
            });
        }
        let p = if weights.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let n = c.n_embd;
        let inner = c.n_inner.unwrap_or(4 * n);
        // transformers' module names, as PEFT matches them.
        let targets = Targets::new(&lora.target_modules)?;
        // Conv1D: stored [in, out].
        let conv = |name: &str, in_f: i64, out_f: i64| -> Result<Linear, TrainError> {
            let weight = weights
                .get(&format!("{p}{name}.weight"), &[in_f, out_f])?
                .tr()
                .contiguous();
            let bias = weights.get(&format!("{p}{name}.bias"), &[out_f])?;
            let targeted = targets.matches(&format!("transformer.{name}"));
            Ok(Linear::with_lora(
                targeted,
                weight,
                Some(bias),
                lora,
                k,
                device,
            ))
        };
        let mut h = Vec::new();
        for i in 0..c.n_layer {
            let b = format!("h.{i}");
            h.push(Block {
                ln_1: LayerNorm::load(weights, &format!("{p}{b}.ln_1"), n, c.layer_norm_epsilon)?,
                attn_c_attn: conv(&format!("{b}.attn.c_attn"), n, 3 * n)?,
                attn_c_proj: conv(&format!("{b}.attn.c_proj"), n, n)?,
                ln_2: LayerNorm::load(weights, &format!("{p}{b}.ln_2"), n, c.layer_norm_epsilon)?,
                mlp_c_fc: conv(&format!("{b}.mlp.c_fc"), n, inner)?,
                mlp_c_proj: conv(&format!("{b}.mlp.c_proj"), inner, n)?,
            });
        }
        // GPT2Model's wte has no padding_idx.
        let wte = Embedding::with_lora(
            targets.matches("transformer.wte"),
            weights.get(&format!("{p}wte.weight"), &[c.vocab_size, n])?,
            -1,
            lora,
            k,
            device,
        );
        targets.check()?;
        targets.refuse(&["transformer.wpe", "score", "lm_head"].map(String::from))?;
        Ok(Gpt2ForSequenceClassification {
            wte,
            wpe: weights.get(&format!("{p}wpe.weight"), &[c.n_positions, n])?,
            ln_f: LayerNorm::load(weights, &format!("{p}ln_f"), n, c.layer_norm_epsilon)?,
            score: StackedLinear::load(
                weights,
                "score",
                num_labels,
                n,
                false,
                k,
                c.initializer_range,
                device,
            ),
            h,
            config: c,
        })
    }

    fn layers(&self) -> impl Iterator<Item = (String, &Linear)> {
        self.h.iter().enumerate().flat_map(|(i, b)| {
            [
                (format!("transformer.h.{i}.attn.c_attn"), &b.attn_c_attn),
                (format!("transformer.h.{i}.attn.c_proj"), &b.attn_c_proj),
                (format!("transformer.h.{i}.mlp.c_fc"), &b.mlp_c_fc),
                (format!("transformer.h.{i}.mlp.c_proj"), &b.mlp_c_proj),
            ]
        })
    }

    /// Final hidden states [K·b, T, n_embd] (after `ln_f`).
    pub fn hidden(&self, batch: &Batch, train: bool) -> Tensor {
        let c = &self.config;
        let s = batch.input_ids.size();
        let (n, t) = (s[0], s[1]);
        let positions = Tensor::arange(t, (Kind::Int64, batch.input_ids.device()));
        let mut x = (self.wte.forward(&batch.input_ids)
            + Tensor::embedding(&self.wpe, &positions, -1, false, false))
        .dropout(c.embd_pdrop, train);
        let heads = c.n_head;
        let dh = c.n_embd / heads;
        let approx = if c.activation_function == "gelu_new" {
            "tanh"
        } else {
            "none"
        };
        for b in &self.h {
            let a = b.ln_1.forward(&x);
            let qkv = b.attn_c_attn.forward(&a, train).split(c.n_embd, -1);
            let split = |y: &Tensor| y.reshape([n, t, heads, dh]).transpose(1, 2);
            let p_drop = if train { c.attn_pdrop } else { 0.0 };
            // Causal attention alone is exact for right-padded rows: a real token never sees a
            // later (pad) position, and pad positions' outputs are never read.
            let ctx = Tensor::scaled_dot_product_attention::<Tensor>(
                &split(&qkv[0]),
                &split(&qkv[1]),
                &split(&qkv[2]),
                None,
                p_drop,
                true,
                None,
                false,
            )
            .transpose(1, 2)
            .reshape([n, t, c.n_embd]);
            x = x + b
                .attn_c_proj
                .forward(&ctx, train)
                .dropout(c.resid_pdrop, train);
            let m = b.mlp_c_fc.forward(&b.ln_2.forward(&x), train).gelu(approx);
            x = &x
                + b.mlp_c_proj
                    .forward(&m, train)
                    .dropout(c.resid_pdrop, train);
        }
        self.ln_f.forward(&x)
    }
}

impl SequenceClassifier for Gpt2ForSequenceClassification {
    fn forward(&self, batch: &Batch, train: bool) -> Tensor {
        let h = self.hidden(batch, train);
        let pooled = last_token_states(&h, &batch.attention_mask);
        self.score.forward(&pooled).to_kind(Kind::Float)
    }

    fn trainable(&self) -> Vec<TrainParam> {
        let mut out = Vec::new();
        self.wte.push_lora_params("transformer.wte", &mut out);
        for (name, l) in self.layers() {
            l.push_lora_params(&name, &mut out);
        }
        self.score.push_params("score", &mut out);
        out
    }

    fn frozen(&self) -> Vec<Tensor> {
        let mut out = vec![self.wte.weight.shallow_clone(), self.wpe.shallow_clone()];
        for (_, l) in self.layers() {
            l.push_frozen(&mut out);
        }
        for b in &self.h {
            for ln in [&b.ln_1, &b.ln_2] {
                out.push(ln.weight.shallow_clone());
                out.push(ln.bias.shallow_clone());
            }
        }
        out.push(self.ln_f.weight.shallow_clone());
        out.push(self.ln_f.bias.shallow_clone());
        out
    }

    fn pad_token_id(&self) -> i64 {
        self.config.pad_token_id.unwrap_or(0)
    }

    fn max_tokens(&self) -> i64 {
        self.config.n_positions
    }

    /// GPT2LMHeadModel's head is always the token embedding.
    fn next_token_logits(&self, batch: &Batch) -> Option<Tensor> {
        let h = self.hidden(batch, false);
        let last = last_token_states(&h, &batch.attention_mask);
        Some(
            last.linear::<Tensor>(&self.wte.weight, None)
                .to_kind(Kind::Float),
        )
    }

    fn lm_hidden(&self, batch: &Batch, train: bool) -> Option<(Tensor, Tensor)> {
        Some((self.hidden(batch, train), self.wte.weight.shallow_clone()))
    }
}
