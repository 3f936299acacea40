//! Load (issue 12): 64 cells at once, each a fake worker (tests/load-worker.sh) streaming its
//! events as fast as it can into one SQLite store, while `etagrid status` polls the same store
//! every 100 ms. Nothing may fail on a locked database and no event may be lost.

mod common;

use common::{manifest, sweep_head, text, CPU_RESOURCES};
use etagrid_store::{CellState, Store};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CELLS: usize = 64;
const STEPS: usize = 50;

#[test]
fn sixty_four_concurrent_cells_and_a_polling_status_lose_nothing_and_never_hit_a_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 8 × 8 learning rates: 64 cells.
    let lrs = (1..=8)
        .map(|i| format!("{i}e-3"))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        "{head}[train]\nsteps = {STEPS}\nmax_seq_len = 32\n[grid]\nlr_a = [{lrs}]\nlr_b = [{lrs}]\n\
         {CPU_RESOURCES}",
        head = sweep_head("load"),
    );
    std::fs::write(dir.path().join("load.toml"), toml).expect("write sweep");
    let state = dir.path().join("state");
    let etagrid = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_etagrid"));
        c.current_dir(dir.path())
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .env("ETAGRID_WORKER", manifest().join("tests/load-worker.sh"))
            .env("LOAD_STEPS", STEPS.to_string());
        c
    };
    // Enqueue first, so every status poll has the sweep to read.
    let out = etagrid(&["run", "load.toml", "--enqueue-only"])
        .output()
        .expect("enqueue");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let running = Arc::new(AtomicBool::new(true));
    let poller = {
        let running = running.clone();
        let mut status = etagrid(&["status", "load"]);
        status.stdout(Stdio::null());
        std::thread::spawn(move || {
            let (mut polls, mut failures) = (0u32, Vec::new());
            while running.load(Ordering::Relaxed) {
                let t = Instant::now();
                let out = status.output().expect("status");
                polls += 1;
                if !out.status.success() {
                    failures.push(text(&out.stderr));
                }
                // One poll every 100 ms, as a user's `watch` would.
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
            (polls, failures)
        })
    };
    let started = Instant::now();
    let out = etagrid(&[
        "run",
        "load.toml",
        "--no-report",
        "--cells-per-device",
        &CELLS.to_string(),
    ])
    .output()
    .expect("run");
    let took = started.elapsed();
    running.store(false, Ordering::Relaxed);
    let (polls, failures) = poller.join().expect("poller");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("locked"), "{err}");
    assert!(
        err.contains(&format!("{CELLS} to run on {CELLS} slot(s)")),
        "{err}"
    );
    assert!(
        failures.is_empty(),
        "{} of {polls} status polls failed: {failures:?}",
        failures.len()
    );
    assert!(polls >= 3, "status polled only {polls} times in {took:?}");
    eprintln!("{CELLS} cells × {STEPS} steps in {took:.1?}, {polls} status polls, 0 failed");

    // Every event of every cell is in the store.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = Store::open(&state.join("etagrid.sqlite"))
            .await
            .expect("open");
        let cells = s.cells("load").await.expect("cells");
        assert_eq!(cells.len(), CELLS);
        for c in &cells {
            assert_eq!(c.state, CellState::Done, "{c:?}");
            assert_eq!(c.attempts, 1, "{c:?}");
            let train = s.curve("load", &c.id, "train_loss").await.expect("curve");
            let want: Vec<(i64, f64)> = (1..=STEPS).map(|i| (i as i64, i as f64)).collect();
            assert_eq!(train, want, "cell {}: train events lost or altered", c.id);
            let eval = s.curve("load", &c.id, "eval_loss").await.expect("curve");
            assert_eq!(eval, vec![(STEPS as i64, 0.5)], "cell {}", c.id);
        }
        s.close().await;
    });
}
