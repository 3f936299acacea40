//! Shared by the integration tests: the tiny BERT fixture (made by scripts/make_fixtures.py with
//! transformers and PEFT) and helpers to turn its JSON into tensors.

#![allow(dead_code)]

use etagrid_spec::{InitScheme, LoraSpec, TargetModules};
use etagrid_train::bert::{Batch, BertConfig, BertForSequenceClassification};
use etagrid_train::data::{tokenize, Encoded};
use etagrid_train::weights::Weights;
use serde_json::Value;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// A directory of tests/fixtures (a model such as `tiny-llama-mha`, or `data`).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture_dir() -> PathBuf {
    fixture("tiny-bert")
}

pub fn json(name: &str) -> Value {
    let path = fixture_dir().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn flatten(v: &Value, out: &mut Vec<f64>, shape: &mut Vec<i64>, depth: usize) {
    match v {
        Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len() as i64);
            }
            for i in items {
                flatten(i, out, shape, depth + 1);
            }
        }
        Value::Number(n) => out.push(n.as_f64().unwrap_or(f64::NAN)),
        other => panic!("not a number: {other}"),
    }
}

/// A nested JSON list as a tensor of `kind`.
pub fn tensor(v: &Value, kind: Kind) -> Tensor {
    let mut data = Vec::new();
    let mut shape = Vec::new();
    flatten(v, &mut data, &mut shape, 0);
    Tensor::from_slice(&data)
        .reshape(shape.as_slice())
        .to_kind(kind)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

pub fn lora_spec(rank: usize, alpha: f64, init: InitScheme) -> LoraSpec {
    LoraSpec {
        init,
        ..LoraSpec::new(rank, alpha, TargetModules::list(&["query", "value"]))
    }
}

pub fn tiny_model(lora: &LoraSpec, seed: i64) -> BertForSequenceClassification {
    let dir = fixture_dir();
    let config = BertConfig::load(&dir).expect("config");
    let weights = Weights::load(&dir, Device::Cpu, Kind::Float).expect("weights");
    tch::manual_seed(seed);
    BertForSequenceClassification::load(config, &weights, 3, lora, 1, Device::Cpu).expect("model")
}

/// The padded batch recorded in lora_reference.json, with labels.
pub fn reference_batch(r: &Value) -> Batch {
    let b = &r["batch"];
    Batch {
        input_ids: tensor(&b["input_ids"], Kind::Int64),
        token_type_ids: tensor(&b["token_type_ids"], Kind::Int64),
        attention_mask: tensor(&b["attention_mask"], Kind::Int64),
        labels: tensor(&r["train"]["labels"], Kind::Int64),
    }
}

/// PEFT's name for one of our trainable tensors (heads live under `modules_to_save.default`,
/// adapters under the adapter name `default`).
pub fn peft_name(ours: &str) -> String {
    for head in ["classifier", "score"] {
        if let Some(rest) = ours.strip_prefix(&format!("{head}.")) {
            return format!("base_model.model.{head}.modules_to_save.default.{rest}");
        }
    }
    let name = ours
        .replace(".lora_A.weight", ".lora_A.default.weight")
        .replace(".lora_B.weight", ".lora_B.default.weight");
    let name = if name.ends_with(".lora_embedding_A") || name.ends_with(".lora_embedding_B") {
        format!("{name}.default")
    } else {
        name
    };
    format!("base_model.model.{name}")
}

/// The venv's python (scripts/setup.sh), for tests that ask transformers + PEFT.
pub fn python() -> PathBuf {
    std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"))
}

/// A checked-in script under scripts/.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// The standard output of `python scripts/NAME ARGS…` in scripts/setup.sh's venv (transformers
/// and PEFT); panics with its standard error when it fails.
pub fn run_script<I: AsRef<OsStr>>(name: &str, args: impl IntoIterator<Item = I>) -> Vec<u8> {
    let run = Command::new(python())
        .arg(script(name))
        .args(args)
        .output()
        .expect("run python (needs scripts/setup.sh's venv with transformers and peft)");
    assert!(
        run.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    run.stdout
}

/// Token ids of `inputs` (text, optional pair) through etagrid's own tokenization, label 0 each.
pub fn encode_inputs(tok: &tokenizers::Tokenizer, inputs: &[(&str, Option<&str>)]) -> Encoded {
    let (ids, type_ids) =
        tokenize(tok, inputs, std::path::Path::new("test inputs")).expect("tokenize");
    Encoded {
        labels: vec![0; ids.len()],
        ids,
        type_ids,
        loss_from: Vec::new(),
    }
}

/// The fixture's `inputs` ({"text", "text_pair"?}) or `texts` as (text, pair) pairs.
pub fn reference_inputs(r: &Value) -> Vec<(String, Option<String>)> {
    if let Some(texts) = r["texts"].as_array() {
        return texts
            .iter()
            .map(|t| (t.as_str().expect("text").to_owned(), None))
            .collect();
    }
    r["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| {
            (
                i["text"].as_str().expect("text").to_owned(),
                i["text_pair"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The fixture's reference inputs ([`reference_inputs`]) through etagrid's tokenization
/// ([`encode_inputs`]).
pub fn encode_reference_inputs(tok: &tokenizers::Tokenizer, r: &Value) -> Encoded {
    let owned = reference_inputs(r);
    let pairs: Vec<(&str, Option<&str>)> = owned
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_deref()))
        .collect();
    encode_inputs(tok, &pairs)
}

/// Every projection of a Llama layer (PEFT's `.*_proj`), as a target list.
pub const LLAMA_ALL_PROJ: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
