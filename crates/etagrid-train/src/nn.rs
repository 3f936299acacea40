//! The layers every family is built from, and the loader that names them.
//!
//! A model is a tree of modules nested as the checkpoint names nest (candle-transformers' style):
//! each module loads its own sub-path through a [`VarBuilder`] (`vb.pp("attention").pp("self")`),
//! and each leaf keeps the full transformers name it was loaded under. So the names are written
//! once, at load, and one walk ([`Module::visit`]) yields the trainable and the frozen tensors,
//! with the names PEFT gives them.
//!
//! Leaves: [`Linear`] and [`Embedding`] (frozen, with K stacked LoRA adapters when the targets
//! select them), [`LayerNorm`], [`RmsNorm`], [`Frozen`] (a plain frozen table), [`StackedLinear`]
//! (a head trained in full, one per adapter). Attention: [`split_heads`], [`attention`], [`Rope`].

use crate::lora::{EmbeddingAdapter, LoraAdapter, Targets};
use crate::model::{ParamRole, Role};
use crate::weights::Weights;
use crate::TrainError;
use etagrid_spec::LoraSpec;
use std::fmt::Display;
use tch::{Device, Kind, Tensor};

/// What [`Module::visit`] calls for every tensor: its full name, the tensor, its role.
pub type Visitor<'a> = dyn FnMut(&str, &Tensor, Role) + 'a;

/// A module of a model's tree.
pub trait Module {
    /// Calls `f` for each of its tensors, in the tree's order (a module's children in checkpoint
    /// order, the adapters after the weight they adapt).
    fn visit(&self, f: &mut Visitor<'_>);
}

/// Implements [`Module`] for a struct of modules: a walk visits `fields` in the order given
/// (the checkpoint's).
macro_rules! module {
    ($ty:ty { $($field:ident),+ $(,)? }) => {
        impl $crate::nn::Module for $ty {
            fn visit(&self, f: &mut $crate::nn::Visitor<'_>) {
                $($crate::nn::Module::visit(&self.$field, f);)+
            }
        }
    };
}
pub(crate) use module;

impl<M: Module> Module for Vec<M> {
    fn visit(&self, f: &mut Visitor<'_>) {
        self.iter().for_each(|m| m.visit(f));
    }
}

impl<M: Module> Module for Option<M> {
    fn visit(&self, f: &mut Visitor<'_>) {
        if let Some(m) = self {
            m.visit(f);
        }
    }
}

fn join(prefix: &str, name: impl Display) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// What every module of one model loads with: the checkpoint, the LoRA settings and targets,
/// the number K of stacked adapters and the device.
pub struct LoadContext<'a> {
    pub weights: &'a Weights,
    pub targets: Targets,
    pub lora: &'a LoraSpec,
    pub k: i64,
    pub device: Device,
}

impl<'a> LoadContext<'a> {
    pub fn new(
        weights: &'a Weights,
        lora: &'a LoraSpec,
        k: i64,
        device: Device,
    ) -> Result<LoadContext<'a>, TrainError> {
        Ok(LoadContext {
            weights,
            targets: Targets::new(&lora.target_modules)?,
            lora,
            k,
            device,
        })
    }

    /// The checkpoint's top level (where the heads are).
    pub fn root(&self) -> VarBuilder<'_> {
        VarBuilder {
            cx: self,
            key: String::new(),
            name: String::new(),
        }
    }

    /// After loading: targets that selected nothing are an error, as are targets that select
    /// one of `refused` (modules etagrid cannot adapt; see [`Targets::refuse`]).
    pub fn finish(&self, refused: &[String]) -> Result<(), TrainError> {
        self.targets.check()?;
        self.targets.refuse(refused)
    }
}

/// A position in the module tree: the checkpoint key prefix its tensors are read under, and
/// the module name transformers (and PEFT) give it.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    cx: &'a LoadContext<'a>,
    key: String,
    name: String,
}

