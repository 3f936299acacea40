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
//! Every trainable tensor is stacked over K adapters (leading dimension), and the rates are
//! per element, so K grid cells with different rates step in one call — in about 25 kernels
//! whatever the number of tensors (the flat buffers, `Flat`). A tensor that got no gradient
//! steps as if its gradient were zero (PyTorch's AdamW skips it instead; every etagrid
//! trainable gets one).

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
    /// Views of the flat first and second moments, shaped like the parameter.
    m: Tensor,
    v: Tensor,
    /// The parameter's columns in the flat buffers: `offset..offset + len` of each row.
    offset: i64,
    len: i64,
    /// Whether the parameter's gradient lives in the flat gradient buffer yet (it does from
    /// the first backward pass on).
    grad_bound: bool,
}

/// Every trainable tensor of the K adapters in one buffer per quantity, the tensors end to end
/// (each one's own [K, …] layout, so each is a plain contiguous view). The model's tensors are
/// rebound (`set_data`) to views of `p` and their gradients to views of `g`, so a step is a
/// couple of dozen kernel launches whatever the number of tensors: on a GPU a packed step of a
/// small model is bound by launches, not by arithmetic.
struct Flat {
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    /// [N] each element's rate before the schedule (η_A, η_B or the embedding rate of its
    /// adapter and group).
    lr: Tensor,
    /// [N] each element's weight decay (0 in the `B_no_decay` group).
    decay: Tensor,
    /// [N] int64: the adapter (cell) each element belongs to.
    cell: Tensor,
    /// Lengths of the runs of one tensor and one adapter, in buffer order (tensor-major): the
    /// segments a per-adapter reduction sums over.
    runs: Tensor,
}

/// [total] int64, element i's adapter: the runs cycle through the K adapters (tensor by tensor,
/// adapter by adapter), so the run indices mod K repeated by the run lengths. Built on the
/// device, without a host vector as long as the buffer.
fn cells_of_runs(k: i64, runs: &[i64], total: i64, device: tch::Device) -> Tensor {
    let lens = Tensor::from_slice(runs).to_device(device);
    let adapter = Tensor::arange(runs.len() as i64, (Kind::Int64, device)).remainder(k.max(1));
    adapter.repeat_interleave_self_tensor(&lens, 0, Some(total))
}

pub struct LoraPlusAdamW {
    slots: Vec<Slot>,
    flat: Flat,
    k: i64,
    /// Learning rates of each adapter, before the schedule's multiplier.
    lr_a: Vec<f64>,
    lr_b: Vec<f64>,
    /// The embedding group's rate, the same for every adapter.
    lr_embedding: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i64,
}

impl LoraPlusAdamW {
    /// The bytes of every tensor the optimizer holds for its K adapters (parameters, gradients,
    /// moments, per-element rates, decay and adapter index): state that grows with the cells of a
    /// pack, for the memory probe ([`crate::memprobe`]).
    pub fn state_bytes(&self) -> u64 {
        let f = &self.flat;
        [&f.p, &f.g, &f.m, &f.v, &f.lr, &f.decay, &f.cell, &f.runs]
            .iter()
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum()
    }

