//! Labelled text out of CSV, TSV or JSONL files, tokenized once, served in seeded batches.

use crate::bert::Batch;
use crate::TrainError;
use etagrid_spec::TaskSpec;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};
use tokenizers::{EncodeInput, Tokenizer, TruncationParams};

/// One labelled example as read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub text_pair: Option<String>,
    pub label: String,
    /// 1-based line in the source file, for error messages.
    pub line: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Tsv,
    Jsonl,
}

fn format_of(path: &Path) -> Result<Format, TrainError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Ok(Format::Csv),
        Some("tsv") | Some("tab") => Ok(Format::Tsv),
        Some("jsonl") | Some("ndjson") => Ok(Format::Jsonl),
        _ => Err(TrainError::Data {
            path: path.to_owned(),
            line: None,
            message: "unknown file type: name it .csv, .tsv or .jsonl".into(),
        }),
    }
}

/// Reads every example of `path`, taking the columns named in `task`.
pub fn read_examples(path: &Path, task: &TaskSpec) -> Result<Vec<Example>, TrainError> {
    let err = |line: Option<u64>, message: String| TrainError::Data {
        path: path.to_owned(),
        line,
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    let examples = match format_of(path)? {
        Format::Jsonl => {
            let text = String::from_utf8(bytes).map_err(|e| {
                let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u64;
                err(
                    Some(line),
                    "is not valid UTF-8: re-encode the file as UTF-8".into(),
                )
            })?;
            let mut out = Vec::new();
            for (i, raw) in text.lines().enumerate() {
                let line = i as u64 + 1;
                if raw.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(raw)
                    .map_err(|e| err(Some(line), format!("not a JSON object: {e}")))?;
                let field = |name: &str| -> Result<String, TrainError> {
                    match v.get(name) {
                        Some(serde_json::Value::String(s)) => Ok(s.clone()),
                        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                        Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                        Some(_) => Err(err(
                            Some(line),
                            format!("field `{name}` must be a string or a number"),
                        )),
                        None => Err(err(Some(line), format!("field `{name}` is missing"))),
                    }
                };
                out.push(Example {
                    text: field(&task.text_column)?,
                    text_pair: task.text_pair_column.as_deref().map(field).transpose()?,
                    label: field(&task.label_column)?,
                    line,
                });
            }
            out
        }
        fmt => {
            let mut rdr = csv::ReaderBuilder::new()
                .delimiter(if fmt == Format::Tsv { b'\t' } else { b',' })
                .quoting(fmt == Format::Csv)
                .from_reader(bytes.as_slice());
            let headers = rdr
                .headers()
                .map_err(|e| err(Some(1), format!("cannot read the header line: {e}")))?
                .clone();
            let col = |name: &str| -> Result<usize, TrainError> {
                headers.iter().position(|h| h == name).ok_or_else(|| {
                    err(
                        Some(1),
                        format!(
                            "no column `{name}` in the header (columns: {}); set the column names in [task]",
                            headers.iter().collect::<Vec<_>>().join(", ")
                        ),
                    )
                })
            };
            let text_col = col(&task.text_column)?;
            let pair_col = task.text_pair_column.as_deref().map(col).transpose()?;
            let label_col = col(&task.label_column)?;
            let mut out = Vec::new();
            for rec in rdr.records() {
                let rec = rec.map_err(|e| {
                    let line = e.position().map(|p| p.line());
                    let message = match e.kind() {
                        csv::ErrorKind::UnequalLengths {
                            expected_len, len, ..
                        } => format!("row has {len} fields but the header has {expected_len}"),
                        csv::ErrorKind::Utf8 { .. } => {
                            "is not valid UTF-8: re-encode the file as UTF-8".into()
                        }
                        _ => e.to_string(),
                    };
                    err(line, message)
                })?;
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                let get = |i: usize| rec.get(i).unwrap_or_default().to_owned();
                out.push(Example {
                    text: get(text_col),
                    text_pair: pair_col.map(get),
                    label: get(label_col),
                    line,
                });
            }
            out
        }
    };
    if examples.is_empty() {
        return Err(err(None, "has no examples".into()));
    }
    Ok(examples)
}

/// Labels in a fixed order: numerically if every label is an integer, else lexicographically.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    pub labels: Vec<String>,
}

impl LabelMap {
    pub fn from_examples(examples: &[Example]) -> LabelMap {
        let set: std::collections::BTreeSet<&str> =
            examples.iter().map(|e| e.label.as_str()).collect();
        let mut labels: Vec<String> = set.into_iter().map(str::to_owned).collect();
        if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
            labels.sort_by_key(|l| l.parse::<i64>().unwrap_or_default());
        }
        LabelMap { labels }
    }

    pub fn index(&self) -> BTreeMap<&str, i64> {
        self.labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i as i64))
            .collect()
    }
}

/// Tokenized examples.
pub struct Encoded {
    pub ids: Vec<Vec<i64>>,
    pub type_ids: Vec<Vec<i64>>,
    pub labels: Vec<i64>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The model's `tokenizer.json`, with its own padding switched off (batches are padded here,
/// per batch) and truncation set to `max_len` tokens including the special tokens.
pub fn load_tokenizer(model_dir: &Path, max_len: usize) -> Result<Tokenizer, TrainError> {
    let path = model_dir.join("tokenizer.json");
    let terr = |message: String| TrainError::Tokenizer {
        path: path.clone(),
        message,
    };
    if !path.exists() {
        return Err(terr(
            "file not found (the model directory needs a tokenizer.json)".into(),
        ));
    }
    let mut tok = Tokenizer::from_file(&path).map_err(|e| terr(e.to_string()))?;
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| terr(e.to_string()))?;
    Ok(tok)
}

