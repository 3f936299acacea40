//! End to end through the real binary on the CPU: the tiny BERT fixture (a real HF-format
//! checkpoint made by transformers) on a tiny 3-class task. Each test has its own state dir.

use etagrid_store::{CellState, Store};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sweep over the tiny model with `grid` as its [grid] body.
    fn new(grid: &str, steps: u64) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let model =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../etagrid-train/tests/fixtures/tiny-bert");
        let task = fixtures().join("tiny-task");
        let toml = format!(
            r#"name = "tiny"
[model]
path = "{model}"
[task]
train = "{train}"
eval = "{eval}"
[lora]
rank = 4
alpha = 8
[train]
steps = {steps}
batch_size = 8
max_seq_len = 32
log_every = 2
eval_every = 4
[grid]
{grid}
[resources]
devices = "cpu"
threads_per_cell = 1
"#,
            model = model.display(),
            train = task.join("train.csv").display(),
            eval = task.join("eval.csv").display(),
        );
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
        let db = self.dir.path().join("state/etagrid.sqlite");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let s = Store::open(&db).await.expect("open store");
                let c = s.cells("tiny").await.expect("cells");
                s.close().await;
                c
            })
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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
