//! Grouping cells into (η_A, η_B) points and picking the best ones.

use crate::{ReportCell, ReportError};

/// Relative tolerance under which two learning rates count as the same value
/// (η_B = λ·η_A computed two ways rarely agrees to the last bit).
pub(crate) const REL_TOL: f64 = 1e-9;

pub(crate) fn same_value(a: f64, b: f64) -> bool {
    (a - b).abs() <= REL_TOL * a.abs().max(b.abs())
}

/// The sorted distinct values of one axis (linear learning rates).
#[derive(Debug, Clone)]
pub(crate) struct Axis {
    pub values: Vec<f64>,
}

impl Axis {
    pub(crate) fn from_values(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        values.dedup_by(|later, earlier| same_value(*later, *earlier));
        Axis { values }
    }

    pub(crate) fn index_of(&self, v: f64) -> Option<usize> {
        self.values.iter().position(|&x| same_value(x, v))
    }

    pub fn log_values(&self) -> Vec<f64> {
        self.values.iter().map(|v| v.log10()).collect()
    }

    /// The extent (in log10 space) of the band around value `i`: halfway to
    /// the neighbouring values; edges mirror the inner half-gap, and a lone
    /// value gets one decade.
    pub fn log_bounds(&self, i: usize) -> (f64, f64) {
        let logs = self.log_values();
        let n = logs.len();
        if n == 1 {
            return (logs[0] - 0.5, logs[0] + 0.5);
        }
        let lo = if i == 0 {
            logs[0] - (logs[1] - logs[0]) / 2.0
        } else {
            (logs[i - 1] + logs[i]) / 2.0
        };
        let hi = if i + 1 == n {
            logs[n - 1] + (logs[n - 1] - logs[n - 2]) / 2.0
        } else {
            (logs[i] + logs[i + 1]) / 2.0
        };
        (lo, hi)
    }

    /// The full extent of the axis in log10 space.
    pub fn log_range(&self) -> Option<(f64, f64)> {
        if self.values.is_empty() {
            return None;
        }
        Some((
            self.log_bounds(0).0,
            self.log_bounds(self.values.len() - 1).1,
        ))
    }
}

/// One (η_A, η_B) point, aggregated over its seeds.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    pub lr_a: f64,
    pub lr_b: f64,
    pub ix: usize,
    pub iy: usize,
    /// Mean over the seeds with a (finite) metric.
    pub mean: Option<f64>,
    /// Sample standard deviation (n − 1) over those seeds; `None` with fewer than 2.
    pub std: Option<f64>,
    /// Lowest and highest seed's metric.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// How many seeds have a metric.
    pub seeds: usize,
    /// Indices (into the input cells) of all cells at this point.
    pub cells: Vec<usize>,
    /// Short label for a point without a metric ("div", "fail", "run", "…").
    pub status: &'static str,
}

impl Point {
    pub fn ratio(&self) -> f64 {
        self.lr_b / self.lr_a
    }
}

/// The cells grouped by point, with the distinct values of both axes.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    pub xs: Axis,
    pub ys: Axis,
    /// Sorted by (η_A, η_B).
    pub points: Vec<Point>,
}

/// The metric of a cell if it is usable for aggregation.
pub(crate) fn usable_metric(cell: &ReportCell) -> Option<f64> {
    cell.metric.filter(|m| m.is_finite())
}

