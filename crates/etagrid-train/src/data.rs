//! Labelled text out of CSV, TSV or JSONL files, tokenized once, served in seeded batches.

use crate::bert::Batch;
use crate::TrainError;
use etagrid_spec::{LmTaskSpec, TaskSpec};
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

/// The bytes of a data file, without a UTF-8 byte-order mark. A missing file or one with nothing
/// in it is an error that says what to do.
fn read_bytes(path: &Path) -> Result<Vec<u8>, TrainError> {
    let mut bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TrainError::Data {
                path: path.to_owned(),
                line: None,
                message: "file not found: check the path in the sweep file's [task] section \
                          (relative paths are relative to the sweep file)"
                    .into(),
            }
        } else {
            TrainError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TrainError::Data {
            path: path.to_owned(),
            line: None,
            message: match format_of(path)? {
                Format::Jsonl => "the file is empty: write one example per line as a JSON \
                                  object, e.g. {\"text\": \"a fine film\", \"label\": \"pos\"}"
                    .into(),
                _ => "the file is empty: it needs a header line naming the columns (e.g. \
                      `text,label`) and then one example per line"
                    .into(),
            },
        });
    }
    Ok(bytes)
}

/// The 1-based line of byte offset `at`.
fn line_of(bytes: &[u8], at: usize) -> u64 {
    1 + bytes[..at.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
}

const NOT_UTF8: &str =
    "is not valid UTF-8: re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)";

/// A CSV or TSV reader over `bytes`. GLUE-style TSVs do not quote: a `"` in a TSV field is text.
fn table_reader(bytes: &[u8], fmt: Format) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(if fmt == Format::Tsv { b'\t' } else { b',' })
        .quoting(fmt == Format::Csv)
        .from_reader(bytes)
}

/// The error for a bad CSV/TSV record.
fn record_error(path: &Path, fmt: Format, e: csv::Error) -> TrainError {
    let line = e.position().map(|p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "row has {len} fields but the header has {expected_len}: {}",
            if fmt == Format::Tsv {
                "a TSV field may not contain a tab; remove stray tabs or fill in missing fields"
            } else {
                "quote fields that contain a comma (\"like, this\") or fill in missing fields"
            }
        ),
        csv::ErrorKind::Utf8 { .. } => NOT_UTF8.into(),
        _ => e.to_string(),
    };
    TrainError::Data {
        path: path.to_owned(),
        line,
        message,
    }
}

/// One JSON value as example text: strings as they are, numbers and booleans as written.
fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The lines of a JSONL file as (line number, object), blank lines skipped; at most `limit`.
fn jsonl_objects(
    path: &Path,
    bytes: Vec<u8>,
    limit: usize,
) -> Result<Vec<(u64, JsonObject)>, TrainError> {
    let err = |line: u64, message: String| TrainError::Data {
        path: path.to_owned(),
        line: Some(line),
        message,
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = line_of(e.as_bytes(), e.utf8_error().valid_up_to());
        err(line, NOT_UTF8.into())
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if out.len() == limit {
            break;
        }
        match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(o)) => out.push((line, o)),
            Ok(_) => {
                return Err(err(
                    line,
                    "not a JSON object: write one object per line, e.g. {\"text\": \"…\", \"label\": \"…\"}"
                        .into(),
                ))
            }
            Err(e) => {
                return Err(err(
                    line,
                    format!("not valid JSON ({e}): write one JSON object per line"),
                ))
            }
        }
    }
    Ok(out)
}

/// Reads every example of `path`, taking the columns named in `task`. Every problem is an error
/// naming the file, the line where there is one, and what to do.
pub fn read_examples(path: &Path, task: &TaskSpec) -> Result<Vec<Example>, TrainError> {
    if let Some(lm) = &task.lm {
        return read_lm_examples(path, lm);
    }
    let err = |line: Option<u64>, message: String| TrainError::Data {
        path: path.to_owned(),
        line,
        message,
    };
    let fmt = format_of(path)?;
    // (key in [task], column name) of each column read.
    let text_key = ("text_column", task.text_column.as_str());
    let pair_key = task
        .text_pair_column
        .as_deref()
        .map(|c| ("text_pair_column", c));
    let label_key = ("label_column", task.label_column.as_str());
    // Read in this order, so a missing column is reported as before: text, pair, label.
    let cols: Vec<_> = std::iter::once(text_key)
        .chain(pair_key)
        .chain(std::iter::once(label_key))
        .collect();
    let out: Vec<Example> = read_columns(path, &cols)?
        .into_iter()
        .map(|(line, mut row)| {
            let label = row.pop().unwrap_or_default();
            let text_pair = pair_key.map(|_| row.pop().unwrap_or_default());
            let text = row.pop().unwrap_or_default();
            Example {
                text,
                text_pair,
                label,
                line,
            }
        })
        .collect();
    let what = if fmt == Format::Jsonl {
        "field"
    } else {
        "column"
    };
    for e in &out {
        let empty = if e.text.trim().is_empty() {
            Some(text_key)
        } else if e.text_pair.as_deref().is_some_and(|p| p.trim().is_empty()) {
            pair_key
        } else if e.label.trim().is_empty() {
            Some(label_key)
        } else {
            None
        };
        if let Some((_, name)) = empty {
            return Err(err(
                Some(e.line),
                format!("{what} `{name}` is empty: fill it in or remove the example"),
            ));
        }
    }
    Ok(out)
}

