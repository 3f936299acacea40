//! `etagrid init`: look at a model and a data file and write a commented sweep file for them.

use crate::common::Exit;
use anyhow::{bail, Context, Result};
use etagrid_spec::spec::Metric;
use etagrid_spec::SweepSpec;
use etagrid_train::data::{self, ColumnChoice, Detected};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

pub struct InitArgs {
    pub model: PathBuf,
    pub train: PathBuf,
    pub eval: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub columns: ColumnChoice,
}

/// Rows read to detect the columns and estimate the sequence length.
const SAMPLE_ROWS: usize = 20_000;
/// Rows tokenized to choose `max_seq_len`.
const TOKENIZE_ROWS: usize = 2_000;

pub fn init(args: &InitArgs) -> Result<Exit> {
    for f in ["config.json", "tokenizer.json"] {
        if !args.model.join(f).is_file() {
            bail!(
                "--model {}: no {f} there; point it at a Hugging Face-format model directory \
                 (config.json, model.safetensors, tokenizer.json)",
                args.model.display()
            );
        }
    }
    let name = sweep_name(&args.train);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("sweeps").join(format!("{name}.toml")));
    if out.exists() {
        bail!(
            "{} already exists: etagrid init does not overwrite; pass --out with another file name, or remove it",
            out.display()
        );
    }
    let name = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or(name);

    let table = data::read_table(&args.train, SAMPLE_ROWS)?;
    let det = data::detect_columns(&table, &args.train, &args.columns)?;
    let sample_rows = table.rows.len();

    // Every path in the sweep file is relative to the sweep file's directory.
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("failed to create {}", out_dir.display()))?;
    let rel = |p: &Path| relative_to(&out_dir, p);
    let model_rel = rel(&args.model)?;
    let train_rel = rel(&args.train)?;
    let eval_rel = args.eval.as_deref().map(rel).transpose()?;

    // Sizes: the whole train file (and eval file) is read once more below to validate it.
    let bert = etagrid_train::bert::BertConfig::load(&args.model)?;
    let max_pos = bert.max_position_embeddings.max(8) as usize;
    let max_seq_len = choose_max_seq_len(&args.model, &table, &det, max_pos)?;

    let draft = Draft {
        name: &name,
        det: &det,
        labels: &det.labels,
        model: &model_rel,
        train: &train_rel,
        eval: eval_rel.as_deref(),
        train_examples: 0,
        eval_examples: 0,
        max_seq_len,
        metric: Metric::Accuracy,
        sample_rows,
        truncated: table.truncated,
    };
    // Resolve the draft as `etagrid run` would, then read the data through the same code: what
    // init writes must plan and load.
    let spec = SweepSpec::parse(&out, &draft.render())
        .context("internal error: etagrid init wrote a sweep file it cannot read")?;
    let (train_ex, eval_ex) = data::load_examples(&spec.task)?;
    let labels = data::LabelMap::from_examples(&train_ex);
    labels.ids(&eval_ex, &spec.task.eval_file)?;
    if labels.labels.len() < 2 {
        bail!(
            "{}: column `{}` has a single value {:?}; classification needs at least two labels \
             (pass --label-column)",
            args.train.display(),
            det.label_column,
            labels.labels
        );
    }
    let index = labels.index();
    let mut counts = vec![0u64; labels.labels.len()];
    for e in &train_ex {
        if let Some(&i) = index.get(e.label.as_str()) {
            counts[i as usize] += 1;
        }
    }
    let metric = choose_metric(&counts);
    let text = Draft {
        labels: &labels,
        train_examples: train_ex.len(),
        eval_examples: eval_ex.len(),
        metric,
        ..draft
    }
    .render();
    SweepSpec::parse(&out, &text)
        .context("internal error: etagrid init wrote a sweep file it cannot read")?;

    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .with_context(|| {
            format!(
                "failed to create {} (etagrid init does not overwrite)",
                out.display()
            )
        })?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("failed to write {}", out.display()))?;

    println!(
        "{}",
        summary(
            &det,
            &args.train,
            &labels,
            train_ex.len(),
            eval_ex.len(),
            args.eval.is_none()
        )
    );
    println!("wrote {}", out.display());
    println!(
        "next: etagrid plan {0}   # the cells, nothing runs\n      etagrid run {0}    # train them, then reports/{name}/",
        out.display()
    );
    Ok(Exit::Ok)
}

