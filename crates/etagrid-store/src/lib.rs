//! The results store. SQLite (WAL, busy timeout) by default; the schema lives in the top-level
//! `migrations/` and is applied on open. One process writes: the scheduler.

use etagrid_spec::protocol::{CellResult, ParamGroupInfo};
use etagrid_spec::{Cell, SweepSpec};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod lease;
pub use lease::{unix_now, Claim, Lease, SlurmTask};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open the results store at {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("apply the store's migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("query the results store")]
    Query(#[from] sqlx::Error),
    #[error("sweep `{0}` is not in the store: run it first (`etagrid run <sweep.toml>`)")]
    UnknownSweep(String),
    #[error("decode a stored cell configuration")]
    Decode(#[from] serde_json::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CellState {
    Pending,
    Running,
    Done,
    Failed,
    Diverged,
}

impl CellState {
    pub const ALL: [CellState; 5] = [
        CellState::Pending,
        CellState::Running,
        CellState::Done,
        CellState::Failed,
        CellState::Diverged,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Pending => "pending",
            CellState::Running => "running",
            CellState::Done => "done",
            CellState::Failed => "failed",
            CellState::Diverged => "diverged",
        }
    }
    fn parse(s: &str) -> Result<CellState> {
        CellState::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                StoreError::Query(sqlx::Error::Decode(
                    format!("unknown cell state {s:?}").into(),
                ))
            })
    }
    /// Finished for good: a rerun skips it.
    pub fn is_final(self) -> bool {
        matches!(self, CellState::Done | CellState::Diverged)
    }
}

#[derive(Debug, Clone)]
pub struct SweepRow {
    pub name: String,
    pub source_path: String,
    pub source_text: String,
    pub metric: String,
    pub higher_is_better: bool,
}

