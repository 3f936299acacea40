//! `etagrid init`: look at a model and a data file and write a commented sweep file for them.

use crate::common::Exit;
use anyhow::{bail, Context, Result};
use etagrid_data::{ColumnChoice, Detected, Family, LabelMap, ModelConfig, Table};
use etagrid_spec::spec::Metric;
use etagrid_spec::SweepSpec;
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

    let table = etagrid_data::read_table(&args.train, SAMPLE_ROWS)?;
    let det = etagrid_data::detect_columns(&table, &args.train, &args.columns)?;
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
    let model = ModelConfig::read(&args.model)?;
    let max_seq_len = choose_max_seq_len(&args.model, &table, &det, model.max_tokens)?;

    let draft = Draft {
        name: &name,
        family: model.family,
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
    let (train_ex, eval_ex) = etagrid_data::load_examples(&spec.task)?;
    let labels = LabelMap::from_examples(&train_ex);
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
/// multiple of 16, at least 32 and at most the model's limit ([`ModelConfig::max_tokens`]: RoBERTa's
/// position table holds two more entries than it allows tokens).
fn choose_max_seq_len(
    model: &Path,
    table: &Table,
    det: &Detected,
    max_tokens: usize,
) -> Result<usize> {
    let tok = etagrid_data::load_tokenizer(model, max_tokens)?;
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
    Ok(p95.div_ceil(16).saturating_mul(16).max(32).min(max_tokens))
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

/// How the tokenizer joins a text and its pair, for a comment.
fn pair_template(family: Family) -> &'static str {
    match family {
        Family::Bert => "[CLS] text [SEP] pair [SEP]",
        Family::Roberta => "<s> text </s></s> pair </s>",
        Family::Gpt2 | Family::Llama => "one sequence, text then pair",
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
    family: Family,
    det: &'a Detected,
    /// The labels of the whole train file once it has been read; before, those of the sample.
    labels: &'a LabelMap,
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
        let mut t = Toml::default();
        self.header(&mut t);
        self.task(&mut t);
        self.lora_and_train(&mut t);
        grid_and_resources(&mut t);
        t.0
    }

    fn header(&self, t: &mut Toml) {
        let sample = if self.truncated {
            format!("the first {} rows", self.sample_rows)
        } else {
            format!("all {} rows", self.sample_rows)
        };
        t.entry(
            format!(
                "# {}: LoRA+ learning rates (η_A, η_B) for {} on {}.",
                c(self.name),
                c(self.model),
                c(self.train)
            ),
            &[],
        );
        t.entry(
            format!(
                "# Written by `etagrid init` from {sample} of the train file: check [task], then"
            ),
            &[],
        );
        t.entry(
            "#   etagrid plan <this file>   # the cells, nothing runs".into(),
            &[],
        );
        t.entry(
            format!(
                "#   etagrid run <this file>    # train every cell, then reports/{}/",
                c(self.name)
            ),
            &[],
        );
        t.entry(String::new(), &[]);
        t.entry(format!("name = {}", q(self.name)), &[]);
        t.entry(String::new(), &[]);
    }

    /// `[model]` and `[task]`.
    fn task(&self, t: &mut Toml) {
        let d = self.det;
        let mean = |name: &str| {
            d.stats
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.mean_len)
                .unwrap_or(0.0)
        };
        t.entry("[model]".into(), &[]);
        t.entry(
            format!("path = {}", q(self.model)),
            &[
                "Hugging Face directory: config.json, model.safetensors".into(),
                "(or a sharded index), tokenizer.json. Paths are relative".into(),
                "to this file.".into(),
            ],
        );
        t.entry(String::new(), &[]);
        t.entry("[task]".into(), &[]);
        t.entry(
            format!("train = {}", q(self.train)),
            &[".csv, .tsv (header row) or .jsonl".into()],
        );
        match self.eval {
            Some(e) => t.entry(
                format!("eval = {}", q(e)),
                &["the examples every cell is scored on".into()],
            ),
            None => t.entry(
                "split = { eval_fraction = 0.2, seed = 0 }".into(),
                &[
                    "no eval file: 20% of each label of `train` held out".into(),
                    "(seeded: the same split for every cell); or eval = \"file\"".into(),
                ],
            ),
        }
        t.entry(
            format!("text_column = {}", q(&d.text_column)),
            &[format!(
                "detected: the longest free text (mean {:.0} characters)",
                mean(&d.text_column)
            )],
        );
        match &d.text_pair_column {
            Some(p) => t.entry(
                format!("text_pair_column = {}", q(p)),
                &[
                    format!("detected: a second text (mean {:.0} characters),", mean(p)),
                    format!("tokenized as {}; delete this", pair_template(self.family)),
                    "line to use the text alone".into(),
                ],
            ),
            None => t.entry(
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
        t.entry(
            format!("label_column = {}", q(&d.label_column)),
            &label_comments,
        );
        if self.eval_examples > 1000 {
            t.entry(
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
            t.entry(
                "# max_eval_examples = 1000".into(),
                &["evaluate on a fixed random subset (same for every cell)".into()],
            );
        }
        t.entry(
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
        t.entry(String::new(), &[]);
    }

    /// `[lora]` and `[train]`.
    fn lora_and_train(&self, t: &mut Toml) {
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
        t.entry("[lora]".into(), &[]);
        t.entry("rank = 8".into(), &["r".into()]);
        t.entry("alpha = 8".into(), &["scaling α/r = 1".into()]);
        t.entry("dropout = 0.0".into(), &[]);
        let targets: Vec<String> = self
            .family
            .default_lora_targets()
            .iter()
            .map(|m| q(m))
            .collect();
        t.entry(
            format!("target_modules = [{}]", targets.join(", ")),
            &["module names, matched like PEFT's".into()],
        );
        t.entry(
            "init = \"lora\"".into(),
            &["A random, B zero; \"loraplus\": B random, A zero".into()],
        );
        t.entry(String::new(), &[]);
        t.entry("[train]".into(), &[]);
        t.entry(
            format!("steps = {steps}"),
            &[format!("{epochs}; or `epochs = 1` instead")],
        );
        t.entry(format!("batch_size = {BATCH}"), &[]);
        t.entry(
            format!("max_seq_len = {}", self.max_seq_len),
            &[
                "tokens, special ones included: 95% of the sampled".into(),
                "examples fit; longer ones are truncated".into(),
            ],
        );
        t.entry("weight_decay = 0.0".into(), &[]);
        t.entry(
            format!("warmup_steps = {}", steps / 10),
            &["10% of the steps".into()],
        );
        t.entry(
            "schedule = \"linear\"".into(),
            &["\"constant\", \"linear\" or \"cosine\"".into()],
        );
        t.entry(
            "log_every = 10".into(),
            &["mean train loss every 10 steps".into()],
        );
        t.entry(
            format!("# eval_every = {}", (steps / 4).div_ceil(10) * 10),
            &["also evaluate during training (default: at the end)".into()],
        );
        t.entry(String::new(), &[]);
    }
}

/// `[grid]` and `[resources]`: the same for every task.
fn grid_and_resources(t: &mut Toml) {
    t.entry("[grid]".into(), &[]);
    t.entry(
        "lr_a = { log2 = [-16, -8], step = 2 }".into(),
        &["η_A = 2^-16, 2^-14, …, 2^-8 (1.5e-5 … 3.9e-3)".into()],
    );
    t.entry(
        "ratio = [1, 2, 4, 8, 16, 32]".into(),
        &[
            "λ = η_B/η_A; λ = 1 is plain LoRA (the diagonal), LoRA+".into(),
            "suggests about 16; or `lr_b = [...]` for η_B values".into(),
        ],
    );
    t.entry(
        "seeds = [0]".into(),
        &["each (η_A, η_B) once per seed: 5 × 6 = 30 cells".into()],
    );
    t.entry(String::new(), &[]);
    t.entry("[resources]".into(), &[]);
    t.entry(
        "devices = \"auto\"".into(),
        &["every visible GPU, else the CPU; or \"cpu\" or [0, 1]".into()],
    );
    t.entry(
        "# cells_per_device = 1".into(),
        &["workers per device; default: 1 on the CPU, on a GPU as many as fit the first cell's memory peak (at most 8)".into()],
    );
}

/// The sweep file being written: `key = value` lines with their comments from column 41.
#[derive(Default)]
struct Toml(String);

impl Toml {
    /// `kv` with its comment, continued on the next lines.
    fn entry(&mut self, kv: String, comments: &[String]) {
        let mut first = true;
        for com in comments {
            let left = if first { kv.as_str() } else { "" };
            self.0.push_str(&format!("{left:<39} # {com}\n"));
            first = false;
        }
        if first {
            self.0.push_str(&kv);
            self.0.push('\n');
        }
    }
}

fn summary(
    det: &Detected,
    train: &Path,
    labels: &LabelMap,
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
