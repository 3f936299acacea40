//! GPT-2 for sequence classification, as transformers' `GPT2ForSequenceClassification` computes it
//! (Radford et al. 2019; reference: transformers `models/gpt2/modeling_gpt2.py`).
//!
//! Names mirror the checkpoint (`transformer.h.N.attn.c_attn`, `transformer.ln_f`, `score`).
//! GPT-2's `Conv1D` stores weights in×out; they are transposed once at load so every layer is a
//! plain linear (PEFT's `fan_in_fan_out = True` does the same for the adapters: A is r×in, B
//! out×r either way). The head reads the last real token of each row (batches are right-padded).

use crate::decoder::{
    causal_attention, decode, DecoderContext, DecoderForSequenceClassification, DecoderLayer,
    DecoderModel, Sublayer,
};
use crate::model::{read_config, Batch};
use crate::nn::{
    split_heads, Embedding, Frozen, LayerNorm, Linear, LoadContext, Module, VarBuilder, Visitor,
};
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

/// `attn`: the fused query/key/value projection `c_attn` and the output projection `c_proj`.
pub struct Gpt2Attention {
    c_attn: Linear,
    c_proj: Linear,
    heads: i64,
    attn_pdrop: f64,
}

impl Sublayer for Gpt2Attention {
    fn forward(&self, x: &Tensor, cx: &DecoderContext) -> Tensor {
        let n_embd = self.c_proj.out_features();
        let dh = n_embd / self.heads;
        let qkv = self.c_attn.forward(x, cx.train).split(n_embd, -1);
        let split = |y: &Tensor| split_heads(y, self.heads, dh);
        let p_drop = if cx.train { self.attn_pdrop } else { 0.0 };
        let ctx = causal_attention(&split(&qkv[0]), &split(&qkv[1]), &split(&qkv[2]), p_drop);
        self.c_proj.forward(&ctx, cx.train)
    }
}

impl Module for Gpt2Attention {
    fn visit(&self, f: &mut Visitor<'_>) {
        self.c_attn.visit(f);
        self.c_proj.visit(f);
    }
}

/// `mlp`: `c_fc`, GELU (`gelu_new`: the tanh approximation), `c_proj`.
pub struct Gpt2Mlp {
    c_fc: Linear,
    c_proj: Linear,
    /// `tanh` or `none`, as `Tensor::gelu` takes it.
    approximate: &'static str,
}

impl Sublayer for Gpt2Mlp {
    fn forward(&self, x: &Tensor, cx: &DecoderContext) -> Tensor {
        let m = self.c_fc.forward(x, cx.train).gelu(self.approximate);
        self.c_proj.forward(&m, cx.train)
    }
}

impl Module for Gpt2Mlp {
    fn visit(&self, f: &mut Visitor<'_>) {
        self.c_fc.visit(f);
        self.c_proj.visit(f);
    }
}

/// `transformer.h.N`: `ln_1`, `attn`, `ln_2`, `mlp`.
pub type Gpt2Block = DecoderLayer<LayerNorm, Gpt2Attention, Gpt2Mlp>;

fn load_block(vb: VarBuilder, c: &Gpt2Config) -> Result<Gpt2Block, TrainError> {
    let n = c.n_embd;
    let inner = c.n_inner.unwrap_or(4 * n);
    let eps = c.layer_norm_epsilon;
    let (attn, mlp) = (vb.pp("attn"), vb.pp("mlp"));
    Ok(DecoderLayer {
        norm_1: vb.pp("ln_1").layer_norm(n, eps)?,
        attn: Gpt2Attention {
            c_attn: attn.pp("c_attn").conv1d(n, 3 * n)?,
            c_proj: attn.pp("c_proj").conv1d(n, n)?,
            heads: c.n_head,
            attn_pdrop: c.attn_pdrop,
        },
        norm_2: vb.pp("ln_2").layer_norm(n, eps)?,
        mlp: Gpt2Mlp {
            c_fc: mlp.pp("c_fc").conv1d(n, inner)?,
            c_proj: mlp.pp("c_proj").conv1d(inner, n)?,
            approximate: if c.activation_function == "gelu_new" {
                "tanh"
            } else {
                "none"
            },
        },
        resid_pdrop: c.resid_pdrop,
    })
}

/// `transformer`: `wte`, `wpe`, `h`, `ln_f`.
pub struct Gpt2Model {
    pub config: Gpt2Config,
    wte: Embedding,
    wpe: Frozen,
    h: Vec<Gpt2Block>,
    ln_f: LayerNorm,
}

impl DecoderModel for Gpt2Model {
    fn hidden(&self, batch: &Batch, train: bool) -> Tensor {
        let t = batch.input_ids.size()[1];
        let positions = Tensor::arange(t, (Kind::Int64, batch.input_ids.device()));
        let x = (self.wte.forward(&batch.input_ids) + self.wpe.forward(&positions))
            .dropout(self.config.embd_pdrop, train);
        let cx = DecoderContext { train, rope: None };
        decode(&self.h, &self.ln_f, x, &cx)
    }

    fn pad_token_id(&self) -> i64 {
        self.config.pad_token_id.unwrap_or(0)
    }

    fn max_tokens(&self) -> i64 {
        self.config.n_positions
    }
}

impl Module for Gpt2Model {
    fn visit(&self, f: &mut Visitor<'_>) {
        self.wte.visit(f);
        self.wpe.visit(f);
        self.h.visit(f);
        self.ln_f.visit(f);
    }
}

pub type Gpt2ForSequenceClassification = DecoderForSequenceClassification<Gpt2Model>;

impl DecoderForSequenceClassification<Gpt2Model> {
    pub fn load(
        dir: &Path,
        weights: &Weights,
        num_labels: i64,
        lora: &LoraSpec,
        k: i64,
        device: Device,
    ) -> Result<Gpt2ForSequenceClassification, TrainError> {
        let c: Gpt2Config = read_config(dir)?;
        if c.activation_function != "gelu_new" && c.activation_function != "gelu" {
            return Err(TrainError::Config {
                path: dir.join("config.json"),
                message: format!(
                    "activation_function {:?} is not supported",
                    c.activation_function
                ),
            });
        }
        let n = c.n_embd;
        let cx = LoadContext::new(weights, lora, k, device)?;
        let base = cx.root().base("transformer", "wte.weight");
        // The blocks draw their adapters from the generator before `wte`, as they always have.
        let h = (0..c.n_layer)
            .map(|i| load_block(base.pp("h").pp(i), &c))
            .collect::<Result<Vec<_>, _>>()?;
        // GPT2Model's wte has no padding_idx.
        let wte = base.pp("wte").embedding(c.vocab_size, n, -1)?;
        cx.finish(&["transformer.wpe", "score", "lm_head"].map(String::from))?;
        let model = Gpt2Model {
            wpe: base.pp("wpe").frozen(&[c.n_positions, n])?,
            ln_f: base.pp("ln_f").layer_norm(n, c.layer_norm_epsilon)?,
            h,
            config: c,
            wte,
        };
        Ok(DecoderForSequenceClassification {
            // GPT2LMHeadModel's head is always the token embedding.
            lm_head: Some(model.wte.weight.shallow_clone()),
            score: cx
                .root()
                .pp("score")
                .head(num_labels, n, false, model.config.initializer_range),
            model,
        })
    }
}
