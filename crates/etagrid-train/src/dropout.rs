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
//! positions past a row's own length are padding, which no real token reads), cut when the
//! tensor holds only the first positions of the sequence (a last layer computed at `[CLS]`
//! alone: it gets the first positions of the mask a full layer would). So:
//! - a cell's masks are a function of its seed, the step and the place in the network, in any
//!   pack, at any position, with any padding of the batch (packed = alone on the CPU in fp32
//!   within 1e-6, the rest being GEMMs of other shapes; a resumed run draws what an
//!   uninterrupted one drew);
//! - cells with the same seed see the same masks, as they see the same batches — as separate
//!   runs started from one seed would (their generator streams are the same) — which is also
//!   one draw per seed instead of one per cell.
//!
//! Attention-probability dropout takes one of two paths ([`AttentionDropout`]), both a function of
//! the cell's seed, the step and the site only:
//! - *explicit*: the probabilities written out ([`crate::nn::attention`]) and masked like any
//!   other dropout; memory grows with the square of the sequence length, as transformers'
//!   "eager" attention does;
//! - *per cell*: one fused scaled-dot-product-attention call per cell, libtorch's generator
//!   seeded with (seed, step, site) before each, so the kernel's own draws see the cell's rows
//!   alone. Fewer bytes move than on the explicit path, but it is one launch per cell: it pays on
//!   a GPU at long sequences (RoBERTa-base at 128 tokens, K = 16: 1.9 ms of kernels a layer
//!   against 3.3 explicit; at 32–64 tokens MiniLM's explicit path is the faster; bench/RESULTS.md
//!   2026-12-01 afternoon). The fused kernels draw other masks than `bernoulli`, so the two paths
//!   give a cell different (equally likely) runs: the path is chosen from the device and the
//!   sequence length, which every pack of a sweep shares, never from the pack.
//!
//! The masks come from a scope around the forward, like `tch::no_grad` (a thread-local): the
//! model code calls [`dropout`] where it would call `Tensor::dropout`, and outside a scope
//! (evaluation, the speed bench) that is plain dropout.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use tch::{Device, Tensor};

/// How a seeded training forward computes attention with dropout on its probabilities (see the
/// module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionDropout {
    /// Per cell on a GPU for sequences of at least [`PER_CELL_MIN_LEN`] tokens, explicit
    /// otherwise (the default).
    Auto,
    /// Always the explicit path.
    Explicit,
    /// Always one fused call per cell.
    PerCell,
}

/// The shortest sequence at which [`AttentionDropout::Auto`] takes the per-cell path on a GPU.
pub const PER_CELL_MIN_LEN: i64 = 128;

/// The process's choice, set by [`AttentionDropout::set`] (a test comparing the paths); unset,
/// `ETAGRID_ATTENTION` (a bench comparing them), else [`AttentionDropout::Auto`].
static ATTENTION: AtomicU8 = AtomicU8::new(0);

impl AttentionDropout {
    /// `auto`, `explicit` or `per-cell` (the values of `ETAGRID_ATTENTION`).
    pub fn parse(s: &str) -> Option<AttentionDropout> {
        match s {
            "auto" => Some(AttentionDropout::Auto),
            "explicit" => Some(AttentionDropout::Explicit),
            "per-cell" => Some(AttentionDropout::PerCell),
            _ => None,
        }
    }

    /// Sets the path of every seeded forward of this process from now on.
    pub fn set(self) {
        let code = match self {
            AttentionDropout::Auto => 1,
            AttentionDropout::Explicit => 2,
            AttentionDropout::PerCell => 3,
        };
        ATTENTION.store(code, Ordering::Relaxed);
    }

    /// The path this process's seeded forwards take.
    pub fn current() -> AttentionDropout {
        match ATTENTION.load(Ordering::Relaxed) {
            1 => AttentionDropout::Auto,
            2 => AttentionDropout::Explicit,
            3 => AttentionDropout::PerCell,
            _ => {
                static FROM_ENV: OnceLock<AttentionDropout> = OnceLock::new();
                *FROM_ENV.get_or_init(|| match std::env::var("ETAGRID_ATTENTION") {
                    Err(_) => AttentionDropout::Auto,
                    Ok(v) => AttentionDropout::parse(&v).unwrap_or_else(|| {
                        eprintln!(
                            "etagrid: ETAGRID_ATTENTION={v:?} is not auto, explicit or per-cell; \
                             using auto"
                        );
                        AttentionDropout::Auto
                    }),
                })
            }
        }
    }

