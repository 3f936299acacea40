//! Class labels: their order, class ids, and the score of always predicting the majority class.

use crate::{DataError, Example};
use etagrid_spec::spec::Metric;
use std::collections::BTreeMap;
use std::path::Path;

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
    pub fn ids(&self, examples: &[Example], path: &Path) -> Result<Vec<i64>, DataError> {
        let index = self.index();
        examples
            .iter()
            .map(|e| {
                index
                    .get(e.label.as_str())
                    .copied()
                    .ok_or_else(|| DataError::Data {
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

/// What predicting the eval set's majority class for every example scores, given the eval set's
/// examples per class: the "chance level" a report compares against. `None` for the eval loss
/// (no constant prediction defines it) and for an empty eval set.
pub fn chance_level(metric: Metric, class_counts: &[u64]) -> Option<f64> {
    let n: u64 = class_counts.iter().sum();
    let majority = class_counts.iter().copied().max()?;
    if n == 0 {
        return None;
    }
    let p = majority as f64 / n as f64;
    match metric {
        Metric::Accuracy => Some(p),
        // The majority class has F1 = 2p / (1 + p) (precision p, recall 1); every other class
        // present has F1 = 0.
        Metric::MacroF1 => {
            let present = class_counts.iter().filter(|&&c| c > 0).count();
            Some(2.0 * p / (1.0 + p) / present as f64)
        }
        Metric::Mcc => Some(0.0),
        Metric::EvalLoss | Metric::Perplexity | Metric::McAccuracy => None,
    }
}
