//! End-to-end tests of `write_report` through the public API.

use std::path::Path;

use etagrid_report::{write_report, BestCell, ReportCell, ReportError, ReportInput, ReportSummary};

fn cell(lr_a: f64, lr_b: f64, seed: u64, state: &str, metric: Option<f64>) -> ReportCell {
    ReportCell {
        cell_id: format!(
            "c{:x}",
            (lr_a.to_bits() ^ lr_b.to_bits().rotate_left(7)) ^ seed
        ),
        lr_a,
        lr_b,
        seed,
        state: state.to_string(),
        metric,
        eval_loss: metric.map(|m| 1.0 - m),
        train_loss: metric.map(|m| 0.9 - m),
        steps: metric.map(|_| 1000),
        wall_s: metric.map(|_| 123.4),
        device: Some("cuda:0".to_string()),
        ..Default::default()
    }
}

fn done(lr_a: f64, lr_b: f64, seed: u64, metric: f64) -> ReportCell {
    cell(lr_a, lr_b, seed, "done", Some(metric))
}

fn input(cells: Vec<ReportCell>, higher_is_better: bool) -> ReportInput {
    ReportInput {
        sweep: "test-sweep".to_string(),
        metric_name: "accuracy".to_string(),
        higher_is_better,
        cells,
        spec_toml: "name = \"test-sweep\"\n".to_string(),
        ..Default::default()
    }
}

fn report(inp: &ReportInput, dir: &Path) -> ReportSummary {
    match write_report(inp, dir) {
        Ok(s) => s,
        Err(e) => panic!("write_report failed: {e} ({e:?})"),
    }
}

fn best(s: &ReportSummary) -> &BestCell {
    s.best.as_ref().expect("a best point")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

/// A 2×2 grid, two seeds each, where the per-seed maximum (0.95 at
/// (1e-4, 1e-4)) is not the best mean (0.85 at (1e-4, 1e-3)).
fn two_by_two() -> Vec<ReportCell> {
    vec![
        done(1e-4, 1e-4, 0, 0.95),
        done(1e-4, 1e-4, 1, 0.55), // mean 0.75
        done(1e-4, 1e-3, 0, 0.84),
        done(1e-4, 1e-3, 1, 0.86), // mean 0.85
        done(1e-3, 1e-4, 0, 0.60),
        done(1e-3, 1e-4, 1, 0.62), // mean 0.61
        done(1e-3, 1e-3, 0, 0.70),
        done(1e-3, 1e-3, 1, 0.82), // mean 0.76
    ]
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 24, "PNG too short");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG magic bytes");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk is IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

fn decode(path: &Path) -> image::RgbImage {
    let bytes = std::fs::read(path).expect("read heatmap");
    image::load_from_memory(&bytes)
        .expect("heatmap decodes as an image")
        .to_rgb8()
}

fn count_pixels(img: &image::RgbImage, rgb: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == rgb).count()
}

/// The red of the best point's border.
const BEST_RED: [u8; 3] = [220, 20, 30];

#[test]
fn best_point_is_the_highest_mean_over_seeds_when_higher_is_better() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = report(&input(two_by_two(), true), dir.path());
    let b = best(&s);
    assert!(close(b.lr_a, 1e-4) && close(b.lr_b, 1e-3), "best = {b:?}");
    assert!(close(b.metric, 0.85), "mean over seeds, got {}", b.metric);
    assert_eq!(b.seeds, 2);
    assert!(close(b.ratio, 10.0), "ratio = {}", b.ratio);
}

#[test]
fn best_point_is_the_lowest_mean_over_seeds_when_lower_is_better() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = report(&input(two_by_two(), false), dir.path());
    let b = best(&s);
    assert!(close(b.lr_a, 1e-3) && close(b.lr_b, 1e-4), "best = {b:?}");
    assert!(close(b.metric, 0.61), "mean over seeds, got {}", b.metric);
    let d = s.best_on_diagonal.as_ref().expect("a diagonal best");
    // Diagonal means: 0.75 at 1e-4, 0.76 at 1e-3.
    assert!(close(d.lr_a, 1e-4) && close(d.lr_b, 1e-4), "diag = {d:?}");
}

#[test]
fn best_on_diagonal_only_considers_points_with_equal_learning_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cells = two_by_two();
    // A third seed for (1e-3, 1e-3), whose η_B is off by one ulp (as when
    // computed as λ·η_A): it must join that point and count as diagonal.
    cells.push(done(1e-3, 1e-3 * 1.0000000000000002, 2, 0.90));
    let s = report(&input(cells, true), dir.path());
    let d = s.best_on_diagonal.as_ref().expect("a diagonal best");
    assert!(close(d.lr_a, 1e-3) && close(d.lr_b, 1e-3), "diag = {d:?}");
    assert!(
        close(d.metric, (0.70 + 0.82 + 0.90) / 3.0),
        "got {}",
        d.metric
    );
    assert_eq!(d.seeds, 3);
    assert!(close(d.ratio, 1.0));
    // The overall best is off the diagonal and different.
    let b = best(&s);
    assert!(close(b.lr_b / b.lr_a, 10.0), "best = {b:?}");
}