/// The first rows of a data file, every column as text: what `etagrid init` looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    /// Rows in file order; `None` where a JSONL line lacks a field or holds a non-scalar.
    pub rows: Vec<Vec<Option<String>>>,
    /// The file has more rows than were read.
    pub truncated: bool,
}

impl Table {
    /// The values of column `i` that are present.
    pub fn column(&self, i: usize) -> impl Iterator<Item = &str> {
        self.rows
            .iter()
            .filter_map(move |r| r.get(i).and_then(|v| v.as_deref()))
    }
}

/// What one column of a [`Table`] looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnStats {
    pub name: String,
    /// Non-empty values.
    pub values: usize,
    pub distinct: usize,
    /// Mean length in characters.
    pub mean_len: f64,
    /// Most values are numbers.
    pub numeric: bool,
    /// Most values contain a space (sentences, not codes or ids).
    pub wordy: bool,
    /// Most values look like bracketed parse trees (GLUE's `*_parse` columns).
    pub parse_tree: bool,
}

impl ColumnStats {
    fn of(table: &Table, i: usize) -> ColumnStats {
        let values: Vec<&str> = table.column(i).filter(|v| !v.trim().is_empty()).collect();
        let n = values.len();
        let most =
            |f: &dyn Fn(&str) -> bool| n > 0 && 2 * values.iter().filter(|v| f(v)).count() > n;
        ColumnStats {
            name: table.columns[i].clone(),
            values: n,
            distinct: values
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            mean_len: values.iter().map(|v| v.chars().count()).sum::<usize>() as f64
                / n.max(1) as f64,
            numeric: most(&|v| v.trim().parse::<f64>().is_ok()),
            wordy: most(&|v| v.trim().contains(char::is_whitespace)),
            parse_tree: most(&|v| v.trim_start().starts_with('(') && v.trim_end().ends_with(')')),
        }
    }

    /// Few distinct short values: what a label column looks like. A column with a usual label
    /// name only needs short values and at least two of them (a small sample repeats little);
    /// another one must repeat its values.
    fn label_like(&self) -> bool {
        let cap = if LABEL_NAMES.contains(&self.name.to_ascii_lowercase().as_str()) {
            self.values
        } else {
            (self.values / 3)
                .clamp(2, 1000)
                .min(self.values.saturating_sub(1))
        };
        self.distinct >= 2 && self.distinct <= cap && self.mean_len <= 40.0
    }

    /// Free text: not a number, not a parse tree, not a label-like column.
    fn text_like(&self) -> bool {
        self.values > 0 && !self.numeric && !self.parse_tree && !self.label_like()
    }
}

/// Columns asked for explicitly (`etagrid init --text-column …`); the rest are detected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnChoice {
    pub text: Option<String>,
    pub text_pair: Option<String>,
    pub label: Option<String>,
}

/// The task's columns as read off the first rows of a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    pub text_column: String,
    pub text_pair_column: Option<String>,
    pub label_column: String,
    /// The label values seen, in class-id order.
    pub labels: LabelMap,
    /// Examples per label in the rows read, in the order of `labels`.
    pub label_counts: Vec<u64>,
    /// Other columns that could be the label: (name, distinct values).
    pub other_label_columns: Vec<(String, usize)>,
    pub stats: Vec<ColumnStats>,
}

/// Names a label column often has, preferred over the fewest-values rule.
const LABEL_NAMES: [&str; 8] = [
    "label",
    "labels",
    "gold_label",
    "class",
    "category",
    "target",
    "sentiment",
    "y",
];

