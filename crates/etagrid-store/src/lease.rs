//! Leases: how several worker processes (SLURM array tasks) share the store safely.
//!
//! A worker *claims* its cell (pending → running, with itself as `lease_owner` and an expiry),
//! renews the lease while it trains (*heartbeat*), and either finishes the cell or *releases* it
//! back to pending when it is stopped. A lease that expires (the node died, the worker was killed
//! with -9) makes the cell claimable again, with the lost attempt counted. Every statement here is
//! portable SQL (`$n` placeholders, `RETURNING`, times as unix seconds bound from Rust) so that it
//! runs unchanged on PostgreSQL.

use crate::{drop_curves_and_commit, CellState, Outcome, Result, Store};
use sqlx::Row;

/// What [`Store::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The cell is now ours; this is its `attempt`-th start.
    Claimed { attempt: i64 },
    /// Done, diverged or failed: nothing to do (a requeued task that already finished its cell).
    Finished(CellState),
    /// Another worker holds a lease that has not expired.
    Held { owner: String, expires: i64 },
    /// No attempt left (`max_attempts`).
    Exhausted { attempts: i64 },
    /// No such cell in the store.
    Missing,
    /// A successive-halving cell on another rung (`rung`, 0-based) than the claimer was
    /// submitted to train (the `rung` of [`Store::claim`]): it moved on since.
    OtherRung { rung: i64 },
}

/// A cell some worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub cell_id: String,
    pub owner: String,
    /// `None` while the owner writes the cell's result ([`Store::finish_leased`]): not expired.
    pub expires: Option<i64>,
    pub attempts: i64,
}

/// One cell of an array task as submitted: `<job_id>_<array_index>` runs `cell_id` (a task that
/// trains a pack has one row per cell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmTask {
    pub job_id: String,
    pub array_index: i64,
    pub cell_id: String,
}

