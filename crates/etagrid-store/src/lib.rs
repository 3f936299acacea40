//! The results store: sweeps, cells and their curves. SQLite (WAL, busy timeout) by default, or
//! PostgreSQL for clusters (see [`StoreUrl`]); the schema lives in the top-level `migrations/`
//! (PostgreSQL's dialect in `migrations/postgres/`) and is applied on open. With SQLite exactly
//! one process writes: the scheduler.

mod backend;
mod filelock;
#[doc(hidden)]
pub mod testing;

pub use backend::{redact, Backend, StoreUrl, CONNECT_TIMEOUT, STATEMENT_TIMEOUT};
pub use filelock::lock_path;

use etagrid_spec::protocol::{CellResult, Measure, ParamGroupInfo};
use etagrid_spec::{Cell, SweepSpec};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use std::collections::BTreeMap;

mod halving;
pub use halving::RungRow;
mod lease;
pub use lease::{unix_now, Claim, Lease, SlurmTask};
mod times;
pub use times::CellTimes;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `location` is the path or the URL without its password; `hint` says what to do.
    #[error("open the results store at {location}{hint}")]
    Open {
        location: String,
        hint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("`{url}` is not a results-store location: {reason}")]
    BadUrl { url: String, reason: String },
    /// The server took a connection but did not answer within the connect timeout.
    #[error(
        "open the results store at {location}: no answer within {secs} s — something accepts \
             connections there but does not answer as a PostgreSQL server would; check the host \
             and port (is it PostgreSQL?) or the server's health"
    )]
    Timeout { location: String, secs: u64 },
    /// A file that is not an etagrid store: refused and left untouched.
    #[error(
        "{location} is not an etagrid results store: {reason}; etagrid left it untouched — \
             point --db (or ETAGRID_DB) at an etagrid store or at a new file"
    )]
    NotAStore { location: String, reason: String },
    /// The store has migrations this etagrid does not know.
    #[error(
        "the results store at {location} was written by a newer etagrid (schema version \
             {found}; this etagrid knows versions up to {known}): use that etagrid or a newer \
             one; this one leaves the store untouched"
    )]
    NewerSchema {
        location: String,
        found: i64,
        known: i64,
    },
    #[error("apply the store's migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("query the results store")]
    Query(#[from] sqlx::Error),
    #[error("sweep `{0}` is not in the store: run it first (`etagrid run <sweep.toml>`)")]
    UnknownSweep(String),
    #[error("take the run lock beside the store")]
    Lock(#[source] std::io::Error),
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
    /// The digest of the inputs' content at the last enqueue ([`SweepSpec::inputs`]); `None`
    /// for sweeps stored by an etagrid that did not record it.
    pub inputs: Option<String>,
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
    /// Cells trained together with this one in one worker (`None`: alone, or an older row).
    pub pack_size: Option<i64>,
    pub error: Option<String>,
    pub config: String,
    /// Successive halving: the rung (0-based) the cell works toward or last reached; `None` for
    /// a grid sweep's cell.
    pub rung: Option<i64>,
    /// The step its current segment continues from (`None`: from the start).
    pub resume_step: Option<i64>,
    /// Left out by a promotion: its metric is the one of rung `rung`.
    pub pruned: bool,
    /// Device seconds all its segments took (its share of each pack's wall time).
    pub device_s: Option<f64>,
}

/// The `n`-th (1-based) bind parameter of a statement whose parameters are all bound in order:
/// `?` on SQLite (fastest to parse in long statements), `$n` on PostgreSQL.
fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_owned(),
        Backend::Postgres => format!("${n}"),
    }
}

/// A sweep's run lock from [`Store::try_lock_sweep`] (on PostgreSQL, the session that holds it).
#[must_use = "the lock is released when this is dropped"]
#[derive(Debug)]
pub struct RunLock {
    /// The sweep and the session holding its advisory lock (PostgreSQL).
    conn: Option<(AnyConnection, String)>,
    /// On SQLite, `<db>.lock` with the sweep's byte locked (released when closed).
    _file: Option<std::fs::File>,
}

