//! Drawing helpers shared by the figures: the bundled font, text placement, rectangles and
//! dashed lines on any plotters backend, and PNG/SVG output of a [`Figure`].

use std::sync::OnceLock;

use image::codecs::png::PngEncoder;
use image::{ColorType, ImageEncoder};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};

use crate::ReportError;

pub(crate) const FONT_FAMILY: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

pub(crate) const INK: RGBColor = RGBColor(25, 25, 25);
pub(crate) const SOFT_INK: RGBColor = RGBColor(70, 70, 70);

pub(crate) type DrawResult<DB> =
    Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A figure that can be drawn on any backend.
pub(crate) trait Figure: Sync {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// Registers the bundled font under "sans-serif" for plotters' ab_glyph path.
pub(crate) fn ensure_font() -> Result<(), ReportError> {
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

/// The figure as a PNG file's bytes.
pub(crate) fn png(fig: &impl Figure) -> Result<Vec<u8>, ReportError> {
    ensure_font()?;
    let (w, h) = fig.size();
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(&rgb, w, h, ColorType::Rgb8)
        .map_err(|source| ReportError::Encode { source })?;
    Ok(out)
}

/// The figure as an SVG document.
pub(crate) fn svg(fig: &impl Figure) -> Result<String, ReportError> {
    ensure_font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, fig.size()).into_drawing_area();
        fig.draw(&root).map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(out)
}

/// Vertical alignment relative to the glyphs' cap height (plotters aligns to
/// the font's line box, which leaves digits visibly off-centre).
#[derive(Clone, Copy)]
pub(crate) enum VAlign {
    Top,
    Middle,
}

pub(crate) struct Canvas<'a, DB: DrawingBackend> {
    pub root: &'a DrawingArea<DB, Shift>,
}

impl<DB: DrawingBackend> Canvas<'_, DB> {
    pub fn style(size: f64, color: RGBColor, h: HPos) -> TextStyle<'static> {
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

    pub fn text(
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
    pub fn vertical_text(
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

    pub fn width(&self, s: &str, size: f64) -> Result<i32, DrawingAreaErrorKind<DB::ErrorType>> {
        let style = Self::style(size, INK, HPos::Left);
        let (w, _) = self.root.estimate_text_size(s, &style)?;
        Ok(w as i32)
    }

    /// The largest size in `sizes` (descending) at which `s` fits in `max_w`.
    pub fn fit(
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
    pub fn fill_rect(
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
    pub fn border(
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

    pub fn line(
        &self,
        a: (i32, i32),
        b: (i32, i32),
        width: u32,
        color: RGBColor,
    ) -> DrawResult<DB> {
        self.root
            .draw(&PathElement::new(vec![a, b], color.stroke_width(width)))
    }

    /// A dashed line from `a` to `b`: `dash` pixels on, `gap` off.
    #[allow(clippy::too_many_arguments)]
    pub fn dashed(
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

    /// A filled triangle.
    pub fn triangle(&self, pts: [(i32, i32); 3], fill: RGBColor, edge: RGBColor) -> DrawResult<DB> {
        self.root.draw(&Polygon::new(pts.to_vec(), fill.filled()))?;
        let mut path = pts.to_vec();
        path.push(pts[0]);
        self.root
            .draw(&PathElement::new(path, edge.stroke_width(1)))
    }

    /// A title centred at the top, shrunk to fit `max_w`.
    pub fn title(&self, s: &str, x: i32, y: i32, max_w: i32) -> DrawResult<DB> {
        let size = self
            .fit(s, &[24.0, 22.0, 20.0, 18.0, 16.0, 14.0], max_w)?
            .unwrap_or(12.0);
        self.text(s, (x, y), size, INK, HPos::Center, VAlign::Top)
    }

    /// A caption line centred at `y`, shrunk to fit `max_w`.
    pub fn caption(&self, s: &str, x: i32, y: i32, max_w: i32) -> DrawResult<DB> {
        let size = self
            .fit(s, &[15.0, 14.0, 13.0, 12.0], max_w)?
            .unwrap_or(11.0);
        self.text(s, (x, y), size, SOFT_INK, HPos::Center, VAlign::Top)
    }
}

pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}
