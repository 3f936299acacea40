use etagrid_data::family::{Family, FamilyError};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse safetensors file {}", path.display())]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("tensor `{name}` is missing from {}", file.display())]
    MissingTensor { name: String, file: PathBuf },
    #[error("tensor `{name}` in {} has shape {found:?}, expected {expected:?}", file.display())]
    Shape {
        name: String,
        file: PathBuf,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("tensor `{name}` in {} has dtype {dtype}, which etagrid cannot load (use F32, F16 or BF16)", file.display())]
    Dtype {
        name: String,
        file: PathBuf,
        dtype: String,
    },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: model_type {model_type:?} is not supported (supported: {})", path.display(), Family::supported())]
    UnsupportedModel { path: PathBuf, model_type: String },
    #[error("load tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data {
        path: PathBuf,
        line: Option<u64>,
        message: String,
    },
    #[error("{0}")]
    Device(String),
    /// The sweep's `lora.target_modules` cannot be applied to this model.
    #[error("lora.target_modules: {0}")]
    LoraTargets(String),
    /// A pack of cells that cannot train together, or a cell of a pack that failed.
    #[error("{0}")]
    Pack(String),
    /// JSON that etagrid writes could not be serialised.
    #[error("serialise {what}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("libtorch")]
    Torch(#[from] tch::TchError),
}

impl From<FamilyError> for TrainError {
    fn from(e: FamilyError) -> TrainError {
        match e {
            FamilyError::Io { path, source } => TrainError::Io { path, source },
            FamilyError::Config { path, message } => TrainError::Config { path, message },
            FamilyError::Unsupported { path, model_type } => {
                TrainError::UnsupportedModel { path, model_type }
            }
        }
    }
}
