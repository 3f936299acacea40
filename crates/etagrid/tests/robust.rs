//! Issue 12 end to end through the real binary: every bad input refused before anything is
//! stored, the run lock going with the store, a changed input never taken for a finished cell,
//! input errors that use no attempt, and `status` on unknown sweeps and dead runs. The cells run
//! in `tests/robust-worker.sh` (ETAGRID_WORKER), a fake worker; the inputs are checked for real
//! against a copy of the tiny BERT fixture and the tiny task.

mod common;

use common::{manifest, text, tiny_bert, tiny_task, with_store};
use etagrid_store::{CellRow, CellState, Store};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SWEEP: &str = r#"name = "tiny"
[model]
path = "model"
[task]
train = "data/train.csv"
eval = "data/eval.csv"
[lora]
rank = 4
alpha = 8
target_modules = ["query", "value"]
[train]
steps = 4
batch_size = 8
max_seq_len = 32
[grid]
lr_a = [1e-3, 1e-2]
lr_b = [1e-2]
[resources]
devices = "cpu"
threads_per_cell = 1
"#;

/// A project in a temp dir: `model/` (a copy of the tiny BERT), `data/{train,eval}.csv` (the
/// tiny task), `tiny.toml`, and the store `store.sqlite` that every command names with --db.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = tiny_bert();
        std::fs::create_dir_all(dir.path().join("model")).expect("mkdir");
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(model.join(f), dir.path().join("model").join(f)).expect("copy model");
        }
        std::fs::create_dir_all(dir.path().join("data")).expect("mkdir");
        for f in ["train.csv", "eval.csv"] {
            std::fs::copy(tiny_task(f), dir.path().join("data").join(f)).expect("copy data");
        }
        std::fs::write(dir.path().join("tiny.toml"), SWEEP).expect("write sweep");
        Project { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn edit(&self, rel: &str, f: impl FnOnce(String) -> String) {
        let p = self.path(rel);
        let text = std::fs::read_to_string(&p).expect("read");
        std::fs::write(&p, f(text)).expect("write");
    }

    fn db(&self) -> PathBuf {
        self.path("store.sqlite")
    }

    /// `etagrid --state-dir <state> --db store.sqlite ARGS`, cells run by the fake worker in `mode`.
    fn cmd(&self, state: &str, mode: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_etagrid"));
        c.current_dir(self.dir.path())
            .arg("--state-dir")
            .arg(self.path(state))
            .arg("--db")
            .arg(self.db())
            .args(args)
            .env("ETAGRID_WORKER", manifest().join("tests/robust-worker.sh"))
            .env("FAKE_DIR", self.dir.path())
            .env("FAKE_MODE", mode);
        c
    }

    fn run(&self, mode: &str, args: &[&str]) -> Output {
        self.cmd("state", mode, args).output().expect("run etagrid")
    }

    /// Cells started by the fake worker so far, one entry per start.
    fn starts(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("starts.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn store<T>(&self, f: impl AsyncFnOnce(&Store) -> T) -> T {
        with_store(self.db(), f)
    }

    fn cells(&self) -> Vec<CellRow> {
        self.store(async |s| s.cells("tiny").await.expect("cells"))
    }

    fn sweeps(&self) -> Vec<String> {
        if !self.db().exists() {
            return Vec::new();
        }
        self.store(async |s| s.sweep_names().await.expect("names"))
    }
}

/// A child process killed (with its process group) when the test ends, pass or fail.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test created for the child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------- validation before anything is stored

type Breaker = fn(&Project);

/// Every bad input of the issue: how to break the project, and words the one error must contain.
fn bad_inputs() -> Vec<(&'static str, Breaker, Vec<&'static str>)> {
    vec![
        (
            "a ragged CSV row",
            |p| p.edit("data/train.csv", |t| t + "a row,with,three fields\n"),
            vec!["train.csv"],
        ),
        (
            "non-UTF-8 bytes",
            |p| {
                let mut b = std::fs::read(p.path("data/eval.csv")).expect("read");
                b.extend_from_slice(b"caf\xe9 \xff\xfe,pos\n");
                std::fs::write(p.path("data/eval.csv"), b).expect("write");
            },
            vec!["eval.csv"],
        ),
        (
            "an empty text",
            |p| p.edit("data/train.csv", |t| t + ",pos\n"),
            vec!["train.csv"],
        ),
        (
            "a missing label column",
            |p| {
                p.edit("tiny.toml", |t| {
                    t.replace("[lora]", "label_column = \"sentiment\"\n[lora]")
                })
            },
            vec!["sentiment"],
        ),
        (
            "a JSONL line that is not JSON",
            |p| {
                std::fs::write(
                    p.path("data/train.jsonl"),
                    "{\"text\": \"good\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": \"neg\"}\nnot json\n",
                )
                .expect("write");
                p.edit("tiny.toml", |t| {
                    t.replace("data/train.csv", "data/train.jsonl")
                });
            },
            vec!["train.jsonl:3"],
        ),
        (
            "an eval label unseen in training",
            |p| p.edit("data/eval.csv", |t| t + "the plot was fine,neutral\n"),
            vec!["eval.csv", "neutral"],
        ),
        (
            "a single-class train set",
            |p| {
                p.edit("data/train.csv", |t| {
                    let mut lines = t.lines();
                    let header = lines.next().unwrap_or_default().to_owned();
                    let pos: Vec<&str> = lines.filter(|l| l.ends_with(",pos")).collect();
                    format!("{header}\n{}\n", pos.join("\n"))
                })
            },
            vec!["train.csv", "single label"],
        ),
        (
            "max_seq_len beyond the model's positions",
            |p| {
                p.edit("tiny.toml", |t| {
                    t.replace("max_seq_len = 32", "max_seq_len = 128")
                })
            },
            vec!["max_seq_len", "64"],
        ),
        (
            "target_modules that match nothing",
            |p| {
                p.edit("tiny.toml", |t| {
                    t.replace("[\"query\", \"value\"]", "[\"q_proj\", \"v_proj\"]")
                })
            },
            vec!["target_modules", "q_proj"],
        ),
        (
            "a truncated model.safetensors",
            |p| {
                let b = std::fs::read(p.path("model/model.safetensors")).expect("read");
                std::fs::write(p.path("model/model.safetensors"), &b[..b.len() / 2])
                    .expect("write");
            },
            vec!["model.safetensors"],
        ),
        (
            "a missing tokenizer.json",
            |p| std::fs::remove_file(p.path("model/tokenizer.json")).expect("rm"),
            vec!["tokenizer.json"],
        ),
        (
            "a broken tokenizer.json",
            |p| std::fs::write(p.path("model/tokenizer.json"), "{\"version\": ").expect("write"),
            vec!["tokenizer.json"],
        ),
        (
            "a config of the wrong shape",
            |p| {
                p.edit("model/config.json", |t| {
                    t.replace("\"hidden_size\"", "\"hidden_size\": \"wide\", \"unused\"")
                })
            },
            // serde names the type, not the key: file and problem.
            vec!["config.json", "invalid type: string \"wide\""],
        ),
        (
            "causal_lm on a BERT",
            |p| {
                std::fs::write(
                    p.path("data/lm.jsonl"),
                    "{\"prompt\": \"hi\", \"response\": \"hello\"}\n",
                )
                .expect("write");
                p.edit("tiny.toml", |t| {
                    t.replace("data/train.csv", "data/lm.jsonl")
                        .replace("data/eval.csv", "data/lm.jsonl")
                        .replace("[lora]", "kind = \"causal_lm\"\n[lora]")
                })
            },
            vec!["causal_lm", "\"bert\""],
        ),
        (
            "an unsupported model_type",
            |p| p.edit("model/config.json", |t| t.replace("\"bert\"", "\"t5\"")),
            vec!["\"t5\"", "bert, roberta, gpt2, llama"],
        ),
    ]
}

#[test]
fn every_bad_input_is_refused_by_plan_and_run_before_anything_is_stored() {
    for (case, break_it, words) in bad_inputs() {
        let p = Project::new();
        break_it(&p);
        for args in [
            &["plan", "tiny.toml"][..],
            &["run", "tiny.toml"],
            &["run", "tiny.toml", "--enqueue-only"],
        ] {
            let out = p.run("ok", args);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{case}: {args:?}:\n{err}");
            let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(error_lines.len(), 1, "{case}: {args:?}: one error:\n{err}");
            for w in &words {
                assert!(err.contains(w), "{case}: {args:?}: no {w:?} in:\n{err}");
            }
            assert!(
                p.sweeps().is_empty(),
                "{case}: {args:?}: a sweep was stored:\n{err}"
            );
            assert!(p.starts().is_empty(), "{case}: {args:?}: a worker started");
        }
    }
}

#[test]
fn the_unbroken_project_passes_the_checks_and_runs() {
    let p = Project::new();
    let out = p.run("ok", &["run", "tiny.toml", "--no-report"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("inputs checked"), "{err}");
    assert_eq!(p.starts().len(), 2, "{err}");
    assert!(p.cells().iter().all(|c| c.state == CellState::Done));
}

// ---------------------------------------------------------------- a changed input

#[test]
fn an_edited_data_file_is_never_taken_for_a_finished_cell() {
    let p = Project::new();
    let out = p.run("ok", &["run", "tiny.toml", "--no-report"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first: Vec<String> = p.cells().into_iter().map(|c| c.id).collect();
    assert_eq!(first.len(), 2);
    let out = p.run("ok", &["run", "tiny.toml", "--no-report"]);
    assert!(text(&out.stderr).contains("nothing to train"));
    assert_eq!(p.starts().len(), 2);

    // Relabel one training example: same file name, same size class, new content.
    p.edit("data/train.csv", |t| {
        t.replacen(
            "the ending was very funny,pos",
            "the ending was very funny,neg",
            1,
        )
    });
    let out = p.run("ok", &["run", "tiny.toml", "--no-report"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("2 new"), "{err}");
    assert_eq!(p.starts().len(), 4, "both cells trained again:\n{err}");
    let cells = p.cells();
    assert_eq!(cells.len(), 4, "the old results stay in the store");
    let current: Vec<&CellRow> = cells.iter().filter(|c| !first.contains(&c.id)).collect();
    assert_eq!(current.len(), 2);
    assert!(current.iter().all(|c| c.state == CellState::Done));

    // The report counts the current grid only: 2 of 2, not 4.
    let out = p.run("ok", &["report", "tiny", "--reports", "reports"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("(2 of 2 cells done)"), "{err}");
}

// ---------------------------------------------------------------- input errors in a worker

#[test]
fn a_worker_input_error_uses_no_attempt_and_a_run_after_the_fix_needs_no_retry_failed() {
    let p = Project::new();
    // max_attempts = 3 by default: four runs that all hit the input error.
    for _ in 0..4 {
        let out = p.run("input-error", &["run", "tiny.toml", "--no-report"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("input error"), "{err}");
    }
    assert_eq!(p.starts().len(), 8, "every run started both cells again");
    for c in p.cells() {
        assert_eq!(c.state, CellState::Failed);
        assert_eq!(c.attempts, 0, "{c:?}");
        assert!(
            c.error
                .as_deref()
                .is_some_and(|e| e.starts_with("input error: ")),
            "{c:?}"
        );
    }
    // Fixed: the next run runs them, without --retry-failed.
    let out = p.run("ok", &["run", "tiny.toml", "--no-report"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(p.cells().iter().all(|c| c.state == CellState::Done));
}

#[test]
fn the_real_worker_exits_with_the_input_error_status_when_its_data_changed() {
    let p = Project::new();
    let out = p.run("ok", &["run", "tiny.toml", "--no-report"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = &p.cells()[0].id;
    let job = p.path(&format!("state/cells/tiny/{id}/job.json"));
    // The data file breaks after the run checked it; the token cache must not hide that.
    p.edit("data/train.csv", |t| t + "a row,with,three fields\n");
    std::fs::remove_dir_all(p.path("state/cache")).expect("rm cache");
    let out = Command::new(env!("CARGO_BIN_EXE_etagrid"))
        .current_dir(p.dir.path())
        .args(["worker", "--job"])
        .arg(&job)
        .output()
        .expect("worker");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(stdout.contains("\"event\":\"failed\""), "{stdout}");
    assert!(stdout.contains("train.csv"), "{stdout}");
}

// ---------------------------------------------------------------- two runs, one store

#[test]
fn a_second_run_from_another_state_dir_on_the_same_store_refuses_and_starts_nothing() {
    let p = Project::new();
    use std::os::unix::process::CommandExt;
    let mut first = Child(
        p.cmd(
            "state-a",
            "hold",
            &["run", "tiny.toml", "--no-report", "--cells-per-device", "2"],
        )
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("first run"),
    );
    let ids = {
        // The first run has started its cells (the fake worker holds them until released).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let started: Vec<_> = std::fs::read_dir(p.dir.path())
                .expect("ls")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("started-"))
                .collect();
            if started.len() == 2 {
                break p.cells().into_iter().map(|c| c.id).collect::<Vec<_>>();
            }
            assert!(
                Instant::now() < deadline,
                "the first run never started its cells"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Live run: `status` shows its cells running, not stale.
    let out = p
        .cmd("state-b", "ok", &["status", "tiny"])
        .output()
        .expect("status");
    let st = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(st.contains("running "), "{st}");
    assert!(!st.contains("stale"), "{st}");

    let second = p
        .cmd("state-b", "ok", &["run", "tiny.toml", "--no-report"])
        .output()
        .expect("second run");
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another `etagrid run` is running sweep tiny"),
        "{err}"
    );
    assert_eq!(
        p.starts().len(),
        2,
        "no cell was started twice: {:?}",
        p.starts()
    );
    for c in p.cells() {
        assert_eq!(
            c.state,
            CellState::Running,
            "the second run left them alone"
        );
        assert_eq!(c.attempts, 1);
    }

    std::fs::write(p.path("release"), "").expect("release");
    let status = first.0.wait().expect("first run");
    assert!(status.success());
    let cells = p.cells();
    assert!(cells
        .iter()
        .all(|c| c.state == CellState::Done && c.attempts == 1));
    assert_eq!(cells.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), ids);
    let mut starts = p.starts();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), 2, "each cell started once");
}

// ---------------------------------------------------------------- status

#[test]
fn status_of_an_unknown_sweep_is_an_error() {
    let p = Project::new();
    let out = p.run("ok", &["run", "tiny.toml", "--no-report"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = p.run("ok", &["status", "no-such-sweep"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no-such-sweep"), "{err}");
    assert!(err.contains("not in the store"), "{err}");
}

#[test]
fn status_calls_running_cells_of_a_dead_run_stale_and_gives_no_eta() {
    let p = Project::new();
    let out = p.run("ok", &["run", "tiny.toml", "--no-report"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A run died (kill -9) with a cell running: its lock went with it.
    let id = p.cells()[0].id.clone();
    p.store(async |s| {
        s.finish_cell("tiny", &id, &etagrid_store::Outcome::Interrupted)
            .await
            .expect("pending");
        assert!(s.start_cell("tiny", &id, "cpu").await.expect("start"));
    });
    let out = p.run("ok", &["status", "tiny"]);
    let st = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(st.contains(&format!("stale   {id}")), "{st}");
    assert!(st.contains("no `etagrid run` holds sweep tiny"), "{st}");
    assert!(!st.contains("eta ≈"), "{st}");
}