    /// Whether attention over `t` tokens on `device` takes the per-cell path.
    fn per_cell(self, device: Device, t: i64) -> bool {
        match self {
            AttentionDropout::Auto => device.is_cuda() && t >= PER_CELL_MIN_LEN,
            AttentionDropout::Explicit => false,
            AttentionDropout::PerCell => true,
        }
    }
}

/// The pack's cells as dropout sees them: their seeds.
pub struct SeededDropout {
    /// The pack's distinct seeds, in order of first appearance.
    seeds: Vec<u64>,
    /// Each cell's seed, as an index into `seeds`.
    cell_seed: Vec<usize>,
    /// The same on the device, as [K] int64 (None when there is one seed).
    index: Option<Tensor>,
    cells: i64,
    attention: AttentionDropout,
}

/// A seed's batch in one step, as its masks and its attention see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedLen {
    /// The batch's length, its longest row in tokens: every sequence dimension of the seed's
    /// masks is drawn at this length.
    pub len: i64,
    /// Whether a row is shorter than `len` (the rest of it padding that attention masks out).
    /// A batch without padding attends without a mask on the per-cell path, as transformers
    /// drops a mask of all ones: the same numbers, and cuDNN's kernel is faster without one.
    pub padded: bool,
}

/// A length alone: padding assumed, so the attention mask is kept.
impl From<i64> for SeedLen {
    fn from(len: i64) -> SeedLen {
        SeedLen { len, padded: true }
    }
}

struct Active {
    plan: Rc<SeededDropout>,
    step: u64,
    site: u64,
    /// Each seed's batch this step, in the order of `plan.seeds`.
    lens: Vec<SeedLen>,
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
    /// For a pack whose cell k has seed `cell_seeds[k]`, attention on this process's path
    /// ([`AttentionDropout::current`]).
    pub fn new(cell_seeds: &[u64], device: Device) -> Rc<SeededDropout> {
        SeededDropout::with_attention(cell_seeds, device, AttentionDropout::current())
    }

    /// The same, attention on the path `attention`.
    pub fn with_attention(
        cell_seeds: &[u64],
        device: Device,
        attention: AttentionDropout,
    ) -> Rc<SeededDropout> {
        let (seeds, cell_seed) = seed_groups(cell_seeds);
        let index: Vec<i64> = cell_seed.iter().map(|&i| i as i64).collect();
        Rc::new(SeededDropout {
            index: (seeds.len() > 1).then(|| Tensor::from_slice(&index).to_device(device)),
            cell_seed,
            seeds,
            cells: cell_seeds.len() as i64,
            attention,
        })
    }

    /// Each distinct seed's batch for a step whose cell k trains on rows `rows[k]`, an example
    /// being `len(i)` tokens long: the length a cell of that seed alone would pad to, and
    /// whether a row is shorter.
    pub fn seed_lens(&self, rows: &[Vec<usize>], len: impl Fn(usize) -> usize) -> Vec<SeedLen> {
        self.seeds
            .iter()
            .enumerate()
            .map(|(s, _)| {
                let first = self.cell_seed.iter().position(|&c| c == s).unwrap_or(0);
                let lens: Vec<usize> = rows[first].iter().map(|&i| len(i)).collect();
                let longest = lens.iter().copied().max().unwrap_or(1).max(1);
                SeedLen {
                    len: longest as i64,
                    padded: lens.iter().any(|&l| l < longest),
                }
            })
            .collect()
    }

    /// The number of distinct seeds.
    pub fn seeds(&self) -> usize {
        self.seeds.len()
    }

