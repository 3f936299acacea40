//! The paper-style heatmap: the metric over (η_A, η_B) — or over (η_A, λ) for η_A × λ grids —
//! both axes in log10 space, with the diagonal and constant-λ lines, the best and best λ = 1
//! points, ties with the best and every cell state drawn distinctly.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

use crate::aggregate::Axis;
use crate::canvas::{plural, Canvas, DrawResult, Figure, VAlign, INK, SOFT_INK};
use crate::format;
use crate::model::{PointStats, ReportModel};

/// Image size in pixels.
pub(crate) const WIDTH: u32 = 900;
pub(crate) const HEIGHT: u32 = 800;

// Plot area (pixels) and colour bar.
const PLOT_L: i32 = 106;
const PLOT_R: i32 = 768;
const PLOT_T: i32 = 176;
const PLOT_B: i32 = 726;
const CBAR_L: i32 = 796;
const CBAR_R: i32 = 818;

const BEST: RGBColor = RGBColor(220, 20, 30);
const BEST_L1: RGBColor = RGBColor(255, 140, 0);
const LAMBDA_LINE: RGBColor = RGBColor(200, 0, 160);
const TIE_FILL: RGBColor = RGBColor(255, 255, 255);

/// How a point without a metric is drawn: fill, label (long, short), text colour.
fn state_style(state: &str) -> (RGBColor, &'static str, &'static str, RGBColor) {
    match state {
        "diverged" => (RGBColor(105, 105, 105), "diverged", "div", WHITE),
        "failed" => (
            RGBColor(244, 185, 185),
            "failed",
            "fail",
            RGBColor(130, 0, 20),
        ),
        "running" => (RGBColor(250, 232, 160), "running", "run", SOFT_INK),
        "pending" => (RGBColor(236, 236, 236), "pending", "…", SOFT_INK),
        "pruned" => (
            RGBColor(214, 224, 240),
            "pruned (rung: metric there)",
            "prn",
            SOFT_INK,
        ),
        _ => (RGBColor(208, 208, 208), "no metric", "n/a", SOFT_INK),
    }
}

/// Which quantity the y axis shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeatmapAxis {
    /// η_B, the learning rate of B (the paper's view).
    EtaB,
    /// λ = η_B / η_A.
    Lambda,
}

/// A point's cell on the figure, in pixels (both corners inclusive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellBox {
    /// Index into [`ReportModel::points`].
    pub point: usize,
    pub top_left: (i32, i32),
    pub bottom_right: (i32, i32),
}

impl CellBox {
    pub fn centre(&self) -> (f64, f64) {
        (
            (self.top_left.0 + self.bottom_right.0) as f64 / 2.0,
            (self.top_left.1 + self.bottom_right.1) as f64 / 2.0,
        )
    }
    pub fn contains(&self, (x, y): (f64, f64)) -> bool {
        x >= self.top_left.0 as f64
            && x <= self.bottom_right.0 as f64
            && y >= self.top_left.1 as f64
            && y <= self.bottom_right.1 as f64
    }
}

/// A constant-λ line on the figure, in pixels (λ = 1 is the diagonal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineSegment {
    pub lambda: f64,
    pub from: (f64, f64),
    pub to: (f64, f64),
}

impl LineSegment {
    /// Distance in pixels from `p` to the segment.
    pub fn distance(&self, p: (f64, f64)) -> f64 {
        let (dx, dy) = (self.to.0 - self.from.0, self.to.1 - self.from.1);
        let len2 = dx * dx + dy * dy;
        let t = if len2 == 0.0 {
            0.0
        } else {
            (((p.0 - self.from.0) * dx + (p.1 - self.from.1) * dy) / len2).clamp(0.0, 1.0)
        };
        let (qx, qy) = (self.from.0 + t * dx, self.from.1 + t * dy);
        ((p.0 - qx).powi(2) + (p.1 - qy).powi(2)).sqrt()
    }
}