/// The sweep's name from the train file: `data/trec/train.csv` → `trec`, `reviews.jsonl` →
/// `reviews`.
fn sweep_name(train: &Path) -> String {
    let stem = train
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let generic = ["train", "training", "data", "dataset", "all"];
    let base = if generic.contains(&stem.to_ascii_lowercase().as_str()) {
        std::fs::canonicalize(train)
            .ok()
            .and_then(|p| {
                p.parent()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or(stem)
    } else {
        stem
    };
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.trim_matches(['_', '.']).is_empty() {
        "sweep".into()
    } else {
        clean
    }
}

/// `to` as a path relative to the directory `from` (both made absolute first).
fn relative_to(from: &Path, to: &Path) -> Result<String> {
    let from = std::fs::canonicalize(from)
        .with_context(|| format!("failed to resolve {}", from.display()))?;
    let to = std::fs::canonicalize(to).with_context(|| format!("{}: not found", to.display()))?;
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..a.len() {
        rel.push("..");
    }
    for c in &b[common..] {
        rel.push(c.as_os_str());
    }
    Ok(rel.to_string_lossy().into_owned())
}

/// The 95th percentile of the sample's token counts (special tokens included), rounded up to a
/// multiple of 16, at least 32 and at most the model's position limit.
fn choose_max_seq_len(
    model: &Path,
    table: &data::Table,
    det: &Detected,
    max_pos: usize,
) -> Result<usize> {
    let tok = data::load_tokenizer(model, max_pos)?;
    let col = |name: &str| table.columns.iter().position(|c| c == name);
    let text = col(&det.text_column);
    let pair = det.text_pair_column.as_deref().and_then(col);
    let mut lens: Vec<usize> = Vec::new();
    for row in table.rows.iter().take(TOKENIZE_ROWS) {
        let get = |i: Option<usize>| i.and_then(|i| row.get(i).cloned().flatten());
        let Some(t) = get(text) else { continue };
        let enc = match get(pair) {
            Some(p) => tok.encode((t, p), true),
            None => tok.encode(t, true),
        };
        if let Ok(e) = enc {
            lens.push(e.len());
        }
    }
    lens.sort_unstable();
    let p95 = lens
        .get((lens.len() * 95 / 100).min(lens.len().saturating_sub(1)))
        .copied()
        .unwrap_or(128);
    Ok(p95.div_ceil(16).saturating_mul(16).clamp(32, max_pos))
}

/// Accuracy for roughly balanced labels; macro-F1 when the largest class is more than twice the
/// smallest (accuracy would reward predicting the big classes).
fn choose_metric(counts: &[u64]) -> Metric {
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    if max > 2 * min {
        Metric::MacroF1
    } else {
        Metric::Accuracy
    }
}

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Text safe inside a `#` comment.
fn c(s: &str) -> String {
    s.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

/// `a, b, c, … (n more)` for a comment.
fn list(items: &[String], max: usize) -> String {
    let mut s = items[..items.len().min(max)]
        .iter()
        .map(|l| c(l))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(", … ({} more)", items.len() - max));
    }
    s
}

/// Everything the sweep file is made from.
#[derive(Clone, Copy)]
struct Draft<'a> {
    name: &'a str,
    det: &'a Detected,
    /// The labels of the whole train file once it has been read; before, those of the sample.
    labels: &'a data::LabelMap,
    model: &'a str,
    train: &'a str,
    eval: Option<&'a str>,
    /// 0 while not known yet (first draft).
    train_examples: usize,
    eval_examples: usize,
    max_seq_len: usize,
    metric: Metric,
    sample_rows: usize,
    truncated: bool,
}

const BATCH: usize = 32;