    /// Runs `f`, the training forward of step `step`, with its dropout masks drawn from here;
    /// `lens[s]`: seed s's batch this step (see [`Self::seed_lens`]; a bare length is a batch
    /// that may be padded).
    pub fn during<R, L: Into<SeedLen>>(
        self: &Rc<Self>,
        step: u64,
        lens: impl IntoIterator<Item = L>,
        f: impl FnOnce() -> R,
    ) -> R {
        ACTIVE.with(|a| {
            *a.borrow_mut() = Some(Active {
                plan: Rc::clone(self),
                step,
                site: 0,
                lens: lens.into_iter().map(Into::into).collect(),
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
/// scope): attention then takes the per-cell or the explicit path ([`AttentionDropout`]).
pub fn seeded() -> bool {
    ACTIVE.with(|a| a.borrow().is_some())
}

/// Attention with dropout `p` on its probabilities, one fused call per cell, when a seeded
/// forward is on the per-cell path for `q` ([n, heads, t, d]); `None` otherwise (the caller takes
/// the explicit path). `sdpa(q, k, v, mask)` is the fused attention of one cell's rows with
/// dropout `p`; each call sees the cell's rows cut to its seed's batch length, and its output
/// is padded back with zeros (positions no real token reads). Counts as one dropout site.
pub(crate) fn per_cell_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    sdpa: impl Fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>) -> Tensor,
) -> Option<Tensor> {
    ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        let active = a.as_mut()?;
        // Queries of the first positions only (a last layer read at `[CLS]`) take the explicit
        // path, cheap at one query: it draws the probabilities' masks at full length and cuts
        // them, as for every other dropout, where a fused kernel would draw other ones for the
        // shorter shape.
        let (tq, t) = (q.size()[2], k.size()[2]);
        if tq < t || !active.plan.attention.per_cell(q.device(), t) {
            return None;
        }
        Some(active.per_cell(q, k, v, mask, sdpa))
    })
}

/// Dropout of `x` with probability `p` when `train`, scaled by 1/(1 − p) as `Tensor::dropout`.
/// `x` is [K·b, …] with the sequence in dimension 1 of a 3-D tensor ([n, t, hidden]) and in
/// dimensions 2 and 3 of a 4-D one (attention probabilities [n, heads, t, t]).
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    ACTIVE.with(|a| match a.borrow_mut().as_mut() {
        Some(active) => active.apply(x, None, p),
        None => x.dropout(p, true),
    })
}

/// `dropout(x, p, train) + residual` (`residual` of `x`'s shape), with the masks of
/// [`dropout`]. On a GPU, in a seeded forward, the mask's product and the sum are one fused
/// multiply-add (`addcmul`, rounded once where the two operations round twice): one pass over
/// the activations less. Elsewhere it is the product then the sum, so the CPU's numbers (the
/// reference tests', the quickstart's) are those of the two operations.
pub fn dropout_add(x: &Tensor, residual: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x + residual;
    }
    ACTIVE.with(|a| match a.borrow_mut().as_mut() {
        Some(active) => active.apply(x, Some((residual, x.device().is_cuda())), p),
        None => x.dropout(p, true) + residual,
    })
}

