//! GPT-2 and Llama against transformers' `GPT2ForSequenceClassification` and
//! `LlamaForSequenceClassification` on tiny random checkpoints (scripts/make_decoder_fixtures.py):
//! GPT-2; Llama with grouped-query attention, untied embeddings and `llama3` rope scaling; Llama
//! with multi-head attention, tied embeddings, default rope. Each input alone and in one
//! right-padded batch. Tolerance: fp32, max |difference| ≤ 1e-4.

mod common;

use common::*;
use etagrid_spec::{InitScheme, LoraSpec, TargetModules};
use etagrid_train::data::{collate, load_tokenizer};
use etagrid_train::model::{load_classifier, SequenceClassifier};
use etagrid_train::optim::{Group, LoraPlusAdamW};
use etagrid_train::weights::Weights;
use tch::{Device, Kind};

fn load(name: &str, targets: &[&str], init: InitScheme) -> Box<dyn SequenceClassifier> {
    let d = fixture(name);
    let weights = Weights::load(&d, Device::Cpu, Kind::Float).expect("weights");
    let lora = LoraSpec {
        init,
        ..LoraSpec::new(4, 8.0, TargetModules::list(targets))
    };
    tch::manual_seed(0);
    load_classifier(&d, &weights, 3, &lora, 1, Device::Cpu).expect("model")
}

fn check(name: &str, targets: &[&str]) {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference.json")).expect("read"),
    )
    .expect("json");
    let tok = load_tokenizer(&fixture(name), 64).expect("tokenizer");
    let enc = encode_reference_inputs(&tok, &r);
    let want_ids: Vec<Vec<i64>> = serde_json::from_value(r["input_ids"].clone()).expect("ids");
    assert_eq!(
        enc.ids, want_ids,
        "{name}: token ids differ from transformers'"
    );
    // LoRA init B = 0: the adapters must not change the base model's logits.
    let m = load(name, targets, InitScheme::Lora);
    let want = tensor(&r["logits"], Kind::Float);
    for i in 0..enc.len() {
        let got = m.forward(&collate(&enc, &[i], m.pad_token_id(), Device::Cpu), false);
        let d = max_abs_diff(&got, &want.get(i as i64).unsqueeze(0));
        assert!(d <= 1e-4, "{name} input {i}: logits differ by {d:e}");
    }
    let all: Vec<usize> = (0..enc.len()).collect();
    let batch = collate(&enc, &all, m.pad_token_id(), Device::Cpu);
    let d = max_abs_diff(&m.forward(&batch, false), &want);
    assert!(d <= 1e-4, "{name} padded batch: logits differ by {d:e}");
    // The causal LM's next-token logits, where transformers could build that model (tied head).
    match (&r["next_token_logits"], m.next_token_logits(&batch)) {
        (serde_json::Value::Null, None) => {}
        (want, Some(got)) if !want.is_null() => {
            let d = max_abs_diff(&got, &tensor(want, Kind::Float));
            assert!(d <= 1e-4, "{name}: next-token logits differ by {d:e}");
        }
        (want, got) => panic!(
            "{name}: reference has LM logits: {}, we have: {}",
            !want.is_null(),
            got.is_some()
        ),
    }
}

#[test]
fn gpt2_logits_match_transformers() {
    check("tiny-gpt2", &["c_attn", "c_proj", "c_fc"]);
}

#[test]
fn llama_with_gqa_untied_embeddings_and_llama3_rope_matches_transformers() {
    check("tiny-llama-gqa", LLAMA_ALL_PROJ);
}

#[test]
fn llama_with_mha_tied_embeddings_and_default_rope_matches_transformers() {
    check("tiny-llama-mha", &["q_proj", "v_proj"]);
}

#[test]
fn decoder_adapters_and_score_land_in_the_loraplus_groups() {
    for (name, targets, n_lora) in [
        ("tiny-gpt2", vec!["c_attn", "c_proj", "c_fc"], 2 * 4),
        ("tiny-llama-gqa", LLAMA_ALL_PROJ.to_vec(), 2 * 7),
    ] {
        let m = load(name, &targets, InitScheme::Loraplus);
        let opt = LoraPlusAdamW::new(m.trainable(), &[1e-3], &[1.6e-2], 0.0);
        let a = opt.members(Group::A);
        let b = opt.members(Group::B);
        assert_eq!(b.len(), n_lora, "{name}: {b:?}");
        assert_eq!(
            a.len(),
            n_lora + 1,
            "{name}: lora_A of every layer and score.weight: {a:?}"
        );
        assert!(a.contains(&"score.weight"));
        assert!(opt.members(Group::BNoDecay).is_empty(), "score has no bias");
    }
}

/// Training goes backward through every layer of the decoder families: two LoRA+ steps on every
/// target must move every trainable tensor and leave the base untouched (forward-only reference
/// checks cannot see an in-place op that breaks autograd).
#[test]
fn decoder_models_train_through_every_lora_layer() {
    use etagrid_train::bert::Batch;
    use etagrid_train::train::loss;
    use tch::Tensor;
    for (name, targets) in [
        ("tiny-gpt2", vec!["c_attn", "c_proj", "c_fc"]),
        ("tiny-llama-gqa", LLAMA_ALL_PROJ.to_vec()),
        ("tiny-llama-mha", vec!["q_proj", "v_proj", "down_proj"]),
    ] {
        let m = load(name, &targets, InitScheme::Lora);
        let before: Vec<Tensor> = m
            .trainable()
            .iter()
            .map(|p| p.tensor.detach().copy())
            .collect();
        let frozen: Vec<Tensor> = m.frozen().iter().map(|t| t.copy()).collect();
        let mut opt = LoraPlusAdamW::new(m.trainable(), &[1e-3], &[1e-2], 0.01);
        let b = Batch {
            input_ids: Tensor::randint_low(5, 200, [4, 12], (Kind::Int64, Device::Cpu)),
            token_type_ids: Tensor::zeros([4, 12], (Kind::Int64, Device::Cpu)),
            attention_mask: Tensor::ones([4, 12], (Kind::Int64, Device::Cpu)),
            labels: Tensor::from_slice(&[0i64, 1, 2, 0]),
        };
        for _ in 0..2 {
            let l = loss(&m.forward(&b, true), &b.labels);
            opt.zero_grad();
            l.f_backward()
                .unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
            opt.step(1.0);
        }
        for (p, before) in m.trainable().iter().zip(&before) {
            assert!(
                max_abs_diff(&p.tensor.detach(), before) > 0.0,
                "{name}: {} did not train",
                p.name
            );
        }
        for (t, before) in m.frozen().iter().zip(&frozen) {
            assert_eq!(
                max_abs_diff(t, before),
                0.0,
                "{name}: a frozen tensor changed"
            );
        }
    }
}