/// Where everything of a heatmap goes, computed from the data model alone: the renderer draws
/// from it, and tests check it.
#[derive(Debug, Clone)]
pub struct HeatmapLayout {
    pub width: u32,
    pub height: u32,
    pub plot_top_left: (i32, i32),
    pub plot_bottom_right: (i32, i32),
    /// One per point of the model, in the model's order.
    pub cells: Vec<CellBox>,
    /// The lines that cross the plotted range.
    pub lines: Vec<LineSegment>,
    /// Indices into `cells`.
    pub best: Option<usize>,
    pub best_lambda1: Option<usize>,
}

struct Mapping {
    x_range: (f64, f64),
    y_range: (f64, f64),
}

impl Mapping {
    fn x(&self, lx: f64) -> f64 {
        let (lo, hi) = self.x_range;
        PLOT_L as f64 + (lx - lo) / (hi - lo) * (PLOT_R - PLOT_L) as f64
    }
    fn y(&self, ly: f64) -> f64 {
        let (lo, hi) = self.y_range;
        PLOT_B as f64 - (ly - lo) / (hi - lo) * (PLOT_B - PLOT_T) as f64
    }
}

fn axes(model: &ReportModel, axis: HeatmapAxis) -> (Axis, Axis) {
    let x = Axis::from_values(model.eta_a.clone());
    let y = match axis {
        HeatmapAxis::EtaB => Axis::from_values(model.eta_b.clone()),
        HeatmapAxis::Lambda => Axis::from_values(model.lambdas.clone()),
    };
    (x, y)
}

fn y_index(p: &PointStats, axis: HeatmapAxis) -> usize {
    match axis {
        HeatmapAxis::EtaB => p.iy,
        HeatmapAxis::Lambda => p.il,
    }
}

/// The layout of the heatmap of `model` with `axis` on the y axis.
pub fn heatmap_layout(model: &ReportModel, axis: HeatmapAxis) -> HeatmapLayout {
    let (xs, ys) = axes(model, axis);
    let mut layout = HeatmapLayout {
        width: WIDTH,
        height: HEIGHT,
        plot_top_left: (PLOT_L, PLOT_T),
        plot_bottom_right: (PLOT_R, PLOT_B),
        cells: Vec::new(),
        lines: Vec::new(),
        best: model.best.as_ref().map(|b| b.index),
        best_lambda1: model.best_lambda1.as_ref().map(|b| b.index),
    };
    let (Some(x_range), Some(y_range)) = (xs.log_range(), ys.log_range()) else {
        return layout;
    };
    let map = Mapping { x_range, y_range };
    for (i, p) in model.points.iter().enumerate() {
        let (x0, x1) = xs.log_bounds(p.ix);
        let (y0, y1) = ys.log_bounds(y_index(p, axis));
        layout.cells.push(CellBox {
            point: i,
            top_left: (map.x(x0).round() as i32, map.y(y1).round() as i32),
            bottom_right: (map.x(x1).round() as i32, map.y(y0).round() as i32),
        });
    }
    for line in &model.lambda_lines {
        let c = line.lambda.log10();
        let seg = match axis {
            // log η_B = log η_A + log λ, where it crosses the plotted range.
            HeatmapAxis::EtaB => {
                let t0 = x_range.0.max(y_range.0 - c);
                let t1 = x_range.1.min(y_range.1 - c);
                (t0 < t1).then(|| ((map.x(t0), map.y(t0 + c)), (map.x(t1), map.y(t1 + c))))
            }
            HeatmapAxis::Lambda => (c > y_range.0 && c < y_range.1)
                .then(|| ((map.x(x_range.0), map.y(c)), (map.x(x_range.1), map.y(c)))),
        };
        if let Some((from, to)) = seg {
            layout.lines.push(LineSegment {
                lambda: line.lambda,
                from,
                to,
            });
        }
    }
    layout
}

/// Normalises metrics to "goodness" in 0..=1 (1 = best) for the colormap.
pub(crate) struct ColorScale {
    pub lo: f64,
    pub hi: f64,
    pub higher_is_better: bool,
    /// The floor is in effect (values past it are clamped).
    pub floored: bool,
}

