//! Several sweeps side by side: one row of heatmaps (one colour scale per sweep) and one λ
//! profile over all of them, with an `index.html` (`etagrid report A B C --out DIR`).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::canvas::{self, Canvas, DrawResult, Figure, INK};
use crate::heatmap::{self, Heatmap, HeatmapAxis};
use crate::html::escape;
use crate::model::ReportModel;
use crate::plots::{font, lambda_chart, padded_range, SERIES};
use crate::{format, write_atomic, ReportError, ReportInput, INDEX_FILE};

/// What the figures say about their colour scales (also in the page).
pub const COLOR_SCALE_NOTE: &str =
    "colour scale: one per sweep (each heatmap's colour bar spans its own sweep's range)";

/// What [`write_compare`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CompareSummary {
    pub index: PathBuf,
    pub files: Vec<PathBuf>,
    pub sweeps: Vec<String>,
}

struct HeatmapRow<'a> {
    models: &'a [ReportModel],
}

const NOTE_H: u32 = 34;

impl Figure for HeatmapRow<'_> {
    fn size(&self) -> (u32, u32) {
        (
            heatmap::WIDTH * self.models.len() as u32,
            heatmap::HEIGHT + NOTE_H,
        )
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let (w, _) = self.size();
        let c = Canvas { root };
        c.caption(COLOR_SCALE_NOTE, w as i32 / 2, 10, w as i32 - 20)?;
        let (_, body) = root.split_vertically(NOTE_H);
        for (m, panel) in self
            .models
            .iter()
            .zip(body.split_evenly((1, self.models.len())))
        {
            let fig = Heatmap {
                model: m,
                axis: HeatmapAxis::EtaB,
                color_floor: None,
                title: Some(format!("{}: {}", m.sweep, m.metric)),
            };
            fig.draw(&panel)?;
        }
        Ok(())
    }
}

struct ProfileOverlay<'a> {
    models: &'a [ReportModel],
}

