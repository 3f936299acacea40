//! The results store through its public API. Every test marked `both_backends!` runs twice:
//! `NAME::sqlite` on a real SQLite file in a temp dir, and `NAME::postgres` in a fresh database
//! of the PostgreSQL server named by `ETAGRID_TEST_PG` (`scripts/test.sh` starts one with
//! `scripts/pg-local.sh up`). Without it the PostgreSQL variants fail, saying how to start one,
//! unless `ETAGRID_SKIP_PG=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use etagrid_search::{SearchSpec, Strategy, DEFAULT_RUNGS};
use etagrid_spec::protocol::{CellResult, Measure, Metrics, ParamGroupInfo};
use etagrid_spec::testing::{self, edit};
use etagrid_spec::{Cell, CellConfig, SweepSpec};
use etagrid_store::both_backends;
use etagrid_store::testing::{test_server, TestDatabase};
use etagrid_store::{
    Backend, CellRow, CellState, EnqueueSummary, Outcome, RunLock, Store, StoreError, StoreUrl,
};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgConnection, Row, SqliteConnection};
use tempfile::TempDir;

/// A 2 × 2 grid (the shared test sweep logging every 5 steps, with other η_B); the sweep is called
/// `demo` after the file stem.
static SWEEP: LazyLock<String> = LazyLock::new(|| {
    let text = edit(
        testing::SWEEP,
        "steps = 20\n",
        "steps = 20\nlog_every = 5\n",
    );
    edit(
        &text,
        "lr_b = [1e-4, 1e-3]",
        "lr_b = [3.16227766e-4, 1.6e-3]",
    )
});

const NAME: &str = "demo";

/// Where a test's store lives: an SQLite file in the test's temp dir, or a PostgreSQL database
/// of its own (dropped with this value).
struct Db {
    url: StoreUrl,
    _pg: Option<TestDatabase>,
}

async fn new_db(b: Backend, dir: &Path) -> Db {
    match b {
        Backend::Sqlite => Db {
            url: db_path(dir).into(),
            _pg: None,
        },
        Backend::Postgres => {
            let server = test_server().expect("the postgres variant runs only with a server");
            let pg = TestDatabase::create(&server).await;
            Db {
                url: pg.store_url(),
                _pg: Some(pg),
            }
        }
    }
}

struct Fixture {
    dir: TempDir,
    db: Db,
    store: Store,
    spec: SweepSpec,
    cells: Vec<Cell>,
}

impl Fixture {
    async fn rows(&self) -> Vec<CellRow> {
        self.store.cells(NAME).await.expect("read cells")
    }

    async fn row(&self, i: usize) -> CellRow {
        self.rows().await.swap_remove(i)
    }

    fn id(&self, i: usize) -> &str {
        &self.cells[i].id.0
    }

    /// Starts cell `i` on the CPU, not asking whether it could.
    async fn start(&self, i: usize) {
        self.store
            .start_cell(NAME, self.id(i), "cpu")
            .await
            .expect("start");
    }

    /// Records how cell `i` ended.
    async fn finish(&self, i: usize, outcome: &Outcome) {
        self.store
            .finish_cell(NAME, self.id(i), outcome)
            .await
            .expect("finish");
    }
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join(".etagrid").join("store.sqlite")
}

fn parse_in(dir: &Path, name: &str, text: &str) -> SweepSpec {
    let path = dir.join("sweeps").join(format!("{name}.toml"));
    SweepSpec::parse(&path, text).unwrap_or_else(|e| panic!("{e}"))
}

async fn open(url: &StoreUrl) -> Store {
    Store::open(url)
        .await
        .unwrap_or_else(|e| panic!("open store: {e} ({e:?})"))
}

/// A fresh, empty store on backend `b` (and the temp dir the sweep files are parsed in).
async fn empty(b: Backend) -> (TempDir, Db, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = new_db(b, dir.path()).await;
    let store = open(&db.url).await;
    assert_eq!(store.backend(), b);
    (dir, db, store)
}

/// A fresh store with the 2 × 2 grid enqueued.
async fn fixture(b: Backend) -> Fixture {
    let (dir, db, store) = empty(b).await;
    let spec = parse_in(dir.path(), NAME, &SWEEP);
    let cells = spec.cells();
    store.enqueue(&spec, &cells).await.expect("enqueue");
    Fixture {
        dir,
        db,
        store,
        spec,
        cells,
    }
}

fn result() -> CellResult {
    CellResult {
        metric: 0.8125,
        eval_loss: 0.4375,
        metrics: Metrics::new()
            .with(Measure::Accuracy, 0.8125)
            .with(Measure::MacroF1, 0.8)
            .with(Measure::Mcc, 0.625),
        train_loss: 0.375,
        steps: 20,
        wall_s: 12.5,
        train_samples_per_s: 48.0,
        pack_size: Some(4),
    }
}

