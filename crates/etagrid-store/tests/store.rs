//! The results store through its public API, on real SQLite files in temp dirs.

use std::path::{Path, PathBuf};

use etagrid_spec::protocol::{CellResult, ParamGroupInfo};
use etagrid_spec::{Cell, CellConfig, SweepSpec};
use etagrid_store::{CellRow, CellState, EnqueueSummary, Outcome, Store, StoreError};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tempfile::TempDir;

/// A 2 × 2 grid; the sweep is called `demo` after the file stem.
const SWEEP: &str = r#"
[model]
path = "../models/tiny-bert"

[task]
train = "../data/train.csv"
eval = "../data/eval.csv"

[train]
steps = 20
log_every = 5

[grid]
lr_a = [1e-4, 1e-3]
lr_b = [3.16227766e-4, 1.6e-3]
"#;

const NAME: &str = "demo";

struct Fixture {
    dir: TempDir,
    store: Store,
    spec: SweepSpec,
    cells: Vec<Cell>,
}

impl Fixture {
    fn db(&self) -> PathBuf {
        db_path(self.dir.path())
    }

    async fn rows(&self) -> Vec<CellRow> {
        self.store.cells(NAME).await.expect("read cells")
    }

    async fn row(&self, i: usize) -> CellRow {
        self.rows().await.swap_remove(i)
    }

    fn id(&self, i: usize) -> &str {
        &self.cells[i].id.0
    }
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join(".etagrid").join("store.sqlite")
}

fn parse_in(dir: &Path, name: &str, text: &str) -> SweepSpec {
    let path = dir.join("sweeps").join(format!("{name}.toml"));
    SweepSpec::parse(&path, text).unwrap_or_else(|e| panic!("{e}"))
}

async fn open(dir: &Path) -> Store {
    Store::open(&db_path(dir))
        .await
        .unwrap_or_else(|e| panic!("open store: {e} ({e:?})"))
}

/// A fresh store with the 2 × 2 grid enqueued.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path()).await;
    let spec = parse_in(dir.path(), NAME, SWEEP);
    let cells = spec.cells();
    store.enqueue(&spec, &cells).await.expect("enqueue");
    Fixture {
        dir,
        store,
        spec,
        cells,
    }
}

fn result() -> CellResult {
    CellResult {
        metric: 0.8125,
        eval_loss: 0.4375,
        accuracy: 0.8125,
        macro_f1: Some(0.8),
        mcc: Some(0.625),
        train_loss: 0.375,
        steps: 20,
        wall_s: 12.5,
        train_samples_per_s: 48.0,
    }
}

// ---------------------------------------------------------------- enqueue and read back

#[tokio::test]
async fn enqueued_cells_read_back_in_grid_order_as_pending() {
    let f = fixture().await;
    let rows = f.rows().await;
    assert_eq!(rows.len(), f.cells.len());
    for (row, cell) in rows.iter().zip(&f.cells) {
        assert_eq!(row.id, cell.id.0);
        assert_eq!(row.index, cell.index as i64);
        assert_eq!((row.lr_a, row.lr_b), (cell.config.lr_a, cell.config.lr_b));
        assert_eq!(row.seed, cell.config.seed as i64);
        assert_eq!(row.state, CellState::Pending);
        assert_eq!(row.attempts, 0);
        assert_eq!(row.device, None);
        assert_eq!(row.metric, None);
        assert_eq!(row.error, None);
    }
}

#[tokio::test]
async fn stored_config_json_deserializes_to_the_same_cell_config() {
    let f = fixture().await;
    for (row, cell) in f.rows().await.iter().zip(&f.cells) {
        let config: CellConfig = serde_json::from_str(&row.config).expect("config JSON");
        assert_eq!(config, cell.config);
        assert_eq!(
            config.id().0,
            row.id,
            "the stored config hashes to the stored id"
        );
    }
}

#[tokio::test]
async fn enqueue_records_the_sweep_with_its_source_and_metric() {
    let f = fixture().await;
    let sweep = f.store.sweep(NAME).await.expect("sweep row");
    assert_eq!(sweep.name, NAME);
    assert_eq!(sweep.source_text, SWEEP);
    assert_eq!(PathBuf::from(&sweep.source_path), f.spec.source);
    assert_eq!(sweep.metric, "accuracy");
    assert!(sweep.higher_is_better);
    assert_eq!(
        f.store.sweep_names().await.expect("names"),
        vec![NAME.to_owned()]
    );
}

