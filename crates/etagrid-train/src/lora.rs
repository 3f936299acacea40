//! K stacked LoRA adapters (of a linear layer, of an embedding) and PEFT's target selection; the
//! layers that carry them are [`crate::nn::Linear`] and [`crate::nn::Embedding`].
//!
//! LoRA (Hu et al. 2021): y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ, with A: r×in and B: out×r.
//! Holding K adapters as A: [K, r, in] and B: [K, out, r] lets K grid cells share one frozen
//! base: the input's leading dimension is K·b (cell k owns rows k·b..(k+1)·b) and the adapter path
//! is one batched matmul. One cell is K = 1.

use crate::TrainError;
use etagrid_spec::{InitScheme, LoraSpec, TargetModules};
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

pub struct LoraAdapter {
    /// [K, r, in]
    pub a: Tensor,
    /// [K, out, r]
    pub b: Tensor,
    pub scaling: f64,
    pub dropout: f64,
}

impl LoraAdapter {
    /// New trainable adapters for a layer of `out × in`, initialised like PEFT:
    /// `Lora` → A kaiming-uniform(a=√5) (bound 1/√in), B zero; `Loraplus` → B kaiming-uniform
    /// (bound 1/√r), A zero. Created on the CPU from the global seed, then moved, so the same
    /// seed gives the same adapters on every device.
    #[allow(clippy::too_many_arguments)] // one per dimension of the stacked layer
    pub fn new(
        k: i64,
        rank: i64,
        in_features: i64,
        out_features: i64,
        scaling: f64,
        dropout: f64,
        init: InitScheme,
        device: tch::Device,
    ) -> LoraAdapter {
        let opts = (Kind::Float, tch::Device::Cpu);
        let mut a = Tensor::zeros([k, rank, in_features], opts);
        let mut b = Tensor::zeros([k, out_features, rank], opts);
        tch::no_grad(|| match init {
            InitScheme::Lora => {
                let bound = 1.0 / (in_features as f64).sqrt();
                let _ = a.uniform_(-bound, bound);
            }
            InitScheme::Loraplus => {
                let bound = 1.0 / (rank as f64).sqrt();
                let _ = b.uniform_(-bound, bound);
            }
        });
        LoraAdapter {
            a: a.to_device(device).set_requires_grad(true),
            b: b.to_device(device).set_requires_grad(true),
            scaling,
            dropout,
        }
    }

    pub fn k(&self) -> i64 {
        self.a.size()[0]
    }

    /// The adapter path for `x` of shape [K·b, ..., in]: returns [K·b, ..., out].
    pub fn delta(&self, x: &Tensor, train: bool) -> Tensor {
        let x = crate::dropout::dropout(x, self.dropout, train);
        // Parameters stay fp32; in a bf16 forward they are cast per use, as under autocast.
        let h = per_cell(&x, self.k()).bmm(&self.a.to_kind(x.kind()).transpose(1, 2));
        self.up(&h, &x)
    }

    /// The B product of the A product `h` [K, b·…, r] of `x`: [K·b, ..., out].
    fn up(&self, h: &Tensor, x: &Tensor) -> Tensor {
        let b = scaled(&self.b, self.scaling, x.kind());
        let mut shape = x.size();
        *shape.last_mut().expect("x has dimensions") = self.b.size()[1];
        h.bmm(&b.transpose(1, 2)).reshape(shape.as_slice())
    }
}

/// `x` [K·b, ..., in] as [K, b·…, in]: cell k's rows in batch k.
fn per_cell(x: &Tensor, k: i64) -> Tensor {
    x.reshape([k, -1, *x.size().last().expect("x has dimensions")])
}

