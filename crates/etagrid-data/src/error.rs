use std::path::PathBuf;

/// A task's data could not be read, tokenized or cached. The trainer turns each variant into the
/// `TrainError` of the same name.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("load tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data {
        path: PathBuf,
        line: Option<u64>,
        message: String,
    },
    /// Serialising `what` (the task settings of a cache key, a cache entry) failed.
    #[error("serialise {what} for {}", path.display())]
    Serialize {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}
