-- Packed cells (issue 9): how many cells trained together in the worker that trained this one
-- (they share its wall time). NULL: alone, or finished before this migration.
ALTER TABLE cells ADD COLUMN pack_size INTEGER;
