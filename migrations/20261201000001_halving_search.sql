-- The `[search]` settings a halving sweep put its cells on rungs with, written by its first
-- halving run in the same transaction (`Store::init_halving`). `[search]` is not part of the
-- cell ids, so a later run compares its sweep file's section with this row and refuses to go on
-- with other settings: the cells' rung indices and the promotions in `halving_rungs` would no
-- longer mean what the file says. `rungs` is the fractions as the file gave them, as decimal text
-- that reads back to the same numbers (`[0.111, 0.333, 1.0]`); NULL when the file left them to
-- the default `[1/r², 1/r, 1]`.
CREATE TABLE halving_search (
    sweep        TEXT PRIMARY KEY NOT NULL REFERENCES sweeps(name),
    strategy     TEXT NOT NULL,
    reduction    INTEGER NOT NULL,
    rungs        TEXT,
    keep_per_row INTEGER NOT NULL,
    min_tau      REAL NOT NULL,
    recorded_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