impl<'a> VarBuilder<'a> {
    /// The child module `part`.
    pub fn pp(&self, part: impl Display) -> VarBuilder<'a> {
        VarBuilder {
            cx: self.cx,
            key: join(&self.key, &part),
            name: join(&self.name, &part),
        }
    }

    /// The base model under `prefix` (`bert`, `transformer`, `model`). transformers names its
    /// modules with the prefix; a checkpoint saved from the bare base model (`BertModel`,
    /// `GPT2Model`) has none, which `probe` (a tensor of the base) tells.
    pub fn base(&self, prefix: &str, probe: &str) -> VarBuilder<'a> {
        let with_prefix = self.cx.weights.contains(&format!("{prefix}.{probe}"));
        VarBuilder {
            cx: self.cx,
            key: if with_prefix {
                prefix.to_owned()
            } else {
                String::new()
            },
            name: prefix.to_owned(),
        }
    }

    /// The module's transformers name (`bert.encoder.layer.0.attention.self.query`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn context(&self) -> &'a LoadContext<'a> {
        self.cx
    }

    /// The checkpoint tensor `tensor` of this module, checked against `shape`.
    pub fn get(&self, tensor: &str, shape: &[i64]) -> Result<Tensor, TrainError> {
        self.cx.weights.get(&join(&self.key, tensor), shape)
    }

    /// Like [`VarBuilder::get`], `None` when the checkpoint has no such tensor.
    pub fn get_opt(&self, tensor: &str, shape: &[i64]) -> Result<Option<Tensor>, TrainError> {
        self.cx.weights.get_opt(&join(&self.key, tensor), shape)
    }

    /// A frozen `nn.Linear` (`weight` `[out, in]`, `bias` `[out]` if `bias`), with adapters when
    /// the targets select it.
    pub fn linear(&self, out_f: i64, in_f: i64, bias: bool) -> Result<Linear, TrainError> {
        let weight = self.get("weight", &[out_f, in_f])?;
        let bias = bias.then(|| self.get("bias", &[out_f])).transpose()?;
        Ok(self.adapted_linear(weight, bias))
    }

    /// GPT-2's `Conv1D` (`weight` stored [in, out], a bias), transposed once to a [`Linear`].
    pub fn conv1d(&self, in_f: i64, out_f: i64) -> Result<Linear, TrainError> {
        let weight = self.get("weight", &[in_f, out_f])?.tr().contiguous();
        let bias = self.get("bias", &[out_f])?;
        Ok(self.adapted_linear(weight, Some(bias)))
    }

    fn adapted_linear(&self, weight: Tensor, bias: Option<Tensor>) -> Linear {
        let cx = self.cx;
        let targeted = cx.targets.matches(&self.name);
        Linear::with_lora(
            self.name.clone(),
            targeted,
            weight,
            bias,
            cx.lora,
            cx.k,
            cx.device,
        )
    }

    /// A frozen `nn.Embedding` [vocab, dim] (`padding_idx` -1: none), with adapters when the
    /// targets select it.
    pub fn embedding(
        &self,
        vocab: i64,
        dim: i64,
        padding_idx: i64,
    ) -> Result<Embedding, TrainError> {
        let cx = self.cx;
        let weight = self.get("weight", &[vocab, dim])?;
        let targeted = cx.targets.matches(&self.name);
        Ok(Embedding::with_lora(
            self.name.clone(),
            targeted,
            weight,
            padding_idx,
            cx.lora,
            cx.k,
            cx.device,
        ))
    }

    /// A frozen table that never gets adapters (position and token-type embeddings).
    pub fn frozen(&self, shape: &[i64]) -> Result<Frozen, TrainError> {
        Ok(Frozen {
            name: self.name.clone(),
            weight: self.get("weight", shape)?,
        })
    }

    pub fn layer_norm(&self, size: i64, eps: f64) -> Result<LayerNorm, TrainError> {
        Ok(LayerNorm {
            name: self.name.clone(),
            weight: self.get("weight", &[size])?,
            bias: self.get("bias", &[size])?,
            eps,
        })
    }

    pub fn rms_norm(&self, size: i64, eps: f64) -> Result<RmsNorm, TrainError> {
        Ok(RmsNorm {
            name: self.name.clone(),
            weight: self.get("weight", &[size])?,
            eps,
        })
    }

    /// A classification head trained in full, one per adapter: from the checkpoint when it has
    /// `weight` (and `bias` if `bias`) of the right shape — transformers' `from_pretrained` keeps
    /// a matching head — else N(0, init_range) and a zero bias.
    pub fn head(&self, out_f: i64, in_f: i64, bias: bool, init_range: f64) -> StackedLinear {
        let cx = self.cx;
        let w = self.get_opt("weight", &[out_f, in_f]).ok().flatten();
        let b = if bias {
            self.get_opt("bias", &[out_f]).ok().flatten()
        } else {
            None
        };
        let k = cx.k;
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
                    w.to_device(cx.device),
                    bias.then(|| Tensor::zeros([k, out_f], (Kind::Float, cx.device))),
                )
            }
        };
        StackedLinear {
            name: self.name.clone(),
            weight: weight.detach().set_requires_grad(true),
            bias: b.map(|b| b.detach().set_requires_grad(true)),
        }
    }
}