impl ColorScale {
    /// The scale over the points' means, with the floor (a ceiling when lower is better) if
    /// it cuts into the range.
    pub fn new(model: &ReportModel, floor: Option<f64>) -> Option<ColorScale> {
        let mut it = model.points.iter().filter_map(|p| p.mean);
        let first = it.next()?;
        let (mut lo, mut hi) = it.fold((first, first), |(lo, hi), m| (lo.min(m), hi.max(m)));
        let mut floored = false;
        if let Some(f) = floor.filter(|f| f.is_finite()) {
            if model.higher_is_better && f > lo && f < hi {
                lo = f;
                floored = true;
            } else if !model.higher_is_better && f < hi && f > lo {
                hi = f;
                floored = true;
            }
        }
        Some(ColorScale {
            lo,
            hi,
            higher_is_better: model.higher_is_better,
            floored,
        })
    }
    fn goodness(&self, m: f64) -> f64 {
        let span = self.hi - self.lo;
        if span.is_nan() || span <= 0.0 {
            return 1.0;
        }
        let t = ((m - self.lo) / span).clamp(0.0, 1.0);
        if self.higher_is_better {
            t
        } else {
            1.0 - t
        }
    }
    fn value_at(&self, goodness: f64) -> f64 {
        let g = if self.higher_is_better {
            goodness
        } else {
            1.0 - goodness
        };
        self.lo + g * (self.hi - self.lo)
    }
    pub fn color(&self, m: f64) -> RGBColor {
        Self::color_at(self.goodness(m))
    }
    fn color_at(goodness: f64) -> RGBColor {
        let g = if goodness.is_finite() {
            goodness.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ViridisRGB::get_color(g)
    }
}

fn text_color_on(bg: RGBColor) -> RGBColor {
    let RGBColor(r, g, b) = bg;
    let luma = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64;
    if luma > 140.0 {
        RGBColor(0, 0, 0)
    } else {
        RGBColor(255, 255, 255)
    }
}

/// A heatmap figure.
pub(crate) struct Heatmap<'a> {
    pub model: &'a ReportModel,
    pub axis: HeatmapAxis,
    pub color_floor: Option<f64>,
    /// Replaces the title (compare reports).
    pub title: Option<String>,
}

impl Figure for Heatmap<'_> {
    fn size(&self) -> (u32, u32) {
        (WIDTH, HEIGHT)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        draw(root, self)
    }
}

fn ylabel(axis: HeatmapAxis) -> &'static str {
    match axis {
        HeatmapAxis::EtaB => "η_B  (learning rate of B)",
        HeatmapAxis::Lambda => "λ = η_B / η_A",
    }
}

