//! Successive halving end to end (issue 11): `etagrid run` on a `[search] strategy = "halving"`
//! sweep with the real worker (the tiny BERT on the CPU, 9 grid points, rungs at 1, 3 and 9
//! steps), killed with `kill -9` between rungs and run again. The jobs go through
//! tests/halving-worker.sh, which logs each job's segment and, while the test asks it to, holds
//! the first job that continues from a rung so the run is killed with rung 0 decided and rung 1
//! not yet trained. Before it runs again, runs with an edited `[search]` are refused.

mod common;

use common::{manifest, text, tiny_sweep, with_store, CPU_RESOURCES};
use etagrid_store::testing::{test_server, TestDatabase};
use etagrid_store::{CellRow, CellState, RungRow, Store, StoreUrl};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NAME: &str = "halving";

struct Project {
    dir: tempfile::TempDir,
    /// `--db`: the SQLite file, or a fresh PostgreSQL database (dropped with `_pg`).
    db: String,
    _pg: Option<TestDatabase>,
}

impl Project {
    fn new(pg: Option<TestDatabase>) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = match &pg {
            Some(pg) => pg.url().to_owned(),
            None => dir.path().join("store.sqlite").display().to_string(),
        };
        let sweep = tiny_sweep(
            NAME,
            "lr_a = [1e-3, 3e-3, 1e-2]\nlr_b = [1e-2, 3e-2, 1e-1]\nseeds = [0]",
            9,
            0,
        ) + CPU_RESOURCES
            + "[search]\nstrategy = \"halving\"\nkeep_per_row = 1\nmin_tau = -1.0\n";
        std::fs::write(dir.path().join("halving.toml"), sweep).expect("write sweep");
        Project { dir, db, _pg: pg }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self, tag: &str, args: &[&str]) -> Command {
        let front = PathBuf::from(env!("CARGO_BIN_EXE_etagrid"));
        let real = front.with_file_name("etagrid-torch");
        assert!(
            real.exists(),
            "{} is missing: build it first (cargo build --release --bins -p etagrid-torch)",
            real.display()
        );
        let mut c = Command::new(&front);
        c.current_dir(self.dir.path())
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--db")
            .arg(&self.db)
            .args(args)
            .env("ETAGRID_WORKER", manifest().join("tests/halving-worker.sh"))
            .env("HALVING_REAL_WORKER", real)
            .env("HALVING_DIR", self.dir.path())
            .env("HALVING_RUN", tag);
        c
    }

    /// Each job's (run tag, resumed-from fraction or "start", cells).
    fn jobs(&self) -> Vec<(String, String, Vec<String>)> {
        std::fs::read_to_string(self.path("jobs.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut w = l.split_whitespace().map(str::to_owned);
                let tag = w.next().expect("tag");
                let from = w.next().expect("from");
                (tag, from, w.collect())
            })
            .collect()
    }

    fn store<T>(&self, f: impl AsyncFnOnce(&Store) -> T) -> T {
        let url: StoreUrl = self.db.parse().expect("store url");
        with_store(url, f)
    }

    fn cells(&self) -> Vec<CellRow> {
        self.store(async |s| s.cells(NAME).await.expect("cells"))
    }

    fn rungs(&self) -> Vec<RungRow> {
        self.store(async |s| s.halving_rungs(NAME).await.expect("rungs"))
    }
}

/// Waits (polling the file system, with a deadline) until `path` exists.
fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !path.exists() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs of the stopped sweep with its `[search]` edited (other rungs; a grid) are refused before
/// anything runs or changes, with an error naming the file, the key with its old and new values
/// and what to do — `--enqueue-only` too; the file is then put back as it was.
fn edited_search_is_refused(p: &Project) {
    let file = p.path("halving.toml");
    let original = std::fs::read_to_string(&file).expect("sweep");
    // Cell rows compare by their Debug text (CellRow has no PartialEq).
    let stored = || format!("{:?}", (p.cells(), p.rungs(), p.jobs()));
    let before = stored();
    for (from, to, change) in [
        (
            "keep_per_row = 1\n",
            "keep_per_row = 1\nrungs = [0.5, 1.0]\n",
            "rungs: [1/9, 1/3, 1.0] (the default) → [0.5, 1.0]",
        ),
        (
            "strategy = \"halving\"",
            "strategy = \"grid\"",
            "strategy: \"halving\" → \"grid\"",
        ),
    ] {
        assert!(original.contains(from));
        std::fs::write(&file, original.replacen(from, to, 1)).expect("edit [search]");
        for flag in ["--no-report", "--enqueue-only"] {
            let out = p
                .cmd("edited", &["run", "halving.toml", flag])
                .output()
                .expect("run edited");
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(
                err.lines().any(|l| l.starts_with(
                    "error: halving.toml: [search] is not what sweep `halving` started its \
                 successive halving with"
                )),
                "{err}"
            );
            assert!(
                err.contains(&format!("\n  {change}\n")),
                "{change:?} not in {err}"
            );
            assert!(
                err.contains("put the old values back in [search]") && err.contains("--state-dir"),
                "{err}"
            );
            assert_eq!(stored(), before, "a refused run trains and stores nothing");
        }
    }
    std::fs::write(&file, original).expect("put [search] back");
}

#[test]
fn a_halving_sweep_killed_between_rungs_resumes_without_repeating_a_finished_rung() {
    killed_between_rungs(Project::new(None));
}

/// The same on PostgreSQL (the `ETAGRID_TEST_PG` server that scripts/test.sh starts).
#[test]
fn on_postgres_a_halving_sweep_killed_between_rungs_resumes_without_repeating_a_rung() {
    let Some(server) = test_server() else { return };
    let pg = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(TestDatabase::create(&server));
    killed_between_rungs(Project::new(Some(pg)));
}

