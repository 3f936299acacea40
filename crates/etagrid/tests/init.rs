//! `etagrid init` end to end through the binary: it detects the task's columns, writes a commented
//! sweep file that `etagrid plan` accepts and `etagrid run` trains (storing macro-F1 and MCC), and
//! never overwrites a file.

mod common;

use common::{manifest, read_cells, text, tiny_bert, tiny_task, train_fixture};
use etagrid_spec::SweepSpec;
use etagrid_store::CellState;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory `scripts/setup.sh` fills (models/, data/); the test says so when it is missing.
fn set_up(rel: &str) -> PathBuf {
    let p = manifest().join("../..").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

/// A data file of etagrid-train's fixtures.
fn train_data(file: &str) -> PathBuf {
    train_fixture("data").join(file)
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_etagrid"))
            .current_dir(self.dir.path())
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(args)
            .output()
            .expect("run etagrid")
    }

    /// `etagrid init --model tiny-bert --train TRAIN [--eval EVAL] --out OUT [extra…]`.
    fn init(&self, train: &Path, eval: Option<&Path>, out: &str, extra: &[&str]) -> Output {
        self.init_model(&tiny_bert(), train, eval, out, extra)
    }

    /// `etagrid init --model MODEL --train TRAIN [--eval EVAL] --out OUT [extra…]`.
    fn init_model(
        &self,
        model: &Path,
        train: &Path,
        eval: Option<&Path>,
        out: &str,
        extra: &[&str],
    ) -> Output {
        let mut args: Vec<String> = vec![
            "init".into(),
            "--model".into(),
            model.display().to_string(),
            "--train".into(),
            train.display().to_string(),
            "--out".into(),
            out.into(),
        ];
        if let Some(e) = eval {
            args.extend(["--eval".into(), e.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("read {p}: {e}"))
    }

    fn cells(&self, sweep: &str) -> Vec<etagrid_store::CellRow> {
        read_cells(&self.path("state/etagrid.sqlite"), sweep)
    }
}

/// The value of `key = …` in `toml` (before any comment), if the line is there uncommented.
fn value<'a>(toml: &'a str, key: &str) -> Option<&'a str> {
    toml.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.split(" #").next().unwrap_or(v).trim())
    })
}

#[test]
fn init_detects_the_columns_and_writes_a_commented_sweep_that_plans() {
    let sb = Sandbox::new();
    let out = sb.init(
        &tiny_task("train.csv"),
        Some(&tiny_task("eval.csv")),
        "sweeps/tiny.toml",
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("text:       text"), "{stdout}");
    assert!(
        stdout.contains("label:      label — 3 labels: neg, pos, question"),
        "{stdout}"
    );
    assert!(stdout.contains("60 train, 30 eval"), "{stdout}");

    let toml = sb.read("sweeps/tiny.toml");
    assert_eq!(value(&toml, "text_column"), Some("\"text\""), "{toml}");
    assert_eq!(value(&toml, "label_column"), Some("\"label\""), "{toml}");
    assert_eq!(value(&toml, "text_pair_column"), None, "{toml}");
    assert_eq!(value(&toml, "lr_a"), Some("{ log2 = [-16, -8], step = 2 }"));
    assert_eq!(value(&toml, "ratio"), Some("[1, 2, 4, 8, 16, 32]"));
    assert_eq!(
        value(&toml, "metric"),
        Some("\"accuracy\""),
        "balanced labels"
    );
    // Paths are written relative to the sweep file.
    let train = value(&toml, "train").expect("train");
    assert!(train.starts_with("\"../"), "{train}");
    // Each [task] key is explained.
    for key in ["train", "eval", "text_column", "label_column", "metric"] {
        let line = toml
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} line in {toml}"));
        assert!(line.contains(" # "), "{key} has no comment: {line}");
    }

    let plan = sb.run(&["plan", "sweeps/tiny.toml"]);
    let stdout = text(&plan.stdout);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    assert!(
        stdout.contains("30 cells = 30 (η_A, η_B) points (5 η_A values) × 1 seed(s)"),
        "{stdout}"
    );
}

