//! The store's side of successive halving: which rung each cell is at, and the promotions.
//!
//! A halving cell's row goes `pending` → `running` → `done` at every rung (its metric that of
//! the rung), and a promotion either sends it back to `pending` at the next rung, continuing
//! from the step it paused at, or marks it `pruned`. Each promotion is one transaction with its
//! [`RungRow`], so a sweep stopped at any point continues with the decisions it made.

use crate::{Result, Store};
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
    /// Puts the sweep's cells on the rungs of a halving run: cells not yet on one start at rung
    /// 0, except those a grid run of the same cells already finished (at full budget: rung
    /// `last`).
    pub async fn init_halving(&self, sweep: &str, last: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE cells SET rung = CASE WHEN state IN ('done', 'diverged') THEN $2 ELSE 0 END
             WHERE sweep = $1 AND rung IS NULL",
        )
        .bind(sweep)
        .bind(last)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
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
