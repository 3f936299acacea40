//! `[task] kind = "causal_lm"` in the sweep file: defaults, the metric's direction, errors that
//! name the line and the key, and cell identity (classification ids unchanged; causal-LM ids
//! independent of where the project lives).

use etagrid_spec::spec::Metric;
use etagrid_spec::{SpecError, SweepSpec};
use std::path::Path;

const LM: &str = r#"
[model]
path = "../models/SmolLM2-135M-Instruct"
[task]
kind = "causal_lm"
train = "../data/dialog/train.jsonl"
eval = "../data/dialog/eval.jsonl"
[train]
steps = 10
[grid]
lr_a = [1e-4]
ratio = [16]
"#;

fn parse_at(path: &str, text: &str) -> Result<SweepSpec, SpecError> {
    SweepSpec::parse(Path::new(path), text)
}

fn parse(text: &str) -> Result<SweepSpec, SpecError> {
    parse_at("/p/sweeps/lm.toml", text)
}

fn with(task_lines: &str) -> String {
    LM.replacen(
        "kind = \"causal_lm\"\n",
        &format!("kind = \"causal_lm\"\n{task_lines}\n"),
        1,
    )
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn causal_lm_defaults_to_eval_loss_lower_is_better_and_prompt_response_columns() {
    let s = parse(LM).expect("parse");
    assert_eq!(s.task.metric, Metric::EvalLoss);
    assert!(!s.task.metric.higher_is_better());
    let lm = s.task.lm.expect("a causal_lm task");
    assert_eq!(
        (lm.prompt_column.as_str(), lm.response_column.as_str()),
        ("prompt", "response")
    );
    assert_eq!(lm.prompt_template, None);
    assert_eq!(lm.render("hi"), "hi");
}

#[test]
fn perplexity_is_lower_is_better_and_mc_accuracy_higher() {
    assert!(!Metric::Perplexity.higher_is_better());
    assert!(Metric::McAccuracy.higher_is_better());
    let s = parse(&with("metric = \"perplexity\"")).expect("parse");
    assert_eq!(s.task.metric, Metric::Perplexity);
    let s = parse(&with(
        "mc_eval = \"../data/mc.jsonl\"\nmetric = \"mc_accuracy\"",
    ))
    .expect("parse");
    assert_eq!(s.task.metric, Metric::McAccuracy);
    assert_eq!(
        s.task.lm.and_then(|l| l.mc_eval_file),
        Some(Path::new("/p/sweeps/../data/mc.jsonl").to_owned())
    );
}

#[test]
fn the_prompt_template_fills_in_the_prompt() {
    let s = parse(&with(
        r#"prompt_template = "<|user|>\n{prompt}\n<|assistant|>\n""#,
    ))
    .expect("parse");
    assert_eq!(
        s.task.lm.expect("lm").render("Hi?"),
        "<|user|>\nHi?\n<|assistant|>\n"
    );
}

#[test]
fn bad_causal_lm_settings_name_the_line_the_key_and_the_fix() {
    for (lines, line, key, fix) in [
        (
            "metric = \"accuracy\"",
            6,
            "task.metric",
            "classification metric",
        ),
        (
            "metric = \"mc_accuracy\"",
            6,
            "task.metric",
            "set `mc_eval`",
        ),
        (
            "prompt_template = \"no placeholder\"",
            6,
            "task.prompt_template",
            "{prompt}",
        ),
    ] {
        let e = err(&with(lines));
        for want in [
            format!("lm.toml:{line}:"),
            format!("`{key}`"),
            fix.to_owned(),
        ] {
            assert!(e.contains(&want), "{e:?} lacks {want:?}");
        }
    }
    let e = err(&LM.replace("causal_lm", "seq2seq"));
    assert!(
        e.contains("`task.kind`") && e.contains("\"classification\" or \"causal_lm\""),
        "{e}"
    );
    // causal_lm settings in a classification task, and LM metrics there.
    let cls = LM.replace("kind = \"causal_lm\"\n", "");
    let e = err(&cls.replacen("[train]", "prompt_column = \"q\"\n[train]", 1));
    assert!(
        e.contains("`task.prompt_column`") && e.contains("kind = \"causal_lm\""),
        "{e}"
    );
    let e = err(&cls.replacen("[train]", "metric = \"perplexity\"\n[train]", 1));
    assert!(e.contains("needs `kind = \"causal_lm\"`"), "{e}");
}

#[test]
fn classification_ids_do_not_change_by_writing_the_default_kind() {
    let cls = LM.replace("kind = \"causal_lm\"\n", "");
    let explicit = LM.replace("kind = \"causal_lm\"", "kind = \"classification\"");
    let id = |t: &str| parse(t).expect("parse").cells()[0].id.0.clone();
    assert_eq!(id(&cls), id(&explicit));
    assert_ne!(
        id(&cls),
        id(LM),
        "a causal-LM cell is a different fine-tune"
    );
}

#[test]
fn causal_lm_ids_change_with_lm_settings_but_not_with_the_project_folder() {
    let text = with("mc_eval = \"../data/mc.jsonl\"");
    let id = |p: &str, t: &str| parse_at(p, t).expect("parse").cells()[0].id.0.clone();
    assert_eq!(
        id("/a/sweeps/x.toml", &text),
        id("/elsewhere/b/sweeps/x.toml", &text)
    );
    assert_ne!(id("/a/sweeps/x.toml", &text), id("/a/sweeps/x.toml", LM));
    assert_ne!(
        id("/a/x.toml", LM),
        id("/a/x.toml", &with("prompt_template = \"Q: {prompt}\\nA:\""))
    );
}
