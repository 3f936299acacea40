//! Dropout whose masks belong to the cell, not to the pack.
//!
//! A pack runs K cells as one [K·b, …] batch. Drawn the usual way, one dropout call draws the
//! masks of all K cells from one generator, so a cell's masks depend on which cells it shares
//! a pack with and where it sits in it: packed and alone it would see other masks, and a cell
//! that successive halving re-packs with fewer survivors would not continue the run it had in
//! the grid. Here every dropout of a training forward draws, for each *seed* of the pack, one
//! cell's mask — its b rows, the sequence dimensions at the length of that seed's own batch —
//! from the generator seeded with (seed, step, site), where the site counts the dropout calls
//! of the forward in order. Cell k multiplies its rows by its seed's mask, padded with zeros
//! when the pack's batch is longer (a pack of several seeds is padded to its longest batch; the
//! positions past a row's own length are padding, which no real token reads). So:
//! - a cell's masks are a function of its seed, the step and the place in the network, in any
//!   pack, at any position, with any padding of the batch (packed = alone on the CPU in fp32
//!   within 1e-6, the rest being GEMMs of other shapes; a resumed run draws what an
//!   uninterrupted one drew);
//! - cells with the same seed see the same masks, as they see the same batches — as separate
//!   runs started from one seed would (their generator streams are the same) — which is also
//!   one draw per seed instead of one per cell.
//!
//! Attention-probability dropout needs the probabilities themselves, so a seeded training
//! forward computes attention explicitly ([`crate::nn::attention`]) instead of with the fused
//! kernels, which draw their own masks; memory then grows with the square of the sequence
//! length, as transformers' "eager" attention does.
//!
//! The masks come from a scope around the forward, like `tch::no_grad` (a thread-local): the
//! model code calls [`dropout`] where it would call `Tensor::dropout`, and outside a scope
//! (evaluation, the speed bench) that is plain dropout.

use std::cell::RefCell;
use std::rc::Rc;
use tch::{Device, Tensor};

/// The pack's cells as dropout sees them: their seeds.
pub struct SeededDropout {
    /// The pack's distinct seeds, in order of first appearance.
    seeds: Vec<u64>,
    /// Each cell's seed, as an index into `seeds`.
    cell_seed: Vec<usize>,
    /// The same on the device, as [K] int64 (None when there is one seed).
    index: Option<Tensor>,
    cells: i64,
}

struct Active {
    plan: Rc<SeededDropout>,
    step: u64,
    site: u64,
    /// Each seed's batch length this step, in the order of `plan.seeds`.
    lens: Vec<i64>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

/// Resets the scope even when the forward panics.
struct Scope;

impl Drop for Scope {
    fn drop(&mut self) {
        ACTIVE.with(|a| *a.borrow_mut() = None);
    }
}

impl SeededDropout {
    /// For a pack whose cell k has seed `cell_seeds[k]`.
    pub fn new(cell_seeds: &[u64], device: Device) -> Rc<SeededDropout> {
        let (seeds, cell_seed) = seed_groups(cell_seeds);
        let index: Vec<i64> = cell_seed.iter().map(|&i| i as i64).collect();
        Rc::new(SeededDropout {
            index: (seeds.len() > 1).then(|| Tensor::from_slice(&index).to_device(device)),
            cell_seed,
            seeds,
            cells: cell_seeds.len() as i64,
        })
    }

    /// Each distinct seed's batch length for a step whose cell k trains on rows `rows[k]`, an
    /// example being `len(i)` tokens long: the length a cell of that seed alone would pad to.
    pub fn seed_lens(&self, rows: &[Vec<usize>], len: impl Fn(usize) -> usize) -> Vec<i64> {
        self.seeds
            .iter()
            .enumerate()
            .map(|(s, _)| {
                let first = self.cell_seed.iter().position(|&c| c == s).unwrap_or(0);
                rows[first]
                    .iter()
                    .map(|&i| len(i))
                    .max()
                    .unwrap_or(1)
                    .max(1) as i64
            })
            .collect()
    }

