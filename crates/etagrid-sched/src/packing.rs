//! Which pending cells a worker takes together (a *pack*, trained on one frozen base): cells
//! with the same [`CellConfig::pack_key`], as many as the pack size says, in queue order. Both
//! backends use it: the local dispatcher per slot, the SLURM front end per array task.

use etagrid_spec::{CellConfig, PackSize};
use etagrid_store::CellRow;
use std::collections::{HashMap, VecDeque};

/// The pack keys and sizes of a run's queued cells.
#[derive(Debug, Clone, Default)]
pub(crate) struct Packing {
    /// Cell id → pack key.
    keys: HashMap<String, String>,
    /// Pack key → (size on a GPU, size on the CPU).
    sizes: HashMap<String, (usize, usize)>,
    /// Cell id → the largest pack it may join: a cell retried after its pack crashed runs in a
    /// pack half as large.
    limit: HashMap<String, usize>,
}

impl Packing {
    /// `parallel_gpus`: how many GPU workers run at once (`auto` gives each its share of a
    /// key's pending cells); `None`: unknown, one cell per worker.
    pub(crate) fn new(
        queue: &VecDeque<CellRow>,
        current: &HashMap<String, CellConfig>,
        size: PackSize,
        parallel_gpus: Option<usize>,
    ) -> Packing {
        let keys: HashMap<String, String> = queue
            .iter()
            .filter_map(|r| current.get(&r.id).map(|c| (r.id.clone(), c.pack_key())))
            .collect();
        let packable: HashMap<String, bool> = queue
            .iter()
            .filter_map(|r| {
                Some((
                    keys.get(&r.id)?.clone(),
                    current.get(&r.id)?.task.lm.is_none(),
                ))
            })
            .collect();
        let sizes = pack_sizes(queue, &keys, &packable, size, parallel_gpus);
        Packing {
            keys,
            sizes,
            limit: HashMap::new(),
        }
    }

    /// The largest pack on a GPU and on the CPU.
    pub(crate) fn largest(&self) -> (usize, usize) {
        (
            self.sizes.values().map(|s| s.0).max().unwrap_or(1),
            self.sizes.values().map(|s| s.1).max().unwrap_or(1),
        )
    }

    /// The pack keys whose GPU packs take more than one cell, each with its GPU pack size and
    /// its first `n` (at most that size) queued cells, in queue order: what a memory probe of
    /// the key measures.
    pub(crate) fn gpu_packs(
        &self,
        queue: &VecDeque<CellRow>,
        n: usize,
    ) -> Vec<(String, usize, Vec<String>)> {
        let mut out: Vec<(String, usize, Vec<String>)> = Vec::new();
        for r in queue {
            let Some(key) = self.keys.get(&r.id) else {
                continue;
            };
            let size = self.sizes.get(key).map_or(1, |s| s.0);
            if size < 2 {
                continue;
            }
            match out.iter_mut().find(|(k, _, _)| k == key) {
                Some((_, _, ids)) if ids.len() < n.min(size) => ids.push(r.id.clone()),
                Some(_) => {}
                None => out.push((key.clone(), size, vec![r.id.clone()])),
            }
        }
        out
    }

    /// GPU packs of `key` take at most `fit` cells (what its memory probe found fits). When
    /// that splits the key's cells, they go into as few packs as fit, of one size as close to
    /// even as it allows (36 cells, 35 fit: 18 + 18, not 35 + 1; 8 fit: 8 × 4 + 4).
    pub(crate) fn cap_gpu(&mut self, key: &str, fit: usize) {
        let pending = self.keys.values().filter(|k| *k == key).count().max(1);
        if let Some(s) = self.sizes.get_mut(key) {
            if s.0 > fit {
                let packs = pending.div_ceil(fit.max(1));
                s.0 = pending.div_ceil(packs).min(fit.max(1));
            }
        }
    }

    /// The most cells a GPU pack of `key` takes now.
    pub(crate) fn gpu_size(&self, key: &str) -> usize {
        self.sizes.get(key).map_or(1, |s| s.0)
    }

    /// A cell that is retried after its pack of `n` crashed joins packs of at most `limit`.
    pub(crate) fn limit(&mut self, id: &str, limit: usize) {
        self.limit.insert(id.to_owned(), limit);
    }

    /// Takes the next pack off `queue` for a worker on a GPU (`gpu`) or the CPU: the first cell
    /// and up to `size − 1` more cells with the same pack key, in queue order.
    pub(crate) fn take(&self, queue: &mut VecDeque<CellRow>, gpu: bool) -> Vec<CellRow> {
        take_pack(queue, &self.keys, &self.sizes, &self.limit, gpu)
    }
}

