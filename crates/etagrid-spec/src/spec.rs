//! The resolved sweep: nothing optional, every path resolved, every value checked.

use crate::error::SpecError;
use crate::file::{GridSection, LoraSection, SweepFile, TaskSection, TrainSection};
use crate::protocol::Measure;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub name: String,
    /// The sweep file this came from.
    pub source: PathBuf,
    /// The sweep file's text (stored with the sweep so reports can show it).
    pub source_text: String,
    pub model: ModelSpec,
    pub task: TaskSpec,
    pub lora: LoraSpec,
    pub train: TrainSpec,
    /// (η_A, η_B) points in grid order: η_A outer, η_B (or λ) inner.
    pub points: Vec<(f64, f64)>,
    pub seeds: Vec<u64>,
    pub devices: DeviceChoice,
    pub cells_per_device: Option<usize>,
    /// How many cells one worker trains together on one frozen base (`[resources]
    /// cells_per_worker`; default `auto`).
    pub cells_per_worker: PackSize,
    pub threads_per_cell: Option<usize>,
    /// Starts a cell may use (crashes and timeouts included) before it stays `failed`.
    pub max_attempts: u32,
    pub cell_timeout: Option<std::time::Duration>,
    /// The digest of the inputs' content (data files, model config, weights and tokenizer) from
    /// [`SweepSpec::with_inputs`], or the one stored with the sweep; part of every cell id when
    /// set, so a changed input never matches a finished cell. `None` only for a spec that was
    /// parsed without looking at its files.
    pub inputs: Option<String>,
    /// `[search]`: how the grid is explored (every cell in full, or successive halving). Not
    /// part of the cells' ids: a halving sweep's cells are the grid's.
    pub search: etagrid_search::SearchSpec,
}

/// How many grid cells one worker trains together (a *pack*) on one copy of the frozen base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PackSize {
    /// The scheduler decides: on a GPU, the pending cells that can share a base split over the
    /// GPUs, one pack per GPU (at most [`PackSize::AUTO_MAX`] cells, and at most what a memory
    /// probe of two cells says fits; more workers open when the first one's measured memory
    /// allows, and a pack that crashes is retried in halves); on the CPU one cell per worker
    /// (packing does not pay there: see README "Packed cells").
    #[default]
    Auto,
    /// At most this many cells a worker (1: no packing).
    Fixed(usize),
}

impl PackSize {
    /// The largest pack `auto` makes.
    pub const AUTO_MAX: usize = 64;

    /// `"auto"` or a whole number ≥ 1 (a TOML value or the CLI's text).
    pub fn parse_value(v: &toml::Value) -> Option<PackSize> {
        match v {
            toml::Value::String(s) => PackSize::parse(s),
            toml::Value::Integer(n) if *n >= 1 => Some(PackSize::Fixed(*n as usize)),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<PackSize> {
        match s.trim() {
            "auto" => Some(PackSize::Auto),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .map(PackSize::Fixed),
        }
    }
}

impl std::fmt::Display for PackSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackSize::Auto => f.write_str("auto"),
            PackSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The path as written in the sweep file (part of the cell hash).
    pub path: String,
    /// Resolved against the sweep file's directory.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The train file as written in the sweep file.
    pub train: String,
    /// The eval file as written; with [`TaskSpec::split`], the train file (the eval examples are
    /// held out of it).
    pub eval: String,
    pub train_file: PathBuf,
    pub eval_file: PathBuf,
    /// Hold out part of `train` for evaluation instead of reading an eval file. Left out of the
    /// serialized form when absent, so cells of sweeps without a split keep their ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSpec>,
    pub text_column: String,
    pub text_pair_column: Option<String>,
    pub label_column: String,
    pub max_eval_examples: Option<usize>,
    pub metric: Metric,
    /// `[task] kind = "causal_lm"`: instruction tuning of a decoder on prompt/response pairs
    /// instead of classification (`None`). Left out of the serialized form when absent, so
    /// classification cells keep their ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm: Option<LmTaskSpec>,
}

/// The settings of a `causal_lm` task: the model reads `prompt_template` with the prompt filled
/// in, then the response and the end-of-sequence token; the loss is on the response (and EOS)
/// tokens only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmTaskSpec {
    pub prompt_column: String,
    pub response_column: String,
    /// `{prompt}` stands for the prompt; `None`: the prompt as it is.
    pub prompt_template: Option<String>,
    /// A multiple-choice eval file as written in the sweep file (question, choices, answer).
    pub mc_eval: Option<String>,
    /// `mc_eval` resolved against the sweep file's directory (not part of the cell hash).
    pub mc_eval_file: Option<PathBuf>,
}

