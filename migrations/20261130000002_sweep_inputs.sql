-- The digest of the sweep's inputs (data files, model config, weights, tokenizer) at its last
-- enqueue: cell ids include it, so reports and exports pick the cells of the current content.
ALTER TABLE sweeps ADD COLUMN inputs TEXT;
