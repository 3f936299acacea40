//! The self-contained `index.html`: inline CSS and a tiny inline script (sorting the cell
//! table), figures referenced relatively; it opens from disk without a network.

use std::cmp::Ordering;
use std::fmt::Write;

use crate::aggregate::usable_metric;
use crate::model::{PointRef, ReportModel, STATES};
use crate::{
    format, FigureKind, HeatmapAxis, ReportCell, ReportInput, CELLS_CSV, CELLS_JSON, MODEL_JSON,
};

/// Escapes text for use in HTML element content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

const STYLE: &str = r#"
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 2em auto; max-width: 1250px; color: #1a1a1a; padding: 0 1em; }
h1 { margin-bottom: 0.1em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; }
.kv th { text-align: left; padding: 0.25em 1.2em 0.25em 0; color: #444; font-weight: 600; vertical-align: top; }
.kv td { padding: 0.25em 0; }
.warn { background: #fff4ce; border: 1px solid #e0c060; padding: 0.6em 0.9em; border-radius: 4px; }
.warn ul { margin: 0.3em 0 0 0; }
figure { margin: 1.5em 0; }
figcaption { color: #444; font-size: 0.9em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.cells, .small { font-size: 0.9em; }
.cells th, .cells td, .small th, .small td { padding: 0.3em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
.cells th, .small th { background: #f3f3f3; position: sticky; top: 0; }
.cells th { cursor: pointer; user-select: none; }
.cells th:hover { background: #e6e6e6; }
.cells td.id, .cells td.state, .cells td.device { text-align: left; font-family: "DejaVu Sans Mono", monospace; }
.cells tr.best td { background: #fde7e7; }
.cells tr.tied td { background: #eef3fb; }
.state-failed td.state, .state-diverged td.state { color: #b00020; font-weight: 600; }
.state-running td.state { color: #8a6d00; }
.state-pending td.state { color: #777; }
pre { background: #f6f6f6; border: 1px solid #e0e0e0; padding: 1em; overflow-x: auto; }
"#;

/// Sorts the cells table by the clicked column (numbers by `data-v`, empty last).
const SCRIPT: &str = r#"
document.querySelectorAll("table.sortable th").forEach(function (th, i) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var dir = th.dataset.dir === "asc" ? -1 : 1;
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    var key = function (row) {
      var c = row.cells[i];
      var v = c.dataset.v !== undefined ? c.dataset.v : c.textContent;
      var n = parseFloat(v);
      return isNaN(n) ? v : n;
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (typeof x === "number" && typeof y === "number") return dir * (x - y);
      if (typeof x === "number") return -1;
      if (typeof y === "number") return 1;
      return dir * String(x).localeCompare(String(y));
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"#;

fn describe(p: &PointRef, metric: &str) -> String {
    format!(
        "η<sub>A</sub> = {}, η<sub>B</sub> = {} (λ = {}): {} = <b>{}</b> over {} seed{}",
        format::lr(p.lr_a),
        format::lr(p.lr_b),
        format::ratio(p.lambda),
        metric,
        format::metric_pm(p.mean, p.std),
        p.seeds,
        if p.seeds == 1 { "" } else { "s" }
    )
}

/// What each figure shows, for its caption.
fn figure_caption(kind: FigureKind, m: &ReportModel) -> String {
    match kind {
        FigureKind::Heatmap(HeatmapAxis::EtaB) => format!(
            "{} over (η<sub>A</sub>, η<sub>B</sub>), mean over seeds; dashed: λ = 1 (η<sub>B</sub> = \
             η<sub>A</sub>) and λ = 8, 16, 32; red frame: best; orange frame: best λ = 1; white \
             corner triangle: tied with the best.",
            escape(&m.metric)
        ),
        FigureKind::Heatmap(HeatmapAxis::Lambda) => {
            "The same grid over (η<sub>A</sub>, λ = η<sub>B</sub>/η<sub>A</sub>).".to_string()
        }
        FigureKind::LambdaProfile => "Left: the best metric for each λ (max over η<sub>A</sub>; \
             bars: min–max over that point's seeds). Right: the ridge, the best λ for each \
             η<sub>A</sub>."
            .to_string(),
        FigureKind::TopK => format!(
            "How often each λ appears among the top {} points (the LoRA+ paper's Fig. 6).",
            m.top_k.k
        ),
        FigureKind::Curves => "Train loss and eval metric against step for the best point, the \
             best λ = 1 point and, when λ = 1 wins, the best λ > 1 point (means over their seeds)."
            .to_string(),
    }
}

/// Renders the page.
pub(crate) fn render(input: &ReportInput, m: &ReportModel, figures: &[FigureKind]) -> String {
    let metric = escape(&input.metric_name);
    let sweep = escape(&input.sweep);
    let mut h = String::new();
    let better = if input.higher_is_better {
        "higher"
    } else {
        "lower"
    };

    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>etagrid report: {sweep}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>{sweep}</h1>\n<p class=\"sub\">LoRA+ learning-rate grid over (η<sub>A</sub>, η<sub>B</sub>) \
         &middot; metric: <b>{metric}</b> ({better} is better, mean over seeds)</p>\n"
    );
    if !m.missing.is_empty() {
        h.push_str("<div class=\"warn\"><b>Not shown / not final:</b><ul>\n");
        for line in &m.missing {
            let _ = writeln!(h, "<li>{}</li>", escape(line));
        }
        h.push_str("</ul></div>\n");
    }
    headline(&mut h, input, m, &metric);
    for &kind in figures {
        let stem = kind.stem();
        let _ = writeln!(
            h,
            "<figure><img src=\"{stem}.png\" alt=\"{stem} of {sweep}\">\
             <figcaption>{} (<a href=\"{stem}.svg\">SVG</a>)</figcaption></figure>",
            figure_caption(kind, m)
        );
    }
    if !figures.contains(&FigureKind::Curves) {
        h.push_str(
            "<p class=\"warn\">No learning curves: no curve is stored for the best point.</p>\n",
        );
    }
    tables(&mut h, m, &metric);
    cells_table(&mut h, input, m, &metric);
    provenance(&mut h, input, m);
    let _ = writeln!(
        h,
        "<h2>Sweep spec</h2>\n<pre>{}</pre>\n<script>{SCRIPT}</script>\n</body>\n</html>",
        escape(&input.spec_toml)
    );
    h
}

fn headline(h: &mut String, input: &ReportInput, m: &ReportModel, metric: &str) {
    h.push_str("<table class=\"kv\">\n");
    let _ = writeln!(
        h,
        "<tr><th>cells done</th><td>{} / {}</td></tr>",
        m.cells_done(),
        m.cells_total
    );
    let _ = writeln!(
        h,
        "<tr><th>by state</th><td>{}</td></tr>",
        state_counts(&input.cells)
    );
    if !input.halving.is_empty() {
        let _ = writeln!(
            h,
            "<tr><th>successive halving</th><td>{}</td></tr>",
            input
                .halving
                .iter()
                .map(|l| escape(l))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    let _ = writeln!(
        h,
        "<tr><th>best</th><td>{}</td></tr>",
        m.best
            .as_ref()
            .map_or_else(|| "—".to_string(), |p| describe(p, metric))
    );
    let _ = writeln!(
        h,
        "<tr><th>best λ = 1 (η<sub>B</sub> = η<sub>A</sub>, standard LoRA)</th><td>{}</td></tr>",
        m.best_lambda1.as_ref().map_or_else(
            || "— (no finished point on the diagonal)".to_string(),
            |p| describe(p, metric)
        )
    );
    if let (Some(gain), Some(b), Some(d)) = (m.gain_over_lambda1, &m.best, &m.best_lambda1) {
        let note = if b.index == d.index {
            " (the best point is on the diagonal)".to_string()
        } else {
            format!(" (best at λ = {} vs. λ = 1)", format::ratio(b.lambda))
        };
        let _ = writeln!(
            h,
            "<tr><th>gain over best λ = 1</th><td><b>{}</b>{}</td></tr>",
            format::signed_metric(gain),
            note
        );
    }
    if let Some(chance) = m.chance_level {
        let vs_best = m
            .best
            .as_ref()
            .map(|b| {
                format!(
                    " (best − chance = {})",
                    format::signed_metric(b.mean - chance)
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr><th>chance level</th><td>{}{}</td></tr>",
            format::metric(chance),
            vs_best
        );
    }
    let tied = m.points.iter().filter(|p| p.tied_with_best).count();
    let _ = writeln!(
        h,
        "<tr><th>tied with the best</th><td>{tied} point{} &middot; {}</td></tr>",
        if tied == 1 { "" } else { "s" },
        escape(&m.ties.description)
    );
    if let Some(c) = &m.curves {
        let _ = writeln!(
            h,
            "<tr><th>LoRA+ speed-up</th><td>{}</td></tr>",
            escape(&c.note)
        );
    }
    let _ = writeln!(
        h,
        "<tr><th>GPU-seconds</th><td>{} in total (cells that report a wall time; per cell in \
         the table)</td></tr>",
        format::wall(m.gpu_seconds_total),
    );
    h.push_str("</table>\n");
}

/// A point's three table cells: `first` (its η_A or its λ), its η_B and its metric; dashes
/// where there is no point.
fn point_cells(p: Option<&PointRef>, first: impl Fn(&PointRef) -> String) -> String {
    p.map_or_else(
        || "<td>–</td><td>–</td><td>–</td>".to_string(),
        |p| {
            format!(
                "<td>{}</td><td>{}</td><td>{}</td>",
                first(p),
                format::lr(p.lr_b),
                format::metric_pm(p.mean, p.std)
            )
        },
    )
}

/// λ profile, ridge and top-k as small tables.
fn tables(h: &mut String, m: &ReportModel, metric: &str) {
    let _ = writeln!(
        h,
        "<h2>λ profile</h2>\n<table class=\"small\"><thead><tr><th>λ</th><th>best η<sub>A</sub></th>\
         <th>η<sub>B</sub></th><th>{metric}</th><th>seed min–max</th><th>points done</th></tr></thead><tbody>"
    );
    for r in &m.lambda_profile {
        let spread = match (r.min, r.max) {
            (Some(lo), Some(hi)) => format!("{}–{}", format::metric(lo), format::metric(hi)),
            _ => "–".to_string(),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td>{}<td>{spread}</td><td>{} / {}</td></tr>",
            format::ratio(r.lambda),
            point_cells(r.best.as_ref(), |p| format::lr(p.lr_a)),
            r.points_done,
            r.points
        );
    }
    h.push_str("</tbody></table>\n");
    let _ = writeln!(
        h,
        "<h2>Ridge: best λ for each η<sub>A</sub></h2>\n<table class=\"small\"><thead><tr>\
         <th>η<sub>A</sub></th><th>best λ</th><th>η<sub>B</sub></th><th>{metric}</th></tr></thead><tbody>"
    );
    for r in &m.ridge {
        let row = point_cells(r.best.as_ref(), |b| format::ratio(b.lambda));
        let _ = writeln!(h, "<tr><td>{}</td>{row}</tr>", format::lr(r.lr_a));
    }
    h.push_str("</tbody></table>\n");
    let _ = writeln!(
        h,
        "<h2>Top {} points</h2>\n<table class=\"small\"><thead><tr><th>#</th><th>η<sub>A</sub></th>\
         <th>η<sub>B</sub></th><th>λ</th><th>{metric}</th></tr></thead><tbody>",
        m.top_k.k
    );
    for (i, p) in m.top_k.points.iter().enumerate() {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            format::lr(p.lr_a),
            format::lr(p.lr_b),
            format::ratio(p.lambda),
            format::metric_pm(p.mean, p.std)
        );
    }
    h.push_str("</tbody></table>\n");
}

fn cells_table(h: &mut String, input: &ReportInput, m: &ReportModel, metric: &str) {
    let _ = writeln!(
        h,
        "<h2>Cells ({})</h2>\n<p class=\"sub\">Click a column to sort. Also as \
         <a href=\"{CELLS_CSV}\">{CELLS_CSV}</a>, <a href=\"{CELLS_JSON}\">{CELLS_JSON}</a> \
         (one row per cell × seed) and <a href=\"{MODEL_JSON}\">{MODEL_JSON}</a> (the numbers \
         behind the figures).</p>",
        input.cells.len()
    );
    let _ = writeln!(
        h,
        "<table class=\"cells sortable\">\n<thead><tr><th>cell</th><th>η<sub>A</sub></th><th>η<sub>B</sub></th>\
         <th>λ = η<sub>B</sub>/η<sub>A</sub></th><th>seed</th><th>state</th><th>{metric}</th>\
         <th>eval loss</th><th>train loss</th><th>steps</th><th>wall time</th><th>GPU-s</th>\
         <th>device</th></tr></thead>\n<tbody>"
    );
    let in_point = |p: Option<&PointRef>, id: &str| {
        p.is_some_and(|p| m.points[p.index].cell_ids.iter().any(|c| c == id))
    };
    let tied: Vec<&str> = m
        .points
        .iter()
        .filter(|p| p.tied_with_best)
        .flat_map(|p| p.cell_ids.iter().map(String::as_str))
        .collect();
    for i in sorted_cells(&input.cells, input.higher_is_better) {
        let c = &input.cells[i];
        let num = |v: Option<f64>, f: &dyn Fn(f64) -> String| match v {
            Some(x) if x.is_finite() => format!("<td data-v=\"{x}\">{}</td>", f(x)),
            _ => "<td data-v=\"\">–</td>".to_string(),
        };
        let mut class = format!("state-{}", css_class(&c.state));
        if in_point(m.best.as_ref(), &c.cell_id) {
            class.push_str(" best");
        } else if tied.contains(&c.cell_id.as_str()) {
            class.push_str(" tied");
        }
        let _ = writeln!(
            h,
            "<tr class=\"{class}\"><td class=\"id\">{}</td>{}{}{}<td>{}</td>\
             <td class=\"state\">{}</td>{}{}{}{}{}{}<td class=\"device\">{}</td></tr>",
            escape(&c.cell_id),
            num(Some(c.lr_a), &|v| format::sci(v, 6)),
            num(Some(c.lr_b), &|v| format::sci(v, 6)),
            num(Some(c.lr_b / c.lr_a), &format::ratio),
            c.seed,
            escape(&c.state),
            num(c.metric, &format::metric),
            num(c.eval_loss, &|v| format!("{v:.4}")),
            num(c.train_loss, &|v| format!("{v:.4}")),
            num(c.steps.map(|s| s as f64), &|v| format!("{v:.0}")),
            num(c.wall_s, &format::wall),
            num(
                c.wall_s.map(|w| crate::model::gpu_seconds(w, c.pack_size)),
                &|v| format!("{v:.1}")
            ),
            c.device.as_deref().map_or_else(|| "–".to_string(), escape),
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

fn provenance(h: &mut String, input: &ReportInput, m: &ReportModel) {
    let (version, commit) = crate::build_info();
    let mut devices: Vec<&str> = input
        .cells
        .iter()
        .filter_map(|c| c.device.as_deref())
        .collect();
    devices.sort_unstable();
    devices.dedup();
    let first = input
        .cells
        .iter()
        .filter_map(|c| c.started_at.as_deref())
        .min();
    let last = input
        .cells
        .iter()
        .filter_map(|c| c.finished_at.as_deref())
        .max();
    let _ = writeln!(
        h,
        "<h2>Provenance</h2>\n<table class=\"kv\">\n\
         <tr><th>etagrid</th><td>{} (commit {})</td></tr>\n\
         <tr><th>device(s)</th><td>{}</td></tr>\n\
         <tr><th>GPU-seconds</th><td>{:.1} s in total; per cell in the table above (a cell \
         trained in a pack of K shares its wall time with the other K − 1; CPU cells count \
         CPU-device seconds)</td></tr>\n\
         <tr><th>first cell started</th><td>{} UTC</td></tr>\n\
         <tr><th>last cell finished</th><td>{} UTC</td></tr>\n</table>",
        escape(version),
        escape(commit.unwrap_or("unknown: not built from a git checkout")),
        if devices.is_empty() {
            "–".to_string()
        } else {
            escape(&devices.join(", "))
        },
        m.gpu_seconds_total,
        escape(first.unwrap_or("–")),
        escape(last.unwrap_or("–")),
    );
}

/// "done 14 · diverged 1 · pending 1", known states first, then any others.
fn state_counts(cells: &[ReportCell]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for c in cells {
        match counts.iter_mut().find(|(s, _)| *s == c.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((c.state.clone(), 1)),
        }
    }
    counts.sort_by_key(|(s, _)| (state_rank(s), s.clone()));
    if counts.is_empty() {
        return "no cells".to_string();
    }
    counts
        .iter()
        .map(|(s, n)| format!("{} {n}", escape(s)))
        .collect::<Vec<_>>()
        .join(" &middot; ")
}

fn state_rank(state: &str) -> usize {
    STATES
        .iter()
        .position(|s| *s == state)
        .unwrap_or(STATES.len())
}

/// A CSS-safe class suffix for a state (states are free text in the store).
fn css_class(state: &str) -> String {
    state
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Cell indices: cells with a metric first, best first; the rest after, by
/// state, then learning rates and seed.
fn sorted_cells(cells: &[ReportCell], higher_is_better: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..cells.len()).collect();
    let by_grid = |a: &ReportCell, b: &ReportCell| {
        a.lr_a
            .total_cmp(&b.lr_a)
            .then(a.lr_b.total_cmp(&b.lr_b))
            .then(a.seed.cmp(&b.seed))
    };
    idx.sort_by(|&i, &j| {
        let (a, b) = (&cells[i], &cells[j]);
        match (usable_metric(a), usable_metric(b)) {
            (Some(x), Some(y)) => {
                let o = if higher_is_better {
                    y.total_cmp(&x)
                } else {
                    x.total_cmp(&y)
                };
                o.then_with(|| by_grid(a, b))
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => state_rank(&a.state)
                .cmp(&state_rank(&b.state))
                .then_with(|| by_grid(a, b)),
        }
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_replaces_all_five_special_characters() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }
}
