-- Successive halving (issue 11). A halving sweep's cell trains in segments, one per rung:
-- `rung` is the rung it is working toward or last reached (0-based; NULL: a grid sweep's cell),
-- `resume_step` the step its current segment continues from (its curves up to there are kept
-- when it starts again), `pruned` 1 once a promotion left it out (its metric is the one of the
-- rung it reached), `device_s` the device seconds all its segments took (its share of each pack).
ALTER TABLE cells ADD COLUMN rung INTEGER;
ALTER TABLE cells ADD COLUMN resume_step INTEGER;
ALTER TABLE cells ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cells ADD COLUMN device_s REAL;

-- One row per promotion made: written in the same transaction as the cells it promotes and
-- prunes, so a sweep stopped between rungs continues with the same decision.
CREATE TABLE halving_rungs (
    sweep           TEXT NOT NULL REFERENCES sweeps(name),
    rung            INTEGER NOT NULL,
    points          INTEGER NOT NULL,
    promoted        INTEGER NOT NULL,
    tau             REAL,
    stopped_pruning INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    decided_at      TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (sweep, rung)
);
