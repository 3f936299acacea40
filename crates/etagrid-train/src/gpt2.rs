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
use crate::model::{
    config_error, default_dropout, default_initializer_range, read_config, Batch, LoadedClassifier,
};
use crate::nn::{
    module, split_heads, Embedding, Frozen, LayerNorm, Linear, LoadContext, VarBuilder,
};
use crate::TrainError;
use etagrid_data::family::{Family, ModelConfig};
use serde::Deserialize;
use std::path::Path;
use tch::{Kind, Tensor};

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
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

impl Gpt2Config {
    /// `dir/config.json`, checked for what etagrid computes.
    pub fn load(dir: &Path) -> Result<Gpt2Config, TrainError> {
        let c: Gpt2Config = read_config(dir)?;
        if c.activation_function != "gelu_new" && c.activation_function != "gelu" {
            let act = &c.activation_function;
            let message = format!("activation_function {act:?} is not supported");
            return Err(config_error(dir, message));
        }
        Ok(c)
    }
}

fn gelu_new() -> String {
    "gelu_new".into()
}
fn eps() -> f64 {
    1e-5
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

module!(Gpt2Attention { c_attn, c_proj });

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

module!(Gpt2Mlp { c_fc, c_proj });

/// `transformer.h.N`: `ln_1`, `attn`, `ln_2`, `mlp`.
pub type Gpt2Block = DecoderLayer<LayerNorm, Gpt2Attention, Gpt2Mlp>;

/// `GPT2ForSequenceClassification`: `transformer` and `score`.
pub type Gpt2ForSequenceClassification = DecoderForSequenceClassification<Gpt2Model>;

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

module!(Gpt2Model { wte, wpe, h, ln_f });

impl Gpt2Model {
    fn load(vb: VarBuilder, c: Gpt2Config) -> Result<Gpt2Model, TrainError> {
        let n = c.n_embd;
        // The blocks draw their adapters from the generator before `wte`, as they always have.
        let h = (0..c.n_layer)
            .map(|i| load_block(vb.pp("h").pp(i), &c))
            .collect::<Result<Vec<_>, _>>()?;
        // GPT2Model's wte has no padding_idx.
        let wte = vb.pp("wte").embedding(c.vocab_size, n, -1)?;
        Ok(Gpt2Model {
            wpe: vb.pp("wpe").frozen(&[c.n_positions, n])?,
            ln_f: vb.pp("ln_f").layer_norm(n, c.layer_norm_epsilon)?,
            h,
            config: c,
            wte,
        })
    }
}

impl DecoderModel for Gpt2Model {
    fn hidden(&self, batch: &Batch, train: bool) -> Tensor {
        let t = batch.input_ids.size()[1];
        let positions = Tensor::arange(t, (Kind::Int64, batch.input_ids.device()));
        let x = crate::dropout::dropout(
            &(self.wte.forward(&batch.input_ids) + self.wpe.forward(&positions)),
            self.config.embd_pdrop,
            train,
        );
        let cx = DecoderContext { train, rope: None };
        decode(&self.h, &self.ln_f, x, &cx)
    }

    fn dropout(&self) -> bool {
        let c = &self.config;
        c.resid_pdrop > 0.0 || c.embd_pdrop > 0.0 || c.attn_pdrop > 0.0
    }
}

/// The family registry's loader (see [`crate::model::load_classifier`]).
pub fn load_classifier(dir: &Path, cx: &LoadContext, num_labels: i64) -> LoadedClassifier {
    let config = Gpt2Config::load(dir)?;
    let base = cx
        .root()
        .base(Family::Gpt2.base_model_prefix(), "wte.weight");
    let model = Gpt2Model::load(base, config)?;
    let c = &model.config;
    let score = cx.root().pp(Family::Gpt2.head_module());
    // PEFT would adapt `wpe`, the head and the (tied) LM head if selected; etagrid cannot.
    cx.finish(&[
        model.wpe.name.clone(),
        score.name().into(),
        "lm_head".into(),
    ])?;
    let score = score.head(num_labels, c.n_embd, false, c.initializer_range);
    // GPT2LMHeadModel's head is always the token embedding.
    let lm_head = Some(model.wte.weight.shallow_clone());
    let facts = ModelConfig::read(dir)?;
    Ok(Box::new(DecoderForSequenceClassification::new(
        facts, model, lm_head, score,
    )))
}
