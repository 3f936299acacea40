//! `etagrid init`'s column detection: the first rows of a data file and which columns hold the
//! text, the text pair and the label.

use crate::read::{
    format_of, json_scalar, jsonl_objects, read_bytes, record_error, table_reader, Format,
};
use crate::{DataError, LabelMap};
use std::path::Path;

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
) -> Result<Detected, DataError> {
    let err = |message: String| DataError::Data {
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
pub fn read_table(path: &Path, max_rows: usize) -> Result<Table, DataError> {
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
