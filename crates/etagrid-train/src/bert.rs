//! BERT and RoBERTa for sequence classification, as transformers' `BertForSequenceClassification`
//! and `RobertaForSequenceClassification` compute them (Devlin et al. 2018, Liu et al. 2019;
//! reference: transformers `models/bert/modeling_bert.py`, `models/roberta/modeling_roberta.py`).
//!
//! The struct tree mirrors the checkpoint names (`embeddings.word_embeddings`,
//! `encoder.layer.N.attention.self.query`, `pooler.dense`, `classifier`), so loading is a name
//! lookup. Checkpoints saved from `BertModel` (e.g. sentence-transformers' MiniLM) have no `bert.`
//! prefix and no classifier; both layouts load. The two families differ only in
//! - position ids: BERT counts 0, 1, …; RoBERTa counts from `pad_token_id + 1` over non-pad tokens;
//! - the head: BERT's classifier reads the pooler (dense + tanh on `[CLS]`); RoBERTa's reads
//!   `[CLS]` through its own dense + tanh (`classifier.dense`) and `classifier.out_proj`, no pooler.

use crate::dropout::{dropout, dropout_add};
use crate::model::{
    config_error, default_dropout, default_initializer_range, read_config, LoadedClassifier,
    SequenceClassifier,
};
pub use crate::model::{Batch, ParamRole, TrainParam};
use crate::nn::{
    attention, module, split_heads, Embedding, Frozen, LayerNorm, Linear, LoadContext, Norm,
    StackedLinear, VarBuilder,
};
use crate::weights::Weights;
use crate::TrainError;
use etagrid_data::family::Family;
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
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// The family, `bert` or `roberta` (the two this module computes).
    pub fn family(&self) -> Family {
        match Family::from_model_type(&self.model_type) {
            Some(Family::Roberta) => Family::Roberta,
            _ => Family::Bert,
        }
    }

    pub fn is_roberta(&self) -> bool {
        self.family() == Family::Roberta
    }

    pub fn load(dir: &Path) -> Result<BertConfig, TrainError> {
        let family = crate::model::family(dir)?;
        if !matches!(family, Family::Bert | Family::Roberta) {
            return Err(TrainError::UnsupportedModel {
                path: dir.join("config.json"),
                model_type: family.model_type().to_owned(),
            });
        }
        let cfg: BertConfig = read_config(dir)?;
        if cfg.hidden_act != "gelu" {
            return Err(config_error(
                dir,
                format!(
                    "hidden_act {:?} is not supported (only \"gelu\")",
                    cfg.hidden_act
                ),
            ));
        }
        if cfg
            .position_embedding_type
            .as_deref()
            .is_some_and(|p| p != "absolute")
        {
            return Err(config_error(
                dir,
                "only position_embedding_type \"absolute\" is supported",
            ));
        }
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(config_error(
                dir,
                "hidden_size is not a multiple of num_attention_heads",
            ));
        }
        Ok(cfg)
    }
}

/// `embeddings`: word (with LoRA when targeted), position and token-type tables, LayerNorm.
struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Frozen,
    token_type_embeddings: Frozen,
    layer_norm: LayerNorm,
}

impl BertEmbeddings {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<BertEmbeddings, TrainError> {
        let h = c.hidden_size;
        Ok(BertEmbeddings {
            word_embeddings: vb
                .pp("word_embeddings")
                .embedding(c.vocab_size, h, c.pad_token_id)?,
            position_embeddings: vb
                .pp("position_embeddings")
                .frozen(&[c.max_position_embeddings, h])?,
            token_type_embeddings: vb
                .pp("token_type_embeddings")
                .frozen(&[c.type_vocab_size, h])?,
            layer_norm: vb.pp("LayerNorm").layer_norm(h, c.layer_norm_eps)?,
        })
    }

    fn forward(&self, batch: &Batch, c: &BertConfig, train: bool) -> Tensor {
        let t = batch.input_ids.size()[1];
        let positions = if c.is_roberta() {
            // transformers' create_position_ids_from_input_ids: pad + 1, pad + 2, … over
            // non-pad tokens, pad_token_id on padding.
            let not_pad = batch.input_ids.ne(c.pad_token_id).to_kind(Kind::Int64);
            not_pad.cumsum(1, Kind::Int64) * &not_pad + c.pad_token_id
        } else {
            Tensor::arange(t, (Kind::Int64, batch.input_ids.device()))
        };
        let x = self.word_embeddings.forward(&batch.input_ids)
            + self.position_embeddings.forward(&positions)
            + self.token_type_embeddings.forward(&batch.token_type_ids);
        dropout(&self.layer_norm.forward(&x), c.hidden_dropout_prob, train)
    }
}