impl Figure for ProfileOverlay<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 600)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let mut lambdas: Vec<f64> = self.models.iter().flat_map(|m| m.lambdas.clone()).collect();
        lambdas.sort_by(f64::total_cmp);
        lambdas.dedup_by(|a, b| crate::aggregate::same_value(*a, *b));
        let (x0, x1) = padded_range(lambdas.iter().map(|l| l.log2()));
        let (y0, y1) = padded_range(self.models.iter().flat_map(|m| {
            m.lambda_profile
                .iter()
                .filter_map(|r| r.best.as_ref().map(|b| b.mean))
        }));
        // Headroom at the top for the legend, one row per sweep.
        let y1 = y1 + (y1 - y0) * 0.07 * (self.models.len() as f64 + 1.0);
        let mut metrics: Vec<&str> = self.models.iter().map(|m| m.metric.as_str()).collect();
        metrics.dedup();
        let area = root.margin(10, 10, 20, 20);
        let mut chart = lambda_chart(
            root,
            &area,
            ("λ profile: best over η_A for each λ, per sweep", 18.0),
            &metrics.join(" / "),
            (x0..x1, y0..y1),
            &lambdas,
        )?;
        for (k, m) in self.models.iter().enumerate() {
            let color = SERIES[k % SERIES.len()];
            let pts: Vec<(f64, f64)> = m
                .lambda_profile
                .iter()
                .filter_map(|r| r.best.as_ref().map(|b| (r.lambda.log2(), b.mean)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(format!("{} ({})", m.sweep, m.metric))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
            chart.draw_series(m.lambda_profile.iter().filter_map(|r| {
                let b = r.best.as_ref()?;
                let (lo, hi) = (r.min?, r.max?);
                (hi > lo).then(|| {
                    ErrorBar::new_vertical(
                        r.lambda.log2(),
                        lo,
                        b.mean,
                        hi,
                        color.stroke_width(1),
                        8,
                    )
                })
            }))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(INK)
            .label_font(font(13.0).pos(Pos::new(HPos::Left, VPos::Center)))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    }
}

/// Writes `heatmaps.png/.svg`, `lambda-profile.png/.svg` and `index.html` comparing the
/// sweeps into `out_dir`. Every sweep needs a finished cell.
pub fn write_compare(
    inputs: &[ReportInput],
    out_dir: &Path,
) -> Result<CompareSummary, ReportError> {
    if inputs.is_empty() {
        return Err(ReportError::NoSweeps);
    }
    let models = inputs
        .iter()
        .map(ReportModel::build)
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(out_dir).map_err(|source| ReportError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    canvas::ensure_font()?;
    let row = HeatmapRow { models: &models };
    let prof = ProfileOverlay { models: &models };
    let (a, b) = rayon::join(
        || Ok::<_, ReportError>((canvas::png(&row)?, canvas::svg(&row)?)),
        || Ok::<_, ReportError>((canvas::png(&prof)?, canvas::svg(&prof)?)),
    );
    let mut files = Vec::new();
    for (stem, (png, svg)) in [("heatmaps", a?), ("lambda-profile", b?)] {
        for (ext, bytes) in [("png", png), ("svg", svg.into_bytes())] {
            let path = out_dir.join(format!("{stem}.{ext}"));
            write_atomic(&path, &bytes)?;
            files.push(path);
        }
    }
    let index = out_dir.join(INDEX_FILE);
    write_atomic(&index, page(&models, out_dir).as_bytes())?;
    files.push(index.clone());
    Ok(CompareSummary {
        index,
        files,
        sweeps: models.iter().map(|m| m.sweep.clone()).collect(),
    })
}

fn page(models: &[ReportModel], out_dir: &Path) -> String {
    let names: Vec<String> = models.iter().map(|m| escape(&m.sweep)).collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>etagrid compare: {0}</title>\n<style>\
         body {{ font-family: \"DejaVu Sans\", Arial, sans-serif; margin: 2em auto; max-width: 1300px; padding: 0 1em; }}\
         table {{ border-collapse: collapse; }} th, td {{ padding: 0.3em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: right; }}\
         th {{ background: #f3f3f3; }} img {{ max-width: 100%; height: auto; border: 1px solid #ddd; }}\
         </style>\n</head>\n<body>\n<h1>Compare: {0}</h1>\n<p>{1}. The λ profile plots each \
         sweep's own metric on one axis.</p>\n",
        names.join(", "),
        COLOR_SCALE_NOTE
    );
    h.push_str(
        "<table><thead><tr><th>sweep</th><th>metric</th><th>cells done</th><th>best η<sub>A</sub></th>\
         <th>best η<sub>B</sub></th><th>λ</th><th>best</th><th>best λ = 1</th><th>gain</th>\
         <th>speed-up</th></tr></thead><tbody>\n",
    );
    for m in models {
        let own = out_dir
            .parent()
            .map(|p| p.join(&m.sweep).join(INDEX_FILE))
            .filter(|p| p.exists());
        let name = match own {
            Some(_) => format!("<a href=\"../{0}/index.html\">{0}</a>", escape(&m.sweep)),
            None => escape(&m.sweep),
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "–".to_string());
        let b = m.best.as_ref();
        let _ = writeln!(
            h,
            "<tr><td style=\"text-align:left\">{name}</td><td>{}</td><td>{} / {}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.metric),
            m.cells_done(),
            m.cells_total,
            opt(b.map(|b| format::lr(b.lr_a))),
            opt(b.map(|b| format::lr(b.lr_b))),
            opt(b.map(|b| format::ratio(b.lambda))),
            opt(b.map(|b| format::metric(b.mean))),
            opt(m.best_lambda1.as_ref().map(|b| format::metric(b.mean))),
            opt(m.gain_over_lambda1.map(format::signed_metric)),
            opt(m
                .curves
                .as_ref()
                .and_then(|c| c.speed_up)
                .map(|s| format!("{s:.2}×"))),
        );
    }
    h.push_str("</tbody></table>\n");
    h.push_str(
        "<figure><img src=\"heatmaps.png\" alt=\"heatmaps\"><figcaption>Heatmaps, one per sweep \
         (<a href=\"heatmaps.svg\">SVG</a>)</figcaption></figure>\n\
         <figure><img src=\"lambda-profile.png\" alt=\"lambda profile\"><figcaption>λ profiles \
         (<a href=\"lambda-profile.svg\">SVG</a>)</figcaption></figure>\n</body>\n</html>\n",
    );
    h
}
