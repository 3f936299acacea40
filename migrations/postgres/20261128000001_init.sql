-- etagrid results store, schema v1, PostgreSQL dialect of ../20261128000001_init.sql
-- (INTEGER → BIGINT, REAL → DOUBLE PRECISION; see README.md). Same tables and columns.

CREATE TABLE sweeps (
    name             TEXT PRIMARY KEY NOT NULL,
    source_path      TEXT NOT NULL,
    source_text      TEXT NOT NULL,
    metric           TEXT NOT NULL,
    higher_is_better BIGINT NOT NULL,
    created_at       TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at       TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- One row per grid cell; `id` is the content hash of the cell's resolved configuration.
CREATE TABLE cells (
    sweep         TEXT NOT NULL REFERENCES sweeps(name),
    id            TEXT NOT NULL,
    idx           BIGINT NOT NULL,
    lr_a          DOUBLE PRECISION NOT NULL,
    lr_b          DOUBLE PRECISION NOT NULL,
    seed          BIGINT NOT NULL,
    config        TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'running', 'done', 'failed', 'diverged')),
    attempts      BIGINT NOT NULL DEFAULT 0,
    device        TEXT,
    started_at    TEXT,
    finished_at   TEXT,
    step          BIGINT,
    total_steps   BIGINT,
    metric        DOUBLE PRECISION,
    eval_loss     DOUBLE PRECISION,
    accuracy      DOUBLE PRECISION,
    train_loss    DOUBLE PRECISION,
    wall_s        DOUBLE PRECISION,
    samples_per_s DOUBLE PRECISION,
    groups        TEXT,
    error         TEXT,
    PRIMARY KEY (sweep, id)
);
CREATE INDEX cells_by_state ON cells (sweep, state, idx);

-- Curves: train loss every `log_every` steps, eval loss/accuracy every `eval_every` steps.
CREATE TABLE metrics (
    sweep   TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    step    BIGINT NOT NULL,
    name    TEXT NOT NULL,
    value   DOUBLE PRECISION NOT NULL,
    FOREIGN KEY (sweep, cell_id) REFERENCES cells (sweep, id)
);
CREATE INDEX metrics_by_cell ON metrics (sweep, cell_id, name, step);
