//! End to end through the real binary on the CPU: the tiny BERT fixture (a real HF-format
//! checkpoint made by transformers) on a tiny 3-class task. Each test has its own state dir.

mod common;

use common::{failed_with, read_cells, text, tiny_sweep, train_fixture, CPU_RESOURCES};
use etagrid_store::CellState;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sweep over the tiny model with `grid` as its [grid] body.
    fn new(grid: &str, steps: u64) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!("{}{CPU_RESOURCES}", tiny_sweep("tiny", grid, steps, 4));
        std::fs::write(dir.path().join("tiny.toml"), toml).expect("write sweep");
        Sandbox { dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_etagrid"));
        c.current_dir(self.dir.path())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run etagrid")
    }

    fn cells(&self) -> Vec<etagrid_store::CellRow> {
        read_cells(&self.dir.path().join("state/etagrid.sqlite"), "tiny")
    }

    /// Sweep tiny's best point, as `etagrid best --json` names it: (η_A, λ, metric).
    fn best(&self) -> (f64, f64, f64) {
        let best = self.run(&["best", "tiny", "--json"]);
        let best: serde_json::Value = serde_json::from_slice(&best.stdout).expect("best json");
        let field = |k: &str| best["best"][k].as_f64().expect(k);
        (field("lr_a"), field("lambda"), field("metric"))
    }
}

/// x and y equal within a relative 1e-9 (grid values printed to 10 significant digits).
fn close(x: f64, y: f64) -> bool {
    (x / y - 1.0).abs() < 1e-9
}

/// The metric of the cell at (η_A = `a`, λ = `l`) among `cells`.
fn metric_at(cells: &[etagrid_store::CellRow], a: f64, l: f64) -> Option<f64> {
    cells
        .iter()
        .find(|c| close(c.lr_a, a) && close(c.lr_b / c.lr_a, l))
        .expect("the cell at the point")
        .metric
}