/// The adapter paths of several layers that read the same `x` ([K·b, ..., in]), in order:
/// the same as each [`LoraAdapter::delta`], with their A products as one batched matmul
/// against the A factors stacked ([K, Σr, in]). That reads `x` once instead of once an adapter,
/// forward and backward, and gives `x` one gradient from them where each would give its own,
/// to be summed (on the H200, RoBERTa-base's query and value at K = 16: 0.18 ms less a layer,
/// `bench/gpu/probe/qkv_fusion.py`). Adapters with dropout in training draw their own masks,
/// as PEFT's do, so they keep their own paths.
pub fn deltas(adapters: &[&LoraAdapter], x: &Tensor, train: bool) -> Vec<Tensor> {
    let shared = adapters.len() > 1
        && adapters.iter().all(|l| !train || l.dropout <= 0.0)
        && adapters.iter().all(|l| l.k() == adapters[0].k());
    if !shared {
        return adapters.iter().map(|l| l.delta(x, train)).collect();
    }
    let a: Vec<Tensor> = adapters.iter().map(|l| l.a.to_kind(x.kind())).collect();
    let ranks: Vec<i64> = adapters.iter().map(|l| l.a.size()[1]).collect();
    let h = per_cell(x, adapters[0].k()).bmm(&Tensor::cat(&a, 1).transpose(1, 2));
    h.split_with_sizes(ranks.as_slice(), 2)
        .iter()
        .zip(adapters)
        .map(|(h, l)| l.up(h, x))
        .collect()
}

/// `b · scaling` in `kind`, the scaling applied in fp32 to B (an adapter's small [out, r]
/// factor) rather than to the path's output ([tokens, out], as PEFT does): one pass over the
/// activations less in the forward and in the backward, the same product (exactly so when the
/// scaling is a power of two, as α/r usually is; none at all when it is 1).
fn scaled(b: &Tensor, scaling: f64, kind: Kind) -> Tensor {
    if scaling == 1.0 {
        b.to_kind(kind)
    } else {
        (b * scaling).to_kind(kind)
    }
}

/// Whether a module named `name` (e.g. `encoder.layer.0.attention.self.query`) is a LoRA target,
/// matched like PEFT's list form of `target_modules`: the whole name or its last dotted parts.
pub fn is_target(name: &str, targets: &[String]) -> bool {
    targets
        .iter()
        .any(|t| name == t || name.ends_with(&format!(".{t}")))
}

/// PEFT's target selection over one model's modules. Models ask [`Targets::matches`] with each
/// LoRA-capable module's full name as transformers names it (`bert.encoder.layer.0.attention.
/// self.query`, `transformer.h.0.attn.c_attn`, `model.layers.0.self_attn.q_proj`,
/// `model.embed_tokens`, …), then call [`Targets::check`]: targets that select nothing are an
/// error listing the module names that exist.
pub struct Targets {
    spec: TargetModules,
    regex: Option<regex::Regex>,
    /// Every name asked about, and whether it matched.
    seen: RefCell<Vec<(String, bool)>>,
}

impl Targets {
    pub fn new(spec: &TargetModules) -> Result<Targets, TrainError> {
        let regex = match spec {
            TargetModules::Regex(r) => Some(TargetModules::compile(r).map_err(|e| {
                TrainError::LoraTargets(format!("{r:?} is not a valid regex: {e}"))
            })?),
            TargetModules::List(_) => None,
        };
        Ok(Targets {
            spec: spec.clone(),
            regex,
            seen: RefCell::new(Vec::new()),
        })
    }

    /// Whether the module `full_name` gets LoRA: list → equal to an entry or ending in
    /// `.entry`; regex → matches the whole name (Python's `re.fullmatch`).
    pub fn matches(&self, full_name: &str) -> bool {
        let hit = self.hits(full_name);
        self.seen.borrow_mut().push((full_name.to_owned(), hit));
        hit
    }

    fn hits(&self, full_name: &str) -> bool {
        match (&self.spec, &self.regex) {
            (_, Some(re)) => re.is_match(full_name),
            (TargetModules::List(l), None) => is_target(full_name, l),
            (TargetModules::Regex(_), None) => false,
        }
    }