impl Grid {
    pub fn build(cells: &[ReportCell]) -> Result<Grid, ReportError> {
        for c in cells {
            let ok = |v: f64| v.is_finite() && v > 0.0;
            if !ok(c.lr_a) || !ok(c.lr_b) {
                return Err(ReportError::InvalidLearningRate {
                    cell_id: c.cell_id.clone(),
                    lr_a: c.lr_a,
                    lr_b: c.lr_b,
                });
            }
        }
        let xs = Axis::from_values(cells.iter().map(|c| c.lr_a).collect());
        let ys = Axis::from_values(cells.iter().map(|c| c.lr_b).collect());

        let mut points: Vec<Point> = Vec::new();
        for (i, c) in cells.iter().enumerate() {
            // Both lookups succeed: every value went into the axes above.
            let (Some(ix), Some(iy)) = (xs.index_of(c.lr_a), ys.index_of(c.lr_b)) else {
                continue;
            };
            match points.iter_mut().find(|p| p.ix == ix && p.iy == iy) {
                Some(p) => p.cells.push(i),
                None => points.push(Point {
                    lr_a: xs.values[ix],
                    lr_b: ys.values[iy],
                    ix,
                    iy,
                    mean: None,
                    std: None,
                    min: None,
                    max: None,
                    seeds: 0,
                    cells: vec![i],
                    status: "…",
                }),
            }
        }
        for p in &mut points {
            let metrics: Vec<f64> = p
                .cells
                .iter()
                .filter_map(|&i| usable_metric(&cells[i]))
                .collect();
            p.seeds = metrics.len();
            if !metrics.is_empty() {
                let n = metrics.len() as f64;
                let mean = metrics.iter().sum::<f64>() / n;
                p.mean = Some(mean);
                if metrics.len() > 1 {
                    let ss: f64 = metrics.iter().map(|m| (m - mean) * (m - mean)).sum();
                    p.std = Some((ss / (n - 1.0)).sqrt());
                }
                p.min = metrics.iter().copied().reduce(f64::min);
                p.max = metrics.iter().copied().reduce(f64::max);
            }
            let has = |state: &str| p.cells.iter().any(|&i| cells[i].state == state);
            p.status = if has("diverged") {
                "div"
            } else if has("failed") {
                "fail"
            } else if has("running") {
                "run"
            } else if has("pruned") {
                "prn"
            } else if has("done") {
                "n/a"
            } else {
                "…"
            };
        }
        points.sort_by_key(|p| (p.ix, p.iy));
        Ok(Grid { xs, ys, points })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(lr_a: f64, lr_b: f64, seed: u64, state: &str, metric: Option<f64>) -> ReportCell {
        ReportCell {
            cell_id: format!("{lr_a:e}-{lr_b:e}-{seed}"),
            lr_a,
            lr_b,
            seed,
            state: state.to_string(),
            metric,
            ..Default::default()
        }
    }

    fn grid(cells: &[ReportCell]) -> Grid {
        match Grid::build(cells) {
            Ok(g) => g,
            Err(e) => panic!("grid should build: {e}"),
        }
    }

    #[test]
    fn mean_is_taken_over_the_seeds_that_have_a_metric() {
        let g = grid(&[
            cell(1e-4, 1e-3, 0, "done", Some(0.70)),
            cell(1e-4, 1e-3, 1, "done", Some(0.80)),
            cell(1e-4, 1e-3, 2, "failed", None),
            cell(1e-4, 1e-3, 3, "done", Some(f64::NAN)),
        ]);
        assert_eq!(g.points.len(), 1);
        let p = &g.points[0];
        assert_eq!(p.cells.len(), 4);
        assert_eq!(p.seeds, 2);
        assert!((p.mean.unwrap_or(f64::NAN) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn lambda_times_eta_a_computed_two_ways_lands_on_one_y_value() {
        // 1e-4 * 4 and 2e-4 * 2 differ in the last bits.
        let g = grid(&[
            cell(1e-4, 1e-4 * 4.0, 0, "done", Some(0.5)),
            cell(2e-4, 2e-4 * 2.0, 0, "done", Some(0.6)),
            cell(2e-4, 2e-4 * 1.0, 0, "done", Some(0.4)),
        ]);
        assert_eq!(g.ys.values.len(), 2);
        assert_eq!(g.points.len(), 3);
        assert_eq!(g.points[0].iy, g.points[2].iy);
    }

    #[test]
    fn points_without_a_metric_get_a_status_label_by_worst_state() {
        let g = grid(&[
            cell(1e-4, 1e-4, 0, "diverged", None),
            cell(1e-4, 1e-4, 1, "failed", None),
            cell(1e-4, 1e-3, 0, "failed", None),
            cell(1e-4, 1e-3, 1, "pending", None),
            cell(1e-3, 1e-3, 0, "pending", None),
            cell(1e-3, 1e-4, 0, "running", None),
        ]);
        let status = |a: f64, b: f64| {
            g.points
                .iter()
                .find(|p| same_value(p.lr_a, a) && same_value(p.lr_b, b))
                .map(|p| p.status)
        };
        assert_eq!(status(1e-4, 1e-4), Some("div"));
        assert_eq!(status(1e-4, 1e-3), Some("fail"));
        assert_eq!(status(1e-3, 1e-3), Some("…"));
        assert_eq!(status(1e-3, 1e-4), Some("run"));
    }

    #[test]
    fn bands_reach_halfway_to_neighbours_and_mirror_at_the_edges() {
        let axis = Axis::from_values(vec![1e-4, 1e-3, 1e-1]);
        let close =
            |(a, b): (f64, f64), (c, d): (f64, f64)| (a - c).abs() < 1e-12 && (b - d).abs() < 1e-12;
        assert!(close(axis.log_bounds(0), (-4.5, -3.5)));
        assert!(close(axis.log_bounds(1), (-3.5, -2.0)));
        assert!(close(axis.log_bounds(2), (-2.0, 0.0)));
        let lone = Axis::from_values(vec![1e-3]);
        assert!(close(lone.log_bounds(0), (-3.5, -2.5)));
    }

    #[test]
    fn nonpositive_learning_rates_are_rejected() {
        let err = Grid::build(&[cell(0.0, 1e-3, 0, "done", Some(0.5))]);
        assert!(matches!(err, Err(ReportError::InvalidLearningRate { .. })));
    }
}
