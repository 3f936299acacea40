//! The paper-style heatmap: metric over (η_A, η_B), both axes in log10 space.

use std::sync::OnceLock;

use image::codecs::png::PngEncoder;
use image::{ColorType, ImageEncoder};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};

use crate::aggregate::{Grid, Point};
use crate::{format, ReportError, ReportView};

/// Image size in pixels.
pub(crate) const WIDTH: u32 = 900;
pub(crate) const HEIGHT: u32 = 750;

// Plot area (pixels) and colour bar.
const PLOT_L: i32 = 106;
const PLOT_R: i32 = 768;
const PLOT_T: i32 = 124;
const PLOT_B: i32 = 676;
const CBAR_L: i32 = 796;
const CBAR_R: i32 = 818;

const FONT_FAMILY: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

const INK: RGBColor = RGBColor(25, 25, 25);
const SOFT_INK: RGBColor = RGBColor(70, 70, 70);
const NO_RESULT: RGBColor = RGBColor(208, 208, 208);
const BEST: RGBColor = RGBColor(220, 20, 30);
const BEST_DIAG: RGBColor = RGBColor(255, 140, 0);

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Registers the bundled font under "sans-serif" for plotters' ab_glyph path.
fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| register_font(FONT_FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

fn draw_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> ReportError {
    ReportError::Draw {
        source: Box::new(e),
    }
}

/// Renders the heatmap and returns the PNG file's bytes.
pub(crate) fn render(view: &ReportView<'_>) -> Result<Vec<u8>, ReportError> {
    ensure_font()?;
    let mut rgb = vec![255u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, view).map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&rgb, WIDTH, HEIGHT, ColorType::Rgb8)
        .map_err(|source| ReportError::Encode { source })?;
    Ok(png)
}

/// Vertical alignment relative to the glyphs' cap height (plotters aligns to
/// the font's line box, which leaves digits visibly off-centre).
#[derive(Clone, Copy)]
enum VAlign {
    Top,
    Middle,
}

struct Canvas<'a, DB: DrawingBackend> {
    root: &'a DrawingArea<DB, Shift>,
}

impl<DB: DrawingBackend> Canvas<'_, DB> {
    fn style(size: f64, color: RGBColor, h: HPos) -> TextStyle<'static> {
        TextStyle {
            font: (FONT_FAMILY, size).into_font(),
            color: color.to_backend_color(),
            pos: Pos::new(h, VPos::Top),
        }
    }

    /// With a top anchor, ab_glyph puts the baseline at 0.5·size below the
    /// anchor, and DejaVu's cap height is ≈ 0.63·size.
    fn y_offset(size: f64, v: VAlign) -> i32 {
        let dy = match v {
            VAlign::Top => 0.13 * size,
            VAlign::Middle => -0.19 * size,
        };
        dy.round() as i32
    }

    fn text(
        &self,
        s: &str,
        (x, y): (i32, i32),
        size: f64,
        color: RGBColor,
        h: HPos,
        v: VAlign,
    ) -> DrawResult<DB> {
        let style = Self::style(size, color, h);
        self.root
            .draw_text(s, &style, (x, y + Self::y_offset(size, v)))
    }

    /// Text reading bottom-to-top, centred on (x, y).
    fn vertical_text(
        &self,
        s: &str,
        (x, y): (i32, i32),
        size: f64,
        color: RGBColor,
    ) -> DrawResult<DB> {
        let style = Self::style(size, color, HPos::Center).transform(FontTransform::Rotate270);
        // Rotated, the line box's top maps to the left: shift by the same
        // cap-height correction as for horizontal centred text.
        self.root
            .draw_text(s, &style, (x + Self::y_offset(size, VAlign::Middle), y))
    }

    fn width(&self, s: &str, size: f64) -> Result<i32, DrawingAreaErrorKind<DB::ErrorType>> {
        let style = Self::style(size, INK, HPos::Left);
        let (w, _) = self.root.estimate_text_size(s, &style)?;
        Ok(w as i32)
    }

    /// The largest size in `sizes` (descending) at which `s` fits in `max_w`.
    fn fit(
        &self,
        s: &str,
        sizes: &[f64],
        max_w: i32,
    ) -> Result<Option<f64>, DrawingAreaErrorKind<DB::ErrorType>> {
        for &size in sizes {
            if self.width(s, size)? <= max_w {
                return Ok(Some(size));
            }
        }
        Ok(None)
    }

    /// Fills the rectangle with both corners inclusive (the bitmap backend's
    /// fill excludes the bottom-right edge).
    fn fill_rect(
        &self,
        (x0, y0): (i32, i32),
        (x1, y1): (i32, i32),
        color: RGBColor,
    ) -> DrawResult<DB> {
        self.root.draw(&Rectangle::new(
            [(x0, y0), (x1 + 1, y1 + 1)],
            color.filled(),
        ))
    }

    /// A border of `width` pixels drawn inside the rectangle.
    fn border(
        &self,
        (x0, y0): (i32, i32),
        (x1, y1): (i32, i32),
        width: i32,
        color: RGBColor,
    ) -> DrawResult<DB> {
        let w = width - 1;
        self.fill_rect((x0, y0), (x1, y0 + w), color)?;
        self.fill_rect((x0, y1 - w), (x1, y1), color)?;
        self.fill_rect((x0, y0), (x0 + w, y1), color)?;
        self.fill_rect((x1 - w, y0), (x1, y1), color)
    }

    fn line(&self, a: (i32, i32), b: (i32, i32), width: u32, color: RGBColor) -> DrawResult<DB> {
        self.root
            .draw(&PathElement::new(vec![a, b], color.stroke_width(width)))
    }

    /// A dashed line from `a` to `b`: `dash` pixels on, `gap` off.
    fn dashed(
        &self,
        a: (f64, f64),
        b: (f64, f64),
        dash: f64,
        gap: f64,
        width: u32,
        color: RGBColor,
    ) -> DrawResult<DB> {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1.0 {
            return Ok(());
        }
        let mut s = 0.0;
        while s < len {
            let e = (s + dash).min(len);
            let p = |t: f64| {
                (
                    (a.0 + dx * t / len).round() as i32,
                    (a.1 + dy * t / len).round() as i32,
                )
            };
            self.line(p(s), p(e), width, color)?;
            s += dash + gap;
        }
        Ok(())
    }
}

