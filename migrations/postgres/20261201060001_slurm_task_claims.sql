-- Which array task claimed which of its cells. `Store::claim` sets `claimed` on the task's row in
-- the claim's transaction. The SLURM front end counts, per pending cell, the tasks that ended
-- without claiming it (the worker could not reach the store, or read another one) and fails the
-- cell after `max_attempts` of them; before, it inferred them as (ended tasks − attempts), which
-- a refunded attempt or a halving promotion (attempts counted afresh on each rung) made wrong.
-- Rows written before are taken as claimed: they never count against a cell.
ALTER TABLE slurm_tasks ADD COLUMN claimed BIGINT NOT NULL DEFAULT 0;
UPDATE slurm_tasks SET claimed = 1;
