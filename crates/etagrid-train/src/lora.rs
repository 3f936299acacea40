//! A linear layer with a frozen base weight and K stacked LoRA adapters.
//!
//! LoRA (Hu et al. 2021): y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ, with A: r×in and B: out×r.
//! Holding K adapters as A: [K, r, in] and B: [K, out, r] lets K grid cells share one frozen
//! base: the input's leading dimension is K·b (cell k owns rows k·b..(k+1)·b) and the adapter path
//! is one batched matmul. One cell is K = 1.

use crate::bert::{ParamRole, TrainParam};
use etagrid_spec::{InitScheme, LoraSpec};
use tch::{Device, Kind, Tensor};

/// A frozen linear layer, optionally with adapters.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
}

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
        let k = self.k();
        let mut shape = x.size();
        let in_features = shape[shape.len() - 1];
        let x = x.dropout(self.dropout, train && self.dropout > 0.0);
        let xk = x.reshape([k, -1, in_features]);
        // Parameters stay fp32; in a bf16 forward they are cast per use, as under autocast.
        let (a, b) = (self.a.to_kind(x.kind()), self.b.to_kind(x.kind()));
        let h = xk.bmm(&a.transpose(1, 2)).bmm(&b.transpose(1, 2));
        let last = shape.len() - 1;
        shape[last] = self.b.size()[1];
        (h * self.scaling).reshape(shape.as_slice())
    }
}

impl Linear {
    /// A frozen layer `weight` [out, in] (+ `bias`), with K adapters when the module `name` is
    /// one of `lora.target_modules`.
    pub fn with_lora(
        name: &str,
        weight: Tensor,
        bias: Option<Tensor>,
        lora: &LoraSpec,
        k: i64,
        device: Device,
    ) -> Linear {
        let (out_f, in_f) = (weight.size()[0], weight.size()[1]);
        let adapter = is_target(name, &lora.target_modules).then(|| {
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
            weight,
            bias,
            lora: adapter,
        }
    }

    /// Its adapters as trainables named `{name}.lora_A.weight` / `{name}.lora_B.weight`.
    pub fn push_lora_params(&self, name: &str, out: &mut Vec<TrainParam>) {
        if let Some(a) = &self.lora {
            out.push(TrainParam {
                name: format!("{name}.lora_A.weight"),
                tensor: a.a.shallow_clone(),
                role: ParamRole::LoraA,
            });
            out.push(TrainParam {
                name: format!("{name}.lora_B.weight"),
                tensor: a.b.shallow_clone(),
                role: ParamRole::LoraB,
            });
        }
    }

    /// Its frozen weight and bias.
    pub fn push_frozen(&self, out: &mut Vec<Tensor>) {
        out.push(self.weight.shallow_clone());
        if let Some(b) = &self.bias {
            out.push(b.shallow_clone());
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            Some(l) => y + l.delta(x, train),
            None => y,
        }
    }

    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }
}

/// Whether a module named `name` (e.g. `encoder.layer.0.attention.self.query`) is a LoRA target,
/// matched like PEFT's list form of `target_modules`: the whole name or its last dotted parts.
pub fn is_target(name: &str, targets: &[String]) -> bool {
    targets
        .iter()
        .any(|t| name == t || name.ends_with(&format!(".{t}")))
}