impl RunLock {
    /// Releases the lock now (dropping it also does, once the server sees the session end).
    /// On PostgreSQL the lock is given back before the session is closed: a closing session's
    /// locks go only when the server has finished with it, so another session could still see
    /// the run holding the sweep for a moment after `release` returned.
    pub async fn release(self) -> Result<()> {
        if let Some((mut conn, sweep)) = self.conn {
            sqlx::query("SELECT pg_advisory_unlock(hashtext('etagrid run'), hashtext($1))")
                .bind(&sweep)
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
        Ok(())
    }
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
    /// Successive halving: the cell reached the end of its rung's segment (stored `done` with
    /// the rung's evaluation until a promotion continues or prunes it).
    Paused(CellResult),
    Diverged {
        step: u64,
        loss: f64,
        /// The cell's share of its worker's device time until it diverged (None from a worker
        /// that did not say): added to `device_s`.
        device_s: Option<f64>,
    },
    Failed(String),
    /// The worker found its inputs bad (a data or model file changed after the run checked it):
    /// stored `failed` with the error, the attempt refunded, so the next run (without
    /// `--retry-failed`) runs it again once the input is fixed.
    InputError(String),
    /// Stopped by the user or a crash of the run: back to pending, no attempt charged.
    Interrupted,
    /// The worker died or timed out and the cell has attempts left: back to pending, the attempt
    /// stays charged and the cause is kept in `error`.
    Retry(String),
}

/// An open results store: a pool of connections to SQLite or PostgreSQL through sqlx's `Any`
/// driver, so every query below is written once for both.
///
/// **Writing a query that works on both backends** (the tests run every store test on both):
/// - placeholders `$1`, `$2`, … (a number may repeat); never `?`, so no `QueryBuilder`, whose
///   `Any` placeholders are `?`. Build multi-row statements by hand as [`Store::enqueue`] does,
///   under PostgreSQL's 65,535 and SQLite's 32,766 parameter limits, with `placeholder()`
///   (thousands of numbered `$N` are slow for SQLite's parser);
/// - bind and read only `i64`, `f64`, `String`/`&str` and `Option`s of them; store flags as
///   0/1 `i64` (an SQLite integer does not decode as `bool`); every integer column is `INTEGER`
///   in SQLite and `BIGINT` in PostgreSQL, every float `REAL` / `DOUBLE PRECISION`;
/// - standard SQL only: `ON CONFLICT … DO UPDATE/NOTHING`, `RETURNING`, `CASE` (not SQLite's
///   two-argument `MAX`/`MIN` or PostgreSQL's `GREATEST`), `COUNT`/`AVG` (not `SUM` of
///   integers, which is `numeric` in PostgreSQL); sort text in Rust (collations differ);
/// - times you compare: bind Unix seconds as `i64` (`CURRENT_TIMESTAMP` is text whose format
///   differs between the two);
/// - a schema change is two files: `migrations/NNN_name.sql` (SQLite) and the same name under
///   `migrations/postgres/` (see its README); a test checks they define the same columns.
///
/// Queries run on `&self.pool` (or a transaction from `self.pool.begin()`).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: StoreUrl,
}

impl Store {
    /// Opens (creating if needed) the store at `url` — an SQLite path, or a [`StoreUrl`] parsed
    /// from `sqlite://…` / `postgres://…` — and brings its schema up to date.
    pub async fn open(url: impl Into<StoreUrl>) -> Result<Store> {
        let url = url.into();
        let pool = backend::connect(&url).await?;
        Ok(Store {
            pool,
            backend: url.backend(),
            url,
        })
    }