// ---------------------------------------------------------------- enqueue and read back

both_backends!(enqueued_cells_read_back_in_grid_order_as_pending);
async fn enqueued_cells_read_back_in_grid_order_as_pending(b: Backend) {
    let f = fixture(b).await;
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

both_backends!(stored_config_json_deserializes_to_the_same_cell_config);
async fn stored_config_json_deserializes_to_the_same_cell_config(b: Backend) {
    let f = fixture(b).await;
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

both_backends!(enqueue_records_the_sweep_with_its_source_and_metric);
async fn enqueue_records_the_sweep_with_its_source_and_metric(b: Backend) {
    let f = fixture(b).await;
    let sweep = f.store.sweep(NAME).await.expect("sweep row");
    assert_eq!(sweep.name, NAME);
    assert_eq!(sweep.source_text, *SWEEP);
    assert_eq!(PathBuf::from(&sweep.source_path), f.spec.source);
    assert_eq!(sweep.metric, "accuracy");
    assert!(sweep.higher_is_better);
    assert_eq!(
        f.store.sweep_names().await.expect("names"),
        vec![NAME.to_owned()]
    );
}

both_backends!(reenqueue_refreshes_the_sweep_metric);
async fn reenqueue_refreshes_the_sweep_metric(b: Backend) {
    let f = fixture(b).await;
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

both_backends!(reenqueueing_the_same_cells_adds_none_and_reports_them_existing);
async fn reenqueueing_the_same_cells_adds_none_and_reports_them_existing(b: Backend) {
    let f = fixture(b).await;
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

both_backends!(first_enqueue_reports_every_cell_added);
async fn first_enqueue_reports_every_cell_added(b: Backend) {
    let (dir, _db, store) = empty(b).await;
    let spec = parse_in(dir.path(), NAME, &SWEEP);
    let summary = store.enqueue(&spec, &spec.cells()).await.expect("enqueue");
    assert_eq!(
        summary,
        EnqueueSummary {
            added: 4,
            existing: 0
        }
    );
}

both_backends!(enqueueing_a_grid_with_one_extra_point_adds_exactly_one);
async fn enqueueing_a_grid_with_one_extra_point_adds_exactly_one(b: Backend) {
    let (dir, _db, store) = empty(b).await;
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

both_backends!(reenqueue_keeps_the_state_of_existing_cells);
async fn reenqueue_keeps_the_state_of_existing_cells(b: Backend) {
    let f = fixture(b).await;
    f.start(0).await;
    f.finish(0, &Outcome::Done(result())).await;
    f.store.enqueue(&f.spec, &f.cells).await.expect("enqueue");
    let row = f.row(0).await;
    assert_eq!(row.state, CellState::Done);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.metric, Some(0.8125));
}

both_backends!(two_sweeps_with_the_same_cells_are_kept_apart);
async fn two_sweeps_with_the_same_cells_are_kept_apart(b: Backend) {
    let f = fixture(b).await;
    let other = parse_in(f.dir.path(), "other", &SWEEP);
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

both_backends!(start_cell_marks_it_running_with_one_attempt_on_the_device);
async fn start_cell_marks_it_running_with_one_attempt_on_the_device(b: Backend) {
    let f = fixture(b).await;
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

both_backends!(set_groups_records_the_total_steps);
async fn set_groups_records_the_total_steps(b: Backend) {
    let f = fixture(b).await;
    f.start(0).await;
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

both_backends!(record_metrics_appends_curve_points_and_advances_the_step);
async fn record_metrics_appends_curve_points_and_advances_the_step(b: Backend) {
    let f = fixture(b).await;
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

both_backends!(finishing_done_stores_the_result);
async fn finishing_done_stores_the_result(b: Backend) {
    let f = fixture(b).await;
    f.start(0).await;
    f.finish(0, &Outcome::Done(result())).await;
    let row = f.row(0).await;
    assert_eq!(row.state, CellState::Done);
    assert_eq!(row.metric, Some(0.8125));
    assert_eq!(row.eval_loss, Some(0.4375));
    assert_eq!(row.accuracy, Some(0.8125));
    assert_eq!(row.macro_f1, Some(0.8));
    assert_eq!(row.mcc, Some(0.625));
    assert_eq!(row.train_loss, Some(0.375));
    assert_eq!(row.wall_s, Some(12.5));
    assert_eq!(
        row.pack_size,
        Some(4),
        "a packed cell records its pack size"
    );
    assert_eq!(row.step, Some(20));
    assert_eq!(row.error, None);
    assert!(row.state.is_final());
}

both_backends!(finishing_diverged_sets_the_state_step_and_error);
async fn finishing_diverged_sets_the_state_step_and_error(b: Backend) {
    let f = fixture(b).await;
    // The diverged cell's device time counts like a finished one's; a worker that did not say
    // (an older line) leaves it unknown.
    for (i, loss, stored, device_s) in [
        (0, f64::INFINITY, Some(f64::INFINITY), Some(2.5)),
        (1, f64::NAN, None, None),
    ] {
        f.store
            .start_cell(NAME, f.id(i), "cpu")
            .await
            .expect("start");
        let diverged = Outcome::Diverged {
            step: 7,
            loss,
            device_s,
        };
        f.store
            .finish_cell(NAME, f.id(i), &diverged)
            .await
            .expect("finish");
        let row = f.row(i).await;
        assert_eq!(row.state, CellState::Diverged);
        assert_eq!(row.step, Some(7));
        assert_eq!(row.train_loss, stored, "loss {loss}");
        assert_eq!(row.device_s, device_s, "loss {loss}");
        assert!(
            row.error.as_deref().is_some_and(|e| e.contains("NaN")),
            "{:?}",
            row.error
        );
        assert!(row.state.is_final());
    }
}

both_backends!(finishing_failed_sets_the_state_and_keeps_the_error);
async fn finishing_failed_sets_the_state_and_keeps_the_error(b: Backend) {
    let f = fixture(b).await;
    f.store
        .start_cell(NAME, f.id(3), "cuda:0")
        .await
        .expect("start");
    f.finish(3, &Outcome::Failed("CUDA out of memory".into()))
        .await;
    let row = f.row(3).await;
    assert_eq!(row.state, CellState::Failed);
    assert_eq!(row.error.as_deref(), Some("CUDA out of memory"));
    assert_eq!(row.attempts, 1);
    assert!(
        !row.state.is_final(),
        "a failed cell is retried by the next run"
    );
}

both_backends!(an_input_error_is_failed_with_its_attempt_refunded);
async fn an_input_error_is_failed_with_its_attempt_refunded(b: Backend) {
    let f = fixture(b).await;
    for _ in 0..3 {
        assert!(f
            .store
            .start_cell(NAME, f.id(2), "cpu")
            .await
            .expect("start"));
        f.store
            .finish_cell(
                NAME,
                f.id(2),
                &Outcome::InputError("data/train.csv:7: 3 fields, header has 2".into()),
            )
            .await
            .expect("finish");
    }
    let row = f.row(2).await;
    assert_eq!(row.state, CellState::Failed);
    assert_eq!(
        row.error.as_deref(),
        Some("input error: data/train.csv:7: 3 fields, header has 2")
    );
    // However often the input was bad, no attempt is used up: a run after the fix runs it
    // without --retry-failed.
    assert_eq!(row.attempts, 0);
}

both_backends!(interrupted_returns_the_cell_to_pending_without_charging_the_attempt);
async fn interrupted_returns_the_cell_to_pending_without_charging_the_attempt(b: Backend) {
    let f = fixture(b).await;
    f.store
        .start_cell(NAME, f.id(0), "cuda:0")
        .await
        .expect("start");
    f.finish(0, &Outcome::Interrupted).await;
    let row = f.row(0).await;
    assert_eq!(row.state, CellState::Pending);
    assert_eq!(row.attempts, 0);
    assert_eq!(row.device, None);
}

both_backends!(restarting_a_cell_drops_the_previous_attempts_curve);
async fn restarting_a_cell_drops_the_previous_attempts_curve(b: Backend) {
    let f = fixture(b).await;
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

both_backends!(recover_running_returns_running_cells_to_pending_and_leaves_the_rest);
async fn recover_running_returns_running_cells_to_pending_and_leaves_the_rest(b: Backend) {
    let f = fixture(b).await;
    f.start(0).await;
    f.finish(0, &Outcome::Done(result())).await;
    f.start(1).await;
    f.start(2).await;

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

both_backends!(counts_group_the_cells_by_state);
async fn counts_group_the_cells_by_state(b: Backend) {
    let f = fixture(b).await;
    f.start(0).await;
    f.finish(0, &Outcome::Done(result())).await;
    f.start(1).await;
    f.finish(1, &Outcome::Failed("boom".into())).await;
    f.start(2).await;

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

both_backends!(unknown_sweep_is_an_error_that_says_to_run_it_first);
async fn unknown_sweep_is_an_error_that_says_to_run_it_first(b: Backend) {
    let f = fixture(b).await;
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

both_backends!(reopening_the_store_keeps_the_data);
async fn reopening_the_store_keeps_the_data(b: Backend) {
    let f = fixture(b).await;
    f.start(0).await;
    f.store
        .record_metrics(NAME, f.id(0), 5, &[("train_loss", 0.6)])
        .await
        .expect("metrics");
    f.finish(0, &Outcome::Done(result())).await;
    let before: Vec<(String, CellState, i64)> = f
        .rows()
        .await
        .into_iter()
        .map(|r| (r.id, r.state, r.attempts))
        .collect();
    let Fixture {
        db,
        store,
        spec,
        cells,
        ..
    } = f;
    store.close().await;

    // The migrations run again on open and must find nothing to do.
    let store = open(&db.url).await;
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
    let store = open(&db.url).await;
    assert_eq!(store.sweep(NAME).await.expect("sweep").name, NAME);
}

#[tokio::test]
async fn store_file_is_in_wal_mode() {
    let f = fixture(Backend::Sqlite).await;
    let db = db_path(f.dir.path());
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

// ---------------------------------------------------------------- large grids, both backends

both_backends!(enqueueing_more_cells_than_one_statement_holds_adds_them_all_once);
async fn enqueueing_more_cells_than_one_statement_holds_adds_them_all_once(b: Backend) {
    // 50 × 50 = 2,500 cells: three multi-row statements (1,000 + 1,000 + 500 cells).
    let list = |scale: f64| {
        (1..=50)
            .map(|i| format!("{:e}", scale * f64::from(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = SWEEP
        .replace("lr_a = [1e-4, 1e-3]", &format!("lr_a = [{}]", list(1e-5)))
        .replace(
            "lr_b = [3.16227766e-4, 1.6e-3]",
            &format!("lr_b = [{}]", list(1e-4)),
        );
    let (dir, _db, store) = empty(b).await;
    let spec = parse_in(dir.path(), NAME, &text);
    let cells = spec.cells();
    assert_eq!(cells.len(), 2500);
    let first = store.enqueue(&spec, &cells).await.expect("enqueue");
    assert_eq!(
        first,
        EnqueueSummary {
            added: 2500,
            existing: 0
        }
    );
    let again = store.enqueue(&spec, &cells).await.expect("enqueue");
    assert_eq!(
        again,
        EnqueueSummary {
            added: 0,
            existing: 2500
        }
    );
    let rows = store.cells(NAME).await.expect("cells");
    assert_eq!(rows.len(), 2500);
    for (row, cell) in rows.iter().zip(&cells) {
        assert_eq!(
            (row.id.as_str(), row.index, row.lr_a, row.lr_b),
            (
                cell.id.0.as_str(),
                cell.index as i64,
                cell.config.lr_a,
                cell.config.lr_b
            )
        );
    }
    let counts = store.counts(NAME).await.expect("counts");
    assert_eq!(counts.get(&CellState::Pending), Some(&2500));
}

// ---------------------------------------------------------------- the PostgreSQL schema

fn migration_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    names
}

#[test]
fn migration_files_pair_up_by_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let sqlite = migration_names(&root);
    let postgres = migration_names(&root.join("postgres"));
    assert!(!sqlite.is_empty());
    assert_eq!(
        sqlite, postgres,
        "every migrations/NNN_name.sql needs its PostgreSQL twin migrations/postgres/NNN_name.sql \
         (same name; translation rules in migrations/postgres/README.md)"
    );
}

/// (table, column) → (type, NOT NULL), with SQLite's types named as PostgreSQL's.
type Columns = BTreeMap<(String, String), (String, bool)>;
/// index name → (table, indexed columns).
type Indexes = BTreeMap<String, (String, String)>;

async fn sqlite_schema(path: &Path) -> (Columns, Indexes) {
    let opts = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts)
        .await
        .expect("sqlite connection");
    let rows = sqlx::query(
        "SELECT m.name AS t, p.name AS c, p.type AS ty, p.\"notnull\" AS nn
         FROM sqlite_master m JOIN pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("sqlite columns");
    let mut columns = Columns::new();
    for r in rows {
        let ty: String = r.get("ty");
        let ty = match ty.to_uppercase().as_str() {
            "INTEGER" => "bigint",
            "REAL" => "double precision",
            "TEXT" => "text",
            other => {
                panic!("SQLite column type {other} has no rule in migrations/postgres/README.md")
            }
        };
        columns.insert(
            (r.get("t"), r.get("c")),
            (ty.to_owned(), r.get::<i64, _>("nn") != 0),
        );
    }
    let rows = sqlx::query(
        "SELECT m.name AS i, m.tbl_name AS t, group_concat(p.name, ', ') AS cols
         FROM sqlite_master m JOIN pragma_index_info(m.name) p
         WHERE m.type = 'index' AND m.name NOT LIKE 'sqlite_autoindex%'
         GROUP BY m.name, m.tbl_name",
    )
    .fetch_all(&mut conn)
    .await
    .expect("sqlite indexes");
    let indexes = rows
        .iter()
        .map(|r| (r.get("i"), (r.get("t"), r.get("cols"))))
        .collect();
    conn.close().await.expect("close");
    (columns, indexes)
}

async fn postgres_schema(url: &str) -> (Columns, Indexes) {
    let mut conn = PgConnection::connect(url).await.expect("pg connection");
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c, data_type::text AS ty,
                is_nullable::text AS nullable
         FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("pg columns");
    let columns = rows
        .iter()
        .map(|r| {
            (
                (r.get("t"), r.get("c")),
                (r.get("ty"), r.get::<String, _>("nullable") == "NO"),
            )
        })
        .collect();
    let rows = sqlx::query(
        "SELECT indexname::text AS i, tablename::text AS t, indexdef AS def FROM pg_indexes
         WHERE schemaname = current_schema() AND indexname NOT LIKE '%_pkey'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("pg indexes");
    let indexes = rows
        .iter()
        .map(|r| {
            // "CREATE INDEX name ON public.cells USING btree (sweep, state, idx)"
            let def: String = r.get("def");
            let cols = def
                .rsplit_once('(')
                .and_then(|(_, c)| c.strip_suffix(')'))
                .unwrap_or(&def)
                .to_owned();
            (r.get("i"), (r.get("t"), cols))
        })
        .collect();
    conn.close().await.expect("close");
    (columns, indexes)
}

#[tokio::test]
async fn postgres_schema_matches_sqlite_schema() {
    let Some(server) = test_server() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = db_path(dir.path());
    open(&sqlite.clone().into()).await.close().await;
    let pg = TestDatabase::create(&server).await;
    open(&pg.store_url()).await.close().await;

    let (sqlite_columns, sqlite_indexes) = sqlite_schema(&sqlite).await;
    let (pg_columns, pg_indexes) = postgres_schema(pg.url()).await;
    assert!(sqlite_columns.contains_key(&("cells".into(), "lr_a".into())));
    let differ: Vec<String> = sqlite_columns
        .keys()
        .chain(pg_columns.keys())
        .filter(|k| sqlite_columns.get(*k) != pg_columns.get(*k))
        .map(|k| {
            format!(
                "{}.{}: SQLite {:?}, PostgreSQL {:?}",
                k.0,
                k.1,
                sqlite_columns.get(k),
                pg_columns.get(k)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "the SQLite and PostgreSQL migrations define different columns (type, NOT NULL) — \
         see migrations/postgres/README.md:\n{}",
        differ.join("\n")
    );
    assert!(sqlite_indexes.contains_key("cells_by_state"));
    assert_eq!(sqlite_indexes, pg_indexes, "different indexes");
}

// ---------------------------------------------------------------- PostgreSQL errors

#[tokio::test]
async fn an_unreachable_postgres_server_is_named_without_its_password_with_what_to_do() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let url = StoreUrl::parse("postgres://etagrid:s3cret@127.0.0.1:1/sweeps").expect("url");
    let err = Store::open(&url).await.expect_err("no server there");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("postgres://etagrid:***@127.0.0.1:1/sweeps"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "password leaked: {message}");
    assert!(message.contains("scripts/pg-local.sh up"), "{message}");
}

#[tokio::test]
async fn a_missing_postgres_database_is_an_error_that_says_to_create_it() {
    let Some(server) = test_server() else { return };
    let pg = TestDatabase::create(&server).await;
    let missing = etagrid_store::testing::with_database(pg.url(), &format!("{}_none", pg.name()));
    let err = Store::open(&StoreUrl::parse(&missing).expect("url"))
        .await
        .expect_err("no such database");
    let message = err.to_string();
    assert!(message.contains(&missing), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains("create it"), "{message}");
}

// ---------------------------------------------------------------- one scheduler per sweep

#[tokio::test]
async fn on_postgres_a_second_scheduler_cannot_lock_a_sweep_until_the_first_releases_it() {
    let Some(server) = test_server() else { return };
    let pg = TestDatabase::create(&server).await;
    // Two stores on one database: two schedulers, as on two machines.
    let first = open(&pg.store_url()).await;
    let second = open(&pg.store_url()).await;
    let held = first
        .try_lock_sweep(NAME)
        .await
        .expect("lock")
        .expect("the first scheduler gets the lock");
    second_is_locked_out_of_the_sweep_until_released(
        &second,
        held,
        "a second scheduler must not run the same sweep",
    )
    .await;
}

/// While `held` (another store's lock on the sweep) is held, `second` cannot lock the sweep
/// (`refused`: why it must not) but can lock another; once `held` is released it can lock it.
async fn second_is_locked_out_of_the_sweep_until_released(
    second: &Store,
    held: RunLock,
    refused: &str,
) {
    assert!(
        second.try_lock_sweep(NAME).await.expect("lock").is_none(),
        "{refused}"
    );
    let other = second
        .try_lock_sweep("other")
        .await
        .expect("lock")
        .expect("another sweep is not locked");
    held.release().await.expect("release");
    let again = second
        .try_lock_sweep(NAME)
        .await
        .expect("lock")
        .expect("free once released");
    again.release().await.expect("release");
    other.release().await.expect("release");
}

#[tokio::test]
async fn on_sqlite_the_lock_goes_with_the_database_file_not_the_state_dir() {
    let (_dir, db, first) = empty(Backend::Sqlite).await;
    // A second `etagrid run` on the same file (from any state dir) opens its own store.
    let second = open(&db.url).await;
    let held = first
        .try_lock_sweep(NAME)
        .await
        .expect("lock")
        .expect("the first run gets the lock");
    let path = db.url.sqlite_path().expect("sqlite");
    assert!(
        etagrid_store::lock_path(path).is_file(),
        "the lock lives beside the database"
    );
    second_is_locked_out_of_the_sweep_until_released(
        &second,
        held,
        "a second run must not run the same sweep on the same store",
    )
    .await;
}

both_backends!(run_active_says_whether_a_run_holds_the_sweep);
async fn run_active_says_whether_a_run_holds_the_sweep(b: Backend) {
    let (_dir, db, store) = empty(b).await;
    let watcher = open(&db.url).await;
    assert!(!watcher.run_active(NAME).await.expect("test"));
    let held = store
        .try_lock_sweep(NAME)
        .await
        .expect("lock")
        .expect("free");
    assert!(watcher.run_active(NAME).await.expect("test"));
    assert!(!watcher.run_active("other").await.expect("test"));
    // Testing does not take the lock: the run still holds it, and nobody else can take it.
    assert!(watcher.try_lock_sweep(NAME).await.expect("lock").is_none());
    held.release().await.expect("release");
    assert!(!watcher.run_active(NAME).await.expect("test"));
}

#[tokio::test]
async fn on_postgres_a_run_of_the_same_sweep_name_in_another_database_is_not_this_ones() {
    if etagrid_store::testing::test_server().is_none() {
        return;
    }
    let (_d1, _db1, first) = empty(Backend::Postgres).await;
    let (_d2, db2, _second) = empty(Backend::Postgres).await;
    let watcher = open(&db2.url).await;
    let held = first
        .try_lock_sweep(NAME)
        .await
        .expect("lock")
        .expect("free");
    // pg_locks lists the whole server's advisory locks; only this database's count.
    assert!(!watcher.run_active(NAME).await.expect("test"));
    let own = watcher
        .try_lock_sweep(NAME)
        .await
        .expect("lock")
        .expect("another database's lock does not hold this one's sweep");
    assert!(watcher.run_active(NAME).await.expect("test"));
    own.release().await.expect("release");
    held.release().await.expect("release");
}

// ---------------------------------------------------------------- files that are not our store

/// The bytes of `path`, to check that a refused file was left untouched.
fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_at_once_by_name_and_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notes.sqlite");
    std::fs::write(&path, "these are my notes, not a database\n".repeat(200)).expect("write");
    let before = bytes(&path);
    let started = std::time::Instant::now();
    let err = Store::open(&path).await.expect_err("not a store");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let m = err.to_string();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(m.contains(&path.display().to_string()), "{m}");
    assert!(m.contains("not an SQLite database"), "{m}");
    assert!(m.contains("untouched"), "{m}");
    assert_eq!(bytes(&path), before, "the file was changed");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "files appeared beside it: {names:?}");
}

#[tokio::test]
async fn an_sqlite_database_without_etagrids_tables_is_refused_and_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("other.sqlite");
    {
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&opts).await.expect("create");
        sqlx::query("CREATE TABLE recipes (name TEXT, minutes INTEGER)")
            .execute(&mut conn)
            .await
            .expect("create table");
        sqlx::query("INSERT INTO recipes VALUES ('soup', 30)")
            .execute(&mut conn)
            .await
            .expect("insert");
        conn.close().await.expect("close");
    }
    let before = bytes(&path);
    let err = Store::open(&path).await.expect_err("not our store");
    let m = err.to_string();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(m.contains(&path.display().to_string()), "{m}");
    assert!(m.contains("without etagrid's tables"), "{m}");
    assert!(m.contains("recipes"), "{m}");
    assert_eq!(bytes(&path), before, "the file was changed");
    // Still only the user's table.
    let opts = SqliteConnectOptions::new().filename(&path).read_only(true);
    let mut conn = SqliteConnection::connect_with(&opts).await.expect("open");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .expect("tables");
    assert_eq!(tables, vec!["recipes".to_string()]);
}

#[tokio::test]
async fn an_empty_file_is_a_new_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("new.sqlite");
    std::fs::write(&path, b"").expect("touch");
    let store = open(&path.clone().into()).await;
    assert!(store.sweep_names().await.expect("names").is_empty());
}

both_backends!(a_store_written_by_a_newer_schema_says_so);
async fn a_store_written_by_a_newer_schema_says_so(b: Backend) {
    let (_dir, db, store) = empty(b).await;
    // A migration this etagrid does not know, as a newer etagrid would have recorded it.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000001, 'from the future', TRUE, $1, 0)",
    )
    .bind(vec![0u8; 48])
    .execute(&pool_of(&db).await)
    .await
    .expect("insert a future migration");
    store.close().await;
    let err = Store::open(&db.url).await.expect_err("newer schema");
    let m = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 29991231000001,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(m.contains("newer etagrid"), "{m}");
}

/// A plain sqlx pool on the test's database (to write what etagrid never would).
async fn pool_of(db: &Db) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = match &db.url {
        StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
        StoreUrl::Postgres(u) => u.clone(),
    };
    sqlx::AnyPool::connect(&url).await.expect("pool")
}

#[tokio::test]
async fn a_silent_postgres_server_is_an_error_within_the_connect_timeout() {
    // Accepts TCP connections and never says a word, like a wedged server or a wrong port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(1) {
            held.push(c.expect("accept"));
        }
        // Keep the connection open (silent) until the client gives up.
        for mut c in held {
            let mut buf = [0u8; 1024];
            while std::io::Read::read(&mut c, &mut buf).is_ok_and(|n| n > 0) {}
        }
    });
    let url =
        StoreUrl::parse(&format!("postgres://etagrid@127.0.0.1:{port}/etagrid")).expect("url");
    let started = std::time::Instant::now();
    let err = Store::open(&url).await.expect_err("no answer");
    let took = started.elapsed();
    assert!(
        took >= etagrid_store::CONNECT_TIMEOUT - std::time::Duration::from_millis(100)
            && took < etagrid_store::CONNECT_TIMEOUT + std::time::Duration::from_secs(3),
        "took {took:?}"
    );
    let m = format!("{err:#}");
    assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");
    assert!(
        matches!(err, StoreError::Timeout { secs: 10, .. }),
        "{err:?}"
    );
    assert!(m.contains("does not answer"), "{m}");
    accepted.join().expect("listener thread");
}

both_backends!(halving_rungs_promotions_and_resumed_curves_are_kept);
/// Successive halving's store side: cells put on rung 0 (a cell a grid run finished is at the
/// last rung), a paused cell stored `done` with its device time, a promotion recorded once, and
/// a promoted cell's restarts keeping its curve up to the step it resumes from.
async fn halving_rungs_promotions_and_resumed_curves_are_kept(b: Backend) {
    let f = fixture(b).await;
    f.start(3).await;
    f.finish(3, &Outcome::Done(result())).await;
    let search = SearchSpec {
        strategy: Strategy::Halving,
        ..SearchSpec::default()
    };
    assert_eq!(f.store.init_halving(NAME, &search).await.expect("init"), 4);
    let rungs: Vec<Option<i64>> = f.rows().await.iter().map(|r| r.rung).collect();
    assert_eq!(rungs, [Some(0), Some(0), Some(0), Some(2)]);
    assert_eq!(f.store.init_halving(NAME, &search).await.expect("again"), 0);

    let paused = CellResult {
        steps: 10,
        ..result()
    };
    for i in 0..3 {
        f.start(i).await;
        for step in [5, 10] {
            f.store
                .record_metrics(NAME, f.id(i), step, &[("eval_accuracy", 0.5)])
                .await
                .expect("curve");
        }
        f.finish(i, &Outcome::Paused(paused.clone())).await;
    }
    let r0 = f.row(0).await;
    assert_eq!(
        (r0.state, r0.step, r0.rung),
        (CellState::Done, Some(10), Some(0))
    );
    assert_eq!(
        r0.device_s,
        Some(12.5 / 4.0),
        "its share of the pack's wall time"
    );

    let decided = etagrid_store::RungRow {
        rung: 0,
        points: 3,
        promoted: 2,
        tau: None,
        stopped_pruning: false,
        reason: "rung 1/3: 3 points, kept 1 best + 1 for their η_A rows, pruned 1".into(),
    };
    let (promoted, pruned) = (
        vec![f.id(0).to_owned(), f.id(1).to_owned()],
        vec![f.id(2).to_owned()],
    );
    f.store
        .promote(NAME, &decided, &promoted, &pruned)
        .await
        .expect("promote");
    assert_eq!(
        f.store.halving_rungs(NAME).await.expect("rungs"),
        std::slice::from_ref(&decided)
    );
    assert!(
        f.store
            .promote(NAME, &decided, &promoted, &pruned)
            .await
            .is_err(),
        "a rung is decided once"
    );
    let rows = f.rows().await;
    for r in &rows[..2] {
        assert_eq!(
            (r.state, r.rung, r.resume_step, r.attempts, r.pruned),
            (CellState::Pending, Some(1), Some(10), 0, false)
        );
    }
    assert_eq!(
        (rows[2].state, rows[2].rung, rows[2].pruned),
        (CellState::Done, Some(0), true)
    );

    // Rung 1 of cell 0: a first attempt dies after step 15; the retry keeps steps 5 and 10.
    f.start(0).await;
    f.store
        .record_metrics(NAME, f.id(0), 15, &[("eval_accuracy", 0.6)])
        .await
        .expect("curve");
    f.finish(0, &Outcome::Retry("killed".into())).await;
    f.start(0).await;
    let curve = f
        .store
        .curve(NAME, f.id(0), "eval_accuracy")
        .await
        .expect("curve");
    assert_eq!(curve, [(5, 0.5), (10, 0.5)]);
    f.finish(
        0,
        &Outcome::Paused(CellResult {
            steps: 30,
            wall_s: 8.0,
            pack_size: Some(2),
            ..result()
        }),
    )
    .await;
    assert_eq!(
        f.row(0).await.device_s,
        Some(12.5 / 4.0 + 8.0 / 2.0),
        "segments add up"
    );
}

both_backends!(the_search_a_halving_started_with_is_recorded_once_as_given);
/// The `[search]` settings the first halving run put the cells on rungs with read back exactly
/// (rung fractions that are no short decimals included, and unset rungs written out as the
/// default they stood for), per sweep, and a later start does not overwrite them: they are what
/// the next run is compared with. A record without rungs (an etagrid of before 2026-12-01 with
/// `rungs` unset) reads back as that version's default, `[1/r², 1/r, 1]`.
async fn the_search_a_halving_started_with_is_recorded_once_as_given(b: Backend) {
    let f = fixture(b).await;
    assert_eq!(f.store.halving_search(NAME).await.expect("none yet"), None);
    assert_eq!(f.store.max_rung(NAME).await.expect("no rung yet"), None);
    f.start(3).await;
    f.finish(3, &Outcome::Done(result())).await;

    let started = SearchSpec {
        strategy: Strategy::Halving,
        reduction: 4,
        rungs: Some(vec![1.0 / 27.0, 0.111, 1.0 / 3.0, 1.0]),
        keep_per_row: 1,
        min_tau: 0.25,
        refine: false,
    };
    assert_eq!(f.store.init_halving(NAME, &started).await.expect("init"), 4);
    assert_eq!(
        f.store.halving_search(NAME).await.expect("recorded"),
        Some(started.clone())
    );
    assert_eq!(
        f.store.max_rung(NAME).await.expect("rungs"),
        Some(3),
        "the cell a grid run finished is on the last of four rungs"
    );
    let other = SearchSpec {
        strategy: Strategy::Halving,
        ..SearchSpec::default()
    };
    assert_eq!(f.store.init_halving(NAME, &other).await.expect("again"), 0);
    assert_eq!(
        f.store.halving_search(NAME).await.expect("kept"),
        Some(started.clone()),
        "the first start's settings stay recorded"
    );

    // Another sweep of the same store keeps its own record; rungs left unset are recorded as
    // today's default.
    let spec = parse_in(f.dir.path(), "other", &SWEEP);
    f.store
        .enqueue(&spec, &spec.cells())
        .await
        .expect("enqueue");
    assert_eq!(f.store.halving_search("other").await.expect("none"), None);
    f.store
        .init_halving("other", &other)
        .await
        .expect("init other");
    let written = SearchSpec {
        rungs: Some(DEFAULT_RUNGS.to_vec()),
        ..other.clone()
    };
    assert_eq!(
        f.store.halving_search("other").await.expect("other"),
        Some(written)
    );
    assert_eq!(
        f.store.halving_search(NAME).await.expect("demo"),
        Some(started)
    );
    assert_eq!(f.store.max_rung("other").await.expect("rungs"), Some(0));

    // As an older etagrid recorded it: no rungs, reduction 4 (then rungs 1/16, 1/4, 1).
    sqlx::query("UPDATE halving_search SET rungs = NULL WHERE sweep = 'other'")
        .execute(&pool_of(&f.db).await)
        .await
        .expect("unset the rungs");
    assert_eq!(
        f.store.halving_search("other").await.expect("older record"),
        Some(SearchSpec {
            rungs: Some(vec![1.0 / 16.0, 1.0 / 4.0, 1.0]),
            ..other
        })
    );
}
