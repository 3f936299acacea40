//! `--db postgres://…` end to end through the real binary: run → status → report → rerun, with
//! the store in a fresh database of the test server (`ETAGRID_TEST_PG`, started by
//! `scripts/test.sh`; without it this test fails unless `ETAGRID_SKIP_PG=1`). The cells run in
//! the fast fake worker of the scheduler's fault tests (`ETAGRID_WORKER`), which speaks the
//! worker protocol without training: what is tested here is the store, not the training.

mod common;

use common::{manifest, sweep_head, text, CPU_RESOURCES};
use etagrid_store::testing::{test_server, TestDatabase};
use etagrid_store::{CellState, Store, StoreUrl};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fake_worker() -> PathBuf {
    manifest().join("../etagrid-sched/tests/fake-worker.sh")
}

/// A 2 × 2 sweep over the tiny fixtures (`run` checks that the model and data exist).
fn write_sweep(dir: &Path) {
    let toml = format!(
        "{head}[train]\nsteps = 1\nbatch_size = 8\nmax_seq_len = 32\n\
         [grid]\nlr_a = [1e-3, 1e-2]\nratio = [1, 16]\n{CPU_RESOURCES}",
        head = sweep_head("tiny"),
    );
    std::fs::write(dir.join("tiny.toml"), toml).expect("write sweep");
}

fn etagrid(dir: &Path, db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_etagrid"))
        .current_dir(dir)
        .env("ETAGRID_WORKER", fake_worker())
        .env_remove("ETAGRID_DB")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--db", db])
        .args(args)
        .output()
        .expect("run etagrid")
}

fn starts(dir: &Path) -> Vec<u32> {
    let cells = dir.join("state/cells/tiny");
    let mut n: Vec<u32> = std::fs::read_dir(&cells)
        .unwrap_or_else(|e| panic!("{}: {e}", cells.display()))
        .map(|e| {
            let f = e.expect("entry").path().join("starts");
            std::fs::read_to_string(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .trim()
                .parse()
                .expect("a count")
        })
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn run_status_report_and_rerun_with_the_store_on_postgres() {
    let Some(server) = test_server() else { return };
    let pg = TestDatabase::create(&server).await;
    let sandbox = tempfile::tempdir().expect("tempdir");
    let dir = sandbox.path();
    write_sweep(dir);
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    let db = pg.url().to_owned();

    // The binary runs while this runtime waits: spawn_blocking keeps the runtime's other
    // threads free (the store is read from here afterwards).
    let run = |args: &'static [&'static str]| {
        let (dir, db) = (dir.to_owned(), db.clone());
        tokio::task::spawn_blocking(move || etagrid(&dir, &db, args))
    };

    let out = run(&["run", "tiny.toml", "--no-report"])
        .await
        .expect("join");
    let err = text(&out.stderr);
    assert!(out.status.success(), "run failed: {err}");
    assert!(err.contains("4 cells (4 new"), "{err}");
    assert!(err.contains("4 to run"), "{err}");
    assert!(
        !dir.join("state/etagrid.sqlite").exists(),
        "--db postgres://… must not create the SQLite store"
    );

    let store = Store::open(StoreUrl::parse(&db).expect("url"))
        .await
        .expect("open the PostgreSQL store");
    let cells = store.cells("tiny").await.expect("cells");
    assert_eq!(cells.len(), 4);
    for c in &cells {
        assert_eq!(c.state, CellState::Done, "{c:?}");
        assert_eq!(c.attempts, 1);
        // The fake worker's result, through the scheduler into PostgreSQL and back.
        assert_eq!(c.metric, Some(0.5));
        assert_eq!(c.eval_loss, Some(0.7));
    }
    store.close().await;

    let out = run(&["status", "tiny"]).await.expect("join");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "status failed: {}", text(&out.stderr));
    assert!(
        stdout.contains("sweep tiny: 4 cells — 0 pending, 0 running, 4 done"),
        "{stdout}"
    );

    let out = run(&["report", "tiny", "--reports", "reports"])
        .await
        .expect("join");
    let err = text(&out.stderr);
    assert!(out.status.success(), "report failed: {err}");
    assert!(err.contains("4 of 4 cells done"), "{err}");
    assert!(dir.join("reports/tiny/index.html").is_file());
    assert!(dir.join("reports/tiny/heatmap.png").is_file());

    // The rerun finds every cell done in PostgreSQL and starts no worker.
    let out = run(&["run", "tiny.toml", "--no-report"])
        .await
        .expect("join");
    let err = text(&out.stderr);
    assert!(out.status.success(), "rerun failed: {err}");
    assert!(err.contains("4 already in the store"), "{err}");
    assert!(err.contains("0 to run"), "{err}");
    assert_eq!(starts(dir), vec![1, 1, 1, 1], "each cell ran exactly once");
}

#[test]
fn a_bad_or_unreachable_db_url_is_named_without_its_password() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let dir = sandbox.path();
    let out = etagrid(
        dir,
        "postgres://etagrid:s3cret@127.0.0.1:1/sweeps",
        &["status"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("postgres://etagrid:***@127.0.0.1:1/sweeps"),
        "{err}"
    );
    assert!(err.contains("scripts/pg-local.sh up"), "{err}");
    assert!(!err.contains("s3cret"), "password leaked: {err}");

    let out = etagrid(dir, "mysql://root:s3cret@localhost/x", &["status"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--db") && err.contains("unsupported scheme `mysql`"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "password leaked: {err}");
}