    /// Which engine this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Takes the sweep's run lock, so that no second `etagrid run` recovers or runs this sweep's
    /// cells meanwhile, whatever its state directory; `None` when another run holds it. The lock
    /// lasts until [`RunLock::release`], or until the value is dropped or the process dies.
    ///
    /// On SQLite it is a lock on the sweep's byte of `<db>.lock`, beside the database (see
    /// [`lock_path`]). On PostgreSQL it is an advisory lock taken on a connection of its own (so
    /// it also excludes runs on other machines), released when the server sees the session end.
    /// Its key is `(hashtext('etagrid run'), hashtext(sweep))`. Either way two sweep names whose
    /// hashes collide would exclude each other, never run together.
    pub async fn try_lock_sweep(&self, sweep: &str) -> Result<Option<RunLock>> {
        if let StoreUrl::Sqlite(path) = &self.url {
            return Ok(filelock::try_lock(path, sweep)
                .map_err(StoreError::Lock)?
                .map(|f| RunLock {
                    conn: None,
                    _file: Some(f),
                }));
        }
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext('etagrid run'), hashtext($1))",
        )
        .bind(sweep)
        .fetch_one(&mut conn)
        .await?;
        if locked {
            Ok(Some(RunLock {
                conn: Some((conn, sweep.to_owned())),
                _file: None,
            }))
        } else {
            conn.close().await?;
            Ok(None)
        }
    }

    /// Whether an `etagrid run` holds the sweep's run lock now (tested without taking it, so it
    /// never makes a starting run refuse). With no run holding it, the sweep's `running` cells
    /// that no SLURM task leases were left by a run that died.
    pub async fn run_active(&self, sweep: &str) -> Result<bool> {
        if let StoreUrl::Sqlite(path) = &self.url {
            return filelock::is_locked(path, sweep).map_err(StoreError::Lock);
        }
        // The advisory lock's two int4 keys appear in pg_locks as the oids classid and objid
        // (objsubid 2 marks the two-key form). Advisory locks belong to one database, but
        // pg_locks lists the whole server's: another database's run of a sweep of the same name
        // is not this one's.
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND classid = hashtext('etagrid run')::oid AND objid = hashtext($1)::oid
                 AND objsubid = 2
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(sweep)
        .fetch_one(&self.pool)
        .await?;
        Ok(held > 0)
    }

    /// Records the sweep (or refreshes its text) and inserts the cells it does not have yet, in
    /// one transaction. Cells already present keep their state: that is what makes a rerun resume.
    pub async fn enqueue(&self, spec: &SweepSpec, cells: &[Cell]) -> Result<EnqueueSummary> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sweeps (name, source_path, source_text, metric, higher_is_better, inputs)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET source_path = excluded.source_path,
                 source_text = excluded.source_text, metric = excluded.metric,
                 higher_is_better = excluded.higher_is_better, inputs = excluded.inputs,
                 updated_at = CURRENT_TIMESTAMP",
        )
        .bind(&spec.name)
        .bind(spec.source.to_string_lossy().as_ref())
        .bind(&spec.source_text)
        .bind(spec.task.metric.name())
        // A 0/1 integer on both backends (see the `Store` docs).
        .bind(i64::from(spec.task.metric.higher_is_better()))
        .bind(spec.inputs.as_deref())
        .execute(&mut *tx)
        .await?;
        // Multi-row inserts: one statement per 1,000 cells (7 values each: 7,000 parameters,
        // under SQLite's 32,766 and PostgreSQL's 65,535) instead of one statement per cell.
        // Built by hand (`QueryBuilder<Any>` writes `?`, which PostgreSQL rejects) with
        // `placeholder`: SQLite's parser looks each numbered `$N` up in a list, which made a
        // 100,000-cell enqueue 3× slower than with anonymous `?`.
        const CHUNK: usize = 1000;
        let mut added = 0;
        for chunk in cells.chunks(CHUNK) {
            let configs = chunk
                .iter()
                .map(|c| serde_json::to_string(&c.config))
                .collect::<Result<Vec<_>, _>>()?;
            let mut sql = String::from(
                "INSERT INTO cells (sweep, id, idx, lr_a, lr_b, seed, config) VALUES ",
            );
            let mut n = 0;
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "(" } else { ", (" });
                for j in 0..7 {
                    n += 1;
                    if j > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&placeholder(self.backend, n));
                }
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT (sweep, id) DO NOTHING");
            let mut q = sqlx::query(&sql);
            for (cell, config) in chunk.iter().zip(configs) {
                q = q
                    .bind(&spec.name)
                    .bind(&cell.id.0)
                    .bind(cell.index as i64)
                    .bind(cell.config.lr_a)
                    .bind(cell.config.lr_b)
                    .bind(cell.config.seed as i64)
                    .bind(config);
            }
            added += q.execute(&mut *tx).await?.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(EnqueueSummary {
            added,
            existing: cells.len() - added,
        })
    }

    /// Cells left `running` by a run that did not end cleanly go back to `pending`, their attempt
    /// refunded (the scheduler died, not the cell). Only call this
    /// while holding the run lock (no other scheduler can be using these cells). Cells leased by
    /// SLURM workers (`lease_owner`) are left alone: their tasks may still be running them.
    pub async fn recover_running(&self, sweep: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE cells SET state = 'pending', device = NULL,
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
             WHERE sweep = $1 AND state = 'running' AND lease_owner IS NULL",
        )
        .bind(sweep)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Gives failed cells a fresh set of attempts (`etagrid run --retry-failed`).
    pub async fn reset_failed(&self, sweep: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE cells SET attempts = 0 WHERE sweep = $1 AND state = 'failed' AND pruned = 0",
        )
        .bind(sweep)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn sweep(&self, name: &str) -> Result<SweepRow> {
        let row = sqlx::query(
            "SELECT name, source_path, source_text, metric, higher_is_better, inputs FROM sweeps
             WHERE name = $1",
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
            higher_is_better: row.try_get::<i64, _>("higher_is_better")? != 0,
            inputs: row.try_get("inputs")?,
        })
    }

    pub async fn sweep_names(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM sweeps")
            .fetch_all(&self.pool)
            .await?;
        // Sorted here: the two databases' text collations differ.
        let mut names = rows
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<Vec<String>, _>>()?;
        names.sort();
        Ok(names)
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
            sqlx::query("SELECT AVG(wall_s) AS w FROM cells WHERE sweep = $1 AND state = 'done'")
                .bind(sweep)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("w")?)
    }

    async fn cells_where(&self, sweep: &str, state: Option<CellState>) -> Result<Vec<CellRow>> {
        const COLUMNS: &str =
            "SELECT id, idx, lr_a, lr_b, seed, state, attempts, device, step, total_steps,
                    metric, eval_loss, accuracy, macro_f1, mcc, train_loss, wall_s, pack_size, error,
                    config, rung, resume_step, pruned, device_s
             FROM cells";
        // Two statements, not `$2 IS NULL OR state = $2`: that form cannot use the state index
        // and scans every cell (and its config) of a large sweep.
        match state {
            None => {
                let sql = format!("{COLUMNS} WHERE sweep = $1 ORDER BY idx");
                self.sweep_rows(&sql, sweep, cell_row).await
            }
            Some(st) => {
                let rows = sqlx::query(&format!(
                    "{COLUMNS} WHERE sweep = $1 AND state = $2 ORDER BY idx"
                ))
                .bind(sweep)
                .bind(st.as_str())
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(cell_row).collect()
            }
        }
    }

    /// Every row `sql` gives with `$1` bound to `sweep`, each read by `read`.
    async fn sweep_rows<T>(
        &self,
        sql: &str,
        sweep: &str,
        read: impl FnMut(&AnyRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = sqlx::query(sql).bind(sweep).fetch_all(&self.pool).await?;
        rows.iter().map(read).collect()
    }

    pub async fn counts(&self, sweep: &str) -> Result<BTreeMap<CellState, i64>> {
        let counts = self
            .sweep_rows(
                "SELECT state, COUNT(*) AS n FROM cells WHERE sweep = $1 GROUP BY state",
                sweep,
                |r| Ok((CellState::parse(r.try_get("state")?)?, r.try_get("n")?)),
            )
            .await?;
        Ok(counts.into_iter().collect())
    }

    /// The sweep's cells by state, with the `done` ones successive halving pruned at their rung
    /// apart (a cell that failed or diverged on a rung is pruned too, and counted as such): two
    /// counting queries, no rows read.
    pub async fn state_counts(&self, sweep: &str) -> Result<StateCounts> {
        let by_state = self.counts(sweep).await?;
        let pruned = self
            .sweep_rows(
                "SELECT COUNT(*) AS n FROM cells WHERE sweep = $1 AND state = 'done' AND pruned = 1",
                sweep,
                |r| r.try_get::<i64, _>("n").map_err(Into::into),
            )
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        Ok(StateCounts { by_state, pruned })
    }

    /// Marks a cell running on `device` and counts the attempt, if it may start: it must be
    /// pending or failed and not leased by a SLURM task (a task may have claimed it since the
    /// caller read its queue). Returns false, changing nothing, when it may not.
    /// Earlier attempts' curves are dropped so a retried cell has one curve.
    pub async fn start_cell(&self, sweep: &str, id: &str, device: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let started = sqlx::query(
            "UPDATE cells SET state = 'running', device = $3, attempts = attempts + 1,
                 started_at = CURRENT_TIMESTAMP, finished_at = NULL, error = NULL, step = 0
             WHERE sweep = $1 AND id = $2 AND state IN ('pending', 'failed')
                 AND lease_owner IS NULL",
        )
        .bind(sweep)
        .bind(id)
        .bind(device)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !started {
            tx.rollback().await?;
            return Ok(false);
        }
        drop_curves_and_commit(tx, sweep, id).await?;
        Ok(true)
    }

    pub async fn set_groups(
        &self,
        sweep: &str,
        id: &str,
        groups: &[ParamGroupInfo],
        total_steps: u64,
    ) -> Result<()> {
        sqlx::query("UPDATE cells SET groups = $3, total_steps = $4 WHERE sweep = $1 AND id = $2")
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
            sqlx::query("INSERT INTO metrics (sweep, cell_id, step, name, value) VALUES ($1, $2, $3, $4, $5)")
                .bind(sweep)
                .bind(id)
                .bind(step as i64)
                .bind(*name)
                .bind(*value)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE cells SET step = $3 WHERE sweep = $1 AND id = $2")
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
            "SELECT step, value FROM metrics WHERE sweep = $1 AND cell_id = $2 AND name = $3 ORDER BY step",
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
            Outcome::Done(r) | Outcome::Paused(r) => sqlx::query(
                "UPDATE cells SET state = 'done', finished_at = CURRENT_TIMESTAMP, metric = $3,
                     eval_loss = $4, accuracy = $5, train_loss = $6, wall_s = $7, samples_per_s = $8,
                     step = $9, error = NULL, macro_f1 = $10, mcc = $11, pack_size = $12,
                     device_s = COALESCE(device_s, 0) + $13
                 WHERE sweep = $1 AND id = $2",
            )
            .bind(sweep)
            .bind(id)
            .bind(r.metric)
            .bind(r.eval_loss)
            .bind(r.metrics.get(Measure::Accuracy))
            .bind(r.train_loss)
            .bind(r.wall_s)
            .bind(r.train_samples_per_s)
            .bind(r.steps as i64)
            .bind(r.metrics.get(Measure::MacroF1))
            .bind(r.metrics.get(Measure::Mcc))
            .bind(r.pack_size.map(i64::from))
            .bind(r.device_seconds()),
            Outcome::Diverged {
                step,
                loss,
                device_s,
            } => sqlx::query(
                "UPDATE cells SET state = 'diverged', finished_at = CURRENT_TIMESTAMP, step = $3,
                     train_loss = $4, error = 'loss became NaN or infinite',
                     device_s = CASE WHEN $5 IS NULL THEN device_s ELSE COALESCE(device_s, 0) + $5 END
                 WHERE sweep = $1 AND id = $2",
            )
            .bind(sweep)
            .bind(id)
            .bind(*step as i64)
            // SQLite stores NaN as NULL (PostgreSQL would keep it): NULL on both; keep the
            // infinite value if there is one.
            .bind(if loss.is_nan() { None } else { Some(*loss) })
            .bind(*device_s),
            Outcome::Failed(error) => sqlx::query(
                "UPDATE cells SET state = 'failed', finished_at = CURRENT_TIMESTAMP, error = $3
                 WHERE sweep = $1 AND id = $2",
            )
            .bind(sweep)
            .bind(id)
            .bind(error),
            Outcome::InputError(error) => sqlx::query(
                "UPDATE cells SET state = 'failed', finished_at = CURRENT_TIMESTAMP, error = $3,
                     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
                 WHERE sweep = $1 AND id = $2",
            )
            .bind(sweep)
            .bind(id)
            .bind(format!("input error: {error}")),
            Outcome::Retry(error) => sqlx::query(
                "UPDATE cells SET state = 'pending', device = NULL, finished_at = CURRENT_TIMESTAMP,
                     error = $3
                 WHERE sweep = $1 AND id = $2",
            )
            .bind(sweep)
            .bind(id)
            .bind(error),
            Outcome::Interrupted => sqlx::query(
                "UPDATE cells SET state = 'pending', device = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
                 WHERE sweep = $1 AND id = $2",
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

/// A sweep's cells by state ([`Store::state_counts`]); `pruned` of the `done` ones were pruned by
/// successive halving at a rung.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateCounts {
    pub by_state: BTreeMap<CellState, i64>,
    pub pruned: i64,
}

impl StateCounts {
    /// "2 done, 7 pruned by successive halving, 1 failed": every state in
    /// [`CellState::ALL`]'s order, with `zeros` the states no cell is in too ("0 pending").
    pub fn line(&self, zeros: bool) -> String {
        CellState::ALL
            .iter()
            .map(|s| (*s, self.by_state.get(s).copied().unwrap_or(0)))
            .filter(|&(_, n)| zeros || n > 0)
            .flat_map(|(s, n)| match s {
                CellState::Done if self.pruned > 0 => vec![
                    format!("{} done", n - self.pruned),
                    format!("{} pruned by successive halving", self.pruned),
                ],
                _ => vec![format!("{n} {}", s.as_str())],
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every cell of the sweep.
    pub fn total(&self) -> i64 {
        self.by_state.values().sum()
    }

    /// The cells in state `s` (pruned ones included in `done`).
    pub fn of(&self, s: CellState) -> i64 {
        self.by_state.get(&s).copied().unwrap_or(0)
    }
}

/// Drops the cell's curves (those of earlier attempts: a started or claimed cell has one curve)
/// past the step its segment continues from, and commits `tx`, which started the cell.
async fn drop_curves_and_commit(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    sweep: &str,
    id: &str,
) -> Result<()> {
    // A halving cell continuing from a rung keeps its curves up to there.
    sqlx::query(
        "DELETE FROM metrics WHERE sweep = $1 AND cell_id = $2 AND step > COALESCE(
             (SELECT resume_step FROM cells WHERE sweep = $1 AND id = $2), 0)",
    )
    .bind(sweep)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A [`CellRow`] from a row of the `cells` table.
fn cell_row(r: &AnyRow) -> Result<CellRow> {
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
        pack_size: r.try_get("pack_size")?,
        error: r.try_get("error")?,
        config: r.try_get("config")?,
        rung: r.try_get("rung")?,
        resume_step: r.try_get("resume_step")?,
        pruned: r.try_get::<i64, _>("pruned")? != 0,
        device_s: r.try_get("device_s")?,
    })
}
