//! The promotion after a rung: which (η_A, η_B) points train on, which are pruned.

use crate::{kendall_tau_b, SearchSpec};
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// One cell's result at a rung. A grid point (lr_a, lr_b) may have several cells (seeds).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub cell: String,
    pub lr_a: f64,
    pub lr_b: f64,
    pub seed: u64,
    /// The metric at the rung's step; `None`: diverged or failed (a NaN or ±inf counts as `None`).
    pub value: Option<f64>,
}

/// What [`decide`] did after one rung.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Cell ids that train on to the next rung, sorted.
    pub promoted: Vec<String>,
    /// Cell ids that stop here, sorted.
    pub pruned: Vec<String>,
    /// Kendall τ-b between the previous and this rung's values of the points finite at both;
    /// `None` at the first decision, with fewer than 2 common points, or when undefined.
    pub tau: Option<f64>,
    /// τ < `min_tau`: pruning stopped, every finite point promoted.
    pub stopped_pruning: bool,
    /// One line for the log, e.g. "rung 1/3: 36 points, kept 12 best + 6 for their η_A rows,
    /// pruned 18".
    pub reason: String,
}

/// A grid point at one rung: its cells (sorted by seed, cell) and its mean value.
struct Point<'a> {
    lr_a: f64,
    lr_b: f64,
    cells: Vec<&'a Entry>,
    /// The mean over its seeds; `None` when any seed has no finite value.
    value: Option<f64>,
}

/// (η_A, η_B) in ascending order; equal exactly when the bit patterns are.
fn cmp_rates(a: (f64, f64), b: (f64, f64)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1))
}

fn same_rates(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0.to_bits() == b.0.to_bits() && a.1.to_bits() == b.1.to_bits()
}

/// The entries grouped into points, in (η_A, η_B) order, whatever the order of `entries`.
fn points(entries: &[Entry]) -> Vec<Point<'_>> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| {
        cmp_rates((a.lr_a, a.lr_b), (b.lr_a, b.lr_b))
            .then(a.seed.cmp(&b.seed))
            .then(a.cell.cmp(&b.cell))
    });
    let mut out: Vec<Point> = Vec::new();
    for e in sorted {
        match out.last_mut() {
            Some(p) if same_rates((p.lr_a, p.lr_b), (e.lr_a, e.lr_b)) => p.cells.push(e),
            _ => out.push(Point {
                lr_a: e.lr_a,
                lr_b: e.lr_b,
                cells: vec![e],
                value: None,
            }),
        }
    }
    for p in &mut out {
        let vals: Option<Vec<f64>> = p
            .cells
            .iter()
            .map(|e| e.value.filter(|v| v.is_finite()))
            .collect();
        p.value = vals
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
            .filter(|m| m.is_finite());
    }
    out
}

/// The indices of the finite points of `pts`, best first; ties by (η_A, η_B) ascending.
fn ranked(pts: &[Point], higher_is_better: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..pts.len()).filter(|&i| pts[i].value.is_some()).collect();
    idx.sort_by(|&i, &j| {
        let (a, b) = (pts[i].value.unwrap_or(0.0), pts[j].value.unwrap_or(0.0));
        let by_value = if higher_is_better {
            b.total_cmp(&a)
        } else {
            a.total_cmp(&b)
        };
        by_value.then(cmp_rates(
            (pts[i].lr_a, pts[i].lr_b),
            (pts[j].lr_a, pts[j].lr_b),
        ))
    });
    idx
}

/// τ-b between the previous and the current values of the current points finite at both.
fn tau(current: &[Point], previous: &[Entry]) -> Option<f64> {
    let prev = points(previous);
    let pairs: Vec<(f64, f64)> = current
        .iter()
        .filter_map(|c| {
            let p = prev
                .binary_search_by(|p| cmp_rates((p.lr_a, p.lr_b), (c.lr_a, c.lr_b)))
                .ok()?;
            Some((prev[p].value?, c.value?))
        })
        .collect();
    kendall_tau_b(&pairs)
}