fn captions(h: &Heatmap<'_>, scale: Option<&ColorScale>) -> Vec<String> {
    let m = h.model;
    let metric = &m.metric;
    let mut out = Vec::new();
    if let Some(b) = &m.best {
        out.push(format!(
            "best: η_A = {}, η_B = {}  (λ = {})  →  {} = {} over {}",
            format::lr(b.lr_a),
            format::lr(b.lr_b),
            format::ratio(b.lambda),
            metric,
            format::metric_pm(b.mean, b.std),
            plural(b.seeds, "seed"),
        ));
    }
    match (&m.best_lambda1, &m.best) {
        (Some(d), Some(b)) if d.index == b.index => {
            out.push("the best point has λ = 1 (η_B = η_A, standard LoRA)".to_string());
        }
        (Some(d), _) => out.push(format!(
            "best λ = 1 (standard LoRA): η = {}  →  {} = {}  ({} vs. best)",
            format::lr(d.lr_a),
            metric,
            format::metric_pm(d.mean, d.std),
            format::signed_metric(-m.gain_over_lambda1.unwrap_or(f64::NAN)),
        )),
        (None, _) => out.push("no finished λ = 1 (η_B = η_A) point".to_string()),
    }
    let mut notes = Vec::new();
    if m.max_seeds > 1 {
        notes.push("colour = mean over seeds, ± = std over seeds".to_string());
    }
    if let Some(s) = scale.filter(|s| s.floored) {
        let (cmp, v) = if m.higher_is_better {
            ("below", s.lo)
        } else {
            ("above", s.hi)
        };
        notes.push(format!(
            "colour floor: {metric} {cmp} {} gets the end colour",
            format::metric(v)
        ));
    }
    if m.cells_done() + m.cells_pruned() < m.cells_total {
        notes.push(format!(
            "{} of {} cells done",
            m.cells_done(),
            m.cells_total
        ));
    }
    if !notes.is_empty() {
        out.push(notes.join("  ·  "));
    }
    out
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, h: &Heatmap<'_>) -> DrawResult<DB> {
    let c = Canvas { root };
    let m = h.model;
    root.fill(&WHITE)?;
    let layout = heatmap_layout(m, h.axis);
    let scale = ColorScale::new(m, h.color_floor);
    let view = match h.axis {
        HeatmapAxis::EtaB => "(η_A, η_B)",
        HeatmapAxis::Lambda => "(η_A, λ)",
    };
    let title = h
        .title
        .clone()
        .unwrap_or_else(|| format!("{}: {} over {view}", m.sweep, m.metric));
    c.title(&title, WIDTH as i32 / 2, 12, WIDTH as i32 - 24)?;
    for (k, line) in captions(h, scale.as_ref()).iter().enumerate() {
        c.caption(
            line,
            WIDTH as i32 / 2,
            44 + 20 * k as i32,
            WIDTH as i32 - 24,
        )?;
    }
    draw_legend(&c, m, &layout, 118)?;
    draw_cells(&c, m, &layout, scale.as_ref())?;
    c.border((PLOT_L, PLOT_T), (PLOT_R, PLOT_B), 1, INK)?;
    draw_axes(&c, m, h.axis)?;
    if let Some(s) = &scale {
        draw_color_bar(&c, s, m)?;
    }
    Ok(())
}