/// Detects the text, text-pair and label columns of `table` (read from `path`):
/// - label: a column with few distinct short values — one with a usual label name if there is
///   one, else the one with the fewest values;
/// - text: the free-text column with the longest values (sentences preferred over single words);
/// - text pair: a second free-text column of sentences, if there is one. The two text columns are
///   then taken in file order (GLUE's `sentence1`, `sentence2`; `question`, `sentence`).
///
/// Columns in `choice` are taken as given (they must exist).
pub fn detect_columns(
    table: &Table,
    path: &Path,
    choice: &ColumnChoice,
) -> Result<Detected, TrainError> {
    let err = |message: String| TrainError::Data {
        path: path.to_owned(),
        line: None,
        message,
    };
    let stats: Vec<ColumnStats> = (0..table.columns.len())
        .map(|i| ColumnStats::of(table, i))
        .collect();
    let columns = table.columns.join(", ");
    let find = |name: &str, flag: &str| {
        stats.iter().position(|s| s.name == name).ok_or_else(|| {
            err(format!(
                "{flag} {name:?}: there is no such column (columns: {columns})"
            ))
        })
    };
    let label = match &choice.label {
        Some(name) => find(name, "--label-column")?,
        None => {
            let candidates: Vec<usize> = (0..stats.len())
                .filter(|&i| stats[i].label_like())
                .collect();
            candidates
                .iter()
                .copied()
                .find(|&i| LABEL_NAMES.contains(&stats[i].name.to_ascii_lowercase().as_str()))
                .or_else(|| {
                    candidates
                        .iter()
                        .copied()
                        .rev()
                        .min_by_key(|&i| stats[i].distinct)
                })
                .ok_or_else(|| {
                    err(format!(
                        "no column looks like a label (few distinct values) among {columns}: \
                         name it with --label-column"
                    ))
                })?
        }
    };
    let forced_text = choice
        .text
        .as_deref()
        .map(|n| find(n, "--text-column"))
        .transpose()?;
    let forced_pair = choice
        .text_pair
        .as_deref()
        .map(|n| find(n, "--text-pair-column"))
        .transpose()?;
    // Free-text columns, longest first; sentences before single words.
    let mut texts: Vec<usize> = (0..stats.len())
        .filter(|&i| i != label && stats[i].text_like())
        .collect();
    texts.sort_by(|&a, &b| {
        (stats[b].wordy, stats[b].mean_len)
            .partial_cmp(&(stats[a].wordy, stats[a].mean_len))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let (mut text, mut pair) = match (forced_text, forced_pair) {
        (Some(t), p) => (t, p),
        (None, Some(p)) => (
            texts.iter().copied().find(|&i| i != p).ok_or_else(|| {
                err(format!(
                    "no text column found among {columns}: name it with --text-column"
                ))
            })?,
            Some(p),
        ),
        (None, None) => {
            let text = *texts.first().ok_or_else(|| {
                err(format!(
                    "no text column found among {columns} (free text, not numbers or a few \
                     repeated values): name it with --text-column"
                ))
            })?;
            let pair = texts
                .iter()
                .copied()
                .skip(1)
                .find(|&i| stats[i].wordy && stats[text].wordy);
            (text, pair)
        }
    };
    if choice.text.is_none() && choice.text_pair.is_none() {
        if let Some(p) = pair.filter(|&p| p < text) {
            pair = Some(text);
            text = p;
        }
    }
    if text == label || pair == Some(label) || pair == Some(text) {
        return Err(err(format!(
            "the text, text pair and label columns must differ (text {:?}, label {:?})",
            stats[text].name, stats[label].name
        )));
    }
    let labels = LabelMap::from_labels(table.column(label).filter(|v| !v.trim().is_empty()));
    let index = labels.index();
    let mut label_counts = vec![0u64; labels.labels.len()];
    for v in table.column(label) {
        if let Some(&i) = index.get(v) {
            label_counts[i as usize] += 1;
        }
    }
    let other_label_columns = (0..stats.len())
        .filter(|&i| i != label && i != text && Some(i) != pair && stats[i].label_like())
        .map(|i| (stats[i].name.clone(), stats[i].distinct))
        .collect();
    Ok(Detected {
        text_column: stats[text].name.clone(),
        text_pair_column: pair.map(|p| stats[p].name.clone()),
        label_column: stats[label].name.clone(),
        labels,
        label_counts,
        other_label_columns,
        stats,
    })
}

/// Reads the header and at most `max_rows` rows of `path` (CSV, TSV or JSONL). For JSONL the
/// columns are the keys in order of first appearance.
pub fn read_table(path: &Path, max_rows: usize) -> Result<Table, TrainError> {
    let fmt = format_of(path)?;
    let bytes = read_bytes(path)?;
    let mut table = Table {
        columns: Vec::new(),
        rows: Vec::new(),
        truncated: false,
    };
    match fmt {
        Format::Jsonl => {
            let objects = jsonl_objects(path, bytes, max_rows.saturating_add(1))?;
            table.truncated = objects.len() > max_rows;
            let objects = &objects[..objects.len().min(max_rows)];
            for (_, o) in objects {
                for k in o.keys() {
                    if !table.columns.contains(k) {
                        table.columns.push(k.clone());
                    }
                }
            }
            for (_, o) in objects {
                table.rows.push(
                    table
                        .columns
                        .iter()
                        .map(|c| o.get(c).and_then(json_scalar))
                        .collect(),
                );
            }
        }
        Format::Csv | Format::Tsv => {
            let mut rdr = table_reader(&bytes, fmt);
            table.columns = rdr
                .headers()
                .map_err(|e| record_error(path, fmt, e))?
                .iter()
                .map(|h| h.trim().to_owned())
                .collect();
            for rec in rdr.records() {
                if table.rows.len() == max_rows {
                    table.truncated = true;
                    break;
                }
                let rec = rec.map_err(|e| record_error(path, fmt, e))?;
                table
                    .rows
                    .push(rec.iter().map(|v| Some(v.to_owned())).collect());
            }
        }
    }
    Ok(table)
}

/// Labels in a fixed order: numerically if every label is an integer, else lexicographically.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelMap {
    pub labels: Vec<String>,
}

impl LabelMap {
    pub fn from_examples(examples: &[Example]) -> LabelMap {
        LabelMap::from_labels(examples.iter().map(|e| e.label.as_str()))
    }

    /// The distinct values of `labels`, ordered.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> LabelMap {
        let set: std::collections::BTreeSet<&str> = labels.into_iter().collect();
        let mut labels: Vec<String> = set.into_iter().map(str::to_owned).collect();
        if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
            labels.sort_by_key(|l| l.parse::<i64>().unwrap_or_default());
        }
        LabelMap { labels }
    }

    /// The class id of every example of `path`; a label this map does not know (an eval label
    /// that never occurs in the training data) is an error naming the file and line.
    pub fn ids(&self, examples: &[Example], path: &Path) -> Result<Vec<i64>, TrainError> {
        let index = self.index();
        examples
            .iter()
            .map(|e| {
                index
                    .get(e.label.as_str())
                    .copied()
                    .ok_or_else(|| TrainError::Data {
                        path: path.to_owned(),
                        line: Some(e.line),
                        message: format!(
                            "label {:?} never occurs in the training data, so the model cannot \
                             learn it (training labels: {}): remove the examples with this label \
                             or add some to the training data",
                            e.label,
                            abbreviate(&self.labels, 20)
                        ),
                    })
            })
            .collect()
    }

    pub fn index(&self) -> BTreeMap<&str, i64> {
        self.labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i as i64))
            .collect()
    }
}