/// The promotion after rung `rung` (0-based, below `spec.rung_count() - 1`).
///
/// `current`: every cell that ran this rung; `previous`: the same cells' entries at the previous
/// rung (`None` at rung 0; points of `previous` not in `current` are ignored). With
/// `higher_is_better` false, lower values are better (eval_loss). The rules are the crate's
/// (see the [crate] docs): points by (η_A, η_B), diverged points never promoted, the best
/// `ceil(n / reduction)` finite points plus the best [`SearchSpec::per_row_at`] of every η_A
/// row, and no pruning at all when τ < `min_tau`. The result does not depend on the order of the entries.
pub fn decide(
    spec: &SearchSpec,
    rung: usize,
    current: &[Entry],
    previous: Option<&[Entry]>,
    higher_is_better: bool,
) -> Decision {
    let pts = points(current);
    let order = ranked(&pts, higher_is_better);
    let n = order.len();
    let diverged = pts.len() - n;
    let tau = previous.and_then(|p| tau(&pts, p));
    let stopped_pruning = tau.is_some_and(|t| t < spec.min_tau);
    let mut keep = vec![false; pts.len()];
    let (mut best, mut for_rows) = (0, 0);
    if stopped_pruning {
        order.iter().for_each(|&i| keep[i] = true);
        best = n;
    } else {
        let top = n.div_ceil(spec.reduction.max(1) as usize);
        for &i in &order[..top] {
            keep[i] = true;
            best += 1;
        }
        // Per η_A row, in ranked order: the first `per_row` points of each row.
        let per_row = spec.per_row_at(rung);
        let mut taken: Vec<(u64, usize)> = Vec::new();
        for &i in &order {
            let row = pts[i].lr_a.to_bits();
            let k = match taken.iter_mut().find(|(r, _)| *r == row) {
                Some((_, k)) => k,
                None => {
                    taken.push((row, 0));
                    &mut taken.last_mut().expect("just pushed").1
                }
            };
            if *k < per_row {
                *k += 1;
                if !keep[i] {
                    keep[i] = true;
                    for_rows += 1;
                }
            }
        }
    }
    let (mut promoted, mut pruned) = (BTreeSet::new(), BTreeSet::new());
    for (p, kept) in pts.iter().zip(&keep) {
        let to = if *kept { &mut promoted } else { &mut pruned };
        to.extend(p.cells.iter().map(|e| e.cell.clone()));
    }
    let pruned_points = pts.len() - best - for_rows;
    let reason = reason_line(
        spec,
        rung,
        (pts.len(), diverged),
        (best, for_rows, pruned_points),
        tau,
    );
    Decision {
        promoted: promoted.into_iter().collect(),
        pruned: pruned.into_iter().collect(),
        tau,
        stopped_pruning,
        reason,
    }
}