fn draw_cells<DB: DrawingBackend>(
    c: &Canvas<'_, DB>,
    m: &ReportModel,
    layout: &HeatmapLayout,
    scale: Option<&ColorScale>,
) -> DrawResult<DB> {
    // Fills first, labels after the lines so that a line never crosses a number (each label
    // sits on a patch of its cell's colour).
    let mut labels = Vec::new();
    for cell in &layout.cells {
        let p = &m.points[cell.point];
        let ((x0, y0), (x1, y1)) = (cell.top_left, cell.bottom_right);
        let (x0, y0, x1, y1) = (x0 + 1, y0 + 1, x1 - 1, y1 - 1);
        let (w, hgt) = (x1 - x0, y1 - y0);
        let (bg, long, short, color) = match (p.mean, scale) {
            (Some(v), Some(s)) => {
                let bg = s.color(v);
                let label = format::metric(v);
                (bg, label.clone(), label, text_color_on(bg))
            }
            _ => {
                let (bg, long, short, color) = state_style(&p.state);
                match &p.pruned_at {
                    // A pruned point shows the rung it reached and its metric there.
                    Some(label) => {
                        let short = label.replacen("rung ", "r", 1);
                        (bg, label.clone(), short, color)
                    }
                    None => (bg, long.to_string(), short.to_string(), color),
                }
            }
        };
        c.fill_rect((x0, y0), (x1, y1), bg)?;
        if p.state == "diverged" {
            c.line((x0, y0), (x1, y1), 1, RGBColor(150, 150, 150))?;
            c.line((x0, y1), (x1, y0), 1, RGBColor(150, 150, 150))?;
        }
        let sizes: Vec<f64> = [16.0, 15.0, 14.0, 13.0, 12.0, 11.0, 10.0, 9.0]
            .into_iter()
            .filter(|s| s * 0.75 + 4.0 <= hgt as f64)
            .collect();
        let size = match c.fit(&long, &sizes, w - 8)? {
            Some(s) => Some((long, s)),
            None => c.fit(&short, &sizes, w - 8)?.map(|s| (short, s)),
        };
        let (cx, cy) = ((x0 + x1) / 2, (y0 + y1) / 2);
        if let Some((label, size)) = size {
            let std_line = p.std.map(|s| format!("± {}", format::metric(s)));
            match std_line {
                Some(sd) if hgt as f64 >= 2.0 * size + 10.0 => {
                    let dy = (0.55 * size).round() as i32;
                    labels.push((label, (cx, cy - dy), size, bg, color));
                    labels.push((sd, (cx, cy + dy), (size - 3.0).max(8.0), bg, color));
                }
                _ => labels.push((label, (cx, cy), size, bg, color)),
            }
        }
    }
    for seg in &layout.lines {
        let diagonal = (seg.lambda - 1.0).abs() < 1e-12;
        let (under, over, dash, gap) = if diagonal {
            (WHITE, INK, 11.0, 6.0)
        } else {
            (WHITE, LAMBDA_LINE, 5.0, 5.0)
        };
        c.dashed(seg.from, seg.to, dash, gap, 4, under)?;
        c.dashed(seg.from, seg.to, dash, gap, 2, over)?;
    }
    for (label, (x, y), size, bg, color) in &labels {
        let half_w = c.width(label, *size)? / 2 + 4;
        let half_h = (0.32 * size).round() as i32 + 4;
        c.fill_rect((x - half_w, y - half_h), (x + half_w, y + half_h), *bg)?;
        c.text(label, (*x, *y), *size, *color, HPos::Center, VAlign::Middle)?;
    }
    for seg in &layout.lines {
        draw_line_label(c, seg)?;
    }
    for cell in &layout.cells {
        if m.points[cell.point].tied_with_best {
            let (x0, y0) = (cell.top_left.0 + 3, cell.top_left.1 + 3);
            c.triangle([(x0, y0), (x0 + 14, y0), (x0, y0 + 14)], TIE_FILL, INK)?;
        }
    }
    // Best λ = 1 (if it is not the best), then the best on top.
    let frame = |i: usize, width: i32, color: RGBColor| {
        let b = layout.cells[i];
        c.border(
            (b.top_left.0 + 1, b.top_left.1 + 1),
            (b.bottom_right.0 - 1, b.bottom_right.1 - 1),
            width,
            color,
        )
    };
    if let Some(i) = layout.best_lambda1.filter(|&i| Some(i) != layout.best) {
        frame(i, 3, BEST_L1)?;
    }
    if let Some(i) = layout.best {
        frame(i, 4, BEST)?;
    }
    Ok(())
}

/// "λ = 8" where the line leaves the plot (its upper end), just inside it.
fn draw_line_label<DB: DrawingBackend>(c: &Canvas<'_, DB>, seg: &LineSegment) -> DrawResult<DB> {
    let diagonal = (seg.lambda - 1.0).abs() < 1e-12;
    let label = format!("λ = {}", format::ratio(seg.lambda));
    let size = 12.0;
    let w = c.width(&label, size)?;
    let (ex, ey) = seg.to;
    let x = (ex.round() as i32 - w / 2 - 6).clamp(PLOT_L + w / 2 + 4, PLOT_R - w / 2 - 4);
    let y = (ey.round() as i32 + 12).clamp(PLOT_T + 10, PLOT_B - 10);
    let color = if diagonal { INK } else { LAMBDA_LINE };
    c.fill_rect((x - w / 2 - 3, y - 8), (x + w / 2 + 3, y + 8), WHITE)?;
    c.text(&label, (x, y), size, color, HPos::Center, VAlign::Middle)
}

#[derive(Clone, Copy)]
enum Key {
    Dashed(RGBColor, f64, f64),
    Frame(RGBColor),
    Swatch(RGBColor),
    Triangle,
}

