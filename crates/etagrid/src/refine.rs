//! `etagrid refine SWEEP`: a sweep file for a finer grid around a finished sweep's best point —
//! η_A and λ at half-octave steps (×2^±½) around it, 3 × 3 points, each trained to its full
//! budget — to run with `etagrid run` like any sweep. It is the sweep file the run used (as the
//! store keeps it: comments, model, task, LoRA and training settings, seeds), with another name,
//! the new `[grid]` and no `[search]`. Written next to that file, since its paths are relative to
//! its directory; an existing file is never overwritten.

use crate::common::sweep_name;
use crate::report::{input_of, load_sweep};
use anyhow::{bail, Context, Result};
use etagrid_report::ReportModel;
use etagrid_spec::grid::round_sig;
use std::path::{Path, PathBuf};

/// The points of the refined grid along one axis: `x·2^-½, x, x·2^½`, to the 10 significant
/// digits a sweep's grid keeps ([`round_sig`]).
pub fn half_octaves(x: f64) -> [f64; 3] {
    [
        x / std::f64::consts::SQRT_2,
        x,
        x * std::f64::consts::SQRT_2,
    ]
    .map(round_sig)
}

/// The point a refined sweep was written around: the middle of its distinct η_A and of its
/// distinct λ (the inverse of [`refined_text`]; NaN for an axis with no value).
pub fn refined_centre(spec: &etagrid_spec::SweepSpec) -> (f64, f64) {
    let middle = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.dedup();
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let cells = spec.cells();
    (
        middle(cells.iter().map(|c| c.config.lr_a).collect()),
        middle(cells.iter().map(|c| c.config.ratio()).collect()),
    )
}

/// `text` (a sweep file) turned into the refined sweep `name` around (`lr_a`, `lambda`).
pub fn refined_text(text: &str, name: &str, lr_a: f64, lambda: f64) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    doc["name"] = toml_edit::value(name);
    let grid = doc["grid"]
        .as_table_like_mut()
        .context("the sweep file has no [grid] table")?;
    grid.remove("lr_b");
    let axis = |x: f64| {
        let mut a = toml_edit::Array::new();
        a.extend(half_octaves(x));
        toml_edit::value(a)
    };
    grid.insert("lr_a", axis(lr_a));
    grid.insert("ratio", axis(lambda));
    doc.remove("search");
    Ok(doc.to_string())
}

/// `etagrid refine SWEEP [--out FILE]`.
pub fn refine(
    db: &etagrid_store::StoreUrl,
    sweep: &str,
    out: Option<&Path>,
) -> Result<crate::common::Exit> {
    write_refined(&Stored::load(db, sweep)?, sweep, out, true)?;
    Ok(crate::common::Exit::Ok)
}

/// A sweep as the store has it: its row, and its report model (the best point).
struct Stored {
    name: String,
    row: etagrid_store::SweepRow,
    model: ReportModel,
}

impl Stored {
    /// Sweep `sweep` (a file or a stored name), read once.
    fn load(db: &etagrid_store::StoreUrl, sweep: &str) -> Result<Stored> {
        let name = sweep_name(sweep)?;
        let (row, cells) = load_sweep(db, &name)?;
        let model = ReportModel::build(&input_of(db, &row, &cells, false)?)?;
        Ok(Stored { name, row, model })
    }
}

