//! The self-contained `index.html` (no scripts, no external assets).

use std::cmp::Ordering;
use std::fmt::Write;

use crate::aggregate::{usable_metric, Point};
use crate::{format, heatmap, ReportCell, ReportView, HEATMAP_FILE};

/// States in the order they are listed and sorted.
const STATES: [&str; 5] = ["done", "running", "pending", "failed", "diverged"];

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
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #1a1a1a; padding: 0 1em; }
h1 { margin-bottom: 0.1em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; }
.kv th { text-align: left; padding: 0.25em 1.2em 0.25em 0; color: #444; font-weight: 600; vertical-align: top; }
.kv td { padding: 0.25em 0; }
.warn { background: #fff4ce; border: 1px solid #e0c060; padding: 0.6em 0.9em; border-radius: 4px; }
figure { margin: 1.5em 0; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.cells { font-size: 0.9em; }
.cells th, .cells td { padding: 0.3em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
.cells th { background: #f3f3f3; position: sticky; top: 0; }
.cells td.id, .cells td.state, .cells td.device { text-align: left; font-family: "DejaVu Sans Mono", monospace; }
.cells tr.best td { background: #fde7e7; }
.state-failed td.state, .state-diverged td.state { color: #b00020; font-weight: 600; }
.state-running td.state { color: #8a6d00; }
.state-pending td.state { color: #777; }
pre { background: #f6f6f6; border: 1px solid #e0e0e0; padding: 1em; overflow-x: auto; }
"#;

/// Renders the page.
pub(crate) fn render(view: &ReportView<'_>) -> String {
    let input = view.input;
    let grid = view.grid;
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

    // Summary.
    h.push_str("<table class=\"kv\">\n");
    let _ = writeln!(
        h,
        "<tr><th>cells done</th><td>{} / {}</td></tr>",
        grid.cells_done,
        input.cells.len()
    );
    let _ = writeln!(
        h,
        "<tr><th>by state</th><td>{}</td></tr>",
        state_counts(&input.cells)
    );
    let best = view.best.map(|i| &grid.points[i]);
    let diag = view.best_diag.map(|i| &grid.points[i]);
    let _ = writeln!(
        h,
        "<tr><th>best</th><td>{}</td></tr>",
        best.map_or_else(|| "—".to_string(), |p| describe(p, &metric))
    );
    let _ = writeln!(
        h,
        "<tr><th>best with η<sub>B</sub> = η<sub>A</sub></th><td>{}</td></tr>",
        diag.map_or_else(
            || "— (no finished point on the diagonal)".to_string(),
            |p| describe(p, &metric)
        )
    );
    if let (Some(b), Some(d)) = (best.and_then(|p| p.mean), diag.and_then(|p| p.mean)) {
        let note = if view.best == view.best_diag {
            " (the best point is on the diagonal)".to_string()
        } else {
            format!(
                " (best at λ = {} vs. λ = 1)",
                best.map_or_else(String::new, |p| format::ratio(p.ratio()))
            )
        };
        let _ = writeln!(
            h,
            "<tr><th>difference</th><td>best − best on diagonal = <b>{}</b>{}</td></tr>",
            format::signed_metric(b - d),
            note
        );
    }
    if let Some(chance) = input.chance_level {
        let vs_best = best
            .and_then(|p| p.mean)
            .map(|b| format!(" (best − chance = {})", format::signed_metric(b - chance)))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr><th>chance level</th><td>{}{}</td></tr>",
            format::metric(chance),
            vs_best
        );
    }
    h.push_str("</table>\n");
    if best.is_none() {
        let _ = writeln!(
            h,
            "<p class=\"warn\">Nothing is done yet: no cell has a {metric}, so there is no best point \
             ({} of {} cells done).</p>",
            grid.cells_done,
            input.cells.len()
        );
    }

    // Heatmap.
    let _ = writeln!(
        h,
        "<figure><img src=\"{HEATMAP_FILE}\" width=\"{}\" height=\"{}\" \
         alt=\"heatmap of {metric} over eta_A and eta_B for {sweep}\"></figure>",
        heatmap::WIDTH,
        heatmap::HEIGHT
    );

    // Cells table.
    let _ = writeln!(h, "<h2>Cells ({})</h2>", input.cells.len());
    let _ = writeln!(
        h,
        "<table class=\"cells\">\n<thead><tr><th>cell</th><th>η<sub>A</sub></th><th>η<sub>B</sub></th>\
         <th>λ = η<sub>B</sub>/η<sub>A</sub></th><th>seed</th><th>state</th><th>{metric}</th>\
         <th>eval loss</th><th>train loss</th><th>steps</th><th>wall time</th><th>device</th></tr></thead>\n<tbody>"
    );
    let best_cells: &[usize] = best.map_or(&[], |p| p.cells.as_slice());
    for i in sorted_cells(&input.cells, input.higher_is_better) {
        let c = &input.cells[i];
        let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or_else(|| "–".to_string(), f);
        let mut class = format!("state-{}", css_class(&c.state));
        if best_cells.contains(&i) {
            class.push_str(" best");
        }
        let _ = writeln!(
            h,
            "<tr class=\"{class}\"><td class=\"id\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"state\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"device\">{}</td></tr>",
            escape(&c.cell_id),
            format::sci(c.lr_a, 6),
            format::sci(c.lr_b, 6),
            format::ratio(c.lr_b / c.lr_a),
            c.seed,
            escape(&c.state),
            opt(c.metric, format::metric),
            opt(c.eval_loss, |v| format!("{v:.4}")),
            opt(c.train_loss, |v| format!("{v:.4}")),
            c.steps.map_or_else(|| "–".to_string(), |s| s.to_string()),
            opt(c.wall_s, format::wall),
            c.device.as_deref().map_or_else(|| "–".to_string(), escape),
        );
    }
    h.push_str("</tbody>\n</table>\n");

    // Spec.
    let _ = writeln!(
        h,
        "<h2>Sweep spec</h2>\n<pre>{}</pre>\n</body>\n</html>",
        escape(&input.spec_toml)
    );
    h
}

fn describe(p: &Point, metric: &str) -> String {
    format!(
        "η<sub>A</sub> = {}, η<sub>B</sub> = {} (λ = {}): {} = <b>{}</b> over {} seed{}",
        format::lr(p.lr_a),
        format::lr(p.lr_b),
        format::ratio(p.ratio()),
        metric,
        format::metric(p.mean.unwrap_or(f64::NAN)),
        p.seeds,
        if p.seeds == 1 { "" } else { "s" }
    )
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
