use std::path::PathBuf;

/// Why a sweep file could not be turned into a [`crate::SweepSpec`].
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read sweep file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys and wrong types; toml's message already names the key and
    /// shows the line.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value that parses but makes no sense.
    #[error("{}:{line}: `{field}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
    /// An input file (data, model) could not be read to fingerprint its content.
    #[error("cannot read {} (an input of the sweep: its content is part of every cell id)", path.display())]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
