//! Our RoBERTa against transformers' `RobertaForSequenceClassification` on the tiny fixture
//! (tests/fixtures/tiny-roberta, made by scripts/make_roberta_fixture.py): byte-level BPE
//! tokenizer, positions from pad_token_id + 1, dense → tanh → out_proj head; and
//! tests/fixtures/tiny-roberta-tt (same script): `type_vocab_size = 2` with pair inputs whose second
//! segment has token type 1. Tolerance: fp32, max |difference| ≤ 1e-4.

mod common;

use common::*;
use etagrid_spec::InitScheme;
use etagrid_train::bert::{BertConfig, BertForSequenceClassification};
use etagrid_train::data::{collate, load_tokenizer, Encoded};
use etagrid_train::weights::Weights;
use tch::{Device, Kind};

const PLAIN: &str = "tiny-roberta";
/// type_vocab_size = 2, pair segments typed 0 / 1.
const TOKEN_TYPES: &str = "tiny-roberta-tt";

fn reference_of(fixture: &str) -> serde_json::Value {
    let path = common::fixture(fixture).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn reference() -> serde_json::Value {
    reference_of(PLAIN)
}

fn model() -> BertForSequenceClassification {
    model_of(PLAIN)
}

fn model_of(fixture: &str) -> BertForSequenceClassification {
    let config = BertConfig::load(&common::fixture(fixture)).expect("config");
    assert!(config.is_roberta());
    let weights =
        Weights::load(&common::fixture(fixture), Device::Cpu, Kind::Float).expect("weights");
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
    encode_of(PLAIN, r)
}

fn encode_of(fixture: &str, r: &serde_json::Value) -> Encoded {
    let tok = load_tokenizer(&common::fixture(fixture), 64).expect("tokenizer");
    encode_reference_inputs(&tok, r)
}

#[test]
fn roberta_tokenizer_gives_the_same_ids_as_transformers() {
    let r = reference();
    let want: Vec<Vec<i64>> = serde_json::from_value(r["input_ids"].clone()).expect("ids");
    assert_eq!(encode(&r).ids, want);
}

#[test]
fn roberta_logits_match_transformers_alone_and_in_a_padded_batch() {
    logits_match(PLAIN);
}

#[test]
fn roberta_with_token_types_gives_transformers_ids_types_and_logits() {
    let r = reference_of(TOKEN_TYPES);
    let enc = encode_of(TOKEN_TYPES, &r);
    let want: Vec<Vec<i64>> = serde_json::from_value(r["input_ids"].clone()).expect("ids");
    assert_eq!(enc.ids, want);
    let types: Vec<Vec<i64>> = serde_json::from_value(r["token_type_ids"].clone()).expect("types");
    assert_eq!(enc.type_ids, types);
    assert!(
        types.iter().filter(|t| t.contains(&1)).count() >= 3,
        "the fixture has pairs with type-1 segments"
    );
    logits_match(TOKEN_TYPES);
    // The types reach the model: all-zero types give other logits.
    let m = model_of(TOKEN_TYPES);
    let all: Vec<usize> = (0..enc.len()).collect();
    let mut batch = collate(&enc, &all, 1, Device::Cpu);
    let with_types = m.forward(&batch, false);
    batch.token_type_ids = batch.token_type_ids.zeros_like();
    assert!(max_abs_diff(&m.forward(&batch, false), &with_types) > 1e-3);
}

fn logits_match(fixture: &str) {
    let r = reference_of(fixture);
    let enc = encode_of(fixture, &r);
    let m = model_of(fixture);
    let want = tensor(&r["logits"], Kind::Float);
    for i in 0..enc.len() {
        let logits = m.forward(&collate(&enc, &[i], 1, Device::Cpu), false);
        let d = max_abs_diff(&logits, &want.get(i as i64).unsqueeze(0));
        assert!(d <= 1e-4, "{fixture} input {i}: logits differ by {d:e}");
    }
    let all: Vec<usize> = (0..enc.len()).collect();
    // Padding with RoBERTa's pad id (1) must not move any position id or logit.
    let d = max_abs_diff(
        &m.forward(&collate(&enc, &all, 1, Device::Cpu), false),
        &want,
    );
    assert!(d <= 1e-4, "{fixture} padded batch: logits differ by {d:e}");
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