#[tokio::test]
async fn reenqueue_refreshes_the_sweep_metric() {
    let f = fixture().await;
    let text = SWEEP.replace("[task]\n", "[task]\nmetric = \"eval_loss\"\n");
    let spec = parse_in(f.dir.path(), NAME, &text);
    f.store
        .enqueue(&spec, &spec.cells())
        .await
        .expect("enqueue");
    let sweep = f.store.sweep(NAME).await.expect("sweep row");
    assert_eq!(
        (sweep.metric.as_str(), sweep.higher_is_better),
        ("eval_loss", false)
    );
    assert_eq!(sweep.source_text, text);
}

#[tokio::test]
async fn reenqueueing_the_same_cells_adds_none_and_reports_them_existing() {
    let f = fixture().await;
    let again = f.store.enqueue(&f.spec, &f.cells).await.expect("enqueue");
    assert_eq!(
        again,
        EnqueueSummary {
            added: 0,
            existing: 4
        }
    );
    assert_eq!(f.rows().await.len(), 4);
}

#[tokio::test]
async fn first_enqueue_reports_every_cell_added() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path()).await;
    let spec = parse_in(dir.path(), NAME, SWEEP);
    let summary = store.enqueue(&spec, &spec.cells()).await.expect("enqueue");
    assert_eq!(
        summary,
        EnqueueSummary {
            added: 4,
            existing: 0
        }
    );
}

#[tokio::test]
async fn enqueueing_a_grid_with_one_extra_point_adds_exactly_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path()).await;
    let two = SWEEP.replace("lr_a = [1e-4, 1e-3]", "lr_a = [1e-4]");
    let three = two.replace("1.6e-3]", "1.6e-3, 1e-2]");
    let spec = parse_in(dir.path(), NAME, &two);
    let first = store.enqueue(&spec, &spec.cells()).await.expect("enqueue");
    assert_eq!(
        first,
        EnqueueSummary {
            added: 2,
            existing: 0
        }
    );

    let spec = parse_in(dir.path(), NAME, &three);
    let summary = store.enqueue(&spec, &spec.cells()).await.expect("enqueue");
    assert_eq!(
        summary,
        EnqueueSummary {
            added: 1,
            existing: 2
        }
    );
    let rows = store.cells(NAME).await.expect("cells");
    let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.lr_a, r.lr_b)).collect();
    assert_eq!(
        points,
        vec![(1e-4, 3.16227766e-4), (1e-4, 1.6e-3), (1e-4, 1e-2)]
    );
}

#[tokio::test]
async fn reenqueue_keeps_the_state_of_existing_cells() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(0), "cpu")
        .await
        .expect("start");
    f.store
        .finish_cell(NAME, f.id(0), &Outcome::Done(result()))
        .await
        .expect("finish");
    f.store.enqueue(&f.spec, &f.cells).await.expect("enqueue");
    let row = f.row(0).await;
    assert_eq!(row.state, CellState::Done);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.metric, Some(0.8125));
}

#[tokio::test]
async fn two_sweeps_with_the_same_cells_are_kept_apart() {
    let f = fixture().await;
    let other = parse_in(f.dir.path(), "other", SWEEP);
    let summary = f
        .store
        .enqueue(&other, &other.cells())
        .await
        .expect("enqueue");
    assert_eq!(
        summary,
        EnqueueSummary {
            added: 4,
            existing: 0
        }
    );
    f.store
        .start_cell("other", f.id(0), "cpu")
        .await
        .expect("start");
    assert_eq!(f.row(0).await.state, CellState::Pending);
    let other_rows = f.store.cells("other").await.expect("cells");
    assert_eq!(other_rows[0].state, CellState::Running);
    assert_eq!(
        f.store.sweep_names().await.expect("names"),
        vec!["demo".to_owned(), "other".to_owned()]
    );
}

// ---------------------------------------------------------------- state transitions

#[tokio::test]
async fn start_cell_marks_it_running_with_one_attempt_on_the_device() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(1), "cuda:1")
        .await
        .expect("start");
    let row = f.row(1).await;
    assert_eq!(row.state, CellState::Running);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.device.as_deref(), Some("cuda:1"));
    assert_eq!(row.step, Some(0));
    assert_eq!(
        f.row(0).await.state,
        CellState::Pending,
        "other cells are untouched"
    );
}

#[tokio::test]
async fn set_groups_records_the_total_steps() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(0), "cpu")
        .await
        .expect("start");
    let groups = [ParamGroupInfo {
        name: "lora_b".into(),
        lr: 1.6e-3,
        weight_decay: 0.0,
        members: 12,
        params: 9216,
    }];
    f.store
        .set_groups(NAME, f.id(0), &groups, 20)
        .await
        .expect("groups");
    assert_eq!(f.row(0).await.total_steps, Some(20));
}

