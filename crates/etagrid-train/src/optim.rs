//! AdamW (Loshchilov & Hutter; PyTorch's `torch.optim.AdamW` update, decoupled weight decay)
//! with the LoRA+ parameter groups of the authors' `lora_plus.py` and per-adapter learning rates.
//!
//! | group      | members                                   | lr  | weight decay |
//! |------------|-------------------------------------------|-----|--------------|
//! | `A`        | `lora_A`, and every other 2-D trainable   | η_A | wd           |
//! | `B`        | `lora_B`                                  | η_B | wd           |
//! | `B_no_decay` | 1-D trainables (e.g. the head's bias)   | η_B | 0            |
//! | `embedding` | `lora_embedding_A`/`_B` (LoRA on embeddings) | `embedding_lr` (fixed, 1e-6) | wd |
//!
//! Every trainable tensor is stacked over K adapters (leading dimension), and η_A, η_B are
//! tensors of K values, so K grid cells with different rates step in one call.

use crate::bert::{ParamRole, TrainParam};
use etagrid_spec::protocol::ParamGroupInfo;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    A,
    B,
    BNoDecay,
    Embedding,
}

impl Group {
    pub fn of(role: ParamRole) -> Group {
        match role {
            ParamRole::LoraA => Group::A,
            ParamRole::LoraB => Group::B,
            ParamRole::Embedding => Group::Embedding,
            ParamRole::Other { dims } if dims >= 2 => Group::A,
            ParamRole::Other { .. } => Group::BNoDecay,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Group::A => "A",
            Group::B => "B",
            Group::BNoDecay => "B_no_decay",
            Group::Embedding => "embedding",
        }
    }
}

struct Slot {
    param: TrainParam,
    group: Group,
    m: Tensor,
    v: Tensor,
}

pub struct LoraPlusAdamW {
    slots: Vec<Slot>,
    /// [K] learning rates of each adapter, before the schedule's multiplier.
    lr_a: Tensor,
    lr_b: Tensor,
    /// The embedding group's rate, the same for every adapter.
    lr_embedding: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i64,
}

impl LoraPlusAdamW {
    /// `lr_a[k]`, `lr_b[k]`: the rates of adapter k.
    pub fn new(
        params: Vec<TrainParam>,
        lr_a: &[f64],
        lr_b: &[f64],
        weight_decay: f64,
    ) -> LoraPlusAdamW {
        let device = params
            .first()
            .map(|p| p.tensor.device())
            .unwrap_or(tch::Device::Cpu);
        let slots = params
            .into_iter()
            .map(|param| Slot {
                group: Group::of(param.role),
                m: param.tensor.zeros_like().detach(),
                v: param.tensor.zeros_like().detach(),
                param,
            })
            .collect();
        LoraPlusAdamW {
            slots,
            lr_a: Tensor::from_slice(lr_a)
                .to_kind(Kind::Float)
                .to_device(device),
            lr_b: Tensor::from_slice(lr_b)
                .to_kind(Kind::Float)
                .to_device(device),
            lr_embedding: etagrid_spec::DEFAULT_EMBEDDING_LR,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
        }
    }

    /// The fixed rate of the embedding group (`[lora] embedding_lr`; default 1e-6 as PEFT's
    /// `loraplus_lr_embedding`). The schedule multiplies it like every other rate.
    pub fn with_embedding_lr(mut self, lr: f64) -> LoraPlusAdamW {
        self.lr_embedding = lr;
        self
    }

    /// Each group's rate, decay and size; the embedding group only when it has members (so
    /// cells without LoRA on embeddings record the three groups they always did).
    pub fn groups(&self, lr_a: f64, lr_b: f64) -> Vec<ParamGroupInfo> {
        [Group::A, Group::Embedding, Group::B, Group::BNoDecay]
            .into_iter()
            .filter(|&g| g != Group::Embedding || self.slots.iter().any(|s| s.group == g))
            .map(|g| {
                let members: Vec<&Slot> = self.slots.iter().filter(|s| s.group == g).collect();
                ParamGroupInfo {
                    name: g.name().into(),
                    lr: match g {
                        Group::A => lr_a,
                        Group::Embedding => self.lr_embedding,
                        Group::B | Group::BNoDecay => lr_b,
                    },
                    weight_decay: if g == Group::BNoDecay {
                        0.0
                    } else {
                        self.weight_decay
                    },
                    members: members.len(),
                    params: members.iter().map(|s| s.param.tensor.numel() as u64).sum(),
                }
            })
            .collect()
    }

