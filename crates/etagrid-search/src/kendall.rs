//! Kendall's τ-b in O(n log n) (Knight 1966, as scipy's `kendalltau`).

use std::cmp::Ordering;

/// Kendall's τ-b of the pairs `(x, y)`, ties handled:
/// `(concordant − discordant) / sqrt((n0 − ties_x) · (n0 − ties_y))` with `n0 = n(n−1)/2`.
/// `None` with fewer than 2 pairs, when either side is all ties (τ-b undefined), or when a
/// value is not finite.
pub fn kendall_tau_b(pairs: &[(f64, f64)]) -> Option<f64> {
    let n = pairs.len();
    if n < 2 || pairs.iter().any(|(x, y)| !x.is_finite() || !y.is_finite()) {
        return None;
    }
    let mut p = pairs.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let pairs_in = |len: u64| len * len.saturating_sub(1) / 2;
    // Ties in x, and joint ties in (x, y), over runs of the sorted pairs.
    let ties_x = runs(&p, |a, b| a.0 == b.0).map(pairs_in).sum::<u64>();
    let ties_xy = runs(&p, |a, b| a == b).map(pairs_in).sum::<u64>();
    // Sorting by y (stably, within x order) counts the discordant pairs as swaps.
    let mut ys: Vec<f64> = p.iter().map(|q| q.1).collect();
    let mut buf = ys.clone();
    let swaps = merge_count(&mut ys, &mut buf);
    let ties_y = runs(&ys, |a, b| a == b).map(pairs_in).sum::<u64>();
    let n0 = pairs_in(n as u64);
    let denom = ((n0 - ties_x) as f64 * (n0 - ties_y) as f64).sqrt();
    if denom == 0.0 {
        return None;
    }
    // concordant − discordant = n0 − ties_x − ties_y + ties_xy − 2·discordant.
    let num = n0 as f64 - ties_x as f64 - ties_y as f64 + ties_xy as f64 - 2.0 * swaps as f64;
    Some((num / denom).clamp(-1.0, 1.0))
}

/// The lengths of the runs of equal neighbours of `v`.
fn runs<T>(v: &[T], eq: impl Fn(&T, &T) -> bool) -> impl Iterator<Item = u64> + '_ {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i + 1;
        while j < v.len() && eq(&v[j - 1], &v[j]) {
            j += 1;
        }
        out.push((j - i) as u64);
        i = j;
    }
    out.into_iter()
}

/// Sorts `v` ascending (stable merge sort) and returns the number of inversions: pairs
/// `i < j` with `v[i] > v[j]` strictly.
fn merge_count(v: &mut [f64], buf: &mut [f64]) -> u64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let mut count = {
        let (l, r) = v.split_at_mut(mid);
        let (bl, br) = buf.split_at_mut(mid);
        merge_count(l, bl) + merge_count(r, br)
    };
    let (mut i, mut j, mut k) = (0, mid, 0);
    while i < mid && j < n {
        if v[j].total_cmp(&v[i]) == Ordering::Less {
            buf[k] = v[j];
            count += (mid - i) as u64;
            j += 1;
        } else {
            buf[k] = v[i];
            i += 1;
        }
        k += 1;
    }
    buf[k..k + mid - i].copy_from_slice(&v[i..mid]);
    k += mid - i;
    buf[k..k + n - j].copy_from_slice(&v[j..n]);
    v.copy_from_slice(&buf[..n]);
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// τ-b by its definition, over every pair.
    fn naive(p: &[(f64, f64)]) -> Option<f64> {
        let (mut c, mut d, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
        for i in 0..p.len() {
            for j in i + 1..p.len() {
                let dx = p[i].0.total_cmp(&p[j].0) as i64;
                let dy = p[i].1.total_cmp(&p[j].1) as i64;
                match (dx, dy) {
                    (0, 0) => {}
                    (0, _) => tx += 1,
                    (_, 0) => ty += 1,
                    _ if dx == dy => c += 1,
                    _ => d += 1,
                }
            }
        }
        let denom = (((c + d + tx) * (c + d + ty)) as f64).sqrt();
        (p.len() >= 2 && denom > 0.0).then(|| (c - d) as f64 / denom)
    }

    #[test]
    fn matches_the_definition_with_and_without_ties() {
        // A small deterministic generator: values on a coarse lattice so that ties are common.
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % m) as f64
        };
        for n in 0..40 {
            for lattice in [3, 7, 1000] {
                let p: Vec<(f64, f64)> = (0..n).map(|_| (next(lattice), next(lattice))).collect();
                let (fast, slow) = (kendall_tau_b(&p), naive(&p));
                match (fast, slow) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{p:?}: {a} vs {b}"),
                    (a, b) => assert_eq!(a, b, "{p:?}"),
                }
            }
        }
    }

    #[test]
    fn known_values() {
        let same = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0)];
        assert_eq!(kendall_tau_b(&same), Some(1.0));
        let reversed = [(1.0, 30.0), (2.0, 20.0), (3.0, 10.0)];
        assert_eq!(kendall_tau_b(&reversed), Some(-1.0));
        // One swap of four: 5 concordant, 1 discordant → 4/6.
        let one_swap = [(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 4.0)];
        assert!((kendall_tau_b(&one_swap).expect("tau") - 4.0 / 6.0).abs() < 1e-12);
        // Pairs of x = [1, 2, 2, 3], y = [1, 3, 2, 3]: 4 concordant, 0 discordant, one tied
        // in x only, one in y only → 4 / sqrt(5 · 5).
        let ties = [(1.0, 1.0), (2.0, 3.0), (2.0, 2.0), (3.0, 3.0)];
        assert!((kendall_tau_b(&ties).expect("tau") - 0.8).abs() < 1e-12);
        assert_eq!(kendall_tau_b(&[(1.0, 2.0)]), None);
        assert_eq!(kendall_tau_b(&[(1.0, 2.0), (1.0, 3.0)]), None, "x all tied");
        assert_eq!(kendall_tau_b(&[(1.0, f64::NAN), (2.0, 3.0)]), None);
    }
}
