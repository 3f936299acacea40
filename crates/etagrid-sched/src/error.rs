//! The scheduler's error type.

use etagrid_store::StoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("results store")]
    Store(#[from] StoreError),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another `etagrid run` holds {} (it is using this store); wait for it or stop it first", path.display())]
    Locked { path: PathBuf },
    #[error("another `etagrid run` is running sweep {sweep} with the store {store}; wait for it or stop it first")]
    SweepLocked { sweep: String, store: String },
    /// A halving sweep whose store is not in a state a run leaves it in.
    #[error("{0}")]
    Halving(String),
    /// The sweep file's `[search]` would misread the halving state the store holds for the
    /// sweep (settings other than those its halving started with): refused before anything is
    /// stored or trained. The message names the file, each changed key and what to do.
    #[error("{0}")]
    SearchChanged(String),
    #[error("start the tokio runtime")]
    Runtime(#[source] std::io::Error),
    /// A SLURM command failed for good (a bad partition, impossible resources, no controller).
    #[error("SLURM: {0}")]
    Slurm(String),
    /// A job file could not be written or read as JSON.
    #[error("{what} {}", path.display())]
    Json {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// `map_err` helper: an I/O error about `path`.
pub(crate) fn io_err(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> SchedError {
    let path = path.to_owned();
    move |source| SchedError::Io { what, path, source }
}
