//! The store's side of successive halving: which rung each cell is at, and the promotions.
//!
//! A halving cell's row goes `pending` → `running` → `done` at every rung (its metric that of
//! the rung), and a promotion either sends it back to `pending` at the next rung, continuing
//! from the step it paused at, or marks it `pruned`. Each promotion is one transaction with its
//! [`RungRow`], so a sweep stopped at any point continues with the decisions it made. The
//! `[search]` settings the rungs were laid out with are recorded when the halving starts
//! ([`Store::halving_search`]), so a run with other settings can be told apart and refused.

use crate::{Result, Store, StoreError};
use etagrid_search::{SearchSpec, Strategy};
use sqlx::Row;

/// A promotion made after a rung.
#[derive(Debug, Clone, PartialEq)]
pub struct RungRow {
    /// The rung (0-based) whose results it ranked.
    pub rung: i64,
    /// Grid points that ran the rung, and those promoted.
    pub points: i64,
    pub promoted: i64,
    /// Kendall τ between this rung's ranking and the previous one's.
    pub tau: Option<f64>,
    /// The ranking was unstable (τ below `min_tau`): every finite point went on.
    pub stopped_pruning: bool,
    /// The line the scheduler printed.
    pub reason: String,
}

impl Store {
    /// Puts the sweep's cells on the rungs of a halving run with the settings `search`: cells
    /// not yet on one start at rung 0, except those a grid run of the same cells already
    /// finished (at full budget: the last rung). The first time, it also records `search` (see
    /// [`Store::halving_search`]), its rungs written out even when they are the default (a
    /// default may change between versions); later calls leave the record as it is. One
    /// transaction.
    pub async fn init_halving(&self, sweep: &str, search: &SearchSpec) -> Result<u64> {
        let last = search.rung_count() as i64 - 1;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO halving_search (sweep, strategy, reduction, rungs, keep_per_row, min_tau)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sweep) DO NOTHING",
        )
        .bind(sweep)
        .bind(search.strategy.name())
        .bind(i64::from(search.reduction))
        .bind(serde_json::Value::from(search.fractions().as_slice()).to_string())
        .bind(search.keep_per_row as i64)
        .bind(search.min_tau)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query(
            "UPDATE cells SET rung = CASE WHEN state IN ('done', 'diverged') THEN $2 ELSE 0 END
             WHERE sweep = $1 AND rung IS NULL",
        )
        .bind(sweep)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    /// The `[search]` settings the sweep's halving started with (as [`Store::init_halving`]
    /// recorded them); `None` when it never ran as a halving sweep, or only with an etagrid that
    /// did not record them (then [`Store::max_rung`] says whether its cells are on rungs). The
    /// rungs always come back written out: a record without them was made by an etagrid of
    /// before 2026-12-01 with `rungs` unset, whose default was `[1/r², 1/r, 1]`.
    pub async fn halving_search(&self, sweep: &str) -> Result<Option<SearchSpec>> {
        let Some(r) = sqlx::query(
            "SELECT strategy, reduction, rungs, keep_per_row, min_tau FROM halving_search
             WHERE sweep = $1",
        )
        .bind(sweep)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let strategy: String = r.try_get("strategy")?;
        let reduction: i64 = r.try_get("reduction")?;
        let rungs: Option<String> = r.try_get("rungs")?;
        let keep_per_row: i64 = r.try_get("keep_per_row")?;
        Ok(Some(SearchSpec {
            strategy: Strategy::from_name(&strategy)
                .ok_or_else(|| decode(format!("unknown search strategy {strategy:?}")))?,
            reduction: u32::try_from(reduction)
                .map_err(|_| decode(format!("search reduction {reduction} out of range")))?,
            rungs: Some(match rungs.as_deref() {
                Some(text) => parse_rungs(text)?,
                None => {
                    SearchSpec::default_rungs_before_2026_12(u32::try_from(reduction).unwrap_or(0))
                }
            }),
            keep_per_row: usize::try_from(keep_per_row)
                .map_err(|_| decode(format!("search keep_per_row {keep_per_row} out of range")))?,
            min_tau: r.try_get("min_tau")?,
            // Not recorded: it moves no rung (a run may turn it on or off).
            refine: false,
        }))
    }

    /// The highest rung any of the sweep's cells is on; `None` when none is (it never ran as a
    /// halving sweep).
    pub async fn max_rung(&self, sweep: &str) -> Result<Option<i64>> {
        let r = sqlx::query("SELECT MAX(rung) AS r FROM cells WHERE sweep = $1")
            .bind(sweep)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("r")?)
    }

    /// Records the promotion after rung `row.rung`: the `promoted` cells continue at the next
    /// rung from the step they paused at (their attempts counted afresh), the `pruned` ones stop
    /// there. One transaction; a second promotion of the same rung is refused by the key.
    pub async fn promote(
        &self,
        sweep: &str,
        row: &RungRow,
        promoted: &[String],
        pruned: &[String],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO halving_rungs (sweep, rung, points, promoted, tau, stopped_pruning, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(sweep)
        .bind(row.rung)
        .bind(row.points)
        .bind(row.promoted)
        .bind(row.tau)
        .bind(i64::from(row.stopped_pruning))
        .bind(&row.reason)
        .execute(&mut *tx)
        .await?;
        for id in promoted {
            sqlx::query(
                "UPDATE cells SET state = 'pending', rung = $3 + 1, resume_step = step,
                     attempts = 0, device = NULL, error = NULL
                 WHERE sweep = $1 AND id = $2 AND rung = $3 AND state = 'done'",
            )
            .bind(sweep)
            .bind(id)
            .bind(row.rung)
            .execute(&mut *tx)
            .await?;
        }
        for id in pruned {
            sqlx::query("UPDATE cells SET pruned = 1 WHERE sweep = $1 AND id = $2 AND rung = $3")
                .bind(sweep)
                .bind(id)
                .bind(row.rung)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The promotions made so far, by rung.
    pub async fn halving_rungs(&self, sweep: &str) -> Result<Vec<RungRow>> {
        let rows = sqlx::query(
            "SELECT rung, points, promoted, tau, stopped_pruning, reason FROM halving_rungs
             WHERE sweep = $1 ORDER BY rung",
        )
        .bind(sweep)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RungRow {
                    rung: r.try_get("rung")?,
                    points: r.try_get("points")?,
                    promoted: r.try_get("promoted")?,
                    tau: r.try_get("tau")?,
                    stopped_pruning: r.try_get::<i64, _>("stopped_pruning")? != 0,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }
}

/// The rung fractions [`Store::init_halving`] wrote (`[0.111, 0.333, 1.0]`: Rust's shortest
/// decimals, which read back to the same `f64`s).
/// The stored rungs: a JSON list of numbers (rows written as Rust's `{:?}` of the list read the
/// same: for finite numbers it is the same text).
fn parse_rungs(text: &str) -> Result<Vec<f64>> {
    serde_json::from_str(text).map_err(|e| {
        decode(format!(
            "stored search rungs {text:?} are not a list of numbers: {e}"
        ))
    })
}

fn decode(what: String) -> StoreError {
    StoreError::Query(sqlx::Error::Decode(what.into()))
}
