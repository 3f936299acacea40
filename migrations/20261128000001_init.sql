-- etagrid results store, schema v1. Written only by the scheduler (`etagrid run`).

CREATE TABLE sweeps (
    name             TEXT PRIMARY KEY NOT NULL,
    source_path      TEXT NOT NULL,
    source_text      TEXT NOT NULL,
    metric           TEXT NOT NULL,
    higher_is_better INTEGER NOT NULL,
    created_at       TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at       TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- One row per grid cell; `id` is the content hash of the cell's resolved configuration.
CREATE TABLE cells (
    sweep         TEXT NOT NULL REFERENCES sweeps(name),
    id            TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    lr_a          REAL NOT NULL,
    lr_b          REAL NOT NULL,
    seed          INTEGER NOT NULL,
    config        TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'running', 'done', 'failed', 'diverged')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    device        TEXT,
    started_at    TEXT,
    finished_at   TEXT,
    step          INTEGER,
    total_steps   INTEGER,
    metric        REAL,
    eval_loss     REAL,
    accuracy      REAL,
    train_loss    REAL,
    wall_s        REAL,
    samples_per_s REAL,
    groups        TEXT,
    error         TEXT,
    PRIMARY KEY (sweep, id)
);
CREATE INDEX cells_by_state ON cells (sweep, state, idx);

-- Curves: train loss every `log_every` steps, eval loss/accuracy every `eval_every` steps.
CREATE TABLE metrics (
    sweep   TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    step    INTEGER NOT NULL,
    name    TEXT NOT NULL,
    value   REAL NOT NULL,
    FOREIGN KEY (sweep, cell_id) REFERENCES cells (sweep, id)
);
CREATE INDEX metrics_by_cell ON metrics (sweep, cell_id, name, step);