#[derive(Debug, Clone)]
pub struct CellRow {
    pub id: String,
    pub index: i64,
    pub lr_a: f64,
    pub lr_b: f64,
    pub seed: i64,
    pub state: CellState,
    pub attempts: i64,
    pub device: Option<String>,
    pub step: Option<i64>,
    pub total_steps: Option<i64>,
    pub metric: Option<f64>,
    pub eval_loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub mcc: Option<f64>,
    pub train_loss: Option<f64>,
    pub wall_s: Option<f64>,
    pub error: Option<String>,
    pub config: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnqueueSummary {
    pub added: usize,
    pub existing: usize,
}

/// How a cell's run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done(CellResult),
    Diverged {
        step: u64,
        loss: f64,
    },
    Failed(String),
    /// Stopped by the user or a crash of the run: back to pending, no attempt charged.
    Interrupted,
    /// The worker died or timed out and the cell has attempts left: back to pending, the attempt
    /// stays charged and the cause is kept in `error`.
    Retry(String),
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the SQLite store at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                    path: path.to_owned(),
                    source: sqlx::Error::Io(e),
                })?;
            }
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        Ok(Store { pool })
    }

    /// Records the sweep (or refreshes its text) and inserts the cells it does not have yet, in
    /// one transaction. Cells already present keep their state: that is what makes a rerun resume.
    pub async fn enqueue(&self, spec: &SweepSpec, cells: &[Cell]) -> Result<EnqueueSummary> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sweeps (name, source_path, source_text, metric, higher_is_better)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name) DO UPDATE SET source_path = excluded.source_path,
                 source_text = excluded.source_text, metric = excluded.metric,
                 higher_is_better = excluded.higher_is_better, updated_at = CURRENT_TIMESTAMP",
        )
        .bind(&spec.name)
        .bind(spec.source.to_string_lossy().as_ref())
        .bind(&spec.source_text)
        .bind(spec.task.metric.name())
        .bind(spec.task.metric.higher_is_better())
        .execute(&mut *tx)
        .await?;
        // Multi-row inserts: one statement per 1,000 cells (7 values each, under SQLite's
        // 32,766-parameter limit) instead of one per cell.
        let mut added = 0;
        for chunk in cells.chunks(1000) {
            let configs = chunk
                .iter()
                .map(|c| serde_json::to_string(&c.config))
                .collect::<Result<Vec<_>, _>>()?;
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO cells (sweep, id, idx, lr_a, lr_b, seed, config) ",
            );
            q.push_values(chunk.iter().zip(configs), |mut b, (cell, config)| {
                b.push_bind(&spec.name)
                    .push_bind(&cell.id.0)
                    .push_bind(cell.index as i64)
                    .push_bind(cell.config.lr_a)
                    .push_bind(cell.config.lr_b)
                    .push_bind(cell.config.seed as i64)
                    .push_bind(config);
            });
            q.push(" ON CONFLICT (sweep, id) DO NOTHING");
            added += q.build().execute(&mut *tx).await?.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(EnqueueSummary {
            added,
            existing: cells.len() - added,
        })
    }

    /// Cells left `running` by a run that did not end cleanly go back to `pending`, their attempt
    /// refunded (the scheduler died, not the cell). Only call this
    /// while holding the run lock (no other scheduler can be using these cells).
    pub async fn recover_running(&self, sweep: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE cells SET state = 'pending', device = NULL,
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
             WHERE sweep = ?1 AND state = 'running'",
        )
        .bind(sweep)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Gives failed cells a fresh set of attempts (`etagrid run --retry-failed`).
    pub async fn reset_failed(&self, sweep: &str) -> Result<u64> {
        let r = sqlx::query("UPDATE cells SET attempts = 0 WHERE sweep = ?1 AND state = 'failed'")
            .bind(sweep)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn sweep(&self, name: &str) -> Result<SweepRow> {
        let row = sqlx::query(
            "SELECT name, source_path, source_text, metric, higher_is_better FROM sweeps WHERE name = ?1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::UnknownSweep(name.to_owned()))?;
        Ok(SweepRow {
            name: row.try_get("name")?,
            source_path: row.try_get("source_path")?,
            source_text: row.try_get("source_text")?,
            metric: row.try_get("metric")?,
            higher_is_better: row.try_get("higher_is_better")?,
        })
    }

    pub async fn sweep_names(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM sweeps ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
    }

    /// Every cell of the sweep in grid order.
    pub async fn cells(&self, sweep: &str) -> Result<Vec<CellRow>> {
        self.cells_where(sweep, None).await
    }

    /// The cells of the sweep in one state, in grid order (uses the state index: cheap on a
    /// 100,000-cell sweep when few cells are in that state).
    pub async fn cells_in_state(&self, sweep: &str, state: CellState) -> Result<Vec<CellRow>> {
        self.cells_where(sweep, Some(state)).await
    }

    /// Mean wall time of the done cells, for an ETA.
    pub async fn mean_wall_s(&self, sweep: &str) -> Result<Option<f64>> {
        let row =
            sqlx::query("SELECT AVG(wall_s) AS w FROM cells WHERE sweep = ?1 AND state = 'done'")
                .bind(sweep)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("w")?)
    }

    async fn cells_where(&self, sweep: &str, state: Option<CellState>) -> Result<Vec<CellRow>> {
        const COLUMNS: &str =
            "SELECT id, idx, lr_a, lr_b, seed, state, attempts, device, step, total_steps,
                    metric, eval_loss, accuracy, macro_f1, mcc, train_loss, wall_s, error, config
             FROM cells";
        // Two statements, not `?2 IS NULL OR state = ?2`: that form cannot use the state index
        // and scans every cell (and its config) of a large sweep.
        let rows = match state {
            None => {
                sqlx::query(&format!("{COLUMNS} WHERE sweep = ?1 ORDER BY idx"))
                    .bind(sweep)
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(st) => {
                sqlx::query(&format!(
                    "{COLUMNS} WHERE sweep = ?1 AND state = ?2 ORDER BY idx"
                ))
                .bind(sweep)
                .bind(st.as_str())
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(CellRow {
                    id: r.try_get("id")?,
                    index: r.try_get("idx")?,
                    lr_a: r.try_get("lr_a")?,
                    lr_b: r.try_get("lr_b")?,
                    seed: r.try_get("seed")?,
                    state: CellState::parse(r.try_get("state")?)?,
                    attempts: r.try_get("attempts")?,
                    device: r.try_get("device")?,
                    step: r.try_get("step")?,
                    total_steps: r.try_get("total_steps")?,
                    metric: r.try_get("metric")?,
                    eval_loss: r.try_get("eval_loss")?,
                    accuracy: r.try_get("accuracy")?,
                    macro_f1: r.try_get("macro_f1")?,
                    mcc: r.try_get("mcc")?,
                    train_loss: r.try_get("train_loss")?,
                    wall_s: r.try_get("wall_s")?,
                    error: r.try_get("error")?,
                    config: r.try_get("config")?,
                })
            })
            .collect()
    }

    pub async fn counts(&self, sweep: &str) -> Result<BTreeMap<CellState, i64>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM cells WHERE sweep = ?1 GROUP BY state")
                .bind(sweep)
                .fetch_all(&self.pool)
                .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            out.insert(CellState::parse(r.try_get("state")?)?, r.try_get("n")?);
        }
        Ok(out)
    }

    /// Marks a cell running on `device` and counts the attempt.
    /// Earlier attempts' curves are dropped so a retried cell has one curve.
    pub async fn start_cell(&self, sweep: &str, id: &str, device: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM metrics WHERE sweep = ?1 AND cell_id = ?2")
            .bind(sweep)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE cells SET state = 'running', device = ?3, attempts = attempts + 1,
                 started_at = CURRENT_TIMESTAMP, finished_at = NULL, error = NULL, step = 0
             WHERE sweep = ?1 AND id = ?2",
        )
        .bind(sweep)
        .bind(id)
        .bind(device)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_groups(
        &self,
        sweep: &str,
        id: &str,
        groups: &[ParamGroupInfo],
        total_steps: u64,
    ) -> Result<()> {
        sqlx::query("UPDATE cells SET groups = ?3, total_steps = ?4 WHERE sweep = ?1 AND id = ?2")
            .bind(sweep)
            .bind(id)
            .bind(serde_json::to_string(groups)?)
            .bind(total_steps as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Appends points of a cell's curves and its current step, in one transaction.
    pub async fn record_metrics(
        &self,
        sweep: &str,
        id: &str,
        step: u64,
        points: &[(&str, f64)],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (name, value) in points {
            sqlx::query("INSERT INTO metrics (sweep, cell_id, step, name, value) VALUES (?1, ?2, ?3, ?4, ?5)")
                .bind(sweep)
                .bind(id)
                .bind(step as i64)
                .bind(*name)
                .bind(*value)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE cells SET step = ?3 WHERE sweep = ?1 AND id = ?2")
            .bind(sweep)
            .bind(id)
            .bind(step as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A cell's curve `name` as (step, value) pairs.
    pub async fn curve(&self, sweep: &str, id: &str, name: &str) -> Result<Vec<(i64, f64)>> {
        let rows = sqlx::query(
            "SELECT step, value FROM metrics WHERE sweep = ?1 AND cell_id = ?2 AND name = ?3 ORDER BY step",
        )
        .bind(sweep)
        .bind(id)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("step")?, r.try_get("value")?)))
            .collect()
    }

    pub async fn finish_cell(&self, sweep: &str, id: &str, outcome: &Outcome) -> Result<()> {
        let q = match outcome {
            Outcome::Done(r) => sqlx::query(
                "UPDATE cells SET state = 'done', finished_at = CURRENT_TIMESTAMP, metric = ?3,
                     eval_loss = ?4, accuracy = ?5, train_loss = ?6, wall_s = ?7, samples_per_s = ?8,
                     step = ?9, error = NULL, macro_f1 = ?10, mcc = ?11
                 WHERE sweep = ?1 AND id = ?2",
            )
            .bind(sweep)
            .bind(id)
            .bind(r.metric)
            .bind(r.eval_loss)
            .bind(r.accuracy)
            .bind(r.train_loss)
            .bind(r.wall_s)
            .bind(r.train_samples_per_s)
            .bind(r.steps as i64)
            .bind(r.macro_f1)
            .bind(r.mcc),
            Outcome::Diverged { step, loss } => sqlx::query(
                "UPDATE cells SET state = 'diverged', finished_at = CURRENT_TIMESTAMP, step = ?3,
                     train_loss = ?4, error = 'loss became NaN or infinite'
                 WHERE sweep = ?1 AND id = ?2",
            )
            .bind(sweep)
            .bind(id)
            .bind(*step as i64)
            // SQLite stores NaN as NULL; keep the infinite value if there is one.
            .bind(if loss.is_nan() { None } else { Some(*loss) }),
            Outcome::Failed(error) => sqlx::query(
                "UPDATE cells SET state = 'failed', finished_at = CURRENT_TIMESTAMP, error = ?3
                 WHERE sweep = ?1 AND id = ?2",
            )
            .bind(sweep)
            .bind(id)
            .bind(error),
            Outcome::Retry(error) => sqlx::query(
                "UPDATE cells SET state = 'pending', device = NULL, finished_at = CURRENT_TIMESTAMP,
                     error = ?3
                 WHERE sweep = ?1 AND id = ?2",
            )
            .bind(sweep)
            .bind(id)
            .bind(error),
            Outcome::Interrupted => sqlx::query(
                "UPDATE cells SET state = 'pending', device = NULL, attempts = MAX(attempts - 1, 0)
                 WHERE sweep = ?1 AND id = ?2",
            )
            .bind(sweep)
            .bind(id),
        };
        q.execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}
