//! What the decoder families (GPT-2, Llama) share: the pre-norm decoder layer
//! (x + attn(norm_1(x)), then x + mlp(norm_2(x))), causal attention, and sequence classification
//! from each row's last real token (transformers' `…ForSequenceClassification` with right
//! padding) next to the causal LM head.
//!
//! A family brings its norm, its attention and its MLP ([`Sublayer`]s) and the embedding of
//! [`DecoderModel::hidden`]; [`DecoderForSequenceClassification`] does the rest.

use crate::dropout::dropout;
use crate::model::{last_token_states, Batch, SequenceClassifier};
use crate::nn::{attention, Module, Norm, Rope, StackedLinear, Visitor};
use etagrid_data::family::ModelConfig;
use tch::{Kind, Tensor};

/// What a decoder layer's parts see besides their input.
pub struct DecoderContext<'a> {
    pub train: bool,
    /// Rotary position embeddings, for the families that use them.
    pub rope: Option<&'a Rope>,
}

/// A decoder layer's attention or MLP.
pub trait Sublayer: Module {
    fn forward(&self, x: &Tensor, cx: &DecoderContext) -> Tensor;
}

/// A pre-norm decoder layer. `resid_pdrop`: dropout on each branch before it is added (GPT-2's;
/// 0 for Llama).
pub struct DecoderLayer<N, A, M> {
    pub norm_1: N,
    pub attn: A,
    pub norm_2: N,
    pub mlp: M,
    pub resid_pdrop: f64,
}

impl<N: Norm, A: Sublayer, M: Sublayer> DecoderLayer<N, A, M> {
    pub fn forward(&self, x: Tensor, cx: &DecoderContext) -> Tensor {
        let p = self.resid_pdrop;
        let a = self.attn.forward(&self.norm_1.forward(&x), cx);
        let x = x + dropout(&a, p, cx.train);
        let m = self.mlp.forward(&self.norm_2.forward(&x), cx);
        &x + dropout(&m, p, cx.train)
    }
}

impl<N: Norm, A: Sublayer, M: Sublayer> Module for DecoderLayer<N, A, M> {
    fn visit(&self, f: &mut Visitor<'_>) {
        self.norm_1.visit(f);
        self.attn.visit(f);
        self.norm_2.visit(f);
        self.mlp.visit(f);
    }
}

/// `layers` in turn over `x`, then the final `norm`.
pub fn decode<N: Norm, A: Sublayer, M: Sublayer>(
    layers: &[DecoderLayer<N, A, M>],
    norm: &N,
    x: Tensor,
    cx: &DecoderContext,
) -> Tensor {
    let x = layers.iter().fold(x, |x, l| l.forward(x, cx));
    norm.forward(&x)
}

/// Causal self-attention of `q` [n, heads, t, d] over `k`, `v` [n, kv_heads, t, d], heads
/// merged: [n, t, heads·d]. Causal attention alone is exact for right-padded rows: a real token
/// never sees a later (pad) position, and pad positions' outputs are never read.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, p_drop: f64) -> Tensor {
    let gqa = k.size()[1] != q.size()[1];
    attention(q, k, v, None, p_drop, true, gqa)
}

/// A decoder family's base model (`transformer`, `model`).
pub trait DecoderModel: Module {
    /// Final hidden states [K·b, T, hidden] (after the final norm).
    fn hidden(&self, batch: &Batch, train: bool) -> Tensor;
    /// Whether training draws dropout masks (see [`SequenceClassifier::base_dropout`]).
    fn dropout(&self) -> bool;
}

/// A decoder for sequence classification: `score` on each row's last real token.
pub struct DecoderForSequenceClassification<M> {
    pub model: M,
    /// The causal LM head's weight [vocab, hidden], if the checkpoint has one.
    pub lm_head: Option<Tensor>,
    pub score: StackedLinear,
    /// The pad id and the position table's size.
    pub facts: ModelConfig,
}

impl<M> DecoderForSequenceClassification<M> {
    pub fn new(
        facts: ModelConfig,
        model: M,
        lm_head: Option<Tensor>,
        score: StackedLinear,
    ) -> DecoderForSequenceClassification<M> {
        DecoderForSequenceClassification {
            model,
            lm_head,
            score,
            facts,
        }
    }
}

impl<M: DecoderModel> Module for DecoderForSequenceClassification<M> {
    fn visit(&self, f: &mut Visitor<'_>) {
        self.model.visit(f);
        self.score.visit(f);
    }
}

impl<M: DecoderModel> SequenceClassifier for DecoderForSequenceClassification<M> {
    fn forward(&self, batch: &Batch, train: bool) -> Tensor {
        let h = self.model.hidden(batch, train);
        let pooled = last_token_states(&h, &batch.attention_mask);
        self.score.forward(&pooled).to_kind(Kind::Float)
    }

    fn pad_token_id(&self) -> i64 {
        self.facts.pad_token_id.unwrap_or(0)
    }

    fn base_dropout(&self) -> bool {
        self.model.dropout()
    }

    fn max_tokens(&self) -> i64 {
        self.facts.max_tokens as i64
    }

    fn next_token_logits(&self, batch: &Batch) -> Option<Tensor> {
        let head = self.lm_head.as_ref()?;
        let h = self.model.hidden(batch, false);
        let last = last_token_states(&h, &batch.attention_mask);
        Some(last.linear::<Tensor>(head, None).to_kind(Kind::Float))
    }

    fn lm_hidden(&self, batch: &Batch, train: bool) -> Option<(Tensor, Tensor)> {
        let head = self.lm_head.as_ref()?.shallow_clone();
        Some((self.model.hidden(batch, train), head))
    }
}