    /// The number of distinct seeds.
    pub fn seeds(&self) -> usize {
        self.seeds.len()
    }

    /// Runs `f`, the training forward of step `step`, with its dropout masks drawn from here;
    /// `lens[s]`: seed s's batch length this step (see [`Self::seed_lens`]; every sequence
    /// dimension of its masks is drawn at that length).
    pub fn during<R>(self: &Rc<Self>, step: u64, lens: Vec<i64>, f: impl FnOnce() -> R) -> R {
        ACTIVE.with(|a| {
            *a.borrow_mut() = Some(Active {
                plan: Rc::clone(self),
                step,
                site: 0,
                lens,
            })
        });
        let _scope = Scope;
        f()
    }
}

/// The distinct seeds of a pack's cells in order of first appearance, and each cell's index
/// among them (cells of one seed share their batches and their dropout masks).
pub(crate) fn seed_groups(cell_seeds: &[u64]) -> (Vec<u64>, Vec<usize>) {
    let mut seeds: Vec<u64> = Vec::new();
    let group = cell_seeds
        .iter()
        .map(|s| match seeds.iter().position(|x| x == s) {
            Some(i) => i,
            None => {
                seeds.push(*s);
                seeds.len() - 1
            }
        })
        .collect();
    (seeds, group)
}

/// Whether the dropout of the current forward is seeded per cell (in a [`SeededDropout::during`]
/// scope): attention then takes the explicit path.
pub fn seeded() -> bool {
    ACTIVE.with(|a| a.borrow().is_some())
}

/// Dropout of `x` with probability `p` when `train`, scaled by 1/(1 − p) as `Tensor::dropout`.
/// `x` is [K·b, …] with the sequence in dimension 1 of a 3-D tensor ([n, t, hidden]) and in
/// dimensions 2 and 3 of a 4-D one (attention probabilities [n, heads, t, t]).
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    ACTIVE.with(|a| match a.borrow_mut().as_mut() {
        Some(active) => active.apply(x, p),
        None => x.dropout(p, true),
    })
}

impl Active {
    fn apply(&mut self, x: &Tensor, p: f64) -> Tensor {
        let site = self.site;
        self.site += 1;
        if p >= 1.0 {
            return x.zeros_like();
        }
        let plan = &self.plan;
        let shape = x.size();
        let k = plan.cells;
        let rows = shape[0] / k;
        let seq: &[usize] = match shape.len() {
            3 => &[1],
            4 => &[2, 3],
            _ => &[],
        };
        let keep = 1.0 - p;
        let masks: Vec<Tensor> = plan
            .seeds
            .iter()
            .zip(&self.lens)
            .map(|(&seed, &len)| {
                // One cell's draw: its rows, every sequence dimension at its seed's length.
                let mut draw = shape.clone();
                draw[0] = rows;
                for &d in seq {
                    draw[d] = len.min(shape[d]);
                }
                tch::manual_seed(site_seed(seed, self.step, site));
                let mut m = Tensor::empty(draw.as_slice(), (x.kind(), x.device()));
                let m = m.bernoulli_float_(keep) * (1.0 / keep);
                // Padded with zeros to the pack's length: positions no real token reads.
                let mut pad = vec![0i64; 2 * shape.len()];
                for &d in seq {
                    pad[2 * (shape.len() - 1 - d) + 1] = shape[d] - draw[d];
                }
                if pad.iter().any(|&p| p > 0) {
                    m.constant_pad_nd(pad.as_slice())
                } else {
                    m
                }
            })
            .collect();
        let mask = match &plan.index {
            None => masks[0].unsqueeze(0),
            Some(index) => Tensor::stack(&masks, 0).index_select(0, index),
        };
        let mut per_cell = vec![k, rows];
        per_cell.extend_from_slice(&shape[1..]);
        (x.reshape(per_cell.as_slice()) * mask).reshape(shape.as_slice())
    }
}

