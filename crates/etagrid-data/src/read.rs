//! Labelled examples out of CSV, TSV or JSONL files: every problem is an error naming the file,
//! the line where there is one, and what to do.

use crate::DataError;
use etagrid_spec::{LmTaskSpec, TaskSpec};
use std::path::Path;

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
pub(crate) enum Format {
    Csv,
    Tsv,
    Jsonl,
}

pub(crate) fn format_of(path: &Path) -> Result<Format, DataError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Ok(Format::Csv),
        Some("tsv") | Some("tab") => Ok(Format::Tsv),
        Some("jsonl") | Some("ndjson") => Ok(Format::Jsonl),
        _ => Err(DataError::Data {
            path: path.to_owned(),
            line: None,
            message: "unknown file type: name it .csv, .tsv or .jsonl".into(),
        }),
    }
}

/// The bytes of a data file, without a UTF-8 byte-order mark. A missing file or one with nothing
/// in it is an error that says what to do.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Data {
                path: path.to_owned(),
                line: None,
                message: "file not found: check the path in the sweep file's [task] section \
                          (relative paths are relative to the sweep file)"
                    .into(),
            }
        } else {
            DataError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DataError::Data {
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
pub(crate) fn line_of(bytes: &[u8], at: usize) -> u64 {
    1 + bytes[..at.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
}

const NOT_UTF8: &str =
    "is not valid UTF-8: re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)";

/// A CSV or TSV reader over `bytes`. GLUE-style TSVs do not quote: a `"` in a TSV field is text.
pub(crate) fn table_reader(bytes: &[u8], fmt: Format) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .delimiter(if fmt == Format::Tsv { b'\t' } else { b',' })
        .quoting(fmt == Format::Csv)
        .from_reader(bytes)
}

/// The error for a bad CSV/TSV record.
pub(crate) fn record_error(path: &Path, fmt: Format, e: csv::Error) -> DataError {
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
    DataError::Data {
        path: path.to_owned(),
        line,
        message,
    }
}

/// One JSON value as example text: strings as they are, numbers and booleans as written.
pub(crate) fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The lines of a JSONL file as (line number, object), blank lines skipped; at most `limit`.
pub(crate) fn jsonl_objects(
    path: &Path,
    bytes: Vec<u8>,
    limit: usize,
) -> Result<Vec<(u64, JsonObject)>, DataError> {
    let err = |line: u64, message: String| DataError::Data {
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
pub fn read_examples(path: &Path, task: &TaskSpec) -> Result<Vec<Example>, DataError> {
    if let Some(lm) = &task.lm {
        return read_lm_examples(path, lm);
    }
    let err = |line: Option<u64>, message: String| DataError::Data {
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

/// The named columns of every row of a CSV, TSV or JSONL file, as (line, values); errors name the
/// file, the line, the column and the `[task]` key that sets it.
fn read_columns(path: &Path, cols: &[(&str, &str)]) -> Result<Vec<(u64, Vec<String>)>, DataError> {
    let err = |line: Option<u64>, message: String| DataError::Data {
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
pub fn read_lm_examples(path: &Path, lm: &LmTaskSpec) -> Result<Vec<Example>, DataError> {
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
                return Err(DataError::Data {
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