#[tokio::test]
async fn record_metrics_appends_curve_points_and_advances_the_step() {
    let f = fixture().await;
    let id = f.id(2);
    f.store.start_cell(NAME, id, "cpu").await.expect("start");
    f.store
        .record_metrics(NAME, id, 5, &[("train_loss", 0.69)])
        .await
        .expect("metrics");
    f.store
        .record_metrics(NAME, id, 10, &[("train_loss", 0.5), ("eval_loss", 0.55)])
        .await
        .expect("metrics");
    f.store
        .record_metrics(NAME, id, 15, &[("train_loss", 0.25)])
        .await
        .expect("metrics");
    assert_eq!(
        f.store.curve(NAME, id, "train_loss").await.expect("curve"),
        vec![(5, 0.69), (10, 0.5), (15, 0.25)]
    );
    assert_eq!(
        f.store.curve(NAME, id, "eval_loss").await.expect("curve"),
        vec![(10, 0.55)]
    );
    assert_eq!(
        f.store
            .curve(NAME, f.id(0), "train_loss")
            .await
            .expect("curve"),
        vec![]
    );
    assert_eq!(f.row(2).await.step, Some(15));
}

#[tokio::test]
async fn finishing_done_stores_the_result() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(0), "cpu")
        .await
        .expect("start");
    f.store
        .finish_cell(NAME, f.id(0), &Outcome::Done(result()))
        .await
        .expect("finish");
    let row = f.row(0).await;
    assert_eq!(row.state, CellState::Done);
    assert_eq!(row.metric, Some(0.8125));
    assert_eq!(row.eval_loss, Some(0.4375));
    assert_eq!(row.accuracy, Some(0.8125));
    assert_eq!(row.macro_f1, Some(0.8));
    assert_eq!(row.mcc, Some(0.625));
    assert_eq!(row.train_loss, Some(0.375));
    assert_eq!(row.wall_s, Some(12.5));
    assert_eq!(row.step, Some(20));
    assert_eq!(row.error, None);
    assert!(row.state.is_final());
}

#[tokio::test]
async fn finishing_diverged_sets_the_state_step_and_error() {
    let f = fixture().await;
    for (i, loss, stored) in [(0, f64::INFINITY, Some(f64::INFINITY)), (1, f64::NAN, None)] {
        f.store
            .start_cell(NAME, f.id(i), "cpu")
            .await
            .expect("start");
        f.store
            .finish_cell(NAME, f.id(i), &Outcome::Diverged { step: 7, loss })
            .await
            .expect("finish");
        let row = f.row(i).await;
        assert_eq!(row.state, CellState::Diverged);
        assert_eq!(row.step, Some(7));
        assert_eq!(row.train_loss, stored, "loss {loss}");
        assert!(
            row.error.as_deref().is_some_and(|e| e.contains("NaN")),
            "{:?}",
            row.error
        );
        assert!(row.state.is_final());
    }
}

#[tokio::test]
async fn finishing_failed_sets_the_state_and_keeps_the_error() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(3), "cuda:0")
        .await
        .expect("start");
    f.store
        .finish_cell(NAME, f.id(3), &Outcome::Failed("CUDA out of memory".into()))
        .await
        .expect("finish");
    let row = f.row(3).await;
    assert_eq!(row.state, CellState::Failed);
    assert_eq!(row.error.as_deref(), Some("CUDA out of memory"));
    assert_eq!(row.attempts, 1);
    assert!(
        !row.state.is_final(),
        "a failed cell is retried by the next run"
    );
}

#[tokio::test]
async fn interrupted_returns_the_cell_to_pending_without_charging_the_attempt() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(0), "cuda:0")
        .await
        .expect("start");
    f.store
        .finish_cell(NAME, f.id(0), &Outcome::Interrupted)
        .await
        .expect("finish");
    let row = f.row(0).await;
    assert_eq!(row.state, CellState::Pending);
    assert_eq!(row.attempts, 0);
    assert_eq!(row.device, None);
}

#[tokio::test]
async fn restarting_a_cell_drops_the_previous_attempts_curve() {
    let f = fixture().await;
    let id = f.id(0);
    f.store.start_cell(NAME, id, "cpu").await.expect("start");
    f.store
        .record_metrics(NAME, id, 5, &[("train_loss", 0.7)])
        .await
        .expect("metrics");
    f.store
        .finish_cell(NAME, id, &Outcome::Failed("killed".into()))
        .await
        .expect("finish");

    f.store.start_cell(NAME, id, "cpu").await.expect("restart");
    assert_eq!(
        f.store.curve(NAME, id, "train_loss").await.expect("curve"),
        vec![]
    );
    let row = f.row(0).await;
    assert_eq!(row.state, CellState::Running);
    assert_eq!(row.attempts, 2);
    assert_eq!(row.error, None, "the restart clears the old error");
    assert_eq!(row.step, Some(0));
}