/// The generator's seed for dropout site `site` of step `step` of the cells seeded `seed`
/// (splitmix64's finaliser over the three, so nearby seeds and steps give unrelated streams).
pub fn site_seed(seed: u64, step: u64, site: u64) -> i64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(site.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// The tests seed libtorch's one generator; as threads of one process they take turns.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ones(n: i64) -> Tensor {
        Tensor::ones([n, 5, 7], (Kind::Float, Device::Cpu)).set_requires_grad(true)
    }

    #[test]
    fn a_cells_masks_are_the_same_alone_and_at_any_place_in_a_pack() {
        let _serial = serial();
        // One cell alone (seed 3) against a pack of three (seeds 1, 3, 3): rows of b = 2.
        let alone = SeededDropout::new(&[3], Device::Cpu);
        let pack = SeededDropout::new(&[1, 3, 3], Device::Cpu);
        let a = alone.during(4, vec![5], || dropout(&ones(2), 0.5, true));
        let p = pack.during(4, vec![5, 5], || dropout(&ones(6), 0.5, true));
        assert!(
            a.equal(&p.narrow(0, 2, 2)),
            "second cell differs from alone"
        );
        assert!(a.equal(&p.narrow(0, 4, 2)), "third cell differs from alone");
        assert!(!a.equal(&p.narrow(0, 0, 2)), "seed 1 drew seed 3's mask");
        // Kept entries are scaled by 1/(1 − p), the rest are zero.
        let values: Vec<f32> = Vec::try_from(a.flatten(0, -1)).expect("f32 values");
        assert!(values.iter().all(|&v| v == 0.0 || v == 2.0));
        assert!(values.contains(&0.0) && values.contains(&2.0));
    }

    #[test]
    fn in_a_pack_padded_longer_a_seed_keeps_its_mask_and_zeros_past_its_length() {
        let _serial = serial();
        // Seed 0's batch is 3 tokens long; the pack (seeds 0 and 1) is padded to 5.
        let alone = SeededDropout::new(&[0], Device::Cpu);
        let pack = SeededDropout::new(&[0, 1], Device::Cpu);
        let x = |n: i64, t: i64| Tensor::ones([n, t, 7], (Kind::Float, Device::Cpu));
        let a = alone.during(1, vec![3], || dropout(&x(2, 3), 0.3, true));
        let p = pack.during(1, vec![3, 5], || dropout(&x(4, 5), 0.3, true));
        let own = p.narrow(0, 0, 2);
        assert!(own.narrow(1, 0, 3).equal(&a));
        assert_eq!(
            own.narrow(1, 3, 2).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        // Attention probabilities [n, heads, t, t]: both sequence dimensions.
        let y = |n: i64, t: i64| Tensor::ones([n, 2, t, t], (Kind::Float, Device::Cpu));
        let a = alone.during(2, vec![3], || dropout(&y(2, 3), 0.3, true));
        let p = pack.during(2, vec![3, 5], || dropout(&y(4, 5), 0.3, true));
        assert!(p.narrow(0, 0, 2).narrow(2, 0, 3).narrow(3, 0, 3).equal(&a));
    }

    #[test]
    fn sites_and_steps_draw_different_masks_and_evaluation_draws_none() {
        let _serial = serial();
        let plan = SeededDropout::new(&[0], Device::Cpu);
        let (first, second) = plan.during(1, vec![5], || {
            (dropout(&ones(2), 0.5, true), dropout(&ones(2), 0.5, true))
        });
        assert!(!first.equal(&second));
        let next_step = plan.during(2, vec![5], || dropout(&ones(2), 0.5, true));
        assert!(!first.equal(&next_step));
        let eval = plan.during(1, vec![5], || dropout(&ones(2), 0.5, false));
        assert!(eval.equal(&ones(2)));
        assert!(!seeded(), "the scope ends with the forward");
    }

    #[test]
    fn the_lengths_of_a_step_are_each_seeds_own_batchs_longest() {
        let plan = SeededDropout::new(&[7, 8, 7], Device::Cpu);
        let rows = vec![vec![0, 1], vec![2, 3], vec![0, 1]];
        let lens = [3usize, 5, 2, 9];
        assert_eq!(plan.seed_lens(&rows, |i| lens[i]), vec![5, 9]);
    }
}
