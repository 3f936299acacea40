//! The line and bar figures: λ profile with the ridge, the top-k λ distribution and the
//! learning curves of the best and best λ = 1 points.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;

use crate::canvas::{Canvas, DrawResult, Figure, VAlign, FONT_FAMILY, INK, SOFT_INK};
use crate::format;
use crate::model::{CurveSet, ReportModel};

const BEST: RGBColor = RGBColor(220, 20, 30);
const BEST_L1: RGBColor = RGBColor(255, 140, 0);
const LINE: RGBColor = RGBColor(40, 90, 170);
pub(crate) const SERIES: [RGBColor; 6] = [
    RGBColor(40, 90, 170),
    RGBColor(220, 20, 30),
    RGBColor(30, 150, 70),
    RGBColor(150, 60, 170),
    RGBColor(255, 140, 0),
    RGBColor(90, 90, 90),
];

pub(crate) fn font(size: f64) -> TextStyle<'static> {
    (FONT_FAMILY, size).into_font().color(&INK)
}

/// (lo, hi) of `vals` padded by 8 % (a lone value gets ±0.05 of itself, or ±0.05).
pub(crate) fn padded_range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        0.08 * (hi - lo)
    } else {
        0.05 * lo.abs().max(1.0)
    };
    (lo - pad, hi + pad)
}

/// Tick labels under a chart's x axis at data positions `ticks`, on the root area.
pub(crate) fn x_ticks<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    pixel: impl Fn(f64) -> (i32, i32),
    ticks: &[(f64, String)],
) -> DrawResult<DB> {
    let c = Canvas { root };
    for (x, label) in ticks {
        let (px, py) = pixel(*x);
        c.line((px, py), (px, py + 5), 1, INK)?;
        c.text(label, (px, py + 9), 13.0, INK, HPos::Center, VAlign::Top)?;
    }
    Ok(())
}

/// A chart over (log2 λ, metric).
pub(crate) type LambdaChart<'a, DB> =
    ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart on `area` of a metric (`y_desc`, over `y`) against log2 λ (over `x`), with its mesh and
/// the labels of `lambdas` under the x axis (drawn on `root`).
pub(crate) fn lambda_chart<'a, DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    area: &'a DrawingArea<DB, Shift>,
    (caption, caption_size): (&str, f64),
    y_desc: &str,
    (x, y): (Range<f64>, Range<f64>),
    lambdas: &[f64],
) -> Result<LambdaChart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let y0 = y.start;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, font(caption_size))
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_labels(0)
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_desc("λ = η_B / η_A   (log scale)")
        .y_desc(y_desc)
        .label_style(font(13.0))
        .axis_desc_style(font(14.0))
        .draw()?;
    let ticks: Vec<(f64, String)> = lambdas
        .iter()
        .map(|&l| (l.log2(), format::ratio(l)))
        .collect();
    x_ticks(root, |x| chart.backend_coord(&(x, y0)), &ticks)?;
    Ok(chart)
}

/// λ profile (best metric per λ, max over η_A, with the seeds' spread) and the ridge (best λ
/// per η_A), side by side.
pub(crate) struct LambdaProfile<'a> {
    pub model: &'a ReportModel,
}