module!(BertEmbeddings {
    word_embeddings,
    position_embeddings,
    token_type_embeddings,
    layer_norm
});

/// `attention.self`: the query, key and value projections.
struct BertSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
}

impl BertSelfAttention {
    fn load(vb: VarBuilder, h: i64) -> Result<BertSelfAttention, TrainError> {
        Ok(BertSelfAttention {
            query: vb.pp("query").linear(h, h, true)?,
            key: vb.pp("key").linear(h, h, true)?,
            value: vb.pp("value").linear(h, h, true)?,
        })
    }

    /// The attention context [n, tq, hidden] of the positions `xq` ([n, tq, hidden], `x`'s first
    /// tq) over all of `x` ([n, t, hidden]); `mask` [n, 1, 1, t].
    fn forward(
        &self,
        xq: &Tensor,
        x: &Tensor,
        mask: &Tensor,
        c: &BertConfig,
        train: bool,
    ) -> Tensor {
        let heads = c.num_attention_heads;
        let dh = c.hidden_size / heads;
        let split = |y: &Tensor| split_heads(y, heads, dh);
        let p_drop = if train {
            c.attention_probs_dropout_prob
        } else {
            0.0
        };
        // The projections that read the same positions share their adapters' A product.
        let (q, k, v) = if xq.size() == x.size() {
            let qkv = Linear::forward_all(&[&self.query, &self.key, &self.value], x, train);
            (split(&qkv[0]), split(&qkv[1]), split(&qkv[2]))
        } else {
            let kv = Linear::forward_all(&[&self.key, &self.value], x, train);
            (
                split(&self.query.forward(xq, train)),
                split(&kv[0]),
                split(&kv[1]),
            )
        };
        attention(&q, &k, &v, Some(mask), p_drop, false, false)
    }
}

module!(BertSelfAttention { query, key, value });

/// transformers' `BertSelfOutput` (`attention.output`) and `BertOutput` (`output`), which
/// compute the same: LayerNorm(dropout(dense(x)) + residual).
struct BertOutput {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl BertOutput {
    fn load(vb: VarBuilder, out_f: i64, in_f: i64, eps: f64) -> Result<BertOutput, TrainError> {
        Ok(BertOutput {
            dense: vb.pp("dense").linear(out_f, in_f, true)?,
            layer_norm: vb.pp("LayerNorm").layer_norm(out_f, eps)?,
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor, p_drop: f64, train: bool) -> Tensor {
        let y = dropout_add(&self.dense.forward(x, train), residual, p_drop, train);
        self.layer_norm.forward(&y)
    }
}

module!(BertOutput { dense, layer_norm });

/// `attention`: `self` and `output`.
struct BertAttention {
    self_: BertSelfAttention,
    output: BertOutput,
}

module!(BertAttention { self_, output });

/// `encoder.layer.N`.
struct BertLayer {
    attention: BertAttention,
    /// `intermediate.dense`, GELU after it.
    intermediate: Linear,
    output: BertOutput,
}

impl BertLayer {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<BertLayer, TrainError> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let attention = vb.pp("attention");
        Ok(BertLayer {
            attention: BertAttention {
                self_: BertSelfAttention::load(attention.pp("self"), h)?,
                output: BertOutput::load(attention.pp("output"), h, h, eps)?,
            },
            intermediate: vb.pp("intermediate").pp("dense").linear(i, h, true)?,
            output: BertOutput::load(vb.pp("output"), h, i, eps)?,
        })
    }

    /// The layer's output [n, t, hidden] for `x` [n, t, hidden]; with `first_only`, that of the
    /// first position alone, [n, 1, hidden]. Attention mixes positions only through its keys and
    /// values; the query and all that follows it are per position. So a last layer read only at
    /// `[CLS]` needs its query and everything after attention at that position alone: the same
    /// numbers for `[CLS]` (the dropout masks too, [`crate::dropout`] draws them at full length
    /// and cuts), for about a sixth of the layer's work.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        c: &BertConfig,
        train: bool,
        first_only: bool,
    ) -> Tensor {
        let p = c.hidden_dropout_prob;
        let xq = if first_only {
            x.narrow(1, 0, 1)
        } else {
            x.shallow_clone()
        };
        let ctx = self.attention.self_.forward(&xq, x, mask, c, train);
        let attn = self.attention.output.forward(&ctx, &xq, p, train);
        let inter = self.intermediate.forward(&attn, train).gelu("none");
        self.output.forward(&inter, &attn, p, train)
    }
}

module!(BertLayer {
    attention,
    intermediate,
    output
});

/// The sequence-classification head: BERT's `classifier` on the pooler output, or RoBERTa's
/// `classifier.dense` → tanh → `classifier.out_proj` on the `[CLS]` state.
pub struct ClassifierHead {
    pub dense: Option<StackedLinear>,
    pub out: StackedLinear,
}

impl ClassifierHead {
    fn load(vb: VarBuilder, c: &BertConfig, num_labels: i64) -> ClassifierHead {
        let (h, r) = (c.hidden_size, c.initializer_range);
        if c.is_roberta() {
            ClassifierHead {
                dense: Some(vb.pp("dense").head(h, h, true, r)),
                out: vb.pp("out_proj").head(num_labels, h, true, r),
            }
        } else {
            ClassifierHead {
                dense: None,
                out: vb.head(num_labels, h, true, r),
            }
        }
    }

