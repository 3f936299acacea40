//! The sweep file exactly as written: every key optional where a default exists, unknown keys
//! rejected. [`crate::spec::SweepSpec::load`] turns it into the resolved spec.

use crate::grid::Axis;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Defaults to the file's stem (`sweeps/quickstart.toml` → `quickstart`).
    pub name: Option<String>,
    pub model: ModelSection,
    pub task: TaskSection,
    #[serde(default)]
    pub lora: LoraSection,
    pub train: TrainSection,
    pub grid: GridSection,
    #[serde(default)]
    pub resources: ResourcesSection,
    /// `[search]`: grid (default) or successive halving; checked by
    /// [`etagrid_search::SearchSpec::validate`].
    #[serde(default)]
    pub search: Option<Spanned<etagrid_search::SearchSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face-format directory (config.json, model.safetensors, tokenizer.json), relative
    /// to the sweep file's directory.
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// Training data: .csv, .tsv or .jsonl, relative to the sweep file's directory.
    pub train: Spanned<String>,
    /// Evaluation data; omit it and give `split` to hold out part of `train` instead.
    pub eval: Option<Spanned<String>>,
    /// `{ eval_fraction = 0.2, seed = 0 }`: a seeded split of `train`, stratified by label.
    pub split: Option<Spanned<SplitSection>>,
    pub text_column: Option<String>,
    pub text_pair_column: Option<String>,
    pub label_column: Option<String>,
    /// Evaluate on N examples of the eval file only, drawn at random with a fixed seed.
    pub max_eval_examples: Option<Spanned<usize>>,
    /// `accuracy` (default), `macro_f1`, `mcc` or `eval_loss`; for `causal_lm`: `eval_loss`
    /// (default), `perplexity` or `mc_accuracy`.
    pub metric: Option<Spanned<String>>,
    /// `classification` (default) or `causal_lm` (instruction tuning on prompt/response pairs).
    pub kind: Option<Spanned<String>>,
    /// `causal_lm`: the column holding the prompt (default `prompt`).
    pub prompt_column: Option<Spanned<String>>,
    /// `causal_lm`: the column holding the response (default `response`).
    pub response_column: Option<Spanned<String>>,
    /// `causal_lm`: the text the model sees before the response, `{prompt}` standing for the
    /// prompt (default: the prompt as it is), e.g. a chat template.
    pub prompt_template: Option<Spanned<String>>,
    /// `causal_lm`: a multiple-choice eval file (JSONL: question, choices, answer), scored by
    /// the next-token logits of the choice letters (`mc_accuracy`).
    pub mc_eval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSection {
    /// Share of each label's examples held out for evaluation, in (0, 1).
    pub eval_fraction: f64,
    /// Seed of the split (default 0); not the training seed, so every cell sees the same split.
    pub seed: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    pub rank: Option<Spanned<usize>>,
    pub alpha: Option<Spanned<f64>>,
    pub dropout: Option<Spanned<f64>>,
    /// A list of module names, or one regex (a string) matched against whole module names.
    pub target_modules: Option<Spanned<crate::spec::TargetModules>>,
    /// `lora` (A random, B zero) or `loraplus` (B random, A zero).
    pub init: Option<Spanned<String>>,
    /// rsLoRA scaling α/√r.
    pub use_rslora: Option<bool>,
    /// The fixed lr of LoRA on embedding layers (default 1e-6).
    pub embedding_lr: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub steps: Option<Spanned<u64>>,
    pub epochs: Option<Spanned<f64>>,
    pub batch_size: Option<Spanned<usize>>,
    pub max_seq_len: Option<Spanned<usize>>,
    pub weight_decay: Option<Spanned<f64>>,
    pub warmup_steps: Option<Spanned<u64>>,
    /// `constant`, `linear` (decay to 0 after warm-up, the default) or `cosine`.
    pub schedule: Option<Spanned<String>>,
    /// Evaluate every N steps (besides the end); 0 or absent: only at the end.
    pub eval_every: Option<u64>,
    /// Report the mean train loss every K steps.
    pub log_every: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSection {
    pub lr_a: Spanned<Axis>,
    pub lr_b: Option<Spanned<Axis>>,
    pub ratio: Option<Spanned<Axis>>,
    pub seeds: Option<Spanned<Vec<u64>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSection {
    /// `"auto"` (every visible GPU, else the CPU), `"cpu"`, or a list of GPU ids like `[0, 1]`.
    pub devices: Option<Spanned<toml::Value>>,
    pub cells_per_device: Option<Spanned<usize>>,
    /// Cells trained together by one worker on one frozen base: `"auto"` or a number ≥ 1.
    pub cells_per_worker: Option<Spanned<toml::Value>>,
    /// CPU threads per worker; default: the machine's cores divided among the CPU slots.
    pub threads_per_cell: Option<Spanned<usize>>,
    /// How many times a cell may be started before it stays `failed` (default 3).
    pub max_attempts: Option<Spanned<u32>>,
    /// Kill a cell that runs longer than this (e.g. "30m", "2h"); it is retried like a crash.
    pub cell_timeout: Option<Spanned<String>>,
}