#[tokio::test]
async fn recover_running_returns_running_cells_to_pending_and_leaves_the_rest() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(0), "cpu")
        .await
        .expect("start");
    f.store
        .finish_cell(NAME, f.id(0), &Outcome::Done(result()))
        .await
        .expect("finish");
    f.store
        .start_cell(NAME, f.id(1), "cpu")
        .await
        .expect("start");
    f.store
        .start_cell(NAME, f.id(2), "cpu")
        .await
        .expect("start");

    assert_eq!(f.store.recover_running(NAME).await.expect("recover"), 2);
    let states: Vec<CellState> = f.rows().await.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        vec![
            CellState::Done,
            CellState::Pending,
            CellState::Pending,
            CellState::Pending
        ]
    );
    assert_eq!(f.row(1).await.device, None);
    // The scheduler died, not the cell: the attempt is refunded (the done cell keeps its own).
    assert_eq!(f.row(1).await.attempts, 0);
    assert_eq!(f.row(0).await.attempts, 1);
    assert_eq!(f.row(0).await.metric, Some(0.8125));
    assert_eq!(f.store.recover_running(NAME).await.expect("recover"), 0);
}

#[tokio::test]
async fn counts_group_the_cells_by_state() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(0), "cpu")
        .await
        .expect("start");
    f.store
        .finish_cell(NAME, f.id(0), &Outcome::Done(result()))
        .await
        .expect("finish");
    f.store
        .start_cell(NAME, f.id(1), "cpu")
        .await
        .expect("start");
    f.store
        .finish_cell(NAME, f.id(1), &Outcome::Failed("boom".into()))
        .await
        .expect("finish");
    f.store
        .start_cell(NAME, f.id(2), "cpu")
        .await
        .expect("start");

    let counts = f.store.counts(NAME).await.expect("counts");
    let got: Vec<(CellState, i64)> = counts.into_iter().collect();
    assert_eq!(
        got,
        vec![
            (CellState::Pending, 1),
            (CellState::Running, 1),
            (CellState::Done, 1),
            (CellState::Failed, 1)
        ]
    );
    assert!(f.store.counts("nope").await.expect("counts").is_empty());
}

// ---------------------------------------------------------------- sweeps, files, reopening

#[tokio::test]
async fn unknown_sweep_is_an_error_that_says_to_run_it_first() {
    let f = fixture().await;
    let err = f.store.sweep("never-ran").await.expect_err("an error");
    assert!(
        matches!(&err, StoreError::UnknownSweep(n) if n == "never-ran"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("never-ran"), "{message}");
    assert!(message.contains("run it first"), "{message}");
}

#[tokio::test]
async fn open_creates_missing_parent_directories() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("a").join("b").join("store.sqlite");
    let store = Store::open(&db).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(db.is_file());
    assert!(store.sweep_names().await.expect("names").is_empty());
}

#[tokio::test]
async fn reopening_the_store_keeps_the_data() {
    let f = fixture().await;
    f.store
        .start_cell(NAME, f.id(0), "cpu")
        .await
        .expect("start");
    f.store
        .record_metrics(NAME, f.id(0), 5, &[("train_loss", 0.6)])
        .await
        .expect("metrics");
    f.store
        .finish_cell(NAME, f.id(0), &Outcome::Done(result()))
        .await
        .expect("finish");
    let before: Vec<(String, CellState, i64)> = f
        .rows()
        .await
        .into_iter()
        .map(|r| (r.id, r.state, r.attempts))
        .collect();
    let Fixture {
        dir,
        store,
        spec,
        cells,
    } = f;
    store.close().await;

    // The migrations run again on open and must find nothing to do.
    let store = open(dir.path()).await;
    let after: Vec<(String, CellState, i64)> = store
        .cells(NAME)
        .await
        .expect("cells")
        .into_iter()
        .map(|r| (r.id, r.state, r.attempts))
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        store
            .curve(NAME, &cells[0].id.0, "train_loss")
            .await
            .expect("curve"),
        vec![(5, 0.6)]
    );
    let again = store.enqueue(&spec, &cells).await.expect("enqueue");
    assert_eq!(
        again,
        EnqueueSummary {
            added: 0,
            existing: 4
        }
    );
    store.close().await;

    // And a third time, with the previous pool closed.
    let store = open(dir.path()).await;
    assert_eq!(store.sweep(NAME).await.expect("sweep").name, NAME);
}

#[tokio::test]
async fn store_file_is_in_wal_mode() {
    let f = fixture().await;
    let db = f.db();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(wal.is_file(), "no {} after a write", wal.display());

    let opts = SqliteConnectOptions::new().filename(&db).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .expect("second connection");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("pragma");
    assert_eq!(mode.to_lowercase(), "wal");
    // The second connection sees the committed cells while the store is open.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cells")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(n, 4);
    conn.close().await.expect("close");
}
