//! Export round trip: adapters written by etagrid are loaded by PEFT (`PeftModel.from_pretrained`
//! onto transformers' model, scripts/peft_logits.py) and give the logits etagrid gives (≤ 1e-4),
//! for every family. Needs the venv's python with transformers and peft (scripts/setup.sh).

mod common;

use common::{encode_inputs, max_abs_diff, run_script, LLAMA_ALL_PROJ};
use etagrid_spec::protocol::JobDevice;
use etagrid_spec::{InitScheme, LoraSpec, TargetModules};
use etagrid_train::data::{collate, load_tokenizer};
use etagrid_train::export::save_peft_adapter;
use etagrid_train::model::{load_classifier, model_type};
use etagrid_train::predict::{predict, PredictOptions};
use etagrid_train::weights::Weights;
use tch::{Device, Kind, Tensor};

fn round_trip(fixture: &str, targets: &[&str]) {
    round_trip_with(
        fixture,
        LoraSpec {
            init: InitScheme::Lora,
            ..LoraSpec::new(4, 8.0, TargetModules::list(targets))
        },
    );
}

fn round_trip_with(fixture: &str, lora: LoraSpec) -> serde_json::Value {
    let dir = common::fixture(fixture);
    let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
    tch::manual_seed(0);
    let model = load_classifier(&dir, &weights, 3, &lora, 2, Device::Cpu).expect("model");
    // Random adapters and heads, different in the two stacked cells; export cell 1.
    tch::manual_seed(9);
    tch::no_grad(|| {
        for p in model.trainable() {
            let mut t = p.tensor.shallow_clone();
            t.copy_(&(Tensor::rand_like(&t) * 0.4 - 0.2));
        }
    });
    let out = tempfile::tempdir().expect("tempdir");
    let adapter = out.path().join("adapter");
    let mt = model_type(&dir).expect("model type");
    save_peft_adapter(
        &model.trainable(),
        1,
        &lora,
        &mt,
        &dir.display().to_string(),
        &adapter,
    )
    .expect("export");

    let tok = load_tokenizer(&dir, 64).expect("tokenizer");
    let texts = [
        "good",
        "The movie was great fun.",
        "the film was dull and far too long",
    ];
    let pairs: Vec<(&str, Option<&str>)> = texts.iter().map(|t| (*t, None)).collect();
    let enc = encode_inputs(&tok, &pairs);
    let pad = model.pad_token_id();
    // Rows 3..6 of a doubled batch go through cell 1.
    let idx: Vec<usize> = (0..texts.len()).chain(0..texts.len()).collect();
    let ours = model
        .forward(&collate(&enc, &idx, pad, Device::Cpu), false)
        .narrow(0, 3, 3);

    let ids = serde_json::to_string(&enc.ids).expect("ids");
    let peft_out = run_script(
        "peft_logits.py",
        [
            &dir.display().to_string(),
            &adapter.display().to_string(),
            &ids,
            &pad.to_string(),
        ],
    );
    let theirs: Vec<Vec<f64>> = serde_json::from_slice(&peft_out).expect("logits json");
    let theirs = Tensor::from_slice(&theirs.concat())
        .reshape([3, 3])
        .to_kind(Kind::Float);
    let d = max_abs_diff(&ours, &theirs);
    assert!(
        d <= 1e-4,
        "{fixture}: PEFT's logits with the exported adapter differ by {d:e}"
    );
    // The adapter matters: the base model alone gives other logits.
    let base = load_classifier(&dir, &weights, 3, &lora, 1, Device::Cpu).expect("base");
    let plain = base.forward(
        &collate(&enc, &(0..3).collect::<Vec<_>>(), pad, Device::Cpu),
        false,
    );
    assert!(
        max_abs_diff(&plain, &theirs) > 1e-3,
        "{fixture}: the adapter did not change anything"
    );
    // `etagrid predict --adapter` reads the same adapter (list or regex targets, rsLoRA,
    // embedding LoRA) back into the same logits.
    let input = out.path().join("inputs.jsonl");
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).expect("write inputs");
    let mut rows = Vec::new();
    predict(
        &PredictOptions {
            model_dir: dir.clone(),
            adapter: Some(adapter.clone()),
            input,
            max_len: 64,
            batch_size: 2,
            lm: false,
            device: JobDevice::Cpu,
        },
        &mut |v| rows.push(v),
    )
    .expect("predict");
    let predicted: Vec<f64> = rows
        .iter()
        .flat_map(|r| serde_json::from_value::<Vec<f64>>(r["logits"].clone()).expect("logits"))
        .collect();
    let predicted = Tensor::from_slice(&predicted).reshape([3, 3]);
    let d = max_abs_diff(&ours, &predicted);
    assert!(
        d <= 1e-5,
        "{fixture}: etagrid predict with the adapter differs by {d:e}"
    );
    let cfg = std::fs::read_to_string(adapter.join("adapter_config.json")).expect("config");
    serde_json::from_str(&cfg).expect("config json")
}

#[test]
fn bert_adapter_exported_by_etagrid_loads_in_peft_with_the_same_logits() {
    round_trip("tiny-bert", &["query", "value"]);
}

#[test]
fn roberta_adapter_exported_by_etagrid_loads_in_peft_with_the_same_logits() {
    round_trip("tiny-roberta", &["query", "value"]);
}

#[test]
fn gpt2_adapter_exported_by_etagrid_loads_in_peft_with_the_same_logits() {
    round_trip("tiny-gpt2", &["c_attn", "c_proj", "c_fc"]);
}

#[test]
fn llama_adapter_exported_by_etagrid_loads_in_peft_with_the_same_logits() {
    round_trip("tiny-llama-gqa", LLAMA_ALL_PROJ);
}

#[test]
fn regex_rslora_and_embedding_adapter_is_written_as_peft_config_and_loads_with_the_same_logits() {
    let pattern =
        r"bert\.(encoder\.layer\.\d+\.attention\.self\.(query|value)|embeddings\.word_embeddings)";
    let lora = LoraSpec {
        use_rslora: true,
        ..LoraSpec::new(4, 8.0, TargetModules::Regex(pattern.into()))
    };
    let cfg = round_trip_with("tiny-bert", lora);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(pattern),
        "regex kept as a string"
    );
    assert_eq!(cfg["use_rslora"], serde_json::json!(true));
    let cfg = round_trip_with(
        "tiny-llama-gqa",
        LoraSpec::new(
            4,
            8.0,
            TargetModules::list(&["q_proj", "v_proj", "embed_tokens"]),
        ),
    );
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "embed_tokens"])
    );
    assert_eq!(cfg["use_rslora"], serde_json::json!(false));
}
