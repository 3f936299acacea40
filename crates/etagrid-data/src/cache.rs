//! A task's train and eval sets read, labelled and tokenized, through a cache shared by the
//! cells of a sweep.

use crate::mc::{encode_mc, read_mc_examples, McEncoded};
use crate::split::{eval_subset, load_examples};
use crate::tokens::{encode, encode_lm, Encoded};
use crate::{DataError, LabelMap};
use etagrid_spec::TaskSpec;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// The train and eval sets of a task, read, labelled and tokenized.
pub struct TaskData {
    pub labels: LabelMap,
    pub train: Encoded,
    pub eval: Encoded,
    pub train_file: PathBuf,
    pub eval_file: PathBuf,
    /// `causal_lm` with `mc_eval`: the multiple-choice questions.
    pub mc: Option<McEncoded>,
}

/// Where a task's tokenized data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// Read and tokenized now (and written to the cache, if one was given).
    Tokenized,
    /// Loaded from the sweep's cache: another cell tokenized the same data already.
    Cache,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedTokens {
    labels: LabelMap,
    train: Encoded,
    eval: Encoded,
    #[serde(default)]
    mc: Option<McEncoded>,
}

impl TaskData {
    /// Like [`TaskData::load`], through a cache in `cache_dir`: every cell of a sweep reads and
    /// tokenizes the same files with the same tokenizer, so the first one writes the result and
    /// the others load it. The key hashes the tokenizer file, both data files' bytes, the task
    /// settings and `max_len`, so an edited file or setting never hits a stale entry. Writes are
    /// atomic (temp file + rename); a damaged entry is ignored and rewritten.
    pub fn load_cached(
        task: &TaskSpec,
        tok: &Tokenizer,
        tokenizer_file: &Path,
        max_len: usize,
        eos: Option<i64>,
        cache_dir: &Path,
    ) -> Result<(TaskData, TokenSource), DataError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| DataError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let mut h = blake3::Hasher::new();
        h.update(b"etagrid-tokens-v1\0");
        let mc_file = task.lm.as_ref().and_then(|l| l.mc_eval_file.as_deref());
        for p in [tokenizer_file, &task.train_file, &task.eval_file]
            .into_iter()
            .chain(mc_file)
        {
            let bytes = read(p)?;
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        let settings = serde_json::to_string(task).map_err(|source| DataError::Serialize {
            what: "the task settings",
            path: cache_dir.to_owned(),
            source,
        })?;
        h.update(settings.as_bytes());
        h.update(&(max_len as u64).to_le_bytes());
        h.update(&eos.unwrap_or(-1).to_le_bytes());
        let path = cache_dir.join(format!("tokens-{}.json", &h.finalize().to_hex()[..32]));
        let from = |c: CachedTokens| TaskData {
            labels: c.labels,
            train: c.train,
            eval: c.eval,
            train_file: task.train_file.clone(),
            eval_file: task.eval_file.clone(),
            mc: c.mc,
        };
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(c) = serde_json::from_slice::<CachedTokens>(&bytes) {
                return Ok((from(c), TokenSource::Cache));
            }
        }
        let data = match task.lm {
            Some(_) => TaskData::load_lm(task, tok, max_len, eos)?,
            None => TaskData::load(task, tok)?,
        };
        let cached = CachedTokens {
            labels: data.labels,
            train: data.train,
            eval: data.eval,
            mc: data.mc,
        };
        // Data that cannot be serialised is an error, never an empty entry; a cache that cannot
        // be written only costs time: the cell goes on without it.
        let bytes = serde_json::to_vec(&cached).map_err(|source| DataError::Serialize {
            what: "the tokenized data",
            path: path.clone(),
            source,
        })?;
        let _ = std::fs::create_dir_all(cache_dir).and_then(|_| {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &path)
        });
        Ok((from(cached), TokenSource::Tokenized))
    }

    pub fn load(task: &TaskSpec, tok: &Tokenizer) -> Result<TaskData, DataError> {
        let (train_ex, eval_ex) = load_examples(task)?;
        let labels = LabelMap::from_examples(&train_ex);
        if labels.labels.len() < 2 {
            return Err(DataError::Data {
                path: task.train_file.clone(),
                line: None,
                message: format!(
                    "column `{}` has a single label value {:?}: classification needs at least two; \
                     check `label_column` in [task]",
                    task.label_column, labels.labels
                ),
            });
        }
        let train = encode(tok, &train_ex, &labels, &task.train_file)?;
        let eval = encode(tok, &eval_ex, &labels, &task.eval_file)?;
        Ok(TaskData {
            labels,
            train,
            eval,
            train_file: task.train_file.clone(),
            eval_file: task.eval_file.clone(),
            mc: None,
        })
    }

    /// A `causal_lm` task: prompt/response pairs tokenized as [`encode_lm`] does (at most
    /// `max_len` tokens, `eos` appended), and the multiple-choice eval set when there is one.
    pub fn load_lm(
        task: &TaskSpec,
        tok: &Tokenizer,
        max_len: usize,
        eos: Option<i64>,
    ) -> Result<TaskData, DataError> {
        let (train_ex, eval_ex) = load_examples(task)?;
        let lm = task.lm.as_ref().ok_or_else(|| DataError::Data {
            path: task.train_file.clone(),
            line: None,
            message: "not a causal_lm task".into(),
        })?;
        let train = encode_lm(tok, &train_ex, lm, max_len, eos, &task.train_file)?;
        let eval = encode_lm(tok, &eval_ex, lm, max_len, eos, &task.eval_file)?;
        let mc = match &lm.mc_eval_file {
            // `max_eval_examples` caps the questions too (the same kind of fixed random subset).
            Some(p) => Some(encode_mc(
                tok,
                &eval_subset(read_mc_examples(p)?, task.max_eval_examples),
                p,
            )?),
            None => None,
        };
        Ok(TaskData {
            labels: LabelMap { labels: Vec::new() },
            train,
            eval,
            train_file: task.train_file.clone(),
            eval_file: task.eval_file.clone(),
            mc,
        })
    }

    /// Examples per class id in the train and the eval set.
    pub fn class_counts(&self) -> (Vec<u64>, Vec<u64>) {
        let count = |e: &Encoded| {
            let mut c = vec![0u64; self.labels.labels.len()];
            for &l in &e.labels {
                if let Some(n) = c.get_mut(l as usize) {
                    *n += 1;
                }
            }
            c
        };
        (count(&self.train), count(&self.eval))
    }
}