/// A frozen linear layer, optionally with K stacked adapters.
pub struct Linear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    /// A frozen layer `weight` [out, in] (+ `bias`), with K adapters when `targeted` (see
    /// [`Targets::matches`]).
    pub fn with_lora(
        name: String,
        targeted: bool,
        weight: Tensor,
        bias: Option<Tensor>,
        lora: &LoraSpec,
        k: i64,
        device: Device,
    ) -> Linear {
        let (out_f, in_f) = (weight.size()[0], weight.size()[1]);
        let adapter = targeted.then(|| {
            LoraAdapter::new(
                k,
                lora.rank as i64,
                in_f,
                out_f,
                lora.scaling(),
                lora.dropout,
                lora.init,
                device,
            )
        });
        Linear {
            name,
            weight,
            bias,
            lora: adapter,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        Self::forward_all(&[self], x, train)
            .pop()
            .expect("one layer, one output")
    }

    /// The outputs of `layers`, which all read `x`, in order: each [`Linear::forward`], with
    /// the adapters' A products shared ([`crate::lora::deltas`]).
    ///
    /// The frozen products come first, then the adapter paths, as in PEFT's `lora.Linear`
    /// (`base_layer(x)`, then `lora_B(lora_A(dropout(x)))`). The order is not cosmetic: autograd
    /// sums the gradients `x` gets from its readers in reverse order of their creation, and in
    /// bf16 another order of that sum rounds to other bits (on the H200 the TREC-50 grid's
    /// best cell moved by 12 of 1,077 eval questions with the order alone, bench/RESULTS.md).
    pub fn forward_all(layers: &[&Linear], x: &Tensor, train: bool) -> Vec<Tensor> {
        let frozen: Vec<Tensor> = layers
            .iter()
            .map(|l| x.linear(&l.weight, l.bias.as_ref()))
            .collect();
        let adapters: Vec<&LoraAdapter> = layers.iter().filter_map(|l| l.lora.as_ref()).collect();
        let mut deltas = crate::lora::deltas(&adapters, x, train).into_iter();
        layers
            .iter()
            .zip(frozen)
            .map(|(l, y)| match &l.lora {
                Some(_) => y + deltas.next().expect("one delta an adapter"),
                None => y,
            })
            .collect()
    }

    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }
}

impl Module for Linear {
    /// The frozen `weight` and `bias`, then the adapters as PEFT names them
    /// (`{name}.lora_A.weight`, `{name}.lora_B.weight`).
    fn visit(&self, f: &mut Visitor<'_>) {
        let n = &self.name;
        f(&format!("{n}.weight"), &self.weight, Role::Frozen);
        if let Some(b) = &self.bias {
            f(&format!("{n}.bias"), b, Role::Frozen);
        }
        if let Some(l) = &self.lora {
            let (a, b) = (Role::Train(ParamRole::LoraA), Role::Train(ParamRole::LoraB));
            f(&format!("{n}.lora_A.weight"), &l.a, a);
            f(&format!("{n}.lora_B.weight"), &l.b, b);
        }
    }
}

