//! The report's data model: everything the figures, the page and the exports show, computed
//! once from the cells (serialisable, so tests snapshot it and `etagrid best --json` prints it).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::aggregate::{same_value, Axis, Grid, Point};
use crate::{CellCurves, ReportError, ReportInput};

/// The constant-λ lines drawn on the heatmap besides the diagonal λ = 1.
pub const LAMBDA_LINES: [f64; 3] = [8.0, 16.0, 32.0];
/// How many of the best points the top-k λ distribution counts (the LoRA+ paper's Fig. 6).
pub const TOP_K: usize = 4;
/// Learning curves: the target is this fraction of the best final metric.
pub const TARGET_FRACTION: f64 = 0.95;
/// Ties: a point is tied with the best when the means differ by at most this many standard
/// errors of the difference.
pub const TIE_SE: f64 = 2.0;
/// The cell states, in the order they are listed.
pub const STATES: [&str; 5] = ["done", "running", "pending", "failed", "diverged"];

/// The GPU-seconds a cell used: its wall time, shared among the cells it was trained with.
/// (On the CPU, these are CPU-device seconds.)
pub fn gpu_seconds(wall_s: f64, pack_size: Option<i64>) -> f64 {
    wall_s / pack_size.filter(|&k| k > 0).unwrap_or(1) as f64
}

/// One (η_A, η_B) point aggregated over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct PointStats {
    pub lr_a: f64,
    pub lr_b: f64,
    /// λ = η_B / η_A.
    pub lambda: f64,
    /// Indices into [`ReportModel::eta_a`], [`ReportModel::eta_b`], [`ReportModel::lambdas`].
    pub ix: usize,
    pub iy: usize,
    pub il: usize,
    /// "done" when any seed has a metric, else the worst state of its cells
    /// (diverged > failed > running > pending).
    pub state: String,
    /// Mean over the seeds with a metric.
    pub mean: Option<f64>,
    /// Sample standard deviation over seeds (≥ 2 seeds).
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Standard error of the mean (see [`TieRule`]).
    pub se: Option<f64>,
    /// Seeds with a metric / cells at this point.
    pub seeds_done: usize,
    pub cells: usize,
    pub tied_with_best: bool,
    /// Successive halving: a pruned point's label, "rung R: METRIC" (its cells' earliest rung
    /// and their mean metric there). Absent from the JSON of a grid sweep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_at: Option<String>,
    pub gpu_seconds: f64,
    /// The cells (one per seed) at this point.
    pub cell_ids: Vec<String>,
}

/// A point named by its learning rates, with its metric.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PointRef {
    /// Index into [`ReportModel::points`].
    pub index: usize,
    pub lr_a: f64,
    pub lr_b: f64,
    pub lambda: f64,
    pub mean: f64,
    pub std: Option<f64>,
    pub seeds: usize,
}