fn killed_between_rungs(p: Project) {
    std::fs::write(p.path("hold"), "").expect("hold");
    let mut run = p
        .cmd("first", &["run", "halving.toml", "--no-report"])
        .process_group(0)
        .spawn()
        .expect("start etagrid run");
    wait_for(&p.path("held"), "the first job of rung 1");
    // SAFETY: the process group this test created for the run (scheduler and workers).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-(run.id() as i32), libc::SIGKILL);
    }
    let _ = run.wait();

    // Killed between rungs: rung 0 ran for all 9 cells and was decided; rung 1 has not ended.
    let rungs = p.rungs();
    assert_eq!(rungs.len(), 1, "{rungs:?}");
    let decided = rungs[0].clone();
    assert_eq!((decided.rung, decided.points), (0, 9));
    assert!(decided.promoted >= 3 && decided.promoted < 9, "{decided:?}");
    let cells = p.cells();
    let pruned0: Vec<&CellRow> = cells.iter().filter(|c| c.pruned).collect();
    assert_eq!(pruned0.len() as i64, 9 - decided.promoted, "{cells:#?}");
    for c in &pruned0 {
        assert_eq!(
            (c.state, c.rung, c.step),
            (CellState::Done, Some(0), Some(1))
        );
        assert!(c.metric.is_some_and(f64::is_finite));
    }
    let first_jobs = p.jobs();
    let rung0: Vec<&String> = first_jobs
        .iter()
        .filter(|j| j.1 == "start")
        .flat_map(|j| &j.2)
        .collect();
    assert_eq!(
        rung0.len(),
        9,
        "every cell trained rung 0 once: {first_jobs:?}"
    );
    // The fraction rung-1 jobs continue from, as the job files write it, and the cells that
    // finished rung 1 before the kill (on the other CPU slot).
    let rung1_from = first_jobs
        .iter()
        .find(|j| j.1 != "start")
        .map(|j| j.1.clone())
        .expect("a rung-1 job");
    let paused1: Vec<String> = cells
        .iter()
        .filter(|c| c.rung == Some(1) && c.state == CellState::Done)
        .map(|c| c.id.clone())
        .collect();

    std::fs::remove_file(p.path("hold")).expect("release");
    edited_search_is_refused(&p);
    let out = p
        .cmd("second", &["run", "halving.toml", "--no-report"])
        .output()
        .expect("run again");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");

    // No rung-0 segment ran again, and the decision of rung 0 is the one recorded before the
    // kill; rung 1 was decided once.
    let jobs = p.jobs();
    let second: Vec<_> = jobs.iter().filter(|j| j.0 == "second").collect();
    assert!(!second.is_empty());
    assert!(
        second.iter().all(|j| j.1 != "start"),
        "a rung-0 segment ran again: {second:?}"
    );
    let rungs = p.rungs();
    assert_eq!(rungs.len(), 2, "{rungs:?}");
    assert_eq!(rungs[0], decided, "rung 0's decision kept as recorded");
    // A cell that finished rung 1 before the kill is not trained on rung 1 again.
    for id in &paused1 {
        let again = second
            .iter()
            .filter(|j| j.1 == rung1_from && j.2.contains(id))
            .count();
        assert_eq!(again, 0, "cell {id} ran rung 1 again: {second:?}");
    }
    let cells = p.cells();
    let finished: Vec<&CellRow> = cells.iter().filter(|c| !c.pruned).collect();
    assert!(!finished.is_empty() && finished.len() < 9, "{cells:#?}");
    for c in &finished {
        assert_eq!(
            (c.state, c.rung, c.step, c.total_steps),
            (CellState::Done, Some(2), Some(9), Some(9)),
            "{c:#?}"
        );
        // Its rung evaluations stayed in its curve through the restarts of its segments.
        let curve = p.store(async |s| s.curve(NAME, &c.id, "eval_accuracy").await.expect("curve"));
        let steps: Vec<i64> = curve.iter().map(|p| p.0).collect();
        assert_eq!(steps, [1, 3, 9], "cell {}: {curve:?}", c.id);
        assert!(c.device_s.is_some_and(|s| s > 0.0));
    }
    for c in cells.iter().filter(|c| c.pruned) {
        assert!(matches!(c.step, Some(1) | Some(3)), "{c:#?}");
    }
    assert!(
        err.contains("rung 2/3"),
        "the run says its promotions: {err}"
    );

    // `status` lists every cell's rung and the promotions; the report draws the pruned points
    // with their rung and states the device time against the full grid's.
    let st = p.cmd("status", &["status", NAME]).output().expect("status");
    let st = text(&st.stdout);
    for c in &cells {
        let rung = (c.rung.expect("on a rung") + 1).to_string();
        let what = if c.pruned { "pruned" } else { "done" };
        let line = st
            .lines()
            .find(|l| l.contains(&c.id))
            .unwrap_or_else(|| panic!("no line for {} in {st}", c.id));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[3..5], [rung.as_str(), what], "{line}");
    }
    assert!(
        st.contains("rung 1/3: 9 points") && st.contains("cell-steps"),
        "{st}"
    );
    let out = p.cmd("report", &["report", NAME]).output().expect("report");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(p.path("reports/halving/index.html")).expect("html");
    assert!(html.contains("successive halving") && html.contains("cell-steps"));
    let svg = std::fs::read_to_string(p.path("reports/halving/heatmap.svg")).expect("svg");
    assert!(
        svg.contains("rung 1: ") || svg.contains("r1: "),
        "pruned points are drawn with their rung"
    );
}