    /// An error when the targets also select one of `modules`: layers PEFT would adapt but
    /// etagrid cannot (position and token-type embeddings, the heads, which train in full). A
    /// silent skip would make etagrid's cell differ from the PEFT run it stands for.
    pub fn refuse(&self, modules: &[String]) -> Result<(), TrainError> {
        let hit: Vec<&str> = modules
            .iter()
            .filter(|m| self.hits(m))
            .map(String::as_str)
            .collect();
        if hit.is_empty() {
            return Ok(());
        }
        Err(TrainError::LoraTargets(format!(
            "{} also selects {}: etagrid puts LoRA only on the attention/MLP linear layers and the \
             token embeddings (PEFT would adapt these too, so the results would differ; heads are \
             trained in full). Narrow the list or the regex",
            self.spec,
            hit.join(", ")
        )))
    }

    /// An error when the targets are not empty but selected no module (PEFT refuses this too),
    /// naming the modules that exist with layer numbers abbreviated to `*`.
    pub fn check(&self) -> Result<(), TrainError> {
        let seen = self.seen.borrow();
        if self.spec.is_empty() || seen.iter().any(|(_, hit)| *hit) {
            return Ok(());
        }
        let mut names: Vec<String> = Vec::new();
        for (n, _) in seen.iter() {
            let abbreviated = n
                .split('.')
                .map(|part| {
                    if part.chars().all(|c| c.is_ascii_digit()) {
                        "*"
                    } else {
                        part
                    }
                })
                .collect::<Vec<_>>()
                .join(".");
            if !names.contains(&abbreviated) {
                names.push(abbreviated);
            }
        }
        Err(TrainError::LoraTargets(format!(
            "{} matches no module of this model. Its LoRA-capable modules (`*` = any layer \
             number) are: {}. Give a list of name suffixes (e.g. [\"query\", \"value\"]) or one \
             regex that matches a whole name",
            self.spec,
            names.join(", ")
        )))
    }
}

/// LoRA on an embedding layer, as PEFT's `lora.Embedding`: A [K, r, vocab], B [K, dim, r] (PEFT's
/// `lora_embedding_A` / `lora_embedding_B` layouts), output = embedding(ids, W) +
/// embedding(ids, Aᵀ)·(B·scaling)ᵀ. Initialised as PEFT does whatever the `init` scheme: A zero,
/// B standard normal. No dropout (PEFT applies none to embeddings). Rows at `padding_idx`
/// get no gradient, as in `F.embedding(..., padding_idx=…)`.
pub struct EmbeddingAdapter {
    /// [K, r, vocab]
    pub a: Tensor,
    /// [K, dim, r]
    pub b: Tensor,
    pub scaling: f64,
}

impl EmbeddingAdapter {
    /// K adapters for a table [vocab, dim]. Draws B from the global generator on the CPU (same
    /// seed, same adapters on every device).
    pub fn new(k: i64, vocab: i64, dim: i64, lora: &LoraSpec, device: Device) -> EmbeddingAdapter {
        let r = lora.rank as i64;
        let opts = (Kind::Float, Device::Cpu);
        let a = Tensor::zeros([k, r, vocab], opts);
        let b = Tensor::randn([k, dim, r], opts);
        EmbeddingAdapter {
            a: a.to_device(device).set_requires_grad(true),
            b: b.to_device(device).set_requires_grad(true),
            scaling: lora.scaling(),
        }
    }