/// Marks array task `owner`'s row of cell `id` as reached (`claimed`), inserting it when the
/// front end has not recorded its submission yet (a task can start before `sbatch` returns).
async fn mark_reached(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sweep: &str,
    id: &str,
    owner: &str,
    now: i64,
) -> Result<()> {
    let Some((job_id, index)) = array_task(owner) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO slurm_tasks (sweep, job_id, array_index, cell_id, submitted_at, claimed)
         VALUES ($1, $2, $3, $4, $5, 1)
         ON CONFLICT (sweep, job_id, array_index, cell_id) DO UPDATE SET claimed = 1",
    )
    .bind(sweep)
    .bind(job_id)
    .bind(index)
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The `(job id, array index)` of a lease owner that is an array task (`<job>_<index>`, as
/// `squeue` prints it), whose row in `slurm_tasks` lists the cells it was submitted with.
fn array_task(owner: &str) -> Option<(&str, i64)> {
    let (job, index) = owner.rsplit_once('_')?;
    Some((job, index.parse().ok()?))
}

impl SlurmTask {
    /// The task's id as SLURM prints it (`squeue -r -o %i`, `sacct -o JobID`).
    pub fn slurm_id(&self) -> String {
        format!("{}_{}", self.job_id, self.array_index)
    }
}

/// Seconds since the Unix epoch: the clock of every lease.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Claims a cell for `owner` until `now + lease_s`: a pending cell, or a running one whose
    /// lease expired or whose owner is `owner` itself (an earlier incarnation of the same requeued
    /// task, which SLURM never runs twice at once). Counts the attempt and drops the curves of
    /// earlier attempts. `device` is recorded in the cell's `device` column.
    ///
    /// With `rung` (0-based), a successive-halving cell only while it is on that rung: a task
    /// submitted to train one rung's segment must not take a cell that moved on to the next rung
    /// since (it was queued while another task trained it, and the rung was decided) — checked
    /// in the claiming statement itself. An array task's claim also marks its row in
    /// `slurm_tasks` (inserting it when the front end has not recorded it yet), as does finding
    /// the cell finished, held or out of attempts: the front end counts the tasks that ended
    /// without reaching a cell from the rows left unmarked.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        sweep: &str,
        id: &str,
        owner: &str,
        device: &str,
        now: i64,
        lease_s: i64,
        max_attempts: i64,
        rung: Option<i64>,
    ) -> Result<Claim> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE cells SET state = 'running', lease_owner = $3, lease_expires = $4,
                 device = $5, attempts = attempts + 1, started_at = CURRENT_TIMESTAMP,
                 finished_at = NULL, error = NULL, step = 0
             WHERE sweep = $1 AND id = $2 AND attempts < $6
               AND ($8 < 0 OR COALESCE(rung, 0) = $8)
               AND (state = 'pending'
                    OR (state = 'running' AND lease_owner IS NOT NULL
                        AND (lease_expires < $7 OR lease_owner = $3)))
             RETURNING attempts",
        )
        .bind(sweep)
        .bind(id)
        .bind(owner)
        .bind(now + lease_s)
        .bind(device)
        .bind(max_attempts)
        .bind(now)
        .bind(rung.unwrap_or(-1))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            let attempt = row.try_get("attempts")?;
            mark_reached(&mut tx, sweep, id, owner, now).await?;
            drop_curves_and_commit(tx, sweep, id).await?;
            return Ok(Claim::Claimed { attempt });
        }
        tx.rollback().await?;
        let row = sqlx::query(
            "SELECT state, attempts, lease_owner, lease_expires, rung FROM cells
             WHERE sweep = $1 AND id = $2",
        )
        .bind(sweep)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Claim::Missing);
        };
        let state = CellState::parse(row.try_get("state")?)?;
        let attempts: i64 = row.try_get("attempts")?;
        let on = row.try_get::<Option<i64>, _>("rung")?.unwrap_or(0);
        let claim = match state {
            CellState::Pending | CellState::Running if rung.is_some_and(|r| r != on) => {
                return Ok(Claim::OtherRung { rung: on });
            }
            CellState::Done | CellState::Diverged | CellState::Failed => Claim::Finished(state),
            CellState::Running => Claim::Held {
                owner: row
                    .try_get::<Option<String>, _>("lease_owner")?
                    .unwrap_or_else(|| "a local `etagrid run`".into()),
                expires: row.try_get::<Option<i64>, _>("lease_expires")?.unwrap_or(0),
            },
            CellState::Pending => Claim::Exhausted { attempts },
        };
        let mut tx = self.pool.begin().await?;
        mark_reached(&mut tx, sweep, id, owner, now).await?;
        tx.commit().await?;
        Ok(claim)
    }

    /// Extends `owner`'s lease to `now + lease_s`. False when the lease is no longer `owner`'s
    /// (it expired and another task took the cell): the worker must stop.
    pub async fn heartbeat(
        &self,
        sweep: &str,
        id: &str,
        owner: &str,
        now: i64,
        lease_s: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE cells SET lease_expires = $4
             WHERE sweep = $1 AND id = $2 AND state = 'running' AND lease_owner = $3",
        )
        .bind(sweep)
        .bind(id)
        .bind(owner)
        .bind(now + lease_s)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives the cell back to pending (the worker was stopped: preempted, requeued, cancelled).
    /// `refund`: the attempt is not the cell's fault and is not counted. `note` goes to `error`.
    pub async fn release(
        &self,
        sweep: &str,
        id: &str,
        owner: &str,
        refund: bool,
        note: &str,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE cells SET state = 'pending', lease_owner = NULL, lease_expires = NULL,
                 device = NULL, error = $5,
                 attempts = CASE WHEN $4 = 1 AND attempts > 0 THEN attempts - 1 ELSE attempts END
             WHERE sweep = $1 AND id = $2 AND state = 'running' AND lease_owner = $3",
        )
        .bind(sweep)
        .bind(id)
        .bind(owner)
        .bind(i64::from(refund))
        .bind(note)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records how `owner`'s run of the cell ended ([`Store::finish_cell`]) if `owner` still holds
    /// it; false (and nothing written) when the lease was lost.
    pub async fn finish_leased(
        &self,
        sweep: &str,
        id: &str,
        owner: &str,
        outcome: &Outcome,
    ) -> Result<bool> {
        // Clearing the expiry first keeps anyone else from claiming or reclaiming the cell in
        // between (only an expiry in the past makes a running cell claimable or reclaimable).
        let r = sqlx::query(
            "UPDATE cells SET lease_expires = NULL
             WHERE sweep = $1 AND id = $2 AND state = 'running' AND lease_owner = $3",
        )
        .bind(sweep)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        self.finish_cell(sweep, id, outcome).await?;
        sqlx::query("UPDATE cells SET lease_owner = NULL WHERE sweep = $1 AND id = $2")
            .bind(sweep)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    /// The leases held on the sweep's running cells.
    pub async fn leases(&self, sweep: &str) -> Result<Vec<Lease>> {
        self.sweep_rows(
            "SELECT id, lease_owner, lease_expires, attempts FROM cells
             WHERE sweep = $1 AND state = 'running' AND lease_owner IS NOT NULL ORDER BY idx",
            sweep,
            |r| {
                Ok(Lease {
                    cell_id: r.try_get("id")?,
                    owner: r.try_get("lease_owner")?,
                    expires: r.try_get("lease_expires")?,
                    attempts: r.try_get("attempts")?,
                })
            },
        )
        .await
    }

    /// Takes a cell away from `owner`, which is known to be dead (its SLURM task ended without
    /// finishing the cell), or whose lease ran out before `expired_before` (checked in the same
    /// statement, so a heartbeat that comes in between wins, and a lease whose owner is writing
    /// its result is never taken): back to pending with the attempt counted, or failed when it
    /// was the last one. Returns the new state, `None` when nothing was taken (the owner finished
    /// or renewed in the meantime).
    pub async fn reclaim(
        &self,
        sweep: &str,
        id: &str,
        owner: &str,
        cause: &str,
        max_attempts: i64,
        expired_before: Option<i64>,
    ) -> Result<Option<CellState>> {
        let sql = format!(
            "UPDATE cells SET
                 state = CASE WHEN attempts >= $5 THEN 'failed' ELSE 'pending' END,
                 lease_owner = NULL, lease_expires = NULL, device = NULL, error = $4,
                 finished_at = CURRENT_TIMESTAMP
             WHERE sweep = $1 AND id = $2 AND state = 'running' AND lease_owner = $3 {}
             RETURNING state",
            if expired_before.is_some() {
                "AND lease_expires IS NOT NULL AND lease_expires < $6"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(&sql)
            .bind(sweep)
            .bind(id)
            .bind(owner)
            .bind(cause)
            .bind(max_attempts);
        if let Some(t) = expired_before {
            q = q.bind(t);
        }
        let row = q.fetch_optional(&self.pool).await?;
        row.map(|r| CellState::parse(r.try_get("state")?))
            .transpose()
    }

    /// Marks pending cells that used up their attempts as failed (nobody may claim them).
    pub async fn fail_exhausted(&self, sweep: &str, max_attempts: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE cells SET state = 'failed', finished_at = CURRENT_TIMESTAMP,
                 error = COALESCE(error, 'used up its attempts')
             WHERE sweep = $1 AND state = 'pending' AND attempts >= $2",
        )
        .bind(sweep)
        .bind(max_attempts)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Failed cells with attempts left go back to pending (a rerun of the SLURM front end
    /// retries them, as a local run does).
    pub async fn requeue_failed(&self, sweep: &str, max_attempts: i64) -> Result<u64> {
        // A halving cell pruned at a rung is final, failed or not: its rung was decided.
        let r = sqlx::query(
            "UPDATE cells SET state = 'pending', lease_owner = NULL, lease_expires = NULL
             WHERE sweep = $1 AND state = 'failed' AND attempts < $2 AND pruned = 0",
        )
        .bind(sweep)
        .bind(max_attempts)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Remembers which array task runs which cell.
    pub async fn record_slurm_tasks(
        &self,
        sweep: &str,
        tasks: &[SlurmTask],
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Multi-row inserts written by hand (`QueryBuilder<Any>` emits `?`): $1 sweep, $2 time,
        // then 3 values per task; 1,000 tasks per statement stay under both parameter limits.
        for chunk in tasks.chunks(1000) {
            let mut sql = String::from(
                "INSERT INTO slurm_tasks (sweep, submitted_at, job_id, array_index, cell_id) VALUES ",
            );
            for i in 0..chunk.len() {
                let p = 3 + 3 * i;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("($1, $2, ${}, ${}, ${})", p, p + 1, p + 2));
            }
            // A task that started (and claimed) before this was written has its row already.
            sql.push_str(" ON CONFLICT (sweep, job_id, array_index, cell_id) DO NOTHING");
            let mut q = sqlx::query(&sql).bind(sweep).bind(now);
            for t in chunk {
                q = q.bind(&t.job_id).bind(t.array_index).bind(&t.cell_id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Takes `cells` off array task `job_id`_`array_index`'s list: the task gives them back
    /// untried (it stopped before it reached them), so they count neither as covered by it nor
    /// as cells a task ended without claiming. Returns how many rows it removed.
    pub async fn forget_slurm_task_cells(
        &self,
        sweep: &str,
        job_id: &str,
        array_index: i64,
        cells: &[String],
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let mut removed = 0;
        for cell in cells {
            removed += sqlx::query(
                "DELETE FROM slurm_tasks WHERE sweep = $1 AND job_id = $2 AND array_index = $3 \
                 AND cell_id = $4",
            )
            .bind(sweep)
            .bind(job_id)
            .bind(array_index)
            .bind(cell)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Every array task submitted for the sweep, oldest first (one row per cell of its pack).
    pub async fn slurm_tasks(&self, sweep: &str) -> Result<Vec<SlurmTask>> {
        self.slurm_task_rows(sweep, "").await
    }

    /// The (task, cell) rows of the sweep whose task never claimed the cell ([`Store::claim`]
    /// marks the row of the task that claims it), oldest first.
    pub async fn unclaimed_slurm_tasks(&self, sweep: &str) -> Result<Vec<SlurmTask>> {
        self.slurm_task_rows(sweep, " AND claimed = 0").await
    }

    /// Job ids are numbers stored as text: sorted as numbers here (as text "100" would come
    /// before "99").
    async fn slurm_task_rows(&self, sweep: &str, filter: &str) -> Result<Vec<SlurmTask>> {
        let sql = format!(
            "SELECT job_id, array_index, cell_id, submitted_at FROM slurm_tasks WHERE sweep = $1{filter}"
        );
        let mut tasks = self
            .sweep_rows(&sql, sweep, |r| {
                let submitted: i64 = r.try_get("submitted_at")?;
                Ok((
                    submitted,
                    SlurmTask {
                        job_id: r.try_get("job_id")?,
                        array_index: r.try_get("array_index")?,
                        cell_id: r.try_get("cell_id")?,
                    },
                ))
            })
            .await?;
        tasks.sort_by_key(|(at, t)| {
            (
                *at,
                t.job_id.parse::<u64>().unwrap_or(u64::MAX),
                t.job_id.clone(),
                t.array_index,
            )
        });
        Ok(tasks.into_iter().map(|(_, t)| t).collect())
    }
}
