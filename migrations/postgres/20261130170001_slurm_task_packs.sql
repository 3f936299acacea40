-- SLURM packs (issue 9): one array task may train several cells, so `slurm_tasks` holds one row
-- per (task, cell): the cell joins the primary key. Rebuilt rather than altered (SQLite cannot
-- change a primary key); existing rows are kept.
CREATE TABLE slurm_task_cells (
    sweep        TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    array_index  BIGINT NOT NULL,
    cell_id      TEXT NOT NULL,
    submitted_at BIGINT NOT NULL,
    PRIMARY KEY (sweep, job_id, array_index, cell_id)
);
INSERT INTO slurm_task_cells (sweep, job_id, array_index, cell_id, submitted_at)
    SELECT sweep, job_id, array_index, cell_id, submitted_at FROM slurm_tasks;
DROP TABLE slurm_tasks;
ALTER TABLE slurm_task_cells RENAME TO slurm_tasks;
CREATE INDEX slurm_tasks_by_cell ON slurm_tasks (sweep, cell_id);