/// Maps log10 learning rates to pixels inside the plot area.
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
    /// Pixel rectangle (top-left, bottom-right) of a point's cell.
    fn cell(&self, grid: &Grid, p: &Point) -> ((i32, i32), (i32, i32)) {
        let (x0, x1) = grid.xs.log_bounds(p.ix);
        let (y0, y1) = grid.ys.log_bounds(p.iy);
        (
            (self.x(x0).round() as i32, self.y(y1).round() as i32),
            (self.x(x1).round() as i32, self.y(y0).round() as i32),
        )
    }
}

/// Normalises metrics to "goodness" in 0..=1 (1 = best) for the colormap.
struct ColorScale {
    lo: f64,
    hi: f64,
    higher_is_better: bool,
}

impl ColorScale {
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
    fn color(goodness: f64) -> RGBColor {
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

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    view: &ReportView<'_>,
) -> DrawResult<DB> {
    let c = Canvas { root };
    let input = view.input;
    let grid = view.grid;
    root.fill(&WHITE)?;

    // Title (shrunk to fit long sweep names).
    let title = format!("{}: {} over (η_A, η_B)", input.sweep, input.metric_name);
    let title_size = c
        .fit(
            &title,
            &[24.0, 22.0, 20.0, 18.0, 16.0, 14.0],
            WIDTH as i32 - 24,
        )?
        .unwrap_or(12.0);
    c.text(
        &title,
        (WIDTH as i32 / 2, 14),
        title_size,
        INK,
        HPos::Center,
        VAlign::Top,
    )?;

    // Caption: the best point, and the best on the diagonal.
    let metric = &input.metric_name;
    let mut caption = Vec::new();
    match view.best.map(|i| &grid.points[i]) {
        Some(b) => {
            caption.push(format!(
                "best: η_A = {}, η_B = {}  (λ = η_B/η_A = {})  →  {} = {} over {}",
                format::lr(b.lr_a),
                format::lr(b.lr_b),
                format::ratio(b.ratio()),
                metric,
                format::metric(b.mean.unwrap_or(f64::NAN)),
                plural(b.seeds, "seed"),
            ));
            match view.best_diag {
                Some(di) if Some(di) == view.best => {
                    caption.push("the best point lies on the diagonal η_B = η_A".to_string());
                }
                Some(di) => {
                    let d = &grid.points[di];
                    let dm = d.mean.unwrap_or(f64::NAN);
                    let bm = b.mean.unwrap_or(f64::NAN);
                    caption.push(format!(
                        "best with η_B = η_A: η = {}  →  {} = {}  ({} vs. best)",
                        format::lr(d.lr_a),
                        metric,
                        format::metric(dm),
                        format::signed_metric(dm - bm),
                    ));
                }
                None => caption.push("no finished point on the diagonal η_B = η_A".to_string()),
            }
        }
        None if input.cells.is_empty() => caption.push("this sweep has no cells yet".to_string()),
        None => caption.push(format!(
            "no cell has finished yet ({}/{} done)",
            grid.cells_done,
            input.cells.len()
        )),
    }
    for (k, line) in caption.iter().enumerate() {
        let size = c
            .fit(line, &[15.0, 14.0, 13.0, 12.0], WIDTH as i32 - 24)?
            .unwrap_or(11.0);
        c.text(
            line,
            (WIDTH as i32 / 2, 48 + 21 * k as i32),
            size,
            SOFT_INK,
            HPos::Center,
            VAlign::Top,
        )?;
    }

    if !grid.points.is_empty() {
        draw_legend(&c, view, 104)?;
    }

    // Plot frame.
    let Some((x_range, y_range)) = grid.xs.log_range().zip(grid.ys.log_range()) else {
        c.border((PLOT_L, PLOT_T), (PLOT_R, PLOT_B), 1, INK)?;
        return c.text(
            "no cells in this sweep",
            ((PLOT_L + PLOT_R) / 2, (PLOT_T + PLOT_B) / 2),
            18.0,
            SOFT_INK,
            HPos::Center,
            VAlign::Middle,
        );
    };
    let map = Mapping { x_range, y_range };
    let scale = grid.metric_range().map(|(lo, hi)| ColorScale {
        lo,
        hi,
        higher_is_better: input.higher_is_better,
    });

    // Cells: fills first, labels after the diagonal so that it never
    // crosses a number (each label sits on a patch of its cell's colour).
    let mut labels = Vec::new();
    for p in &grid.points {
        let ((x0, y0), (x1, y1)) = map.cell(grid, p);
        let (x0, y0, x1, y1) = (x0 + 1, y0 + 1, x1 - 1, y1 - 1);
        let (bg, label, label_color) = match (p.mean, &scale) {
            (Some(m), Some(s)) => {
                let bg = ColorScale::color(s.goodness(m));
                (bg, format::metric(m), text_color_on(bg))
            }
            _ => (NO_RESULT, p.status.to_string(), SOFT_INK),
        };
        c.fill_rect((x0, y0), (x1, y1), bg)?;
        let (w, h) = (x1 - x0, y1 - y0);
        let sizes: Vec<f64> = [16.0, 15.0, 14.0, 13.0, 12.0, 11.0, 10.0, 9.0]
            .into_iter()
            .filter(|s| s * 0.75 + 4.0 <= h as f64)
            .collect();
        if let Some(size) = c.fit(&label, &sizes, w - 8)? {
            labels.push((label, ((x0 + x1) / 2, (y0 + y1) / 2), size, bg, label_color));
        }
    }

    // The diagonal η_B = η_A, where it crosses the plotted range.
    let t0 = x_range.0.max(y_range.0);
    let t1 = x_range.1.min(y_range.1);
    if t0 < t1 {
        let a = (map.x(t0), map.y(t0));
        let b = (map.x(t1), map.y(t1));
        c.dashed(a, b, 11.0, 6.0, 4, WHITE)?;
        c.dashed(a, b, 11.0, 6.0, 2, INK)?;
    }

    for (label, (x, y), size, bg, color) in &labels {
        let half_w = c.width(label, *size)? / 2 + 4;
        let half_h = (0.32 * size).round() as i32 + 4;
        c.fill_rect((x - half_w, y - half_h), (x + half_w, y + half_h), *bg)?;
        c.text(label, (*x, *y), *size, *color, HPos::Center, VAlign::Middle)?;
    }

    // Best on the diagonal (if it is not the best), then the best on top.
    if let Some(i) = view.best_diag.filter(|&i| Some(i) != view.best) {
        let (a, b) = map.cell(grid, &grid.points[i]);
        c.border((a.0 + 1, a.1 + 1), (b.0 - 1, b.1 - 1), 3, BEST_DIAG)?;
    }
    if let Some(i) = view.best {
        let (a, b) = map.cell(grid, &grid.points[i]);
        c.border((a.0 + 1, a.1 + 1), (b.0 - 1, b.1 - 1), 4, BEST)?;
    }

    c.border((PLOT_L, PLOT_T), (PLOT_R, PLOT_B), 1, INK)?;
    draw_axes(&c, grid, &map)?;
    if let Some(s) = &scale {
        draw_color_bar(&c, s, input)?;
    }
    Ok(())
}

/// A single legend row centred at `y`.
fn draw_legend<DB: DrawingBackend>(
    c: &Canvas<'_, DB>,
    view: &ReportView<'_>,
    y: i32,
) -> DrawResult<DB> {
    #[derive(Clone, Copy)]
    enum Key {
        Dashed,
        Frame(RGBColor),
        Swatch(RGBColor),
    }
    let mut items = vec![(Key::Dashed, "η_B = η_A".to_string())];
    if view.best.is_some() {
        items.push((Key::Frame(BEST), "best".to_string()));
    }
    if view.best_diag.is_some() && view.best_diag != view.best {
        items.push((Key::Frame(BEST_DIAG), "best with η_B = η_A".to_string()));
    }
    let mut missing = Vec::new();
    for (status, meaning) in [
        ("div", "diverged"),
        ("fail", "failed"),
        ("run", "running"),
        ("…", "pending"),
        ("n/a", "no metric"),
    ] {
        if view
            .grid
            .points
            .iter()
            .any(|p| p.mean.is_none() && p.status == status)
        {
            missing.push(format!("{status} = {meaning}"));
        }
    }
    if !missing.is_empty() {
        items.push((
            Key::Swatch(NO_RESULT),
            format!("no result ({})", missing.join(", ")),
        ));
    }
    let size = 13.0;
    let key_w = 30;
    let (pad, sep) = (6, 22);
    let mut widths = Vec::new();
    for (_, label) in &items {
        widths.push(c.width(label, size)?);
    }
    let total: i32 =
        widths.iter().map(|w| key_w + pad + w).sum::<i32>() + sep * (items.len() as i32 - 1);
    let mut x = (WIDTH as i32 - total) / 2;
    for ((key, label), w) in items.iter().zip(widths) {
        match *key {
            Key::Dashed => {
                let (a, b) = ((x as f64, y as f64), ((x + key_w) as f64, y as f64));
                c.dashed(a, b, 11.0, 6.0, 2, INK)?;
            }
            Key::Frame(color) => c.border((x + 4, y - 8), (x + key_w - 4, y + 8), 3, color)?,
            Key::Swatch(color) => c.fill_rect((x + 4, y - 8), (x + key_w - 4, y + 8), color)?,
        }
        c.text(
            label,
            (x + key_w + pad, y),
            size,
            SOFT_INK,
            HPos::Left,
            VAlign::Middle,
        )?;
        x += key_w + pad + w + sep;
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

fn draw_axes<DB: DrawingBackend>(c: &Canvas<'_, DB>, grid: &Grid, map: &Mapping) -> DrawResult<DB> {
    let size = 14.0;

    // x: η_A, labels under the cell centres.
    let xs: Vec<f64> = grid.xs.log_values().iter().map(|&v| map.x(v)).collect();
    let x_labels = format::axis_labels(&grid.xs.values);
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

    // y: η_B, labels left of the cell centres (bottom to top).
    let ys: Vec<f64> = grid.ys.log_values().iter().map(|&v| map.y(v)).collect();
    let y_labels = format::axis_labels(&grid.ys.values);
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
    c.vertical_text(
        "η_B  (learning rate of B)",
        (22, (PLOT_T + PLOT_B) / 2),
        16.0,
        INK,
    )
}

fn draw_color_bar<DB: DrawingBackend>(
    c: &Canvas<'_, DB>,
    scale: &ColorScale,
    input: &crate::ReportInput,
) -> DrawResult<DB> {
    let h = (PLOT_B - PLOT_T) as f64;
    for y in PLOT_T..=PLOT_B {
        // A single distinct value gets a single colour (the one its cells have).
        let g = if scale.hi > scale.lo {
            (PLOT_B - y) as f64 / h
        } else {
            1.0
        };
        c.fill_rect((CBAR_L, y), (CBAR_R, y), ColorScale::color(g))?;
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
        let label = format::metric(scale.value_at(g));
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
        input.metric_name,
        if input.higher_is_better {
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
