//! Our RoBERTa against transformers' `RobertaForSequenceClassification` on the tiny fixture
//! (tests/fixtures/tiny-roberta, made by scripts/make_roberta_fixture.py): byte-level BPE
//! tokenizer, positions from pad_token_id + 1, dense → tanh → out_proj head.
//! Tolerance: fp32, max |difference| ≤ 1e-4.

mod common;

use common::*;
use etagrid_spec::InitScheme;
use etagrid_train::bert::{BertConfig, BertForSequenceClassification};
use etagrid_train::data::{collate, load_tokenizer, Encoded};
use etagrid_train::weights::Weights;
use std::path::PathBuf;
use tch::{Device, Kind};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).expect("read"))
        .expect("json")
}

fn model() -> BertForSequenceClassification {
    let config = BertConfig::load(&dir()).expect("config");
    assert!(config.is_roberta());
    let weights = Weights::load(&dir(), Device::Cpu, Kind::Float).expect("weights");
    tch::manual_seed(0);
    BertForSequenceClassification::load(
        config,
        &weights,
        3,
        &lora_spec(4, 8.0, InitScheme::Lora),
        1,
        Device::Cpu,
    )
    .expect("model")
}

fn encode(r: &serde_json::Value) -> Encoded {
    let tok = load_tokenizer(&dir(), 64).expect("tokenizer");
    let owned = reference_inputs(r);
    let pairs: Vec<(&str, Option<&str>)> = owned
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_deref()))
        .collect();
    encode_inputs(&tok, &pairs)
}

#[test]
fn roberta_tokenizer_gives_the_same_ids_as_transformers() {
    let r = reference();
    let want: Vec<Vec<i64>> = serde_json::from_value(r["input_ids"].clone()).expect("ids");
    assert_eq!(encode(&r).ids, want);
}

#[test]
fn roberta_logits_match_transformers_alone_and_in_a_padded_batch() {
    let r = reference();
    let enc = encode(&r);
    let m = model();
    let want = tensor(&r["logits"], Kind::Float);
    for i in 0..enc.len() {
        let logits = m.forward(&collate(&enc, &[i], 1, Device::Cpu), false);
        let d = max_abs_diff(&logits, &want.get(i as i64).unsqueeze(0));
        assert!(d <= 1e-4, "input {i}: logits differ by {d:e}");
    }
    let all: Vec<usize> = (0..enc.len()).collect();
    // Padding with RoBERTa's pad id (1) must not move any position id or logit.
    let d = max_abs_diff(
        &m.forward(&collate(&enc, &all, 1, Device::Cpu), false),
        &want,
    );
    assert!(d <= 1e-4, "padded batch: logits differ by {d:e}");
}

#[test]
fn roberta_head_trains_dense_and_out_proj_in_the_authors_groups() {
    let m = model();
    let opt = etagrid_train::optim::LoraPlusAdamW::new(m.trainable(), &[1e-3], &[1.6e-2], 0.01);
    use etagrid_train::optim::Group;
    let a = opt.members(Group::A);
    let nd = opt.members(Group::BNoDecay);
    assert!(
        a.contains(&"classifier.dense.weight") && a.contains(&"classifier.out_proj.weight"),
        "{a:?}"
    );
    assert_eq!(
        nd,
        vec!["classifier.dense.bias", "classifier.out_proj.bias"]
    );
}
