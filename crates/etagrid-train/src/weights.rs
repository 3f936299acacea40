//! Frozen tensors out of a Hugging Face checkpoint directory.

use crate::TrainError;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// All tensors of a checkpoint, by their checkpoint names, on one device and in one dtype.
pub struct Weights {
    file: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Loads `model.safetensors` from `dir`, or every shard named by `model.safetensors.index.json`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Weights, TrainError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.exists() {
            vec![single.clone()]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            return Err(TrainError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors (or model.safetensors.index.json) in the model directory",
                ),
            });
        };
        let mut tensors = HashMap::new();
        for file in &files {
            let bytes = std::fs::read(file).map_err(|source| TrainError::Io {
                path: file.clone(),
                source,
            })?;
            let st =
                SafeTensors::deserialize(&bytes).map_err(|source| TrainError::Safetensors {
                    path: file.clone(),
                    source,
                })?;
            for (name, view) in st.tensors() {
                // Integer buffers such as BERT's `position_ids` are not weights.
                if matches!(view.dtype(), Dtype::I64 | Dtype::I32) {
                    continue;
                }
                let t = to_tensor(&name, &view, file)?
                    .f_to_kind(kind)?
                    .f_to_device(device)?;
                tensors.insert(name, t);
            }
        }
        Ok(Weights {
            file: if files.len() == 1 { single } else { index },
            tensors,
        })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, TrainError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| TrainError::MissingTensor {
                name: name.to_owned(),
                file: self.file.clone(),
            })?;
        if t.size() != shape {
            return Err(TrainError::Shape {
                name: name.to_owned(),
                file: self.file.clone(),
                expected: shape.to_vec(),
                found: t.size(),
            });
        }
        Ok(t.shallow_clone())
    }

    /// Like [`Weights::get`] but `None` when absent (a wrong shape is still an error).
    pub fn get_opt(&self, name: &str, shape: &[i64]) -> Result<Option<Tensor>, TrainError> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A safetensors view as a CPU tensor of its own dtype (F32, F16 or BF16; others are an error
/// naming `name` and `file`).
pub(crate) fn to_tensor(
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
    file: &Path,
) -> Result<Tensor, TrainError> {
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        other => {
            return Err(TrainError::Dtype {
                name: name.to_owned(),
                file: file.to_owned(),
                dtype: format!("{other:?}"),
            })
        }
    };
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let text = std::fs::read_to_string(index).map_err(|source| TrainError::Io {
        path: index.to_owned(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path: index.to_owned(),
        message: e.to_string(),
    })?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| TrainError::Config {
            path: index.to_owned(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| index.with_file_name(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}
