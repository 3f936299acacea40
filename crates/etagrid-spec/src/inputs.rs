//! The content of a sweep's inputs in one digest, so that cell ids change when a data file, the
//! model's config, weights or tokenizer change (the sweep file names them only by path).

use crate::error::SpecError;
use crate::spec::SweepSpec;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Bumped whenever what the digest covers changes on purpose.
const INPUTS_VERSION: &[u8] = b"etagrid-inputs-v1\0";

impl SweepSpec {
    /// The files whose content a cell's result depends on, in a fixed order: the data files
    /// (train, eval unless split from train, the multiple-choice eval file), then the model's
    /// `config.json`, `tokenizer.json` and weights (`model.safetensors`, or the shard index and
    /// every shard it names).
    pub fn input_files(&self) -> Vec<PathBuf> {
        let t = &self.task;
        let mut files = vec![t.train_file.clone()];
        if t.split.is_none() {
            files.push(t.eval_file.clone());
        }
        if let Some(mc) = t.lm.as_ref().and_then(|l| l.mc_eval_file.clone()) {
            files.push(mc);
        }
        let dir = &self.model.dir;
        files.push(dir.join("config.json"));
        files.push(dir.join("tokenizer.json"));
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if !single.exists() && index.exists() {
            files.push(index.clone());
            files.extend(shards(&index).into_iter().map(|s| dir.join(s)));
        } else {
            files.push(single);
        }
        files
    }

    /// BLAKE3 over the bytes of every [`SweepSpec::input_files`] file (32 hex digits). Paths are
    /// not hashed: moving the project keeps the digest.
    pub fn input_digest(&self) -> Result<String, SpecError> {
        let mut h = blake3::Hasher::new();
        h.update(INPUTS_VERSION);
        let mut buf = vec![0u8; 1 << 20];
        for path in self.input_files() {
            let err = |source| SpecError::Input {
                path: path.clone(),
                source,
            };
            let mut f = std::fs::File::open(&path).map_err(err)?;
            let len = f.metadata().map_err(err)?.len();
            h.update(&len.to_le_bytes());
            let mut read = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                read += n as u64;
            }
            if read != len {
                return Err(err(std::io::Error::other(format!(
                    "it changed while being read ({len} bytes, then {read})"
                ))));
            }
        }
        Ok(h.finalize().to_hex()[..32].to_owned())
    }

    /// This spec with [`SweepSpec::inputs`] set to the current content of its files.
    pub fn with_inputs(mut self) -> Result<SweepSpec, SpecError> {
        self.inputs = Some(self.input_digest()?);
        Ok(self)
    }
}

/// The shard file names of a `model.safetensors.index.json`, sorted (empty when unreadable: the
/// index file itself is hashed, and the worker reports a broken index by name).
fn shards(index: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(index) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let mut names: Vec<String> = v["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}
