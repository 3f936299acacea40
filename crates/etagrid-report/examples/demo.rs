//! Writes demo reports from synthetic but realistic sweeps:
//!
//! - `<out>/`                 4×4 η_A × η_B grid, 3 seeds, accuracy peaking
//!   above the diagonal, one diverged point, one failed seed;
//! - `<out>/lambda/`          η_A × λ grid (η_B = λ·η_A, aligned diagonals);
//! - `<out>/compare/`         the first two side by side;
//! - `<out>/lambda-irregular/` η_A × λ grid whose η_B values interleave;
//! - `<out>/single/`          a single η_A value;
//! - `<out>/loss/`            a lower-is-better metric;
//! - `<out>/pending/`         nothing finished yet: an error, nothing written.
//!
//! `cargo run -p etagrid-report --example demo [-- <out>]` (default /tmp/report-demo).

use std::path::{Path, PathBuf};

use etagrid_report::{write_compare, write_report, CellCurves, ReportCell, ReportInput};

/// Deterministic noise in [-1, 1] (no RNG dependency needed for a demo).
fn noise(a: f64, b: f64, seed: u64) -> f64 {
    let mut x =
        a.to_bits() ^ b.to_bits().rotate_left(17) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % 2001) as f64 / 1000.0 - 1.0
}

/// SST-2-like accuracy surface: best near η_A ≈ 1e-4, η_B ≈ 2e-3.
fn accuracy(lr_a: f64, lr_b: f64, seed: u64) -> f64 {
    let (la, lb) = (lr_a.log10(), lr_b.log10());
    0.915 - 0.05 * (la + 4.0).powi(2) - 0.06 * (lb + 2.7).powi(2) - 0.02 * (la - lb).max(0.0)
        + 0.004 * noise(lr_a, lr_b, seed)
}