impl LmTaskSpec {
    /// The prompt as the model sees it.
    pub fn render(&self, prompt: &str) -> String {
        match &self.prompt_template {
            Some(t) => t.replace("{prompt}", prompt),
            None => prompt.to_owned(),
        }
    }
}

/// A seeded split of the train file, stratified by label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitSpec {
    /// Share of each label's examples held out for evaluation, in (0, 1).
    pub eval_fraction: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    /// The unweighted mean of the per-class F1 scores (over the classes that occur in the eval
    /// labels or the predictions, as scikit-learn's `f1_score(average="macro")`).
    MacroF1,
    /// Matthews correlation coefficient; the multi-class form (Gorodkin 2004, scikit-learn).
    Mcc,
    EvalLoss,
    /// exp(eval loss per response token), `causal_lm` only.
    Perplexity,
    /// Share of multiple-choice questions whose answer letter has the highest next-token logit
    /// among the choice letters, `causal_lm` with `mc_eval` only.
    McAccuracy,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::Accuracy,
        Metric::MacroF1,
        Metric::Mcc,
        Metric::EvalLoss,
        Metric::Perplexity,
        Metric::McAccuracy,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::MacroF1 => "macro_f1",
            Metric::Mcc => "mcc",
            Metric::EvalLoss => "eval_loss",
            Metric::Perplexity => "perplexity",
            Metric::McAccuracy => "mc_accuracy",
        }
    }
    /// The store's curve of this metric's value at each evaluation (`eval_loss`,
    /// `eval_accuracy`, …: each metric but the loss is a [`Measure`] of the protocol).
    pub fn curve_name(self) -> &'static str {
        let measure = match self {
            Metric::EvalLoss => return "eval_loss",
            Metric::Accuracy => Measure::Accuracy,
            Metric::MacroF1 => Measure::MacroF1,
            Metric::Mcc => Measure::Mcc,
            Metric::Perplexity => Measure::Perplexity,
            Metric::McAccuracy => Measure::McAccuracy,
        };
        measure.curve_name()
    }
    /// The direction the report and `export --cell best` rank cells by.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::EvalLoss | Metric::Perplexity)
    }
    /// The metric called `name` in a sweep file.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: TargetModules,
    pub init: InitScheme,
    /// rsLoRA (Kalajdzievski 2023): scaling α/√r instead of α/r. Left out of the hashed form
    /// when false, so existing cells keep their ids.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_rslora: bool,
    /// The fixed learning rate of LoRA on embedding layers (the LoRA+ "embedding" group, PEFT's
    /// `loraplus_lr_embedding`). Left out of the hashed form at its default.
    #[serde(
        default = "default_embedding_lr",
        skip_serializing_if = "is_default_embedding_lr"
    )]
    pub embedding_lr: f64,
}

/// PEFT's `loraplus_lr_embedding` default.
pub const DEFAULT_EMBEDDING_LR: f64 = 1e-6;

fn default_embedding_lr() -> f64 {
    DEFAULT_EMBEDDING_LR
}

fn is_default_embedding_lr(v: &f64) -> bool {
    *v == DEFAULT_EMBEDDING_LR
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl LoraSpec {
    /// A spec with the given targets and the defaults of a sweep file's `[lora]` for the rest
    /// (rank 8, α = rank, no dropout, `lora` init, no rsLoRA, embedding lr 1e-6).
    pub fn new(rank: usize, alpha: f64, target_modules: TargetModules) -> LoraSpec {
        LoraSpec {
            rank,
            alpha,
            dropout: 0.0,
            target_modules,
            init: InitScheme::Lora,
            use_rslora: false,
            embedding_lr: DEFAULT_EMBEDDING_LR,
        }
    }

    /// The factor in ΔW = scaling·B·A: α/r, or α/√r with rsLoRA (as PEFT's `use_rslora`).
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// Which modules get LoRA, as PEFT's `target_modules`: a list of names (a module matches when
/// its full name equals an entry or ends with `.` + entry), or one regular expression that
/// must match the whole module name (`re.fullmatch`). Serialized as PEFT writes it: a list or a
/// string (so list-form cells hash as before).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl<'de> Deserialize<'de> for TargetModules {
    /// A string (regex) or a list of strings, with an error that says so for anything else.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TargetModules;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a list of module names (e.g. [\"query\", \"value\"]) or one regex string \
                     matched against whole module names",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TargetModules, E> {
                Ok(TargetModules::Regex(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TargetModules, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(TargetModules::List(names))
            }
        }
        d.deserialize_any(V)
    }
}