/// At most `n` items joined with ", ", then how many more.
fn abbreviate(items: &[String], n: usize) -> String {
    let mut s = items[..items.len().min(n)].join(", ");
    if items.len() > n {
        s.push_str(&format!(", … ({} more)", items.len() - n));
    }
    s
}

/// Splits `examples` into (train, eval), stratified by label: of each label's `n` examples,
/// `round(eval_fraction · n)` go to eval, but at least one stays in train (a label with a single
/// example is never held out). Which ones is drawn from `seed` and the label alone (ChaCha8, one
/// stream per label), so the split does not change when other labels are added or the rows are
/// reordered within other labels. Both parts keep the file order.
pub fn stratified_split(
    examples: Vec<Example>,
    eval_fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        by_label.entry(e.label.as_str()).or_default().push(i);
    }
    let mut is_eval = vec![false; examples.len()];
    for (label, mut idx) in by_label {
        let n = idx.len();
        let n_eval = ((eval_fraction * n as f64).round() as usize).min(n.saturating_sub(1));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(fnv1a(label.as_bytes()));
        idx.shuffle(&mut rng);
        for &i in &idx[..n_eval] {
            is_eval[i] = true;
        }
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (e, ev) in examples.into_iter().zip(is_eval) {
        if ev {
            eval.push(e);
        } else {
            train.push(e);
        }
    }
    (train, eval)
}