fn cell(lr_a: f64, lr_b: f64, seed: u64, state: &str, metric: Option<f64>) -> ReportCell {
    let id = format!(
        "{:016x}",
        (lr_a.to_bits()
            ^ lr_b.to_bits().rotate_left(23)
            ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    );
    let n = noise(lr_b, lr_a, seed);
    ReportCell {
        cell_id: id,
        lr_a,
        lr_b,
        seed,
        state: state.to_string(),
        metric,
        eval_loss: metric.map(|m| 0.2 + (1.0 - m) * 1.4 + 0.01 * n),
        train_loss: metric.map(|m| 0.1 + (1.0 - m) * 1.1 + 0.01 * n),
        steps: match state {
            "done" => Some(2000),
            "diverged" => Some(140 + (60.0 * n.abs()) as i64),
            "failed" => Some(0),
            _ => None,
        },
        wall_s: match state {
            "done" => Some(612.0 + 40.0 * n),
            "diverged" => Some(45.0 + 10.0 * n),
            _ => None,
        },
        device: if state == "pending" {
            None
        } else {
            Some(format!("cuda:{}", seed % 2))
        },
        ..Default::default()
    }
}

/// Synthetic curves for every done cell: larger λ learns faster (as LoRA+ reports).
fn with_curves(mut inp: ReportInput) -> ReportInput {
    for c in &inp.cells {
        let Some(fin) = c.metric else { continue };
        let rate = 1.0 + (c.lr_b / c.lr_a).log2().clamp(0.0, 4.0) / 2.0;
        let steps: Vec<i64> = (1..=10).map(|k| k * 200).collect();
        let curves = CellCurves {
            train_loss: steps
                .iter()
                .map(|&s| {
                    (
                        s,
                        0.1 + (1.0 - fin) + 0.6 * (-(s as f64) * rate / 500.0).exp(),
                    )
                })
                .collect(),
            eval_metric: steps
                .iter()
                .map(|&s| {
                    (
                        s,
                        0.5 + (fin - 0.5) * (1.0 - (-(s as f64) * rate / 350.0).exp()),
                    )
                })
                .collect(),
        };
        inp.curves.insert(c.cell_id.clone(), curves);
    }
    inp
}

fn input(sweep: &str, cells: Vec<ReportCell>, spec: &str) -> ReportInput {
    ReportInput {
        sweep: sweep.to_string(),
        metric_name: "accuracy".to_string(),
        higher_is_better: true,
        cells,
        spec_toml: spec.to_string(),
        chance_level: Some(0.509),
        n_eval: Some(872),
        ..Default::default()
    }
}

fn rect_grid(xs: &[f64], ys: &[f64], seeds: u64) -> Vec<ReportCell> {
    let mut cells = Vec::new();
    for &a in xs {
        for &b in ys {
            for s in 0..seeds {
                cells.push(cell(a, b, s, "done", Some(accuracy(a, b, s))));
            }
        }
    }
    cells
}

fn lambda_grid(xs: &[f64], lambdas: &[f64], seeds: u64) -> Vec<ReportCell> {
    let mut cells = Vec::new();
    for &a in xs {
        for &l in lambdas {
            let b = a * l;
            for s in 0..seeds {
                cells.push(cell(a, b, s, "done", Some(accuracy(a, b, s))));
            }
        }
    }
    cells
}

fn write(inp: &ReportInput, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let summary = write_report(&with_curves(inp.clone()), dir)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("/tmp/report-demo"), PathBuf::from);

    // Main demo: 4×4, 3 seeds, one diverged point, one failed seed.
    let grid = [5e-5, 2e-4, 8e-4, 3.2e-3];
    let mut cells = rect_grid(&grid, &grid, 3);
    for c in &mut cells {
        let top_right = c.lr_a == 3.2e-3 && c.lr_b == 3.2e-3;
        if top_right {
            *c = cell(c.lr_a, c.lr_b, c.seed, "diverged", None);
        } else if c.lr_a == 5e-5 && c.lr_b == 5e-5 && c.seed == 2 {
            *c = cell(c.lr_a, c.lr_b, c.seed, "failed", None);
        }
    }
    let spec = r#"name = "gpt2-sst2-r8"
model = "gpt2"
task = "sst2"
rank = 8
steps = 2000
seeds = [0, 1, 2]

[grid]
lr_a = [5e-5, 2e-4, 8e-4, 3.2e-3]
lr_b = [5e-5, 2e-4, 8e-4, 3.2e-3]
"#;
    write(&input("gpt2-sst2-r8", cells.clone(), spec), &out)?;

    let lam = lambda_grid(&[5e-5, 1e-4, 2e-4, 4e-4], &[1.0, 2.0, 4.0, 8.0, 16.0], 2);
    let lam = input(
        "gpt2-sst2-lambda",
        lam,
        "[grid]\nlr_a = [5e-5, 1e-4, 2e-4, 4e-4]\nlambda = [1, 2, 4, 8, 16]\n",
    );
    write(&lam, &out.join("lambda"))?;
    let cmp = write_compare(
        &[input("gpt2-sst2-r8", cells.clone(), spec), lam],
        &out.join("compare"),
    )?;
    println!("{}", serde_json::to_string_pretty(&cmp)?);

    let irr = lambda_grid(&[1e-4, 3e-4, 1e-3], &[1.0, 4.0, 16.0], 1);
    write(
        &input(
            "gpt2-sst2-lambda-irregular",
            irr,
            "[grid]\nlr_a = [1e-4, 3e-4, 1e-3]\nlambda = [1, 4, 16]\n",
        ),
        &out.join("lambda-irregular"),
    )?;

    let single = rect_grid(&[1e-4], &[1e-4, 4e-4, 1.6e-3, 6.4e-3], 2);
    write(
        &input(
            "gpt2-sst2-single",
            single,
            "[grid]\nlr_a = [1e-4]\nlr_b = [1e-4, 4e-4, 1.6e-3, 6.4e-3]\n",
        ),
        &out.join("single"),
    )?;

    let mut loss = input("gpt2-sst2-r8", cells.clone(), spec);
    loss.metric_name = "eval_loss".to_string();
    loss.higher_is_better = false;
    loss.chance_level = None;
    for c in &mut loss.cells {
        c.metric = c.eval_loss;
    }
    write(&loss, &out.join("loss"))?;

    let pending: Vec<ReportCell> = cells
        .iter()
        .map(|c| cell(c.lr_a, c.lr_b, c.seed, "pending", None))
        .collect();
    // Nothing finished: a clear error, no files.
    match write(&input("gpt2-sst2-r8", pending, spec), &out.join("pending")) {
        Err(e) => println!("pending: {e}"),
        Ok(()) => return Err("a sweep with no finished cell must not be reported".into()),
    }
    Ok(())
}