/// A frozen embedding table [vocab, dim], optionally with K adapters.
pub struct Embedding {
    pub name: String,
    pub weight: Tensor,
    /// -1: none.
    pub padding_idx: i64,
    pub lora: Option<EmbeddingAdapter>,
}

impl Embedding {
    /// A frozen table, with K adapters when `targeted` (see [`EmbeddingAdapter::new`]).
    pub fn with_lora(
        name: String,
        targeted: bool,
        weight: Tensor,
        padding_idx: i64,
        lora: &LoraSpec,
        k: i64,
        device: Device,
    ) -> Embedding {
        let (vocab, dim) = (weight.size()[0], weight.size()[1]);
        let adapter = targeted.then(|| EmbeddingAdapter::new(k, vocab, dim, lora, device));
        Embedding {
            name,
            weight,
            padding_idx,
            lora: adapter,
        }
    }

    /// [K·b, T] ids → [K·b, T, dim]; rows k·b..(k+1)·b go through adapter k.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let base = Tensor::embedding(&self.weight, ids, self.padding_idx, false, false);
        match &self.lora {
            Some(l) => {
                let delta = l.delta(ids, self.padding_idx, base.kind());
                base + delta
            }
            None => base,
        }
    }
}

impl Module for Embedding {
    /// The frozen table, then the adapters as PEFT saves them (`{name}.lora_embedding_A`,
    /// `{name}.lora_embedding_B`).
    fn visit(&self, f: &mut Visitor<'_>) {
        let n = &self.name;
        f(&format!("{n}.weight"), &self.weight, Role::Frozen);
        if let Some(l) = &self.lora {
            let role = Role::Train(ParamRole::Embedding);
            f(&format!("{n}.lora_embedding_A"), &l.a, role);
            f(&format!("{n}.lora_embedding_B"), &l.b, role);
        }
    }
}

/// A frozen table read by index, never adapted (position and token-type embeddings).
pub struct Frozen {
    pub name: String,
    pub weight: Tensor,
}

impl Frozen {
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}

impl Module for Frozen {
    fn visit(&self, f: &mut Visitor<'_>) {
        f(&format!("{}.weight", self.name), &self.weight, Role::Frozen);
    }
}

/// A normalisation over the last dimension.
pub trait Norm: Module {
    fn forward(&self, x: &Tensor) -> Tensor;
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    pub name: String,
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl Norm for LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let n = self.weight.size()[0];
        x.layer_norm([n], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

impl Module for LayerNorm {
    fn visit(&self, f: &mut Visitor<'_>) {
        f(&format!("{}.weight", self.name), &self.weight, Role::Frozen);
        f(&format!("{}.bias", self.name), &self.bias, Role::Frozen);
    }
}

/// Llama's `LlamaRMSNorm`: computed in fp32, scaled in the input's dtype.
pub struct RmsNorm {
    pub name: String,
    pub weight: Tensor,
    pub eps: f64,
}

impl Norm for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        &self.weight * (xf * (var + self.eps).rsqrt()).to_kind(kind)
    }
}

impl Module for RmsNorm {
    fn visit(&self, f: &mut Visitor<'_>) {
        f(&format!("{}.weight", self.name), &self.weight, Role::Frozen);
    }
}

/// A linear layer per adapter, trained in full (the classification heads): weight
/// [K, out, in], optional bias [K, out].
pub struct StackedLinear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl StackedLinear {
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
}

impl Module for StackedLinear {
    /// `{name}.weight` (2-D per adapter) and `{name}.bias` (1-D), trainable.
    fn visit(&self, f: &mut Visitor<'_>) {
        let n = &self.name;
        f(
            &format!("{n}.weight"),
            &self.weight,
            Role::Train(ParamRole::Other { dims: 2 }),
        );
        if let Some(b) = &self.bias {
            f(
                &format!("{n}.bias"),
                b,
                Role::Train(ParamRole::Other { dims: 1 }),
            );
        }
    }
}

