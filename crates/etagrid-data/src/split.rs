//! Which examples train and which evaluate: the stratified split, the eval subset, and the seeded
//! batch order of training.

use crate::read::read_examples;
use crate::{DataError, Example};
use etagrid_spec::TaskSpec;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;

/// Splits `examples` into (train, eval), stratified by label: of each label's `n` examples,
/// `round(eval_fraction · n)` go to eval, but at least one stays in train (a label with a single
/// example is never held out). Which ones is drawn from `seed` and the label alone (ChaCha8, one
/// stream per label), so the split does not change when other labels are added or the rows are
/// reordered within other labels. Both parts keep the file order.
pub fn stratified_split(
    examples: Vec<Example>,
    eval_fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        by_label.entry(e.label.as_str()).or_default().push(i);
    }
    let mut is_eval = vec![false; examples.len()];
    for (label, mut idx) in by_label {
        let n = idx.len();
        let n_eval = ((eval_fraction * n as f64).round() as usize).min(n.saturating_sub(1));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(fnv1a(label.as_bytes()));
        idx.shuffle(&mut rng);
        for &i in &idx[..n_eval] {
            is_eval[i] = true;
        }
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (e, ev) in examples.into_iter().zip(is_eval) {
        if ev {
            eval.push(e);
        } else {
            train.push(e);
        }
    }
    (train, eval)
}

/// 64-bit FNV-1a: a hash that is the same on every platform and in every Rust version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The training order: each epoch a fresh permutation drawn from `seed` (ChaCha8, portable), cut
/// into batches of `batch_size`; the last short batch of an epoch is kept.
pub struct BatchOrder {
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    order: Vec<usize>,
    pos: usize,
}

impl BatchOrder {
    pub fn new(n: usize, batch_size: usize, seed: u64) -> BatchOrder {
        let mut b = BatchOrder {
            n,
            batch_size,
            seed,
            epoch: 0,
            order: Vec::new(),
            pos: 0,
        };
        b.shuffle();
        b
    }

    fn shuffle(&mut self) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.seed ^ (self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        self.order = (0..self.n).collect();
        self.order.shuffle(&mut rng);
        self.pos = 0;
    }

    /// Batches per epoch.
    pub fn per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }

    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.pos >= self.n {
            self.epoch += 1;
            self.shuffle();
        }
        let end = (self.pos + self.batch_size).min(self.n);
        let b = self.order[self.pos..end].to_vec();
        self.pos = end;
        b
    }
}

/// At most `max` examples drawn at random (with a fixed seed, the same for every cell) and kept
/// in file order. A prefix would not do: files are often grouped by class.
pub fn eval_subset<T: Clone>(examples: Vec<T>, max: Option<usize>) -> Vec<T> {
    match max {
        Some(n) if n < examples.len() => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x65_76_61_6c);
            let mut keep = rand::seq::index::sample(&mut rng, examples.len(), n).into_vec();
            keep.sort_unstable();
            keep.into_iter().map(|i| examples[i].clone()).collect()
        }
        _ => examples,
    }
}

/// The train and eval examples of a task as read: from two files, or from one file split by
/// `[task] split`; the eval part cut to `max_eval_examples`.
pub fn load_examples(task: &TaskSpec) -> Result<(Vec<Example>, Vec<Example>), DataError> {
    let (train, eval) = match &task.split {
        None => (
            read_examples(&task.train_file, task)?,
            read_examples(&task.eval_file, task)?,
        ),
        Some(split) => {
            let all = read_examples(&task.train_file, task)?;
            let n = all.len();
            let (train, eval) = stratified_split(all, split.eval_fraction, split.seed);
            if eval.is_empty() {
                return Err(DataError::Data {
                    path: task.train_file.clone(),
                    line: None,
                    message: format!(
                        "split.eval_fraction = {} holds out no example of its {n}: raise it, or give an `eval` file",
                        split.eval_fraction
                    ),
                });
            }
            (train, eval)
        }
    };
    Ok((train, eval_subset(eval, task.max_eval_examples)))
}

/// The eval examples of a task alone, as [`load_examples`] gives them (the train file is read only
/// when the eval set is split from it).
pub fn eval_examples(task: &TaskSpec) -> Result<Vec<Example>, DataError> {
    match task.split {
        None => Ok(eval_subset(
            read_examples(&task.eval_file, task)?,
            task.max_eval_examples,
        )),
        Some(_) => load_examples(task).map(|(_, eval)| eval),
    }
}