#[test]
fn cells_without_a_metric_are_ignored_for_the_best_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cells = vec![
        // Only one seed of this point has a metric: the mean is over that one.
        done(1e-4, 1e-3, 0, 0.80),
        cell(1e-4, 1e-3, 1, "failed", None),
        cell(1e-4, 1e-3, 2, "diverged", None),
        // A point where nothing has a metric never wins, whatever its state.
        cell(1e-3, 1e-2, 0, "diverged", None),
        cell(1e-3, 1e-2, 1, "pending", None),
        // A NaN metric is not a metric.
        done(1e-3, 1e-3, 0, f64::NAN),
        done(1e-4, 1e-4, 0, 0.70),
    ];
    let s = report(&input(cells, true), dir.path());
    let b = best(&s);
    assert!(close(b.lr_a, 1e-4) && close(b.lr_b, 1e-3), "best = {b:?}");
    assert!(close(b.metric, 0.80));
    assert_eq!(b.seeds, 1);
    let d = s.best_on_diagonal.as_ref().expect("a diagonal best");
    assert!(close(d.lr_a, 1e-4), "the NaN point must not win: {d:?}");
    assert_eq!(s.cells_done, 3);
    assert_eq!(s.cells_total, 7);
}

#[test]
fn write_report_writes_a_valid_png_of_the_expected_size_and_no_tmp_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("nested").join("report");
    let s = report(&input(two_by_two(), true), &out);
    assert_eq!(s.heatmap, out.join("heatmap.png"));
    assert_eq!(s.index, out.join("index.html"));
    let bytes = std::fs::read(&s.heatmap).expect("read heatmap");
    assert_eq!(png_size(&bytes), (900, 800));
    let img = decode(&s.heatmap);
    assert_eq!(img.dimensions(), (900, 800));
    assert!(
        count_pixels(&img, BEST_RED) > 200,
        "the best point has a red border"
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // No learning curves were given, so no curves figure.
    assert_eq!(
        names,
        [
            "cells.csv",
            "cells.json",
            "heatmap.png",
            "heatmap.svg",
            "index.html",
            "lambda-profile.png",
            "lambda-profile.svg",
            "model.json",
            "top-k.png",
            "top-k.svg"
        ]
    );
    let svg = std::fs::read_to_string(out.join("heatmap.svg")).expect("read svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("viewBox=\"0 0 900 800\""),
        "{}",
        &svg[..200.min(svg.len())]
    );
}

#[test]
fn index_html_lists_every_cell_and_escapes_strings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cells = two_by_two();
    cells.push(cell(1e-3, 1e-2, 0, "diverged", None));
    cells[0].device = Some("gpu<0>&\"x\"".to_string());
    let mut inp = input(cells.clone(), true);
    inp.spec_toml = "name = \"x\"\nnote = \"<script>alert('hi')</script>\"\n".to_string();
    inp.sweep = "sweep <b>bold</b>".to_string();
    inp.chance_level = Some(0.5);
    let s = report(&inp, dir.path());
    let html = std::fs::read_to_string(&s.index).expect("read index.html");

    assert_eq!(
        html.matches("<tr class=\"state-").count(),
        cells.len(),
        "one row per cell"
    );
    for c in &cells {
        assert!(
            html.contains(&format!("<td class=\"id\">{}</td>", c.cell_id)),
            "row for {}",
            c.cell_id
        );
    }
    assert!(!html.contains("<script>alert"), "spec must be escaped");
    assert!(html.contains("&lt;script&gt;alert(&#39;hi&#39;)&lt;/script&gt;"));
    assert!(!html.contains("<b>bold</b>"), "sweep name must be escaped");
    assert!(html.contains("sweep &lt;b&gt;bold&lt;/b&gt;"));
    assert!(
        html.contains("gpu&lt;0&gt;&amp;&quot;x&quot;"),
        "device must be escaped"
    );
    assert!(html.contains("<img src=\"heatmap.png\""));
    assert!(html.contains("<a href=\"heatmap.svg\">SVG</a>"));
    assert!(html.contains("chance level"));
    assert!(html.contains("0.500"));
    // Sorted best first, cells without a metric last.
    let pos = |needle: &str| html.find(needle).unwrap_or(usize::MAX);
    let top = pos(">0.950<");
    let next = pos(">0.860<");
    let last_done = pos(">0.550<");
    let diverged = pos(">diverged<");
    assert!(
        top < next && next < last_done && last_done < diverged,
        "{top} {next} {last_done} {diverged}"
    );
    assert!(
        html.contains("+0.090"),
        "best − best on diagonal = 0.85 − 0.76"
    );
}