/// How many cells each worker takes, per pack key: `auto` gives each GPU worker its share of a
/// key's pending cells, at most [`PackSize::AUTO_MAX`] (a GPU step of a small model costs about
/// the same for 1 cell as for 36: one worker per GPU beats several, which the GPU time-slices);
/// on the CPU one cell per worker. causal_lm cells are never packed.
fn pack_sizes(
    queue: &VecDeque<CellRow>,
    keys: &HashMap<String, String>,
    packable: &HashMap<String, bool>,
    size: PackSize,
    parallel_gpus: Option<usize>,
) -> HashMap<String, (usize, usize)> {
    let mut pending: HashMap<String, usize> = HashMap::new();
    for r in queue {
        if let Some(k) = keys.get(&r.id) {
            *pending.entry(k.clone()).or_default() += 1;
        }
    }
    pending
        .into_iter()
        .map(|(key, n)| {
            let ok = packable.get(&key).copied().unwrap_or(false);
            // (on a GPU, on the CPU)
            let sizes = match (size, parallel_gpus) {
                _ if !ok => (1, 1),
                (PackSize::Fixed(k), _) => (k, k),
                (PackSize::Auto, None) => (1, 1),
                (PackSize::Auto, Some(g)) => (n.div_ceil(g.max(1)).clamp(1, PackSize::AUTO_MAX), 1),
            };
            (key, sizes)
        })
        .collect()
}

fn take_pack(
    queue: &mut VecDeque<CellRow>,
    keys: &HashMap<String, String>,
    sizes: &HashMap<String, (usize, usize)>,
    limit: &HashMap<String, usize>,
    gpu: bool,
) -> Vec<CellRow> {
    let Some(first) = queue.pop_front() else {
        return Vec::new();
    };
    let key = keys.get(&first.id).cloned().unwrap_or_default();
    let (on_gpu, on_cpu) = sizes.get(&key).copied().unwrap_or((1, 1));
    let mut size = if gpu { on_gpu } else { on_cpu };
    if let Some(&l) = limit.get(&first.id) {
        size = size.min(l);
    }
    let mut pack = vec![first];
    let mut i = 0;
    while pack.len() < size && i < queue.len() {
        let same = keys.get(&queue[i].id) == Some(&key);
        let fits = limit.get(&queue[i].id).is_none_or(|&l| l > pack.len());
        if same && fits {
            if let Some(r) = queue.remove(i) {
                pack.push(r);
            }
        } else {
            i += 1;
        }
    }
    pack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(n: usize) -> (VecDeque<CellRow>, HashMap<String, CellConfig>) {
        let spec = crate::testing::sweep(n);
        let queue = crate::testing::pending_rows(&spec).into();
        let current = spec
            .cells()
            .into_iter()
            .map(|c| (c.id.0, c.config))
            .collect();
        (queue, current)
    }

    #[test]
    fn auto_splits_a_keys_cells_over_the_gpus_and_keeps_the_cpu_at_one() {
        let (mut q, cur) = setup(6);
        let p = Packing::new(&q, &cur, PackSize::Auto, Some(2));
        assert_eq!(p.largest(), (3, 1));
        assert_eq!(p.take(&mut q, true).len(), 3);
        assert_eq!(p.take(&mut q, false).len(), 1);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_memory_cap_splits_a_keys_cells_into_even_packs() {
        for (fit, want) in [
            (35, vec![18, 18]),
            (17, vec![12, 12, 12]),
            (36, vec![36]),
            (1, vec![1; 36]),
        ] {
            let (mut queue, current) = setup(36);
            let mut p = Packing::new(&queue, &current, PackSize::Auto, Some(1));
            let key = current.values().next().expect("a cell").pack_key();
            p.cap_gpu(&key, fit);
            let mut sizes = Vec::new();
            while !queue.is_empty() {
                sizes.push(p.take(&mut queue, true).len());
            }
            assert_eq!(sizes, want, "{fit} fit");
        }
    }

    #[test]
    fn auto_without_a_known_parallelism_gives_one_cell_per_worker() {
        let (mut q, cur) = setup(4);
        let p = Packing::new(&q, &cur, PackSize::Auto, None);
        assert_eq!(p.take(&mut q, true).len(), 1);
        let p = Packing::new(&q, &cur, PackSize::Fixed(2), None);
        assert_eq!(p.take(&mut q, true).len(), 2);
    }

    #[test]
    fn a_retried_cell_joins_only_packs_within_its_limit() {
        let (mut q, cur) = setup(4);
        let mut p = Packing::new(&q, &cur, PackSize::Fixed(4), Some(1));
        let first = q[0].id.clone();
        p.limit(&first, 2);
        let pack = p.take(&mut q, true);
        assert_eq!(pack.len(), 2, "the first cell's limit caps its pack");
        assert_eq!(pack[0].id, first);
        assert_eq!(p.take(&mut q, true).len(), 2);
    }
}
