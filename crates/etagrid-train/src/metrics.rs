//! Classification metrics from a confusion matrix: accuracy, macro-F1 and the Matthews
//! correlation coefficient, plus the chance level of each.
//!
//! The matrix is gathered on the device during evaluation ([`confusion_update`]) and read back
//! once at the end; everything else here is plain arithmetic on counts.

pub use etagrid_data::chance_level;
use etagrid_spec::spec::Metric;
use tch::{Kind, Tensor};

/// `counts[t * k + p]` = how many examples of true class `t` were predicted as `p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    k: usize,
    counts: Vec<u64>,
}

impl Confusion {
    /// An empty `k × k` matrix.
    pub fn new(k: usize) -> Confusion {
        Confusion {
            k,
            counts: vec![0; k * k],
        }
    }

    /// A matrix from its rows (true class) of columns (predicted class). `None` unless square.
    pub fn from_rows(rows: &[Vec<u64>]) -> Option<Confusion> {
        let k = rows.len();
        if rows.iter().any(|r| r.len() != k) {
            return None;
        }
        Some(Confusion {
            k,
            counts: rows.concat(),
        })
    }

    /// Counts one (true, predicted) pair per element; pairs out of range are ignored.
    pub fn from_pairs(k: usize, truth: &[usize], pred: &[usize]) -> Confusion {
        let mut c = Confusion::new(k);
        for (&t, &p) in truth.iter().zip(pred) {
            if t < k && p < k {
                c.counts[t * k + p] += 1;
            }
        }
        c
    }

    /// Reads back a flat `[k * k]` integer tensor made by [`confusion_update`].
    pub fn from_tensor(t: &Tensor, k: usize) -> Result<Confusion, tch::TchError> {
        let flat = t
            .to_kind(Kind::Int64)
            .to_device(tch::Device::Cpu)
            .reshape([-1]);
        let v: Vec<i64> = Vec::<i64>::try_from(&flat)?;
        if v.len() != k * k {
            return Err(tch::TchError::Shape(format!(
                "confusion matrix has {} entries, expected {k}×{k}",
                v.len()
            )));
        }
        Ok(Confusion {
            k,
            counts: v.into_iter().map(|c| c.max(0) as u64).collect(),
        })
    }

    pub fn classes(&self) -> usize {
        self.k
    }

    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        self.counts[truth * self.k + pred]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Examples of each true class (row sums).
    pub fn support(&self) -> Vec<u64> {
        (0..self.k)
            .map(|t| (0..self.k).map(|p| self.get(t, p)).sum())
            .collect()
    }

    /// Predictions of each class (column sums).
    pub fn predicted(&self) -> Vec<u64> {
        (0..self.k)
            .map(|p| (0..self.k).map(|t| self.get(t, p)).sum())
            .collect()
    }

    fn correct(&self) -> u64 {
        (0..self.k).map(|i| self.get(i, i)).sum()
    }

    /// Share of examples predicted right; 0 for an empty matrix.
    pub fn accuracy(&self) -> f64 {
        let n = self.total();
        if n == 0 {
            0.0
        } else {
            self.correct() as f64 / n as f64
        }
    }