/// How ties with the best were decided.
#[derive(Debug, Clone, Serialize)]
pub struct TieRule {
    /// "seeds" (standard error over seeds), "binomial" (one seed: sqrt(p(1−p)/n_eval)),
    /// "mixed", or "none" (no standard error available).
    pub kind: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LambdaRow {
    pub lambda: f64,
    /// The best point with this λ (max over η_A), if any has a metric.
    pub best: Option<PointRef>,
    /// Its seeds' spread.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub points: usize,
    pub points_done: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RidgeRow {
    pub lr_a: f64,
    /// The best point with this η_A (its λ is the ridge).
    pub best: Option<PointRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LambdaCount {
    pub lambda: f64,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopK {
    pub k: usize,
    /// Best first.
    pub points: Vec<PointRef>,
    /// Every λ of the sweep (ascending) with how many of the top-k points have it.
    pub lambdas: Vec<LambdaCount>,
}

/// One point's curves (mean over its seeds at the steps they share).
#[derive(Debug, Clone, Serialize)]
pub struct CurveSet {
    pub label: String,
    pub point: PointRef,
    pub train_loss: Vec<(i64, f64)>,
    /// The eval metric during training, ending with the final metric.
    pub eval_metric: Vec<(i64, f64)>,
    /// First step at which `eval_metric` reaches the target.
    pub steps_to_target: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Curves {
    pub target: f64,
    pub target_rule: String,
    pub best: CurveSet,
    /// The best λ = 1 point, when it is not the best point itself.
    pub lambda1: Option<CurveSet>,
    /// When the best point has λ = 1: the best λ > 1 point, the LoRA+ side of the speed-up.
    pub best_lambda_gt1: Option<CurveSet>,
    /// Steps the best λ = 1 point needs / steps the LoRA+ point (the best, or the best λ > 1
    /// when λ = 1 wins) needs to reach the target; below 1 when λ = 1 is faster.
    pub speed_up: Option<f64>,
    /// What the speed-up means, or why there is none.
    pub note: String,
}

/// A constant-λ line and the points it passes through.
#[derive(Debug, Clone, Serialize)]
pub struct LambdaLine {
    pub lambda: f64,
    /// Indices into [`ReportModel::points`].
    pub points: Vec<usize>,
}

/// The report's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ReportModel {
    pub sweep: String,
    pub metric: String,
    pub higher_is_better: bool,
    pub chance_level: Option<f64>,
    pub n_eval: Option<u64>,
    pub cells_total: usize,
    /// Cells per state; every state is listed.
    pub states: BTreeMap<String, usize>,
    pub eta_a: Vec<f64>,
    pub eta_b: Vec<f64>,
    pub lambdas: Vec<f64>,
    /// The points form an η_A × λ product with fewer λ than η_B values: the (η_A, λ) view
    /// is the denser one.
    pub lambda_grid: bool,
    /// Most seeds with a metric at any point.
    pub max_seeds: usize,
    /// Sorted by (η_A, η_B).
    pub points: Vec<PointStats>,
    pub best: Option<PointRef>,
    pub best_lambda1: Option<PointRef>,
    /// best − best λ = 1 (signed so that positive is better).
    pub gain_over_lambda1: Option<f64>,
    pub ties: TieRule,
    /// The diagonal (λ = 1) first, then [`LAMBDA_LINES`].
    pub lambda_lines: Vec<LambdaLine>,
    pub lambda_profile: Vec<LambdaRow>,
    pub ridge: Vec<RidgeRow>,
    pub top_k: TopK,
    pub curves: Option<Curves>,
    pub gpu_seconds_total: f64,
    /// What the report cannot show yet, one sentence each.
    pub missing: Vec<String>,
}

impl ReportModel {
    /// Builds the model. A sweep whose cells have no metric yet is an error: there is nothing
    /// to report.
    pub fn build(input: &ReportInput) -> Result<ReportModel, ReportError> {
        let grid = Grid::build(&input.cells)?;
        let mut states: BTreeMap<String, usize> =
            STATES.iter().map(|s| (s.to_string(), 0)).collect();
        for c in &input.cells {
            *states.entry(c.state.clone()).or_insert(0) += 1;
        }
        if grid.points.iter().all(|p| p.mean.is_none()) {
            return Err(ReportError::NothingFinished {
                sweep: input.sweep.clone(),
                cells: input.cells.len(),
                states: state_summary(&states),
            });
        }
        let lambdas = Axis::from_values(grid.points.iter().map(Point::ratio).collect());
        let accuracy_like = input.metric_name == "accuracy";
        let mut points: Vec<PointStats> = grid
            .points
            .iter()
            .map(|p| point_stats(p, input, &lambdas, accuracy_like))
            .collect();
        let better = |a: f64, b: f64| {
            if input.higher_is_better {
                a > b
            } else {
                a < b
            }
        };
        let best_of = |pts: &[PointStats], keep: &dyn Fn(&PointStats) -> bool| {
            let mut best: Option<usize> = None;
            for (i, p) in pts.iter().enumerate() {
                let (Some(m), true) = (p.mean, keep(p)) else {
                    continue;
                };
                if best
                    .and_then(|b| pts[b].mean)
                    .is_none_or(|bm| better(m, bm))
                {
                    best = Some(i);
                }
            }
            best
        };
        let best = best_of(&points, &|_| true);
        let best_l1 = best_of(&points, &|p| same_value(p.lambda, 1.0));
        if let Some(b) = best {
            mark_ties(&mut points, b);
        }
        let pref = |i: usize| point_ref(&points, i);
        let gain = match (best, best_l1) {
            (Some(b), Some(d)) => {
                let diff = points[b].mean.unwrap_or(f64::NAN) - points[d].mean.unwrap_or(f64::NAN);
                Some(if input.higher_is_better { diff } else { -diff })
            }
            _ => None,
        };
        let eta_a = grid.xs.values.clone();
        let n_product = eta_a.len() * lambdas.values.len();
        let lambda_grid = lambdas.values.len() < grid.ys.values.len()
            && n_product == points.len()
            && points.len() > 1;
        let lambda_lines = std::iter::once(1.0)
            .chain(LAMBDA_LINES)
            .map(|l| LambdaLine {
                lambda: l,
                points: (0..points.len())
                    .filter(|&i| same_value(points[i].lambda, l))
                    .collect(),
            })
            .collect();
        let lambda_profile = lambdas
            .values
            .iter()
            .enumerate()
            .map(|(il, &l)| {
                let b = best_of(&points, &|p| p.il == il);
                LambdaRow {
                    lambda: l,
                    best: b.map(pref),
                    min: b.and_then(|i| points[i].min),
                    max: b.and_then(|i| points[i].max),
                    points: points.iter().filter(|p| p.il == il).count(),
                    points_done: points
                        .iter()
                        .filter(|p| p.il == il && p.mean.is_some())
                        .count(),
                }
            })
            .collect();
        let ridge = eta_a
            .iter()
            .enumerate()
            .map(|(ix, &a)| RidgeRow {
                lr_a: a,
                best: best_of(&points, &|p| p.ix == ix).map(pref),
            })
            .collect();
        let top_k = top_k(&points, &lambdas.values, input.higher_is_better);
        let best_gt1 = best_of(&points, &|p| p.lambda > 1.0 && !same_value(p.lambda, 1.0));
        let curves = best.map(|b| curves(input, &grid, &points, b, best_l1, best_gt1));
        let gpu_seconds_total = points.iter().map(|p| p.gpu_seconds).sum();
        let max_seeds = points.iter().map(|p| p.seeds_done).max().unwrap_or(0);
        let ties = tie_rule(&points, input, accuracy_like);
        let mut model = ReportModel {
            sweep: input.sweep.clone(),
            metric: input.metric_name.clone(),
            higher_is_better: input.higher_is_better,
            chance_level: input.chance_level,
            n_eval: input.n_eval,
            cells_total: input.cells.len(),
            states,
            eta_a,
            eta_b: grid.ys.values.clone(),
            lambdas: lambdas.values.clone(),
            lambda_grid,
            max_seeds,
            best: best.map(pref),
            best_lambda1: best_l1.map(pref),
            gain_over_lambda1: gain,
            ties,
            lambda_lines,
            lambda_profile,
            ridge,
            top_k,
            curves,
            gpu_seconds_total,
            missing: Vec::new(),
            points,
        };
        model.missing = missing(&model);
        Ok(model)
    }

    pub fn point(&self, r: &PointRef) -> &PointStats {
        &self.points[r.index]
    }

    /// Done cells.
    pub fn cells_done(&self) -> usize {
        self.state_count("done")
    }

    /// Cells successive halving pruned (finished at a rung: no result, nothing left to run).
    pub fn cells_pruned(&self) -> usize {
        self.state_count("pruned")
    }

    /// Cells that may still end with a result: pending, running or failed (a rerun retries).
    pub fn cells_open(&self) -> usize {
        ["pending", "running", "failed"]
            .iter()
            .map(|s| self.state_count(s))
            .sum()
    }

    fn state_count(&self, state: &str) -> usize {
        self.states.get(state).copied().unwrap_or(0)
    }
}

fn point_stats(p: &Point, input: &ReportInput, lambdas: &Axis, acc_like: bool) -> PointStats {
    let cells: Vec<&crate::ReportCell> = p.cells.iter().map(|&i| &input.cells[i]).collect();
    let state = if p.mean.is_some() {
        "done"
    } else {
        match p.status {
            "div" => "diverged",
            "fail" => "failed",
            "run" => "running",
            "prn" => "pruned",
            "n/a" => "done",
            _ => "pending",
        }
    };
    let se = match (p.mean, p.std, input.n_eval) {
        (Some(_), Some(sd), _) => Some(sd / (p.seeds as f64).sqrt()),
        (Some(m), None, Some(n)) if acc_like && n > 0 && (0.0..=1.0).contains(&m) => {
            Some((m * (1.0 - m) / n as f64).sqrt())
        }
        _ => None,
    };
    PointStats {
        lr_a: p.lr_a,
        lr_b: p.lr_b,
        lambda: p.ratio(),
        ix: p.ix,
        iy: p.iy,
        il: lambdas.index_of(p.ratio()).unwrap_or(0),
        state: state.to_string(),
        mean: p.mean,
        std: p.std,
        min: p.min,
        max: p.max,
        se,
        seeds_done: p.seeds,
        cells: cells.len(),
        tied_with_best: false,
        pruned_at: pruned_label(&cells),
        gpu_seconds: cells
            .iter()
            .filter_map(|c| c.wall_s.map(|w| gpu_seconds(w, c.pack_size)))
            .sum(),
        cell_ids: cells.iter().map(|c| c.cell_id.clone()).collect(),
    }
}

/// "rung 1: 0.712" for a point whose cells were all pruned (their earliest rung, their mean
/// metric there); `None` otherwise.
fn pruned_label(cells: &[&crate::ReportCell]) -> Option<String> {
    let at: Vec<(u32, f64)> = cells.iter().map(|c| c.pruned_at).collect::<Option<_>>()?;
    let rung = at.iter().map(|a| a.0).min()?;
    let mean = at.iter().map(|a| a.1).sum::<f64>() / at.len() as f64;
    Some(format!("rung {rung}: {}", crate::format::metric(mean)))
}

fn point_ref(points: &[PointStats], i: usize) -> PointRef {
    let p = &points[i];
    PointRef {
        index: i,
        lr_a: p.lr_a,
        lr_b: p.lr_b,
        lambda: p.lambda,
        mean: p.mean.unwrap_or(f64::NAN),
        std: p.std,
        seeds: p.seeds_done,
    }
}

/// Marks the points within [`TIE_SE`] standard errors of the difference from the best.
fn mark_ties(points: &mut [PointStats], best: usize) {
    let (Some(bm), Some(bse)) = (points[best].mean, points[best].se) else {
        return;
    };
    for (i, p) in points.iter_mut().enumerate() {
        if i == best {
            continue;
        }
        if let (Some(m), Some(se)) = (p.mean, p.se) {
            let sd_diff = (bse * bse + se * se).sqrt();
            p.tied_with_best = (bm - m).abs() <= TIE_SE * sd_diff;
        }
    }
}

fn tie_rule(points: &[PointStats], input: &ReportInput, acc_like: bool) -> TieRule {
    let done: Vec<&PointStats> = points.iter().filter(|p| p.mean.is_some()).collect();
    let multi = done.iter().filter(|p| p.std.is_some()).count();
    let single_with_se = done
        .iter()
        .filter(|p| p.std.is_none() && p.se.is_some())
        .count();
    let binomial = match input.n_eval {
        Some(n) => format!("the eval set's binomial standard error sqrt(p(1−p)/{n})"),
        None => "the eval set's binomial standard error".to_string(),
    };
    let base = "tied with the best: |best − mean| ≤ 2·sqrt(SE_best² + SE²), with SE";
    let (kind, description) = if multi == done.len() {
        ("seeds", format!("{base} = std/sqrt(seeds) over the seeds"))
    } else if multi == 0 && single_with_se == done.len() {
        (
            "binomial",
            format!("{base} = {binomial} (one seed per point)"),
        )
    } else if multi + single_with_se == done.len() {
        (
            "mixed",
            format!("{base} = std/sqrt(seeds) where a point has several seeds, else {binomial}"),
        )
    } else {
        let why = if acc_like {
            "the eval-set size is unknown"
        } else {
            "the metric is not accuracy, so the binomial error does not apply"
        };
        (
            "none",
            format!("no ties marked: points with one seed have no standard error ({why})"),
        )
    };
    TieRule {
        kind: kind.to_string(),
        description,
    }
}

fn top_k(points: &[PointStats], lambdas: &[f64], higher_is_better: bool) -> TopK {
    let mut idx: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].mean.is_some())
        .collect();
    // Stable: ties keep (η_A, η_B) order.
    idx.sort_by(|&i, &j| {
        let (a, b) = (
            points[i].mean.unwrap_or(f64::NAN),
            points[j].mean.unwrap_or(f64::NAN),
        );
        if higher_is_better {
            b.total_cmp(&a)
        } else {
            a.total_cmp(&b)
        }
    });
    idx.truncate(TOP_K);
    let top: Vec<PointRef> = idx.iter().map(|&i| point_ref(points, i)).collect();
    let lambdas = lambdas
        .iter()
        .map(|&l| LambdaCount {
            lambda: l,
            count: top.iter().filter(|p| same_value(p.lambda, l)).count(),
        })
        .collect();
    TopK {
        k: TOP_K,
        points: top,
        lambdas,
    }
}

/// The mean of several (step, value) series at the steps all of them have.
fn mean_curve(series: &[&Vec<(i64, f64)>]) -> Vec<(i64, f64)> {
    let Some(first) = series.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter_map(|&(step, _)| {
            let vals: Vec<f64> = series
                .iter()
                .filter_map(|s| s.iter().find(|(st, _)| *st == step).map(|&(_, v)| v))
                .collect();
            (vals.len() == series.len())
                .then(|| (step, vals.iter().sum::<f64>() / vals.len() as f64))
        })
        .collect()
}

fn curve_set(
    label: &str,
    input: &ReportInput,
    grid: &Grid,
    points: &[PointStats],
    i: usize,
    reached: &dyn Fn(f64) -> bool,
) -> CurveSet {
    let done: Vec<&crate::ReportCell> = grid.points[i]
        .cells
        .iter()
        .map(|&c| &input.cells[c])
        .filter(|c| c.metric.is_some_and(f64::is_finite))
        .collect();
    let empty = CellCurves::default();
    let curves: Vec<&CellCurves> = done
        .iter()
        .map(|c| input.curves.get(&c.cell_id).unwrap_or(&empty))
        .collect();
    let train_loss = mean_curve(&curves.iter().map(|c| &c.train_loss).collect::<Vec<_>>());
    let mut eval_metric = mean_curve(&curves.iter().map(|c| &c.eval_metric).collect::<Vec<_>>());
    // The final metric at the last step, unless the curve already ends there.
    let last_step = done.iter().filter_map(|c| c.steps).max();
    if let (Some(step), Some(m)) = (last_step, points[i].mean) {
        if eval_metric.last().is_none_or(|&(s, _)| s < step) {
            eval_metric.push((step, m));
        }
    }
    let steps_to_target = eval_metric
        .iter()
        .find(|(_, v)| reached(*v))
        .map(|&(s, _)| s);
    CurveSet {
        label: label.to_string(),
        point: point_ref(points, i),
        train_loss,
        eval_metric,
        steps_to_target,
    }
}

fn curves(
    input: &ReportInput,
    grid: &Grid,
    points: &[PointStats],
    best: usize,
    best_l1: Option<usize>,
    best_gt1: Option<usize>,
) -> Curves {
    let bm = points[best].mean.unwrap_or(f64::NAN);
    let (target, target_rule) = if input.higher_is_better {
        (
            TARGET_FRACTION * bm,
            format!("{TARGET_FRACTION} × the best final {}", input.metric_name),
        )
    } else {
        (
            bm / TARGET_FRACTION,
            format!("the best final {} / {TARGET_FRACTION}", input.metric_name),
        )
    };
    let hib = input.higher_is_better;
    let reached = move |v: f64| if hib { v >= target } else { v <= target };
    let set = |label: &str, i: usize| curve_set(label, input, grid, points, i, &reached);
    let best_set = set("best", best);
    let l1 = best_l1.filter(|&d| d != best).map(|d| set("best λ = 1", d));
    // When λ = 1 wins, the LoRA+ side of the comparison is the best λ > 1 point.
    let l1_wins = best_l1 == Some(best);
    let gt1 = best_gt1.filter(|_| l1_wins).map(|g| set("best λ > 1", g));
    let (plus, one) = if l1_wins {
        (gt1.as_ref(), Some(&best_set))
    } else {
        (Some(&best_set), l1.as_ref())
    };
    let (speed_up, note) = speed_up(plus, one, &target_rule, l1_wins);
    Curves {
        target,
        target_rule,
        best: best_set,
        lambda1: l1,
        best_lambda_gt1: gt1,
        speed_up,
        note,
    }
}

/// Steps the λ = 1 point needs over the steps the LoRA+ point needs to reach the target.
fn speed_up(
    plus: Option<&CurveSet>,
    one: Option<&CurveSet>,
    target_rule: &str,
    l1_wins: bool,
) -> (Option<f64>, String) {
    let measured = |c: &CurveSet| c.eval_metric.len() >= 2;
    let who = if l1_wins {
        "the best λ > 1 point"
    } else {
        "the best point"
    };
    match (plus, one) {
        (_, None) => (
            None,
            "no λ = 1 point has finished: no speed-up to measure".to_string(),
        ),
        (None, Some(_)) => (
            None,
            "the best point has λ = 1 and no λ > 1 point has finished: no speed-up to measure"
                .to_string(),
        ),
        (Some(p), Some(o)) if !measured(p) || !measured(o) => (
            None,
            "not measured: the metric was only evaluated at the end of training \
             (set [train] eval_every to evaluate during training)"
                .to_string(),
        ),
        (Some(p), Some(o)) => {
            let prefix = if l1_wins {
                "the best point has λ = 1; "
            } else {
                ""
            };
            match (p.steps_to_target, o.steps_to_target) {
                (Some(sp), Some(so)) if sp > 0 => {
                    let x = so as f64 / sp as f64;
                    (
                        Some(x),
                        format!(
                            "{prefix}steps to reach {target_rule}: {sp} for {who}, {so} for the \
                             best λ = 1 point: {x:.2}× LoRA+ speed-up"
                        ),
                    )
                }
                (Some(sp), None) => (
                    None,
                    format!(
                        "{prefix}the best λ = 1 point never reaches {target_rule} ({who} does at \
                         step {sp})"
                    ),
                ),
                (None, Some(so)) => (
                    None,
                    format!(
                        "{prefix}{who} never reaches {target_rule} (the best λ = 1 point does at \
                         step {so})"
                    ),
                ),
                _ => (
                    None,
                    format!("{prefix}neither point's mean curve reaches {target_rule}"),
                ),
            }
        }
    }
}

/// "done 7 · pending 2" over the non-zero states.
pub(crate) fn state_summary(states: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = STATES
        .iter()
        .filter_map(|s| {
            states
                .get(*s)
                .filter(|&&n| n > 0)
                .map(|n| format!("{s} {n}"))
        })
        .collect();
    for (s, n) in states {
        if !STATES.contains(&s.as_str()) && *n > 0 {
            parts.push(format!("{s} {n}"));
        }
    }
    if parts.is_empty() {
        "no cells".to_string()
    } else {
        parts.join(" · ")
    }
}

fn missing(m: &ReportModel) -> Vec<String> {
    let mut out = Vec::new();
    let n = |s: &str| m.states.get(s).copied().unwrap_or(0);
    let unfinished = n("pending") + n("running");
    if unfinished > 0 {
        out.push(format!(
            "{unfinished} of {} cells have not finished ({} running, {} pending): their points \
             are missing from every figure and the best point may still change",
            m.cells_total,
            n("running"),
            n("pending")
        ));
    }
    if n("failed") > 0 {
        out.push(format!(
            "{} cells failed (`etagrid run --retry-failed` runs them again)",
            n("failed")
        ));
    }
    if n("diverged") > 0 {
        out.push(format!(
            "{} cells diverged (loss NaN or infinite): they have no metric",
            n("diverged")
        ));
    }
    if m.best_lambda1.is_none() {
        out.push("no λ = 1 (η_B = η_A) point has finished: no gain over standard LoRA".to_string());
    }
    if let Some(c) = &m.curves {
        if c.speed_up.is_none() && (c.lambda1.is_some() || c.best_lambda_gt1.is_some()) {
            out.push(format!("LoRA+ speed-up: {}", c.note));
        }
        if c.best.train_loss.is_empty() {
            out.push("no training-loss curve is stored for the best point".to_string());
        }
    }
    if m.ties.kind == "none" {
        out.push(m.ties.description.clone());
    }
    out
}
