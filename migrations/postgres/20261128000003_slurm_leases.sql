-- PostgreSQL dialect of ../20261128000003_slurm_leases.sql (INTEGER → BIGINT; see README.md).
-- SLURM backend (issue 5): several workers write the store, each holding a lease on its cell.
-- Portable SQL (SQLite and PostgreSQL): times are unix seconds written by etagrid, not SQL
-- functions.
-- `lease_owner`: the SLURM task ("<array job id>_<task index>") running the cell;
-- `lease_expires`: unix seconds after which another task may take the cell (attempt counted).
ALTER TABLE cells ADD COLUMN lease_owner TEXT;
ALTER TABLE cells ADD COLUMN lease_expires BIGINT;

-- Which array task runs which cell, so that a rerun of `etagrid run --backend slurm` re-attaches
-- to queued/running tasks instead of submitting their cells again.
CREATE TABLE slurm_tasks (
    sweep        TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    array_index  BIGINT NOT NULL,
    cell_id      TEXT NOT NULL,
    submitted_at BIGINT NOT NULL,
    PRIMARY KEY (sweep, job_id, array_index)
);
CREATE INDEX slurm_tasks_by_cell ON slurm_tasks (sweep, cell_id);
