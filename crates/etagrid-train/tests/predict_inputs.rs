//! `etagrid predict` refuses what would print meaningless logits or nothing at all (issue 12):
//! a causal LM checkpoint without a classification head unless `--lm`, `--max-len 0`, and an
//! input file with no input.

mod common;

use common::fixture;
use etagrid_spec::protocol::JobDevice;
use etagrid_train::predict::{predict, PredictOptions};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// The tiny GPT-2 as a plain causal LM checkpoint (`GPT2LMHeadModel`): no `score.weight`.
fn causal_lm_checkpoint(dir: &Path) -> PathBuf {
    let src = fixture("tiny-gpt2");
    let dst = dir.join("gpt2-lm");
    std::fs::create_dir_all(&dst).expect("mkdir");
    std::fs::copy(src.join("tokenizer.json"), dst.join("tokenizer.json")).expect("copy");
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(src.join("config.json")).expect("read config"),
    )
    .expect("config json");
    config["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(dst.join("config.json"), config.to_string()).expect("write config");
    let bytes = std::fs::read(src.join("model.safetensors")).expect("read weights");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "score.weight")
        .collect();
    assert!(
        kept.len() < st.len(),
        "the fixture had a score head to drop"
    );
    safetensors::serialize_to_file(kept, None, &dst.join("model.safetensors")).expect("write");
    dst
}

fn options(model: &Path, input: &Path) -> PredictOptions {
    PredictOptions {
        model_dir: model.to_owned(),
        adapter: None,
        input: input.to_owned(),
        max_len: 16,
        batch_size: 4,
        lm: false,
        device: JobDevice::Cpu,
    }
}

fn inputs(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("in.jsonl");
    std::fs::write(&p, text).expect("write inputs");
    p
}

#[test]
fn a_causal_lm_without_a_head_is_refused_without_lm_and_gives_next_token_logits_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = causal_lm_checkpoint(dir.path());
    let input = inputs(dir.path(), "{\"text\": \"hello there\"}\n");
    let mut rows = Vec::new();
    let e = predict(&options(&model, &input), &mut |v| rows.push(v))
        .expect_err("no head to use")
        .to_string();
    assert!(e.contains("--lm"), "{e}");
    assert!(e.contains("GPT2LMHeadModel"), "{e}");
    assert!(rows.is_empty(), "printed logits of an invented head");
    let mut o = options(&model, &input);
    o.lm = true;
    predict(&o, &mut |v| rows.push(v)).expect("next-token logits");
    assert_eq!(rows.len(), 1);
    let vocab = rows[0]["logits"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        vocab > 2,
        "next-token logits over the vocabulary, got {vocab}"
    );
}

#[test]
fn a_checkpoint_with_its_own_head_still_predicts_without_lm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = inputs(dir.path(), "{\"text\": \"hello there\"}\n");
    let mut rows = Vec::new();
    predict(&options(&fixture("tiny-gpt2"), &input), &mut |v| {
        rows.push(v)
    })
    .expect("predict");
    assert_eq!(rows.len(), 1);
}

#[test]
fn max_len_zero_and_an_input_file_without_inputs_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = fixture("tiny-bert");
    let input = inputs(dir.path(), "{\"text\": \"hello\"}\n");
    let mut o = options(&model, &input);
    o.max_len = 0;
    let e = predict(&o, &mut |_| {}).expect_err("max-len 0").to_string();
    assert!(e.contains("--max-len"), "{e}");
    for text in ["", "\n  \n"] {
        let empty = inputs(dir.path(), text);
        let e = predict(&options(&model, &empty), &mut |_| {})
            .expect_err("no input")
            .to_string();
        assert!(e.contains("in.jsonl") && e.contains("no input"), "{e}");
    }
}
