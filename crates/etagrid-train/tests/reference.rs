//! Our BERT against transformers' `BertForSequenceClassification` on the tiny fixture
//! (reference values: tests/fixtures/tiny-bert/reference.json, made by scripts/make_fixtures.py).
//! Tolerance: fp32, max |difference| ≤ 1e-4 on logits and pooled outputs.

mod common;

use common::*;
use etagrid_spec::InitScheme;
use etagrid_train::data::{collate, load_tokenizer, Encoded};
use tch::{Device, Kind};

const TOL: f64 = 1e-4;

fn encode_reference() -> (Encoded, serde_json::Value) {
    let r = json("reference.json");
    let tok = load_tokenizer(&fixture_dir(), 32).expect("tokenizer");
    let enc = encode_reference_inputs(&tok, &r);
    (enc, r)
}

#[test]
fn tokenizer_gives_the_same_ids_and_type_ids_as_transformers() {
    let (enc, r) = encode_reference();
    let want_ids: Vec<Vec<i64>> = serde_json::from_value(r["input_ids"].clone()).expect("ids");
    let want_types: Vec<Vec<i64>> =
        serde_json::from_value(r["token_type_ids"].clone()).expect("types");
    assert_eq!(enc.ids, want_ids);
    assert_eq!(enc.type_ids, want_types);
}

#[test]
fn logits_match_transformers_one_input_at_a_time() {
    let (enc, r) = encode_reference();
    let model = tiny_model(&lora_spec(4, 8.0, InitScheme::Lora), 0);
    for i in 0..enc.len() {
        let batch = collate(&enc, &[i], 0, Device::Cpu);
        let logits = model.forward(&batch, false);
        let want = tensor(&r["logits"][i], Kind::Float).unsqueeze(0);
        let d = max_abs_diff(&logits, &want);
        assert!(d <= TOL, "input {i}: logits differ by {d:e}");
        let pooled = model.pooled(&batch, false);
        let d = max_abs_diff(&pooled, &tensor(&r["pooled"][i], Kind::Float).unsqueeze(0));
        assert!(d <= TOL, "input {i}: pooled output differs by {d:e}");
    }
}

#[test]
fn padding_a_batch_does_not_change_any_logit() {
    let (enc, r) = encode_reference();
    let model = tiny_model(&lora_spec(4, 8.0, InitScheme::Lora), 0);
    let all: Vec<usize> = (0..enc.len()).collect();
    let logits = model.forward(&collate(&enc, &all, 0, Device::Cpu), false);
    let want = tensor(&r["logits"], Kind::Float);
    let d = max_abs_diff(&logits, &want);
    assert!(
        d <= TOL,
        "padded batch logits differ from transformers' by {d:e}"
    );
}

#[test]
fn lora_adapter_with_peft_weights_gives_peft_logits() {
    let r = json("lora_reference.json");
    let model = tiny_model(&lora_spec(4, 8.0, InitScheme::Lora), 0);
    set_from_peft(&model, &r["adapter"]);
    let logits = model.forward(&reference_batch(&r), false);
    let d = max_abs_diff(&logits, &tensor(&r["logits"], Kind::Float));
    assert!(d <= TOL, "LoRA logits differ from PEFT's by {d:e}");
}

/// Copies PEFT's adapter tensors into ours (K = 1: PEFT's [r, in] is our [1, r, in]).
pub fn set_from_peft(
    model: &etagrid_train::bert::BertForSequenceClassification,
    adapter: &serde_json::Value,
) {
    tch::no_grad(|| {
        for p in model.trainable() {
            let name = peft_name(&p.name);
            if let Some(v) = adapter.get(&name) {
                let mut t = p.tensor.shallow_clone();
                t.copy_(&tensor(v, Kind::Float).unsqueeze(0));
            }
        }
    });
}