    /// `lr_a[k]`, `lr_b[k]`: the rates of adapter k. Every parameter is stacked over the same
    /// K adapters (leading dimension) and is fp32 on one device; the model's tensors become
    /// views of the optimizer's flat buffer (their values are kept).
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
        let k = lr_a.len() as i64;
        let total: i64 = params.iter().map(|p| p.tensor.numel() as i64).sum();
        let opts = (Kind::Float, device);
        let flat_p = Tensor::zeros([total], opts);
        let (m, v, g) = (
            flat_p.zeros_like(),
            flat_p.zeros_like(),
            flat_p.zeros_like(),
        );
        let mut runs = Vec::new();
        let mut offset = 0;
        let slots: Vec<Slot> = params
            .into_iter()
            .map(|mut param| {
                let shape = param.tensor.size();
                assert_eq!(
                    (shape[0], param.tensor.kind()),
                    (k, Kind::Float),
                    "{}: trainables are fp32 and stacked over the K adapters",
                    param.name
                );
                let len = param.tensor.numel() as i64;
                let view = |t: &Tensor| t.narrow(0, offset, len).view(shape.as_slice());
                let mut p_view = view(&flat_p);
                tch::no_grad(|| p_view.copy_(&param.tensor));
                param.tensor.set_data(&p_view);
                runs.extend(std::iter::repeat_n(len / k, k as usize));
                let slot = Slot {
                    group: Group::of(param.role),
                    m: view(&m),
                    v: view(&v),
                    param,
                    offset,
                    len,
                    grad_bound: false,
                };
                offset += len;
                slot
            })
            .collect();
        let mut opt = LoraPlusAdamW {
            flat: Flat {
                p: flat_p,
                g,
                m,
                v,
                lr: Tensor::zeros([total], opts),
                decay: Tensor::zeros([total], opts),
                cell: cells_of_runs(k, &runs, total, device),
                runs: Tensor::from_slice(&runs).to_device(device),
            },
            slots,
            k,
            lr_a: lr_a.to_vec(),
            lr_b: lr_b.to_vec(),
            lr_embedding: etagrid_spec::DEFAULT_EMBEDDING_LR,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
        };
        opt.fill_rates();
        opt
    }

    /// Writes each element's rate and decay into the flat buffers (from the groups).
    fn fill_rates(&mut self) {
        let device = self.flat.p.device();
        let column = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .to_device(device)
                .reshape([-1, 1])
        };
        let (lr_a, lr_b) = (column(&self.lr_a), column(&self.lr_b));
        let lr_e = Tensor::full([self.k, 1], self.lr_embedding, (Kind::Float, device));
        tch::no_grad(|| {
            for s in &self.slots {
                let rate = match s.group {
                    Group::A => &lr_a,
                    Group::B | Group::BNoDecay => &lr_b,
                    Group::Embedding => &lr_e,
                };
                let n = s.len / self.k;
                let mut lr = self.flat.lr.narrow(0, s.offset, s.len).view([self.k, n]);
                lr.copy_(&rate.expand([self.k, n], false));
                let decay = if s.group == Group::BNoDecay {
                    0.0
                } else {
                    self.weight_decay
                };
                let _ = self.flat.decay.narrow(0, s.offset, s.len).fill_(decay);
            }
        });
    }

    /// The fixed rate of the embedding group (`[lora] embedding_lr`; default 1e-6 as PEFT's
    /// `loraplus_lr_embedding`). The schedule multiplies it like every other rate.
    pub fn with_embedding_lr(mut self, lr: f64) -> LoraPlusAdamW {
        self.lr_embedding = lr;
        self.fill_rates();
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

    /// Zeroes every gradient (one kernel once the gradients live in the flat buffer).
    pub fn zero_grad(&mut self) {
        let _ = self.flat.g.zero_();
        for s in self.slots.iter().filter(|s| !s.grad_bound) {
            let mut g = s.param.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Moves each gradient that backward created on its own into its place in the flat
    /// gradient buffer and makes it a view of it there, so later backward passes accumulate
    /// into the buffer directly. A tensor without a gradient reads as zeros in the buffer.
    fn gather_grads(&mut self) {
        for s in self.slots.iter_mut().filter(|s| !s.grad_bound) {
            let mut g = s.param.tensor.grad();
            if !g.defined() {
                continue;
            }
            let mut view = self
                .flat
                .g
                .narrow(0, s.offset, s.len)
                .view(g.size().as_slice());
            tch::no_grad(|| view.copy_(&g));
            g.set_data(&view);
            s.grad_bound = true;
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

    /// `[K]` bool: whether every gradient of adapter k is finite (a NaN or ±inf anywhere in one
    /// of its tensors makes their sum non-finite). Tensors without a gradient count as finite.
    pub fn grads_finite_per_cell(&mut self) -> Tensor {
        self.gather_grads();
        // One sum per (tensor, adapter) run, then over the tensors: [runs] → [tensors, K] → [K].
        // `unsafe_`: the run lengths add up to the buffer by construction (checking would read
        // them back to the host every step).
        let f = &self.flat;
        Tensor::segment_reduce(&f.g, "sum", Some(&f.runs), None, None, 0, true, 0.0)
            .view([-1, self.k])
            .sum_dim_intlist(0, false, Kind::Float)
            .isfinite()
    }

    /// The update of `torch.optim.AdamW` (decoupled decay, bias-corrected moments), on the
    /// flat buffers at once; the same arithmetic, element by element, as one tensor at a time.
    fn step_inner(&mut self, multiplier: f64, active: Option<&Tensor>) {
        self.gather_grads();
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - self.beta2.powi(self.step as i32)).sqrt();
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        let f = &mut self.flat;
        tch::no_grad(|| {
            let (lr, grad) = match active {
                // A frozen adapter gets rate 0: p·(1 − 0·wd) − 0·m/√v leaves p exactly as it
                // is; its gradient, maybe NaN, is zeroed so its moments stay finite.
                Some(a) => {
                    let on = a.index_select(0, &f.cell);
                    (
                        &f.lr * (on.to_kind(Kind::Float) * multiplier),
                        f.g.where_self(&on, &f.g.zeros_like()),
                    )
                }
                None => (&f.lr * multiplier, f.g.shallow_clone()),
            };
            if wd != 0.0 {
                // p ← p · (1 − lr·wd)
                let factor = 1.0 - &lr * &f.decay;
                let _ = f.p.g_mul_(&factor);
            }
            let _ = f.m.g_mul_scalar_(b1).g_add_(&(&grad * (1.0 - b1)));
            let _ = f.v.g_mul_scalar_(b2).g_add_(&(&grad * &grad * (1.0 - b2)));
            let denom = f.v.sqrt() / bc2_sqrt + eps;
            let update = &f.m / denom * (&lr / bc1);
            let _ = f.p.g_sub_(&update);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_element_of_the_flat_buffer_knows_its_adapter() {
        // Two tensors over K = 2 adapters: 3 elements an adapter, then 1.
        let cells = cells_of_runs(2, &[3, 3, 1, 1], 8, tch::Device::Cpu);
        assert_eq!(
            Vec::<i64>::try_from(&cells).expect("i64"),
            [0, 0, 0, 1, 1, 1, 0, 1]
        );
    }
}