impl Draft<'_> {
    /// About one epoch, at least 100 and at most 1000 steps, in steps of 50.
    fn steps(&self) -> usize {
        let epoch = self.train_examples.div_ceil(BATCH);
        (epoch.div_ceil(50) * 50).clamp(100, 1000)
    }

    fn render(&self) -> String {
        let d = self.det;
        let mean = |name: &str| {
            d.stats
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.mean_len)
                .unwrap_or(0.0)
        };
        let steps = self.steps();
        let epochs = if self.train_examples > 0 {
            format!(
                "{:.2} epochs of {} examples",
                (steps * BATCH) as f64 / self.train_examples as f64,
                self.train_examples
            )
        } else {
            "about one epoch".into()
        };
        let sample = if self.truncated {
            format!("the first {} rows", self.sample_rows)
        } else {
            format!("all {} rows", self.sample_rows)
        };
        let mut t = String::new();
        // `key = value` with its comment from column 41, continued on the next lines.
        let mut entry = |kv: String, comments: &[String]| {
            let mut first = true;
            for com in comments {
                let left = if first { kv.as_str() } else { "" };
                t.push_str(&format!("{left:<39} # {com}\n"));
                first = false;
            }
            if first {
                t.push_str(&kv);
                t.push('\n');
            }
        };
        entry(
            format!(
                "# {}: LoRA+ learning rates (η_A, η_B) for {} on {}.",
                c(self.name),
                c(self.model),
                c(self.train)
            ),
            &[],
        );
        entry(
            format!(
                "# Written by `etagrid init` from {sample} of the train file: check [task], then"
            ),
            &[],
        );
        entry(
            "#   etagrid plan <this file>   # the cells, nothing runs".into(),
            &[],
        );
        entry(
            format!(
                "#   etagrid run <this file>    # train every cell, then reports/{}/",
                c(self.name)
            ),
            &[],
        );
        entry(String::new(), &[]);
        entry(format!("name = {}", q(self.name)), &[]);
        entry(String::new(), &[]);
        entry("[model]".into(), &[]);
        entry(
            format!("path = {}", q(self.model)),
            &[
                "Hugging Face directory: config.json, model.safetensors".into(),
                "(or a sharded index), tokenizer.json. Paths are relative".into(),
                "to this file.".into(),
            ],
        );
        entry(String::new(), &[]);
        entry("[task]".into(), &[]);
        entry(
            format!("train = {}", q(self.train)),
            &[".csv, .tsv (header row) or .jsonl".into()],
        );
        match self.eval {
            Some(e) => entry(
                format!("eval = {}", q(e)),
                &["the examples every cell is scored on".into()],
            ),
            None => entry(
                "split = { eval_fraction = 0.2, seed = 0 }".into(),
                &[
                    "no eval file: 20% of each label of `train` held out".into(),
                    "(seeded: the same split for every cell); or eval = \"file\"".into(),
                ],
            ),
        }
        entry(
            format!("text_column = {}", q(&d.text_column)),
            &[format!(
                "detected: the longest free text (mean {:.0} characters)",
                mean(&d.text_column)
            )],
        );
        match &d.text_pair_column {
            Some(p) => entry(
                format!("text_pair_column = {}", q(p)),
                &[
                    format!("detected: a second text (mean {:.0} characters),", mean(p)),
                    "tokenized as [CLS] text [SEP] pair [SEP]; delete this".into(),
                    "line to use the text alone".into(),
                ],
            ),
            None => entry(
                "# text_pair_column = \"…\"".into(),
                &["for sentence-pair tasks (premise + hypothesis, …)".into()],
            ),
        }
        let mut label_comments = vec![format!(
            "detected: {} labels: {}",
            self.labels.labels.len(),
            list(&self.labels.labels, 6)
        )];
        if !d.other_label_columns.is_empty() {
            label_comments.push(format!(
                "other label-like columns: {}",
                d.other_label_columns
                    .iter()
                    .map(|(n, k)| format!("{} ({k} values)", c(n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        entry(
            format!("label_column = {}", q(&d.label_column)),
            &label_comments,
        );
        if self.eval_examples > 1000 {
            entry(
                "max_eval_examples = 1000".into(),
                &[
                    format!(
                        "of {} eval examples: a fixed random subset,",
                        self.eval_examples
                    ),
                    "the same for every cell (remove the line to use all)".into(),
                ],
            );
        } else {
            entry(
                "# max_eval_examples = 1000".into(),
                &["evaluate on a fixed random subset (same for every cell)".into()],
            );
        }
        entry(
            format!("metric = {}", q(self.metric.name())),
            &[
                match self.metric {
                    Metric::MacroF1 => {
                        "the labels are unbalanced: macro-F1 counts every class alike".into()
                    }
                    _ => "the labels are about balanced".into(),
                },
                "\"accuracy\", \"macro_f1\", \"mcc\" (higher is better)".into(),
                "or \"eval_loss\" (lower is better)".into(),
            ],
        );
        entry(String::new(), &[]);
        entry("[lora]".into(), &[]);
        entry("rank = 8".into(), &["r".into()]);
        entry("alpha = 8".into(), &["scaling α/r = 1".into()]);
        entry("dropout = 0.0".into(), &[]);
        entry(
            "target_modules = [\"query\", \"value\"]".into(),
            &["module names, matched like PEFT's".into()],
        );
        entry(
            "init = \"lora\"".into(),
            &["A random, B zero; \"loraplus\": B random, A zero".into()],
        );
        entry(String::new(), &[]);
        entry("[train]".into(), &[]);
        entry(
            format!("steps = {steps}"),
            &[format!("{epochs}; or `epochs = 1` instead")],
        );
        entry(format!("batch_size = {BATCH}"), &[]);
        entry(
            format!("max_seq_len = {}", self.max_seq_len),
            &[
                "tokens, special ones included: 95% of the sampled".into(),
                "examples fit; longer ones are truncated".into(),
            ],
        );
        entry("weight_decay = 0.0".into(), &[]);
        entry(
            format!("warmup_steps = {}", steps / 10),
            &["10% of the steps".into()],
        );
        entry(
            "schedule = \"linear\"".into(),
            &["\"constant\", \"linear\" or \"cosine\"".into()],
        );
        entry(
            "log_every = 10".into(),
            &["mean train loss every 10 steps".into()],
        );
        entry(
            format!("# eval_every = {}", (steps / 4).div_ceil(10) * 10),
            &["also evaluate during training (default: at the end)".into()],
        );
        entry(String::new(), &[]);
        entry("[grid]".into(), &[]);
        entry(
            "lr_a = { log2 = [-16, -8], step = 2 }".into(),
            &["η_A = 2^-16, 2^-14, …, 2^-8 (1.5e-5 … 3.9e-3)".into()],
        );
        entry(
            "ratio = [1, 2, 4, 8, 16, 32]".into(),
            &[
                "λ = η_B/η_A; λ = 1 is plain LoRA (the diagonal), LoRA+".into(),
                "suggests about 16; or `lr_b = [...]` for η_B values".into(),
            ],
        );
        entry(
            "seeds = [0]".into(),
            &["each (η_A, η_B) once per seed: 5 × 6 = 30 cells".into()],
        );
        entry(String::new(), &[]);
        entry("[resources]".into(), &[]);
        entry(
            "devices = \"auto\"".into(),
            &["every visible GPU, else the CPU; or \"cpu\" or [0, 1]".into()],
        );
        entry(
            "# cells_per_device = 1".into(),
            &["workers per device; default: 1 on the CPU, on a GPU as many as fit the first cell's memory peak (at most 8)".into()],
        );
        t
    }
}

fn summary(
    det: &Detected,
    train: &Path,
    labels: &data::LabelMap,
    train_examples: usize,
    eval_examples: usize,
    split: bool,
) -> String {
    let mut s = format!(
        "{}: {} columns ({})\n  text:       {}\n  text pair:  {}\n  label:      {} — {} labels: {}",
        train.display(),
        det.stats.len(),
        det.stats
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        det.text_column,
        det.text_pair_column.as_deref().unwrap_or("(none)"),
        det.label_column,
        labels.labels.len(),
        list(&labels.labels, 12),
    );
    if !det.other_label_columns.is_empty() {
        s.push_str(&format!(
            "\n  other label-like columns: {} (use --label-column to pick one)",
            det.other_label_columns
                .iter()
                .map(|(n, k)| format!("{n} ({k} values)"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s.push_str(&format!(
        "\n  examples:   {train_examples} train, {eval_examples} eval{}",
        if split {
            " (20% of each label held out of the train file)"
        } else {
            ""
        }
    ));
    s
}