    /// Names of the members of each group, for tests and logs.
    pub fn members(&self, group: Group) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.group == group)
            .map(|s| s.param.name.as_str())
            .collect()
    }

    /// The steps taken so far (AdamW's bias correction counts them).
    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    /// Each trainable tensor with its name and first and second moments: what a checkpoint
    /// saves and restores (the tensors are the model's own, stacked over the K adapters).
    pub(crate) fn state_mut(&mut self) -> impl Iterator<Item = (&str, [&mut Tensor; 3])> {
        self.slots.iter_mut().map(|s| {
            (
                s.param.name.as_str(),
                [&mut s.param.tensor, &mut s.m, &mut s.v],
            )
        })
    }

    /// Continues from a checkpoint taken after `steps` steps.
    pub(crate) fn set_steps_taken(&mut self, steps: i64) {
        self.step = steps;
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.param.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One AdamW step with every rate multiplied by `multiplier` (the schedule).
    pub fn step(&mut self, multiplier: f64) {
        self.step_inner(multiplier, None);
    }

    /// [`Self::step`] for the adapters whose entry of `active` (`[K]` bool) is true; the others
    /// keep their parameters as they are (their gradients, NaN or not, are ignored).
    pub fn step_masked(&mut self, multiplier: f64, active: &Tensor) {
        self.step_inner(multiplier, Some(active));
    }

    /// `[K]` bool: whether every gradient of adapter k is finite (a NaN or ±inf anywhere in one of
    /// its tensors makes their sum non-finite). Tensors without a gradient count as finite.
    pub fn grads_finite_per_cell(&self, k: i64) -> Tensor {
        let device = self.lr_a.device();
        let mut total = Tensor::zeros([k], (Kind::Float, device));
        for s in &self.slots {
            let g = s.param.tensor.grad();
            if g.defined() {
                total = total + g.reshape([k, -1]).sum_dim_intlist(1, false, Kind::Float);
            }
        }
        total.isfinite()
    }

    fn step_inner(&mut self, multiplier: f64, active: Option<&Tensor>) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - self.beta2.powi(self.step as i32)).sqrt();
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        let (lr_a, lr_b) = match active {
            // A frozen adapter gets rate 0: p·(1 − 0·wd) − 0·m/√v leaves p exactly as it is.
            Some(a) => {
                let on = a.to_kind(Kind::Float);
                (&self.lr_a * &on * multiplier, &self.lr_b * &on * multiplier)
            }
            None => (&self.lr_a * multiplier, &self.lr_b * multiplier),
        };
        tch::no_grad(|| {
            for s in &mut self.slots {
                let grad = s.param.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let dims = s.param.tensor.dim();
                let mut shape = vec![-1i64];
                shape.resize(dims, 1);
                // A frozen adapter's gradient may be NaN: zero it so its moments stay finite.
                let grad = match active {
                    Some(a) => grad.where_self(&a.reshape(shape.as_slice()), &grad.zeros_like()),
                    None => grad,
                };
                let lr = match s.group {
                    Group::A => lr_a.reshape(shape.as_slice()),
                    Group::B | Group::BNoDecay => lr_b.reshape(shape.as_slice()),
                    Group::Embedding => match active {
                        Some(a) => (a.to_kind(Kind::Float) * (self.lr_embedding * multiplier))
                            .reshape(shape.as_slice()),
                        None => Tensor::from(self.lr_embedding * multiplier)
                            .to_kind(Kind::Float)
                            .to_device(lr_a.device()),
                    },
                };
                let p = &mut s.param.tensor;
                let decay = if s.group == Group::BNoDecay { 0.0 } else { wd };
                if decay != 0.0 {
                    // p ← p · (1 − lr·wd)
                    let factor = 1.0 - &lr * decay;
                    let _ = p.g_mul_(&factor);
                }
                let _ = s.m.g_mul_scalar_(b1).g_add_(&(&grad * (1.0 - b1)));
                let _ = s.v.g_mul_scalar_(b2).g_add_(&(&grad * &grad * (1.0 - b2)));
                let denom = s.v.sqrt() / bc2_sqrt + eps;
                let update = &s.m / denom * (&lr / bc1);
                let _ = p.g_sub_(&update);
            }
        });
    }
}