/// For `[search] refine = true`, after `etagrid run` finished the sweep of file `sweep`: the
/// refined sweep's file, `<name>-refine.toml` beside it — written now, or, when a run before
/// wrote it (it names sweep `<name>-refine`) around today's best point, that file as it is, so
/// a rerun continues the same refined sweep. One written around another point (the sweep's
/// best moved since) is refused. `None`: no cell has a result, so there is no point to refine
/// around.
pub fn refined_for_run(db: &etagrid_store::StoreUrl, sweep: &Path) -> Result<Option<PathBuf>> {
    let stored = Stored::load(db, &sweep.to_string_lossy())?;
    let name = &stored.name;
    let Some(best) = &stored.model.best else {
        return Ok(None);
    };
    let (a, l) = (best.lr_a, best.lambda);
    let dir = match sweep.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let out = dir.join(format!("{name}-refine.toml"));
    if out.exists() {
        let theirs = etagrid_spec::SweepSpec::load(&out)
            .with_context(|| format!("{} exists but is not a sweep file", out.display()))?;
        if theirs.name != format!("{name}-refine") {
            bail!(
                "{} exists and is sweep {}, not the refinement of {}: move it away to refine",
                out.display(),
                theirs.name,
                name
            );
        }
        let theirs_at = refined_centre(&theirs);
        let same = |x: f64, y: f64| (x / y - 1.0).abs() < 1e-6;
        if !(same(theirs_at.0, a) && same(theirs_at.1, l)) {
            bail!(
                "{} was written around η_A = {:.4e}, λ = {:.4}, but the best point of {} is now \
                 η_A = {a:.4e}, λ = {l:.4}: remove the file (its sweep stays in the store) to \
                 refine around the new best point",
                out.display(),
                theirs_at.0,
                theirs_at.1,
                name
            );
        }
        eprintln!(
            "refine: {} exists (written by an earlier run): running it as it is",
            out.display()
        );
        return Ok(Some(out));
    }
    write_refined(&stored, &sweep.to_string_lossy(), Some(&out), false).map(Some)
}