impl Figure for LambdaProfile<'_> {
    fn size(&self) -> (u32, u32) {
        (1200, 560)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let m = self.model;
        let c = Canvas { root };
        c.title(
            &format!("{}: λ profile and ridge ({})", m.sweep, m.metric),
            600,
            10,
            1170,
        )?;
        let (left, right) = root.split_horizontally(600);
        let left = left.margin(40, 10, 10, 20);
        let right = right.margin(40, 10, 20, 10);
        // Left: best metric per λ.
        let rows: Vec<_> = m
            .lambda_profile
            .iter()
            .filter_map(|r| r.best.as_ref().map(|b| (r, b)))
            .collect();
        let xs: Vec<f64> = m.lambdas.iter().map(|l| l.log2()).collect();
        let (x0, x1) = padded_range(xs.iter().copied());
        let (y0, y1) = padded_range(rows.iter().flat_map(|(r, b)| {
            [Some(b.mean), r.min, r.max, m.chance_level.filter(|_| false)]
                .into_iter()
                .flatten()
        }));
        let mut chart = lambda_chart(
            root,
            &left,
            ("best over η_A for each λ (bars: min–max over seeds)", 15.0),
            &format!("{} (best over η_A)", m.metric),
            (x0..x1, y0..y1),
            &m.lambdas,
        )?;
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .map(|(r, b)| (r.lambda.log2(), b.mean))
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), LINE.stroke_width(2)))?;
        chart.draw_series(rows.iter().filter_map(|(r, b)| {
            let (lo, hi) = (r.min?, r.max?);
            (hi > lo).then(|| {
                ErrorBar::new_vertical(r.lambda.log2(), lo, b.mean, hi, LINE.stroke_width(2), 10)
            })
        }))?;
        chart.draw_series(rows.iter().map(|(r, b)| {
            let best = m.best.as_ref().is_some_and(|x| x.index == b.index);
            let color = if best { BEST } else { LINE };
            Circle::new((r.lambda.log2(), b.mean), 6, color.filled())
        }))?;
        chart.draw_series(rows.iter().map(|(r, b)| {
            EmptyElement::at((r.lambda.log2(), b.mean))
                + Text::new(
                    format!("η_A = {}", format::lr(b.lr_a)),
                    (0, -10),
                    font(11.0)
                        .color(&SOFT_INK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
        }))?;
        // Right: the ridge, best λ for each η_A.
        let ridge: Vec<_> = m
            .ridge
            .iter()
            .filter_map(|r| r.best.as_ref().map(|b| (r.lr_a, b)))
            .collect();
        let (rx0, rx1) = padded_range(m.eta_a.iter().map(|a| a.log10()));
        let (ry0, ry1) = padded_range(m.lambdas.iter().map(|l| l.log2()));
        let mut chart = ChartBuilder::on(&right)
            .caption(
                format!("ridge: best λ for each η_A (labels: {})", m.metric),
                font(15.0),
            )
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(rx0..rx1, ry0..ry1)?;
        chart
            .configure_mesh()
            .x_labels(0)
            .y_labels(0)
            .disable_mesh()
            .x_desc("η_A   (log scale)")
            .y_desc("best λ   (log scale)")
            .label_style(font(13.0))
            .axis_desc_style(font(14.0))
            .draw()?;
        let xt: Vec<(f64, String)> = m
            .eta_a
            .iter()
            .zip(format::axis_labels(&m.eta_a))
            .map(|(a, l)| (a.log10(), l))
            .collect();
        x_ticks(root, |x| chart.backend_coord(&(x, ry0)), &xt)?;
        for &l in &m.lambdas {
            let (px, py) = chart.backend_coord(&(rx0, l.log2()));
            c.line((px - 5, py), (px, py), 1, INK)?;
            c.text(
                &format::ratio(l),
                (px - 8, py),
                13.0,
                INK,
                HPos::Right,
                VAlign::Middle,
            )?;
        }
        let pts: Vec<(f64, f64)> = ridge
            .iter()
            .map(|(a, b)| (a.log10(), b.lambda.log2()))
            .collect();
        chart.draw_series(LineSeries::new(pts, LINE.stroke_width(2)))?;
        chart.draw_series(
            ridge
                .iter()
                .map(|(a, b)| Circle::new((a.log10(), b.lambda.log2()), 6, LINE.filled())),
        )?;
        chart.draw_series(ridge.iter().map(|(a, b)| {
            EmptyElement::at((a.log10(), b.lambda.log2()))
                + Text::new(
                    format::metric(b.mean),
                    (0, -10),
                    font(12.0).pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
        }))?;
        Ok(())
    }
}

/// How often each λ is among the top-k points (the LoRA+ paper's Fig. 6).
pub(crate) struct TopKFigure<'a> {
    pub model: &'a ReportModel,
}