    /// The head's modules, as PEFT's `target_modules` would name them.
    fn modules(&self) -> Vec<String> {
        let mut out: Vec<String> = self.dense.iter().map(|d| d.name.clone()).collect();
        out.push(self.out.name.clone());
        out
    }
}

module!(ClassifierHead { dense, out });

/// The family registry's loader (see [`crate::model::load_classifier`]).
pub fn load_classifier(dir: &Path, cx: &LoadContext, num_labels: i64) -> LoadedClassifier {
    let config = BertConfig::load(dir)?;
    Ok(Box::new(BertForSequenceClassification::load_with(
        config, cx, num_labels,
    )?))
}

/// `bert` / `roberta`: the base model.
struct BertModel {
    embeddings: BertEmbeddings,
    encoder: BertEncoder,
    /// BERT only (RoBERTa's classification head does not use it).
    pooler: Option<BertPooler>,
}

module!(BertModel {
    embeddings,
    encoder,
    pooler
});

/// `encoder`.
struct BertEncoder {
    layer: Vec<BertLayer>,
}

module!(BertEncoder { layer });

/// `pooler`: tanh(dense(h_`[CLS]`)).
struct BertPooler {
    dense: Linear,
}

module!(BertPooler { dense });

impl BertEncoder {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<BertEncoder, TrainError> {
        let layer = (0..c.num_hidden_layers)
            .map(|i| BertLayer::load(vb.pp("layer").pp(i), c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BertEncoder { layer })
    }
}

impl BertPooler {
    /// BERT's pooler; RoBERTa has none.
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Option<BertPooler>, TrainError> {
        if c.is_roberta() {
            return Ok(None);
        }
        let h = c.hidden_size;
        let dense = vb.pp("dense").linear(h, h, true)?;
        Ok(Some(BertPooler { dense }))
    }
}

pub struct BertForSequenceClassification {
    pub config: BertConfig,
    pub num_labels: i64,
    /// Number of stacked adapters (grid cells sharing this base).
    pub k: i64,
    bert: BertModel,
    pub classifier: ClassifierHead,
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
        let cx = LoadContext::new(weights, lora, k, device)?;
        BertForSequenceClassification::load_with(config, &cx, num_labels)
    }

    /// [`BertForSequenceClassification::load`] through a load context.
    pub fn load_with(
        config: BertConfig,
        cx: &LoadContext,
        num_labels: i64,
    ) -> Result<BertForSequenceClassification, TrainError> {
        let c = &config;
        let family = c.family();
        let base = cx.root().base(
            family.base_model_prefix(),
            "embeddings.word_embeddings.weight",
        );
        let embeddings = BertEmbeddings::load(base.pp("embeddings"), c)?;
        let encoder = BertEncoder::load(base.pp("encoder"), c)?;
        // The head draws from the generator before the pooler's adapters, as it always has.
        let head = cx.root().pp(family.head_module());
        let classifier = ClassifierHead::load(head, c, num_labels);
        let pooler = BertPooler::load(base.pp("pooler"), c)?;
        let bert = BertModel {
            embeddings,
            encoder,
            pooler,
        };
        // PEFT would adapt these if selected; etagrid cannot.
        let e = &bert.embeddings;
        let mut refused = vec![
            e.position_embeddings.name.clone(),
            e.token_type_embeddings.name.clone(),
        ];
        refused.extend(classifier.modules());
        cx.finish(&refused)?;
        Ok(BertForSequenceClassification {
            config,
            num_labels,
            k: cx.k,
            bert,
            classifier,
        })
    }

    /// Every trainable tensor, with PEFT-style names, in a fixed order.
    pub fn trainable(&self) -> Vec<TrainParam> {
        SequenceClassifier::trainable(self)
    }