#[test]
fn run_trains_every_cell_writes_the_report_and_a_rerun_trains_nothing() {
    let sb = Sandbox::new("lr_a = [1e-3, 1e-2]\nratio = [1, 16]", 8);
    let out = sb.run(&["run", "tiny.toml"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "run failed: {err}");
    assert!(err.contains("4 to run"), "{err}");
    let cells = sb.cells();
    assert_eq!(cells.len(), 4);
    for c in &cells {
        assert_eq!(
            c.state,
            CellState::Done,
            "cell {} is {:?}: {:?}",
            c.id,
            c.state,
            c.error
        );
        assert_eq!(c.attempts, 1);
        let acc = c.metric.expect("metric");
        assert!((0.0..=1.0).contains(&acc), "accuracy {acc}");
        assert_eq!(c.step, Some(8));
    }
    // Tokenize once per sweep: the run's input check (before anything is stored) tokenizes
    // and writes the cache, so every cell loads it.
    assert!(err.contains("inputs checked"), "{err}");
    let log = |id: &str| {
        std::fs::read_to_string(
            sb.dir
                .path()
                .join("state/cells/tiny")
                .join(id)
                .join("worker.log"),
        )
        .expect("worker.log")
    };
    let mut by_index = cells.clone();
    by_index.sort_by_key(|c| c.index);
    for c in &by_index {
        assert!(
            log(&c.id).contains("loaded from the sweep's cache (no tokenization)"),
            "{}",
            log(&c.id)
        );
    }
    // λ = 16 really means η_B = 16·η_A in the stored cells.
    assert!(cells.iter().any(|c| (c.lr_b / c.lr_a - 16.0).abs() < 1e-9));
    let png = std::fs::read(sb.dir.path().join("reports/tiny/heatmap.png")).expect("heatmap.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let html =
        std::fs::read_to_string(sb.dir.path().join("reports/tiny/index.html")).expect("index.html");
    for c in &cells {
        assert!(html.contains(&c.id), "index.html lacks cell {}", c.id);
    }

    let again = sb.run(&["run", "tiny.toml"]);
    let err = text(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(
        err.contains("all 4 cells are done: nothing to train"),
        "{err}"
    );
    let after = sb.cells();
    assert!(
        after
            .iter()
            .all(|c| c.attempts == 1 && c.state == CellState::Done),
        "a done cell was run again"
    );

    let status = text(&sb.run(&["status", "tiny"]).stdout);
    assert!(
        status.contains("4 cells") && status.contains("4 done"),
        "{status}"
    );
}

#[test]
fn plan_prints_every_cell_without_running_anything() {
    let sb = Sandbox::new(
        "lr_a = { log2 = [-12, -10] }\nratio = [1, 16]\nseeds = [0, 1]",
        4,
    );
    let out = sb.run(&["plan", "tiny.toml"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("12 cells = 6 (η_A, η_B) points (3 η_A values) × 2 seed(s)"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 2 + 12, "{stdout}");
    assert!(
        !sb.dir.path().join("state").exists(),
        "plan must not create a store"
    );
}

/// A halving sweep's plan says where its rungs are (as fractions and as steps) and what each
/// promotion keeps, before the cells; a grid sweep's plan has no such line (above).
#[test]
fn plan_of_a_halving_sweep_names_its_rungs_and_what_they_keep() {
    let sb = Sandbox::new(
        "lr_a = { log2 = [-12, -10] }\nratio = [1, 16]\nseeds = [0]\n\n[search]\n\
         strategy = \"halving\"\nreduction = 3\nrungs = [0.25, 0.5, 1.0]",
        8,
    );
    let out = sb.run(&["plan", "tiny.toml"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = stdout.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with("search: successive halving, rungs at 1/4, 1/2, 1 of each cell's budget (steps 2, 4, 8)")
            && line.contains("keeps the best 1/3 of the points")
            && line.contains("the best 2 of every η_A row"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 3 + 6, "{stdout}");
}

/// Every sweep shipped in `sweeps/` parses, validates and finds its model and data (which
/// `scripts/setup.sh` fetches): `etagrid plan` on each exits 0 and lists its cells.
#[test]
fn every_shipped_sweep_plans() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sweeps");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("sweeps/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for f in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_etagrid"))
            .arg("plan")
            .arg(f)
            .output()
            .expect("run etagrid plan");
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(" cells = "),
            "{}: {}{}",
            f.display(),
            stdout,
            text(&out.stderr)
        );
        let halving = std::fs::read_to_string(f)
            .expect("read")
            .contains("strategy = \"halving\"");
        assert_eq!(
            stdout.contains("search: successive halving"),
            halving,
            "{}: {stdout}",
            f.display()
        );
    }
}

#[test]
fn a_bad_sweep_file_fails_with_the_file_key_and_line() {
    let sb = Sandbox::new("lr_a = [1e-3]\nlr_b = [1e-3]\nlerning_rate = 3", 4);
    let out = sb.run(&["plan", "tiny.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("tiny.toml") && err.contains("lerning_rate") && err.contains("line 19"),
        "{err}"
    );
}

#[test]
fn a_nan_loss_marks_the_cell_diverged_not_failed() {
    let sb = Sandbox::new("lr_a = [1e-3]\nlr_b = [1e-3, 1e30]", 6);
    let out = sb.run(&["run", "tiny.toml", "--no-report"]);
    assert!(
        out.status.success(),
        "diverged cells are a result, not an error: {}",
        text(&out.stderr)
    );
    let cells = sb.cells();
    let big = cells.iter().find(|c| c.lr_b > 1.0).expect("cell");
    assert_eq!(big.state, CellState::Diverged, "{:?}", big.error);
    assert!(
        big.step.expect("step") < 6,
        "training must stop at the divergence"
    );
    let ok = cells.iter().find(|c| c.lr_b < 1.0).expect("cell");
    assert_eq!(ok.state, CellState::Done);
}

/// Starts `etagrid run`, waits until its stderr reports the first finished cell, then sends
/// `signal` to it. Returns the run's exit status.
fn interrupt_after_first_cell(sb: &Sandbox, signal: i32) -> std::process::ExitStatus {
    let mut child = sb
        .cmd(&["run", "tiny.toml", "--no-report"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.expect("line").contains(": done") {
            break;
        }
    }
    // SAFETY: signalling our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    for _ in lines {} // drain, so the child never blocks on a full pipe
    child.wait().expect("wait")
}

#[test]
fn killing_the_run_mid_sweep_and_rerunning_completes_only_the_remaining_cells() {
    let sb = Sandbox::new("lr_a = [1e-4, 1e-3, 1e-2]\nlr_b = [1e-3, 1e-2]", 40);
    let status = interrupt_after_first_cell(&sb, libc::SIGKILL);
    assert!(!status.success());
    let before = sb.cells();
    let done_before: Vec<_> = before
        .iter()
        .filter(|c| c.state == CellState::Done)
        .map(|c| c.id.clone())
        .collect();
    assert!(
        !done_before.is_empty() && done_before.len() < 6,
        "kill came too late to test anything: {} done",
        done_before.len()
    );

    let out = sb.run(&["run", "tiny.toml", "--no-report"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{} to run", 6 - done_before.len())),
        "{err}"
    );
    let after = sb.cells();
    assert!(after.iter().all(|c| c.state == CellState::Done));
    for c in after.iter().filter(|c| done_before.contains(&c.id)) {
        assert_eq!(
            c.attempts, 1,
            "cell {} finished before the kill but ran again",
            c.id
        );
    }
}

#[test]
fn ctrl_c_stops_the_workers_and_leaves_unfinished_cells_pending() {
    let sb = Sandbox::new("lr_a = [1e-4, 1e-3, 1e-2]\nlr_b = [1e-3, 1e-2]", 40);
    let status = interrupt_after_first_cell(&sb, libc::SIGINT);
    assert_eq!(
        status.code(),
        Some(130),
        "an interrupted run exits with 130"
    );
    let cells = sb.cells();
    assert!(
        cells
            .iter()
            .all(|c| matches!(c.state, CellState::Done | CellState::Pending)),
        "{:?}",
        cells.iter().map(|c| c.state).collect::<Vec<_>>()
    );
    assert!(cells.iter().any(|c| c.state == CellState::Pending));
    // Interrupted cells were not charged an attempt.
    assert!(cells
        .iter()
        .filter(|c| c.state == CellState::Pending)
        .all(|c| c.attempts == 0));
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(train_fixture(name).join("reference.json")).expect("read"),
    )
    .expect("json")
}

/// `etagrid predict` output: one logits row per input line.
fn predict(sb: &Sandbox, args: &[&str]) -> Vec<Vec<f64>> {
    let mut all = vec!["predict", "--json"];
    all.extend_from_slice(args);
    let out = sb.run(&all);
    assert!(
        out.status.success(),
        "predict failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            serde_json::from_value(v["logits"].clone()).expect("logits")
        })
        .collect()
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}

#[test]
fn predict_gives_transformers_logits_for_single_and_pair_inputs() {
    let sb = Sandbox::new("lr_a = [1e-3]\nlr_b = [1e-3]", 1);
    let r = reference("tiny-bert");
    let lines: Vec<String> = r["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| i.to_string())
        .collect();
    std::fs::write(sb.dir.path().join("in.jsonl"), lines.join("\n")).expect("write");
    let model = train_fixture("tiny-bert").display().to_string();
    // Batches of 4: the inputs are padded differently than alone, which must not matter.
    let got = predict(
        &sb,
        &[
            "--model",
            &model,
            "--input",
            "in.jsonl",
            "--batch-size",
            "4",
        ],
    );
    let want: Vec<Vec<f64>> = serde_json::from_value(r["logits"].clone()).expect("logits");
    let d = max_diff(&got, &want);
    assert!(d <= 1e-4, "predict differs from transformers by {d:e}");
}

#[test]
fn predict_lm_gives_the_causal_lms_next_token_logits() {
    let sb = Sandbox::new("lr_a = [1e-3]\nlr_b = [1e-3]", 1);
    let r = reference("tiny-gpt2");
    let lines: Vec<String> = r["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(sb.dir.path().join("in.jsonl"), lines.join("\n")).expect("write");
    let model = train_fixture("tiny-gpt2").display().to_string();
    let got = predict(&sb, &["--model", &model, "--input", "in.jsonl", "--lm"]);
    let want: Vec<Vec<f64>> =
        serde_json::from_value(r["next_token_logits"].clone()).expect("logits");
    let d = max_diff(&got, &want);
    assert!(
        d <= 1e-4,
        "next-token logits differ from transformers by {d:e}"
    );
}

#[test]
fn the_best_cells_exported_adapter_gives_the_same_logits_in_predict_and_in_peft() {
    let sb = Sandbox::new("lr_a = [1e-3]\nlr_b = [1e-2, 1e-1]", 8);
    let out = sb.run(&["run", "tiny.toml", "--no-report"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cells = sb.cells();
    let best = cells
        .iter()
        .filter_map(|c| c.metric)
        .fold(f64::MIN, f64::max);
    let exp = sb.run(&["export", "tiny", "--cell", "best", "--out", "adapter"]);
    let msg = text(&exp.stderr);
    assert!(exp.status.success(), "{msg}");
    let exported = cells
        .iter()
        .find(|c| msg.contains(&c.id))
        .expect("the message names the cell");
    assert_eq!(
        exported.metric,
        Some(best),
        "exported a cell that is not (one of) the best: {msg}"
    );
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "labels.json",
    ] {
        assert!(
            sb.dir.path().join("adapter").join(f).exists(),
            "{f} missing"
        );
    }
    // Exporting into a non-empty directory is refused (nothing is overwritten).
    assert!(!sb
        .run(&["export", "tiny", "--out", "adapter"])
        .status
        .success());

    let inputs = [
        "the movie was very good",
        "where is tokyo ?",
        "the plot was so dull",
    ];
    let lines: Vec<String> = inputs
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(sb.dir.path().join("in.jsonl"), lines.join("\n")).expect("write");
    let model = train_fixture("tiny-bert").display().to_string();
    let ours = predict(
        &sb,
        &[
            "--model",
            &model,
            "--adapter",
            "adapter",
            "--input",
            "in.jsonl",
        ],
    );
    let base = predict(&sb, &["--model", &model, "--input", "in.jsonl"]);
    assert!(max_diff(&ours, &base) > 1e-3, "the adapter changed nothing");

    // PEFT loads the same directory onto transformers' model.
    let tok = tokenizers::Tokenizer::from_file(train_fixture("tiny-bert").join("tokenizer.json"))
        .expect("tokenizer");
    let ids: Vec<Vec<u32>> = inputs
        .iter()
        .map(|t| tok.encode(*t, true).expect("encode").get_ids().to_vec())
        .collect();
    let python = std::env::var("VIRTUAL_ENV")
        .map(|v| format!("{v}/bin/python"))
        .unwrap_or_else(|_| "python3".into());
    let peft = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/peft_logits.py"))
        .arg(&model)
        .arg(sb.dir.path().join("adapter"))
        .arg(serde_json::to_string(&ids).expect("ids"))
        .arg("0")
        .output()
        .expect("python");
    assert!(peft.status.success(), "{}", text(&peft.stderr));
    let theirs: Vec<Vec<f64>> = serde_json::from_slice(&peft.stdout).expect("json");
    let d = max_diff(&ours, &theirs);
    assert!(
        d <= 1e-4,
        "PEFT's logits with the exported adapter differ from etagrid predict by {d:e}"
    );
}

#[test]
fn report_and_export_only_count_the_current_grid_after_the_sweep_file_changes() {
    let sb = Sandbox::new("lr_a = [1e-3]\nlr_b = [1e-2]", 4);
    assert!(sb
        .run(&["run", "tiny.toml", "--no-report"])
        .status
        .success());
    let old: Vec<String> = sb.cells().into_iter().map(|c| c.id).collect();
    // Same grid, other steps: new cell ids; the old cell stays in the store.
    let toml = std::fs::read_to_string(sb.dir.path().join("tiny.toml")).expect("read");
    std::fs::write(
        sb.dir.path().join("tiny.toml"),
        toml.replace("steps = 4", "steps = 6"),
    )
    .expect("write");
    let out = sb.run(&["run", "tiny.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let html =
        std::fs::read_to_string(sb.dir.path().join("reports/tiny/index.html")).expect("index.html");
    for id in &old {
        assert!(
            !html.contains(id.as_str()),
            "the report shows cell {id} of the old grid"
        );
    }
    let exp = sb.run(&["export", "tiny", "--out", "adapter"]);
    let msg = text(&exp.stderr);
    assert!(exp.status.success(), "{msg}");
    assert!(
        !old.iter().any(|id| msg.contains(id.as_str())),
        "exported a cell of the old grid: {msg}"
    );
}

/// Commands the front does not run, and --help, go to etagrid-torch under the name `etagrid`
/// (tests/front.rs checks the front by itself).
#[test]
fn other_commands_and_help_go_to_etagrid_torch_under_the_name_etagrid() {
    let help = Command::new(env!("CARGO_BIN_EXE_etagrid"))
        .arg("--help")
        .output()
        .expect("etagrid --help runs");
    let help = text(&help.stdout);
    assert!(
        help.contains("Usage: etagrid ") && help.contains("predict"),
        "{help}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_etagrid"))
        .args(["no-such-command"])
        .output()
        .expect("etagrid runs");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "clap's usage error, from etagrid-torch"
    );
    assert!(text(&bad.stderr).contains("no-such-command"));
}

/// `etagrid plan … | head -1` closes the pipe early: etagrid must end like other Unix tools
/// (killed by SIGPIPE, nothing on stderr), not panic with "failed printing to stdout".
#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let sb = Sandbox::new("lr_a = { log2 = [-12, -10] }\nratio = [1, 16]", 4);
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two new descriptors that we then own.
    #[allow(unsafe_code)]
    let (read, write) = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    drop(read); // the reader is gone before etagrid writes anything
    let out = sb
        .cmd(&["plan", "tiny.toml"])
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run etagrid");
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}

#[test]
fn report_best_and_compare_read_the_store_and_an_unstarted_sweep_is_a_clear_error() {
    let sb = Sandbox::new("lr_a = [1e-3]\nratio = [1, 16]", 4);
    let out = sb.run(&["run", "tiny.toml", "--enqueue-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Nothing finished: an error that says so and what to do, and no report directory.
    let rep = sb.run(&["report", "tiny"]);
    let err = text(&rep.stderr);
    assert_eq!(rep.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no cell has finished") && err.contains("pending 2"),
        "{err}"
    );
    assert!(err.contains("etagrid run"), "{err}");
    assert!(!sb.dir.path().join("reports/tiny").exists());

    let run = sb.run(&["run", "tiny.toml"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let dir = sb.dir.path().join("reports/tiny");
    for f in [
        "index.html",
        "heatmap.svg",
        "curves.png",
        "cells.csv",
        "cells.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // The curves come from the store (log_every = 2, eval_every = 4).
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).expect("model"))
            .expect("model.json parses");
    let best_curves = &model["curves"]["best"];
    assert_eq!(
        best_curves["train_loss"].as_array().map(Vec::len),
        Some(2),
        "{best_curves}"
    );
    assert!(!best_curves["eval_metric"]
        .as_array()
        .is_none_or(Vec::is_empty));
    let csv = std::fs::read_to_string(dir.join("cells.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 3, "header + one row per cell:\n{csv}");
    // Provenance: the store's start and finish times (UTC text from the store).
    let html = std::fs::read_to_string(dir.join("index.html")).expect("index");
    for th in ["first cell started", "last cell finished"] {
        let at = html.find(&format!("<th>{th}</th><td>")).expect(th) + th.len() + 13;
        assert!(html[at..].starts_with("20"), "{th}: {}", &html[at..at + 30]);
    }

    // `best --json` names a cell with the highest metric (ties go to the first in grid order).
    let best = sb.run(&["best", "tiny", "--json"]);
    assert!(best.status.success(), "{}", text(&best.stderr));
    let v: serde_json::Value = serde_json::from_slice(&best.stdout).expect("best --json parses");
    let cells = sb.cells();
    let top = cells
        .iter()
        .filter_map(|c| c.metric)
        .fold(f64::NEG_INFINITY, f64::max);
    let named = v["best"]["cell_ids"][0].as_str().expect("a cell id");
    let named = cells
        .iter()
        .find(|c| c.id == named)
        .expect("a cell of the sweep");
    assert_eq!(named.metric, Some(top), "{v}");
    assert_eq!(v["best"]["metric"].as_f64(), Some(top), "{v}");
    assert_eq!(v["cells_done"].as_u64(), Some(2));

    // A compare report over several sweeps (here the same one twice) goes to --out.
    let cmp = sb.run(&["report", "tiny", "tiny", "--out", "cmp"]);
    assert!(cmp.status.success(), "{}", text(&cmp.stderr));
    for f in [
        "index.html",
        "heatmaps.png",
        "heatmaps.svg",
        "lambda-profile.png",
    ] {
        assert!(
            sb.dir.path().join("cmp").join(f).is_file(),
            "cmp/{f} missing"
        );
    }
}

/// `etagrid refine`: a finished sweep's best point gives a 3 × 3 sweep at half-octave steps around
/// it, next to the sweep's file, which runs like any sweep; its centre is the best cell again, so
/// it ends with the same metric. An existing file is not overwritten, a file elsewhere (its paths
/// would break) is refused, and an unstarted sweep is a clear error.
#[test]
fn refine_writes_a_half_octave_sweep_around_the_best_point_that_runs() {
    let sb = Sandbox::new("lr_a = [1e-3, 1e-2]\nratio = [1, 16]", 4);
    let out = sb.run(&["run", "tiny.toml", "--enqueue-only"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let early = sb.run(&["refine", "tiny"]);
    failed_with(&early, &["no cell has finished"]);

    let run = sb.run(&["run", "tiny.toml", "--no-report"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let (a, l, m) = sb.best();

    let refine = sb.run(&["refine", "tiny"]);
    assert!(refine.status.success(), "{}", text(&refine.stderr));
    let file = sb.dir.path().join("tiny-refine.toml");
    assert!(
        text(&refine.stderr).contains("etagrid run"),
        "{}",
        text(&refine.stderr)
    );
    let spec = etagrid_spec::SweepSpec::load(&file).expect("the refined sweep loads");
    assert_eq!(spec.name, "tiny-refine");
    let cells = spec.cells();
    assert_eq!(cells.len(), 9);
    for f in [0.5f64.sqrt(), 1.0, 2f64.sqrt()] {
        assert!(
            cells.iter().any(|c| close(c.config.lr_a, a * f)),
            "η_A {}",
            a * f
        );
        assert!(
            cells
                .iter()
                .any(|c| close(c.config.lr_b / c.config.lr_a, l * f)),
            "λ {}",
            l * f
        );
    }
    // Not again over the file, and not elsewhere.
    let again = sb.run(&["refine", "tiny"]);
    failed_with(&again, &["exists"]);
    // Another file in the same directory: its own sweep name.
    let named = sb.run(&["refine", "tiny", "--out", "tiny-fine.toml"]);
    assert!(named.status.success(), "{}", text(&named.stderr));
    let fine = etagrid_spec::SweepSpec::load(&sb.dir.path().join("tiny-fine.toml")).expect("loads");
    assert_eq!(fine.name, "tiny-fine");
    let other = tempfile::tempdir().expect("tempdir");
    let away = other.path().join("x.toml");
    let away = sb.run(&["refine", "tiny", "--out", &away.display().to_string()]);
    failed_with(&away, &["directory"]);

    let run = sb.run(&["run", "tiny-refine.toml", "--no-report"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let refined = read_cells(&sb.dir.path().join("state/etagrid.sqlite"), "tiny-refine");
    assert_eq!(refined.len(), 9);
    assert!(refined.iter().all(|c| c.state == CellState::Done));
    assert_eq!(
        metric_at(&refined, a, l),
        Some(m),
        "the centre is the best cell trained again"
    );
}

/// `[search] refine = true`: one `etagrid run` of a halving sweep also writes and runs its
/// refinement, the 3 × 3 sweep `tiny-refine` beside it, whose centre is the halving pick trained
/// again at full budget: the same metric (a cell paused at rungs and resumed ends as one that
/// never stopped). A rerun continues that file and trains nothing; a file of that name that is
/// another sweep is refused.
#[test]
fn a_halving_sweep_with_refine_runs_its_refinement_in_the_same_run() {
    let sb = Sandbox::new("lr_a = [1e-3, 1e-2]\nratio = [1, 4, 16]", 9);
    let file = sb.dir.path().join("tiny.toml");
    let sweep = std::fs::read_to_string(&file).expect("sweep");
    let with_search = format!("{sweep}[search]\nstrategy = \"halving\"\nrefine = true\n");
    std::fs::write(&file, with_search).expect("write sweep");
    let run = sb.run(&["run", "tiny.toml", "--no-report"]);
    let err = text(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("[search] refine: running"), "{err}");
    let pruned = sb.cells().iter().filter(|c| c.pruned).count();
    assert!(pruned > 0, "halving pruned nothing");
    // The run's closing line counts the pruned cells apart from the done ones.
    assert!(
        err.contains(&format!(
            "— {} done, {pruned} pruned by successive halving",
            6 - pruned
        )),
        "{err}"
    );
    // So does `etagrid status`'s header, which names every state.
    let status = sb.run(&["status", "tiny"]);
    let out = text(&status.stdout);
    assert!(
        out.contains(&format!(
            "sweep tiny: 6 cells — 0 pending, 0 running, {} done, {pruned} pruned by successive \
             halving, 0 failed, 0 diverged",
            6 - pruned
        )),
        "{out}"
    );

    let (a, l, m) = sb.best();
    let db = sb.dir.path().join("state/etagrid.sqlite");
    let refined = read_cells(&db, "tiny-refine");
    assert_eq!(refined.len(), 9);
    assert!(
        refined
            .iter()
            .all(|c| c.state == CellState::Done && c.attempts == 1),
        "{refined:?}"
    );
    assert_eq!(
        metric_at(&refined, a, l),
        Some(m),
        "the centre is the pick trained again"
    );

    let again = sb.run(&["run", "tiny.toml", "--no-report"]);
    let err = text(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("written by an earlier run"), "{err}");
    let after = read_cells(&db, "tiny-refine");
    assert!(
        after.iter().all(|c| c.attempts == 1),
        "retrained: {after:?}"
    );

    // A refinement written around another point (the sweep's best moved since) is refused.
    let refine_file = sb.dir.path().join("tiny-refine.toml");
    let text_of = std::fs::read_to_string(&refine_file).expect("refined file");
    let moved: String = text_of
        .lines()
        .map(|l| {
            if l.starts_with("lr_a = [") {
                "lr_a = [1e-5, 2e-5, 4e-5]".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&refine_file, moved).expect("write");
    let stale = sb.run(&["run", "tiny.toml", "--no-report"]);
    failed_with(&stale, &["was written around η_A = 2.0000e-5"]);
    std::fs::write(&refine_file, &text_of).expect("put it back");

    // A file of the refinement's name that is another sweep is not run over.
    let other = std::fs::read_to_string(sb.dir.path().join("tiny-refine.toml"))
        .expect("refined file")
        .replace("name = \"tiny-refine\"", "name = \"mine\"");
    std::fs::write(sb.dir.path().join("tiny-refine.toml"), other).expect("write");
    let refused = sb.run(&["run", "tiny.toml", "--no-report"]);
    failed_with(&refused, &["not the refinement of tiny"]);
}