/// The legend, centred, wrapped into rows from `y` down.
fn draw_legend<DB: DrawingBackend>(
    c: &Canvas<'_, DB>,
    m: &ReportModel,
    layout: &HeatmapLayout,
    y: i32,
) -> DrawResult<DB> {
    let mut items = Vec::new();
    if layout.lines.iter().any(|l| (l.lambda - 1.0).abs() < 1e-12) {
        items.push((Key::Dashed(INK, 11.0, 6.0), "λ = 1 (η_B = η_A)".to_string()));
    }
    let others: Vec<String> = layout
        .lines
        .iter()
        .filter(|l| (l.lambda - 1.0).abs() >= 1e-12)
        .map(|l| format::ratio(l.lambda))
        .collect();
    if !others.is_empty() {
        items.push((
            Key::Dashed(LAMBDA_LINE, 5.0, 5.0),
            format!("λ = {}", others.join(", ")),
        ));
    }
    if m.best.is_some() {
        items.push((Key::Frame(BEST), "best".to_string()));
    }
    if m.best_lambda1.is_some() && m.best_lambda1 != m.best {
        items.push((Key::Frame(BEST_L1), "best λ = 1".to_string()));
    }
    if m.points.iter().any(|p| p.tied_with_best) {
        items.push((Key::Triangle, "tied with best (2 SE)".to_string()));
    }
    for state in ["running", "pending", "failed", "diverged", "pruned", "done"] {
        if m.points
            .iter()
            .any(|p| p.mean.is_none() && p.state == state)
        {
            let (bg, long, _, _) = state_style(state);
            items.push((Key::Swatch(bg), long.to_string()));
        }
    }
    let size = 13.0;
    let (key_w, pad, sep) = (30, 6, 20);
    let max_w = WIDTH as i32 - 24;
    let mut rows: Vec<Vec<(Key, String, i32)>> = vec![Vec::new()];
    let mut row_w = 0;
    for (key, label) in items {
        let w = key_w + pad + c.width(&label, size)?;
        if row_w > 0 && row_w + sep + w > max_w {
            rows.push(Vec::new());
            row_w = 0;
        }
        row_w += if row_w > 0 { sep + w } else { w };
        if let Some(r) = rows.last_mut() {
            r.push((key, label, w));
        }
    }
    for (k, row) in rows.iter().enumerate() {
        let y = y + 22 * k as i32;
        let total: i32 = row.iter().map(|r| r.2).sum::<i32>() + sep * (row.len() as i32 - 1);
        let mut x = (WIDTH as i32 - total) / 2;
        for (key, label, w) in row {
            match *key {
                Key::Dashed(color, dash, gap) => {
                    let (a, b) = ((x as f64, y as f64), ((x + key_w) as f64, y as f64));
                    c.dashed(a, b, dash, gap, 2, color)?;
                }
                Key::Frame(color) => c.border((x + 4, y - 8), (x + key_w - 4, y + 8), 3, color)?,
                Key::Swatch(color) => {
                    c.fill_rect((x + 4, y - 8), (x + key_w - 4, y + 8), color)?;
                    c.border((x + 4, y - 8), (x + key_w - 4, y + 8), 1, SOFT_INK)?;
                }
                Key::Triangle => {
                    c.fill_rect(
                        (x + 4, y - 8),
                        (x + key_w - 4, y + 8),
                        RGBColor(60, 60, 110),
                    )?;
                    c.triangle(
                        [(x + 6, y - 6), (x + 18, y - 6), (x + 6, y + 6)],
                        TIE_FILL,
                        INK,
                    )?;
                }
            }
            c.text(
                label,
                (x + key_w + pad, y),
                size,
                SOFT_INK,
                HPos::Left,
                VAlign::Middle,
            )?;
            x += w + sep;
        }
    }
    Ok(())
}

/// Which labels to print: greedily, in axis order, every label that keeps at
/// least `min_gap` pixels from the previous printed one. `spans` are the
/// labels' (start, end) along the axis, in increasing order.
fn thin(spans: &[(f64, f64)], min_gap: f64) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match picked.last() {
            Some(&j) if span.0 - spans[j].1 < min_gap => {}
            _ => picked.push(i),
        }
    }
    picked
}