/// "rung 1/3: 36 points (2 diverged), kept 12 best + 6 for their η_A rows, pruned 18 (τ = 0.71)".
fn reason_line(
    spec: &SearchSpec,
    rung: usize,
    (points, diverged): (usize, usize),
    (best, for_rows, pruned): (usize, usize, usize),
    tau: Option<f64>,
) -> String {
    let head = format!("rung {}/{}: {points} points", rung + 1, spec.rung_count());
    let div = if diverged > 0 {
        format!(" ({diverged} diverged)")
    } else {
        String::new()
    };
    let tau_text = tau.map(|t| format!("τ = {t:.2}"));
    match tau_text {
        Some(t) if tau.is_some_and(|t| t < spec.min_tau) => format!(
            "{head}{div}, {t} < min_tau {}: pruning stopped, kept all {best} finite, pruned {pruned}",
            spec.min_tau
        ),
        _ => format!(
            "{head}{div}, kept {best} best + {for_rows} for their η_A rows, pruned {pruned}{}",
            tau_text.map(|t| format!(" ({t})")).unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cell: &str, lr_a: f64, lr_b: f64, seed: u64, value: Option<f64>) -> Entry {
        Entry {
            cell: cell.into(),
            lr_a,
            lr_b,
            seed,
            value,
        }
    }

    /// One seed per point: cell "a{i}b{j}" at η_A = i, η_B = j with the given value.
    fn grid(values: &[&[Option<f64>]]) -> Vec<Entry> {
        let mut out = Vec::new();
        for (i, row) in values.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                out.push(entry(&format!("a{i}b{j}"), i as f64, j as f64, 0, *v));
            }
        }
        out
    }

    fn spec(reduction: u32, keep_per_row: usize, min_tau: f64) -> SearchSpec {
        SearchSpec {
            reduction,
            keep_per_row,
            min_tau,
            ..SearchSpec::default()
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn keeps_the_best_third_overall_when_no_row_keep() {
        // 9 finite points, values 0..8 with the best (highest) at a2b2.
        let cur = grid(&[
            &[Some(0.0), Some(1.0), Some(2.0)],
            &[Some(3.0), Some(4.0), Some(5.0)],
            &[Some(6.0), Some(7.0), Some(8.0)],
        ]);
        let d = decide(&spec(3, 0, 0.5), 0, &cur, None, true);
        assert_eq!(d.promoted, ids(&["a2b0", "a2b1", "a2b2"]));
        assert_eq!(d.pruned.len(), 6);
        assert_eq!(d.tau, None);
        assert!(!d.stopped_pruning);
        assert_eq!(
            d.reason,
            "rung 1/3: 9 points, kept 3 best + 0 for their η_A rows, pruned 6"
        );
        // ceil: 10 points with reduction 3 keep 4.
        let ten = grid(&[&[Some(1.0); 5], &[Some(2.0); 5]]);
        let d = decide(&spec(3, 0, 0.5), 0, &ten, None, true);
        assert_eq!(d.promoted.len(), 4);
    }

    #[test]
    fn the_row_guarantee_falls_to_none_at_the_last_promotion() {
        let three = spec(3, 2, 0.5);
        assert_eq!((three.per_row_at(0), three.per_row_at(1)), (2, 0));
        let four = SearchSpec {
            rungs: Some(vec![1.0 / 27.0, 1.0 / 9.0, 1.0 / 3.0, 1.0]),
            ..spec(3, 2, 0.5)
        };
        let at: Vec<usize> = (0..3).map(|r| four.per_row_at(r)).collect();
        assert_eq!(at, [2, 1, 0]);
        // At the last promotion of three rungs only the overall best third goes on.
        let cur = grid(&[
            &[Some(0.0), Some(1.0), Some(2.0)],
            &[Some(3.0), Some(4.0), Some(5.0)],
            &[Some(6.0), Some(7.0), Some(8.0)],
        ]);
        let d = decide(&three, 1, &cur, None, true);
        assert_eq!(d.promoted, ids(&["a2b0", "a2b1", "a2b2"]));
    }

    #[test]
    fn every_row_keeps_its_best_points() {
        let cur = grid(&[
            &[Some(0.0), Some(1.0), Some(2.0)],
            &[Some(3.0), Some(4.0), Some(5.0)],
            &[Some(6.0), Some(7.0), Some(8.0)],
        ]);
        let d = decide(&spec(3, 2, 0.5), 0, &cur, None, true);
        // Top 3 (row 2) plus the best two of rows 0 and 1; row 2's two best are already in.
        assert_eq!(
            d.promoted,
            ids(&["a2b0", "a2b1", "a2b2", "a1b2", "a1b1", "a0b2", "a0b1"])
        );
        assert_eq!(d.pruned, ids(&["a0b0", "a1b0"]));
        assert_eq!(
            d.reason,
            "rung 1/3: 9 points, kept 3 best + 4 for their η_A rows, pruned 2"
        );
    }

    #[test]
    fn diverged_points_are_never_promoted_and_a_diverged_seed_sinks_its_point() {
        let mut cur = grid(&[&[None, Some(1.0)], &[Some(f64::NAN), Some(0.5)]]);
        // A second seed of a1b1 diverged: the whole point goes, both its cells.
        cur.push(entry("a1b1s1", 1.0, 1.0, 1, None));
        let d = decide(&spec(2, 5, 0.5), 0, &cur, None, true);
        assert_eq!(d.promoted, ids(&["a0b1"]));
        assert_eq!(d.pruned, ids(&["a0b0", "a1b0", "a1b1", "a1b1s1"]));
        assert_eq!(
            d.reason,
            "rung 1/3: 4 points (3 diverged), kept 1 best + 0 for their η_A rows, pruned 3"
        );
        // All diverged: nothing promoted.
        let d = decide(&spec(2, 5, 0.5), 0, &grid(&[&[None, None]]), None, true);
        assert!(d.promoted.is_empty());
        assert_eq!(d.pruned.len(), 2);
    }

    #[test]
    fn a_point_is_the_mean_of_its_seeds() {
        // (0, 0): seeds 0.9 and 0.1 → 0.5; (0, 1): 0.6 alone. Reduction 2 keeps 1 of 2.
        let cur = vec![
            entry("x0", 0.0, 0.0, 0, Some(0.9)),
            entry("x1", 0.0, 0.0, 1, Some(0.1)),
            entry("y0", 0.0, 1.0, 0, Some(0.6)),
        ];
        let d = decide(&spec(2, 0, 0.5), 0, &cur, None, true);
        assert_eq!(d.promoted, ids(&["y0"]));
        assert_eq!(d.pruned, ids(&["x0", "x1"]));
        // Lower is better: the mean 0.5 wins.
        let d = decide(&spec(2, 0, 0.5), 0, &cur, None, false);
        assert_eq!(d.promoted, ids(&["x0", "x1"]));
    }

    #[test]
    fn lower_is_better_keeps_the_smallest_values() {
        let cur = grid(&[
            &[Some(0.0), Some(1.0), Some(2.0)],
            &[Some(3.0), Some(4.0), Some(5.0)],
            &[Some(6.0), Some(7.0), Some(8.0)],
        ]);
        let d = decide(&spec(3, 1, 0.5), 0, &cur, None, false);
        // The 3 smallest are row 0; rows 1 and 2 keep their smallest (b0).
        assert_eq!(d.promoted, ids(&["a0b0", "a0b1", "a0b2", "a1b0", "a2b0"]));
    }

    #[test]
    fn value_ties_go_to_the_smaller_rates() {
        let cur = grid(&[&[Some(1.0), Some(1.0)], &[Some(1.0), Some(1.0)]]);
        let d = decide(&spec(4, 0, 0.5), 0, &cur, None, true);
        assert_eq!(d.promoted, ids(&["a0b0"]));
        let d = decide(&spec(4, 1, 0.5), 0, &cur, None, false);
        assert_eq!(d.promoted, ids(&["a0b0", "a1b0"]));
    }

    #[test]
    fn a_ranking_that_moved_stops_pruning() {
        let prev = grid(&[&[Some(0.0), Some(1.0), Some(2.0), Some(3.0)]]);
        // Reversed: τ = -1 < 0.5 → every finite point kept, the diverged one still pruned.
        let mut cur = grid(&[&[Some(3.0), Some(2.0), Some(1.0), Some(0.0)]]);
        cur.push(entry("a9b9", 9.0, 9.0, 0, None));
        let d = decide(&spec(3, 0, 0.5), 1, &cur, Some(&prev), true);
        assert_eq!(d.tau, Some(-1.0));
        assert!(d.stopped_pruning);
        assert_eq!(d.promoted, ids(&["a0b0", "a0b1", "a0b2", "a0b3"]));
        assert_eq!(d.pruned, ids(&["a9b9"]));
        assert_eq!(
            d.reason,
            "rung 2/3: 5 points (1 diverged), τ = -1.00 < min_tau 0.5: pruning stopped, kept all 4 finite, pruned 1"
        );
        // The same ranking: τ = 1, pruning goes on.
        let d = decide(&spec(3, 0, 0.5), 1, &prev, Some(&prev), true);
        assert_eq!(d.tau, Some(1.0));
        assert!(!d.stopped_pruning);
        assert_eq!(d.promoted, ids(&["a0b3", "a0b2"]));
        assert!(d.reason.ends_with("pruned 2 (τ = 1.00)"), "{}", d.reason);
        // min_tau -1 never stops.
        let d = decide(&spec(3, 0, -1.0), 1, &cur, Some(&prev), true);
        assert!(!d.stopped_pruning);
        // One common point: no τ.
        let one = grid(&[&[Some(1.0)]]);
        let d = decide(&spec(3, 0, 0.5), 1, &cur, Some(&one), true);
        assert_eq!(d.tau, None);
        assert!(!d.stopped_pruning);
    }

    #[test]
    fn tau_uses_only_points_finite_at_both_rungs_and_in_current() {
        // Previous has an extra point (pruned before) and one diverged there.
        let prev = vec![
            entry("p", 0.0, 0.0, 0, Some(1.0)),
            entry("q", 0.0, 1.0, 0, Some(2.0)),
            entry("r", 0.0, 2.0, 0, Some(3.0)),
            entry("gone", 5.0, 5.0, 0, Some(100.0)),
        ];
        let cur = vec![
            entry("p", 0.0, 0.0, 0, Some(10.0)),
            entry("q", 0.0, 1.0, 0, Some(20.0)),
            entry("r", 0.0, 2.0, 0, Some(30.0)),
            entry("s", 0.0, 3.0, 0, Some(-5.0)),
        ];
        let d = decide(&spec(2, 0, 0.5), 1, &cur, Some(&prev), true);
        assert_eq!(d.tau, Some(1.0));
    }

    #[test]
    fn the_decision_does_not_depend_on_the_input_order() {
        // A 5 × 4 grid with 2 seeds, ties, a diverged seed; previous with a different ranking.
        let mut cur = Vec::new();
        let mut prev = Vec::new();
        for i in 0..5u32 {
            for j in 0..4u32 {
                for seed in 0..2u64 {
                    let (a, b) = (1e-4 * f64::from(i + 1), 1e-3 * f64::from(j + 1));
                    let v = f64::from((i * 7 + j * 3) % 5) + seed as f64 * 0.25;
                    let cell = format!("c{i}{j}{seed}");
                    let value = (!(i == 3 && j == 1 && seed == 1)).then_some(v);
                    cur.push(entry(&cell, a, b, seed, value));
                    prev.push(entry(&cell, a, b, seed, Some(f64::from((i + j) % 3))));
                }
            }
        }
        let want = decide(&spec(3, 1, 0.2), 1, &cur, Some(&prev), true);
        assert!(!want.promoted.is_empty() && !want.pruned.is_empty());
        // Deterministic shuffles (an LCG), of both inputs.
        let mut s = 12345u64;
        for _ in 0..50 {
            for v in [&mut cur, &mut prev] {
                for k in (1..v.len()).rev() {
                    s = s
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    v.swap(k, (s >> 33) as usize % (k + 1));
                }
            }
            assert_eq!(decide(&spec(3, 1, 0.2), 1, &cur, Some(&prev), true), want);
        }
    }
}