impl Figure for TopKFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (800, 520)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let m = self.model;
        let t = &m.top_k;
        let n = t.lambdas.len().max(1);
        let area = root.margin(10, 10, 20, 20);
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "{}: λ among the top {} of {} finished points (red: the best's λ)",
                    m.sweep,
                    t.points.len(),
                    m.points.iter().filter(|p| p.mean.is_some()).count()
                ),
                font(18.0),
            )
            .x_label_area_size(50)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.6..(n as f64 - 0.4), 0.0..(t.k as f64 + 0.5))?;
        chart
            .configure_mesh()
            .x_labels(0)
            .disable_x_mesh()
            .y_labels(t.k + 1)
            .light_line_style(WHITE)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("points in the top k")
            .x_desc("λ = η_B / η_A")
            .label_style(font(13.0))
            .axis_desc_style(font(14.0))
            .draw()?;
        let ticks: Vec<(f64, String)> = t
            .lambdas
            .iter()
            .enumerate()
            .map(|(i, l)| (i as f64, format::ratio(l.lambda)))
            .collect();
        x_ticks(root, |x| chart.backend_coord(&(x, 0.0)), &ticks)?;
        chart.draw_series(t.lambdas.iter().enumerate().map(|(i, l)| {
            let best = m
                .best
                .as_ref()
                .is_some_and(|b| crate::aggregate::same_value(b.lambda, l.lambda));
            let color = if best { BEST } else { LINE };
            Rectangle::new(
                [(i as f64 - 0.3, 0.0), (i as f64 + 0.3, l.count as f64)],
                color.filled(),
            )
        }))?;
        chart.draw_series(
            t.lambdas
                .iter()
                .enumerate()
                .filter(|(_, l)| l.count > 0)
                .map(|(i, l)| {
                    EmptyElement::at((i as f64, l.count as f64))
                        + Text::new(
                            l.count.to_string(),
                            (0, -4),
                            font(14.0).pos(Pos::new(HPos::Center, VPos::Bottom)),
                        )
                }),
        )?;
        Ok(())
    }
}

/// Train loss and eval metric against step for the best and best λ = 1 points.
pub(crate) struct CurvesFigure<'a> {
    pub model: &'a ReportModel,
}

impl Figure for CurvesFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1200, 580)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let m = self.model;
        let Some(cv) = &m.curves else {
            return Ok(());
        };
        let c = Canvas { root };
        c.title(&format!("{}: learning curves", m.sweep), 600, 10, 1170)?;
        c.caption(&cv.note, 600, 40, 1170)?;
        let sets: Vec<(&CurveSet, RGBColor)> = std::iter::once((&cv.best, BEST))
            .chain(cv.lambda1.as_ref().map(|l| (l, BEST_L1)))
            .chain(cv.best_lambda_gt1.as_ref().map(|l| (l, LINE)))
            .collect();
        let label = |s: &CurveSet| {
            format!(
                "{} (η_A={}, λ={})",
                s.label,
                format::lr(s.point.lr_a),
                format::ratio(s.point.lambda)
            )
        };
        let (left, right) = root.split_horizontally(600);
        let left = left.margin(64, 10, 10, 20);
        let right = right.margin(64, 10, 20, 10);
        let max_step = sets
            .iter()
            .flat_map(|(s, _)| s.train_loss.iter().chain(&s.eval_metric).map(|p| p.0))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        for (k, area) in [left, right].iter().enumerate() {
            let get = |s: &CurveSet| -> Vec<(f64, f64)> {
                let v = if k == 0 {
                    &s.train_loss
                } else {
                    &s.eval_metric
                };
                v.iter().map(|&(st, y)| (st as f64, y)).collect()
            };
            let mut ys: Vec<f64> = sets.iter().flat_map(|(s, _)| get(s)).map(|p| p.1).collect();
            if k == 1 {
                ys.push(cv.target);
            }
            let (y0, y1) = padded_range(ys.into_iter());
            let (title, ydesc) = if k == 0 {
                ("train loss".to_string(), "train loss".to_string())
            } else {
                (
                    format!("eval {} (dashed: target = {})", m.metric, cv.target_rule),
                    m.metric.clone(),
                )
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, font(15.0))
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..max_step * 1.02, y0..y1)?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc(ydesc)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .light_line_style(WHITE)
                .label_style(font(13.0))
                .axis_desc_style(font(14.0))
                .draw()?;
            if k == 1 {
                let (a, b) = (
                    chart.backend_coord(&(0.0, cv.target)),
                    chart.backend_coord(&(max_step * 1.02, cv.target)),
                );
                c.dashed(
                    (a.0 as f64, a.1 as f64),
                    (b.0 as f64, b.1 as f64),
                    8.0,
                    5.0,
                    1,
                    SOFT_INK,
                )?;
            }
            for (s, color) in &sets {
                let pts = get(s);
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                    .label(label(s))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
                if let (1, Some(st)) = (k, s.steps_to_target) {
                    let (a, b) = (
                        chart.backend_coord(&(st as f64, y0)),
                        chart.backend_coord(&(st as f64, cv.target)),
                    );
                    c.line(a, b, 1, *color)?;
                }
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(SOFT_INK)
                .label_font(font(12.0))
                .position(if k == 0 {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .draw()?;
        }
        Ok(())
    }
}