/// [n, t, heads·d] → [n, heads, t, d].
pub fn split_heads(x: &Tensor, heads: i64, d: i64) -> Tensor {
    let s = x.size();
    x.reshape([s[0], s[1], heads, d]).transpose(1, 2)
}

/// Scaled dot-product attention of `q` [n, heads, t, d] over `k`, `v` ([n, kv_heads, t, d];
/// `gqa` when kv_heads < heads), heads merged back: [n, t, heads·d]. `mask` [n, 1, 1, t]: true
/// where a key may be attended to; `causal`: each position sees itself and the earlier ones.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    p_drop: f64,
    causal: bool,
    gqa: bool,
) -> Tensor {
    let s = q.size();
    let (n, heads, t, d) = (s[0], s[1], s[2], s[3]);
    let sdpa = |q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>| {
        Tensor::scaled_dot_product_attention(q, k, v, mask, p_drop, causal, None, gqa)
    };
    let context = if p_drop > 0.0 && crate::dropout::seeded() {
        crate::dropout::per_cell_attention(q, k, v, mask, sdpa)
            .unwrap_or_else(|| explicit_attention(q, k, v, mask, p_drop, causal))
    } else {
        sdpa(q, k, v, mask)
    };
    context.transpose(1, 2).reshape([n, t, heads * d])
}

/// softmax(q·kᵀ/√d, masked)·v with the probabilities' dropout from [`crate::dropout`]: the
/// fused kernels draw their own masks, which would tie a cell's run to its pack. Scores in the
/// compute dtype; the softmax accumulates in fp32 whatever its input (PyTorch's kernels do) and
/// writes the compute dtype, so no fp32 copy of the [n, heads, t, t] scores is made.
fn explicit_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    p_drop: f64,
    causal: bool,
) -> Tensor {
    let s = q.size();
    let (heads, t, d) = (s[1], s[2], s[3]);
    let kv_heads = k.size()[1];
    let (k, v) = if kv_heads != heads {
        let r = heads / kv_heads;
        (
            k.repeat_interleave_self_int(r, 1, None),
            v.repeat_interleave_self_int(r, 1, None),
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    // The scale on q, the smaller operand ([.., t, d] against the scores' [.., t, t]).
    let q = q.g_mul_scalar(1.0 / (d as f64).sqrt());
    if t == 1 && !causal {
        return one_query_attention(&q, &k, &v, mask, p_drop);
    }
    let mut scores = q.matmul(&k.transpose(-2, -1));
    if let Some(m) = mask {
        scores = scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY);
    }
    if causal {
        let later = Tensor::ones([t, k.size()[2]], (Kind::Bool, q.device())).triu(1);
        scores = scores.masked_fill(&later, f64::NEG_INFINITY);
    }
    let probs = scores.softmax(-1, q.kind());
    crate::dropout::dropout(&probs, p_drop, true).matmul(&v)
}

/// [`explicit_attention`] of one query a row (a last layer read at `[CLS]`: `q` [n, heads, 1, d],
/// already scaled) over keys and values that are, as the projections give them, views of
/// [n, t, heads·d]. `matmul` would batch over (n, heads), which that layout cannot give it
/// without copying all of k and v, and their gradients back (four passes over [n, t, heads·d],
/// 0.84 ms of RoBERTa-base's K = 16 step on the H200). Here the batch is n alone: q spread into a
/// block-diagonal [heads·d, heads] gives every head's scores as one product with the row's keys
/// [t, heads·d], and the probabilities [heads, t] times its values [t, heads·d] hold the
/// context in their diagonal blocks. The products added are exact zeros (heads times the
/// arithmetic of two tiny matrices), so the numbers are the plain path's.
fn one_query_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    p_drop: f64,
) -> Tensor {
    let s = q.size();
    let (n, heads, d) = (s[0], s[1], s[3]);
    let t = k.size()[2];
    let rows = |x: &Tensor| x.transpose(1, 2).reshape([n, t, heads * d]);
    let eye = Tensor::eye(heads, (q.kind(), q.device())).reshape([1, heads, 1, heads]);
    // [n, heads·d, heads]: column h holds head h's query in rows h·d..(h + 1)·d.
    let spread = (q.reshape([n, heads, d, 1]) * eye).reshape([n, heads * d, heads]);
    let mut scores = rows(k).bmm(&spread).transpose(1, 2).unsqueeze(2);
    if let Some(m) = mask {
        scores = scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY);
    }
    let probs = crate::dropout::dropout(&scores.softmax(-1, q.kind()), p_drop, true);
    // [n, heads, heads·d]: row h times every head's values; head h's context is block h.
    let all = probs.reshape([n, heads, t]).bmm(&rows(v));
    all.reshape([n, heads, heads, d])
        .diagonal(0, 1, 2)
        .permute([0, 2, 1])
        .unsqueeze(2)
}