impl Active {
    /// Dropout of `x` at the next site; with `residual`, plus it — fused when the flag is set.
    fn apply(&mut self, x: &Tensor, residual: Option<(&Tensor, bool)>, p: f64) -> Tensor {
        let site = self.site;
        self.site += 1;
        if p >= 1.0 {
            return match residual {
                Some((r, _)) => r + x.zeros_like(),
                None => x.zeros_like(),
            };
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
            .map(|(&seed, &SeedLen { len, .. })| {
                // One cell's draw: its rows, every sequence dimension at its seed's length.
                let mut draw = shape.clone();
                draw[0] = rows;
                for &d in seq {
                    draw[d] = len;
                }
                tch::manual_seed(site_seed(seed, self.step, site));
                let mut m = Tensor::empty(draw.as_slice(), (x.kind(), x.device()));
                let mut m = m.bernoulli_float_(keep) * (1.0 / keep);
                // A sequence dimension shorter than the seed's batch holds its first positions
                // (the pack's own length is never shorter): the draw cut to them.
                for &d in seq {
                    if shape[d] < len {
                        m = m.narrow(d as i64, 0, shape[d]);
                    }
                }
                // Padded with zeros to the pack's length: positions no real token reads.
                let mut pad = vec![0i64; 2 * shape.len()];
                for &d in seq {
                    pad[2 * (shape.len() - 1 - d) + 1] = (shape[d] - len).max(0);
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
        let xs = x.reshape(per_cell.as_slice());
        let out = match residual {
            None => xs * mask,
            Some((r, false)) => xs * mask + r.reshape(per_cell.as_slice()),
            Some((r, true)) => r.reshape(per_cell.as_slice()).addcmul(&xs, &mask),
        };
        out.reshape(shape.as_slice())
    }
}

impl Active {
    fn per_cell(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        sdpa: impl Fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>) -> Tensor,
    ) -> Tensor {
        let site = self.site;
        self.site += 1;
        let plan = &self.plan;
        let t = q.size()[2];
        let rows = q.size()[0] / plan.cells;
        // q, k and v are [n, heads, t, d], usually views of the projections' [n, t, heads, d]:
        // split in that layout, each cell's gradient goes back into it by one cat, with no
        // transposing copy after it (the attention kernels return gradients and output in their
        // input's layout; any other layout gives the same numbers). `split`, not `narrow`: its
        // backward is that one cat, where each narrow's would write its cell's gradient into a
        // zeroed tensor of the whole pack.
        let cells = |x: &Tensor| x.transpose(1, 2).split(rows, 0);
        let (qs, ks, vs) = (cells(q), cells(k), cells(v));
        // A boolean mask made additive once for the pack (SDPA would convert it in every call,
        // to the same values), then cut per cell; a cell whose seed's batch has no padding
        // attends without one.
        let masks = mask.map(|m| additive(m, q.kind()).split(rows, 0));
        let outs: Vec<Tensor> = (0..plan.cells as usize)
            .map(|c| {
                let s = plan.cell_seed[c];
                let len = self.lens[s].len.min(t);
                // The first `len` positions of dimension `dim` (the sequence's, of length t).
                let head = |x: &Tensor, dim: i64| {
                    if len < t {
                        x.narrow(dim, 0, len)
                    } else {
                        x.shallow_clone()
                    }
                };
                // A cell's [rows, t, heads, d] cut to its seed's length, as [rows, heads, len, d].
                let cut = |x: &Tensor| head(x, 1).transpose(1, 2);
                let m = match &masks {
                    Some(m) if self.lens[s].padded => Some(head(&m[c], 3)),
                    _ => None,
                };
                tch::manual_seed(site_seed(plan.seeds[s], self.step, site));
                // Back to [rows, len, heads, d], padded with zeros to the pack's length.
                let o = sdpa(&cut(&qs[c]), &cut(&ks[c]), &cut(&vs[c]), m.as_ref()).transpose(1, 2);
                if len < t {
                    o.constant_pad_nd([0, 0, 0, 0, 0, t - len])
                } else {
                    o
                }
            })
            .collect();
        Tensor::cat(&outs, 0).transpose(1, 2)
    }
}

/// A boolean attention mask (true: may attend) as the additive one SDPA makes of it, 0 and −∞ in
/// `kind`; a mask that is not boolean is already additive.
fn additive(mask: &Tensor, kind: tch::Kind) -> Tensor {
    if mask.kind() != tch::Kind::Bool {
        return mask.shallow_clone();
    }
    Tensor::zeros(mask.size(), (kind, mask.device()))
        .masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
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
pub(crate) mod tests {
    use super::*;
    use tch::Kind;

    /// The tests seed libtorch's one generator; as threads of one process they take turns (the
    /// other modules' tests that draw masks too).
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
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
    fn a_tensor_of_the_first_positions_gets_the_first_positions_of_the_full_draw() {
        let _serial = serial();
        let plan = SeededDropout::new(&[2, 3], Device::Cpu);
        let x = |n: i64, t: i64| Tensor::ones([n, t, 7], (Kind::Float, Device::Cpu));
        let full = plan.during(1, vec![5, 3], || dropout(&x(4, 5), 0.5, true));
        let first = plan.during(1, vec![5, 3], || dropout(&x(4, 1), 0.5, true));
        assert!(first.equal(&full.narrow(1, 0, 1)));
        // Attention probabilities [n, heads, tq, t] with queries at the first position.
        let y = |tq: i64| Tensor::ones([4, 2, tq, 5], (Kind::Float, Device::Cpu));
        let full = plan.during(2, vec![5, 3], || dropout(&y(5), 0.5, true));
        let first = plan.during(2, vec![5, 3], || dropout(&y(1), 0.5, true));
        assert!(first.equal(&full.narrow(2, 0, 1)));
        // Seed 3's batch is 3 long: zeros past it, as for the full tensor.
        assert!(
            first
                .narrow(0, 2, 2)
                .narrow(3, 3, 2)
                .eq(0.0)
                .all()
                .int64_value(&[])
                == 1
        );
    }

    #[test]
    fn queries_of_the_first_position_get_the_first_row_of_the_full_attention() {
        let _serial = serial();
        // Queries of the first position only, keys and values of all 5; seeds 1, 3, 3.
        let x = qkv(6, 5, 14);
        let first = (
            x.0.narrow(2, 0, 1),
            x.1.shallow_clone(),
            x.2.shallow_clone(),
            x.3.copy(),
        );
        let on = |path: AttentionDropout, x: &(Tensor, Tensor, Tensor, Tensor)| {
            SeededDropout::with_attention(&[1, 3, 3], Device::Cpu, path).during(
                3,
                vec![5, 5],
                || crate::nn::attention(&x.0, &x.1, &x.2, Some(&x.3), 0.5, false, false),
            )
        };
        let full = on(AttentionDropout::Explicit, &x);
        let cut = on(AttentionDropout::Explicit, &first);
        assert_eq!(cut.size(), [6, 1, 8]);
        assert!(cut.allclose(&full.narrow(1, 0, 1), 1e-6, 1e-7, false));
        // The per-cell path leaves them to the explicit one, whose masks those are.
        assert!(on(AttentionDropout::PerCell, &first).equal(&cut));
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

    /// q, k, v [n, 2 heads, t, 4] drawn from `seed`, needing gradients; every key unmasked.
    fn qkv(n: i64, t: i64, seed: i64) -> (Tensor, Tensor, Tensor, Tensor) {
        tch::manual_seed(seed);
        let x = || Tensor::randn([n, 2, t, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mask = Tensor::ones([n, 1, 1, t], (Kind::Bool, Device::Cpu));
        (x(), x(), x(), mask)
    }

    /// Attention with dropout 0.5 on the per-cell path for a pack of `seeds`.
    fn per_cell<L: Into<SeedLen>>(
        seeds: &[u64],
        lens: Vec<L>,
        x: &(Tensor, Tensor, Tensor, Tensor),
    ) -> Tensor {
        let plan = SeededDropout::with_attention(seeds, Device::Cpu, AttentionDropout::PerCell);
        plan.during(3, lens, || {
            crate::nn::attention(&x.0, &x.1, &x.2, Some(&x.3), 0.5, false, false)
        })
    }

    fn rows(x: &Tensor, start: i64, n: i64) -> Tensor {
        x.narrow(0, start, n)
            .detach()
            .copy()
            .set_requires_grad(true)
    }

    #[test]
    fn per_cell_attention_of_a_cell_is_the_same_alone_and_in_a_pack_gradients_too() {
        let _serial = serial();
        // Seeds 1, 3, 3 with b = 2 rows each; the second cell alone is seed 3 on its rows.
        let packed_in = qkv(6, 5, 11);
        let alone_in = (
            rows(&packed_in.0, 2, 2),
            rows(&packed_in.1, 2, 2),
            rows(&packed_in.2, 2, 2),
            packed_in.3.narrow(0, 2, 2),
        );
        let packed = per_cell(&[1, 3, 3], vec![5, 5], &packed_in);
        let alone = per_cell(&[3], vec![5], &alone_in);
        assert_eq!(packed.size(), [6, 5, 8]);
        assert!(packed.narrow(0, 2, 2).allclose(&alone, 1e-6, 1e-7, false));
        // Dropout happened: without it the output is another.
        let plain = SeededDropout::with_attention(&[3], Device::Cpu, AttentionDropout::PerCell)
            .during(3, vec![5], || {
                crate::nn::attention(
                    &alone_in.0,
                    &alone_in.1,
                    &alone_in.2,
                    Some(&alone_in.3),
                    0.0,
                    false,
                    false,
                )
            });
        assert!(!plain.allclose(&alone, 1e-3, 1e-3, false));
        // The gradients of the cell's rows are the ones it gets alone.
        packed.narrow(0, 2, 2).sum(Kind::Float).backward();
        alone.sum(Kind::Float).backward();
        for (p, a) in [(&packed_in.0, &alone_in.0), (&packed_in.2, &alone_in.2)] {
            assert!(p
                .grad()
                .narrow(0, 2, 2)
                .allclose(&a.grad(), 1e-6, 1e-7, false));
        }
        // The other cells' rows get none from it.
        assert_eq!(
            packed_in
                .0
                .grad()
                .narrow(0, 0, 2)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
    }

    #[test]
    fn per_cell_attention_draws_at_the_seeds_own_length_and_zeros_past_it() {
        let _serial = serial();
        // Seed 0's batch is 3 tokens long; the pack (seeds 0 and 1) is padded to 5.
        let packed_in = qkv(4, 5, 12);
        let cut = |x: &Tensor| rows(x, 0, 2).narrow(2, 0, 3);
        let alone_in = (
            cut(&packed_in.0),
            cut(&packed_in.1),
            cut(&packed_in.2),
            packed_in.3.narrow(0, 0, 2).narrow(3, 0, 3),
        );
        let packed = per_cell(&[0, 1], vec![3, 5], &packed_in);
        let alone = per_cell(&[0], vec![3], &alone_in);
        let own = packed.narrow(0, 0, 2);
        assert!(own.narrow(1, 0, 3).allclose(&alone, 1e-6, 1e-7, false));
        assert_eq!(
            own.narrow(1, 3, 2).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }

    #[test]
    fn auto_takes_the_per_cell_path_on_a_gpu_at_long_sequences_only() {
        let auto = AttentionDropout::Auto;
        assert!(auto.per_cell(Device::Cuda(0), PER_CELL_MIN_LEN));
        assert!(!auto.per_cell(Device::Cuda(0), PER_CELL_MIN_LEN - 1));
        assert!(!auto.per_cell(Device::Cpu, 512));
        assert!(AttentionDropout::PerCell.per_cell(Device::Cpu, 2));
        assert!(!AttentionDropout::Explicit.per_cell(Device::Cuda(0), 512));
        assert_eq!(
            AttentionDropout::parse("per-cell"),
            Some(AttentionDropout::PerCell)
        );
        assert_eq!(AttentionDropout::parse("fused"), None);
    }

    #[test]
    fn the_lengths_of_a_step_are_each_seeds_own_batchs_longest() {
        let plan = SeededDropout::new(&[7, 8, 7], Device::Cpu);
        let rows = vec![vec![0, 1], vec![2, 3], vec![0, 1]];
        let lens = [3usize, 5, 2, 9];
        let seen = plan.seed_lens(&rows, |i| lens[i]);
        assert_eq!(seen.iter().map(|l| l.len).collect::<Vec<_>>(), vec![5, 9]);
        assert!(
            seen.iter().all(|l| l.padded),
            "3 < 5 and 2 < 9: both padded"
        );
        let even = plan.seed_lens(&[vec![1, 1], vec![0, 2], vec![1, 1]], |i| lens[i]);
        assert_eq!(
            even,
            vec![
                SeedLen {
                    len: 5,
                    padded: false
                },
                SeedLen {
                    len: 3,
                    padded: true
                }
            ]
        );
    }

    #[test]
    fn a_seed_without_padding_attends_without_a_mask_to_the_same_numbers() {
        let _serial = serial();
        let x = qkv(4, 5, 13);
        let with_mask = per_cell(&[0, 1], vec![5, 5], &x);
        let unpadded = SeedLen {
            len: 5,
            padded: false,
        };
        let without = per_cell(&[0, 1], vec![unpadded, unpadded], &x);
        assert!(with_mask.equal(&without));
        // A mask that is used: padding after 3 tokens in every row changes the output.
        let padded = x.3.copy();
        let _ = padded.narrow(3, 3, 2).fill_(0);
        let y = (
            x.0.shallow_clone(),
            x.1.shallow_clone(),
            x.2.shallow_clone(),
            padded,
        );
        assert!(!per_cell(&[0, 1], vec![5, 5], &y).allclose(&with_mask, 1e-3, 1e-3, false));
    }

    #[test]
    fn dropout_add_is_dropout_plus_the_residual_fused_or_not() {
        let _serial = serial();
        tch::manual_seed(5);
        let x = Tensor::randn([6, 5, 7], (Kind::Float, Device::Cpu));
        let r = Tensor::randn([6, 5, 7], (Kind::Float, Device::Cpu));
        let plan = SeededDropout::new(&[1, 3, 3], Device::Cpu);
        let apart = plan.during(2, vec![5, 5], || dropout(&x, 0.3, true)) + &r;
        // On the CPU: the product then the sum, the same numbers.
        let sum = plan.during(2, vec![5, 5], || dropout_add(&x, &r, 0.3, true));
        assert!(sum.equal(&apart));
        // Fused (the GPU's path, forced here): the same masks, rounded once.
        let fused = plan.during(2, vec![5, 5], || {
            ACTIVE.with(|a| {
                a.borrow_mut()
                    .as_mut()
                    .map(|a| a.apply(&x, Some((&r, true)), 0.3))
            })
        });
        let fused = fused.expect("in a scope");
        assert!(fused.allclose(&apart, 1e-6, 1e-6, false));
        assert!(
            !fused.allclose(&(&x + &r), 1e-3, 1e-3, false),
            "nothing dropped"
        );
        // Outside training: the plain sum.
        assert!(dropout_add(&x, &r, 0.3, false).equal(&(&x + &r)));
    }
}
