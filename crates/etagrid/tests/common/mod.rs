//! Shared by the integration tests of the `etagrid` binary: where the fixtures are, the text of a
//! sweep over them, and reading a store. Each test binary uses a part of it.

#![allow(dead_code)]

use etagrid_store::{CellRow, Store, StoreUrl};
use std::path::{Path, PathBuf};
use std::process::Output;

/// This crate's directory.
pub fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A model fixture of etagrid-train (`tiny-bert`, `tiny-llama`, …).
pub fn train_fixture(name: &str) -> PathBuf {
    manifest()
        .join("../etagrid-train/tests/fixtures")
        .join(name)
}

/// The tiny BERT fixture (a real HF-format checkpoint made by transformers).
pub fn tiny_bert() -> PathBuf {
    train_fixture("tiny-bert")
}

/// A file of the tiny 3-class task (`train.csv`, `eval.csv`).
pub fn tiny_task(file: &str) -> PathBuf {
    manifest().join("tests/fixtures/tiny-task").join(file)
}

/// `[resources]` for a test run: the CPU, one thread per cell.
pub const CPU_RESOURCES: &str = "[resources]\ndevices = \"cpu\"\nthreads_per_cell = 1\n";

/// The start of sweep `name`: its `[model]` (the tiny BERT) and `[task]` (the tiny task), by
/// absolute paths.
pub fn sweep_head(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[model]\npath = \"{}\"\n[task]\ntrain = \"{}\"\neval = \"{}\"\n",
        tiny_bert().display(),
        tiny_task("train.csv").display(),
        tiny_task("eval.csv").display(),
    )
}

/// Sweep `name` over the tiny fixtures with `grid` as its [grid] body: rank-4 LoRA, `steps` steps
/// of batch 8 on 32 tokens, a log line every 2 steps and an evaluation every `eval_every`; no
/// `[resources]`.
pub fn tiny_sweep(name: &str, grid: &str, steps: u64, eval_every: u64) -> String {
    format!(
        r#"{head}[lora]
rank = 4
alpha = 8
[train]
steps = {steps}
batch_size = 8
max_seq_len = 32
log_every = 2
eval_every = {eval_every}
[grid]
{grid}
"#,
        head = sweep_head(name),
    )
}

/// Asserts that `out` is a run that failed (exit status 1) with every one of `wants` in its
/// stderr, and returns the stderr.
pub fn failed_with(out: &Output, wants: &[&str]) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in wants {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    err
}

/// A process's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `f` on the store `db` (a SQLite file or a URL), opened and closed around it.
pub fn with_store<T>(db: impl Into<StoreUrl>, f: impl AsyncFnOnce(&Store) -> T) -> T {
    let db = db.into();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let s = Store::open(db).await.expect("open store");
            let r = f(&s).await;
            s.close().await;
            r
        })
}

/// The cells of `sweep` in the SQLite store `db`.
pub fn read_cells(db: &Path, sweep: &str) -> Vec<CellRow> {
    with_store(db, async |s| s.cells(sweep).await.expect("cells"))
}