    /// Every frozen tensor (for tests: they must not change in training).
    pub fn frozen(&self) -> Vec<Tensor> {
        SequenceClassifier::frozen(self)
    }

    /// The hidden state of the first token ([K·b, hidden]).
    pub fn cls_state(&self, batch: &Batch, train: bool) -> Tensor {
        let c = &self.config;
        let s = batch.input_ids.size();
        let (n, t) = (s[0], s[1]);
        let mut x = self.bert.embeddings.forward(batch, c, train);
        // [n, 1, 1, t] boolean: true where a key may be attended to.
        let mask = batch.attention_mask.gt(0).reshape([n, 1, 1, t]);
        let layers = &self.bert.encoder.layer;
        for (i, layer) in layers.iter().enumerate() {
            // Only the last layer's first position is read.
            x = layer.forward(&x, &mask, c, train, i + 1 == layers.len());
        }
        x.select(1, 0)
    }

    /// BERT's pooled output, tanh(pooler.dense(h_`[CLS]`)); for RoBERTa the `[CLS]` state itself.
    pub fn pooled(&self, batch: &Batch, train: bool) -> Tensor {
        let cls = self.cls_state(batch, train);
        match &self.bert.pooler {
            Some(p) => p.dense.forward(&cls, train).tanh(),
            None => cls,
        }
    }

    /// Logits [K·b, labels].
    pub fn forward(&self, batch: &Batch, train: bool) -> Tensor {
        let c = &self.config;
        let p_drop = c.classifier_dropout.unwrap_or(c.hidden_dropout_prob);
        let x = dropout(&self.pooled(batch, train), p_drop, train);
        let x = match &self.classifier.dense {
            Some(dense) => dropout(&dense.forward(&x).tanh(), p_drop, train),
            None => x,
        };
        // The loss and metrics are computed in fp32 whatever the compute dtype.
        self.classifier.out.forward(&x).to_kind(Kind::Float)
    }
}

module!(BertForSequenceClassification { bert, classifier });

impl SequenceClassifier for BertForSequenceClassification {
    fn forward(&self, batch: &Batch, train: bool) -> Tensor {
        BertForSequenceClassification::forward(self, batch, train)
    }
    fn pad_token_id(&self) -> i64 {
        self.config.pad_token_id
    }
    fn base_dropout(&self) -> bool {
        let c = &self.config;
        c.hidden_dropout_prob > 0.0
            || c.attention_probs_dropout_prob > 0.0
            || c.classifier_dropout.is_some_and(|p| p > 0.0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropout::SeededDropout;
    use etagrid_spec::{InitScheme, TargetModules};

    /// The last layer read only at the first position gives that position's numbers: in a
    /// training forward with every dropout on (the masks cut from the full draws) and in its
    /// gradients.
    #[test]
    fn a_layer_computed_at_its_first_position_alone_gives_that_positions_numbers() {
        let _serial = crate::dropout::tests::serial();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
        let config = BertConfig::load(&dir).expect("config");
        let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
        let mut lora = LoraSpec::new(4, 8.0, TargetModules::list(&["query", "value"]));
        lora.dropout = 0.2;
        lora.init = InitScheme::Loraplus;
        tch::manual_seed(3);
        let model = BertForSequenceClassification::load(config, &weights, 3, &lora, 2, Device::Cpu)
            .expect("model");
        let c = &model.config;
        let (n, t) = (4, 6);
        let mask = Tensor::ones([n, 1, 1, t], (Kind::Bool, Device::Cpu));
        let _ = mask.narrow(0, 1, 1).narrow(3, 4, 2).fill_(0);
        let x = Tensor::randn([n, t, c.hidden_size], (Kind::Float, Device::Cpu));
        let layer = model.bert.encoder.layer.last().expect("a layer");
        let plan = SeededDropout::new(&[7, 8], Device::Cpu);
        let run = |first_only: bool| {
            let x = x.copy().set_requires_grad(true);
            let y = plan.during(4, vec![6, 6], || {
                layer.forward(&x, &mask, c, true, first_only)
            });
            let cls = y.narrow(1, 0, 1);
            cls.sum(Kind::Float).backward();
            (cls.detach(), x.grad())
        };
        let (full, full_grad) = run(false);
        let (first, first_grad) = run(true);
        assert_eq!(first.size(), [n, 1, c.hidden_size]);
        assert!(first.allclose(&full, 1e-5, 1e-6, false));
        assert!(first_grad.allclose(&full_grad, 1e-5, 1e-6, false));
        // Dropout was on: without the scope the output is another.
        let plain = layer.forward(&x, &mask, c, false, true);
        assert!(!plain.allclose(&first, 1e-3, 1e-3, false));
    }
}