/// Rotary position embeddings (Su et al. 2021) as transformers' Llama applies them: cos/sin of
/// positions × `inv_freq` computed in fp32, then in the compute dtype; the rotation pairs the
/// first half of each head's dimensions with the second (`rotate_half`).
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// For positions 0..t; `inv_freq` [head_dim / 2] fp32.
    pub fn new(inv_freq: &Tensor, t: i64, kind: Kind) -> Rope {
        let hd = 2 * inv_freq.size()[0];
        let pos = Tensor::arange(t, (Kind::Float, inv_freq.device()));
        let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Rope {
            cos: emb.cos().to_kind(kind).reshape([1, 1, t, hd]),
            sin: emb.sin().to_kind(kind).reshape([1, 1, t, hd]),
        }
    }

    /// `y` [n, heads, t, head_dim] rotated.
    pub fn apply(&self, y: &Tensor) -> Tensor {
        let half = y.chunk(2, -1);
        &(y * &self.cos) + &(Tensor::cat(&[half[1].neg(), half[0].shallow_clone()], -1) * &self.sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs without the random generator (which other tests of this process reseed): a sine
    /// over the element index, shifted by `phase`, in `shape`.
    fn wave(shape: &[i64], phase: f64) -> Tensor {
        (Tensor::arange(shape.iter().product::<i64>(), (Kind::Float, Device::Cpu)) * 0.37 + phase)
            .sin()
            .reshape(shape)
    }

    /// The explicit path (taken when dropout is seeded per cell) computes what SDPA computes:
    /// padding masks, causal masks and grouped key/value heads included.
    #[test]
    fn explicit_attention_without_dropout_equals_sdpa() {
        let input = |heads: i64, phase: f64| wave(&[3, heads, 6, 8], phase);
        let q = input(4, 0.0);
        let (k, v) = (input(4, 1.0), input(4, 2.0));
        let (k2, v2) = (input(2, 3.0), input(2, 4.0));
        // Row 1 attends to its first 4 keys only.
        let mask = Tensor::ones([3, 1, 1, 6], (Kind::Bool, Device::Cpu));
        let _ = mask.get(1).narrow(-1, 4, 2).fill_(0);
        let cases: [(&Tensor, &Tensor, Option<&Tensor>, bool, bool); 3] = [
            (&k, &v, Some(&mask), false, false),
            (&k, &v, None, true, false),
            (&k2, &v2, None, true, true),
        ];
        for (i, (k, v, m, causal, gqa)) in cases.into_iter().enumerate() {
            let fused = Tensor::scaled_dot_product_attention(&q, k, v, m, 0.0, causal, None, gqa);
            let explicit = explicit_attention(&q, k, v, m, 0.0, causal);
            let diff = (&fused - &explicit).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "case {i}: max |SDPA − explicit| = {diff}");
        }
    }

    /// One query a row (the path of a last layer read at `[CLS]`) over keys and values laid out
    /// as the projections give them: the plain product's output and gradients, the mask kept.
    #[test]
    fn one_query_attention_gives_the_plain_products_numbers_and_gradients() {
        let (n, heads, t, d) = (3, 4, 6, 8);
        let input = |phase: f64| wave(&[n, t, heads * d], phase).set_requires_grad(true);
        let (x, kx, vx) = (input(0.0), input(1.0), input(2.0));
        let mask = Tensor::ones([n, 1, 1, t], (Kind::Bool, Device::Cpu));
        let _ = mask.get(1).narrow(-1, 4, 2).fill_(0);
        let heads_of = |x: &Tensor| split_heads(x, heads, d);
        let q = heads_of(&x.narrow(1, 0, 1));
        let (k, v) = (heads_of(&kx), heads_of(&vx));
        let ours = explicit_attention(&q, &k, &v, Some(&mask), 0.0, false);
        let plain = (q
            .g_mul_scalar(1.0 / (d as f64).sqrt())
            .matmul(&k.transpose(-2, -1)))
        .masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
        .softmax(-1, Kind::Float)
        .matmul(&v);
        assert_eq!(ours.size(), plain.size());
        let weights = Tensor::arange(ours.numel() as i64, (Kind::Float, Device::Cpu))
            .cos()
            .reshape(ours.size());
        let grads = |y: &Tensor| {
            Tensor::run_backward(
                &[(y * &weights).sum(Kind::Float)],
                &[&x, &kx, &vx],
                true,
                false,
            )
        };
        let pairs = [(ours.shallow_clone(), plain.shallow_clone())]
            .into_iter()
            .chain(grads(&ours).into_iter().zip(grads(&plain)));
        for (i, (a, b)) in pairs.enumerate() {
            let diff = (&a - &b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "output/gradient {i}: max difference {diff}");
            assert!(
                b.abs().max().double_value(&[]) > 1e-3,
                "{i} carries no signal"
            );
        }
        // Row 1's masked keys get no gradient.
        let dk = &grads(&ours)[1];
        assert_eq!(dk.get(1).narrow(0, 4, 2).abs().max().double_value(&[]), 0.0);
    }

    /// A layer's input gets its gradient summed in PEFT's order (`lora.Linear`: the frozen
    /// product, then the adapter path), bit for bit. Two readers' gradients add the same in any
    /// order; with a third (the residual that reads a BERT layer's input too) the order of the
    /// sum decides the bits.
    #[test]
    fn a_layers_input_gradient_is_summed_in_peft_order() {
        let (k, rows, t, d, r) = (2, 3, 5, 16, 4);
        let layer = Linear {
            name: "query".into(),
            weight: wave(&[d, d], 1.0),
            bias: Some(wave(&[d], 2.0)),
            lora: Some(LoraAdapter {
                a: wave(&[k, r, d], 3.0).set_requires_grad(true),
                b: wave(&[k, d, r], 4.0).set_requires_grad(true),
                scaling: 0.5,
                dropout: 0.0,
            }),
        };
        let x = wave(&[k * rows, t, d], 5.0).set_requires_grad(true);
        let weights = wave(&[k * rows, t, d], 6.0);
        let grad = |out: Tensor| {
            Tensor::run_backward(&[(out * &weights).sum(Kind::Float)], &[&x], false, false)
                .remove(0)
        };
        // PEFT's order written out: base_layer(x), the adapter path, then a residual reader.
        let adapter = layer.lora.as_ref().expect("an adapter");
        let peft =
            grad(x.linear(&layer.weight, layer.bias.as_ref()) + adapter.delta(&x, true) + &x);
        let ours = grad(layer.forward(&x, true) + &x);
        assert!(peft.abs().max().double_value(&[]) > 1e-3);
        let diff = (&peft - &ours).abs().max().double_value(&[]);
        assert!(
            peft.equal(&ours),
            "not the same bits: max difference {diff}"
        );
    }
}