impl TargetModules {
    /// A list of names.
    pub fn list<S: AsRef<str>>(names: &[S]) -> TargetModules {
        TargetModules::List(names.iter().map(|n| n.as_ref().to_owned()).collect())
    }

    /// No targets at all (the base model alone).
    pub fn none() -> TargetModules {
        TargetModules::List(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, TargetModules::List(l) if l.is_empty())
    }

    /// The regex of the string form, anchored at both ends (Python's `re.fullmatch`).
    /// Syntax is the `regex` crate's: Python's usual forms (classes, groups, `|`, `?`, `*`, `+`,
    /// `{m,n}`, `(?:…)`, `\d`, `\w`) are the same; look-around and back-references are not
    /// supported.
    pub fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
        regex::Regex::new(&format!("^(?:{pattern})$"))
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetModules::List(l) => write!(f, "{l:?}"),
            TargetModules::Regex(r) => write!(f, "{r:?} (regex)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// A kaiming-uniform, B zero (the LoRA paper, PEFT's default).
    Lora,
    /// B random, A zero (what the LoRA+ authors found better with LoRA+).
    Loraplus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    pub length: TrainLength,
    pub batch_size: usize,
    pub max_seq_len: usize,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub schedule: Schedule,
    pub eval_every: u64,
    pub log_every: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainLength {
    Steps(u64),
    Epochs(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl Schedule {
    /// The learning-rate multiplier before optimizer step `step` (0-based), as transformers'
    /// `get_{constant,linear,cosine}_schedule_with_warmup` compute it.
    pub fn multiplier(self, step: u64, warmup: u64, total: u64) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let decay_steps = total.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / decay_steps;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Gpus(Vec<u32>),
}

impl SweepSpec {
    pub fn load(path: &Path) -> Result<SweepSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        SweepSpec::parse(path, &text)
    }

    /// Parses and validates `text`, which was read from `path` (used for messages and to resolve
    /// relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<SweepSpec, SpecError> {
        let file: SweepFile = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Resolver { path, text }.resolve(file)
    }
}

struct Resolver<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Resolver<'_> {
    fn err(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            path: self.path.to_owned(),
            line: self.text[..span.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// An error about a whole section, pointing at its `[header]` line.
    fn section_err(&self, section: &str, field: &str, message: impl Into<String>) -> SpecError {
        let header = format!("[{section}]");
        let start = self.text.find(&header).unwrap_or(0);
        self.err(start..start, field, message)
    }

    fn positive<T: PartialOrd + Default + Copy>(
        &self,
        v: &Option<Spanned<T>>,
        default: T,
        field: &str,
    ) -> Result<T, SpecError> {
        match v {
            None => Ok(default),
            Some(s) if *s.get_ref() > T::default() => Ok(*s.get_ref()),
            Some(s) => Err(self.err(s.span(), field, "must be greater than 0")),
        }
    }

    fn resolve(&self, f: SweepFile) -> Result<SweepSpec, SpecError> {
        let base = self.path.parent().unwrap_or(Path::new("")).to_owned();
        let name = self.name(f.name)?;
        let model = ModelSpec {
            dir: base.join(f.model.path.get_ref()),
            path: f.model.path.into_inner(),
        };
        let task = self.task(f.task, &base)?;
        let lora = self.lora(f.lora)?;
        let train = self.train(f.train)?;
        let (points, seeds) = self.grid(f.grid)?;
        let r = f.resources;
        let devices = match &r.devices {
            None => DeviceChoice::Auto,
            Some(d) => self.devices(d)?,
        };
        let cells_per_device = match r.cells_per_device {
            Some(c) if *c.get_ref() == 0 => {
                return Err(self.err(c.span(), "resources.cells_per_device", "must be at least 1"))
            }
            c => c.map(Spanned::into_inner),
        };

        let cells_per_worker = match &r.cells_per_worker {
            None => PackSize::Auto,
            Some(v) => PackSize::parse_value(v.get_ref()).ok_or_else(|| {
                self.err(
                    v.span(),
                    "resources.cells_per_worker",
                    "must be \"auto\" or a whole number of cells, at least 1",
                )
            })?,
        };

        Ok(SweepSpec {
            name,
            source: self.path.to_owned(),
            source_text: self.text.to_owned(),
            model,
            task,
            lora,
            train,
            points,
            seeds,
            devices,
            cells_per_device,
            cells_per_worker,
            threads_per_cell: match r.threads_per_cell {
                Some(t) if *t.get_ref() == 0 => {
                    return Err(self.err(
                        t.span(),
                        "resources.threads_per_cell",
                        "must be at least 1 (leave it out for the machine's cores divided among \
                         the CPU slots)",
                    ))
                }
                t => t.map(Spanned::into_inner),
            },
            max_attempts: match r.max_attempts {
                None => 3,
                Some(m) if *m.get_ref() == 0 => {
                    return Err(self.err(m.span(), "resources.max_attempts", "must be at least 1"))
                }
                Some(m) => *m.get_ref(),
            },
            cell_timeout: match r.cell_timeout {
                None => None,
                Some(t) => Some(humantime::parse_duration(t.get_ref()).map_err(|e| {
                    self.err(
                        t.span(),
                        "resources.cell_timeout",
                        format!("{e}: use a duration like \"45m\" or \"2h 30m\""),
                    )
                })?),
            },
            inputs: None,
            search: match f.search {
                None => etagrid_search::SearchSpec::default(),
                Some(s) => {
                    let span = s.span();
                    let s = s.into_inner();
                    s.validate().map_err(|m| self.err(span, "search", m))?;
                    s
                }
            },
        })
    }

    /// The sweep's name: `name`, or the file's stem.
    fn name(&self, name: Option<String>) -> Result<String, SpecError> {
        let name = match name {
            Some(n) => n,
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sweep".into()),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(self.err(
                0..0,
                "name",
                format!(
                    "{name:?} is not a usable sweep name: use letters, digits, '-', '_' or '.'"
                ),
            ));
        }
        Ok(name)
    }

    fn task(&self, t: TaskSection, base: &Path) -> Result<TaskSpec, SpecError> {
        let causal_lm = match t.kind.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("classification") => false,
            Some("causal_lm") => true,
            Some(other) => {
                return Err(self.err(
                    t.kind.as_ref().map(|k| k.span()).unwrap_or(0..0),
                    "task.kind",
                    format!("unknown task kind {other:?}: use \"classification\" or \"causal_lm\""),
                ))
            }
        };
        let metric = self.metric(&t, causal_lm)?;
        if !causal_lm {
            for (key, v) in [
                ("prompt_column", &t.prompt_column),
                ("response_column", &t.response_column),
                ("prompt_template", &t.prompt_template),
                ("mc_eval", &t.mc_eval),
            ] {
                if let Some(v) = v {
                    return Err(self.err(
                        v.span(),
                        &format!("task.{key}"),
                        "is a causal_lm setting: add `kind = \"causal_lm\"` to [task] or remove it",
                    ));
                }
            }
        }
        let lm = if causal_lm {
            Some(self.lm_task(&t, base)?)
        } else {
            None
        };
        let (eval, split) = self.eval_split(&t)?;
        Ok(TaskSpec {
            train_file: base.join(t.train.get_ref()),
            eval_file: base.join(&eval),
            train: t.train.into_inner(),
            eval,
            split,
            text_column: t.text_column.unwrap_or_else(|| "text".into()),
            text_pair_column: t.text_pair_column,
            label_column: t.label_column.unwrap_or_else(|| "label".into()),
            max_eval_examples: match t.max_eval_examples {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(self.err(n.span(), "task.max_eval_examples", "must be at least 1"))
                }
                n => n.map(Spanned::into_inner),
            },
            metric,
            lm,
        })
    }

    /// The causal-LM settings of `[task]`.
    fn lm_task(&self, t: &TaskSection, base: &Path) -> Result<LmTaskSpec, SpecError> {
        if let Some(tpl) = &t.prompt_template {
            if !tpl.get_ref().contains("{prompt}") {
                return Err(self.err(
                    tpl.span(),
                    "task.prompt_template",
                    "has no `{prompt}`: write where the prompt goes, e.g. \"<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n\"",
                ));
            }
        }
        Ok(LmTaskSpec {
            prompt_column: t
                .prompt_column
                .as_ref()
                .map(|v| v.get_ref().clone())
                .unwrap_or_else(|| "prompt".into()),
            response_column: t
                .response_column
                .as_ref()
                .map(|v| v.get_ref().clone())
                .unwrap_or_else(|| "response".into()),
            prompt_template: t.prompt_template.as_ref().map(|v| v.get_ref().clone()),
            mc_eval_file: t.mc_eval.as_ref().map(|m| base.join(m.get_ref())),
            mc_eval: t.mc_eval.as_ref().map(|m| m.get_ref().clone()),
        })
    }

    /// `[task] metric`, checked against the task's kind.
    fn metric(&self, t: &TaskSection, causal_lm: bool) -> Result<Metric, SpecError> {
        Ok(match &t.metric {
            None if causal_lm => Metric::EvalLoss,
            None => Metric::Accuracy,
            Some(m) => {
                let metric = Metric::from_name(m.get_ref()).ok_or_else(|| {
                    self.err(
                        m.span(),
                        "task.metric",
                        format!(
                            "unknown metric {:?}: use \"accuracy\", \"macro_f1\", \"mcc\" or \"eval_loss\" \
                             (classification), \"eval_loss\", \"perplexity\" or \"mc_accuracy\" (causal_lm)",
                            m.get_ref()
                        ),
                    )
                })?;
                let fits = match metric {
                    Metric::EvalLoss => true,
                    Metric::Perplexity => causal_lm,
                    Metric::McAccuracy => causal_lm && t.mc_eval.is_some(),
                    _ => !causal_lm,
                };
                if !fits {
                    return Err(self.err(
                        m.span(),
                        "task.metric",
                        match metric {
                            Metric::McAccuracy if causal_lm => "\"mc_accuracy\" needs a multiple-choice eval file: set `mc_eval` in [task]".to_owned(),
                            _ if causal_lm => format!("{:?} is a classification metric: a causal_lm task has \"eval_loss\", \"perplexity\" and (with `mc_eval`) \"mc_accuracy\"", m.get_ref()),
                            _ => format!("{:?} needs `kind = \"causal_lm\"` in [task]", m.get_ref()),
                        },
                    ));
                }
                metric
            }
        })
    }

    /// The eval file's name and, for `split`, how to hold out part of `train`.
    fn eval_split(&self, t: &TaskSection) -> Result<(String, Option<SplitSpec>), SpecError> {
        Ok(match (&t.eval, &t.split) {
            (Some(e), None) => (e.get_ref().clone(), None),
            (None, Some(s)) => {
                let f = s.get_ref().eval_fraction;
                if !(f > 0.0 && f < 1.0) {
                    return Err(self.err(
                        s.span(),
                        "task.split.eval_fraction",
                        format!("is {f}: give the share of examples to hold out, between 0 and 1 (e.g. 0.2)"),
                    ));
                }
                let split = SplitSpec {
                    eval_fraction: f,
                    seed: s.get_ref().seed.unwrap_or(0),
                };
                (t.train.get_ref().clone(), Some(split))
            }
            (Some(_), Some(s)) => {
                return Err(self.err(
                    s.span(),
                    "task.split",
                    "give either `eval` (a file) or `split` (hold out part of `train`), not both",
                ))
            }
            (None, None) => {
                return Err(self.section_err(
                    "task",
                    "task.eval",
                    "missing: give `eval` (a file) or `split = { eval_fraction = 0.2, seed = 0 }` \
                     (hold out part of `train`, stratified by label)",
                ))
            }
        })
    }

    fn lora(&self, l: LoraSection) -> Result<LoraSpec, SpecError> {
        let rank = self.positive(&l.rank, 8, "lora.rank")?;
        let dropout = match l.dropout {
            None => 0.0,
            Some(d) if (0.0..1.0).contains(d.get_ref()) => *d.get_ref(),
            Some(d) => return Err(self.err(d.span(), "lora.dropout", "must be in [0, 1)")),
        };
        let target_modules = self.target_modules(l.target_modules)?;
        let embedding_lr = match l.embedding_lr {
            None => DEFAULT_EMBEDDING_LR,
            Some(e) if *e.get_ref() >= 0.0 && e.get_ref().is_finite() => *e.get_ref(),
            Some(e) => {
                return Err(self.err(
                    e.span(),
                    "lora.embedding_lr",
                    "must be a finite number ≥ 0 (PEFT's default is 1e-6)",
                ))
            }
        };
        let init = match l.init.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("lora") => InitScheme::Lora,
            Some("loraplus") => InitScheme::Loraplus,
            Some(other) => {
                return Err(self.err(
                    l.init.as_ref().map(|s| s.span()).unwrap_or(0..0),
                    "lora.init",
                    format!("unknown init {other:?}: use \"lora\" (A random, B zero) or \"loraplus\" (B random, A zero)"),
                ))
            }
        };
        let alpha = match l.alpha {
            None => rank as f64,
            Some(a) if *a.get_ref() > 0.0 && a.get_ref().is_finite() => *a.get_ref(),
            Some(a) => {
                return Err(self.err(
                    a.span(),
                    "lora.alpha",
                    format!(
                        "is {}: the LoRA scale α must be a finite number greater than 0 \
                         (default: the rank)",
                        a.get_ref()
                    ),
                ))
            }
        };
        Ok(LoraSpec {
            rank,
            alpha,
            dropout,
            target_modules,
            init,
            use_rslora: l.use_rslora.unwrap_or(false),
            embedding_lr,
        })
    }

    fn target_modules(
        &self,
        target_modules: Option<Spanned<TargetModules>>,
    ) -> Result<TargetModules, SpecError> {
        Ok(match target_modules {
            None => TargetModules::list(&["query", "value"]),
            Some(t) => {
                let span = t.span();
                match t.into_inner() {
                    TargetModules::List(l) if l.is_empty() => {
                        return Err(self.err(
                            span,
                            "lora.target_modules",
                            "is empty: name at least one module, e.g. [\"query\", \"value\"], \
                             or give one regex, e.g. \".*\\\\.(query|value)\"",
                        ))
                    }
                    TargetModules::Regex(r) if r.trim().is_empty() => {
                        return Err(self.err(
                            span,
                            "lora.target_modules",
                            "is an empty regex: give a pattern that matches whole module names, \
                             e.g. \".*\\\\.(query|value)\", or a list [\"query\", \"value\"]",
                        ))
                    }
                    TargetModules::Regex(r) => {
                        if let Err(e) = TargetModules::compile(&r) {
                            return Err(self.err(
                                span,
                                "lora.target_modules",
                                format!(
                                    "is not a valid regex (Rust `regex` syntax: no look-around or \
                                     back-references): {e}"
                                ),
                            ));
                        }
                        TargetModules::Regex(r)
                    }
                    list => list,
                }
            }
        })
    }

    fn train(&self, tr: TrainSection) -> Result<TrainSpec, SpecError> {
        let length = match (&tr.steps, &tr.epochs) {
            (Some(s), None) if *s.get_ref() > 0 => TrainLength::Steps(*s.get_ref()),
            (None, Some(e)) if *e.get_ref() > 0.0 => TrainLength::Epochs(*e.get_ref()),
            (Some(s), None) => return Err(self.err(s.span(), "train.steps", "must be at least 1")),
            (None, Some(e)) => {
                return Err(self.err(e.span(), "train.epochs", "must be greater than 0"))
            }
            _ => {
                return Err(self.section_err(
                    "train",
                    "train.steps",
                    "give exactly one of `steps` or `epochs`",
                ))
            }
        };
        let schedule = match tr.schedule.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("linear") => Schedule::Linear,
            Some("constant") => Schedule::Constant,
            Some("cosine") => Schedule::Cosine,
            Some(other) => {
                return Err(self.err(
                    tr.schedule.as_ref().map(|s| s.span()).unwrap_or(0..0),
                    "train.schedule",
                    format!(
                        "unknown schedule {other:?}: use \"constant\", \"linear\" or \"cosine\""
                    ),
                ))
            }
        };
        let weight_decay = match tr.weight_decay {
            None => 0.0,
            Some(w) if *w.get_ref() >= 0.0 && w.get_ref().is_finite() => *w.get_ref(),
            Some(w) => {
                return Err(self.err(
                    w.span(),
                    "train.weight_decay",
                    format!(
                        "is {}: must be a finite number ≥ 0 (e.g. 0.01)",
                        w.get_ref()
                    ),
                ))
            }
        };
        let warmup_steps = match (&tr.warmup_steps, length) {
            (None, _) => 0,
            (Some(w), TrainLength::Steps(steps)) if *w.get_ref() > steps => {
                return Err(self.err(
                    w.span(),
                    "train.warmup_steps",
                    format!(
                        "is {} but train.steps is {steps}: warm-up must end by the last step",
                        w.get_ref()
                    ),
                ))
            }
            (Some(w), _) => *w.get_ref(),
        };
        Ok(TrainSpec {
            length,
            batch_size: self.positive(&tr.batch_size, 32, "train.batch_size")?,
            max_seq_len: self.positive(&tr.max_seq_len, 128, "train.max_seq_len")?,
            weight_decay,
            warmup_steps,
            schedule,
            eval_every: tr.eval_every.unwrap_or(0),
            log_every: self.positive(&tr.log_every, 10, "train.log_every")?,
        })
    }

    /// The (η_A, η_B) points in grid order and the seeds.
    #[allow(clippy::type_complexity)]
    fn grid(&self, g: GridSection) -> Result<(Vec<(f64, f64)>, Vec<u64>), SpecError> {
        let axis = |a: &Spanned<crate::Axis>, field: &str| {
            a.get_ref()
                .values()
                .map_err(|m| self.err(a.span(), field, m))
        };
        let lr_a = axis(&g.lr_a, "grid.lr_a")?;
        let points: Vec<(f64, f64)> = match (&g.lr_b, &g.ratio) {
            (Some(b), None) => {
                let lr_b = axis(b, "grid.lr_b")?;
                lr_a.iter()
                    .flat_map(|&a| lr_b.iter().map(move |&b| (a, b)))
                    .collect()
            }
            (None, Some(r)) => {
                let ratio = axis(r, "grid.ratio")?;
                lr_a.iter()
                    .flat_map(|&a| {
                        ratio
                            .iter()
                            .map(move |&l| (a, crate::grid::round_sig(a * l)))
                    })
                    .collect()
            }
            (Some(_), Some(r)) => {
                return Err(self.err(
                    r.span(),
                    "grid.ratio",
                    "give either `lr_b` (η_B values) or `ratio` (λ = η_B/η_A values), not both",
                ))
            }
            (None, None) => {
                return Err(self.section_err(
                    "grid",
                    "grid.lr_b",
                    "missing: give `lr_b` (η_B values) or `ratio` (λ = η_B/η_A values)",
                ))
            }
        };
        let seeds = match g.seeds {
            None => vec![0],
            Some(s) if s.get_ref().is_empty() => {
                return Err(self.err(
                    s.span(),
                    "grid.seeds",
                    "is empty: give at least one seed, e.g. [0]",
                ))
            }
            Some(s) => {
                let mut v = s.get_ref().clone();
                v.sort_unstable();
                v.dedup();
                if v.len() != s.get_ref().len() {
                    return Err(self.err(s.span(), "grid.seeds", "lists a seed twice"));
                }
                s.into_inner()
            }
        };
        Ok((points, seeds))
    }

    fn devices(&self, d: &Spanned<toml::Value>) -> Result<DeviceChoice, SpecError> {
        let bad = || {
            self.err(
                d.span(),
                "resources.devices",
                "use \"auto\", \"cpu\" or a list of GPU ids like [0, 1]",
            )
        };
        match d.get_ref() {
            toml::Value::String(s) if s == "auto" => Ok(DeviceChoice::Auto),
            toml::Value::String(s) if s == "cpu" => Ok(DeviceChoice::Cpu),
            toml::Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|v| match v {
                    toml::Value::Integer(i) if *i >= 0 => Ok(*i as u32),
                    _ => Err(bad()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(DeviceChoice::Gpus),
            _ => Err(bad()),
        }
    }
}