#[test]
fn eta_a_times_lambda_grid_uses_the_union_of_eta_b_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cells = Vec::new();
    for (i, &a) in [1e-4, 3e-4, 1e-3].iter().enumerate() {
        for (j, &l) in [1.0, 4.0, 16.0].iter().enumerate() {
            let m = 0.6 + 0.02 * i as f64 + 0.05 * j as f64;
            cells.push(done(a, a * l, 0, m));
        }
    }
    let s = report(&input(cells.clone(), true), dir.path());
    let b = best(&s);
    assert!(close(b.lr_a, 1e-3) && close(b.ratio, 16.0), "best = {b:?}");
    let d = s.best_on_diagonal.as_ref().expect("a diagonal best");
    assert!(close(d.lr_a, 1e-3) && close(d.ratio, 1.0), "diag = {d:?}");
    let img = decode(&s.heatmap);
    assert_eq!(img.dimensions(), (900, 800));
    assert!(count_pixels(&img, BEST_RED) > 100);
    let html = std::fs::read_to_string(&s.index).expect("read index.html");
    assert_eq!(html.matches("<tr class=\"state-").count(), cells.len());
    assert!(html.contains(">16</td>"), "λ column shows 16");
}

#[test]
fn a_single_value_on_an_axis_still_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cells = vec![
        done(1e-4, 1e-4, 0, 0.7),
        done(1e-4, 1e-3, 0, 0.8),
        done(1e-4, 1e-2, 0, 0.6),
    ];
    let s = report(&input(cells, true), dir.path());
    assert!(close(best(&s).lr_b, 1e-3));
    assert_eq!(decode(&s.heatmap).dimensions(), (900, 800));

    // A single point: both axes have one value.
    let dir = tempfile::tempdir().expect("tempdir");
    let s = report(&input(vec![done(2e-4, 2e-4, 0, 0.5)], true), dir.path());
    let b = best(&s);
    assert!(close(b.metric, 0.5));
    assert!(s.best_on_diagonal.is_some());
    assert_eq!(decode(&s.heatmap).dimensions(), (900, 800));
}

#[test]
fn a_sweep_without_a_finished_cell_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("r");
    let mut cells = Vec::new();
    for &a in &[1e-4, 1e-3] {
        for &b in &[1e-4, 1e-3] {
            cells.push(cell(a, b, 0, "pending", None));
        }
    }
    cells[0].state = "running".to_string();
    cells[1] = cell(1e-4, 1e-3, 0, "diverged", None);
    match write_report(&input(cells, true), &out) {
        Err(e @ ReportError::NothingFinished { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("test-sweep"), "{msg}");
            assert!(msg.contains("no cell has finished"), "{msg}");
            assert!(msg.contains("running 1 · pending 2 · diverged 1"), "{msg}");
            assert!(msg.contains("etagrid run"), "says what to do: {msg}");
        }
        other => panic!("expected NothingFinished, got {other:?}"),
    }
    assert!(!out.exists(), "nothing is written");
    // An empty sweep too.
    let err = write_report(&input(Vec::new(), true), &out);
    assert!(matches!(
        err,
        Err(ReportError::NothingFinished { cells: 0, .. })
    ));
}

#[test]
fn a_nonpositive_learning_rate_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = write_report(&input(vec![done(0.0, 1e-3, 0, 0.5)], true), dir.path());
    match err {
        Err(e @ ReportError::InvalidLearningRate { .. }) => {
            assert!(e.to_string().starts_with("place cell"), "{e}");
        }
        other => panic!("expected InvalidLearningRate, got {other:?}"),
    }
}

#[test]
fn rewriting_a_report_replaces_both_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    report(&input(two_by_two(), true), dir.path());
    let mut cells = two_by_two();
    cells.push(cell(1e-2, 1e-2, 0, "pending", None));
    let s = report(&input(cells, true), dir.path());
    let html = std::fs::read_to_string(&s.index).expect("read index.html");
    assert!(html.contains("pending 1"));
    assert_eq!(s.cells_total, 9);
}

#[test]
fn bundled_font_has_every_glyph_the_heatmap_uses() {
    use ab_glyph::{Font, FontRef};
    let font =
        FontRef::try_from_slice(include_bytes!("../assets/DejaVuSans.ttf")).expect("font parses");
    for ch in "η_AB=λ/→…−·()0123456789.e-^ abcdefghijklmnopqrstuvwxyz:,".chars() {
        assert_ne!(font.glyph_id(ch).0, 0, "missing glyph for {ch:?}");
    }
}