/// 64-bit FNV-1a: a hash that is the same on every platform and in every Rust version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Tokenized examples.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Encoded {
    pub ids: Vec<Vec<i64>>,
    pub type_ids: Vec<Vec<i64>>,
    pub labels: Vec<i64>,
    /// `causal_lm` only: per example, the index of its first response token; the tokens before
    /// it (the prompt) carry no loss. Empty for classification.
    #[serde(default)]
    pub loss_from: Vec<usize>,
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

/// One id list per input.
pub type TokenIds = Vec<Vec<i64>>;

/// Tokenizes texts, each with an optional second text of a pair, exactly as training does (in
/// parallel, inside `tokenizers`): token ids and token-type ids per input. `path` names the file
/// the texts came from, for errors.
pub fn tokenize(
    tok: &Tokenizer,
    texts: &[(&str, Option<&str>)],
    path: &Path,
) -> Result<(TokenIds, TokenIds), TrainError> {
    let inputs: Vec<EncodeInput> = texts
        .iter()
        .map(|&(t, p)| match p {
            Some(p) => EncodeInput::Dual(t.into(), p.into()),
            None => EncodeInput::Single(t.into()),
        })
        .collect();
    let encs = tok
        .encode_batch(inputs, true)
        .map_err(|e| TrainError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let widen = |v: &[u32]| v.iter().map(|&i| i as i64).collect::<Vec<i64>>();
    Ok((
        encs.iter().map(|e| widen(e.get_ids())).collect(),
        encs.iter().map(|e| widen(e.get_type_ids())).collect(),
    ))
}

/// Tokenizes `examples` and maps labels through `labels`; a label `labels` does not know is an
/// error naming the file and line.
pub fn encode(
    tok: &Tokenizer,
    examples: &[Example],
    labels: &LabelMap,
    path: &Path,
) -> Result<Encoded, TrainError> {
    let label_ids = labels.ids(examples, path)?;
    let texts: Vec<(&str, Option<&str>)> = examples
        .iter()
        .map(|e| (e.text.as_str(), e.text_pair.as_deref()))
        .collect();
    let (ids, type_ids) = tokenize(tok, &texts, path)?;
    Ok(Encoded {
        ids,
        type_ids,
        labels: label_ids,
        loss_from: Vec::new(),
    })
}

/// Pads the examples `idx` of `data` to their longest length (pad id `pad`).
pub fn collate(data: &Encoded, idx: &[usize], pad: i64, device: Device) -> Batch {
    collate_to(data, idx, pad, 1, device)
}

/// Pads the examples `idx` of `data` to their longest length or `min_len`, whichever is longer:
/// the cells of a pack share one padded length.
pub fn collate_to(
    data: &Encoded,
    idx: &[usize],
    pad: i64,
    min_len: usize,
    device: Device,
) -> Batch {
    let t = idx
        .iter()
        .map(|&i| data.ids[i].len())
        .max()
        .unwrap_or(1)
        .max(min_len)
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
pub fn eval_subset<T: Clone>(examples: Vec<T>, max: Option<usize>) -> Vec<T> {
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

/// The train and eval examples of a task as read: from two files, or from one file split by
/// `[task] split`; the eval part cut to `max_eval_examples`.
pub fn load_examples(task: &TaskSpec) -> Result<(Vec<Example>, Vec<Example>), TrainError> {
    let (train, eval) = match &task.split {
        None => (
            read_examples(&task.train_file, task)?,
            read_examples(&task.eval_file, task)?,
        ),
        Some(split) => {
            let all = read_examples(&task.train_file, task)?;
            let n = all.len();
            let (train, eval) = stratified_split(all, split.eval_fraction, split.seed);
            if eval.is_empty() {
                return Err(TrainError::Data {
                    path: task.train_file.clone(),
                    line: None,
                    message: format!(
                        "split.eval_fraction = {} holds out no example of its {n}: raise it, or give an `eval` file",
                        split.eval_fraction
                    ),
                });
            }
            (train, eval)
        }
    };
    Ok((train, eval_subset(eval, task.max_eval_examples)))
}

/// The eval examples of a task alone, as [`load_examples`] gives them (the train file is read only
/// when the eval set is split from it).
pub fn eval_examples(task: &TaskSpec) -> Result<Vec<Example>, TrainError> {
    match task.split {
        None => Ok(eval_subset(
            read_examples(&task.eval_file, task)?,
            task.max_eval_examples,
        )),
        Some(_) => load_examples(task).map(|(_, eval)| eval),
    }
}

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
    ) -> Result<(TaskData, TokenSource), TrainError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TrainError::Io {
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
        h.update(serde_json::to_string(task).unwrap_or_default().as_bytes());
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
        // A cache that cannot be written only costs time: the cell goes on without it.
        let _ = std::fs::create_dir_all(cache_dir).and_then(|_| {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(&cached).unwrap_or_default())?;
            std::fs::rename(&tmp, &path)
        });
        Ok((from(cached), TokenSource::Tokenized))
    }

    pub fn load(task: &TaskSpec, tok: &Tokenizer) -> Result<TaskData, TrainError> {
        let (train_ex, eval_ex) = load_examples(task)?;
        let labels = LabelMap::from_examples(&train_ex);
        if labels.labels.len() < 2 {
            return Err(TrainError::Data {
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
    ) -> Result<TaskData, TrainError> {
        let (train_ex, eval_ex) = load_examples(task)?;
        let lm = task.lm.as_ref().ok_or_else(|| TrainError::Data {
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

/// The named columns of every row of a CSV, TSV or JSONL file, as (line, values); errors name the
/// file, the line, the column and the `[task]` key that sets it.
fn read_columns(path: &Path, cols: &[(&str, &str)]) -> Result<Vec<(u64, Vec<String>)>, TrainError> {
    let err = |line: Option<u64>, message: String| TrainError::Data {
        path: path.to_owned(),
        line,
        message,
    };
    let fmt = format_of(path)?;
    let bytes = read_bytes(path)?;
    let mut out = Vec::new();
    match fmt {
        Format::Jsonl => {
            for (line, obj) in jsonl_objects(path, bytes, usize::MAX)? {
                let mut row = Vec::with_capacity(cols.len());
                for &(key, name) in cols {
                    row.push(match obj.get(name) {
                        Some(v) => json_scalar(v).ok_or_else(|| {
                            err(Some(line), format!("field `{name}` is {v}: it must be a string or a number"))
                        })?,
                        None => {
                            return Err(err(
                                Some(line),
                                format!(
                                    "field `{name}` is missing (fields: {}): add it, or set `{key}` in [task]",
                                    obj.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                                ),
                            ))
                        }
                    });
                }
                out.push((line, row));
            }
        }
        Format::Csv | Format::Tsv => {
            let mut rdr = table_reader(&bytes, fmt);
            let headers = match rdr.headers() {
                Ok(h) => h.clone(),
                Err(e) => {
                    return Err(match e.kind() {
                        csv::ErrorKind::Utf8 { .. } => err(Some(1), NOT_UTF8.into()),
                        _ => err(Some(1), format!("cannot read the header line: {e}")),
                    })
                }
            };
            let idx = cols
                .iter()
                .map(|&(key, name)| {
                    headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
                        err(
                            Some(1),
                            format!(
                                "no column `{name}` in the header (columns: {}): set `{key}` in [task] to one of them",
                                headers.iter().collect::<Vec<_>>().join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            for rec in rdr.records() {
                let rec = rec.map_err(|e| record_error(path, fmt, e))?;
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                out.push((
                    line,
                    idx.iter()
                        .map(|&i| rec.get(i).unwrap_or_default().to_owned())
                        .collect(),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(err(
            None,
            match fmt {
                Format::Jsonl => {
                    "has no examples: write one example per line as a JSON object".into()
                }
                _ => "has a header line but no examples: add one example per line after the header"
                    .into(),
            },
        ));
    }
    Ok(out)
}

/// Reads the prompt/response pairs of a `causal_lm` task. Each becomes an [`Example`] whose
/// `text` is the prompt, `text_pair` the response and `label` empty (so splits and eval subsets
/// work as for classification). An empty response is an error; an empty prompt is allowed.
pub fn read_lm_examples(path: &Path, lm: &LmTaskSpec) -> Result<Vec<Example>, TrainError> {
    let rows = read_columns(
        path,
        &[
            ("prompt_column", lm.prompt_column.as_str()),
            ("response_column", lm.response_column.as_str()),
        ],
    )?;
    rows.into_iter()
        .map(|(line, mut v)| {
            let response = v.pop().unwrap_or_default();
            let prompt = v.pop().unwrap_or_default();
            if response.trim().is_empty() {
                return Err(TrainError::Data {
                    path: path.to_owned(),
                    line: Some(line),
                    message: format!(
                        "`{}` (the response) is empty: fill it in or remove the example",
                        lm.response_column
                    ),
                });
            }
            Ok(Example {
                text: prompt,
                text_pair: Some(response),
                label: String::new(),
                line,
            })
        })
        .collect()
}

/// Tokenizes prompt/response pairs for causal-LM training: the rendered prompt (with the
/// tokenizer's special tokens, e.g. a BOS), then the response (without), then `eos`; cut to
/// `max_len` tokens from the right. `loss_from` is the prompt's length: only the tokens after it
/// are targets. An example whose response does not start within `max_len` tokens is dropped
/// (it has nothing to learn from); if every one is, that is an error.
pub fn encode_lm(
    tok: &Tokenizer,
    examples: &[Example],
    lm: &LmTaskSpec,
    max_len: usize,
    eos: Option<i64>,
    path: &Path,
) -> Result<Encoded, TrainError> {
    let terr = |e: tokenizers::Error| TrainError::Tokenizer {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let prompts: Vec<EncodeInput> = examples
        .iter()
        .map(|e| EncodeInput::Single(lm.render(&e.text).into()))
        .collect();
    let responses: Vec<EncodeInput> = examples
        .iter()
        .map(|e| EncodeInput::Single(e.text_pair.clone().unwrap_or_default().into()))
        .collect();
    let p = tok.encode_batch(prompts, true).map_err(terr)?;
    let r = tok.encode_batch(responses, false).map_err(terr)?;
    let mut out = Encoded {
        ids: Vec::new(),
        type_ids: Vec::new(),
        labels: Vec::new(),
        loss_from: Vec::new(),
    };
    for (pe, re) in p.iter().zip(&r) {
        let mut ids: Vec<i64> = pe.get_ids().iter().map(|&i| i as i64).collect();
        let from = ids.len();
        ids.extend(re.get_ids().iter().map(|&i| i as i64));
        ids.extend(eos);
        ids.truncate(max_len);
        if ids.len() <= from {
            continue;
        }
        out.type_ids.push(vec![0; ids.len()]);
        out.ids.push(ids);
        out.labels.push(0);
        out.loss_from.push(from);
    }
    if out.ids.is_empty() {
        return Err(TrainError::Data {
            path: path.to_owned(),
            line: None,
            message: format!(
                "no example has a response token within train.max_seq_len = {max_len} tokens: \
                 raise max_seq_len or shorten the prompts"
            ),
        });
    }
    Ok(out)
}

/// Right-pads the `causal_lm` examples `idx` of `data` and builds transformers-style labels
/// [b, T]: the token id where the token is a target (a response token or EOS), -100 on prompt
/// and padding. The next-token shift is the loss's job ([`crate::train::lm_loss`]).
pub fn collate_lm(data: &Encoded, idx: &[usize], pad: i64, device: Device) -> Batch {
    collate_lm_to(data, idx, pad, 1, device)
}

/// [`collate_lm`] padded to at least `min_len`.
pub fn collate_lm_to(
    data: &Encoded,
    idx: &[usize],
    pad: i64,
    min_len: usize,
    device: Device,
) -> Batch {
    let mut b = collate_to(data, idx, pad, min_len, device);
    let s = b.input_ids.size();
    let (n, t) = (s[0] as usize, s[1] as usize);
    let mut labels = vec![-100i64; n * t];
    for (row, &i) in idx.iter().enumerate() {
        let from = data.loss_from.get(i).copied().unwrap_or(0);
        for (j, &id) in data.ids[i].iter().enumerate().skip(from) {
            labels[row * t + j] = id;
        }
    }
    b.labels = Tensor::from_slice(&labels)
        .reshape([n as i64, t as i64])
        .to_device(device);
    b
}

/// One multiple-choice question as read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct McExample {
    pub question: String,
    pub choices: Vec<String>,
    /// 0-based index of the right choice.
    pub answer: usize,
    pub line: u64,
}

/// The letters choices are listed under; at most this many choices.
pub const MC_LETTERS: &str = "ABCDEFGHIJ";

/// Reads a multiple-choice JSONL file: one object a line with `question` (a string), `choices`
/// (a list of 2–10 strings) and `answer` (a letter "A"…, or a 0-based index).
pub fn read_mc_examples(path: &Path) -> Result<Vec<McExample>, TrainError> {
    let err = |line: Option<u64>, message: String| TrainError::Data {
        path: path.to_owned(),
        line,
        message,
    };
    if format_of(path)? != Format::Jsonl {
        return Err(err(
            None,
            "a multiple-choice eval file must be .jsonl (its `choices` are a list)".into(),
        ));
    }
    let bytes = read_bytes(path)?;
    let mut out = Vec::new();
    for (line, obj) in jsonl_objects(path, bytes, usize::MAX)? {
        let e = |m: &str| err(Some(line), m.to_owned());
        let question = obj
            .get("question")
            .and_then(|v| v.as_str())
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| e("`question` is missing, empty or not a string: each line needs {\"question\": \"…\", \"choices\": [\"…\", …], \"answer\": \"A\"}"))?
            .to_owned();
        let choices: Vec<String> = obj
            .get("choices")
            .and_then(|v| v.as_array())
            .and_then(|a| {
                a.iter()
                    .map(|c| json_scalar(c).filter(|c| !c.trim().is_empty()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| e("`choices` is missing or not a list of non-empty strings"))?;
        if choices.len() < 2 || choices.len() > MC_LETTERS.len() {
            return Err(e(&format!(
                "has {} choices: give between 2 and {}",
                choices.len(),
                MC_LETTERS.len()
            )));
        }
        let answer = match obj.get("answer") {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|i| i as usize),
            Some(serde_json::Value::String(s)) => {
                let s = s.trim();
                // A letter ("B", "b"), else a 0-based index written as text ("1", "10").
                match s.parse::<usize>() {
                    Ok(i) => Some(i),
                    Err(_) if s.len() == 1 => MC_LETTERS.find(&s.to_ascii_uppercase()),
                    Err(_) => None,
                }
            }
            _ => None,
        }
        .filter(|&a| a < choices.len())
        .ok_or_else(|| {
            e(&format!(
                "`answer` must be a letter A–{} or a 0-based index below {}",
                &MC_LETTERS[choices.len() - 1..choices.len()],
                choices.len()
            ))
        })?;
        out.push(McExample {
            question,
            choices,
            answer,
            line,
        });
    }
    if out.is_empty() {
        return Err(err(
            None,
            "has no questions: write one JSON object per line".into(),
        ));
    }
    Ok(out)
}

/// The prompt of a multiple-choice question, MMLU style:
/// `question\nA. first\nB. second\n…\nAnswer:`. The model's next token is read for the letters.
pub fn mc_prompt(question: &str, choices: &[String]) -> String {
    let mut s = question.trim_end().to_owned();
    for (letter, c) in MC_LETTERS.chars().zip(choices) {
        s.push_str(&format!("\n{letter}. {c}"));
    }
    s.push_str("\nAnswer:");
    s
}

/// The token id of each choice letter as the answer's next token: " A" when the tokenizer has it
/// as one token (byte-level BPE vocabularies do), else "A"; an error when neither is one token.
pub fn mc_letter_ids(tok: &Tokenizer, n: usize, path: &Path) -> Result<Vec<i64>, TrainError> {
    MC_LETTERS
        .chars()
        .take(n)
        .map(|c| {
            for text in [format!(" {c}"), c.to_string()] {
                let enc = tok.encode(text.as_str(), false).map_err(|e| TrainError::Tokenizer {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                if let [id] = enc.get_ids() {
                    return Ok(*id as i64);
                }
            }
            Err(TrainError::Tokenizer {
                path: path.to_owned(),
                message: format!(
                    "neither \" {c}\" nor \"{c}\" is a single token: multiple-choice scoring needs one token per letter"
                ),
            })
        })
        .collect()
}

/// Tokenized multiple-choice questions.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct McEncoded {
    /// The prompts ([`mc_prompt`]) with the tokenizer's special tokens; `labels` = answers.
    pub prompts: Encoded,
    pub n_choices: Vec<i64>,
    /// The letter tokens, for as many letters as the question with the most choices has.
    pub letter_ids: Vec<i64>,
}

/// Tokenizes multiple-choice questions (`path` names their file, for errors). Prompts are not
/// truncated: the answer comes after the last prompt token.
pub fn encode_mc(tok: &Tokenizer, qs: &[McExample], path: &Path) -> Result<McEncoded, TrainError> {
    let mut tok = tok.clone();
    tok.with_truncation(None)
        .map_err(|e| TrainError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let prompts: Vec<String> = qs
        .iter()
        .map(|q| mc_prompt(&q.question, &q.choices))
        .collect();
    let texts: Vec<(&str, Option<&str>)> = prompts.iter().map(|p| (p.as_str(), None)).collect();
    let (ids, type_ids) = tokenize(&tok, &texts, path)?;
    let most = qs.iter().map(|q| q.choices.len()).max().unwrap_or(0);
    Ok(McEncoded {
        prompts: Encoded {
            ids,
            type_ids,
            labels: qs.iter().map(|q| q.answer as i64).collect(),
            loss_from: Vec::new(),
        },
        n_choices: qs.iter().map(|q| q.choices.len() as i64).collect(),
        letter_ids: mc_letter_ids(&tok, most, path)?,
    })
}