    /// The unweighted mean of the per-class F1 = 2·TP / (2·TP + FP + FN), over the classes that
    /// occur among the true labels or the predictions (scikit-learn's `average="macro"` with its
    /// default `labels`): a class of the label map that the eval set lacks and that is never
    /// predicted does not count; a class that occurs but is never predicted counts as 0.
    pub fn macro_f1(&self) -> f64 {
        let support = self.support();
        let predicted = self.predicted();
        let mut sum = 0.0;
        let mut n = 0usize;
        for c in 0..self.k {
            if support[c] == 0 && predicted[c] == 0 {
                continue;
            }
            let tp = self.get(c, c) as f64;
            let fp = predicted[c] as f64 - tp;
            let fn_ = support[c] as f64 - tp;
            sum += 2.0 * tp / (2.0 * tp + fp + fn_);
            n += 1;
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }

    /// Matthews correlation coefficient, multi-class (Gorodkin 2004; scikit-learn's
    /// `matthews_corrcoef`): with `t_k` the true and `p_k` the predicted count of class k, `c` the
    /// correct predictions and `s` the examples,
    /// `(c·s − Σ p_k·t_k) / sqrt((s² − Σ p_k²)·(s² − Σ t_k²))`; 0 when the denominator is 0
    /// (every example in one class, or every prediction the same). For two classes it is the
    /// usual `(TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))`.
    pub fn mcc(&self) -> f64 {
        let s = self.total() as f64;
        let c = self.correct() as f64;
        let t = self.support();
        let p = self.predicted();
        let pt: f64 = t.iter().zip(&p).map(|(&t, &p)| t as f64 * p as f64).sum();
        let pp: f64 = p.iter().map(|&p| (p as f64) * (p as f64)).sum();
        let tt: f64 = t.iter().map(|&t| (t as f64) * (t as f64)).sum();
        let denom = ((s * s - pp) * (s * s - tt)).sqrt();
        if denom == 0.0 || !denom.is_finite() {
            0.0
        } else {
            (c * s - pt) / denom
        }
    }
}

/// Everything one evaluation measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalMetrics {
    /// Mean cross-entropy.
    pub loss: f64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub mcc: f64,
}

impl EvalMetrics {
    pub fn from_confusion(loss: f64, c: &Confusion) -> EvalMetrics {
        EvalMetrics {
            loss,
            accuracy: c.accuracy(),
            macro_f1: c.macro_f1(),
            mcc: c.mcc(),
        }
    }

    /// The value of `metric`.
    pub fn get(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Accuracy => self.accuracy,
            Metric::MacroF1 => self.macro_f1,
            Metric::Mcc => self.mcc,
            Metric::EvalLoss => self.loss,
            // Not defined for classification; the sweep file's validation never asks for these.
            Metric::Perplexity | Metric::McAccuracy => f64::NAN,
        }
    }
}

/// What one evaluation of a `causal_lm` cell measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmEvalMetrics {
    /// Mean next-token cross-entropy over every response token of the eval set (a token-weighted
    /// mean, as one batch of the whole set would give with transformers' `labels`).
    pub loss: f64,
    /// Response tokens scored.
    pub tokens: u64,
    /// Share of response tokens whose argmax next-token prediction is right.
    pub token_accuracy: f64,
    /// Multiple-choice accuracy on `mc_eval`, when the task has one.
    pub mc_accuracy: Option<f64>,
}

impl LmEvalMetrics {
    /// exp(loss): the perplexity of the response tokens.
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }
}

/// Multiple-choice predictions: `letter_logits` [b, L] holds each question's next-token logits of
/// the letter tokens " A", " B", … (L the most choices of any question); question i has
/// `n_choices[i]` of them, and letters past that never win. Returns the chosen index per row
/// (ties: the first letter).
pub fn mc_predictions(letter_logits: &Tensor, n_choices: &[i64]) -> Tensor {
    let s = letter_logits.size();
    let (b, l) = (s[0], s[1]);
    let dev = letter_logits.device();
    let n = Tensor::from_slice(n_choices).to_device(dev).unsqueeze(1);
    let valid = Tensor::arange(l, (Kind::Int64, dev))
        .unsqueeze(0)
        .lt_tensor(&n);
    let masked = letter_logits
        .to_kind(Kind::Float)
        .masked_fill(&valid.logical_not(), f64::NEG_INFINITY);
    debug_assert_eq!(masked.size()[0], b);
    masked.argmax(-1, false)
}

/// Adds a batch to a flat `[k * k]` Int64 confusion matrix on the device: `labels` and `preds`
/// are 1-D class ids on the same device. Nothing is read back to the host.
pub fn confusion_update(cm: &mut Tensor, labels: &Tensor, preds: &Tensor, k: i64) {
    let idx = labels.to_kind(Kind::Int64) * k + preds.to_kind(Kind::Int64);
    *cm += idx.bincount::<Tensor>(None, k * k);
}