#[test]
fn a_sweep_written_by_init_runs_and_stores_accuracy_macro_f1_and_mcc() {
    let sb = Sandbox::new();
    let out = sb.init(
        &tiny_task("train.csv"),
        Some(&tiny_task("eval.csv")),
        "tiny.toml",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Shrink the grid and the training to one quick cell; everything else as init wrote it.
    let toml: String = sb
        .read("tiny.toml")
        .lines()
        .map(|l| match l.split('=').next().map(str::trim) {
            Some("steps") => "steps = 4".to_string(),
            // Warm-up may not outlast the steps (`plan` and `run` refuse that).
            Some("warmup_steps") => "warmup_steps = 1".to_string(),
            Some("lr_a") => "lr_a = [1e-2]".to_string(),
            Some("ratio") => "ratio = [1]".to_string(),
            Some("devices") => "devices = \"cpu\"\nthreads_per_cell = 1".to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(sb.path("tiny.toml"), toml).expect("write");

    let run = sb.run(&["run", "tiny.toml", "--no-report"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let cells = sb.cells("tiny");
    assert_eq!(cells.len(), 1);
    let c = &cells[0];
    assert_eq!(c.state, CellState::Done, "{:?}", c.error);
    assert_eq!(c.metric, c.accuracy, "the sweep's metric is accuracy");
    let f1 = c.macro_f1.expect("macro_f1 stored");
    let mcc = c.mcc.expect("mcc stored");
    assert!((0.0..=1.0).contains(&f1), "macro_f1 {f1}");
    assert!((-1.0..=1.0).contains(&mcc), "mcc {mcc}");

    let labels: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sb.path(&format!("state/cells/tiny/{}/labels.json", c.id)))
            .expect("labels.json"),
    )
    .expect("json");
    assert_eq!(
        labels["labels"],
        serde_json::json!(["neg", "pos", "question"])
    );
    assert_eq!(labels["label_column"], "label");
}

#[test]
fn init_without_an_eval_file_holds_out_a_stratified_split() {
    let sb = Sandbox::new();
    let out = sb.init(&tiny_task("train.csv"), None, "split.toml", &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = sb.read("split.toml");
    assert_eq!(
        value(&toml, "split"),
        Some("{ eval_fraction = 0.2, seed = 0 }"),
        "{toml}"
    );
    assert_eq!(value(&toml, "eval"), None, "{toml}");
    // 20 of each of the 3 labels: 4 of each held out.
    assert!(stdout.contains("48 train, 12 eval"), "{stdout}");
    let plan = sb.run(&["plan", "split.toml"]);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
}

#[test]
fn init_detects_a_sentence_pair_and_integer_labels() {
    let sb = Sandbox::new();
    let tsv = train_data("glue.tsv");
    let out = sb.init(&tsv, Some(&tsv), "pair.toml", &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("text pair:  sentence2"), "{stdout}");
    let toml = sb.read("pair.toml");
    assert_eq!(value(&toml, "text_column"), Some("\"sentence1\""), "{toml}");
    assert_eq!(
        value(&toml, "text_pair_column"),
        Some("\"sentence2\""),
        "{toml}"
    );
    assert_eq!(value(&toml, "label_column"), Some("\"label\""), "{toml}");
    assert!(toml.contains("3 labels: 1, 2, 10"), "{toml}");
    let plan = sb.run(&["plan", "pair.toml"]);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
}

#[test]
fn init_uses_the_label_column_it_is_given() {
    let sb = Sandbox::new();
    let csv = train_data("questions.csv");
    let out = sb.init(&csv, Some(&csv), "fine.toml", &["--label-column", "fine"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = sb.read("fine.toml");
    assert_eq!(value(&toml, "label_column"), Some("\"fine\""), "{toml}");
}

#[test]
fn init_refuses_to_overwrite_an_existing_file() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("mine.toml"), "# my own sweep\n").expect("write");
    let out = sb.init(
        &tiny_task("train.csv"),
        Some(&tiny_task("eval.csv")),
        "mine.toml",
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("mine.toml") && err.contains("already exists") && err.contains("--out"),
        "{err}"
    );
    assert_eq!(sb.read("mine.toml"), "# my own sweep\n");
}

#[test]
fn init_with_bad_data_fails_with_the_file_and_line_and_writes_nothing() {
    let sb = Sandbox::new();
    std::fs::write(
        sb.path("bad.csv"),
        "text,label\nthe film was great,pos\n,neg\nthe plot was dull,neg\n",
    )
    .expect("write");
    let out = sb.init(
        &sb.path("bad.csv"),
        Some(&sb.path("bad.csv")),
        "bad.toml",
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.csv:3:") && err.contains("is empty"),
        "{err}"
    );
    assert!(!sb.path("bad.toml").exists());
}

/// `etagrid init` for `model` on `train`/`eval`, then `etagrid run --enqueue-only` on what it
/// wrote (which checks every input as a cell would load it: the LoRA targets against the model's
/// modules, `max_seq_len` against its positions); returns the sweep file.
fn init_and_check(sb: &Sandbox, model: &Path, train: &Path, eval: &Path, name: &str) -> String {
    let out = sb.init_model(model, train, Some(eval), name, &[]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run = sb.run(&["run", "--enqueue-only", name]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    sb.read(name)
}

/// GPT-2 and Llama (a tiny one, and SmolLM2 on TREC): the family's attention modules as
/// targets, and a sweep every cell accepts.
#[test]
fn init_works_for_decoder_models_and_targets_their_attention_modules() {
    let tiny = (tiny_task("train.csv"), tiny_task("eval.csv"));
    let trec = (set_up("data/trec/train.csv"), set_up("data/trec/eval.csv"));
    let q_v = "[\"q_proj\", \"v_proj\"]";
    for (model, (train, eval), targets) in [
        (train_fixture("tiny-gpt2"), &tiny, "[\"c_attn\"]"),
        (train_fixture("tiny-llama-mha"), &tiny, q_v),
        (set_up("models/SmolLM2-135M-Instruct"), &trec, q_v),
    ] {
        let sb = Sandbox::new();
        let toml = init_and_check(&sb, &model, train, eval, "sweep.toml");
        assert_eq!(
            value(&toml, "target_modules"),
            Some(targets),
            "{}: {toml}",
            model.display()
        );
        SweepSpec::load(&sb.path("sweep.toml")).expect("the sweep parses");
    }
}

#[test]
fn init_with_roberta_keeps_max_seq_len_within_the_tokens_roberta_allows() {
    // tiny-roberta: max_position_embeddings = 66 with pad_token_id = 1, so 64 tokens at most
    // (as RoBERTa-base's 514 allows 512). Texts far longer than that make init take the cap.
    let sb = Sandbox::new();
    let sentence = "the quick brown fox jumps over the lazy dog and runs far away ";
    let mut csv = String::from("text,label\n");
    for i in 0..40 {
        csv.push_str(&format!("{},{}\n", sentence.repeat(4), ["a", "b"][i % 2]));
    }
    std::fs::write(sb.path("long.csv"), &csv).expect("write");
    let toml = init_and_check(
        &sb,
        &train_fixture("tiny-roberta"),
        &sb.path("long.csv"),
        &sb.path("long.csv"),
        "roberta.toml",
    );
    assert_eq!(value(&toml, "max_seq_len"), Some("64"), "{toml}");
    assert_eq!(
        value(&toml, "target_modules"),
        Some("[\"query\", \"value\"]"),
        "{toml}"
    );
}