/// Writes the refined sweep of `stored` (given as `sweep`, a file or a stored name) to `out`
/// (default `<name>-refine.toml` beside the sweep's file) and returns its path. `standalone`:
/// the command `etagrid refine`, whose message says how to run the file.
fn write_refined(
    stored: &Stored,
    sweep: &str,
    out: Option<&Path>,
    standalone: bool,
) -> Result<PathBuf> {
    let Stored { name, row, model } = stored;
    let Some(best) = model.best.clone() else {
        bail!(
            "sweep {name} has no finished cell to refine around: run it first (`etagrid status \
             {name}` shows its cells)"
        );
    };
    let unfinished = model.cells_open();
    if unfinished > 0 {
        eprintln!(
            "note: {unfinished} of sweep {name}'s {} cells have not finished: its best point may \
             still change",
            model.cells_total
        );
    }
    // The sweep file given, else the one the store names: as the run was given it, so a
    // relative path holds only from the directory the run started in, which is checked.
    let given = Path::new(sweep);
    let source = if given.is_file() {
        given.to_owned()
    } else {
        PathBuf::from(&row.source_path)
    };
    let is_it =
        source.is_file() && etagrid_spec::SweepSpec::load(&source).is_ok_and(|s| &s.name == name);
    if !is_it {
        bail!(
            "sweep {name} was run as {}, which is not its sweep file from here: pass the sweep \
             file itself (etagrid refine path/to/{name}.toml)",
            source.display()
        );
    }
    let dir = match source.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let out = match out {
        Some(o) => o.to_owned(),
        None => dir.join(format!("{name}-refine.toml")),
    };
    // The new sweep is named after its file, as `etagrid init` names one.
    let new_name = match out.file_stem().and_then(|s| s.to_str()) {
        Some(stem) if !stem.is_empty() => stem.to_owned(),
        _ => bail!("--out {}: give a file name like NAME.toml", out.display()),
    };
    let same_dir = |p: &Path| {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        parent.canonicalize().ok() == dir.canonicalize().ok()
    };
    if !same_dir(&out) {
        bail!(
            "--out {}: the refined sweep must sit in the directory of {} (its model and data \
             paths are relative to it)",
            out.display(),
            source.display()
        );
    }

    let text = refined_text(&row.source_text, &new_name, best.lr_a, best.lambda)
        .with_context(|| format!("sweep {name}'s file ({}) as stored", source.display()))?;
    let header = format!(
        "# Refined by `etagrid refine` around the best point of sweep {name}: η_A = {:.4e}, λ = \
         {:.4} ({} = {:.4}); η_A and λ at half-octave steps (×2^±½), each cell at full budget.\n",
        best.lr_a, best.lambda, model.metric, best.mean
    );
    // Written whole under a temporary name, then linked to its name, which fails if the name
    // exists: no half-written file, and no file overwritten.
    let tmp = out.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, header + &text).with_context(|| format!("write {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, &out);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists: remove it, or name another file in {} with --out",
            out.display(),
            dir.display()
        ),
        other => other.with_context(|| format!("write {}", out.display()))?,
    }
    let list = |x: f64| {
        half_octaves(x)
            .iter()
            .map(|v| format!("{v:.4e}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "wrote {}: sweep {new_name}, η_A ∈ {{{}}} × λ ∈ {{{}}} around the best of {name} \
         ({} = {:.4} at η_A = {:.4e}, λ = {:.4}){}",
        out.display(),
        list(best.lr_a),
        list(best.lambda),
        model.metric,
        best.mean,
        best.lr_a,
        best.lambda,
        if standalone {
            format!("; run it with `etagrid run {}`", out.display())
        } else {
            String::new()
        }
    );
    let on_edge = |values: &[f64], v: f64| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        v <= lo || v >= hi
    };
    if on_edge(&model.eta_a, best.lr_a) || on_edge(&model.lambdas, best.lambda) {
        eprintln!(
            "the best point is on the edge of {name}'s grid: the refined grid reaches half an \
             octave past it; a wider grid may find more"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refined file keeps the sweep's comments and settings, takes the new name and grid
    /// (η_A and λ lists, no η_B list, same seeds) and drops `[search]`.
    #[test]
    fn the_refined_file_is_the_sweep_with_a_half_octave_grid_around_the_point() {
        let text = "# my sweep\nname = \"s\"\n\n[model]\npath = \"m\" # the model\n\n[task]\n\
                    train = \"t.csv\"\neval = \"e.csv\"\n\n[train]\nsteps = 9\n\n[grid]\n\
                    lr_a = [1e-4, 1e-3]\nlr_b = [1e-3, 1e-2]\nseeds = [0, 1]\n\n[search]\n\
                    strategy = \"halving\"\n";
        let out = refined_text(text, "s-refine", 1e-3, 16.0).expect("refined");
        assert!(out.starts_with("# my sweep\nname = \"s-refine\""), "{out}");
        assert!(out.contains("path = \"m\" # the model"), "{out}");
        assert!(!out.contains("[search]") && !out.contains("lr_b"), "{out}");
        let spec =
            etagrid_spec::SweepSpec::parse(Path::new("s-refine.toml"), &out).expect("parses");
        assert_eq!(spec.name, "s-refine");
        let cells = spec.cells();
        assert_eq!(cells.len(), 3 * 3 * 2, "3 η_A × 3 λ × 2 seeds");
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 1e-9;
        for (want_a, want_l) in [
            (1e-3 / 2f64.sqrt(), 16.0 / 2f64.sqrt()),
            (1e-3, 16.0),
            (1e-3 * 2f64.sqrt(), 16.0 * 2f64.sqrt()),
        ] {
            assert!(
                cells.iter().any(|c| close(c.config.lr_a, want_a)
                    && close(c.config.lr_b / c.config.lr_a, want_l)),
                "no cell at η_A = {want_a}, λ = {want_l}"
            );
        }
        assert_eq!(spec.search.strategy, etagrid_search::Strategy::Grid);
        // What a rerun reads back from the file to check it was written around today's best.
        let (a, l) = refined_centre(&spec);
        assert!(
            close(a, 1e-3) && close(l, 16.0),
            "centre read back: {a}, {l}"
        );
    }
}