    /// The adapter path for [K·b, T] ids, in `kind`: [K·b, T, dim]; rows k·b..(k+1)·b go
    /// through adapter k.
    pub fn delta(&self, ids: &Tensor, padding_idx: i64, kind: Kind) -> Tensor {
        let k = self.a.size()[0];
        let delta: Vec<Tensor> = ids
            .chunk(k, 0)
            .iter()
            .enumerate()
            .map(|(i, ids_k)| {
                let i = i as i64;
                let a_t = self.a.get(i).transpose(0, 1).to_kind(kind); // [vocab, r]
                let b_t = scaled(&self.b.get(i), self.scaling, kind).transpose(0, 1); // [r, dim]
                Tensor::embedding(&a_t, ids_k, padding_idx, false, false).matmul(&b_t)
            })
            .collect();
        Tensor::cat(&delta, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(k: i64, r: i64, out: i64, dropout: f64) -> LoraAdapter {
        // A and B both random, so both paths carry signal (PEFT's init zeroes one of them).
        let mut l = LoraAdapter::new(k, r, 6, out, 0.5, dropout, InitScheme::Lora, Device::Cpu);
        tch::no_grad(|| {
            let _ = l.b.normal_(0.0, 1.0);
        });
        l.b = l.b.detach().set_requires_grad(true);
        l
    }

    /// Values and gradients (of x, each A and each B) of `deltas` summed against a fixed
    /// random weighting.
    fn run(adapters: &[&LoraAdapter], x: &Tensor, shared: bool) -> Vec<Tensor> {
        let x = x.detach().set_requires_grad(true);
        let ys = if shared {
            deltas(adapters, &x, true)
        } else {
            adapters.iter().map(|l| l.delta(&x, true)).collect()
        };
        tch::manual_seed(7);
        let loss = ys
            .iter()
            .map(|y| (y * y.randn_like()).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        let params: Vec<&Tensor> = adapters.iter().flat_map(|l| [&l.a, &l.b]).collect();
        let mut inputs = params.clone();
        inputs.push(&x);
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        ys.into_iter().chain(grads).collect()
    }

    #[test]
    fn adapters_reading_one_input_give_each_its_own_delta_and_gradients_when_shared() {
        let _serial = crate::dropout::tests::serial(); // the global generator
        tch::manual_seed(0);
        // Different ranks and output widths (a Llama's k_proj is narrower than its q_proj).
        let (q, k, v) = (
            adapter(3, 2, 5, 0.0),
            adapter(3, 4, 3, 0.0),
            adapter(3, 2, 5, 0.0),
        );
        let x = Tensor::randn([3 * 2, 4, 6], (Kind::Float, Device::Cpu));
        let adapters = [&q, &k, &v];
        let (one, shared) = (run(&adapters, &x, false), run(&adapters, &x, true));
        assert_eq!(one.len(), shared.len());
        for (a, b) in one.iter().zip(&shared) {
            assert_eq!(a.size(), b.size());
            let err = (a - b).abs().max().double_value(&[]);
            let scale = a.abs().max().double_value(&[]).max(1e-12);
            assert!(err / scale < 1e-6, "relative difference {}", err / scale);
            assert!(scale > 1e-3, "a path carries no signal");
        }
    }

    #[test]
    fn adapters_with_dropout_keep_their_own_masks() {
        let _serial = crate::dropout::tests::serial();
        tch::manual_seed(0);
        let (q, v) = (adapter(2, 2, 5, 0.5), adapter(2, 2, 5, 0.5));
        let x = Tensor::randn([2 * 2, 3, 6], (Kind::Float, Device::Cpu));
        tch::manual_seed(11);
        let shared = deltas(&[&q, &v], &x, true);
        tch::manual_seed(11);
        let one = [q.delta(&x, true), v.delta(&x, true)];
        for (a, b) in one.iter().zip(&shared) {
            assert!(
                a.equal(b),
                "the fallback draws the masks each path draws alone"
            );
        }
        // Out of training dropout is off, so the A products are shared and equal the plain paths.
        let (a, b) = (
            deltas(&[&q, &v], &x, false),
            [q.delta(&x, false), v.delta(&x, false)],
        );
        for (a, b) in a.iter().zip(&b) {
            assert!(a.allclose(b, 1e-6, 1e-7, false));
        }
    }
}