fn draw_axes<DB: DrawingBackend>(
    c: &Canvas<'_, DB>,
    m: &ReportModel,
    axis: HeatmapAxis,
) -> DrawResult<DB> {
    let (xs_axis, ys_axis) = axes(m, axis);
    let (Some(x_range), Some(y_range)) = (xs_axis.log_range(), ys_axis.log_range()) else {
        return Ok(());
    };
    let map = Mapping { x_range, y_range };
    let size = 14.0;

    // x: η_A, labels under the cell centres.
    let xs: Vec<f64> = xs_axis.log_values().iter().map(|&v| map.x(v)).collect();
    let x_labels = format::axis_labels(&xs_axis.values);
    let mut spans = Vec::new();
    for (x, label) in xs.iter().zip(&x_labels) {
        let w = c.width(label, size)? as f64;
        spans.push((x - w / 2.0, x + w / 2.0));
    }
    for i in thin(&spans, 12.0) {
        c.text(
            &x_labels[i],
            (xs[i].round() as i32, PLOT_B + 10),
            size,
            INK,
            HPos::Center,
            VAlign::Top,
        )?;
    }
    for x in &xs {
        let x = x.round() as i32;
        c.line((x, PLOT_B), (x, PLOT_B + 5), 1, INK)?;
    }
    c.text(
        "η_A  (learning rate of A)",
        ((PLOT_L + PLOT_R) / 2, PLOT_B + 38),
        16.0,
        INK,
        HPos::Center,
        VAlign::Top,
    )?;

    // y: labels left of the cell centres (bottom to top).
    let ys: Vec<f64> = ys_axis.log_values().iter().map(|&v| map.y(v)).collect();
    let y_labels: Vec<String> = match axis {
        HeatmapAxis::EtaB => format::axis_labels(&ys_axis.values),
        HeatmapAxis::Lambda => ys_axis.values.iter().map(|&v| format::ratio(v)).collect(),
    };
    let half = size * 0.4;
    let spans: Vec<(f64, f64)> = ys.iter().map(|&y| (-y - half, -y + half)).collect();
    for i in thin(&spans, 6.0) {
        c.text(
            &y_labels[i],
            (PLOT_L - 9, ys[i].round() as i32),
            size,
            INK,
            HPos::Right,
            VAlign::Middle,
        )?;
    }
    for y in &ys {
        let y = y.round() as i32;
        c.line((PLOT_L - 5, y), (PLOT_L, y), 1, INK)?;
    }
    c.vertical_text(ylabel(axis), (22, (PLOT_T + PLOT_B) / 2), 16.0, INK)
}

fn draw_color_bar<DB: DrawingBackend>(
    c: &Canvas<'_, DB>,
    scale: &ColorScale,
    m: &ReportModel,
) -> DrawResult<DB> {
    let h = (PLOT_B - PLOT_T) as f64;
    for y in PLOT_T..=PLOT_B {
        // A single distinct value gets a single colour (the one its cells have).
        let g = if scale.hi > scale.lo {
            (PLOT_B - y) as f64 / h
        } else {
            1.0
        };
        c.fill_rect((CBAR_L, y), (CBAR_R, y), ColorScale::color_at(g))?;
    }
    c.border((CBAR_L, PLOT_T), (CBAR_R, PLOT_B), 1, INK)?;
    let ticks: &[f64] = if scale.hi > scale.lo {
        &[0.0, 0.25, 0.5, 0.75, 1.0]
    } else {
        &[1.0]
    };
    for &g in ticks {
        let y = (PLOT_B as f64 - g * h).round() as i32;
        c.line((CBAR_R, y), (CBAR_R + 4, y), 1, INK)?;
        let mut label = format::metric(scale.value_at(g));
        if scale.floored && g == 0.0 {
            label = format!("{}{label}", if m.higher_is_better { "≤" } else { "≥" });
        }
        c.text(
            &label,
            (CBAR_R + 7, y),
            13.0,
            INK,
            HPos::Left,
            VAlign::Middle,
        )?;
    }
    let title = format!(
        "{}  ({} is better)",
        m.metric,
        if m.higher_is_better {
            "higher"
        } else {
            "lower"
        }
    );
    c.vertical_text(
        &title,
        (WIDTH as i32 - 20, (PLOT_T + PLOT_B) / 2),
        15.0,
        INK,
    )
}
