-- Per-cell classification metrics besides accuracy (issue 4). NULL for cells finished before
-- this migration and for cells that did not finish.
ALTER TABLE cells ADD COLUMN macro_f1 REAL;
ALTER TABLE cells ADD COLUMN mcc REAL;