/// Tokenizes `examples` (in parallel, inside `tokenizers`) and maps labels through `labels`;
/// a label `labels` does not know is an error naming the file and line.
pub fn encode(
    tok: &Tokenizer,
    examples: &[Example],
    labels: &LabelMap,
    path: &Path,
) -> Result<Encoded, TrainError> {
    let index = labels.index();
    let label_ids = examples
        .iter()
        .map(|e| {
            index
                .get(e.label.as_str())
                .copied()
                .ok_or_else(|| TrainError::Data {
                    path: path.to_owned(),
                    line: Some(e.line),
                    message: format!(
                        "label {:?} never occurs in the training data (known: {})",
                        e.label,
                        labels.labels.join(", ")
                    ),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: Vec<EncodeInput> = examples
        .iter()
        .map(|e| match &e.text_pair {
            Some(p) => EncodeInput::Dual(e.text.as_str().into(), p.as_str().into()),
            None => EncodeInput::Single(e.text.as_str().into()),
        })
        .collect();
    let encs = tok
        .encode_batch(inputs, true)
        .map_err(|e| TrainError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    Ok(Encoded {
        ids: encs
            .iter()
            .map(|e| e.get_ids().iter().map(|&i| i as i64).collect())
            .collect(),
        type_ids: encs
            .iter()
            .map(|e| e.get_type_ids().iter().map(|&i| i as i64).collect())
            .collect(),
        labels: label_ids,
    })
}

/// Pads the examples `idx` of `data` to their longest length (pad id `pad`).
pub fn collate(data: &Encoded, idx: &[usize], pad: i64, device: Device) -> Batch {
    let t = idx
        .iter()
        .map(|&i| data.ids[i].len())
        .max()
        .unwrap_or(1)
        .max(1);
    let n = idx.len();
    let mut ids = vec![pad; n * t];
    let mut types = vec![0i64; n * t];
    let mut mask = vec![0i64; n * t];
    for (row, &i) in idx.iter().enumerate() {
        for (j, (&id, &ty)) in data.ids[i].iter().zip(&data.type_ids[i]).enumerate() {
            ids[row * t + j] = id;
            types[row * t + j] = ty;
            mask[row * t + j] = 1;
        }
    }
    let labels: Vec<i64> = idx.iter().map(|&i| data.labels[i]).collect();
    let shape = [n as i64, t as i64];
    Batch {
        input_ids: Tensor::from_slice(&ids).reshape(shape).to_device(device),
        token_type_ids: Tensor::from_slice(&types).reshape(shape).to_device(device),
        attention_mask: Tensor::from_slice(&mask).reshape(shape).to_device(device),
        labels: Tensor::from_slice(&labels).to_device(device),
    }
}

/// The training order: each epoch a fresh permutation drawn from `seed` (ChaCha8, portable), cut
/// into batches of `batch_size`; the last short batch of an epoch is kept.
pub struct BatchOrder {
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    order: Vec<usize>,
    pos: usize,
}

impl BatchOrder {
    pub fn new(n: usize, batch_size: usize, seed: u64) -> BatchOrder {
        let mut b = BatchOrder {
            n,
            batch_size,
            seed,
            epoch: 0,
            order: Vec::new(),
            pos: 0,
        };
        b.shuffle();
        b
    }

    fn shuffle(&mut self) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.seed ^ (self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        self.order = (0..self.n).collect();
        self.order.shuffle(&mut rng);
        self.pos = 0;
    }

    /// Batches per epoch.
    pub fn per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }

    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.pos >= self.n {
            self.epoch += 1;
            self.shuffle();
        }
        let end = (self.pos + self.batch_size).min(self.n);
        let b = self.order[self.pos..end].to_vec();
        self.pos = end;
        b
    }
}

/// At most `max` examples drawn at random (with a fixed seed, the same for every cell) and kept
/// in file order. A prefix would not do: files are often grouped by class.
pub fn eval_subset(examples: Vec<Example>, max: Option<usize>) -> Vec<Example> {
    match max {
        Some(n) if n < examples.len() => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x65_76_61_6c);
            let mut keep = rand::seq::index::sample(&mut rng, examples.len(), n).into_vec();
            keep.sort_unstable();
            keep.into_iter().map(|i| examples[i].clone()).collect()
        }
        _ => examples,
    }
}

/// The train and eval sets of a task, read, labelled and tokenized.
pub struct TaskData {
    pub labels: LabelMap,
    pub train: Encoded,
    pub eval: Encoded,
    pub train_file: PathBuf,
    pub eval_file: PathBuf,
}

impl TaskData {
    pub fn load(task: &TaskSpec, tok: &Tokenizer) -> Result<TaskData, TrainError> {
        let train_ex = read_examples(&task.train_file, task)?;
        let eval_ex = eval_subset(
            read_examples(&task.eval_file, task)?,
            task.max_eval_examples,
        );
        let labels = LabelMap::from_examples(&train_ex);
        if labels.labels.len() < 2 {
            return Err(TrainError::Data {
                path: task.train_file.clone(),
                line: None,
                message: format!(
                    "column `{}` has a single label value {:?}: classification needs at least two",
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
        })
    }
}
